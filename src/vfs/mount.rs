//! Mounting the filesystem safely: the mountpoint checks (a dead mount of
//! a killed service cleaned up, another user's mount refused, the service's
//! user owns it), the `allow_other` choice, the mount options and FUSE_INIT
//! flags each platform needs (fuser's types stay in this module), and
//! waiting until the kernel shows the mount.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fuser::{BackgroundSession, Config, Filesystem, MountOption, SessionACL};

use crate::platform;

/// What `prepare_mountpoint` had to do.
#[derive(Debug, PartialEq, Eq)]
pub enum MountpointState {
    Ready,
    /// It did not exist and was created.
    Created,
    /// A dead FUSE mount (ENOTCONN) from a killed service was detached.
    CleanedStaleMount,
}

/// Why the filesystem cannot be mounted at the mountpoint (or with the
/// options asked for): what is wrong, and [`MountpointError::fix`].
#[derive(Debug, thiserror::Error)]
pub enum MountpointError {
    #[error("{} is already mounted by another user's spfs service (uid {owner}{name}); a mountpoint serves one user, and the default one is shared by every user of this machine", path.display())]
    OtherUsersMount {
        path: PathBuf,
        owner: u32,
        /// ` (name)` of the owner, when known.
        name: String,
    },
    #[error("mountpoint {} is owned by uid {owner}, not by you (uid {me}); the service mounts only on a directory you own", path.display())]
    NotYours { path: PathBuf, owner: u32, me: u32 },
    #[error("mountpoint {} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("mountpoint {} is a dead FUSE mount ({stale}) and unmounting it failed: {error}", path.display())]
    DeadMount {
        path: PathBuf,
        stale: io::Error,
        error: io::Error,
    },
    #[error("mountpoint {} does not exist and cannot be created ({error})", path.display())]
    CannotCreate { path: PathBuf, error: io::Error },
    #[error("{} is already a mount point (another filesystem, or another of your spfs services started with a different SPFS_RUNTIME_DIR)", path.display())]
    AlreadyMounted { path: PathBuf },
    #[error("cannot use mountpoint {}: {error}", path.display())]
    Unusable { path: PathBuf, error: io::Error },
    #[error("SPFS_ALLOW_OTHER={0:?} is not 1 or 0")]
    BadAllowOther(String),
    #[error("SPFS_ALLOW_OTHER=1 but this user may not mount with allow_other: {why}")]
    AllowOtherRefused { why: &'static str },
}

impl MountpointError {
    /// What to do about it, when there is something to do.
    pub fn fix(&self) -> Option<String> {
        let fix = match self {
            MountpointError::OtherUsersMount { .. } => "give yourself a mountpoint of your own, for example `mkdir -p $HOME/spfs && export SPFS_MOUNTPOINT=$HOME/spfs`".into(),
            MountpointError::NotYours { path, .. } | MountpointError::CannotCreate { path, .. } => {
                platform::mountpoint_fix(path)
            }
            MountpointError::NotADirectory { .. } => {
                "remove it, or set SPFS_MOUNTPOINT to a directory".into()
            }
            MountpointError::DeadMount { path, .. } => format!(
                "run `umount -l {}` (Linux) or `umount -f {}` (macOS)",
                path.display(),
                path.display()
            ),
            MountpointError::AlreadyMounted { .. } => "unmount it or set SPFS_MOUNTPOINT".into(),
            MountpointError::Unusable { .. } => return None,
            MountpointError::BadAllowOther(_) => "set it to 1 (serve other users too) or 0 (only you), or unset it".into(),
            MountpointError::AllowOtherRefused { .. } => {
                "unset SPFS_ALLOW_OTHER or get that permission".into()
            }
        };
        Some(fix)
    }

    /// The message with its fix.
    pub fn with_fix(&self) -> String {
        crate::telemetry::with_fix(&self.to_string(), self.fix().as_deref())
    }
}

/// Makes `path` ready to mount on, or says precisely why it cannot be.
pub fn prepare_mountpoint(path: &Path) -> Result<MountpointState, MountpointError> {
    // Before touching the path: another user's FUSE mount may not even let us stat it.
    check_not_another_users_mount(path)?;
    let mut prepared = MountpointState::Ready;
    let path_buf = || path.to_owned();
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {
            check_mountpoint_owner(path, meta.uid(), nix::unistd::geteuid().as_raw())?
        }
        Ok(_) => return Err(MountpointError::NotADirectory { path: path_buf() }),
        Err(stale) if platform::is_stale_mount_error(&stale) => {
            platform::force_unmount(path).map_err(|error| MountpointError::DeadMount {
                path: path_buf(),
                stale,
                error,
            })?;
            prepared = MountpointState::CleanedStaleMount;
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(path).map_err(|error| MountpointError::CannotCreate {
                path: path_buf(),
                error,
            })?;
            return Ok(MountpointState::Created);
        }
        Err(error) => {
            return Err(MountpointError::Unusable {
                path: path_buf(),
                error,
            })
        }
    }
    match platform::is_mount_point(path) {
        Ok(false) => Ok(prepared),
        Ok(true) => Err(MountpointError::AlreadyMounted { path: path_buf() }),
        Err(error) => Err(MountpointError::Unusable {
            path: path_buf(),
            error,
        }),
    }
}

