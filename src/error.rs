//! The errors a user can meet, each worded to say what went wrong and what to do.
//!
//! `Error::reason` gives every variant a stable snake_case name; it is the
//! `reason` field of `launcher.start_failed` log events.

use std::path::PathBuf;
use std::time::Duration;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting (environment variable or flag) has a value we cannot use.
    #[error("{0}")]
    Config(String),

    /// The runtime dir exists but is not safe to use.
    #[error("runtime dir {path} is unsafe: {problem}.\n  fix: {fix}")]
    UnsafeRuntimeDir {
        path: PathBuf,
        problem: String,
        fix: String,
    },

    #[error(
        "cannot find the service binary `spfs-fuse-macos`; looked in: {}.\n  fix: install it beside `spfs`, put it on PATH, or set SPFS_FUSE_SERVICE_BIN to its full path",
        looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    ServiceBinaryNotFound { looked: Vec<PathBuf> },

    /// Something accepts connections on our socket but does not answer `grpc.health.v1`.
    #[error(
        "something is listening on {socket} but it does not answer grpc.health.v1/Check ({detail}).\n  fix: stop the program that owns that socket, or point SPFS_RUNTIME_DIR at another directory"
    )]
    ForeignListener { socket: PathBuf, detail: String },

    #[error(
        "the service on {socket} answered NOT_SERVING for {waited:?} and never became ready.\n  fix: see its log {log}; stop it with `spfs service stop` and retry"
    )]
    NotServing {
        socket: PathBuf,
        waited: Duration,
        log: PathBuf,
    },

    #[error(
        "the service did not become ready within {waited:?} (phase: {phase}).\n  socket: {socket}\n  log: {log}"
    )]
    StartTimeout {
        phase: &'static str,
        waited: Duration,
        socket: PathBuf,
        log: PathBuf,
    },

    /// The service wrote an error line on its readiness pipe.
    #[error("the service failed to start: {message}{}", tail_block(stderr_tail))]
    ServiceFailed {
        reason: String,
        message: String,
        stderr_tail: String,
    },

    /// The service exited before it was ready, without saying why on its pipe.
    #[error(
        "the service exited during startup ({status}) before it was ready.\n  log: {log}{}",
        tail_block(stderr_tail)
    )]
    ServiceDied {
        status: String,
        log: PathBuf,
        stderr_tail: String,
    },

    /// The service said it was ready, then stopped before it could be used,
    /// every time it was started.
    #[error(
        "the service stopped right after it said it was ready ({attempts} attempts; the last Check found it {found}).\n  fix: see its log {log}; if SPFS_SERVICE_IDLE_TIMEOUT is set, make it longer"
    )]
    StoppedAfterReady {
        found: &'static str,
        attempts: u32,
        log: PathBuf,
    },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// spfs's own configuration cannot be used.
    #[error(transparent)]
    SpfsConfig(#[from] crate::storage::config::ConfigError),

    /// A repository could not be read or written.
    #[error(transparent)]
    Storage(#[from] crate::storage::error::StorageError),

    /// A ref that does not parse or resolve.
    #[error(transparent)]
    Spec(#[from] crate::tracking::env_spec::SpecError),

    #[error("{context}: {}", status.message())]
    Rpc {
        context: String,
        status: tonic::Status,
    },
}

fn tail_block(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        let indented: Vec<String> = tail.lines().map(|l| format!("    {l}")).collect();
        format!("\n  last lines of its stderr:\n{}", indented.join("\n"))
    }
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn rpc(context: impl Into<String>, status: tonic::Status) -> Self {
        Error::Rpc {
            context: context.into(),
            status,
        }
    }

    /// Stable name of the failure, for logs and metrics.
    pub fn reason(&self) -> &str {
        match self {
            Error::Config(_) => "config",
            Error::UnsafeRuntimeDir { .. } => "unsafe_runtime_dir",
            Error::ServiceBinaryNotFound { .. } => "binary_not_found",
            Error::ForeignListener { .. } => "foreign_listener",
            Error::NotServing { .. } => "not_serving",
            Error::StartTimeout { .. } => "timeout",
            Error::ServiceFailed { reason, .. } => reason,
            Error::ServiceDied { .. } => "service_died",
            Error::StoppedAfterReady { .. } => "stopped_after_ready",
            Error::Io { .. } => "io",
            Error::SpfsConfig(_) => "spfs_config",
            Error::Storage(_) => "storage",
            Error::Spec(_) => "env_spec",
            Error::Rpc { .. } => "rpc",
        }
    }
}
