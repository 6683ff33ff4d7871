//! macOS: `proc_pidinfo` for process facts, kqueue `EVFILT_PROC`/`NOTE_EXIT` for
//! exit notification, macFUSE for the mount.
//!
//! Not compiled on the Linux machines this project is developed and tested on;
//! written against the documented libc and nix APIs.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::event::{EvFlags, EventFilter, FilterFlag, KEvent, Kqueue};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::home_dir;
use crate::error::Result;

pub fn default_runtime_dir() -> Result<PathBuf> {
    let tmp = std::env::var_os("TMPDIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    Ok(tmp.join("spfs"))
}

pub fn default_log_dir() -> Result<PathBuf> {
    Ok(home_dir()?.join("Library/Logs/spfs"))
}

/// spfs's default local repository: `dirs::data_local_dir()/spfs`, as spfs has it.
pub fn default_repository_root() -> Result<PathBuf> {
    Ok(home_dir()?.join("Library/Application Support/spfs"))
}

/// Where the user's spfs configuration lives (`<this>/spfs/spfs.*`): `dirs::config_local_dir()`.
pub fn user_config_dir() -> Result<PathBuf> {
    Ok(home_dir()?.join("Library/Application Support"))
}

fn bsd_info(pid: i32) -> io::Result<libc::proc_bsdinfo> {
    let mut info = MaybeUninit::<libc::proc_bsdinfo>::zeroed();
    let size = std::mem::size_of::<libc::proc_bsdinfo>() as libc::c_int;
    // SAFETY: the buffer is exactly one proc_bsdinfo, as PROC_PIDTBSDINFO expects.
    let written = unsafe {
        libc::proc_pidinfo(
            pid,
            libc::PROC_PIDTBSDINFO,
            0,
            info.as_mut_ptr().cast(),
            size,
        )
    };
    if written != size {
        return Err(io::Error::new(io::ErrorKind::NotFound, "no such process"));
    }
    // SAFETY: proc_pidinfo filled all of it.
    Ok(unsafe { info.assume_init() })
}

/// Parent and start time (microseconds since the epoch) of a process.
pub fn process_info(pid: i32) -> io::Result<super::ProcInfo> {
    let info = bsd_info(pid)?;
    Ok(super::ProcInfo {
        ppid: info.pbi_ppid as i32,
        start_time: info.pbi_start_tvsec * 1_000_000 + info.pbi_start_tvusec,
        is_thread: false,
    })
}

/// The user a process runs as.
pub fn process_uid(pid: i32) -> io::Result<u32> {
    Ok(bsd_info(pid)?.pbi_uid)
}

/// macFUSE reports the calling process's pid, not a thread id.
pub fn process_of_thread(pid: i32) -> io::Result<i32> {
    Ok(pid)
}

/// Becomes ready when one process exits (a kqueue with `NOTE_EXIT`).
pub struct ExitWatch {
    kqueue: AsyncFd<OwnedFd>,
}

impl ExitWatch {
    pub fn new(pid: i32) -> io::Result<ExitWatch> {
        let kqueue = Kqueue::new()?;
        let event = KEvent::new(
            pid as usize,
            EventFilter::EVFILT_PROC,
            EvFlags::EV_ADD | EvFlags::EV_ONESHOT,
            FilterFlag::NOTE_EXIT,
            0,
            0,
        );
        kqueue
            .kevent(&[event], &mut [], None)
            .map_err(|errno| match errno {
                nix::errno::Errno::ESRCH => {
                    io::Error::new(io::ErrorKind::NotFound, "no such process")
                }
                other => other.into(),
            })?;
        let fd: OwnedFd = kqueue.as_fd().try_clone_to_owned()?;
        Ok(ExitWatch {
            // SAFETY: we own the fd, and the AsyncFd owns it for its whole life.
            kqueue: unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?,
        })
    }

    pub async fn exited(self) {
        // A kqueue fd polls readable once an event (here: the exit) is pending.
        let _ = self.kqueue.readable().await;
    }
}

/// A pipe whose ends are both close-on-exec. macOS has no `pipe2`: set the
/// flag right after `pipe` (the launcher does not fork concurrently).
pub fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = nix::unistd::pipe().map_err(io::Error::from)?;
    for fd in [&read, &write] {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map_err(io::Error::from)?;
    }
    Ok((read, write))
}

/// Marks every fd from 3 up, except `keep`, close-on-exec.
/// Async-signal-safe: called between fork and exec.
pub fn mark_fds_cloexec_except(keep: RawFd) {
    // SAFETY: getdtablesize and fcntl are async-signal-safe; EBADF is harmless.
    let limit = unsafe { libc::getdtablesize() }.min(65_536);
    for fd in 3..limit {
        if fd != keep {
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

/// Whether macFUSE is installed, with the fix when not.
pub fn check_fuse_available() -> std::result::Result<(), String> {
    if Path::new("/Library/Filesystems/macfuse.fs").exists() {
        Ok(())
    } else {
        Err("FUSE is not available: macFUSE is not installed. Install it with `brew install --cask macfuse`, then allow its system extension in System Settings > Privacy & Security and restart".into())
    }
}

/// Unmounts even when the FUSE server is gone.
pub fn force_unmount(path: &Path) -> io::Result<()> {
    nix::mount::unmount(path, nix::mount::MntFlags::MNT_FORCE).map_err(io::Error::from)
}

/// A dead macFUSE mount answers with ENOTCONN or ENXIO ("Device not configured").
pub fn is_stale_mount_error(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOTCONN | libc::ENXIO))
}

/// Whether some filesystem is mounted exactly at `path` (`statfs` f_mntonname).
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    let path = path.canonicalize()?;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let mut stat = MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: statfs fills the struct for a valid NUL-terminated path.
    if unsafe { libc::statfs(c_path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: filled above; f_mntonname is NUL-terminated.
    let stat = unsafe { stat.assume_init() };
    let on = unsafe { std::ffi::CStr::from_ptr(stat.f_mntonname.as_ptr()) };
    Ok(Path::new(std::ffi::OsStr::from_bytes(on.to_bytes())) == path)
}

/// macFUSE accepts `allow_other` from the mounting user.
pub fn allow_other_permitted() -> bool {
    true
}
