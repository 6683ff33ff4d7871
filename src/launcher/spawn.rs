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

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::unix::pipe;

use crate::contract::ready::{
    NannyLine, NANNY_EXEC_FAILED, NANNY_EXITED, NANNY_FORK_FAILED, NANNY_SIGNALED,
};
use crate::contract::{ReadyLine, StartReason, READY_FD_VAR, SERVICE_BIN_NAME};
use crate::error::{Error, Result};
use crate::settings::Settings;

/// Past this size the service's stderr file is moved aside before a start.
const STDERR_ROTATE_BYTES: u64 = 1 << 20;
const STDERR_TAIL_LINES: usize = 20;

/// Finds the service binary: `SPFS_FUSE_SERVICE_BIN`, else beside the running
/// program, else on PATH.
pub fn find_service_binary(settings: &Settings) -> Result<PathBuf> {
    let mut looked = Vec::new();
    if let Some(explicit) = &settings.service_bin {
        if explicit.is_file() {
            return Ok(explicit.clone());
        }
        looked.push(explicit.clone());
        return Err(Error::ServiceBinaryNotFound { looked });
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.to_owned()))
    {
        looked.push(dir.join(SERVICE_BIN_NAME));
    }
    if let Some(path) = std::env::var_os("PATH") {
        looked.extend(std::env::split_paths(&path).map(|d| d.join(SERVICE_BIN_NAME)));
    }
    match looked.iter().find(|p| p.is_file()) {
        Some(found) => Ok(found.clone()),
        None => Err(Error::ServiceBinaryNotFound { looked }),
    }
}

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
    let paths = &settings.paths;
    // macOS: the service binary cannot even start without macFUSE's library;
    // say what to install instead of showing dyld's error.
    crate::platform::check_before_service_spawn().map_err(|message| Error::ServiceFailed {
        reason: StartReason::FuseUnavailable,
        message,
        stderr_tail: String::new(),
    })?;
    let spawn_err = |what: &str, err: std::io::Error| {
        Error::io(format!("cannot start the service: {what}"), err)
    };

    let devnull = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| spawn_err("cannot open /dev/null", e))?;
    // The service's stdout and stderr go to a private file in the log dir.
    // When the log dir cannot be used (this launcher has already warned),
    // the service still starts, with its output discarded: it logs to stderr.
    let stderr_path = paths.service_stderr();
    let mut stderr_offset = 0;
    let stderr_file = crate::paths::ensure_log_dir(&paths.log_dir)
        .ok()
        .and_then(|()| {
            stderr_offset = prepare_stderr_file(&stderr_path);
            crate::telemetry::open_private(&stderr_path).ok()
        });
    let (read_end, write_end) = crate::platform::cloexec_pipe()
        .map_err(|e| spawn_err("cannot create the readiness pipe", e))?;
    let ready_fd = write_end.as_raw_fd();

    // Everything the children need is allocated before fork: after it, only
    // async-signal-safe calls are allowed in a multithreaded process.
    let cstring = |bytes: &[u8]| {
        CString::new(bytes).map_err(|_| Error::NulByte {
            what: String::from_utf8_lossy(bytes.split(|b| *b == 0).next().unwrap_or_default())
                .chars()
                .take(60)
                .collect(),
        })
    };
    let program = cstring(binary.as_os_str().as_bytes())?;
    let mut argv = vec![
        program.clone(),
        cstring(b"service")?,
        cstring(paths.mountpoint.as_os_str().as_bytes())?,
    ];
    if let Some(idle) = settings.idle_timeout {
        argv.push(cstring(b"--idle-timeout")?);
        argv.push(cstring(format!("{}ms", idle.as_millis()).as_bytes())?);
    }
    let mut env: Vec<(Vec<u8>, Vec<u8>)> = std::env::vars_os()
        .filter(|(k, _)| k.to_str().is_some_and(passed_to_service))
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    // The service must agree with the launcher on every path, whatever its own defaults.
    for (key, value) in [
        ("SPFS_RUNTIME_DIR", &paths.runtime_dir),
        ("SPFS_LOG_DIR", &paths.log_dir),
        ("SPFS_MOUNTPOINT", &paths.mountpoint),
    ] {
        env.push((
            key.as_bytes().to_vec(),
            value.as_os_str().as_bytes().to_vec(),
        ));
    }
    env.push((
        READY_FD_VAR.as_bytes().to_vec(),
        ready_fd.to_string().into_bytes(),
    ));
    // The OpenTelemetry environment carrier: the service's startup joins our trace.
    for (key, value) in crate::telemetry::otel::current_trace_headers() {
        env.push((key.to_uppercase().into_bytes(), value.into_bytes()));
    }
    let envp: Vec<CString> = env
        .into_iter()
        .map(|(k, v)| cstring(&[k.as_slice(), b"=", v.as_slice()].concat()))
        .collect::<Result<_>>()?;
    let argv_ptrs: Vec<*const libc::c_char> = argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp_ptrs: Vec<*const libc::c_char> = envp
        .iter()
        .map(|e| e.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let root = c"/";
    let child_fds = ChildFds {
        devnull: devnull.as_raw_fd(),
        stderr: stderr_file
            .as_ref()
            .map_or(devnull.as_raw_fd(), |f| f.as_raw_fd()),
        ready: ready_fd,
    };

    // SAFETY: the child branch only makes async-signal-safe calls (see nanny_main).
    let nanny = unsafe { libc::fork() };
    if nanny < 0 {
        return Err(spawn_err("fork failed", std::io::Error::last_os_error()));
    }
    if nanny == 0 {
        // SAFETY: in the forked child; never returns.
        unsafe {
            nanny_main(
                &child_fds,
                program.as_ptr(),
                &argv_ptrs,
                &envp_ptrs,
                root.as_ptr(),
            )
        }
    }
    drop(write_end);
    drop(devnull);
    drop(stderr_file);
    let ready = pipe::Receiver::from_owned_fd(read_end)
        .map_err(|e| spawn_err("cannot watch the readiness pipe", e))?;
    Ok(Starting {
        nanny: Pid::from_raw(nanny),
        ready,
        stderr_path,
        stderr_offset,
    })
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
    const SET_SEPARATELY: &[&str] = &[
        READY_FD_VAR,
        "SPFS_RUNTIME_DIR",
        "SPFS_LOG_DIR",
        "SPFS_MOUNTPOINT",
    ];
    // The name of the runtime the launcher runs in: the service belongs to no
    // runtime, and must not look like a process of one when members are counted.
    !SET_SEPARATELY.contains(&name)
        && name != crate::contract::RUNTIME_VAR
        && (EXACT.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p)))
}

