//! The runtimes table: which runtime (by name and root process) shows what,
//! and the stopped ones whose changes wait on disk. A runtime is added by
//! `Mount` and ends by `Unmount` or, automatically, when its last process
//! exits: the filesystem's [`Router`] keeps the membership (see
//! `fs::router`) and reports runtimes that emptied. An editable runtime's
//! changes live in its scratch directory (`runtime::scratch`); when it
//! ends they are deleted, unless it is durable (`--keep-runtime`) or the
//! service is stopping: then it is kept as a stopped runtime, to be
//! re-entered (`--rerun`), committed, or removed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::contract::{MAX_ENV_SPEC_BYTES, MAX_NAME_BYTES};
use crate::platform;
use crate::proto::Runtime;
use crate::runtime::{EndReason, RuntimeState, Scratch};
use crate::storage::error::StorageError;
use crate::tracking::env_spec::{self, SpecError};
use crate::vfs::membership::{RuntimeId, RuntimeRoute};
use crate::vfs::overlay::Overlay;
use crate::vfs::view::BuildError;
use crate::vfs::{Router, Shown};

pub struct RuntimeTable {
    table: Mutex<Table>,
    next_id: AtomicU64,
    router: Arc<Router>,
    /// One directory per editable runtime's name.
    scratch_dir: PathBuf,
}

#[derive(Default)]
struct Table {
    /// By root pid (what `Unmount` names).
    live: HashMap<i32, LiveRuntime>,
    /// Runtimes with changes on disk and no process, by name.
    stopped: BTreeMap<String, RuntimeState>,
}

struct LiveRuntime {
    id: RuntimeId,
    root_pid: i32,
    since_unix: i64,
    state: RuntimeState,
    /// Its changes, once it was ever editable.
    scratch: Option<Arc<Scratch>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("root_pid must be a positive process id, got {0}")]
    BadPid(i64),
    #[error("root_pid {0}: no such process")]
    NoSuchProcess(i32),
    #[error("env_spec is {0} bytes; at most {MAX_ENV_SPEC_BYTES} are accepted")]
    SpecTooLong(usize),
    #[error("a runtime named {0:?} is already running; choose another name")]
    NameTaken(String),
    #[error("runtime name {0:?} is not usable: use 1 to {MAX_NAME_BYTES} letters, digits, '-', '_' or '.'")]
    BadName(String),
    #[error("{0}")]
    Spec(#[from] SpecError),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("repository {0:?} is not an absolute path")]
    RelativeRepository(String),
    #[error("{0}")]
    Repository(StorageError),
    #[error(
        "root_pid {root} is neither the calling process (pid {caller}) nor one of its ancestors"
    )]
    NotAnAncestor { root: i32, caller: i32 },
    #[error("root_pid {root} belongs to uid {owner}, not to you (uid {caller})")]
    OtherUser { root: i32, owner: u32, caller: u32 },
    #[error("the caller's process id is unknown, so root_pid cannot be checked")]
    UnknownCaller,
    #[error("cannot show {spec:?}: {error}")]
    Build { spec: String, error: BuildError },
    #[error("Mount of {spec:?} did not finish within {seconds} s; raise SPFS_MOUNT_TIMEOUT if its layers are on a slow filesystem")]
    Timeout { spec: String, seconds: f64 },
    #[error("no runtime named {0:?}; see `spfs runtime list`")]
    NotFound(String),
    #[error("a stopped runtime named {0:?} has changes on disk; re-enter it with `spfs run --rerun {0}`, or delete it with `spfs runtime remove {0}`")]
    NameStopped(String),
    #[error("runtime {0:?} is running, not stopped; it can only be re-entered or removed once its processes exit")]
    Running(String),
    #[error("process {pid} is not in runtime {name:?}; run this from a process of that runtime")]
    NotAMember { name: String, pid: i32 },
    #[error("runtime {name:?} shows {actual:?} now, not {expected:?}: its stack changed meanwhile; look again and retry")]
    StackChanged {
        name: String,
        expected: String,
        actual: String,
    },
    #[error("runtime {0:?} has no changes: it was never editable")]
    NoChanges(String),
    #[error("{what}: {error}")]
    Scratch { what: String, error: std::io::Error },
}

impl RuntimeError {
    fn scratch(what: impl Into<String>, error: std::io::Error) -> RuntimeError {
        RuntimeError::Scratch {
            what: what.into(),
            error,
        }
    }
}

/// A runtime name as `SPFS_RUNTIME` carries it (`contract::check_name`).
pub fn check_name(name: &str) -> Result<(), RuntimeError> {
    crate::contract::check_name(name).map_err(|_| RuntimeError::BadName(env_spec::shorten(name)))
}

