//! macOS: `sysctl(KERN_PROC_PID)` for process facts, kqueue
//! `EVFILT_PROC`/`NOTE_EXIT` for exit notification, macFUSE (kernel-extension
//! backend only) for the mount: its detection, mount options, the
//! `allow_other` permission, and the check that the mount is really in place.
//!
//! Type-checked and linted in CI for aarch64- and x86_64-apple-darwin
//! (`.ci/macos-check`); never run on a Mac. Written against the documented
//! libc, nix and macFUSE interfaces; `docs/macos.md` says what each choice is for.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::event::{EvFlags, EventFilter, FilterFlag, KEvent, Kqueue};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::home_dir;

/// Where macFUSE installs itself.
const MACFUSE_BUNDLE: &str = "/Library/Filesystems/macfuse.fs";
/// macFUSE's loader for its kernel extension (setuid root).
const MACFUSE_LOADER: &str = "/Library/Filesystems/macfuse.fs/Contents/Resources/load_macfuse";
/// Exists only while macFUSE's kernel extension is loaded.
const MACFUSE_VERSION_SYSCTL: &str = "vfs.generic.macfuse.version.number";
/// The group whose members may use `allow_other` (default: admin, gid 80).
const MACFUSE_ADMIN_GROUP_SYSCTL: &str = "vfs.generic.macfuse.tunables.admin_group";

/// How to install macFUSE.
const INSTALL_STEP: &str = "install macFUSE (`brew install --cask macfuse`, or the installer from https://macfuse.github.io), then";
/// How to get macFUSE's kernel extension approved and loaded.
const KEXT_STEPS: &str = "on Apple Silicon first allow kernel extensions: shut down, hold the power button to enter Recovery, Utilities > Startup Security Utility, choose Reduced Security and allow user management of kernel extensions from identified developers; then open System Settings > Privacy & Security, click Allow for the developer \"Benjamin Fleischer\", and restart. See docs/macos.md";

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

/// Whether macFUSE is installed and its kernel extension is (or can be)
/// loaded, with the steps when not. Only the kernel-extension backend gives
/// the caller's pid that per-process views need: macFUSE's FSKit backend and
/// FUSE-T do not (docs/macos.md), so neither is accepted as "available".
pub fn check_fuse_available() -> std::result::Result<(), super::Unusable> {
    if !Path::new(MACFUSE_BUNDLE).exists() {
        return Err(super::Unusable::new(
            format!(
                "FUSE is not available: macFUSE is not installed ({MACFUSE_BUNDLE} is missing)"
            ),
            format!("{INSTALL_STEP} {KEXT_STEPS}"),
        ));
    }
    if kext_loaded() {
        return Ok(());
    }
    // What a mount would do first; it fails until the extension is approved.
    let loaded = std::process::Command::new(MACFUSE_LOADER)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if loaded && kext_loaded() {
        Ok(())
    } else {
        Err(super::Unusable::new(
            format!("FUSE is not available: macFUSE is installed but its kernel extension cannot be loaded ({MACFUSE_LOADER} failed; not approved yet?)"),
            KEXT_STEPS,
        ))
    }
}

/// What to add to a mount failure: the kernel extension is the usual cause.
pub fn mount_failure_hint() -> String {
    if kext_loaded() {
        String::new()
    } else {
        format!("; macFUSE's kernel extension is not loaded: {KEXT_STEPS}")
    }
}

fn kext_loaded() -> bool {
    sysctl_bytes(MACFUSE_VERSION_SYSCTL).is_some()
}

