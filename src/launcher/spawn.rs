//! Starting the service detached, and hearing whether it came up.
//!
//! Process tree while it starts:
//!
//! ```text
//! launcher ── nanny (setsid; waits for the service) ── service (exec'd)
//! ```
//!
//! The service is a grandchild so it never becomes a child of the command that
//! `spfs run` execs (a command that waits for all its children would otherwise
//! wait for the service). The nanny exists only during startup: if the service
//! exits before it is ready, the nanny writes its exit status on the readiness
//! pipe; once the service says it is ready the launcher kills the nanny and the
//! service is adopted by init.
//!
//! The readiness pipe carries the lines `contract::ready` defines: from the
//! service when it is SERVING or its startup failed, from the nanny when the
//! service exits (or cannot be started).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::unix::pipe;

use super::nanny::{self, ChildFds, Exec};
use crate::contract::{ReadyLine, StartReason, READY_FD_VAR};
use crate::error::{Error, Result};
use crate::paths::Paths;
use crate::settings::Settings;

/// Past this size the service's stderr file is moved aside before a start.
const STDERR_ROTATE_BYTES: u64 = 1 << 20;
const STDERR_TAIL_LINES: usize = 20;

/// A service being started: the nanny's pid and the read end of the pipe.
pub struct Starting {
    nanny: Pid,
    ready: pipe::Receiver,
    stderr_path: PathBuf,
    stderr_offset: u64,
}

/// What the readiness pipe said.
#[derive(Debug)]
pub enum Outcome {
    Ready { pid: i32 },
    Failed(Error),
}

/// Forks the nanny, which forks and execs `binary service MOUNTPOINT`.
pub fn spawn(binary: &Path, settings: &Settings) -> Result<Starting> {
    // macOS: the service binary cannot even start without macFUSE's library;
    // say what to install instead of showing dyld's error.
    crate::platform::check_before_service_spawn().map_err(|missing| Error::ServiceFailed {
        reason: StartReason::FuseUnavailable,
        message: crate::telemetry::with_fix(&missing.problem, Some(&missing.fix)),
        stderr_tail: String::new(),
    })?;
    let stdio = Stdio::open(&settings.paths)?;
    let (read_end, write_end) = crate::platform::cloexec_pipe()
        .map_err(|e| spawn_error("cannot create the readiness pipe", e))?;
    let ready_fd = write_end.as_raw_fd();
    let program = binary.as_os_str().as_bytes();
    let exec = Exec::new(
        program,
        &service_args(program, settings)
            .iter()
            .map(Vec::as_slice)
            .collect::<Vec<_>>(),
        &child_env(&settings.paths, ready_fd),
    )?;
    let fds = ChildFds {
        devnull: stdio.devnull.as_raw_fd(),
        stderr: stdio
            .stderr
            .as_ref()
            .map_or(stdio.devnull.as_raw_fd(), |f| f.as_raw_fd()),
        ready: ready_fd,
    };
    let nanny = nanny::fork_nanny(&exec, &fds).map_err(|e| spawn_error("fork failed", e))?;
    drop(write_end);
    let ready = pipe::Receiver::from_owned_fd(read_end)
        .map_err(|e| spawn_error("cannot watch the readiness pipe", e))?;
    Ok(Starting {
        nanny,
        ready,
        stderr_path: stdio.stderr_path,
        stderr_offset: stdio.stderr_offset,
    })
}

fn spawn_error(what: &str, err: std::io::Error) -> Error {
    Error::io(format!("cannot start the service: {what}"), err)
}

/// The service's stdin (/dev/null), and its stdout and stderr: a private
/// file in the log dir. When the log dir cannot be used (this launcher has
/// already warned), the service still starts, with its output discarded:
/// it logs to stderr.
struct Stdio {
    devnull: File,
    stderr: Option<File>,
    stderr_path: PathBuf,
    /// Where this start's output begins in the stderr file.
    stderr_offset: u64,
}

impl Stdio {
    fn open(paths: &Paths) -> Result<Stdio> {
        let devnull = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(|e| spawn_error("cannot open /dev/null", e))?;
        let stderr_path = paths.service_stderr();
        let mut stderr_offset = 0;
        let stderr = crate::paths::ensure_log_dir(&paths.log_dir)
            .ok()
            .and_then(|()| {
                stderr_offset = prepare_stderr_file(&stderr_path);
                crate::telemetry::open_private(&stderr_path).ok()
            });
        Ok(Stdio {
            devnull,
            stderr,
            stderr_path,
            stderr_offset,
        })
    }
}

/// `binary service MOUNTPOINT [--idle-timeout MS]`.
fn service_args(binary: &[u8], settings: &Settings) -> Vec<Vec<u8>> {
    let mut args = vec![
        binary.to_vec(),
        b"service".to_vec(),
        settings.paths.mountpoint.as_os_str().as_bytes().to_vec(),
    ];
    if let Some(idle) = settings.idle_timeout {
        args.push(b"--idle-timeout".to_vec());
        args.push(format!("{}ms", idle.as_millis()).into_bytes());
    }
    args
}