/// A pid from the wire: positive and within `pid_t`.
pub fn checked_pid(pid: i64) -> Result<i32, RuntimeError> {
    match i32::try_from(pid) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(RuntimeError::BadPid(pid)),
    }
}

impl RuntimeTable {
    /// The table, with the stopped runtimes found in `scratch_dir`.
    pub fn new(router: Arc<Router>, scratch_dir: PathBuf) -> Arc<RuntimeTable> {
        let stopped = load_stopped(&scratch_dir);
        Arc::new(RuntimeTable {
            table: Mutex::new(Table {
                live: HashMap::new(),
                stopped,
            }),
            next_id: AtomicU64::new(1),
            router,
            scratch_dir,
        })
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
        if table.live.values().any(|e| e.state.name == name) {
            return Err(RuntimeError::Running(name.to_owned()));
        }
        let state = table
            .stopped
            .remove(name)
            .ok_or_else(|| RuntimeError::NotFound(name.to_owned()))?;
        drop(table);
        match Scratch::open(&self.scratch_path(name)) {
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
    ) -> Result<Runtime, RuntimeError> {
        check_name(&state.name)?;
        let start_time = platform::start_time(pid).map_err(|_| RuntimeError::NoSuchProcess(pid))?;
        let uid = platform::process_uid(pid).map_err(|_| RuntimeError::NoSuchProcess(pid))?;
        let name = state.name.clone();
        self.settle(&name);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = LiveRuntime {
            id,
            root_pid: pid,
            since_unix: now_unix(),
            state,
            scratch,
        };
        let runtime = entry.to_proto();
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
        Ok(runtime)
    }

    /// `Unmount`: ends the runtime whose root is `pid` now.
    pub fn remove(&self, pid: i32, reason: EndReason) -> Option<Runtime> {
        let removed = {
            let mut table = self.lock();
            let removed = table.live.remove(&pid)?;
            keep_if_kept(&mut table, &removed, reason);
            removed
        };
        self.router.remove_runtime(removed.id);
        let runtime = removed.to_proto();
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
        let Some(scratch) = entry.scratch else {
            return;
        };
        if kept {
            // Already in the stopped list (taken there with the runtime out
            // of the live one, so a `--rerun` never finds it in neither).
            if let Err(err) = scratch.keep_state(&entry.state) {
                tracing::warn!(event = "service.scratch_failed", runtime = entry.state.name.as_str(), error = %err, "cannot save a stopped runtime's state");
            }
            return;
        }
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
            env_spec = crate::tracking::env_spec::shorten(&entry.state.env_spec),
            reason = reason.as_str(),
            kept = is_kept(entry, reason),
            active_runtimes = self.len(),
            live_views = self.router.live_views(),
            lingering_views = self.router.lingering(),
            "runtime ended"
        );
    }

    /// Running runtimes, oldest first.
    pub fn list(&self) -> Vec<Runtime> {
        let table = self.lock();
        let mut all: Vec<Runtime> = table.live.values().map(LiveRuntime::to_proto).collect();
        all.sort_by_key(|r| (r.since_unix, r.root_pid));
        all
    }

    /// Stopped runtimes, by name.
    pub fn list_stopped(&self) -> Vec<Runtime> {
        let table = self.lock();
        table
            .stopped
            .values()
            .map(|state| stopped_proto(state, &self.scratch_dir))
            .collect()
    }

