//! The runtime table: which runtime (by name and root process) shows what,
//! and the stopped ones whose changes wait on disk. A runtime is attached
//! by `Mount` and ends by `Unmount` or, automatically, when its last process
//! exits: the filesystem's [`Router`] keeps the membership (see
//! `vfs::membership`) and reports runtimes that emptied. What is done to a
//! runtime (attached, re-entered, edited, reset, shown another stack) is
//! `service::lifecycle`'s; this table only keeps the rows, under one lock,
//! and ends them. An editable runtime's
//! changes live in its scratch directory (`runtime::scratch`); when it
//! ends they are deleted, unless it is durable (`--keep-runtime`) or the
//! service is stopping: then it is kept as a stopped runtime, to be
//! re-entered (`--rerun`), committed, or removed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::error::RuntimeError;
use super::records::Records;
use crate::platform;
use crate::runtime::{EndReason, RuntimeInfo, RuntimeState, Scratch};
use crate::telemetry::{short, unix_now};
use crate::vfs::membership::{RuntimeId, RuntimeRoute};
use crate::vfs::{Router, Shown};

pub struct RuntimeTable {
    table: Mutex<Table>,
    /// Signalled when a stopped runtime's end is finished (`Table::ending`).
    ended: Condvar,
    next_id: AtomicU64,
    router: Arc<Router>,
    /// One directory per editable runtime's name.
    scratch_dir: PathBuf,
    /// Every row, published in spfs's format.
    records: Records,
}

#[derive(Default)]
struct Table {
    /// By root pid (what `Unmount` names).
    live: HashMap<i32, LiveRuntime>,
    /// Runtimes with changes on disk and no process, by name.
    stopped: BTreeMap<String, RuntimeState>,
    /// Stopped runtimes whose end is still being finished (their state
    /// saved, their directory's in-use mark let go): a `--rerun` waits
    /// for them ([`RuntimeTable::take_stopped`]).
    ending: HashSet<String>,
}

struct LiveRuntime {
    id: RuntimeId,
    root_pid: i32,
    since_unix: i64,
    state: RuntimeState,
    /// Its changes, once it was ever editable.
    scratch: Option<Arc<Scratch>>,
}

/// A runtime name as `SPFS_RUNTIME` carries it (`contract::check_name`).
pub fn check_name(name: &str) -> Result<(), RuntimeError> {
    crate::contract::check_name(name).map_err(|_| RuntimeError::BadName(short(name)))
}

impl RuntimeTable {
    /// The table, with the stopped runtimes found in `scratch_dir`, whose
    /// rows `records` publishes.
    pub fn new(router: Arc<Router>, scratch_dir: PathBuf, records: Records) -> Arc<RuntimeTable> {
        let stopped = load_stopped(&scratch_dir);
        let infos: Vec<RuntimeInfo> = stopped
            .values()
            .map(|state| RuntimeInfo::stopped(state.clone(), &scratch_dir))
            .collect();
        records.reconcile(&infos);
        Arc::new(RuntimeTable {
            table: Mutex::new(Table {
                live: HashMap::new(),
                stopped,
                ending: HashSet::new(),
            }),
            ended: Condvar::new(),
            next_id: AtomicU64::new(1),
            router,
            scratch_dir,
            records,
        })
    }

    /// Waits until the records asked for so far are written (shutdown).
    pub fn flush_records(&self) {
        self.records.flush(Duration::from_secs(5));
    }