/// The raw value of a sysctl by name, or None when it does not exist.
fn sysctl_bytes(name: &str) -> Option<Vec<u8>> {
    let name = CString::new(name).ok()?;
    let mut size = 0usize;
    // SAFETY: a null buffer asks only for the size.
    let rc = unsafe {
        libc::sysctlbyname(
            name.as_ptr(),
            std::ptr::null_mut(),
            &mut size,
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 {
        return None;
    }
    let mut buffer = vec![0u8; size];
    // SAFETY: the buffer holds `size` bytes and sysctl writes at most that.
    let rc = unsafe {
        libc::sysctlbyname(
            name.as_ptr(),
            buffer.as_mut_ptr().cast(),
            &mut size,
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 {
        return None;
    }
    buffer.truncate(size);
    Some(buffer)
}

/// Unmounts even when the FUSE server is gone or the mount is busy. macOS has
/// no lazy (detach) unmount: `MNT_FORCE` unmounts at once, and processes that
/// still use files there get errors (ENXIO/EBADF) from then on.
pub fn force_unmount(path: &Path) -> io::Result<()> {
    nix::mount::unmount(path, nix::mount::MntFlags::MNT_FORCE).map_err(io::Error::from)
}

/// A dead macFUSE mount answers with ENOTCONN or ENXIO ("Device not configured").
pub fn is_stale_mount_error(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOTCONN | libc::ENXIO))
}

/// Every mounted filesystem as (mount point, type name), from
/// `getfsstat(MNT_NOWAIT)`: the kernel's table, without asking any filesystem
/// (so a hung FUSE server cannot block it).
fn mounts() -> io::Result<Vec<(PathBuf, String)>> {
    // SAFETY: a null buffer asks only for the count.
    let count = unsafe { libc::getfsstat(std::ptr::null_mut(), 0, libc::MNT_NOWAIT) };
    if count < 0 {
        return Err(io::Error::last_os_error());
    }
    // Room for mounts added between the two calls.
    let capacity = count as usize + 8;
    let mut table: Vec<libc::statfs> = Vec::with_capacity(capacity);
    let bytes = (capacity * std::mem::size_of::<libc::statfs>()) as libc::c_int;
    // SAFETY: the buffer has room for `capacity` entries, `bytes` long.
    let filled = unsafe { libc::getfsstat(table.as_mut_ptr(), bytes, libc::MNT_NOWAIT) };
    if filled < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: getfsstat initialised the first `filled` entries.
    unsafe { table.set_len(filled as usize) };
    Ok(table
        .iter()
        .map(|entry| {
            // SAFETY: both are NUL-terminated char arrays filled by the kernel.
            let on = unsafe { CStr::from_ptr(entry.f_mntonname.as_ptr()) };
            let kind = unsafe { CStr::from_ptr(entry.f_fstypename.as_ptr()) };
            (
                PathBuf::from(OsStr::from_bytes(on.to_bytes())),
                kind.to_string_lossy().into_owned(),
            )
        })
        .collect())
}

/// Whether some filesystem is mounted exactly at `path`.
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    let path = path.canonicalize()?;
    Ok(mounts()?.iter().any(|(on, _)| *on == path))
}

/// Whether a macFUSE filesystem is mounted at `canonical` (an already
/// resolved path). macFUSE mounts asynchronously: the mount call returns
/// before the kernel has finished, so the service waits for this.
pub fn is_fuse_mounted_at(canonical: &Path) -> io::Result<bool> {
    Ok(mounts()?
        .iter()
        .any(|(on, kind)| on == canonical && (kind == "macfuse" || kind == "osxfuse")))
}

/// Requests from other users are served only when asked for
/// (`SPFS_ALLOW_OTHER=1`): macFUSE grants `allow_other` only to root.
pub const ALLOW_OTHER_BY_DEFAULT: bool = false;

/// `allow_other` needs root or membership of macFUSE's admin group
/// (`vfs.generic.macfuse.tunables.admin_group`, default `admin`, gid 80).
pub fn allow_other_permitted() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let Some(bytes) = sysctl_bytes(MACFUSE_ADMIN_GROUP_SYSCTL) else {
        return false;
    };
    let Ok(raw) = <[u8; 4]>::try_from(bytes.as_slice()) else {
        return false;
    };
    let admin = u32::from_ne_bytes(raw);
    if nix::unistd::getegid().as_raw() == admin {
        return true;
    }
    // nix has no getgroups for Apple targets (it can exceed NGROUPS there).
    let mut groups = vec![0 as libc::gid_t; 64];
    // SAFETY: the buffer holds groups.len() gids.
    let count = unsafe { libc::getgroups(groups.len() as libc::c_int, groups.as_mut_ptr()) };
    count > 0 && groups[..count as usize].contains(&admin)
}

