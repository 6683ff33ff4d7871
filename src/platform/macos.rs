//! macOS processes: `sysctl(KERN_PROC_PID)` for process facts, kqueue
//! `EVFILT_PROC`/`NOTE_EXIT` for exit notification, `KERN_PROCARGS2` for a
//! process's runtime name, default directories. macFUSE is `macfuse.rs`.
//!
//! Type-checked and linted in CI for aarch64- and x86_64-apple-darwin
//! (`.ci/macos-check`); never run on a Mac. Written against the documented
//! libc, nix and macFUSE interfaces; `docs/macos.md` says what each choice is for.

use std::ffi::{CStr, OsStr};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use nix::sys::event::{EvFlags, EventFilter, FilterFlag, KEvent, Kqueue};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::home_dir;

/// The per-user cache directory macOS provides (`confstr(_CS_DARWIN_USER_CACHE_DIR)`,
/// `/var/folders/../C/`): unlike `$TMPDIR` (`../T/`) it is not swept of files
/// unused for days, and it is the same for every process of the user whatever
/// their environment. Short enough for a socket path.
pub fn default_runtime_dir() -> io::Result<PathBuf> {
    match confstr_path(libc::_CS_DARWIN_USER_CACHE_DIR) {
        Some(dir) => Ok(dir.join("spfs")),
        None => Ok(PathBuf::from(format!(
            "/tmp/spfs-{}",
            nix::unistd::geteuid().as_raw()
        ))),
    }
}

fn confstr_path(name: libc::c_int) -> Option<PathBuf> {
    // SAFETY: with a null buffer confstr only returns the size it needs.
    let len = unsafe { libc::confstr(name, std::ptr::null_mut(), 0) };
    if len == 0 {
        return None;
    }
    let mut buffer = vec![0u8; len];
    // SAFETY: the buffer holds `len` bytes, as confstr was told.
    let written = unsafe { libc::confstr(name, buffer.as_mut_ptr().cast(), len) };
    if written == 0 || written > len {
        return None;
    }
    let text = CStr::from_bytes_until_nul(&buffer).ok()?;
    let path = PathBuf::from(OsStr::from_bytes(text.to_bytes()));
    path.is_absolute().then_some(path)
}

pub fn default_log_dir() -> io::Result<PathBuf> {
    Ok(home_dir()?.join("Library/Logs/spfs"))
}

/// Editable runtimes' changes: `~/Library/Caches/spfs/runtimes`.
pub fn default_scratch_dir() -> io::Result<PathBuf> {
    Ok(home_dir()?.join("Library/Caches/spfs/runtimes"))
}

/// spfs's default local repository: `dirs::data_local_dir()/spfs`, as spfs has it.
pub fn default_repository_root() -> io::Result<PathBuf> {
    Ok(home_dir()?.join("Library/Application Support/spfs"))
}

/// Where the user's spfs configuration lives (`<this>/spfs/spfs.*`): `dirs::config_local_dir()`.
pub fn user_config_dir() -> io::Result<PathBuf> {
    Ok(home_dir()?.join("Library/Application Support"))
}

/// `struct kinfo_proc` of `<sys/sysctl.h>` (with `struct extern_proc` of
/// `<sys/proc.h>`), which the libc crate does not define for Apple targets.
/// Laid out field by field as in the SDK headers (64-bit); the size and offset
/// assertions below hold the layout to the headers' 648 bytes, `e_ppid` at
/// 560, and are evaluated by the macOS type check in CI.
#[repr(C)]
#[derive(Clone, Copy)]
struct KinfoProc {
    kp_proc: ExternProc,
    kp_eproc: Eproc,
}

