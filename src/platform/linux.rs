//! Linux: `/proc` for process facts, pidfd for exit notification, kernel FUSE.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::home_dir;

/// An `XDG_*` directory variable, if set to an absolute path. The XDG Base
/// Directory spec says a relative one is invalid and must be ignored.
fn xdg_dir(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
}

pub fn default_runtime_dir() -> io::Result<PathBuf> {
    match xdg_dir("XDG_RUNTIME_DIR") {
        Some(dir) => Ok(dir.join("spfs")),
        None => Ok(PathBuf::from(format!(
            "/tmp/spfs-{}",
            nix::unistd::geteuid().as_raw()
        ))),
    }
}

pub fn default_log_dir() -> io::Result<PathBuf> {
    let state = match xdg_dir("XDG_STATE_HOME") {
        Some(dir) => dir,
        None => home_dir()?.join(".local/state"),
    };
    Ok(state.join("spfs/logs"))
}

/// Editable runtimes' changes: `$XDG_CACHE_HOME/spfs/runtimes` (else `~/.cache/...`).
pub fn default_scratch_dir() -> io::Result<PathBuf> {
    let cache = match xdg_dir("XDG_CACHE_HOME") {
        Some(dir) => dir,
        None => home_dir()?.join(".cache"),
    };
    Ok(cache.join("spfs/runtimes"))
}

/// spfs's default local repository: `dirs::data_local_dir()/spfs`, as spfs has it.
pub fn default_repository_root() -> io::Result<PathBuf> {
    let data = match xdg_dir("XDG_DATA_HOME") {
        Some(dir) => dir,
        None => home_dir()?.join(".local/share"),
    };
    Ok(data.join("spfs"))
}

/// Where the user's spfs configuration lives (`<this>/spfs/spfs.*`).
pub fn user_config_dir() -> io::Result<PathBuf> {
    match xdg_dir("XDG_CONFIG_HOME") {
        Some(dir) => Ok(dir),
        None => Ok(home_dir()?.join(".config")),
    }
}

/// Parent and start time of a process, from one read of `/proc/PID/stat`.
pub fn process_info(pid: i32) -> io::Result<super::ProcInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses: skip past its last ')'.
    let after_name = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| io::Error::other("malformed /proc stat"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state); ppid is field 4, starttime field 22.
    let number = |field: usize| -> io::Result<u64> {
        fields
            .get(field - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other("malformed /proc stat"))
    };
    Ok(super::ProcInfo {
        ppid: number(4)? as i32,
        start_time: number(22)?,
        // exit_signal (field 38) is -1 exactly for threads that do not lead their group.
        is_thread: fields.get(38 - 3) == Some(&"-1"),
    })
}

/// The user a process runs as (its effective uid, the owner of `/proc/PID`).
pub fn process_uid(pid: i32) -> io::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(format!("/proc/{pid}"))?.uid())
}

/// The process a thread belongs to (its thread group id).
pub fn process_of_thread(tid: i32) -> io::Result<i32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no Tgid in /proc status"))
}

/// Becomes ready when one process exits (a pidfd, so a reused pid cannot fool it).
pub struct ExitWatch {
    pidfd: AsyncFd<OwnedFd>,
}

impl ExitWatch {
    /// Must be called inside a tokio runtime. `NotFound` if there is no such process.
    pub fn new(pid: i32) -> io::Result<ExitWatch> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::ESRCH) => io::Error::new(io::ErrorKind::NotFound, "no such process"),
                _ => err,
            });
        }
        // SAFETY: the syscall returned a fresh fd that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        Ok(ExitWatch {
            // SAFETY: we own the fd, and the AsyncFd owns it for its whole life.
            pidfd: unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }?,
        })
    }

    pub async fn exited(self) {
        // A pidfd polls readable once the process has exited; errors mean the same.
        let _ = self.pidfd.readable().await;
    }
}

