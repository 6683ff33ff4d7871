//! The runtimes table: which runtime (by name and root process) shows which
//! env spec. A runtime is added by `Mount` and dropped by `Unmount` or,
//! automatically, when its last process exits: the filesystem's [`Router`]
//! keeps the membership (see `fs::router`) and reports runtimes that emptied.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::fs::router::{EndReason, Router, RuntimeId, RuntimeRoute, StackKey};
use crate::fs::view::{Budget, BuildError, View};
use crate::platform;
use crate::proto::Runtime;
use crate::storage::error::StorageError;
use crate::storage::proxy::ProxyRepository;
use crate::tracking::env_spec::{self, SpecError, StackItem};

/// Longest env spec accepted; far beyond any real stack of layer names.
pub const MAX_ENV_SPEC_BYTES: usize = 64 * 1024;

pub struct Runtimes {
    /// By root pid (what `Unmount` names).
    table: Mutex<HashMap<i32, Entry>>,
    next_id: AtomicU64,
    router: Arc<Router>,
}

struct Entry {
    runtime: Runtime,
    id: RuntimeId,
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("root_pid must be a positive process id, got {0}")]
    BadPid(i64),
    #[error("root_pid {0}: no such process")]
    NoSuchProcess(i32),
    #[error("env_spec is {0} bytes; at most {MAX_ENV_SPEC_BYTES} are accepted")]
    SpecTooLong(usize),
    #[error("a runtime named {0:?} is already running; choose another name")]
    NameTaken(String),
    #[error("runtime name {0:?} is not usable: use 1 to 200 letters, digits, '-', '_' or '.'")]
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
}

/// A fresh runtime name for root process `pid`: the pid and the time in
/// nanoseconds, unique on this machine.
pub fn generated_name(pid: i32) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("spfs-{pid}-{nanos:x}")
}

/// A runtime name as `SPFS_RUNTIME` carries it.
pub fn check_name(name: &str) -> Result<(), MountError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(MountError::BadName(env_spec::shorten(name)))
    }
}

/// What one `Mount` may cost, from the service's environment.
#[derive(Clone, Copy, Debug)]
pub struct MountLimits {
    /// `SPFS_MOUNT_TIMEOUT` (seconds, or `500ms`); default 60 s.
    pub timeout: std::time::Duration,
    /// `SPFS_MOUNT_MAX_ENTRIES`; default 5,000,000.
    pub max_entries: usize,
}

impl Default for MountLimits {
    fn default() -> Self {
        MountLimits {
            timeout: std::time::Duration::from_secs(60),
            max_entries: 5_000_000,
        }
    }
}

impl MountLimits {
    /// Reads the settings; a bad value is an error naming it.
    pub fn from_env() -> Result<MountLimits, String> {
        let mut limits = MountLimits::default();
        if let Some(text) = std::env::var("SPFS_MOUNT_TIMEOUT")
            .ok()
            .filter(|t| !t.trim().is_empty())
        {
            limits.timeout = crate::config::parse_duration(&text)
                .map_err(|problem| format!("SPFS_MOUNT_TIMEOUT={text:?} is not a duration ({problem}); use seconds such as 60, or 500ms"))?;
        }
        if let Some(text) = std::env::var("SPFS_MOUNT_MAX_ENTRIES")
            .ok()
            .filter(|t| !t.trim().is_empty())
        {
            limits.max_entries = text.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                format!("SPFS_MOUNT_MAX_ENTRIES={text:?} is not a positive number of entries")
            })?;
        }
        Ok(limits)
    }

    /// The budget of one build starting now.
    pub fn budget(&self, cancelled: Arc<std::sync::atomic::AtomicBool>) -> Budget {
        Budget {
            deadline: std::time::Instant::now() + self.timeout,
            max_entries: self.max_entries,
            cancelled,
            deadline_setting: "SPFS_MOUNT_TIMEOUT",
            entries_setting: "SPFS_MOUNT_MAX_ENTRIES",
        }
    }
}

/// A view for a Mount, and whether it is shared with other runtimes.
pub struct Built {
    pub view: Arc<View>,
    /// An existing view of the same stack was reused.
    pub shared: bool,
}

