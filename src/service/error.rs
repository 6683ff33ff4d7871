//! [`RuntimeError`]: why the service refused a runtime request (`Mount`,
//! `ChangeStack`, `Edit`, `Reset`, `GetRuntime`, `RemoveRuntime`), as data.
//! `service::api` chooses each variant's gRPC code; the message says what
//! was wrong and what to do.

use crate::storage::error::StorageError;
use crate::tracking::env_spec::SpecError;
use crate::vfs::view::BuildError;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("root_pid must be a positive process id, got {0}")]
    BadPid(i64),
    #[error("root_pid {0}: no such process")]
    NoSuchProcess(i32),
    #[error("a runtime named {0:?} is already running; choose another name")]
    NameTaken(String),
    #[error("runtime name {0:?} is not usable: {rules}", rules = crate::contract::NAME_RULES)]
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
    #[error("runtime {0:?} is not editable now: another `spfs commit` (or `spfs edit --off`) froze it; wait for that to finish and look again")]
    NotEditable(String),
    #[error("runtime {0:?} has no changes: it was never editable")]
    NoChanges(String),
    #[error("{what}: {error}")]
    Scratch { what: String, error: std::io::Error },
    #[error("the scratch directory {path} cannot hold your changes safely: {problem}; {fix}", path = .path.display())]
    UnsafeScratch {
        path: std::path::PathBuf,
        problem: String,
        fix: String,
    },
    /// The service is stopping: the launcher starts a new one and retries.
    #[error("the service is shutting down; retry to start a new one")]
    ShuttingDown,
}

impl RuntimeError {
    pub(crate) fn scratch(what: impl Into<String>, error: std::io::Error) -> RuntimeError {
        RuntimeError::Scratch {
            what: what.into(),
            error,
        }
    }
}
