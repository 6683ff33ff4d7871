//! The runtime table's rows published as spfs runtime records
//! (`runtime::record`) in each runtime's local repository: saved when a
//! runtime starts and whenever its state changes, saved as stopped when a
//! kept runtime ends, removed when it ends otherwise or is removed.
//!
//! They are written in the background, one job at a time on the blocking
//! pool, in the order they were asked for (several changes of one runtime
//! queued meanwhile are written once, the last): a `Mount` never waits for
//! a repository write. Shutdown waits for the queue ([`Records::flush`]).
//!
//! A service that dies leaves records saying its runtimes run. The next
//! service corrects them first thing: every repository a record was ever
//! written to is listed in `<runtime dir>/records`; there, each record of
//! this runtime dir (its `config.runtime_dir`) that names no stopped
//! runtime is removed, and the stopped ones are saved as stopped. Another
//! tool's records (a real spfs's, in a shared repository) are never touched.

use std::collections::{BTreeSet, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::runtime::record::{self, Place, Record};
use crate::runtime::RuntimeInfo;
use crate::storage::fs::FsRepository;

/// The journal of repositories written to, in the runtime dir.
const JOURNAL: &str = "records";

enum Job {
    Save(PathBuf, Box<Record>),
    Remove(PathBuf, String),
    /// At start: the records of a service before us, fixed (see the module doc).
    Reconcile(BTreeSet<String>),
}

impl Job {
    /// The record a job writes, for coalescing.
    fn key(&self) -> Option<(&Path, &str)> {
        match self {
            Job::Save(repo, record) => Some((repo, record.name.as_str())),
            Job::Remove(repo, name) => Some((repo, name.as_str())),
            _ => None,
        }
    }
}

pub struct Records {
    queue: Arc<Queue>,
    place: Place,
}

/// The jobs waiting, and the writer while no drain holds it.
struct Queue {
    state: Mutex<QueueState>,
    /// Signalled when a drain found nothing more to do.
    idle: Condvar,
    /// Where drains run: the service's blocking pool, whose threads exist
    /// anyway (a thread of our own would cost its own malloc arena).
    pool: Option<tokio::runtime::Handle>,
}

struct QueueState {
    jobs: Vec<Job>,
    /// A drain is running (it holds the writer).
    draining: bool,
    writer: Option<Writer>,
}

impl Records {
    /// Starts the writer for the service of `runtime_dir`, showing runtimes
    /// at `mountpoint`.
    pub fn start(runtime_dir: &Path, mountpoint: &Path) -> Records {
        let place = Place {
            runtime_dir: runtime_dir.to_owned(),
            mountpoint: mountpoint.to_owned(),
            startup_files: crate::startup::files_dir(runtime_dir, mountpoint),
            monitor: Some(std::process::id()),
        };
        let mut writer = Writer {
            journal: runtime_dir.join(JOURNAL),
            known: HashSet::new(),
            place: place.clone(),
        };
        writer.known = writer.read_journal();
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState {
                jobs: Vec::new(),
                draining: false,
                writer: Some(writer),
            }),
            idle: Condvar::new(),
            pool: tokio::runtime::Handle::try_current().ok(),
        });
        Records { queue, place }
    }

    fn send(&self, job: Job) {
        let mut state = crate::sync::lock(&self.queue.state);
        state.jobs.push(job);
        if state.draining {
            return;
        }
        state.draining = true;
        drop(state);
        let queue = Arc::clone(&self.queue);
        match &self.queue.pool {
            Some(pool) => drop(pool.spawn_blocking(move || queue.drain())),
            None => drop(std::thread::spawn(move || queue.drain())),
        }
    }

    /// Saves `runtime`'s record (running or stopped, as it says).
    pub fn save(&self, runtime: &RuntimeInfo) {
        if let Some(repo) = runtime.state.repositories.first() {
            self.send(Job::Save(
                repo.clone(),
                Box::new(Record::of(runtime, &self.place)),
            ));
        }
    }

    /// Removes `runtime`'s records.
    pub fn remove(&self, runtime: &RuntimeInfo) {
        if let Some(repo) = runtime.state.repositories.first() {
            self.send(Job::Remove(repo.clone(), runtime.state.name.clone()));
        }
    }

    /// At start: a dead service's records are fixed, with `stopped` the
    /// stopped runtimes now known (saved as stopped; every other record of
    /// ours is removed).
    pub fn reconcile(&self, stopped: &[RuntimeInfo]) {
        let names = stopped.iter().map(|r| r.state.name.clone()).collect();
        self.send(Job::Reconcile(names));
        for runtime in stopped {
            self.save(runtime);
        }
    }

    /// Waits (at most `limit`) until everything asked so far is written.
    pub fn flush(&self, limit: Duration) {
        let state = crate::sync::lock(&self.queue.state);
        let _ = self
            .queue
            .idle
            .wait_timeout_while(state, limit, |s| s.draining || !s.jobs.is_empty());
    }
}