/// Refuses a mountpoint where another user's spfs service (or FUSE
/// filesystem) is mounted: the default `/spfs` is one per machine.
pub fn check_not_another_users_mount(path: &Path) -> Result<(), MountpointError> {
    let me = nix::unistd::geteuid().as_raw();
    match platform::fuse_mount_owner(path) {
        Some(owner) if owner != me => {
            let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(owner))
                .ok()
                .flatten()
                .map(|user| format!(" ({})", user.name))
                .unwrap_or_default();
            Err(MountpointError::OtherUsersMount {
                path: path.to_owned(),
                owner,
                name,
            })
        }
        _ => Ok(()),
    }
}

/// Refuses a mountpoint (after symlinks) that the service's user does not
/// own: macOS lets a non-root user mount only on a directory they own, and on
/// every platform a mount over someone else's directory would hide it from them.
pub fn check_mountpoint_owner(path: &Path, owner: u32, me: u32) -> Result<(), MountpointError> {
    if owner == me {
        return Ok(());
    }
    Err(MountpointError::NotYours {
        path: path.to_owned(),
        owner,
        me,
    })
}

/// Whether to serve other users' processes (`allow_other`): `SPFS_ALLOW_OTHER`
/// when set (`1`/`0`), else the platform's default (Linux: when permitted;
/// macOS: no). Asked for but not permitted is an error that says why.
pub fn choose_allow_other(
    configured: Option<&str>,
    by_default: bool,
    permitted: bool,
) -> Result<bool, MountpointError> {
    let wanted = match configured.map(str::trim) {
        None | Some("") => return Ok(by_default && permitted),
        Some("1" | "true" | "yes") => true,
        Some("0" | "false" | "no") => false,
        Some(other) => return Err(MountpointError::BadAllowOther(other.to_owned())),
    };
    if wanted && !permitted {
        let why = if cfg!(target_os = "macos") {
            "macFUSE allows it only for root and members of its admin group (`sysctl vfs.generic.macfuse.tunables.admin_group`)"
        } else {
            "it needs root, or `user_allow_other` in /etc/fuse.conf"
        };
        return Err(MountpointError::AllowOtherRefused { why });
    }
    Ok(wanted)
}

