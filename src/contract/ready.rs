//! The readiness pipe: the launcher passes the write end of a pipe to the
//! service it starts (fd number in [`READY_FD_VAR`]), and reads one line
//! of JSON from it for each thing that happens while the service starts:
//!
//! | line | written by | [`ReadyLine`] |
//! |---|---|---|
//! | `{"ready":true,"pid":N}` | the service, once SERVING | `Ready` |
//! | `{"error":"...","reason":"..."}` | the service, or the nanny (`exec_failed`, `fork_failed`) | `Failed` |
//! | `{"exit_code":N}` | the nanny, when the service exits | `Exited` |
//! | `{"signal":N}` | the nanny, when a signal kills the service | `Signaled` |
//!
//! The nanny runs between `fork` and `exec`, where only async-signal-safe
//! calls are allowed: it writes its lines from the byte pieces below
//! ([`NANNY_EXEC_FAILED`] and the others) with a decimal number between
//! them, no allocation, no JSON library. The unit test parses exactly those
//! bytes, so the two sides cannot drift apart.

use std::fmt;

/// Variable telling the service which inherited fd is the readiness pipe.
pub const READY_FD_VAR: &str = "SPFS_READY_FD";

/// The nanny's lines: `head`, a decimal number, `tail`.
pub type NannyLine = (&'static [u8], &'static [u8]);

/// `exec` of the service binary failed; the number is `errno`.
pub const NANNY_EXEC_FAILED: NannyLine = (
    b"{\"reason\":\"exec_failed\",\"error\":\"cannot execute the service binary, errno ",
    b"\"}\n",
);
/// The nanny's `fork` of the service failed; the number is `errno`.
pub const NANNY_FORK_FAILED: NannyLine = (
    b"{\"reason\":\"fork_failed\",\"error\":\"fork failed, errno ",
    b"\"}\n",
);
/// The service exited; the number is its exit code.
pub const NANNY_EXITED: NannyLine = (b"{\"exit_code\":", b"}\n");
/// A signal killed the service; the number is the signal.
pub const NANNY_SIGNALED: NannyLine = (b"{\"signal\":", b"}\n");

/// Why a service did not start: the `reason` of its failure line, of the
/// `service.start_failed` and `launcher.start_failed` log events, and of
/// the start-failure metric. The names are stable: docs and dashboards
/// use them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartReason {
    /// The runtime dir is not ours alone.
    UnsafeRuntimeDir,
    /// A setting has a value that cannot be used.
    Settings,
    /// Another service holds the pidfile.
    AlreadyRunning,
    /// Something other than a regular file is at the pidfile's path.
    Pidfile,
    /// The runtime dir cannot be written.
    RuntimeDir,
    /// No FUSE (macFUSE, or /dev/fuse and fusermount3).
    FuseUnavailable,
    /// The mountpoint cannot be used.
    Mountpoint,
    /// Mount options that are not allowed (`allow_other`).
    MountOptions,
    /// The control socket cannot be bound.
    Bind,
    /// The stop signals cannot be handled.
    Signals,
    /// The FUSE mount failed or never appeared.
    MountFailed,
    /// The nanny could not `exec` the service binary.
    ExecFailed,
    /// The nanny could not `fork` the service.
    ForkFailed,
    /// A failure line without a reason.
    StartupFailed,
    /// A reason this build does not know (a service of another version).
    Other(String),
}

impl StartReason {
    /// Every reason this build knows, for docs and tests.
    pub const KNOWN: [StartReason; 14] = [
        StartReason::UnsafeRuntimeDir,
        StartReason::Settings,
        StartReason::AlreadyRunning,
        StartReason::Pidfile,
        StartReason::RuntimeDir,
        StartReason::FuseUnavailable,
        StartReason::Mountpoint,
        StartReason::MountOptions,
        StartReason::Bind,
        StartReason::Signals,
        StartReason::MountFailed,
        StartReason::ExecFailed,
        StartReason::ForkFailed,
        StartReason::StartupFailed,
    ];

    pub fn as_str(&self) -> &str {
        match self {
            StartReason::UnsafeRuntimeDir => "unsafe_runtime_dir",
            StartReason::Settings => "config",
            StartReason::AlreadyRunning => "already_running",
            StartReason::Pidfile => "pidfile",
            StartReason::RuntimeDir => "runtime_dir",
            StartReason::FuseUnavailable => "fuse_unavailable",
            StartReason::Mountpoint => "mountpoint",
            StartReason::MountOptions => "mount_options",
            StartReason::Bind => "bind",
            StartReason::Signals => "signals",
            StartReason::MountFailed => "mount_failed",
            StartReason::ExecFailed => "exec_failed",
            StartReason::ForkFailed => "fork_failed",
            StartReason::StartupFailed => "startup_failed",
            StartReason::Other(name) => name,
        }
    }

