//! The FUSE filesystem at the mountpoint, and mounting it safely.
//!
//! Each runtime sees its own immutable [`view::View`] of its layers (runtimes
//! of the same stack share one), or, once editable, an [`overlay::Overlay`]
//! of its changes over that view; a process outside every runtime sees an
//! empty directory. [`router`] keeps which process is in which runtime and
//! decides which view a request is for; [`linger`] keeps a view a while
//! after its last runtime, for the next run of the same stack; see
//! `docs/architecture.md` for the whole picture.
//! Writes reach only editable runtimes' scratch directories (everywhere
//! else they fail with EROFS); the filesystem never touches its own
//! mountpoint. This module also owns mounting: the
//! mountpoint checks (including that the service's user owns it), the
//! `allow_other` choice, and waiting until the kernel shows the mount.

pub mod linger;
pub mod overlay;
pub mod router;
pub mod view;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    SessionACL, TimeOrNow, WriteFlags,
};

use crate::platform;
use overlay::write::{Owner, SetAttr};
use overlay::Overlay;
use router::{decode, encode, Router, Shown};
use view::{Content, View};

/// Entries in the mount root differ per process: the kernel must ask every time.
const ROOT_ENTRY_TTL: Duration = Duration::ZERO;
/// The mount root's own attributes are the same for everyone.
const MOUNT_ROOT_TTL: Duration = Duration::from_secs(60);
/// Below the root an inode number names one file of one immutable view forever.
const VIEW_TTL: Duration = Duration::from_secs(3600);
/// Entries and attributes of editable views. Within one overlay every
/// change goes through the kernel, which updates its own caches; what the
/// service changes itself (`spfs reset`, a commit, another stack) gets a new
/// overlay, a new inode space. So the TTL only bounds how long a `stat`
/// through a superseded overlay's inode may still answer from the cache
/// (docs/performance.md, "Editable runtimes", measures 0 s, 1 s and this).
const EDIT_TTL: Duration = Duration::from_secs(60);

/// What an open file or directory handle holds; it keeps its view alive.
enum Handle {
    File {
        _shown: Shown,
        /// The inode it was opened as.
        ino: INodeNo,
        file: Arc<File>,
        /// Set when writes through it go to this editable view.
        writes: Option<Arc<Overlay>>,
    },
    Dir {
        view: Option<Arc<View>>,
        node: u32,
    },
    /// A directory of an editable view: its entries as of opening.
    Listing(Listing),
    /// The mount root: its listing is chosen per `readdir` request, because
    /// macFUSE shares one open root handle between processes.
    Root,
}

/// Open handles by number; shared with `open`s running on the blocking pool.
#[derive(Default)]
struct Handles {
    table: Mutex<HashMap<u64, Handle>>,
    next: AtomicU64,
}

impl Handles {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Handle>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, handle: Handle) -> FileHandle {
        // Handle numbers start at 1.
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.lock().insert(fh, handle);
        FileHandle(fh)
    }
}

pub struct SpfsFs {
    router: Arc<Router>,
    /// How long entries and attributes below the root may be cached.
    view_ttl: Duration,
    root: FileAttr,
    handles: Arc<Handles>,
    /// Where file reads run; inline when there is no tokio runtime.
    blocking: Option<tokio::runtime::Handle>,
}

impl SpfsFs {
    pub fn new(router: Arc<Router>) -> SpfsFs {
        // For benchmarks only: what the kernel's name cache being off costs
        // (macFUSE with `novncache` asks the service for every component).
        let view_ttl = match std::env::var("SPFS_KERNEL_CACHE").as_deref() {
            Ok("off") => Duration::ZERO,
            _ => VIEW_TTL,
        };
        SpfsFs {
            router,
            view_ttl,
            // The service's runtime, when mounted from inside it.
            blocking: tokio::runtime::Handle::try_current().ok(),
            root: view::empty_root_attr(),
            handles: Arc::default(),
        }
    }

