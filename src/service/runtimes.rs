//! The runtimes table: which root process sees which env spec. A runtime is
//! added by `Mount` and dropped by `Unmount` or, automatically, when its root
//! process exits (pidfd on Linux, kqueue on macOS). Adding and dropping a
//! runtime adds and drops its route in the filesystem's [`Router`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::task::AbortHandle;

use crate::fs::router::Router;
use crate::fs::view::View;
use crate::platform::{self, ExitWatch};
use crate::proto::Runtime;
use crate::storage::error::StorageError;
use crate::storage::proxy::ProxyRepository;
use crate::tracking::env_spec::{self, SpecError};

/// Longest env spec accepted; far beyond any real stack of layer names.
pub const MAX_ENV_SPEC_BYTES: usize = 64 * 1024;

pub struct Runtimes {
    table: Mutex<HashMap<i32, Entry>>,
    next_generation: AtomicU64,
    router: Arc<Router>,
}

struct Entry {
    runtime: Runtime,
    /// Tells this entry from a later one for the same pid.
    generation: u64,
    exit_watch: AbortHandle,
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("root_pid must be a positive process id, got {0}")]
    BadPid(i64),
    #[error("root_pid {0}: no such process")]
    NoSuchProcess(i32),
    #[error("env_spec is {0} bytes; at most {MAX_ENV_SPEC_BYTES} are accepted")]
    SpecTooLong(usize),
    #[error("cannot watch process {0}: {1}")]
    Watch(i32, std::io::Error),
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
    #[error("cannot read the layers of {spec:?}: {error}")]
    Build { spec: String, error: std::io::Error },
}

/// Starts watching `pid` for exit; fails at once if there is no such process.
pub fn watch(pid: i32) -> Result<ExitWatch, MountError> {
    ExitWatch::new(pid).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => MountError::NoSuchProcess(pid),
        _ => MountError::Watch(pid, err),
    })
}

/// Opens `repositories` (local first), resolves `spec` in them and builds
/// its view. Blocking I/O: reads platform, layer and manifest objects.
pub fn build_view(
    router: &Router,
    repositories: &[std::path::PathBuf],
    spec: String,
) -> Result<View, MountError> {
    if spec.len() > MAX_ENV_SPEC_BYTES {
        return Err(MountError::SpecTooLong(spec.len()));
    }
    // Syntax first: a bad spec is named before any repository is opened.
    env_spec::parse(&spec)?;
    let repos = Arc::new(ProxyRepository::open(repositories).map_err(MountError::Repository)?);
    let layers = env_spec::resolve(&spec, &repos)?;
    View::build(router.next_view_id(), spec.clone(), &layers, repos).map_err(|error| {
        MountError::Build {
            spec: env_spec::shorten(&spec),
            error,
        }
    })
}

/// A pid from the wire: positive and within `pid_t`.
pub fn checked_pid(pid: i64) -> Result<i32, MountError> {
    match i32::try_from(pid) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(MountError::BadPid(pid)),
    }
}

impl Runtimes {
    pub fn new(router: Arc<Router>) -> Arc<Runtimes> {
        Arc::new(Runtimes {
            table: Mutex::default(),
            next_generation: AtomicU64::new(0),
            router,
        })
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Records (or replaces) the runtime of `pid`, shows it `view`, and drops
    /// both when `watch` sees the process exit.
    pub fn mount(
        self: &Arc<Self>,
        pid: i32,
        watch: ExitWatch,
        view: View,
    ) -> Result<Runtime, MountError> {
        let start_time = platform::start_time(pid).map_err(|_| MountError::NoSuchProcess(pid))?;
        let runtime = Runtime {
            root_pid: pid.into(),
            env_spec: view.spec.clone(),
            since_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
        };
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let table = Arc::clone(self);
        let exit_watch = tokio::spawn(async move {
            watch.exited().await;
            table.remove(pid, Some(generation), "exited");
        })
        .abort_handle();
        let entry = Entry {
            runtime: runtime.clone(),
            generation,
            exit_watch,
        };
        let replaced = {
            let mut table = self.lock();
            self.router.add(pid, start_time, Arc::new(view));
            table.insert(pid, entry)
        };
        if let Some(old) = replaced {
            old.exit_watch.abort();
        }
        crate::telemetry::metrics::metrics()
            .active_runtimes
            .record(self.len() as u64, &[]);
        Ok(runtime)
    }

    /// Drops the runtime of `pid`; `generation` limits it to one specific entry.
    pub fn remove(&self, pid: i32, generation: Option<u64>, reason: &str) -> Option<Runtime> {
        let removed = {
            let mut table = self.lock();
            match table.get(&pid) {
                Some(entry) if generation.is_none_or(|g| g == entry.generation) => {
                    self.router.remove(pid);
                    table.remove(&pid)
                }
                _ => None,
            }
        }?;
        removed.exit_watch.abort();
        crate::telemetry::metrics::metrics()
            .active_runtimes
            .record(self.len() as u64, &[]);
        tracing::info!(
            event = "service.unmount",
            root_pid = pid,
            env_spec = crate::tracking::env_spec::shorten(&removed.runtime.env_spec),
            reason,
            active_runtimes = self.len(),
            live_views = self.router.live_views(),
            "runtime ended"
        );
        Some(removed.runtime)
    }

    pub fn list(&self) -> Vec<Runtime> {
        let mut all: Vec<Runtime> = self.lock().values().map(|e| e.runtime.clone()).collect();
        all.sort_by_key(|r| (r.since_unix, r.root_pid));
        all
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Entry>> {
        // A panic while holding the lock cannot leave the map half-updated.
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
