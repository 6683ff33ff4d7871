//! The FUSE filesystem at the mountpoint, and mounting it safely.
//!
//! For now every process sees an empty, read-only directory: the per-runtime
//! views are the filesystem issue's work. Mount options: read-only, no
//! devices, no setuid; writes fail with EROFS in the kernel.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, INodeNo,
    MountOption, ReplyAttr, ReplyDirectory, ReplyEntry, Request, SessionACL,
};

use crate::platform;

/// The root changes only when the service restarts; let the kernel cache it briefly.
const ROOT_TTL: Duration = Duration::from_secs(1);

pub struct SpfsFs {
    root: FileAttr,
}

impl SpfsFs {
    pub fn new() -> SpfsFs {
        let now = SystemTime::now();
        SpfsFs {
            root: FileAttr {
                ino: INodeNo::ROOT,
                size: 0,
                blocks: 0,
                atime: now,
                mtime: now,
                ctime: now,
                crtime: now,
                kind: FileType::Directory,
                perm: 0o555,
                nlink: 2,
                uid: nix::unistd::geteuid().as_raw(),
                gid: nix::unistd::getegid().as_raw(),
                rdev: 0,
                flags: 0,
                blksize: 4096,
            },
        }
    }
}

impl Default for SpfsFs {
    fn default() -> Self {
        Self::new()
    }
}

impl Filesystem for SpfsFs {
    fn lookup(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::ENOENT);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino == INodeNo::ROOT {
            reply.attr(&ROOT_TTL, &self.root);
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            reply.error(Errno::ENOTDIR);
            return;
        }
        let entries = [(".", FileType::Directory), ("..", FileType::Directory)];
        for (index, (name, kind)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo::ROOT, index as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// What `prepare_mountpoint` had to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Prepared {
    Ready,
    /// It did not exist and was created.
    Created,
    /// A dead FUSE mount (ENOTCONN) from a killed service was detached.
    CleanedStaleMount,
}

/// Makes `path` ready to mount on, or says precisely why it cannot be.
pub fn prepare_mountpoint(path: &Path) -> Result<Prepared, String> {
    let mut prepared = Prepared::Ready;
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(format!(
            "mountpoint {} is not a directory; remove it, or set SPFS_MOUNTPOINT to a directory",
            path.display()
        ))
        }
        Err(err) if platform::is_stale_mount_error(&err) => {
            platform::force_unmount(path).map_err(|e| {
                format!(
                    "mountpoint {} is a dead FUSE mount ({err}) and unmounting it failed: {e}; run `umount -l {}` (Linux) or `umount -f {}` (macOS)",
                    path.display(),
                    path.display(),
                    path.display()
                )
            })?;
            prepared = Prepared::CleanedStaleMount;
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(path).map_err(|e| {
                format!(
                    "mountpoint {} does not exist and cannot be created ({e}); create it with `sudo mkdir -p {p} && sudo chown $(id -un) {p}`, or set SPFS_MOUNTPOINT",
                    path.display(),
                    p = path.display()
                )
            })?;
            return Ok(Prepared::Created);
        }
        Err(err) => {
            return Err(format!("cannot use mountpoint {}: {err}", path.display()));
        }
    }
    match platform::is_mount_point(path) {
        Ok(false) => Ok(prepared),
        Ok(true) => Err(format!(
            "{} is already a mount point (another spfs service with a different SPFS_RUNTIME_DIR?); unmount it or set SPFS_MOUNTPOINT",
            path.display()
        )),
        Err(err) => Err(format!("cannot inspect mountpoint {}: {err}", path.display())),
    }
}

/// The live FUSE mount; `unmount` it on shutdown.
pub struct FuseMount {
    session: BackgroundSession,
    mountpoint: PathBuf,
}

/// Mounts the filesystem at `path` and serves it on a background thread.
pub fn mount(path: &Path) -> io::Result<FuseMount> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::FSName("spfs".into()),
        MountOption::Subtype("spfs".into()),
    ];
    config.acl = if platform::allow_other_permitted() {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    let session = fuser::Session::new(SpfsFs::new(), path, &config)?.spawn()?;
    Ok(FuseMount {
        session,
        mountpoint: path.to_owned(),
    })
}

impl FuseMount {
    /// Unmounts; if the mount is busy, detaches it lazily instead.
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