/// How long the kernel may take to show a finished mount (macFUSE mounts
/// asynchronously; on Linux it is already there when the mount call returns).
pub const MOUNT_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits until the kernel's mount table shows a FUSE filesystem at
/// `canonical`, or the deadline passes.
fn wait_until_mounted(canonical: &Path, timeout: Duration) -> io::Result<()> {
    let started = std::time::Instant::now();
    loop {
        if platform::is_fuse_mounted_at(canonical)? {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the mount did not appear at {} within {} s{}",
                    canonical.display(),
                    timeout.as_secs_f64(),
                    platform::mount_failure_hint()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The live FUSE mount; `unmount` it on shutdown.
pub struct FuseMount {
    session: BackgroundSession,
    mountpoint: PathBuf,
}

/// Mounts the filesystem at `path`, serves it on background threads, and
/// returns once the kernel shows the mount (within [`MOUNT_READY_TIMEOUT`]).
pub fn mount(
    path: &Path,
    filesystem: impl Filesystem + 'static,
    allow_other: bool,
) -> io::Result<FuseMount> {
    // The mount table names the resolved path (`/spfs` may be a symlink).
    let canonical = path.canonicalize()?;
    let mut config = Config::default();
    // Not `ro`: editable runtimes write. Read-only ones answer EROFS.
    config.mount_options = vec![
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::FSName("spfs".into()),
        // The kernel checks mode bits against the attributes we report.
        MountOption::DefaultPermissions,
    ];
    config.mount_options.extend(platform_mount_options());
    // Several workers, so one slow layer read does not hold up other requests;
    // one per core measured fastest here (docs/performance.md). fuser runs
    // several workers only on Linux.
    if cfg!(target_os = "linux") {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        config.n_threads = Some(cores.clamp(2, 8));
        config.clone_fd = true;
    }
    config.acl = if allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    let session = fuser::Session::new(filesystem, &canonical, &config)
        .map_err(|e| io::Error::new(e.kind(), format!("{e}{}", platform::mount_failure_hint())))?
        .spawn()?;
    let mount = FuseMount {
        session,
        mountpoint: canonical.clone(),
    };
    if let Err(err) = wait_until_mounted(&canonical, MOUNT_READY_TIMEOUT) {
        let _ = mount.unmount();
        return Err(err);
    }
    Ok(mount)
}

impl FuseMount {
    /// Unmounts; if the mount is busy, detaches it lazily instead (Linux) or
    /// forces it (macOS has no lazy unmount).
    pub fn unmount(self) -> io::Result<()> {
        let FuseMount {
            session,
            mountpoint,
        } = self;
        match session.umount_and_join() {
            Ok(()) => Ok(()),
            Err(_) => platform::force_unmount(&mountpoint),
        }
    }
}

/// Mount options beside the common ones: the type shows as `fuse.spfs`.
#[cfg(target_os = "linux")]
fn platform_mount_options() -> Vec<MountOption> {
    vec![MountOption::Subtype("spfs".into())]
}

/// macFUSE's mount options beside the common ones
/// (`platform::MACFUSE_MOUNT_OPTIONS`; docs/macos.md explains each).
#[cfg(target_os = "macos")]
fn platform_mount_options() -> Vec<MountOption> {
    platform::MACFUSE_MOUNT_OPTIONS
        .iter()
        .map(|option| MountOption::CUSTOM((*option).into()))
        .collect()
}

/// FUSE_INIT: fuser's defaults are right for the Linux kernel.
#[cfg(target_os = "linux")]
pub(super) fn fuse_init(_config: &mut fuser::KernelConfig) {}

/// FUSE_INIT for macFUSE. fuser 0.18 always parses a rename request as
/// macFUSE 4 sends it, with the extended 16-byte `fuse_rename_in`; macFUSE
/// 5 sends that layout only to a filesystem that asked for RENAME_SWAP or
/// RENAME_EXCL at init, and the 8-byte one otherwise, which fuser would
/// read with the names shifted (cberner/fuser#710, #341; macfuse#839). So
/// on macFUSE 5 ask for RENAME_EXCL. fuser 0.18 drops the flags of a rename
/// (it passes `RenameFlags::empty()` on macOS), so a `renamex_np` with
/// RENAME_EXCL over an existing name replaces it like `rename(2)`;
/// RENAME_SWAP is not asked for (macOS then refuses it with ENOTSUP before
/// it reaches us) because a swap done as a rename would lose the swapped
/// file. A fuser with #711 forwards the flags, and `SpfsFs::rename` reads
/// them.
#[cfg(target_os = "macos")]
pub(super) fn fuse_init(config: &mut fuser::KernelConfig) {
    // macFUSE 4 sends the extended layout anyway: keep RENAME_EXCL refused.
    if platform::macfuse_major_version().is_some_and(|major| major < 5) {
        return;
    }
    let excl = fuser::InitFlags::from_bits_retain(platform::FUSE_RENAME_EXCL);
    if let Err(missing) = config.add_capabilities(excl) {
        tracing::warn!(
            event = "service.fuse_init",
            missing = missing.bits(),
            "macFUSE does not offer RENAME_EXCL: renames may arrive in a layout fuser misreads"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_other_is_the_platform_default_unless_configured() {
        // Unset or empty: the default, and only when permitted.
        assert_eq!(choose_allow_other(None, true, true).ok(), Some(true));
        assert_eq!(choose_allow_other(None, true, false).ok(), Some(false));
        assert_eq!(choose_allow_other(Some(""), true, true).ok(), Some(true));
        // macOS's default is owner-only, even for root.
        assert_eq!(choose_allow_other(None, false, true).ok(), Some(false));
        // Configured: on when permitted, off always.
        assert_eq!(choose_allow_other(Some("1"), false, true).ok(), Some(true));
        assert_eq!(choose_allow_other(Some("0"), true, true).ok(), Some(false));
        assert_eq!(choose_allow_other(Some("0"), true, false).ok(), Some(false));
        // Asked for without the permission, or unreadable: an error naming the fix.
        let refused = choose_allow_other(Some("1"), false, false)
            .unwrap_err()
            .with_fix();
        assert!(refused.contains("unset SPFS_ALLOW_OTHER"), "{refused}");
        let bad = choose_allow_other(Some("maybe"), true, true)
            .unwrap_err()
            .to_string();
        assert!(bad.contains("is not 1 or 0"), "{bad}");
    }

    #[test]
    fn waiting_for_a_mount_that_never_appears_ends_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let canonical = dir.path().canonicalize().unwrap();
        let started = std::time::Instant::now();
        let err = wait_until_mounted(&canonical, Duration::from_millis(100)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("did not appear"), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn only_the_owner_may_mount_on_a_directory() {
        let path = Path::new("/spfs");
        assert!(check_mountpoint_owner(path, 501, 501).is_ok());
        let err = check_mountpoint_owner(path, 0, 501).unwrap_err();
        assert!(
            err.to_string()
                .contains("owned by uid 0, not by you (uid 501)"),
            "{err}"
        );
        let fix = err.fix().expect("a fix");
        assert!(fix.contains("SPFS_MOUNTPOINT"), "{fix}");
        if cfg!(target_os = "macos") {
            assert!(fix.contains("/etc/synthetic.conf"), "{fix}");
        }
    }
}