/// macFUSE's own mount options, beside the common ones (`vfs::mount`
/// passes them; docs/macos.md explains each).
pub const MACFUSE_MOUNT_OPTIONS: &[&str] = &[
    // macFUSE ignores entry TTLs: without this the kernel's name cache
    // would show one runtime's /spfs entries to every process.
    "novncache",
    // A local volume, not a network one, for Finder and Spotlight.
    "local",
    // Not shown in Finder's sidebar or on the desktop.
    "nobrowse",
    // No `._` AppleDouble files: answered in the kernel, never asked for.
    "noappledouble",
    // No com.apple.* extended attributes (Finder info, quarantine).
    "noapplexattr",
    "volname=spfs",
];

/// macFUSE's FUSE_INIT flag for `renamex_np(2)`'s RENAME_EXCL (macFUSE's
/// `fuse_kernel.h`; fuser 0.18 does not name it). `vfs::mount::fuse_init`
/// says why it is asked for.
pub const FUSE_RENAME_EXCL: u64 = 1 << 26;

/// The major version of the loaded macFUSE (`vfs.generic.macfuse.version.number`).
pub fn macfuse_major_version() -> Option<u32> {
    sysctl_bytes(MACFUSE_VERSION_SYSCTL).and_then(|raw| {
        let text = String::from_utf8_lossy(&raw)
            .trim_end_matches('\0')
            .to_owned();
        text.split('.').next()?.trim().parse::<u32>().ok()
    })
}

/// The open flags a `create` request means. macFUSE always sends
/// `O_CREAT | O_RDWR` (the caller's O_EXCL stays in the kernel), and calls
/// `create` only after a lookup found nothing; macOS's `vn_open_auth` then
/// retries as a plain open on EEXIST unless the caller asked for O_EXCL.
/// So a name created meanwhile must get EEXIST, or two racing
/// `open(O_CREAT|O_EXCL)` (lock files) would both succeed.
pub fn create_flags(flags: i32) -> i32 {
    flags | libc::O_EXCL
}

/// How to make `path` usable as the mountpoint when it is missing or is not
/// the user's: `/` is read-only, so `/spfs` must come from /etc/synthetic.conf
/// as a symlink to a directory the user owns (a non-root user may mount only
/// on a directory they own).
pub fn mountpoint_fix(path: &Path) -> String {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/Users/YOU"));
    let target = home.join(".spfs-mount");
    match path
        .strip_prefix("/")
        .ok()
        .filter(|rest| rest.components().count() == 1)
    {
        Some(name) => format!(
            "run `mkdir -p {target}`, add the line `{name}<TAB>{target}` (a real tab) to /etc/synthetic.conf (`printf '{name}\\t{target}\\n' | sudo tee -a /etc/synthetic.conf`), then run `sudo /System/Library/Filesystems/apfs.fs/Contents/Resources/apfs.util -t` or restart, so that {path} is a symlink to a directory you own; or set SPFS_MOUNTPOINT to a directory you own",
            name = name.display(),
            target = target.display(),
            path = path.display(),
        ),
        None => format!(
            "create it as yourself (`mkdir -p {0}`), or set SPFS_MOUNTPOINT to a directory you own",
            path.display()
        ),
    }
}

/// Clock-independent ordering of start times is not available: macOS records
/// a process's start as wall-clock time (`p_starttime`), and reading the
/// monotonic one (`proc_pid_rusage`) is refused for other users' processes.
pub const START_TIMES_ORDERED: bool = false;

/// The service binary links macFUSE's libfuse.2.dylib and dies in dyld
/// without it: the launcher checks for macFUSE first, with the steps.
pub fn check_before_service_spawn() -> std::result::Result<(), super::Unusable> {
    check_fuse_available()
}

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