    /// The reason named `name` on the pipe.
    pub fn from_name(name: &str) -> StartReason {
        StartReason::KNOWN
            .into_iter()
            .find(|known| known.as_str() == name)
            .unwrap_or_else(|| StartReason::Other(name.to_owned()))
    }
}

impl fmt::Display for StartReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of the readiness pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyLine {
    /// The service is SERVING.
    Ready { pid: i32 },
    /// Startup failed, and why.
    Failed { reason: StartReason, error: String },
    /// The service exited with this code.
    Exited { code: i32 },
    /// A signal killed the service.
    Signaled { signal: i32 },
}

/// The fields of any line; which are set says which line it is.
#[derive(serde::Deserialize, Default)]
struct Fields {
    ready: Option<bool>,
    pid: Option<i32>,
    error: Option<String>,
    reason: Option<String>,
    exit_code: Option<i32>,
    signal: Option<i32>,
}

impl ReadyLine {
    /// The line `text` (without its newline), or `None` for one this build
    /// does not understand (skipped: a later line still counts).
    pub fn parse(text: &str) -> Option<ReadyLine> {
        let fields: Fields = serde_json::from_str(text).ok()?;
        if fields.ready == Some(true) {
            return Some(ReadyLine::Ready {
                pid: fields.pid.unwrap_or(0),
            });
        }
        if let Some(error) = fields.error {
            let reason = fields
                .reason
                .map_or(StartReason::StartupFailed, |r| StartReason::from_name(&r));
            return Some(ReadyLine::Failed { reason, error });
        }
        match (fields.exit_code, fields.signal) {
            (Some(code), _) => Some(ReadyLine::Exited { code }),
            (None, Some(signal)) => Some(ReadyLine::Signaled { signal }),
            (None, None) => None,
        }
    }

    /// The line as the service writes it, newline included.
    pub fn to_line(&self) -> String {
        let value = match self {
            ReadyLine::Ready { pid } => serde_json::json!({"ready": true, "pid": pid}),
            ReadyLine::Failed { reason, error } => {
                serde_json::json!({"error": error, "reason": reason.as_str()})
            }
            ReadyLine::Exited { code } => serde_json::json!({ "exit_code": code }),
            ReadyLine::Signaled { signal } => serde_json::json!({ "signal": signal }),
        };
        format!("{value}\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the nanny writes: `head`, the number, `tail`.
    fn nanny(line: NannyLine, number: i32) -> String {
        let bytes = [line.0, number.to_string().as_bytes(), line.1].concat();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn the_nannys_byte_lines_parse_as_what_they_report() {
        let parse = |line: NannyLine, n: i32| ReadyLine::parse(nanny(line, n).trim_end());
        assert_eq!(
            parse(NANNY_EXEC_FAILED, 2),
            Some(ReadyLine::Failed {
                reason: StartReason::ExecFailed,
                error: "cannot execute the service binary, errno 2".into()
            })
        );
        assert_eq!(
            parse(NANNY_FORK_FAILED, 11),
            Some(ReadyLine::Failed {
                reason: StartReason::ForkFailed,
                error: "fork failed, errno 11".into()
            })
        );
        assert_eq!(
            parse(NANNY_EXITED, -1),
            Some(ReadyLine::Exited { code: -1 })
        );
        assert_eq!(
            parse(NANNY_SIGNALED, 9),
            Some(ReadyLine::Signaled { signal: 9 })
        );
        for line in [
            NANNY_EXEC_FAILED,
            NANNY_FORK_FAILED,
            NANNY_EXITED,
            NANNY_SIGNALED,
        ] {
            assert!(line.1.ends_with(b"\n"), "one line each");
        }
    }

    #[test]
    fn the_services_lines_round_trip_and_unknown_lines_are_skipped() {
        for line in [
            ReadyLine::Ready { pid: 42 },
            ReadyLine::Failed {
                reason: StartReason::Mountpoint,
                error: "mountpoint \"/spfs\" is \"odd\"\nsecond line".into(),
            },
            ReadyLine::Failed {
                reason: StartReason::Other("new_in_a_later_version".into()),
                error: "x".into(),
            },
        ] {
            let text = line.to_line();
            assert_eq!(text.matches('\n').count(), 1, "{text}");
            assert_eq!(ReadyLine::parse(text.trim_end()), Some(line));
        }
        assert_eq!(
            ReadyLine::parse(r#"{"error":"no reason given"}"#),
            Some(ReadyLine::Failed {
                reason: StartReason::StartupFailed,
                error: "no reason given".into()
            })
        );
        for skipped in ["", "not json", "{}", r#"{"ready":false}"#, "[1]"] {
            assert_eq!(ReadyLine::parse(skipped), None, "{skipped}");
        }
    }

    #[test]
    fn every_known_reason_keeps_its_name() {
        for reason in StartReason::KNOWN {
            assert_eq!(StartReason::from_name(reason.as_str()), reason);
        }
        assert_eq!(StartReason::Settings.to_string(), "config");
    }
}
