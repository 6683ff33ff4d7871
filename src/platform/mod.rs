//! Process and system facts that differ between Linux and macOS: default
//! directories, parent pid and start time of a process, a notification when a
//! process exits, FUSE availability, mount options and the `allow_other`
//! permission, the kernel's mount table, and forced unmount.
//!
//! What differs lives here and in `vfs::mount` (mount options and the
//! FUSE_INIT flags, which are fuser's types), behind `cfg`; the few other
//! `target_os` checks elsewhere choose between two documented behaviours
//! (an errno, a flag) where the code is. The macOS code is kept
//! small and written against documented APIs (`sysctl(KERN_PROC_PID)`, kqueue
//! `NOTE_EXIT`, `getfsstat`, macFUSE's sysctls); CI type-checks and lints it
//! for both Apple targets (`.ci/macos-check`), but it has not run on a Mac.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::*;

#[cfg(target_os = "macos")]
mod macfuse;
#[cfg(target_os = "macos")]
mod macos;
#[cfg(target_os = "macos")]
pub use macfuse::*;
#[cfg(target_os = "macos")]
pub use macos::*;

use std::io;
use std::path::PathBuf;

/// The `SPFS_RUNTIME=` value in an environment block (NUL-separated
/// `KEY=VALUE` strings, as `/proc/PID/environ` and `KERN_PROCARGS2` hold it).
pub fn marker_in_environ(block: &[u8]) -> Option<String> {
    let prefix = format!("{}=", crate::contract::RUNTIME_VAR);
    block
        .split(|b| *b == 0)
        .find_map(|entry| entry.strip_prefix(prefix.as_bytes()))
        .and_then(|value| std::str::from_utf8(value).ok())
        .filter(|value| !value.is_empty())
        .map(str::to_owned)
}

/// A live service of this user serving `mountpoint`, found without its
/// socket or pidfile. Only Linux can tell (from `/proc`); elsewhere the
/// pidfile is the only way, and this finds nothing.
#[cfg(not(target_os = "linux"))]
pub fn find_service_process(_mountpoint: &std::path::Path) -> Option<i32> {
    None
}

/// The uid that mounted the FUSE filesystem at `path`. Only Linux tells
/// (mountinfo's `user_id`); elsewhere this finds nothing.
#[cfg(not(target_os = "linux"))]
pub fn fuse_mount_owner(_path: &std::path::Path) -> Option<u32> {
    None
}

/// Raises the soft limit on open files as far as the hard limit allows: the
/// service holds one fd per process it watches (a pidfd, or a kqueue on
/// macOS), and macOS starts processes with a soft limit of 256. macOS also
/// refuses more than `OPEN_MAX` (10,240) whatever the hard limit says.
/// Returns the limit now in force.
pub fn raise_fd_limit() -> io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let wanted = if cfg!(target_os = "macos") {
        hard.min(10_240)
    } else {
        hard
    };
    if wanted > soft {
        setrlimit(Resource::RLIMIT_NOFILE, wanted, hard)?;
        return Ok(wanted);
    }
    Ok(soft)
}

/// Something this machine lacks that the service needs (FUSE): what is
/// missing, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unusable {
    pub problem: String,
    pub fix: String,
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.problem)
    }
}

impl Unusable {
    fn new(problem: impl Into<String>, fix: impl Into<String>) -> Unusable {
        Unusable {
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

/// Processes found carrying a runtime's name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MarkerScan {
    /// Each carrier's pid and start time.
    pub carriers: Vec<(i32, u64)>,
    /// Start times of the user's processes whose environment read empty:
    /// caught in the middle of `exec`, before the kernel shows the new
    /// image's environment. Any of them may be a carrier a moment later.
    pub in_exec: Vec<u64>,
}

/// What routing needs to know of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcInfo {
    pub ppid: i32,
    /// Opaque, comparable start time; with the pid it names exactly one process.
    pub start_time: u64,
    /// A thread that is not its process's main thread (Linux ids name threads too).
    pub is_thread: bool,
}

pub fn parent_pid(pid: i32) -> io::Result<i32> {
    Ok(process_info(pid)?.ppid)
}

pub fn start_time(pid: i32) -> io::Result<u64> {
    Ok(process_info(pid)?.start_time)
}

/// `$HOME`; NotFound when it is not set (the caller says which setting
/// can stand in for it).
fn home_dir() -> io::Result<PathBuf> {
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => Ok(PathBuf::from(home)),
        None => Err(io::Error::new(io::ErrorKind::NotFound, "HOME is not set")),
    }
}

/// True when `pid` is this process or one of its ancestors.
pub fn is_self_or_ancestor(pid: i32) -> bool {
    is_same_or_ancestor(pid, std::process::id() as i32)
}

/// True when `candidate` is `of` itself or one of its ancestors.
pub fn is_same_or_ancestor(candidate: i32, of: i32) -> bool {
    let mut current = of;
    // A parent chain longer than this means something odd; stop rather than loop.
    for _ in 0..4096 {
        if current == candidate {
            return true;
        }
        match parent_pid(current) {
            Ok(parent) if parent > 0 && parent != current => current = parent,
            _ => return false,
        }
    }
    false
}

/// Closes every fd from 3 up except `keep`. Async-signal-safe.
///
/// # Safety
/// Closes fds other code may hold: only for the child of a `fork`.
///
/// On Linux one `close_range` per side of `keep` (5.9+): the loop below
/// makes one `close` per possible fd, 20,000 with a common limit, which kept
/// a core busy for about 2.5 ms while the service was starting beside it.
pub unsafe fn close_fds_except(keep: libc::c_int) {
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

/// This thread's `errno`. Async-signal-safe.
///
/// # Safety
/// The pointer is valid for this thread only.
#[cfg(target_os = "linux")]
pub unsafe fn errno_location() -> *mut libc::c_int {
    libc::__errno_location()
}

/// This thread's `errno`. Async-signal-safe.
///
/// # Safety
/// The pointer is valid for this thread only.
#[cfg(target_os = "macos")]
pub unsafe fn errno_location() -> *mut libc::c_int {
    libc::__error()
}