/// The service's whole environment: what it reads of ours
/// ([`passed_to_service`]), our paths (it must agree with us on every
/// path, whatever its own defaults), the readiness fd, and the trace
/// context (its startup joins our trace).
fn child_env(paths: &Paths, ready_fd: RawFd) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut env: Vec<(Vec<u8>, Vec<u8>)> = std::env::vars_os()
        .filter(|(k, _)| k.to_str().is_some_and(passed_to_service))
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    for (key, value) in paths.to_env() {
        env.push((
            key.as_bytes().to_vec(),
            value.as_os_str().as_bytes().to_vec(),
        ));
    }
    env.push((
        READY_FD_VAR.as_bytes().to_vec(),
        ready_fd.to_string().into_bytes(),
    ));
    for (key, value) in crate::telemetry::otel::current_trace_headers() {
        env.push((key.to_uppercase().into_bytes(), value.into_bytes()));
    }
    env
}

/// The service outlives the command that started it and serves later ones:
/// it gets only the variables it reads (documented in docs/security.md),
/// never the launcher's secrets. The paths, the readiness fd and the trace
/// context are set separately.
fn passed_to_service(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "TMPDIR",
        "TZ",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "RUST_BACKTRACE",
        "RUST_LIB_BACKTRACE",
    ];
    const PREFIXES: &[&str] = &["LC_", "XDG_", "SPFS_", "OTEL_"];
    // The name of the runtime the launcher runs in: the service belongs to no
    // runtime, and must not look like a process of one when members are counted.
    name != READY_FD_VAR
        && !Paths::ENV_VARS.contains(&name)
        && name != crate::contract::RUNTIME_VAR
        && (EXACT.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p)))
}

impl Starting {
    /// Reads the pipe until the service is ready or has failed. Cancel-safe in
    /// the sense that dropping it (on the deadline) kills and reaps the nanny.
    pub async fn wait(mut self) -> Outcome {
        let mut lines = BufReader::new(&mut self.ready).lines();
        let mut error: Option<(StartReason, String)> = None;
        loop {
            let line = match lines.next_line().await {
                Ok(Some(line)) => line,
                Ok(None) | Err(_) => break,
            };
            let status = match ReadyLine::parse(&line) {
                Some(ReadyLine::Ready { pid }) => return Outcome::Ready { pid },
                Some(ReadyLine::Failed {
                    reason,
                    error: message,
                }) => {
                    error = Some((reason, message));
                    // Keep reading: the nanny reports the exit next, then EOF.
                    continue;
                }
                Some(ReadyLine::Exited { code }) => format!("exit code {code}"),
                Some(ReadyLine::Signaled { signal }) => format!("killed by signal {signal}"),
                None => continue,
            };
            return Outcome::Failed(self.failure(error, status));
        }
        Outcome::Failed(self.failure(error, "no exit status reported".into()))
    }

    fn failure(&self, error: Option<(StartReason, String)>, status: String) -> Error {
        let stderr_tail = read_tail(&self.stderr_path, self.stderr_offset);
        match error {
            Some((reason, message)) => Error::ServiceFailed {
                reason,
                message,
                stderr_tail,
            },
            None => Error::ServiceDied {
                status,
                log: self.stderr_path.clone(),
                stderr_tail,
            },
        }
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        // The nanny is blocked in waitpid (service running) or about to exit.
        let _ = kill(self.nanny, Signal::SIGKILL);
        let _ = waitpid(self.nanny, None);
    }
}

/// Moves a large stderr file aside; returns the offset new output starts at.
fn prepare_stderr_file(path: &Path) -> u64 {
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if len > STDERR_ROTATE_BYTES {
        let mut old = path.as_os_str().to_owned();
        old.push(".1");
        if std::fs::rename(path, &old).is_ok() {
            return 0;
        }
    }
    len
}

/// The last lines written to `path` after `offset`.
fn read_tail(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    if let Ok(mut file) = opened {
        let _ = file.seek(SeekFrom::Start(offset));
        let mut bytes = Vec::new();
        let _ = file.take(1 << 20).read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_gets_what_it_reads_and_nothing_else() {
        for kept in [
            "PATH",
            "HOME",
            "USER",
            "LANG",
            "LC_ALL",
            "XDG_STATE_HOME",
            "SPFS_LOG",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "RUST_BACKTRACE",
        ] {
            assert!(passed_to_service(kept), "{kept}");
        }
        for dropped in [
            "AWS_SECRET_ACCESS_KEY",
            "GITHUB_TOKEN",
            "LD_PRELOAD",
            "SSH_AUTH_SOCK",
            "TRACEPARENT",
            READY_FD_VAR,
            "SPFS_RUNTIME_DIR",
        ] {
            assert!(!passed_to_service(dropped), "{dropped}");
        }
    }
}
