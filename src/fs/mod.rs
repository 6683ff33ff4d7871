//! The FUSE filesystem at the mountpoint, and mounting it safely.
//!
//! Each runtime sees its own immutable [`view::View`] of its layers; a process
//! outside every runtime sees an empty directory. [`router`] decides which
//! view a request is for; see `docs/architecture.md` for the whole picture.
//! The filesystem is read-only (writes fail with EROFS in the kernel) and
//! never touches its own mountpoint.

pub mod router;
pub mod view;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, Request, SessionACL,
};

use crate::platform;
use router::{decode, encode, Router};
use view::{Content, View};

/// Entries in the mount root differ per process: the kernel must ask every time.
const ROOT_ENTRY_TTL: Duration = Duration::ZERO;
/// The mount root's own attributes are the same for everyone.
const MOUNT_ROOT_TTL: Duration = Duration::from_secs(60);
/// Below the root an inode number names one file of one immutable view forever.
const VIEW_TTL: Duration = Duration::from_secs(3600);

/// What an open file or directory handle holds; it keeps its view alive.
enum Handle {
    File { _view: Arc<View>, file: Arc<File> },
    Dir { view: Option<Arc<View>>, node: u32 },
}

pub struct SpfsFs {
    router: Arc<Router>,
    root: FileAttr,
    handles: Mutex<HashMap<u64, Handle>>,
    next_handle: AtomicU64,
    /// Where file reads run; inline when there is no tokio runtime.
    blocking: Option<tokio::runtime::Handle>,
}

impl SpfsFs {
    pub fn new(router: Arc<Router>) -> SpfsFs {
        SpfsFs {
            router,
            // The service's runtime, when mounted from inside it.
            blocking: tokio::runtime::Handle::try_current().ok(),
            root: view::empty_root_attr(),
            handles: Mutex::default(),
            next_handle: AtomicU64::new(1),
        }
    }