    /// One runtime by name, running or stopped.
    pub fn get(&self, name: &str) -> Result<Runtime, RuntimeError> {
        let table = self.lock();
        if let Some(entry) = table.live.values().find(|e| e.state.name == name) {
            return Ok(entry.to_proto());
        }
        table
            .stopped
            .get(name)
            .map(|state| stopped_proto(state, &self.scratch_dir))
            .ok_or_else(|| RuntimeError::NotFound(env_spec::shorten(name)))
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
                    false => RuntimeError::NotFound(env_spec::shorten(name)),
                })?;
            (entry.id, entry.state.clone(), entry.scratch.clone())
        };
        if self.router.runtime_of_process(pid) != Some(id) {
            return Err(RuntimeError::NotAMember {
                name: env_spec::shorten(name),
                pid,
            });
        }
        let shown = self
            .router
            .shown_by(id)
            .ok_or_else(|| RuntimeError::NotFound(env_spec::shorten(name)))?;
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
    ) -> Result<Runtime, RuntimeError> {
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
        Ok(entry.to_proto())
    }

    /// `Edit`: accept writes, or refuse them keeping the changes.
    pub fn edit(&self, name: &str, pid: i32, editable: bool) -> Result<Runtime, RuntimeError> {
        let member = self.member(name, pid)?;
        let mut state = member.state.clone();
        state.editable = editable;
        match (&member.shown, editable) {
            (Shown::Overlay(overlay), _) => {
                overlay.set_editable(editable);
                let shown = member.shown.clone();
                self.update(&member, state, shown, member.scratch.clone())
            }
            (Shown::View(_), false) => self.get(name),
            (Shown::View(view), true) => {
                let scratch = self.new_scratch(name, ScratchFor::Runtime(member.id))?;
                let overlay = Overlay::new(
                    self.router.next_view_id(),
                    Arc::clone(view),
                    Arc::clone(&scratch),
                    true,
                )
                .map_err(|e| RuntimeError::scratch("cannot read the runtime's changes", e))?;
                self.update(
                    &member,
                    state,
                    Shown::Overlay(Arc::new(overlay)),
                    Some(scratch),
                )
            }
        }
    }

    /// `Reset`: drops the changes (all, or under `paths`); the runtime shows
    /// a fresh overlay of what is left.
    pub fn reset(&self, name: &str, pid: i32, paths: &[PathBuf]) -> Result<Runtime, RuntimeError> {
        let member = self.member(name, pid)?;
        let Some(scratch) = member.scratch.clone() else {
            return self.get(name);
        };
        let editable = member.state.editable;
        let lower = Arc::clone(member.shown.layers());
        // No write may land between dropping the changes and the new overlay.
        if let Shown::Overlay(overlay) = &member.shown {
            overlay.set_editable(false);
        }
        let reset = (|| {
            scratch
                .reset(paths)
                .map_err(|e| RuntimeError::scratch("cannot drop the changes", e))?;
            let overlay = Overlay::new(
                self.router.next_view_id(),
                lower,
                Arc::clone(&scratch),
                editable,
            )
            .map_err(|e| RuntimeError::scratch("cannot read the runtime's changes", e))?;
            let state = member.state.clone();
            self.update(
                &member,
                state,
                Shown::Overlay(Arc::new(overlay)),
                Some(scratch),
            )
        })();
        // Failed: the runtime goes on as it was, not silently read-only.
        if let (Err(_), Shown::Overlay(overlay)) = (&reset, &member.shown) {
            overlay.set_editable(editable);
        }
        reset
    }

    /// `RemoveRuntime`: deletes a stopped runtime and its changes.
    pub fn remove_stopped(&self, name: &str) -> Result<(), RuntimeError> {
        check_name(name)?;
        let mut table = self.lock();
        if table.live.values().any(|e| e.state.name == name) {
            return Err(RuntimeError::Running(name.to_owned()));
        }
        let known = table.stopped.remove(name).is_some();
        drop(table);
        let path = self.scratch_path(name);
        if !known && !path.exists() {
            return Err(RuntimeError::NotFound(name.to_owned()));
        }
        crate::runtime::scratch::remove_any(&path)
            .map_err(|e| RuntimeError::scratch(format!("cannot delete {}", path.display()), e))?;
        tracing::info!(
            event = "service.runtime_removed",
            runtime = name,
            "stopped runtime removed"
        );
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave the map half-updated.
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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
    }
}

/// A running runtime, as a request from one of its processes finds it.
pub struct RuntimeMember {
    pub id: RuntimeId,
    pub state: RuntimeState,
    pub scratch: Option<Arc<Scratch>>,
    pub shown: Shown,
}

impl LiveRuntime {
    fn to_proto(&self) -> Runtime {
        Runtime {
            root_pid: self.root_pid.into(),
            env_spec: self.state.env_spec.clone(),
            since_unix: self.since_unix,
            name: self.state.name.clone(),
            editable: self.state.editable,
            durable: self.state.durable,
            running: true,
            scratch_dir: self
                .scratch
                .as_ref()
                .map(|s| s.root().display().to_string())
                .unwrap_or_default(),
            stack: self.state.stack.clone(),
            repositories: repositories_text(&self.state.repositories),
        }
    }
}

fn stopped_proto(state: &RuntimeState, scratch_dir: &Path) -> Runtime {
    state.to_stopped_proto(scratch_dir)
}

fn repositories_text(repositories: &[PathBuf]) -> Vec<String> {
    repositories
        .iter()
        .map(|r| r.display().to_string())
        .collect()
}

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The stopped runtimes in `scratch_dir` whose names the service accepts.
fn load_stopped(scratch_dir: &Path) -> BTreeMap<String, RuntimeState> {
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
