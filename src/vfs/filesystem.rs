//! The FUSE callbacks: every request the kernel sends for the mountpoint,
//! answered from the tree it is for (`target`), with open files and
//! directories kept as handles (`handles`). Each runtime sees its own tree;
//! a process outside every runtime sees an empty directory; writes reach
//! only the caller's own editable runtime (everywhere else EROFS).
//!
//! What may block and where it runs: a request that may wait on a disk or
//! a network filesystem (open, read, fsync, setattr's copy-up) runs on the
//! tokio blocking pool (`SpfsFs::offload`), never on the FUSE thread that
//! other processes' lookups wait on (on macOS the only one). The rest
//! answers from memory, or from the scratch directory under one overlay's
//! lock.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

use fuser::{
    Errno, FileAttr, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use super::handles::{
    open_into_reply, open_overlay_into_reply, overlay_listing, read_into_reply, reply_listing,
    reply_view_listing, Handle, Handles,
};
use super::overlay::attr::SetAttr;
use super::overlay::write::Owner;
use super::router::Router;
use super::shown::Shown;
use super::trees::{attr_with_ino, negative_entry, Trees, MOUNT_ROOT_TTL, ROOT_ENTRY_TTL};
use super::view::{self, Content};
use crate::platform;

pub struct SpfsFs {
    trees: Trees,
    root: FileAttr,
    handles: Arc<Handles>,
    /// Where file reads run; inline when there is no tokio runtime.
    blocking: Option<tokio::runtime::Handle>,
}

impl SpfsFs {
    pub fn new(router: Arc<Router>) -> SpfsFs {
        SpfsFs {
            trees: Trees::new(router),
            // The service's runtime, when mounted from inside it.
            blocking: tokio::runtime::Handle::try_current().ok(),
            root: view::empty_root_attr(),
            handles: Arc::default(),
        }
    }

    fn reply_made(&self, parent: INodeNo, made: Result<(u32, FileAttr), Errno>, reply: ReplyEntry) {
        match made {
            Ok((_, attr)) => reply.entry(&self.trees.entry_ttl(parent), &attr, Generation(0)),
            Err(errno) => reply.error(errno),
        }
    }

    /// Replies with the attributes of a file open as inode `ino`.
    fn reply_open_attr(&self, file: &File, ino: INodeNo, reply: ReplyAttr) {
        match nix::sys::stat::fstat(file) {
            Ok(stat) => {
                let mut attr = view::attr_of(&stat);
                attr.ino = ino;
                reply.attr(&self.trees.edit_ttl(), &attr)
            }
            Err(errno) => reply.error(Errno::from_i32(errno as i32)),
        }
    }

    /// `setattr` of a file still open for writing through an overlay the
    /// runtime no longer shows (`ftruncate` of a log after `spfs reset
    /// OTHER`): the change goes to that open file.
    fn setattr_superseded(
        &self,
        ino: INodeNo,
        fh: Option<FileHandle>,
        change: SetAttr,
        reply: ReplyAttr,
    ) {
        let Some((file, overlay)) = fh.and_then(|fh| self.handles.writer(fh)) else {
            return reply.error(Errno::ESTALE);
        };
        let node = crate::vfs::inode::decode(ino).1;
        let ttl = self.trees.edit_ttl();
        self.offload(
            move || match overlay.setattr_superseded(node, change, &file) {
                Ok(attr) => reply.attr(&ttl, &attr),
                Err(errno) => reply.error(errno),
            },
        );
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

/// A statvfs count as FUSE sends it (u32 on macOS, u64 on Linux).
fn widen(count: impl Into<u64>) -> u64 {
    count.into()
}

fn owner(req: &Request) -> Owner {
    Owner {
        uid: req.uid(),
        gid: req.gid(),
    }
}

impl Filesystem for SpfsFs {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> io::Result<()> {
        super::mount::fuse_init(config);
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (shown, dir, ttl) = if parent == INodeNo::ROOT {
            match self.trees.shown_for_caller(req.pid()) {
                Some(shown) => (shown, 0, ROOT_ENTRY_TTL),
                None => return reply.error(Errno::ENOENT),
            }
        } else {
            match self.trees.resolve(parent) {
                Ok((shown, dir)) => (shown, dir, self.trees.view_ttl()),
                Err(errno) => return reply.error(errno),
            }
        };
        let view = match shown {
            Shown::View(view) => view,
            Shown::Overlay(overlay) => {
                let ttl = ttl.min(self.trees.edit_ttl());
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
                reply.entry(&self.trees.view_ttl(), &negative_entry(), Generation(0))
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
        let open = fh.and_then(|fh| match self.handles.lock().get(&fh.0) {
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
        match self.trees.resolve(ino) {
            Ok((Shown::View(view), node)) => {
                reply.attr(&self.trees.view_ttl(), &attr_with_ino(&view, node))
            }
            Ok((Shown::Overlay(overlay), node)) => {
                // A deleted file still open (`fstat` after `unlink`) has
                // no path: its open file has the attributes.
                let found = overlay.getattr(node).or_else(|errno| {
                    match self.handles.file_of(ino, fh, false) {
                        Some(file) if overlay.is_gone(node) => overlay.open_attr(node, &file),
                        _ => Err(errno),
                    }
                });
                match found {
                    Ok(attr) => reply.attr(&self.trees.edit_ttl(), &attr),
                    Err(errno) => reply.error(errno),
                }
            }
            // A superseded overlay (the runtime was reset, committed or
            // shows another stack): a file still open through it answers.
            Err(Errno::ESTALE) => match self.handles.file_of(ino, fh, false) {
                Some(file) => self.reply_open_attr(&file, ino, reply),
                None => reply.error(Errno::ESTALE),
            },
            Err(errno) => reply.error(errno),
        }
    }

    /// The kernel forgot `nlookup` lookups of `ino`: an editable runtime's
    /// deleted node it no longer knows is freed (a view's nodes are its
    /// manifest's, and stay). Also for a superseded overlay, whose open
    /// files' nodes are given back last.
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let (view_id, node) = crate::vfs::inode::decode(ino);
        if let Some(Shown::Overlay(overlay)) = self.trees.router.shown(view_id) {
            overlay.forget(node, nlookup);
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let target = match self.trees.resolve(ino) {
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
        match self.trees.resolve(ino) {
            Ok((Shown::View(_), _)) if writing => reply.error(Errno::EROFS),
            Ok((Shown::View(view), node)) => {
                self.offload(move || open_into_reply(&handles, view, node, reply))
            }
            // Opening another runtime's file for writing: read-only to us.
            Ok((Shown::Overlay(overlay), _))
                if writing && self.trees.check_caller(req.pid(), &overlay).is_err() =>
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
        let Some(file) = self.handles.file(fh) else {
            return reply.error(Errno::EBADF);
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
        let Some((file, overlay)) = self.handles.writer(fh) else {
            return reply.error(Errno::EBADF);
        };
        // A runtime made read-only (`spfs edit --off`, a commit under way)
        // takes no more writes, even through files opened before.
        match overlay.write(&file, offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(errno) => reply.error(errno),
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
        let Some(file) = self.handles.file(fh) else {
            return reply.error(Errno::EBADF);
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
        self.handles.remove(fh);
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
        let change = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        };
        let ttl = self.trees.edit_ttl();
        let (overlay, node) = match self.trees.editable_node(req.pid(), ino) {
            Ok(found) => found,
            Err(Errno::ESTALE) => return self.setattr_superseded(ino, fh, change, reply),
            Err(errno) => return reply.error(errno),
        };
        let open = fh.and_then(|fh| match self.handles.lock().get(&fh.0) {
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
                .handles
                .file_of(ino, None, true)
                .or_else(|| self.handles.file_of(ino, None, false)),
            open => open,
        };
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
        let (overlay, dir) = match self.trees.editable_dir(req.pid(), parent) {
            Ok(found) => found,
            Err(errno) => return reply.error(errno),
        };
        let ttl = self.trees.entry_ttl(parent);
        let flags = platform::create_flags(flags);
        match overlay.create(dir, name, mode, umask, flags, owner(req)) {
            Ok((_, attr, opened)) => {
                let writes = opened.writable.then(|| Arc::clone(&overlay));
                let file = Arc::new(opened.file);
                let fh = self.handles.add(Handle::File {
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
            .trees
            .editable_dir(req.pid(), parent)
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
            .trees
            .editable_dir(req.pid(), parent)
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
            .trees
            .editable_dir(req.pid(), parent)
            .and_then(|(overlay, dir)| overlay.symlink(dir, link_name, target, owner(req)));
        self.reply_made(parent, made, reply);
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self
            .trees
            .editable_dir(req.pid(), parent)
            .and_then(|(overlay, dir)| overlay.unlink(dir, name))
        {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self
            .trees
            .editable_dir(req.pid(), parent)
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
            let (overlay, dir) = self.trees.editable_dir(req.pid(), parent)?;
            let (target, newdir) = self.trees.editable_dir(req.pid(), newparent)?;
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
            // `vfs::mount::fuse_init`); a fuser that forwards them lands here.
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
        match self.trees.resolve(newparent) {
            Ok((Shown::View(_), _)) => reply.error(Errno::EROFS),
            _ => reply.error(Errno::EPERM),
        }
    }

    /// An editable runtime's free space is its scratch directory's disk's
    /// (Finder, installers and `df` check it before writing); read-only
    /// views and processes outside every runtime have none.
    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let shown = match ino == INodeNo::ROOT {
            true => self.trees.shown_for_caller(req.pid()),
            false => self.trees.resolve(ino).ok().map(|(shown, _)| shown),
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
            let fh = self.handles.add(Handle::Root);
            return reply.opened(fh, FopenFlags::empty());
        }
        match self.trees.resolve(ino) {
            Ok((Shown::View(view), node)) => {
                if !matches!(view.node(node).expect("resolved").content, Content::Dir(_)) {
                    return reply.error(Errno::ENOTDIR);
                }
                let fh = self.handles.add(Handle::Dir {
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
                    let fh = self.handles.add(Handle::Listing(entries));
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
        reply: ReplyDirectory,
    ) {
        let (view, node) = match self.handles.lock().get(&fh.0) {
            Some(Handle::Dir { view, node }) => (view.clone(), *node),
            Some(Handle::Listing(entries)) => return reply_listing(entries, offset, reply),
            // The root's view comes from whoever asks now, not from whoever
            // opened the handle: the macOS kernel reuses one open root handle
            // for every process.
            Some(Handle::Root) => match self.trees.shown_for_caller(req.pid()) {
                Some(Shown::View(view)) => (Some(view), 0),
                Some(Shown::Overlay(overlay)) => {
                    return match overlay_listing(&overlay, 0, ino) {
                        Ok(entries) => reply_listing(&entries, offset, reply),
                        Err(errno) => reply.error(errno),
                    }
                }
                None => (None, 0),
            },
            _ => return reply.error(Errno::EBADF),
        };
        reply_view_listing(view.as_deref(), node, ino, offset, reply);
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.handles.remove(fh);
        reply.ok();
    }
}