    fn handles(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Handle>> {
        self.handles.lock()
    }

    fn add_handle(&self, handle: Handle) -> FileHandle {
        self.handles.add(handle)
    }

    /// What an inode below the root names: a view or overlay, and its node.
    fn resolve(&self, ino: INodeNo) -> Result<(Shown, u32), Errno> {
        let (view_id, node) = decode(ino);
        let shown = self.router.shown(view_id).ok_or(Errno::ESTALE)?;
        let exists = match &shown {
            Shown::View(view) => view.node(node).is_some(),
            // A superseded overlay's tree is stale: its open files work on,
            // nothing else (`Overlay::superseded`).
            Shown::Overlay(overlay) => overlay.has_node(node) && !overlay.is_superseded(),
        };
        if !exists {
            return Err(Errno::ESTALE);
        }
        Ok((shown, node))
    }

    /// A directory to change: in the mount root, the caller's runtime's
    /// root. Outside every runtime, and in read-only ones, nothing changes.
    fn editable_dir(&self, req: &Request, parent: INodeNo) -> Result<(Arc<Overlay>, u32), Errno> {
        if parent == INodeNo::ROOT {
            return match self.router.shown_for_caller(req.pid()) {
                Some(Shown::Overlay(overlay)) => Ok((overlay, 0)),
                _ => Err(Errno::EROFS),
            };
        }
        self.editable_node(req, parent)
    }

    /// A node to change: of an editable view, and of the caller's own
    /// runtime. Another runtime's tree (reached through `/proc/PID/cwd`, say)
    /// is read-only to the caller, so a process can only change its own.
    fn editable_node(&self, req: &Request, ino: INodeNo) -> Result<(Arc<Overlay>, u32), Errno> {
        if ino == INodeNo::ROOT {
            return Err(Errno::EROFS);
        }
        let (overlay, node) = match self.resolve(ino)? {
            (Shown::Overlay(overlay), node) => (overlay, node),
            (Shown::View(_), _) => return Err(Errno::EROFS),
        };
        self.check_caller(req, &overlay)?;
        Ok((overlay, node))
    }

    /// EROFS unless the caller's runtime shows `overlay` now.
    fn check_caller(&self, req: &Request, overlay: &Arc<Overlay>) -> Result<(), Errno> {
        match self.router.shown_for_caller(req.pid()) {
            Some(Shown::Overlay(mine)) if Arc::ptr_eq(&mine, overlay) => Ok(()),
            _ => Err(Errno::EROFS),
        }
    }

    /// An open file of inode `ino`: handle `fh` if it is one, else any
    /// (`writable`: one that writes to an editable view).
    fn open_file(&self, ino: INodeNo, fh: Option<FileHandle>, writable: bool) -> Option<Arc<File>> {
        let handles = self.handles();
        let fits = |handle: &Handle| match handle {
            Handle::File {
                ino: opened,
                file,
                writes,
                ..
            } if *opened == ino && (writes.is_some() || !writable) => Some(Arc::clone(file)),
            _ => None,
        };
        if let Some(found) = fh.and_then(|fh| handles.get(&fh.0)).and_then(fits) {
            return Some(found);
        }
        handles.values().find_map(fits)
    }

    /// Replies with the attributes of a file open as inode `ino`.
    fn reply_open_attr(&self, file: &File, ino: INodeNo, reply: ReplyAttr) {
        match nix::sys::stat::fstat(file) {
            Ok(stat) => {
                let mut attr = view::attr_of(&stat);
                attr.ino = ino;
                reply.attr(&self.view_ttl.min(EDIT_TTL), &attr)
            }
            Err(errno) => reply.error(Errno::from_i32(errno as i32)),
        }
    }

    /// Runs `work` on the blocking pool (inline without one): file I/O that
    /// may block must not hold the FUSE thread other processes wait on.
    fn offload(&self, work: impl FnOnce() + Send + 'static) {
        match &self.blocking {
            Some(pool) => {
                pool.spawn_blocking(work);
            }
            None => work(),
        }
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

/// Opens a layer file and replies with a new handle for it.
fn open_into_reply(handles: &Handles, view: Arc<View>, node: u32, reply: ReplyOpen) {
    match view.open(node) {
        Ok(file) => {
            let fh = handles.add(Handle::File {
                ino: encode(view.id, node),
                _shown: Shown::View(view),
                file: Arc::new(file),
                writes: None,
            });
            // Views never change, so the page cache stays valid across opens.
            reply.opened(fh, FopenFlags::FOPEN_KEEP_CACHE);
        }
        Err(err) => reply.error(Errno::from(err)),
    }
}

/// Opens a file of an editable view (copying it up when opened for
/// writing) and replies with a new handle for it.
fn open_overlay_into_reply(
    handles: &Handles,
    overlay: Arc<Overlay>,
    node: u32,
    flags: i32,
    reply: ReplyOpen,
) {
    match overlay.open(node, flags) {
        Ok(opened) => {
            let writes = opened.writable.then(|| Arc::clone(&overlay));
            let file = Arc::new(opened.file);
            let fh = handles.add(Handle::File {
                ino: encode(overlay.id, node),
                _shown: Shown::Overlay(overlay),
                file,
                writes,
            });
            // Its contents change only through this kernel (writes update
            // the page cache; a copy-up keeps the same bytes), and what the
            // service changes itself comes as a new inode: the page cache
            // stays valid across opens.
            reply.opened(fh, FopenFlags::FOPEN_KEEP_CACHE);
        }
        Err(errno) => reply.error(errno),
    }
}

/// A statvfs count as FUSE sends it (u32 on macOS, u64 on Linux).
fn widen(count: impl Into<u64>) -> u64 {
    count.into()
}

/// A lookup answer that means ENOENT, cached like an entry (inode 0).
fn negative_entry() -> FileAttr {
    let mut attr = view::empty_root_attr();
    attr.ino = INodeNo(0);
    attr
}

fn attr_with_ino(view: &View, node: u32) -> FileAttr {
    let mut attr = view.node(node).expect("resolved node").attr;
    attr.ino = encode(view.id, node);
    attr
}

/// Entries of a listing as readdir sends them: `.`, `..`, then the names.
type Listing = Vec<(INodeNo, FileType, std::ffi::OsString)>;

fn overlay_listing(overlay: &Overlay, dir: u32, ino: INodeNo) -> Result<Listing, Errno> {
    let mut entries = vec![
        (ino, FileType::Directory, ".".into()),
        (INodeNo::ROOT, FileType::Directory, "..".into()),
    ];
    for listed in overlay.list(dir)? {
        entries.push((encode(overlay.id, listed.node), listed.kind, listed.name));
    }
    Ok(entries)
}

fn owner(req: &Request) -> Owner {
    Owner {
        uid: req.uid(),
        gid: req.gid(),
    }
}

impl Filesystem for SpfsFs {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> io::Result<()> {
        platform::fuse_init(config);
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (shown, dir, ttl) = if parent == INodeNo::ROOT {
            match self.router.shown_for_caller(req.pid()) {
                Some(shown) => (shown, 0, ROOT_ENTRY_TTL),
                None => return reply.error(Errno::ENOENT),
            }
        } else {
            match self.resolve(parent) {
                Ok((shown, dir)) => (shown, dir, self.view_ttl),
                Err(errno) => return reply.error(errno),
            }
        };
        let view = match shown {
            Shown::View(view) => view,
            Shown::Overlay(overlay) => {
                let ttl = ttl.min(EDIT_TTL);
                return match overlay.lookup(dir, name) {
                    Ok((_, attr)) => reply.entry(&ttl, &attr, Generation(0)),
                    // Below the root a missing name may be cached like an
                    // entry: whatever creates it goes through the kernel,
                    // which drops the negative entry, and the service's own
                    // changes come as a new inode space.
                    Err(Errno::ENOENT) if parent != INodeNo::ROOT => {
                        reply.entry(&ttl, &negative_entry(), Generation(0))
                    }
                    Err(errno) => reply.error(errno),
                };
            }
        };
        match view.child(dir, name) {
            Some(child) => reply.entry(&ttl, &attr_with_ino(&view, child), Generation(0)),
            // Below the root a view never changes, so "no such name" holds
            // for as long as the directory's inode does: inode 0 with a TTL
            // is a negative entry the kernel keeps (a build probing missing
            // headers asks once). In the root the answer is per process.
            None if parent != INodeNo::ROOT => {
                reply.entry(&self.view_ttl, &negative_entry(), Generation(0))
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino == INodeNo::ROOT {
            // The mount root itself is the service's: the same for every process,
            // so the kernel may cache it; only its entries differ per process.
            return reply.attr(&MOUNT_ROOT_TTL, &self.root);
        }
        // `fstat` of a file of an editable view: the open file answers, even
        // when its path is gone (unlinked, reset, committed away).
        let open = fh.and_then(|fh| match self.handles().get(&fh.0) {
            Some(Handle::File {
                _shown: Shown::Overlay(_),
                file,
                ..
            }) => Some(Arc::clone(file)),
            _ => None,
        });
        if let Some(file) = open {
            return self.reply_open_attr(&file, ino, reply);
        }
        match self.resolve(ino) {
            Ok((Shown::View(view), node)) => {
                reply.attr(&self.view_ttl, &attr_with_ino(&view, node))
            }
            Ok((Shown::Overlay(overlay), node)) => {
                // A deleted file still open (`fstat` after `unlink`) has
                // no path: its open file has the attributes.
                let found =
                    overlay
                        .getattr(node)
                        .or_else(|errno| match self.open_file(ino, fh, false) {
                            Some(file) if overlay.is_gone(node) => overlay.open_attr(node, &file),
                            _ => Err(errno),
                        });
                match found {
                    Ok(attr) => reply.attr(&self.view_ttl.min(EDIT_TTL), &attr),
                    Err(errno) => reply.error(errno),
                }
            }
            // A superseded overlay (the runtime was reset, committed or
            // shows another stack): a file still open through it answers.
            Err(Errno::ESTALE) => match self.open_file(ino, fh, false) {
                Some(file) => self.reply_open_attr(&file, ino, reply),
                None => reply.error(Errno::ESTALE),
            },
            Err(errno) => reply.error(errno),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let target = match self.resolve(ino) {
            Ok((Shown::View(view), node)) => view.read_link(node).map_err(Errno::from),
            Ok((Shown::Overlay(overlay), node)) => overlay.read_link(node),
            Err(errno) => Err(errno),
        };
        match target {
            Ok(target) => reply.data(&target),
            Err(errno) => reply.error(errno),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let writing = flags.0 & libc::O_ACCMODE != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        let handles = Arc::clone(&self.handles);
        // Opening may block (a network filesystem, a spun-down disk, a
        // copy-up of a big file) like a read does: off the FUSE thread,
        // which on macOS is the only one and serves every process's lookups.
        match self.resolve(ino) {
            Ok((Shown::View(_), _)) if writing => reply.error(Errno::EROFS),
            Ok((Shown::View(view), node)) => {
                self.offload(move || open_into_reply(&handles, view, node, reply))
            }
            // Opening another runtime's file for writing: read-only to us.
            Ok((Shown::Overlay(overlay), _))
                if writing && self.check_caller(req, &overlay).is_err() =>
            {
                reply.error(Errno::EROFS)
            }
            Ok((Shown::Overlay(overlay), node)) => self
                .offload(move || open_overlay_into_reply(&handles, overlay, node, flags.0, reply)),
            Err(errno) => reply.error(errno),
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
        self.offload(move || read_into_reply(&file, offset, size, reply));
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let (file, overlay) = match self.handles().get(&fh.0) {
            Some(Handle::File {
                file,
                writes: Some(overlay),
                ..
            }) => (Arc::clone(file), Arc::clone(overlay)),
            Some(Handle::File { .. }) => return reply.error(Errno::EBADF),
            _ => return reply.error(Errno::EBADF),
        };
        // A runtime made read-only (`spfs edit --off`, a commit under way)
        // takes no more writes, even through files opened before.
        if !overlay.is_editable() {
            return reply.error(Errno::EROFS);
        }
        match file.write_all_at(data, offset) {
            Ok(()) => reply.written(data.len() as u32),
            Err(err) => reply.error(Errno::from(err)),
        }
    }

    // No `flush`: writes go straight to the scratch file, so a close has
    // nothing to flush. fuser answers ENOSYS, and the kernel then stops
    // sending FLUSH on every close (one round trip less per file).

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let file = match self.handles().get(&fh.0) {
            Some(Handle::File { file, .. }) => Arc::clone(file),
            _ => return reply.error(Errno::EBADF),
        };
        self.offload(move || {
            let synced = match datasync {
                true => file.sync_data(),
                false => file.sync_all(),
            };
            match synced {
                Ok(()) => reply.ok(),
                Err(err) => reply.error(Errno::from(err)),
            }
        });
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

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let (overlay, node) = match self.editable_node(req, ino) {
            Ok(found) => found,
            Err(errno) => return reply.error(errno),
        };
        let open = fh.and_then(|fh| match self.handles().get(&fh.0) {
            Some(Handle::File {
                file,
                writes: Some(_),
                ..
            }) => Some(Arc::clone(file)),
            _ => None,
        });
        // `fchmod`, `futimens` and the like come without a handle: a
        // deleted file has only its open files to change.
        let open = match open {
            None if overlay.is_gone(node) => self
                .open_file(ino, None, true)
                .or_else(|| self.open_file(ino, None, false)),
            open => open,
        };
        let change = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        };
        let ttl = self.view_ttl.min(EDIT_TTL);
        self.offload(
            move || match overlay.setattr(node, change, open.as_deref()) {
                Ok(attr) => reply.attr(&ttl, &attr),
                Err(errno) => reply.error(errno),
            },
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (overlay, dir) = match self.editable_dir(req, parent) {
            Ok(found) => found,
            Err(errno) => return reply.error(errno),
        };
        let ttl = self.entry_ttl(parent);
        let flags = platform::create_flags(flags);
        match overlay.create(dir, name, mode, umask, flags, owner(req)) {
            Ok((_, attr, opened)) => {
                let writes = opened.writable.then(|| Arc::clone(&overlay));
                let file = Arc::new(opened.file);
                let fh = self.add_handle(Handle::File {
                    ino: attr.ino,
                    _shown: Shown::Overlay(overlay),
                    file,
                    writes,
                });
                reply.created(&ttl, &attr, Generation(0), fh, FopenFlags::empty());
            }
            Err(errno) => reply.error(errno),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let made = self
            .editable_dir(req, parent)
            .and_then(|(overlay, dir)| overlay.mknod(dir, name, mode, umask, owner(req)));
        self.reply_made(parent, made, reply);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let made = self
            .editable_dir(req, parent)
            .and_then(|(overlay, dir)| overlay.mkdir(dir, name, mode, umask, owner(req)));
        self.reply_made(parent, made, reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let made = self
            .editable_dir(req, parent)
            .and_then(|(overlay, dir)| overlay.symlink(dir, link_name, target, owner(req)));
        self.reply_made(parent, made, reply);
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self
            .editable_dir(req, parent)
            .and_then(|(overlay, dir)| overlay.unlink(dir, name))
        {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self
            .editable_dir(req, parent)
            .and_then(|(overlay, dir)| overlay.rmdir(dir, name))
        {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let renamed = (|| {
            let (overlay, dir) = self.editable_dir(req, parent)?;
            let (target, newdir) = self.editable_dir(req, newparent)?;
            // Another runtime's tree (or another generation of this one's).
            if !Arc::ptr_eq(&overlay, &target) {
                return Err(Errno::EXDEV);
            }
            // The kernel keeps a renamed entry's cache time: one moved into
            // the mount root would be shown to every process for that long.
            // `mv` copies instead.
            if newparent == INodeNo::ROOT && parent != INodeNo::ROOT {
                return Err(Errno::EXDEV);
            }
            #[cfg(target_os = "linux")]
            let (noreplace, exchange) = (
                flags.contains(RenameFlags::RENAME_NOREPLACE),
                flags.contains(RenameFlags::RENAME_EXCHANGE),
            );
            // macOS `renamex_np(2)`: RENAME_SWAP 0x2, RENAME_EXCL 0x4, as
            // macFUSE passes them. fuser 0.18 passes none on macOS (see
            // `platform::fuse_init`); a fuser that forwards them lands here.
            #[cfg(not(target_os = "linux"))]
            let (noreplace, exchange) = (flags.bits() & 0x4 != 0, flags.bits() & 0x2 != 0);
            overlay.rename(dir, name, newdir, newname, noreplace, exchange)
        })();
        match renamed {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        // spfs layers hold no hard links; a read-only runtime says so first.
        match self.resolve(newparent) {
            Ok((Shown::View(_), _)) => reply.error(Errno::EROFS),
            _ => reply.error(Errno::EPERM),
        }
    }

    /// An editable runtime's free space is its scratch directory's disk's
    /// (Finder, installers and `df` check it before writing); read-only
    /// views and processes outside every runtime have none.
    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let shown = match ino == INodeNo::ROOT {
            true => self.router.shown_for_caller(req.pid()),
            false => self.resolve(ino).ok().map(|(shown, _)| shown),
        };
        let Some(Shown::Overlay(overlay)) = shown else {
            return reply.statfs(0, 0, 0, 0, 0, 512, 255, 0);
        };
        match nix::sys::statvfs::statvfs(overlay.scratch.disk_dir()) {
            Ok(stat) => reply.statfs(
                widen(stat.blocks()),
                widen(stat.blocks_free()),
                widen(stat.blocks_available()),
                widen(stat.files()),
                widen(stat.files_free()),
                stat.block_size() as u32,
                255,
                stat.fragment_size() as u32,
            ),
            Err(err) => reply.error(Errno::from_i32(err as i32)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino == INodeNo::ROOT {
            // The root's listing is per process and chosen in each readdir
            // (by that request's pid): never cache it.
            let fh = self.add_handle(Handle::Root);
            return reply.opened(fh, FopenFlags::empty());
        }
        match self.resolve(ino) {
            Ok((Shown::View(view), node)) => {
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
            // The listing as of opening, as a directory stream has it.
            Ok((Shown::Overlay(overlay), node)) => match overlay_listing(&overlay, node, ino) {
                Ok(entries) => {
                    let fh = self.add_handle(Handle::Listing(entries));
                    reply.opened(fh, FopenFlags::empty());
                }
                Err(errno) => reply.error(errno),
            },
            Err(errno) => reply.error(errno),
        }
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let found = match self.handles().get(&fh.0) {
            Some(Handle::Dir { view, node }) => Some((view.clone(), *node)),
            Some(Handle::Listing(entries)) => {
                for (index, (child_ino, kind, name)) in
                    entries.iter().enumerate().skip(offset as usize)
                {
                    if reply.add(*child_ino, index as u64 + 1, *kind, name) {
                        break;
                    }
                }
                return reply.ok();
            }
            Some(Handle::Root) => None,
            _ => return reply.error(Errno::EBADF),
        };
        // The root's view comes from whoever asks now, not from whoever
        // opened the handle: the macOS kernel reuses one open root handle for
        // every process.
        let (view, node) = match found {
            Some(found) => found,
            None => match self.router.shown_for_caller(req.pid()) {
                Some(Shown::View(view)) => (Some(view), 0),
                Some(Shown::Overlay(overlay)) => {
                    let entries = match overlay_listing(&overlay, 0, ino) {
                        Ok(entries) => entries,
                        Err(errno) => return reply.error(errno),
                    };
                    for (index, (child_ino, kind, name)) in
                        entries.iter().enumerate().skip(offset as usize)
                    {
                        if reply.add(*child_ino, index as u64 + 1, *kind, name) {
                            break;
                        }
                    }
                    return reply.ok();
                }
                None => (None, 0),
            },
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

impl SpfsFs {
    fn reply_made(&self, parent: INodeNo, made: Result<(u32, FileAttr), Errno>, reply: ReplyEntry) {
        match made {
            Ok((_, attr)) => reply.entry(&self.entry_ttl(parent), &attr, Generation(0)),
            Err(errno) => reply.error(errno),
        }
    }

    /// How long the kernel may keep a new entry of an editable view: in the
    /// mount root, whose entries differ per process, not at all.
    fn entry_ttl(&self, parent: INodeNo) -> Duration {
        match parent == INodeNo::ROOT {
            true => ROOT_ENTRY_TTL,
            false => self.view_ttl.min(EDIT_TTL),
        }
    }
}

/// What `prepare_mountpoint` had to do.
#[derive(Debug, PartialEq, Eq)]
pub enum MountpointState {
    Ready,
    /// It did not exist and was created.
    Created,
    /// A dead FUSE mount (ENOTCONN) from a killed service was detached.
    CleanedStaleMount,
}

/// Makes `path` ready to mount on, or says precisely why it cannot be.
pub fn prepare_mountpoint(path: &Path) -> Result<MountpointState, String> {
    // Before touching the path: another user's FUSE mount may not even let us stat it.
    check_not_another_users_mount(path)?;
    let mut prepared = MountpointState::Ready;
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {
            check_mountpoint_owner(path, meta.uid(), nix::unistd::geteuid().as_raw())?
        }
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
            prepared = MountpointState::CleanedStaleMount;
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(path).map_err(|e| {
                format!(
                    "mountpoint {} does not exist and cannot be created ({e}); to fix it: {}",
                    path.display(),
                    platform::mountpoint_fix(path)
                )
            })?;
            return Ok(MountpointState::Created);
        }
        Err(err) => {
            return Err(format!("cannot use mountpoint {}: {err}", path.display()));
        }
    }
    match platform::is_mount_point(path) {
        Ok(false) => Ok(prepared),
        Ok(true) => Err(format!(
            "{} is already a mount point (another filesystem, or another of your spfs services started with a different SPFS_RUNTIME_DIR); unmount it or set SPFS_MOUNTPOINT",
            path.display()
        )),
        Err(err) => Err(format!("cannot inspect mountpoint {}: {err}", path.display())),
    }
}

/// Refuses a mountpoint where another user's spfs service (or FUSE
/// filesystem) is mounted: the default `/spfs` is one per machine.
pub fn check_not_another_users_mount(path: &Path) -> Result<(), String> {
    let me = nix::unistd::geteuid().as_raw();
    match platform::fuse_mount_owner(path) {
        Some(owner) if owner != me => {
            let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(owner))
                .ok()
                .flatten()
                .map(|user| format!(" ({})", user.name))
                .unwrap_or_default();
            Err(format!(
                "{} is already mounted by another user's spfs service (uid {owner}{name}); a mountpoint serves one user, and the default one is shared by every user of this machine. To fix it: give yourself a mountpoint of your own, for example `mkdir -p $HOME/spfs && export SPFS_MOUNTPOINT=$HOME/spfs`",
                path.display()
            ))
        }
        _ => Ok(()),
    }
}

/// Refuses a mountpoint (after symlinks) that the service's user does not
/// own: macOS lets a non-root user mount only on a directory they own, and on
/// every platform a mount over someone else's directory would hide it from them.
pub fn check_mountpoint_owner(path: &Path, owner: u32, me: u32) -> Result<(), String> {
    if owner == me {
        return Ok(());
    }
    Err(format!(
        "mountpoint {} is owned by uid {owner}, not by you (uid {me}); the service mounts only on a directory you own. To fix it: {}",
        path.display(),
        platform::mountpoint_fix(path)
    ))
}

/// Whether to serve other users' processes (`allow_other`): `SPFS_ALLOW_OTHER`
/// when set (`1`/`0`), else the platform's default (Linux: when permitted;
/// macOS: no). Asked for but not permitted is an error that says why.
pub fn choose_allow_other(
    configured: Option<&str>,
    by_default: bool,
    permitted: bool,
) -> Result<bool, String> {
    let wanted = match configured.map(str::trim) {
        None | Some("") => return Ok(by_default && permitted),
        Some("1" | "true" | "yes") => true,
        Some("0" | "false" | "no") => false,
        Some(other) => {
            return Err(format!(
                "SPFS_ALLOW_OTHER={other:?} is not 1 or 0; set it to 1 (serve other users too) or 0 (only you), or unset it"
            ))
        }
    };
    if wanted && !permitted {
        let why = if cfg!(target_os = "macos") {
            "macFUSE allows it only for root and members of its admin group (`sysctl vfs.generic.macfuse.tunables.admin_group`)"
        } else {
            "it needs root, or `user_allow_other` in /etc/fuse.conf"
        };
        return Err(format!(
            "SPFS_ALLOW_OTHER=1 but this user may not mount with allow_other: {why}; unset SPFS_ALLOW_OTHER or get that permission"
        ));
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
pub fn mount(path: &Path, router: Arc<Router>, allow_other: bool) -> io::Result<FuseMount> {
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
    config.mount_options.extend(platform::mount_options());
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
    let session = fuser::Session::new(SpfsFs::new(router), &canonical, &config)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_other_is_the_platform_default_unless_configured() {
        // Unset or empty: the default, and only when permitted.
        assert_eq!(choose_allow_other(None, true, true), Ok(true));
        assert_eq!(choose_allow_other(None, true, false), Ok(false));
        assert_eq!(choose_allow_other(Some(""), true, true), Ok(true));
        // macOS's default is owner-only, even for root.
        assert_eq!(choose_allow_other(None, false, true), Ok(false));
        // Configured: on when permitted, off always.
        assert_eq!(choose_allow_other(Some("1"), false, true), Ok(true));
        assert_eq!(choose_allow_other(Some("0"), true, true), Ok(false));
        assert_eq!(choose_allow_other(Some("0"), true, false), Ok(false));
        // Asked for without the permission, or unreadable: an error naming the fix.
        let refused = choose_allow_other(Some("1"), false, false).unwrap_err();
        assert!(refused.contains("unset SPFS_ALLOW_OTHER"), "{refused}");
        let bad = choose_allow_other(Some("maybe"), true, true).unwrap_err();
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
        assert_eq!(check_mountpoint_owner(path, 501, 501), Ok(()));
        let err = check_mountpoint_owner(path, 0, 501).unwrap_err();
        assert!(
            err.contains("owned by uid 0, not by you (uid 501)") && err.contains("To fix it: "),
            "{err}"
        );
        if cfg!(target_os = "macos") {
            assert!(err.contains("/etc/synthetic.conf"), "{err}");
        }
    }
}
