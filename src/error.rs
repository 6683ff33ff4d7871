//! The errors a user can meet, as data: each variant's message says what
//! went wrong, and [`Error::fix`] what to do about it, when there is
//! something to do. Commands print both ([`Error::with_fix`]); `spfs
//! doctor` prints them on lines of their own.
//!
//! `Error::reason` gives every variant a stable snake_case name; it is the
//! `reason` field of `launcher.start_failed` log events.

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::Duration;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One of this project's settings (an `SPFS_*` variable) has a value
    /// that cannot be used; the message names it and what to set.
    #[error("{0}")]
    Settings(String),

    /// A command was asked for something it cannot do as asked (a bad
    /// argument, a refused removal); the message says what to give instead.
    #[error("{0}")]
    Usage(String),

    /// The command needs the runtime it runs in, and there is none.
    #[error("no active runtime: {why}")]
    NoRuntime { why: String, hint: String },

    /// `spfs commit` found nothing to commit.
    #[error("nothing to commit{why}")]
    NothingToCommit { why: String, hint: String },

    /// Part of a change was made and part not: what state things are in.
    #[error("{0}")]
    Incomplete(String),

    /// The running service is older than this command and lacks a call.
    #[error("{what}: the running service does not offer {call} (an older version?)")]
    ServiceTooOld { what: String, call: &'static str },

    /// The service answered something the protocol does not allow.
    #[error("the service broke the protocol: {0}")]
    Protocol(String),

    /// The runtime dir exists but is not safe to use.
    #[error("runtime dir {path} is unsafe: {problem}")]
    UnsafeRuntimeDir {
        path: PathBuf,
        problem: String,
        fix: String,
    },

    #[error(
        "cannot find the service binary `spfs-fuse-macos`; looked in: {}",
        looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    ServiceBinaryNotFound { looked: Vec<PathBuf> },

    /// Something accepts connections on our socket but does not answer `grpc.health.v1`.
    #[error(
        "something is listening on {socket} but it does not answer grpc.health.v1/Check ({detail})"
    )]
    ForeignListener { socket: PathBuf, detail: String },

    /// Our service is alive but does not answer on its socket.
    #[error(
        "the spfs service (pid {pid}) is running but does not answer on {socket}: it is stopped (SIGSTOP), hung, or its socket was deleted"
    )]
    ServiceNotAnswering {
        pid: i32,
        socket: PathBuf,
        log: PathBuf,
    },

    /// A probe result that the caller has no use for (a bug if seen).
    #[error("unexpected probe result {found} on {socket}")]
    UnexpectedProbe {
        found: &'static str,
        socket: PathBuf,
    },

    #[error("the service on {socket} answered NOT_SERVING for {waited:?} and never became ready")]
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
        reason: crate::contract::StartReason,
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
        "the service stopped right after it said it was ready ({attempts} attempts; the last Check found it {found})"
    )]
    StoppedAfterReady {
        found: &'static str,
        attempts: u32,
        log: PathBuf,
    },

    /// `spfs service stop` without `--force` while commands use `/spfs`.
    #[error(
        "not stopping the service (pid {pid}): {} runtime(s) are active, and their commands would lose /spfs:{}",
        runtimes.len(),
        runtime_lines(runtimes)
    )]
    RuntimesActive {
        pid: i32,
        runtimes: Vec<ActiveRuntime>,
    },

    /// The service did not exit in time after it was asked to stop.
    #[error("the service (pid {pid}) did not stop within {}s", waited.as_secs())]
    StopTimeout {
        pid: i32,
        waited: Duration,
        log: PathBuf,
    },

    /// A path or environment variable for the service holds a NUL byte,
    /// which no `exec` can pass.
    #[error("cannot start the service: {what:?}... contains a NUL byte")]
    NulByte { what: String },

    /// The connection to the service broke in the middle of a call.
    #[error(
        "the service stopped answering during {during} ({detail}): it died or was killed, so the command was not run"
    )]
    ServiceLost {
        during: &'static str,
        detail: String,
        log: PathBuf,
    },

    /// The directory holding the runtime dir is gone (after logout).
    #[error("the runtime dir's parent {parent} no longer exists (after a logout?)")]
    RuntimeDirParentGone { parent: PathBuf },

    /// The pidfile cannot be used (a symlink or FIFO at its path, or I/O).
    #[error(transparent)]
    PidFile(#[from] crate::contract::pidfile::PidFileError),

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

impl From<crate::encoding::EncodingError> for Error {
    fn from(err: crate::encoding::EncodingError) -> Error {
        Error::Storage(err.into())
    }
}

/// A runtime named in [`Error::RuntimesActive`].
#[derive(Debug, Clone)]
pub struct ActiveRuntime {
    pub root_pid: i64,
    /// Shortened for display.
    pub env_spec: String,
}

fn runtime_lines(runtimes: &[ActiveRuntime]) -> String {
    runtimes
        .iter()
        .map(|r| {
            let spec = if r.env_spec.is_empty() {
                "-"
            } else {
                &r.env_spec
            };
            format!("\n    pid {:<8} {spec}", r.root_pid)
        })
        .collect()
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

    /// Ctrl-C or SIGTERM stopped the work (exit status 130).
    pub fn is_interrupted(&self) -> bool {
        matches!(
            self,
            Error::Storage(crate::storage::error::StorageError::Interrupted)
        )
    }

    /// What to do about it, when there is something to do.
    pub fn fix(&self) -> Option<Cow<'_, str>> {
        let text: Cow<'_, str> = match self {
            Error::NoRuntime { hint, .. } | Error::NothingToCommit { hint, .. } => hint.into(),
            Error::ServiceTooOld { .. } => {
                "once no runtime uses it, restart it with `spfs service stop`".into()
            }
            Error::UnsafeRuntimeDir { fix, .. } => fix.into(),
            Error::ServiceBinaryNotFound { .. } => "install it beside `spfs`, put it on PATH, or set SPFS_FUSE_SERVICE_BIN to its full path".into(),
            Error::ForeignListener { .. } => "stop the program that owns that socket, or point SPFS_RUNTIME_DIR at another directory".into(),
            Error::ServiceNotAnswering { pid, log, .. } => format!(
                "if you stopped it, `kill -CONT {pid}`; otherwise `kill {pid}` (`kill -9 {pid}` if it stays), then retry; its log: {}",
                log.display()
            )
            .into(),
            Error::NotServing { log, .. } => format!(
                "see its log {}; stop it with `spfs service stop` and retry",
                log.display()
            )
            .into(),
            Error::StoppedAfterReady { log, .. } => format!(
                "see its log {}; if SPFS_SERVICE_IDLE_TIMEOUT is set, make it longer",
                log.display()
            )
            .into(),
            Error::RuntimesActive { .. } => {
                "wait for them to finish, or `spfs service stop --force`".into()
            }
            Error::StopTimeout { pid, log, .. } => {
                format!("see {}; end it with `kill -9 {pid}`", log.display()).into()
            }
            Error::NulByte { .. } => "remove the NUL byte from that path or variable".into(),
            Error::ServiceLost { log, .. } => format!(
                "run it again; the next command starts a new service. If it keeps happening, see {}",
                log.display()
            )
            .into(),
            Error::Storage(err) => return err.fix(),
            Error::Spec(err) => return err.fix(),
            _ => return None,
        };
        Some(text)
    }

    /// The message with its fix, as users and the log see it.
    pub fn with_fix(&self) -> String {
        crate::telemetry::with_fix(&self.to_string(), self.fix().as_deref())
    }

    /// Stable name of the failure, for logs and metrics.
    pub fn reason(&self) -> &str {
        match self {
            Error::Settings(_) => "config",
            Error::Usage(_) => "usage",
            Error::NoRuntime { .. } => "no_runtime",
            Error::NothingToCommit { .. } => "nothing_to_commit",
            Error::Incomplete(_) => "incomplete",
            Error::ServiceTooOld { .. } => "service_too_old",
            Error::Protocol(_) => "protocol",
            Error::UnsafeRuntimeDir { .. } => "unsafe_runtime_dir",
            Error::ServiceBinaryNotFound { .. } => "binary_not_found",
            Error::ForeignListener { .. } => "foreign_listener",
            Error::NotServing { .. } => "not_serving",
            Error::ServiceNotAnswering { .. } => "not_answering",
            Error::UnexpectedProbe { .. } => "unexpected_probe",
            Error::StartTimeout { .. } => "timeout",
            Error::ServiceFailed { reason, .. } => reason.as_str(),
            Error::ServiceDied { .. } => "service_died",
            Error::StoppedAfterReady { .. } => "stopped_after_ready",
            Error::RuntimeDirParentGone { .. } => "runtime_dir_lost",
            Error::RuntimesActive { .. } => "runtimes_active",
            Error::ServiceLost { .. } => "service_lost",
            Error::NulByte { .. } => "nul_byte",
            Error::StopTimeout { .. } => "stop_timeout",
            Error::PidFile(_) => "pidfile",
            Error::Io { .. } => "io",
            Error::SpfsConfig(_) => "spfs_config",
            Error::Storage(_) => "storage",
            Error::Spec(_) => "env_spec",
            Error::Rpc { .. } => "rpc",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fix_is_data_and_shown_on_a_line_of_its_own() {
        let err = Error::ServiceBinaryNotFound {
            looked: vec!["/usr/bin/spfs-fuse-macos".into()],
        };
        assert!(!err.to_string().contains("fix"), "{err}");
        assert!(err.fix().unwrap().contains("SPFS_FUSE_SERVICE_BIN"));
        let shown = err.with_fix();
        assert!(
            shown.contains("/usr/bin/spfs-fuse-macos.\n  fix: install it beside `spfs`"),
            "{shown}"
        );
        let no_fix = Error::Usage("give `layer` or `platform`".into());
        assert_eq!(no_fix.fix(), None);
        assert_eq!(no_fix.with_fix(), "give `layer` or `platform`");
        let storage: Error = crate::encoding::Digest::parse("nope").unwrap_err().into();
        assert!(
            storage.with_fix().contains("\n  fix: give a base32 digest"),
            "{}",
            storage.with_fix()
        );
    }
}