#[repr(C)]
#[derive(Clone, Copy)]
union ProcUnion {
    /// `p_st1`: two `struct proc *` run-queue links.
    p_st1: [*mut libc::c_void; 2],
    p_starttime: libc::timeval,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct ExternProc {
    p_un: ProcUnion,
    p_vmspace: *mut libc::c_void,
    p_sigacts: *mut libc::c_void,
    p_flag: libc::c_int,
    p_stat: libc::c_char,
    p_pid: libc::pid_t,
    p_oppid: libc::pid_t,
    p_dupfd: libc::c_int,
    user_stack: *mut libc::c_char,
    exit_thread: *mut libc::c_void,
    p_debugger: libc::c_int,
    sigwait: libc::c_int,
    p_estcpu: libc::c_uint,
    p_cpticks: libc::c_int,
    p_pctcpu: u32,
    p_wchan: *mut libc::c_void,
    p_wmesg: *mut libc::c_char,
    p_swtime: libc::c_uint,
    p_slptime: libc::c_uint,
    p_realtimer: libc::itimerval,
    p_rtime: libc::timeval,
    p_uticks: u64,
    p_sticks: u64,
    p_iticks: u64,
    p_traceflag: libc::c_int,
    p_tracep: *mut libc::c_void,
    p_siglist: libc::c_int,
    p_textvp: *mut libc::c_void,
    p_holdcnt: libc::c_int,
    p_sigmask: libc::sigset_t,
    p_sigignore: libc::sigset_t,
    p_sigcatch: libc::sigset_t,
    p_priority: libc::c_uchar,
    p_usrpri: libc::c_uchar,
    p_nice: libc::c_char,
    p_comm: [libc::c_char; 17],
    p_pgrp: *mut libc::c_void,
    p_addr: *mut libc::c_void,
    p_xstat: libc::c_ushort,
    p_acflag: libc::c_ushort,
    p_ru: *mut libc::c_void,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Pcred {
    pc_lock: [libc::c_char; 72],
    pc_ucred: *mut libc::c_void,
    p_ruid: libc::uid_t,
    p_svuid: libc::uid_t,
    p_rgid: libc::gid_t,
    p_svgid: libc::gid_t,
    p_refcnt: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ucred {
    cr_ref: i32,
    cr_uid: libc::uid_t,
    cr_ngroups: libc::c_short,
    cr_groups: [libc::gid_t; 16],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Vmspace {
    dummy: i32,
    dummy2: *mut libc::c_char,
    dummy3: [i32; 5],
    dummy4: [*mut libc::c_char; 3],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Eproc {
    e_paddr: *mut libc::c_void,
    e_sess: *mut libc::c_void,
    e_pcred: Pcred,
    e_ucred: Ucred,
    e_vm: Vmspace,
    e_ppid: libc::pid_t,
    e_pgid: libc::pid_t,
    e_jobc: libc::c_short,
    e_tdev: libc::dev_t,
    e_tpgid: libc::pid_t,
    e_tsess: *mut libc::c_void,
    e_wmesg: [libc::c_char; 8],
    e_xsize: i32,
    e_xrssize: libc::c_short,
    e_xccount: libc::c_short,
    e_xswrss: libc::c_short,
    e_flag: i32,
    e_login: [libc::c_char; 12],
    e_spare: [i32; 4],
}

const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<ExternProc>() == 296);
    assert!(size_of::<Eproc>() == 352);
    assert!(size_of::<KinfoProc>() == 648);
    assert!(offset_of!(ExternProc, p_pid) == 40);
    assert!(offset_of!(ExternProc, p_comm) == 243);
    assert!(offset_of!(Eproc, e_ucred) == 120);
    assert!(offset_of!(Eproc, e_ppid) == 264);
};

/// One process's `kinfo_proc` from `sysctl(CTL_KERN, KERN_PROC, KERN_PROC_PID)`.
/// Unlike `proc_pidinfo(PROC_PIDTBSDINFO)` it has no uid check, so the service
/// can read other users' processes (a `sudo` in a runtime's tree) without root.
fn kinfo(pid: i32) -> io::Result<KinfoProc> {
    let mut mib = [libc::CTL_KERN, libc::KERN_PROC, libc::KERN_PROC_PID, pid];
    let mut info = MaybeUninit::<KinfoProc>::zeroed();
    let mut size = std::mem::size_of::<KinfoProc>();
    // SAFETY: mib names one process; the buffer is one kinfo_proc of `size` bytes.
    let rc = unsafe {
        libc::sysctl(
            mib.as_mut_ptr(),
            mib.len() as libc::c_uint,
            info.as_mut_ptr().cast(),
            &mut size,
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // No such process: success with nothing written.
    if size != std::mem::size_of::<KinfoProc>() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "no such process"));
    }
    // SAFETY: sysctl filled the whole struct (checked above).
    Ok(unsafe { info.assume_init() })
}

/// Parent and start time of a process.
///
/// The start time is `p_starttime` in microseconds: the wall clock when the
/// process started, recorded once. A later clock step does not change it, so
/// comparing it for equality (is this still the process that was routed?) is
/// safe; ordering (a parent started no later than its child) can be off by the
/// size of a clock step between their starts, which the router tolerates by
/// only using it to reject a parent that started after its child.
pub fn process_info(pid: i32) -> io::Result<super::ProcInfo> {
    let info = kinfo(pid)?;
    Ok(super::ProcInfo {
        ppid: info.kp_eproc.e_ppid,
        start_time: start_time_of(&info),
        is_thread: false,
    })
}

/// A process's start time in microseconds since the epoch.
fn start_time_of(info: &KinfoProc) -> u64 {
    // SAFETY: for KERN_PROC_PID the kernel fills the p_starttime arm.
    let start = unsafe { info.kp_proc.p_un.p_starttime };
    (start.tv_sec as u64)
        .saturating_mul(1_000_000)
        .saturating_add(start.tv_usec as u64)
}

/// The user a process runs as (its effective uid).
pub fn process_uid(pid: i32) -> io::Result<u32> {
    Ok(kinfo(pid)?.kp_eproc.e_ucred.cr_uid)
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

/// Clock-independent ordering of start times is not available: macOS records
/// a process's start as wall-clock time (`p_starttime`), and reading the
/// monotonic one (`proc_pid_rusage`) is refused for other users' processes.
pub const START_TIMES_ORDERED: bool = false;

/// glibc's per-thread heaps have no counterpart to tune on macOS: its
/// allocator's magazines return freed regions on their own.
pub fn one_malloc_arena() {}

/// Gives memory freed by a dropped view back to the system. macOS's
/// allocator returns large freed regions on its own (madvise on free), so
/// there is nothing to ask for here.
pub fn release_free_memory() {}

/// The runtime name `pid` carries in the environment it was started with,
/// from `sysctl(KERN_PROCARGS2)` (allowed for our own user's processes): an
/// `int argc`, the executable path, NUL padding, `argc` argument strings,
/// then the environment strings.
pub fn runtime_marker(pid: i32) -> Option<String> {
    let mut max: libc::c_int = 0;
    let mut size = std::mem::size_of::<libc::c_int>();
    let mut mib = [libc::CTL_KERN, libc::KERN_ARGMAX];
    // SAFETY: KERN_ARGMAX writes one int into `max`, whose size is in `size`.
    let rc = unsafe {
        libc::sysctl(
            mib.as_mut_ptr(),
            2,
            (&mut max as *mut libc::c_int).cast(),
            &mut size,
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 || max <= 0 {
        return None;
    }
    let mut buffer = vec![0u8; max as usize];
    let mut size = buffer.len();
    let mut mib = [libc::CTL_KERN, libc::KERN_PROCARGS2, pid];
    // SAFETY: the buffer is `size` bytes; the kernel writes at most that many.
    let rc = unsafe {
        libc::sysctl(
            mib.as_mut_ptr(),
            3,
            buffer.as_mut_ptr().cast(),
            &mut size,
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 || size < 4 {
        return None;
    }
    let data = &buffer[..size];
    let argc = i32::from_ne_bytes(data[..4].try_into().ok()?).max(0) as usize;
    let mut rest = &data[4..];
    // The executable path, then its NUL padding.
    let end = rest.iter().position(|b| *b == 0)?;
    rest = &rest[end..];
    let start = rest.iter().position(|b| *b != 0)?;
    rest = &rest[start..];
    for _ in 0..argc {
        let end = rest.iter().position(|b| *b == 0)?;
        rest = rest.get(end + 1..)?;
    }
    super::marker_in_environ(rest)
}

/// Processes that started this long before a runtime's root are not
/// looked into: none of them can have been started from the runtime. Start
/// times here are wall-clock times (`p_starttime`), which a clock set back
/// could disorder, hence the margin rather than the root's start itself.
const MARKER_SCAN_MARGIN_US: u64 = 3600 * 1_000_000;

/// Every process of `uid` that carries runtime name `name`, with its start
/// time. `root_start` is the runtime root's start time: reading a process's
/// arguments and environment (`KERN_PROCARGS2`) costs far more than its
/// `kinfo_proc`, so processes started well before it (most of a login's,
/// started at login) are skipped on their `kinfo_proc` alone.
pub fn processes_with_marker(name: &str, uid: u32, root_start: u64) -> super::MarkerScan {
    // SAFETY: a null buffer asks for the number of pids.
    let count = unsafe { libc::proc_listallpids(std::ptr::null_mut(), 0) };
    if count <= 0 {
        return super::MarkerScan::default();
    }
    // Room for processes started in between.
    let mut pids = vec![0 as libc::pid_t; count as usize + 64];
    let bytes = (pids.len() * std::mem::size_of::<libc::pid_t>()) as libc::c_int;
    // SAFETY: the buffer holds `bytes` bytes of pid_t.
    let filled = unsafe { libc::proc_listallpids(pids.as_mut_ptr().cast(), bytes) };
    if filled <= 0 {
        return super::MarkerScan::default();
    }
    pids.truncate(filled as usize);
    // KERN_PROCARGS2 is not known to read empty during exec: nothing is
    // reported in_exec on macOS.
    let not_before = root_start.saturating_sub(MARKER_SCAN_MARGIN_US);
    let carriers = pids
        .into_iter()
        .filter(|pid| *pid > 0)
        .filter_map(|pid| {
            let info = kinfo(pid).ok()?;
            let start = start_time_of(&info);
            let candidate = info.kp_eproc.e_ucred.cr_uid == uid && start >= not_before;
            candidate.then_some((pid, start))
        })
        .filter(|(pid, _)| runtime_marker(*pid).as_deref() == Some(name))
        .collect();
    super::MarkerScan {
        carriers,
        in_exec: Vec::new(),
    }
}