    fn handles(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Handle>> {
        self.handles.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add_handle(&self, handle: Handle) -> FileHandle {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.handles().insert(fh, handle);
        FileHandle(fh)
    }

    /// The view and node an inode below the root names.
    fn resolve(&self, ino: INodeNo) -> Result<(Arc<View>, u32), Errno> {
        let (view_id, node) = decode(ino);
        let view = self.router.view(view_id).ok_or(Errno::ESTALE)?;
        if view.node(node).is_none() {
            return Err(Errno::ESTALE);
        }
        Ok((view, node))
    }
}

/// `size` bytes at `offset` (fewer at end of file), or the error, as the reply.
fn read_into_reply(file: &File, offset: u64, size: u32, reply: ReplyData) {
    let mut buffer = vec![0u8; size as usize];
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read_at(&mut buffer[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return reply.error(Errno::from(err)),
        }
    }
    reply.data(&buffer[..filled]);
}

fn attr_with_ino(view: &View, node: u32) -> FileAttr {
    let mut attr = view.node(node).expect("resolved node").attr;
    attr.ino = encode(view.id, node);
    attr
}

impl Filesystem for SpfsFs {
    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (view, dir, ttl) = if parent == INodeNo::ROOT {
            match self.router.view_for_caller(req.pid()) {
                Some(view) => (view, 0, ROOT_ENTRY_TTL),
                None => return reply.error(Errno::ENOENT),
            }
        } else {
            match self.resolve(parent) {
                Ok((view, dir)) => (view, dir, VIEW_TTL),
                Err(errno) => return reply.error(errno),
            }
        };
        match view.child(dir, name) {
            Some(child) => reply.entry(&ttl, &attr_with_ino(&view, child), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino == INodeNo::ROOT {
            // The mount root itself is the service's: the same for every process,
            // so the kernel may cache it; only its entries differ per process.
            return reply.attr(&MOUNT_ROOT_TTL, &self.root);
        }
        match self.resolve(ino) {
            Ok((view, node)) => reply.attr(&VIEW_TTL, &attr_with_ino(&view, node)),
            Err(errno) => reply.error(errno),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.resolve(ino) {
            Ok((view, node)) => match view.read_link(node) {
                Ok(target) => reply.data(&target),
                Err(err) => reply.error(Errno::from(err)),
            },
            Err(errno) => reply.error(errno),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let (view, node) = match self.resolve(ino) {
            Ok(found) => found,
            Err(errno) => return reply.error(errno),
        };
        match view.open(node) {
            Ok(file) => {
                let fh = self.add_handle(Handle::File {
                    _view: view,
                    file: Arc::new(file),
                });
                // Views never change, so the page cache stays valid across opens.
                reply.opened(fh, FopenFlags::FOPEN_KEEP_CACHE);
            }
            Err(err) => reply.error(Errno::from(err)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let file = match self.handles().get(&fh.0) {
            Some(Handle::File { file, .. }) => Arc::clone(file),
            _ => return reply.error(Errno::EBADF),
        };
        // Reads of layer files go to the blocking pool: a slow layer (a network
        // filesystem, a spun-down disk) then never holds a FUSE worker that
        // other processes' lookups are waiting for.
        match &self.blocking {
            Some(pool) => {
                pool.spawn_blocking(move || read_into_reply(&file, offset, size, reply));
            }
            None => read_into_reply(&file, offset, size, reply),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles().remove(&fh.0);
        reply.ok();
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino == INodeNo::ROOT {
            // The root's listing is per process: route now, and never cache it.
            let view = self.router.view_for_caller(req.pid());
            let fh = self.add_handle(Handle::Dir { view, node: 0 });
            return reply.opened(fh, FopenFlags::empty());
        }
        match self.resolve(ino) {
            Ok((view, node)) => {
                if !matches!(view.node(node).expect("resolved").content, Content::Dir(_)) {
                    return reply.error(Errno::ENOTDIR);
                }
                let fh = self.add_handle(Handle::Dir {
                    view: Some(view),
                    node,
                });
                reply.opened(
                    fh,
                    FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
                );
            }
            Err(errno) => reply.error(errno),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let (view, node) = match self.handles().get(&fh.0) {
            Some(Handle::Dir { view, node }) => (view.clone(), *node),
            _ => return reply.error(Errno::EBADF),
        };
        let mut entries: Vec<(INodeNo, FileType, &OsStr)> = vec![
            (ino, FileType::Directory, OsStr::new(".")),
            (INodeNo::ROOT, FileType::Directory, OsStr::new("..")),
        ];
        if let Some(view) = &view {
            if let Some(Content::Dir(children)) = view.node(node).map(|n| &n.content) {
                for (name, child) in children {
                    let kind = view.node(*child).expect("child node").attr.kind;
                    entries.push((encode(view.id, *child), kind, name.as_os_str()));
                }
            }
        }
        for (index, (child_ino, kind, name)) in
            entries.into_iter().enumerate().skip(offset as usize)
        {
            if reply.add(child_ino, index as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.handles().remove(&fh.0);
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

/// Mounts the filesystem at `path` and serves it on background threads.
pub fn mount(path: &Path, router: Arc<Router>) -> io::Result<FuseMount> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::FSName("spfs".into()),
        MountOption::Subtype("spfs".into()),
        // The kernel checks mode bits against the attributes we report.
        MountOption::DefaultPermissions,
    ];
    // Several workers, so one slow layer read does not hold up other requests;
    // one per core measured fastest here (docs/performance.md). fuser runs
    // several workers only on Linux.
    if cfg!(target_os = "linux") {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        config.n_threads = Some(cores.clamp(2, 8));
        config.clone_fd = true;
    }
    config.acl = if platform::allow_other_permitted() {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    let session = fuser::Session::new(SpfsFs::new(router), path, &config)?.spawn()?;
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