    /// Starts watching runtimes' processes (on the current tokio runtime):
    /// a runtime whose last process exits is dropped.
    pub fn start(self: &Arc<Self>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        self.router.start_watching(tx);
        let table = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(id) = rx.recv().await {
                let Some(table) = table.upgrade() else { break };
                tokio::task::spawn_blocking(move || table.ended(id, EndReason::LastProcessExited));
            }
        });
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    fn scratch_path(&self, name: &str) -> PathBuf {
        self.scratch_dir.join(name)
    }

    /// A new, empty scratch directory for runtime `name`, made on the
    /// runtime's first change (or at once for a durable runtime, when its
    /// state is saved). Refused while a stopped runtime of that name keeps
    /// its changes there.
    pub fn new_scratch(&self, name: &str, asker: ScratchFor) -> Result<Arc<Scratch>, RuntimeError> {
        check_name(name)?;
        let table = self.lock();
        if table.stopped.contains_key(name) {
            return Err(RuntimeError::NameStopped(name.to_owned()));
        }
        // Another live runtime of that name may have made nothing on disk
        // yet: its name is taken all the same.
        let other = |e: &LiveRuntime| match asker {
            ScratchFor::Mount(pid) => e.root_pid != pid,
            ScratchFor::Runtime(id) => e.id != id,
        };
        if table
            .live
            .values()
            .any(|e| e.state.name == name && other(e))
        {
            return Err(RuntimeError::NameTaken(name.to_owned()));
        }
        drop(table);
        self.check_scratch_dir()?;
        let path = self.scratch_path(name);
        match Scratch::plan(&path) {
            Ok(scratch) => Ok(Arc::new(scratch)),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(RuntimeError::NameStopped(name.to_owned()))
            }
            Err(err) => Err(RuntimeError::scratch(
                format!(
                    "cannot make the scratch directory {} (set SPFS_SCRATCH_DIR to a writable directory)",
                    path.display()
                ),
                err,
            )),
        }
    }

    /// A runtime named `name` whose processes have all exited, but whose
    /// end the exit watches have not reported yet, ends now: a script that
    /// runs `spfs run --rerun NAME` twice in a row finds it stopped.
    pub fn settle(&self, name: &str) {
        let id = self
            .lock()
            .live
            .values()
            .find(|e| e.state.name == name)
            .map(|e| e.id);
        if let Some(id) = id {
            if self.router.reap(id) {
                self.ended(id, EndReason::LastProcessExited);
            }
        }
    }

    /// Every runtime whose processes have all exited ends now (see
    /// [`RuntimeTable::settle`]): `Status` then lists only runtimes with a live
    /// process, so `spfs run ...; spfs service stop` in a script is not
    /// refused for the runtime that has just ended.
    pub fn settle_all(&self) {
        let ids: Vec<RuntimeId> = self.lock().live.values().map(|e| e.id).collect();
        for id in ids {
            if self.router.reap(id) {
                self.ended(id, EndReason::LastProcessExited);
            }
        }
    }

    /// Takes stopped runtime `name` out of the stopped list to re-enter
    /// it; [`RuntimeTable::put_back`] returns it if that fails.
    pub fn take_stopped(&self, name: &str) -> Result<(RuntimeState, Arc<Scratch>), RuntimeError> {
        check_name(name)?;
        self.settle(name);
        let mut table = self.lock();
        // One that has just ended is re-entered once its end is finished:
        // until then its old service-side half still marks it in use.
        let (waited, _) = self
            .ended
            .wait_timeout_while(table, ENDING_WAIT, |t| t.ending.contains(name))
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        table = waited;
        if table.live.values().any(|e| e.state.name == name) {
            return Err(RuntimeError::Running(name.to_owned()));
        }
        let state = table
            .stopped
            .remove(name)
            .ok_or_else(|| RuntimeError::NotFound(name.to_owned()))?;
        drop(table);
        if let Err(err) = self.check_scratch_dir() {
            self.put_back(state);
            return Err(err);
        }
        match Scratch::reenter(&self.scratch_path(name)) {
            Ok(scratch) => Ok((state, Arc::new(scratch))),
            Err(err) => {
                self.put_back(state);
                Err(RuntimeError::scratch(
                    format!("cannot open the changes of runtime {name:?}"),
                    err,
                ))
            }
        }
    }

    pub fn put_back(&self, state: RuntimeState) {
        self.lock().stopped.insert(state.name.clone(), state);
    }

    /// Records (or replaces) the runtime whose root is `pid`, showing
    /// `shown` to its processes.
    pub fn attach(
        &self,
        pid: i32,
        state: RuntimeState,
        shown: Shown,
        scratch: Option<Arc<Scratch>>,
    ) -> Result<RuntimeInfo, RuntimeError> {
        check_name(&state.name)?;
        let start_time = platform::start_time(pid).map_err(|_| RuntimeError::NoSuchProcess(pid))?;
        let uid = platform::process_uid(pid).map_err(|_| RuntimeError::NoSuchProcess(pid))?;
        let name = state.name.clone();
        self.settle(&name);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = LiveRuntime {
            id,
            root_pid: pid,
            since_unix: unix_now(),
            state,
            scratch,
        };
        let runtime = entry.info();
        let replaced = {
            let mut table = self.lock();
            if table
                .live
                .values()
                .any(|e| e.state.name == name && e.root_pid != pid)
            {
                return Err(RuntimeError::NameTaken(name));
            }
            if table.stopped.contains_key(&name) {
                return Err(RuntimeError::NameStopped(name));
            }
            let replaced = table.live.insert(pid, entry);
            if let Some(old) = &replaced {
                keep_if_kept(&mut table, old, EndReason::Replaced);
            }
            self.router
                .add_runtime(id, pid, RuntimeRoute::new(shown, name, uid, start_time));
            replaced
        };
        if let Some(old) = replaced {
            self.router.remove_runtime(old.id);
            self.finish(old, EndReason::Replaced);
        }
        self.record_count();
        self.records.save(&runtime);
        Ok(runtime)
    }

    /// `Unmount`: ends the runtime whose root is `pid` now.
    pub fn remove(&self, pid: i32, reason: EndReason) -> Option<RuntimeInfo> {
        let removed = {
            let mut table = self.lock();
            let removed = table.live.remove(&pid)?;
            keep_if_kept(&mut table, &removed, reason);
            removed
        };
        self.router.remove_runtime(removed.id);
        let runtime = removed.info();
        self.finish(removed, reason);
        Some(runtime)
    }

    /// The router found runtime `id` empty and dropped its route.
    fn ended(&self, id: RuntimeId, reason: EndReason) {
        let removed = {
            let mut table = self.lock();
            let pid = table
                .live
                .iter()
                .find(|(_, e)| e.id == id)
                .map(|(pid, _)| *pid);
            let removed = pid.and_then(|pid| table.live.remove(&pid));
            if let Some(removed) = &removed {
                keep_if_kept(&mut table, removed, reason);
            }
            removed
        };
        if let Some(removed) = removed {
            self.finish(removed, reason);
        }
    }

    /// A runtime ended: its changes are kept (durable, or the service is
    /// stopping under it) as a stopped runtime, or deleted.
    fn finish(&self, entry: LiveRuntime, reason: EndReason) {
        self.record_count();
        self.log_end(&entry, reason);
        let kept = is_kept(&entry, reason);
        match kept {
            true => self.records.save(&RuntimeInfo::stopped(
                entry.state.clone(),
                &self.scratch_dir,
            )),
            false => self.records.remove(&entry.info()),
        }
        let Some(scratch) = entry.scratch else {
            return;
        };
        if kept {
            // Already in the stopped list (taken there with the runtime out
            // of the live one, so a `--rerun` never finds it in neither),
            // and in `ending` until here: the state is saved before the mark
            // is let go, as saving may make the directory (and mark it).
            crate::test_hooks::pause("runtime.ending");
            if let Err(err) = scratch.keep_state(&entry.state) {
                tracing::warn!(event = "service.scratch_failed", runtime = entry.state.name.as_str(), error = %err, "cannot save a stopped runtime's state");
            }
            scratch.release();
            self.lock().ending.remove(&entry.state.name);
            self.ended.notify_all();
            return;
        }
        // Not running any more: its directory goes.
        scratch.release();
        // Open files may still hold the overlay; the directory goes now (an
        // open file's data lives on until it is closed, as on any disk).
        match Arc::try_unwrap(scratch) {
            Ok(scratch) => destroy(scratch, &entry.state.name),
            Err(shared) if shared.is_made() => destroy_at(shared.root(), &entry.state.name),
            Err(_) => {}
        }
    }

    /// Service shutdown: every runtime ends; editable ones keep their
    /// changes as stopped runtimes (nothing unsaved is lost).
    pub fn end_all(&self) {
        // Nothing lingers from here on: each view goes with its last runtime.
        self.router.stop_lingering();
        let all: Vec<LiveRuntime> = {
            let mut table = self.lock();
            let all: Vec<LiveRuntime> = table.live.drain().map(|(_, e)| e).collect();
            for entry in &all {
                keep_if_kept(&mut table, entry, EndReason::Shutdown);
            }
            all
        };
        for entry in all {
            self.router.remove_runtime(entry.id);
            self.finish(entry, EndReason::Shutdown);
        }
    }

    fn record_count(&self) {
        crate::telemetry::metrics::metrics()
            .active_runtimes
            .record(self.len() as u64, &[]);
    }

    fn log_end(&self, entry: &LiveRuntime, reason: EndReason) {
        tracing::info!(
            event = "service.runtime_ended",
            root_pid = entry.root_pid,
            runtime = entry.state.name.as_str(),
            env_spec = short(&entry.state.env_spec),
            reason = reason.as_str(),
            kept = is_kept(entry, reason),
            active_runtimes = self.len(),
            live_views = self.router.live_views(),
            lingering_views = self.router.lingering(),
            "runtime ended"
        );
    }

    /// Running runtimes, oldest first.
    pub fn list(&self) -> Vec<RuntimeInfo> {
        let table = self.lock();
        let mut all: Vec<RuntimeInfo> = table.live.values().map(LiveRuntime::info).collect();
        all.sort_by_key(|r| (r.since_unix, r.root_pid));
        all
    }

    /// Stopped runtimes, by name.
    pub fn list_stopped(&self) -> Vec<RuntimeInfo> {
        let table = self.lock();
        table
            .stopped
            .values()
            .map(|state| RuntimeInfo::stopped(state.clone(), &self.scratch_dir))
            .collect()
    }

    /// One runtime by name, running or stopped.
    pub fn get(&self, name: &str) -> Result<RuntimeInfo, RuntimeError> {
        let table = self.lock();
        if let Some(entry) = table.live.values().find(|e| e.state.name == name) {
            return Ok(entry.info());
        }
        table
            .stopped
            .get(name)
            .map(|state| RuntimeInfo::stopped(state.clone(), &self.scratch_dir))
            .ok_or_else(|| RuntimeError::NotFound(short(name)))
    }

    pub fn len(&self) -> usize {
        self.lock().live.len()
    }

    /// The running runtime `name`, if `pid` is one of its processes: its id,
    /// state, scratch and what it shows.
    pub fn member(&self, name: &str, pid: i32) -> Result<RuntimeMember, RuntimeError> {
        let (id, state, scratch) = {
            let table = self.lock();
            let entry = table
                .live
                .values()
                .find(|e| e.state.name == name)
                .ok_or_else(|| match table.stopped.contains_key(name) {
                    true => RuntimeError::NotAMember {
                        name: name.to_owned(),
                        pid,
                    },
                    false => RuntimeError::NotFound(short(name)),
                })?;
            (entry.id, entry.state.clone(), entry.scratch.clone())
        };
        if self.router.runtime_of_process(pid) != Some(id) {
            return Err(RuntimeError::NotAMember {
                name: short(name),
                pid,
            });
        }
        let shown = self
            .router
            .shown_by(id)
            .ok_or_else(|| RuntimeError::NotFound(short(name)))?;
        Ok(RuntimeMember {
            id,
            state,
            scratch,
            shown,
        })
    }

    /// Runtime `member` shows `shown` now, with `state` (saved next to its
    /// changes). Fails when the runtime ended meanwhile.
    pub fn update(
        &self,
        member: &RuntimeMember,
        state: RuntimeState,
        shown: Shown,
        scratch: Option<Arc<Scratch>>,
    ) -> Result<RuntimeInfo, RuntimeError> {
        if let Some(scratch) = &scratch {
            scratch.write_state(&state).map_err(|e| {
                RuntimeError::scratch(format!("cannot save runtime {:?}", state.name), e)
            })?;
        }
        let mut table = self.lock();
        let entry = table
            .live
            .values_mut()
            .find(|e| e.id == member.id)
            .ok_or_else(|| RuntimeError::NotFound(member.state.name.clone()))?;
        entry.state = state;
        entry.scratch = scratch;
        self.router.set_shown(member.id, shown);
        let runtime = entry.info();
        drop(table);
        self.records.save(&runtime);
        Ok(runtime)
    }

    /// `RemoveRuntime`: deletes a stopped runtime and its changes.
    pub fn remove_stopped(&self, name: &str) -> Result<(), RuntimeError> {
        check_name(name)?;
        let mut table = self.lock();
        if table.live.values().any(|e| e.state.name == name) {
            return Err(RuntimeError::Running(name.to_owned()));
        }
        let removed_state = table.stopped.remove(name);
        drop(table);
        let known = removed_state.is_some();
        let path = self.scratch_path(name);
        if !known && !path.exists() {
            return Err(RuntimeError::NotFound(name.to_owned()));
        }
        let removed = crate::runtime::scratch::remove_stopped(&path, name);
        if removed.is_err() && known {
            self.put_back_if_on_disk(name);
        }
        removed.map_err(|e| match e.kind() {
            std::io::ErrorKind::ResourceBusy => RuntimeError::Running(name.to_owned()),
            _ => RuntimeError::scratch(format!("cannot delete {}", path.display()), e),
        })?;
        if let Some(state) = removed_state {
            self.records
                .remove(&RuntimeInfo::stopped(state, &self.scratch_dir));
        }
        tracing::info!(
            event = "service.runtime_removed",
            runtime = name,
            "stopped runtime removed"
        );
        Ok(())
    }

    /// The scratch dir is made (0700) if missing and must be ours alone,
    /// as the runtime and log dirs must: a directory another user owns or
    /// can write would let them replace a runtime's changes.
    fn check_scratch_dir(&self) -> Result<(), RuntimeError> {
        check_scratch_dir(&self.scratch_dir, true)
    }

    /// A removal failed: what is still on disk stays listed as stopped.
    fn put_back_if_on_disk(&self, name: &str) {
        if let Ok(state) = crate::runtime::RuntimeState::read(&self.scratch_path(name)) {
            self.put_back(state);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        crate::sync::lock(&self.table)
    }
}