/// A pipe whose ends are both close-on-exec from the start.
pub fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// Marks every fd from 3 up, except `keep`, close-on-exec.
/// Async-signal-safe: called between fork and exec.
pub fn mark_fds_cloexec_except(keep: RawFd) {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    let ranges = [(3, keep - 1), (keep + 1, RawFd::MAX)];
    for (low, high) in ranges {
        if low > high {
            continue;
        }
        // SAFETY: close_range with CLOEXEC only sets flags on fds in range.
        let done = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                low as libc::c_uint,
                high as libc::c_uint,
                CLOSE_RANGE_CLOEXEC,
            )
        } == 0;
        if !done {
            // Kernels before 5.11: walk a bounded range by hand.
            for fd in low..high.min(4096) {
                // SAFETY: fcntl on a closed fd just fails with EBADF.
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            }
        }
    }
}

/// Whether a FUSE filesystem can be mounted here, with the fix when not.
pub fn check_fuse_available() -> std::result::Result<(), super::Unusable> {
    if !Path::new("/dev/fuse").exists() {
        return Err(super::Unusable::new(
            "FUSE is not available: /dev/fuse does not exist",
            "Install fuse3 (`apt install fuse3` or `dnf install fuse3`) and load the module (`modprobe fuse`)",
        ));
    }
    let root = nix::unistd::geteuid().is_root();
    // libfuse and fuser open /dev/fuse themselves before they ask fusermount3,
    // so a device only root may open (mode 0600) fails every mount.
    if !root {
        if let Err(nix::errno::Errno::EACCES | nix::errno::Errno::EPERM) = nix::unistd::access(
            "/dev/fuse",
            nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK,
        ) {
            return Err(super::Unusable::new(
                "FUSE is not usable: you may not open /dev/fuse (only root may, its mode is too strict), so every mount fails with Permission denied",
                "Ask an admin to run `chmod 666 /dev/fuse` (its usual mode) and keep it so with a udev rule: KERNEL==\"fuse\", MODE=\"0666\"",
            ));
        }
    }
    if !root && which("fusermount3").is_none() && which("fusermount").is_none() {
        return Err(super::Unusable::new(
            "FUSE is not available: fusermount3 is not on PATH, and only root can mount without it",
            "Install fuse3 (`apt install fuse3` or `dnf install fuse3`)",
        ));
    }
    Ok(())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Detaches a mount even when its FUSE server is gone (ENOTCONN) or it is busy.
/// Without root, the setuid `fusermount3 -u -z` does it.
pub fn force_unmount(path: &Path) -> io::Result<()> {
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EPERM) => {
            let helper = which("fusermount3").or_else(|| which("fusermount"));
            let helper = helper.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "not root and no fusermount3 on PATH",
                )
            })?;
            let status = std::process::Command::new(helper)
                .args(["-u", "-z", "--"])
                .arg(path)
                .stdin(std::process::Stdio::null())
                .status()?;
            if status.success() {
                Ok(())
            } else {
                Err(io::Error::other(format!(
                    "fusermount3 -u -z failed ({status})"
                )))
            }
        }
        Err(errno) => Err(errno.into()),
    }
}

/// A dead FUSE mount answers every access with ENOTCONN, or ECONNABORTED when
/// the kernel aborted the connection as its server died (both seen here).
pub fn is_stale_mount_error(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ENOTCONN | libc::ECONNABORTED)
    )
}