impl Queue {
    /// Does the jobs queued, batch by batch, until none is left.
    fn drain(&self) {
        let mut state = crate::sync::lock(&self.state);
        let Some(mut writer) = state.writer.take() else {
            return;
        };
        loop {
            let batch = std::mem::take(&mut state.jobs);
            if batch.is_empty() {
                state.writer = Some(writer);
                state.draining = false;
                self.idle.notify_all();
                return;
            }
            drop(state);
            for job in coalesce(batch) {
                writer.work(job);
            }
            state = crate::sync::lock(&self.state);
        }
    }
}

struct Writer {
    journal: PathBuf,
    /// Repositories in the journal.
    known: HashSet<PathBuf>,
    place: Place,
}

impl Writer {
    fn work(&mut self, job: Job) {
        let done = match &job {
            Job::Save(repo, record) => self.save(repo, record),
            Job::Remove(repo, name) => remove(repo, name),
            Job::Reconcile(stopped) => {
                self.reconcile(stopped);
                Ok(())
            }
        };
        if let (Err(err), Some((repo, name))) = (done, job.key()) {
            tracing::warn!(
                event = "service.record_failed",
                runtime = name,
                repository = %repo.display(),
                error = %err,
                "cannot write a runtime's record in spfs's format; spfs's own tools will not see it as it is"
            );
        }
    }

    fn save(&mut self, repo: &Path, record: &Record) -> Result<(), Box<dyn std::error::Error>> {
        // spfs makes the local repository on first use; so do we.
        let fs = FsRepository::create(repo)?;
        if !self.known.contains(repo) {
            self.add_to_journal(repo)?;
        }
        record::save(&fs, record)?;
        Ok(())
    }

    fn reconcile(&mut self, stopped: &BTreeSet<String>) {
        let ours = Some(self.place.runtime_dir.display().to_string());
        for repo in self.known.clone() {
            let Ok(fs) = FsRepository::open(&repo) else {
                continue;
            };
            for name in record::names(&fs) {
                let theirs = record::read(&fs, &name).map(|r| r.config.runtime_dir);
                if stopped.contains(&name) || theirs.as_ref().ok() != Some(&ours) {
                    continue;
                }
                match record::remove(&fs, &name) {
                    Ok(()) => {
                        tracing::info!(event = "service.record_removed", runtime = name.as_str(), repository = %repo.display(), "removed the record of a runtime that ended with a service before this one")
                    }
                    Err(err) => {
                        tracing::warn!(event = "service.record_failed", runtime = name.as_str(), repository = %repo.display(), error = %err, "cannot remove a dead runtime's record")
                    }
                }
            }
        }
    }

    fn read_journal(&self) -> HashSet<PathBuf> {
        std::fs::read_to_string(&self.journal)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.starts_with('/'))
            .map(PathBuf::from)
            .collect()
    }

    fn add_to_journal(&mut self, repo: &Path) -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.journal)?;
        writeln!(file, "{}", repo.display())?;
        self.known.insert(repo.to_owned());
        Ok(())
    }
}

fn remove(repo: &Path, name: &str) -> Result<(), Box<dyn std::error::Error>> {
    match repo.exists() {
        true => Ok(record::remove(&FsRepository::open(repo)?, name)?),
        // nothing was ever recorded there
        false => Ok(()),
    }
}

/// Of several jobs for one record, only the last is done (at its place).
fn coalesce(batch: Vec<Job>) -> Vec<Job> {
    let mut later: HashSet<(PathBuf, String)> = HashSet::new();
    let mut kept: Vec<Job> = batch
        .into_iter()
        .rev()
        .filter(|job| match job.key() {
            Some((repo, name)) => later.insert((repo.to_owned(), name.to_owned())),
            None => true,
        })
        .collect();
    kept.reverse();
    kept
}