struct ChildFds {
    devnull: libc::c_int,
    stderr: libc::c_int,
    ready: libc::c_int,
}

/// The nanny: new session, fork the service, report how it exits.
///
/// # Safety
/// Only for the child of `fork`; uses async-signal-safe calls only.
unsafe fn nanny_main(
    fds: &ChildFds,
    program: *const libc::c_char,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    root: *const libc::c_char,
) -> ! {
    libc::setsid();
    let service = libc::fork();
    if service == 0 {
        libc::dup2(fds.devnull, 0);
        libc::dup2(fds.stderr, 1);
        libc::dup2(fds.stderr, 2);
        libc::chdir(root);
        // The readiness pipe is the one fd the service inherits beyond stdio.
        libc::fcntl(fds.ready, libc::F_SETFD, 0);
        crate::platform::mark_fds_cloexec_except(fds.ready);
        libc::execve(program, argv.as_ptr(), envp.as_ptr());
        write_line(fds.ready, NANNY_EXEC_FAILED, *errno_location());
        libc::_exit(127);
    }
    if service < 0 {
        write_line(fds.ready, NANNY_FORK_FAILED, *errno_location());
        libc::_exit(1);
    }
    // Hold nothing but the pipe: an inherited spawn lock would outlive a killed launcher.
    for fd in [0, 1, 2] {
        libc::dup2(fds.devnull, fd);
    }
    close_fds_except(fds.ready);
    let mut status = 0;
    while libc::waitpid(service, &mut status, 0) < 0 {
        if *errno_location() != libc::EINTR {
            libc::_exit(1);
        }
    }
    if libc::WIFSIGNALED(status) {
        write_line(fds.ready, NANNY_SIGNALED, libc::WTERMSIG(status));
    } else {
        write_line(fds.ready, NANNY_EXITED, libc::WEXITSTATUS(status));
    }
    libc::_exit(0);
}

/// Closes every fd from 3 up except `keep`. Async-signal-safe.
///
/// On Linux one `close_range` per side of `keep` (5.9+): the loop below
/// makes one `close` per possible fd, 20,000 with a common limit, which kept
/// a core busy for about 2.5 ms while the service was starting beside it.
unsafe fn close_fds_except(keep: libc::c_int) {
    #[cfg(target_os = "linux")]
    {
        let close_range = |low: libc::c_int, high: libc::c_uint| {
            libc::syscall(
                libc::SYS_close_range,
                low as libc::c_uint,
                high,
                0 as libc::c_uint,
            ) == 0
        };
        let below = keep <= 3 || close_range(3, (keep - 1) as libc::c_uint);
        if below && close_range(keep + 1, libc::c_uint::MAX) {
            return;
        }
    }
    let limit = libc::sysconf(libc::_SC_OPEN_MAX).clamp(256, 65_536) as libc::c_int;
    for fd in 3..limit {
        if fd != keep {
            libc::close(fd);
        }
    }
}

#[cfg(target_os = "linux")]
unsafe fn errno_location() -> *mut libc::c_int {
    libc::__errno_location()
}

#[cfg(target_os = "macos")]
unsafe fn errno_location() -> *mut libc::c_int {
    libc::__error()
}

/// Writes `line`'s head, `number` in decimal, and its tail as one `write`.
/// Async-signal-safe.
unsafe fn write_line(fd: libc::c_int, (head, tail): NannyLine, number: i32) {
    let mut buf = [0u8; 256];
    let mut len = 0;
    let mut push = |bytes: &[u8]| {
        let n = bytes.len().min(buf.len() - len);
        buf[len..len + n].copy_from_slice(&bytes[..n]);
        len += n;
    };
    push(head);
    let mut digits = [0u8; 12];
    let mut i = digits.len();
    let negative = number < 0;
    let mut value = (number as i64).unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    if negative {
        i -= 1;
        digits[i] = b'-';
    }
    push(&digits[i..]);
    push(tail);
    libc::write(fd, buf.as_ptr().cast(), len);
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