/// Whether some filesystem is mounted exactly at `path` (from `/proc/self/mountinfo`).
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    let path = path.canonicalize()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info.lines().any(|line| {
        line.split(' ')
            .nth(4)
            .is_some_and(|mount_point| Path::new(&unescape_mountinfo(mount_point)) == path)
    }))
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal escapes.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4);
        if bytes[i] == b'\\' && octal.is_some_and(|o| o.iter().all(|b| (b'0'..=b'7').contains(b))) {
            let value = octal
                .unwrap_or_default()
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(value as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `allow_other` needs root, or `user_allow_other` in /etc/fuse.conf.
pub fn allow_other_permitted() -> bool {
    nix::unistd::geteuid().is_root()
        || std::fs::read_to_string("/etc/fuse.conf")
            .is_ok_and(|conf| conf.lines().any(|line| line.trim() == "user_allow_other"))
}

/// Whether a FUSE filesystem is mounted at `canonical` (an already resolved
/// path), from `/proc/self/mountinfo`: its type after the ` - ` separator is
/// `fuse` or `fuse.SUBTYPE`.
pub fn is_fuse_mounted_at(canonical: &Path) -> io::Result<bool> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info.lines().any(|line| {
        let mount_point = line.split(' ').nth(4).map(unescape_mountinfo);
        let fs_type = line
            .split_once(" - ")
            .and_then(|(_, rest)| rest.split(' ').next());
        mount_point.is_some_and(|m| Path::new(&m) == canonical)
            && fs_type.is_some_and(|t| t == "fuse" || t.starts_with("fuse."))
    }))
}

/// The kernel FUSE mount has no extra requirement to explain.
pub fn mount_failure_hint() -> String {
    String::new()
}

/// Linux serves other users (and root) when `allow_other` is permitted, as before.
pub const ALLOW_OTHER_BY_DEFAULT: bool = true;

/// The open flags a `create` request means: Linux passes the caller's own
/// (O_EXCL, O_TRUNC, O_APPEND...).
pub fn create_flags(flags: i32) -> i32 {
    flags
}

/// How to make `path` usable as the mountpoint when it is not the user's.
pub fn mountpoint_fix(path: &Path) -> String {
    format!(
        "`sudo mkdir -p {0} && sudo chown $(id -un) {0}`, or set SPFS_MOUNTPOINT to a directory you own",
        path.display()
    )
}

/// Start times are clock ticks since boot: they order process starts whatever
/// the wall clock does.
pub const START_TIMES_ORDERED: bool = true;

/// Nothing to check before the launcher starts the service: the service
/// binary starts anywhere, and checks FUSE itself.
pub fn check_before_service_spawn() -> std::result::Result<(), super::Unusable> {
    Ok(())
}

/// Makes glibc serve every thread from one heap. Views are built on threads
/// of their own and freed from others; with glibc's default of one heap per
/// thread (up to 8 per core) the freed memory stays scattered over heaps that
/// `malloc_trim` cannot shrink: measured, RSS after six 100,000-entry
/// runtimes ended was 51 MiB with the default and 9 MiB with one heap. Small
/// allocations still come from each thread's own cache (tcache), so the one
/// heap's lock is rarely taken. Call before any other thread starts.
pub fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets glibc's own tuning; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Gives memory freed by a dropped view back to the system. glibc keeps
/// freed heap pages mapped; after a big view goes the service would hold on
/// to hundreds of MiB it no longer uses.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks glibc's own heap; no pointers of ours are involved.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The runtime name `pid` carries in the environment it was started with
/// (readable only for our own user's processes, or by root).
pub fn runtime_marker(pid: i32) -> Option<String> {
    let block = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    super::marker_in_environ(&block)
}

/// Every process of `uid` that carries runtime name `name`, with its start
/// time, and the user's processes caught in the middle of `exec` (their
/// environment reads empty until the new image is set up). `_root_start`
/// is not used here: telling a process's start time takes a read of
/// `/proc/PID/stat`, which costs more than reading its environment.
pub fn processes_with_marker(name: &str, uid: u32, _root_start: u64) -> super::MarkerScan {
    use std::os::unix::fs::MetadataExt;
    let mut scan = super::MarkerScan::default();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return scan;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if entry.metadata().map(|m| m.uid()).ok() != Some(uid) {
            continue;
        }
        let Ok(block) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if block.is_empty() {
            if !is_kernel_thread(pid) {
                if let Ok(info) = process_info(pid) {
                    scan.in_exec.push(info.start_time);
                }
            }
            continue;
        }
        if super::marker_in_environ(&block).as_deref() == Some(name) {
            if let Ok(info) = process_info(pid) {
                scan.carriers.push((pid, info.start_time));
            }
        }
    }
    scan
}