/// Who asks for a new scratch directory: a `Mount` for a root pid (which
/// replaces that pid's runtime), or a live runtime that becomes editable.
#[derive(Clone, Copy)]
pub enum ScratchFor {
    Mount(i32),
    Runtime(RuntimeId),
}

/// Whether an ended runtime's changes are kept: it is durable, or the
/// service is stopping under it.
fn is_kept(entry: &LiveRuntime, reason: EndReason) -> bool {
    entry.scratch.is_some() && reason.keeps_changes(entry.state.durable)
}

/// Lists an ended runtime as stopped when its changes are kept; called
/// with the runtime just taken out of the live list, under the same lock.
fn keep_if_kept(table: &mut Table, entry: &LiveRuntime, reason: EndReason) {
    if is_kept(entry, reason) {
        table
            .stopped
            .insert(entry.state.name.clone(), entry.state.clone());
        table.ending.insert(entry.state.name.clone());
    }
}

/// How long a `--rerun` waits for the end of the runtime it names to be
/// finished (a state file written and synced: milliseconds, unless the
/// disk hangs).
const ENDING_WAIT: Duration = Duration::from_secs(30);

/// A running runtime, as a request from one of its processes finds it.
pub struct RuntimeMember {
    pub id: RuntimeId,
    pub state: RuntimeState,
    pub scratch: Option<Arc<Scratch>>,
    pub shown: Shown,
}