/// Opens `repositories` (local first), resolves `spec` in them and builds
/// its view, or reuses the live view of the same stack. Blocking I/O: reads
/// platform and layer objects, and manifests only for a new view.
pub fn build_view(
    router: &Router,
    repositories: &[std::path::PathBuf],
    spec: String,
    budget: &Budget,
) -> Result<Built, MountError> {
    if spec.len() > MAX_ENV_SPEC_BYTES {
        return Err(MountError::SpecTooLong(spec.len()));
    }
    // Syntax first: a bad spec is named before any repository is opened.
    env_spec::parse(&spec)?;
    let repos = Arc::new(ProxyRepository::open(repositories).map_err(MountError::Repository)?);
    let stack = env_spec::resolve_stack(&spec, &repos)?;
    let key = stack_key(repositories, &stack);
    if let Some(view) = key.as_ref().and_then(|key| router.shared_view(key)) {
        return Ok(Built { view, shared: true });
    }
    let layers = env_spec::load(stack, &repos)?;
    let view = View::build(router.next_view_id(), spec.clone(), &layers, repos, budget).map_err(
        |error| MountError::Build {
            spec: env_spec::shorten(&spec),
            error,
        },
    )?;
    let view = Arc::new(view);
    if let Some(key) = key {
        router.share(key, &view);
    }
    Ok(Built {
        view,
        shared: false,
    })
}

/// The sharing key of a stack of committed layers; none with a directory layer.
fn stack_key(repositories: &[std::path::PathBuf], stack: &[StackItem]) -> Option<StackKey> {
    let manifests = stack
        .iter()
        .map(|item| match item {
            StackItem::Object { manifest, .. } => Some(*manifest),
            StackItem::Dir(_) => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some(StackKey {
        repositories: repositories.to_vec(),
        manifests,
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
            next_id: AtomicU64::new(1),
            router,
        })
    }

    /// Starts watching runtimes' processes (on the current tokio runtime):
    /// a runtime whose last process exits is dropped.
    pub fn start(self: &Arc<Self>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        self.router.start_watching(tx);
        let table = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some((id, reason)) = rx.recv().await {
                let Some(table) = table.upgrade() else { break };
                let reason = match reason {
                    EndReason::LastProcessExited => "last_process_exited",
                };
                table.ended(id, reason);
            }
        });
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Records (or replaces) the runtime whose root is `pid`, named `name`,
    /// showing `view` to its processes.
    pub fn mount(
        &self,
        pid: i32,
        name: String,
        env_spec: String,
        view: Arc<View>,
    ) -> Result<Runtime, MountError> {
        check_name(&name)?;
        let start_time = platform::start_time(pid).map_err(|_| MountError::NoSuchProcess(pid))?;
        let uid = platform::process_uid(pid).map_err(|_| MountError::NoSuchProcess(pid))?;
        let runtime = Runtime {
            root_pid: pid.into(),
            env_spec,
            since_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
            name: name.clone(),
            running: true,
            ..Runtime::default()
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let replaced = {
            let mut table = self.lock();
            if table
                .values()
                .any(|e| e.runtime.name == name && e.runtime.root_pid != i64::from(pid))
            {
                return Err(MountError::NameTaken(name));
            }
            let replaced = table.insert(
                pid,
                Entry {
                    runtime: runtime.clone(),
                    id,
                },
            );
            self.router
                .add_runtime(id, pid, RuntimeRoute::new(view, name, uid, start_time));
            replaced
        };
        if let Some(old) = replaced {
            self.router.remove_runtime(old.id);
            self.log_end(&old.runtime, "replaced");
        }
        self.record_count();
        Ok(runtime)
    }

    /// `Unmount`: ends the runtime whose root is `pid` now.
    pub fn remove(&self, pid: i32, reason: &str) -> Option<Runtime> {
        let removed = self.lock().remove(&pid)?;
        self.router.remove_runtime(removed.id);
        self.record_count();
        self.log_end(&removed.runtime, reason);
        Some(removed.runtime)
    }

    /// The router found runtime `id` empty and dropped its route.
    fn ended(&self, id: RuntimeId, reason: &str) {
        let removed = {
            let mut table = self.lock();
            let pid = table.iter().find(|(_, e)| e.id == id).map(|(pid, _)| *pid);
            pid.and_then(|pid| table.remove(&pid))
        };
        if let Some(removed) = removed {
            self.record_count();
            self.log_end(&removed.runtime, reason);
        }
    }

    fn record_count(&self) {
        crate::telemetry::metrics::metrics()
            .active_runtimes
            .record(self.len() as u64, &[]);
    }

    fn log_end(&self, runtime: &Runtime, reason: &str) {
        tracing::info!(
            event = "service.runtime_ended",
            root_pid = runtime.root_pid,
            runtime = runtime.name.as_str(),
            env_spec = crate::tracking::env_spec::shorten(&runtime.env_spec),
            reason,
            active_runtimes = self.len(),
            live_views = self.router.live_views(),
            "runtime ended"
        );
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