/// Kernel threads have no environment at all (`PF_KTHREAD` in the flags,
/// field 9 of `/proc/PID/stat`).
fn is_kernel_thread(pid: i32) -> bool {
    const PF_KTHREAD: u64 = 0x0020_0000;
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after_name = &stat[stat.rfind(')')? + 1..];
            after_name
                .split_whitespace()
                .nth(9 - 3)?
                .parse::<u64>()
                .ok()
        })
        .is_some_and(|flags| flags & PF_KTHREAD != 0)
}

/// A live `spfs-fuse-macos service` of this user serving `mountpoint`,
/// found from `/proc` alone (its command line, else its `SPFS_MOUNTPOINT`),
/// for when its socket and pidfile are gone. Never touches the mountpoint.
pub fn find_service_process(mountpoint: &Path) -> Option<i32> {
    let me = nix::unistd::geteuid().as_raw();
    let own = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != own)
        .find(|&pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            comm.trim_end() == crate::contract::SERVICE_BIN_NAME
                && process_uid(pid).is_ok_and(|uid| uid == me)
                && service_mountpoint(pid).is_some_and(|m| m == mountpoint)
        })
}

/// The mountpoint a service process serves: the argument after `service`,
/// else its `SPFS_MOUNTPOINT`, else `/spfs`. `None` for other subcommands.
fn service_mountpoint(pid: i32) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    if args.get(1) != Some(&&b"service"[..]) || args.iter().any(|a| *a == b"--stop") {
        return None;
    }
    if let Some(arg) = args.get(2).filter(|a| a.starts_with(b"/")) {
        return Some(PathBuf::from(std::ffi::OsStr::from_bytes(arg)));
    }
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let from_env = environ
        .split(|b| *b == 0)
        .find_map(|var| var.strip_prefix(b"SPFS_MOUNTPOINT="))
        .filter(|v| !v.is_empty())
        .map(|v| PathBuf::from(std::ffi::OsStr::from_bytes(v)));
    Some(from_env.unwrap_or_else(|| PathBuf::from("/spfs")))
}

/// The uid that mounted the FUSE filesystem at `path` (its `user_id=`
/// mount option in `/proc/self/mountinfo`), if one is mounted there.
pub fn fuse_mount_owner(path: &Path) -> Option<u32> {
    fuse_owner_in(&std::fs::read_to_string("/proc/self/mountinfo").ok()?, path)
}

fn fuse_owner_in(mountinfo: &str, path: &Path) -> Option<u32> {
    mountinfo.lines().rev().find_map(|line| {
        let mount_point = line.split(' ').nth(4).map(unescape_mountinfo)?;
        let (_, rest) = line.split_once(" - ")?;
        let mut fields = rest.split(' ');
        let fs_type = fields.next()?;
        let super_options = fields.nth(1)?;
        if Path::new(&mount_point) != path || !(fs_type == "fuse" || fs_type.starts_with("fuse.")) {
            return None;
        }
        super_options
            .split(',')
            .find_map(|option| option.strip_prefix("user_id="))
            .and_then(|uid| uid.parse().ok())
    })
}

#[cfg(test)]
mod fuse_owner_tests {
    use super::*;

    #[test]
    fn the_owner_of_a_fuse_mount_comes_from_its_user_id_option() {
        let info = "36 35 0:30 / /spfs rw,nosuid,nodev,relatime shared:1 - fuse.spfs spfs ro,user_id=1001,group_id=1001,allow_other\n\
                    37 35 0:31 / /tmp rw shared:2 - tmpfs tmpfs rw,size=64k\n";
        assert_eq!(fuse_owner_in(info, Path::new("/spfs")), Some(1001));
        assert_eq!(fuse_owner_in(info, Path::new("/tmp")), None);
        assert_eq!(fuse_owner_in(info, Path::new("/other")), None);
    }
}