impl LiveRuntime {
    fn info(&self) -> RuntimeInfo {
        RuntimeInfo {
            state: self.state.clone(),
            root_pid: Some(self.root_pid),
            since_unix: self.since_unix,
            scratch_dir: self.scratch.as_ref().map(|s| s.root().to_owned()),
        }
    }
}

/// `scratch_dir` as [`RuntimeTable::check_scratch_dir`] wants it; made if
/// missing when `make`.
fn check_scratch_dir(scratch_dir: &Path, make: bool) -> Result<(), RuntimeError> {
    use crate::paths::SCRATCH_DIR_SETTING as SETTING;
    let checked = match make {
        true => crate::private_dir::ensure(scratch_dir, "scratch dir", SETTING),
        false => crate::private_dir::check(scratch_dir, "scratch dir", SETTING),
    };
    checked.map_err(|err| match err {
        crate::private_dir::DirError::Unsafe { problem, fix } => RuntimeError::UnsafeScratch {
            path: scratch_dir.to_owned(),
            problem,
            fix,
        },
        crate::private_dir::DirError::Io { context, source } => {
            RuntimeError::scratch(context, source)
        }
    })
}

/// The stopped runtimes in `scratch_dir` whose names the service accepts;
/// none from a scratch dir that is not ours alone (logged).
fn load_stopped(scratch_dir: &Path) -> BTreeMap<String, RuntimeState> {
    if scratch_dir.exists() {
        if let Err(err) = check_scratch_dir(scratch_dir, false) {
            tracing::warn!(event = "service.scratch_failed", path = %scratch_dir.display(), error = %err, "the scratch dir is not safe; its runtimes are not loaded");
            return BTreeMap::new();
        }
    }
    let mut found = crate::runtime::state::on_disk(scratch_dir);
    found.retain(|name, _| check_name(name).is_ok());
    found
}

fn destroy(scratch: Scratch, name: &str) {
    let root = scratch.root().to_owned();
    if let Err(err) = scratch.destroy() {
        tracing::warn!(event = "service.scratch_failed", runtime = name, path = %root.display(), error = %err, "cannot delete an ended runtime's changes");
    }
}

fn destroy_at(root: &Path, name: &str) {
    if let Err(err) = crate::runtime::scratch::remove_any(root) {
        tracing::warn!(event = "service.scratch_failed", runtime = name, path = %root.display(), error = %err, "cannot delete an ended runtime's changes");
    }
}
