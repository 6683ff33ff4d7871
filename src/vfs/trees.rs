//! What a FUSE request is for ([`Trees`]): the tree (view or overlay) and
//! node an inode names, the caller's own editable tree when the request
//! changes something, and how long the kernel may cache the answer.

use std::sync::Arc;
use std::time::Duration;

use fuser::{Errno, FileAttr, INodeNo};

use super::inode::{decode, encode};
use super::overlay::Overlay;
use super::router::Router;
use super::shown::Shown;
use super::view::{self, View};

/// Entries in the mount root differ per process: the kernel must ask every time.
pub(super) const ROOT_ENTRY_TTL: Duration = Duration::ZERO;
/// The mount root's own attributes are the same for everyone.
pub(super) const MOUNT_ROOT_TTL: Duration = Duration::from_secs(60);
/// Below the root an inode number names one file of one immutable view forever.
pub(super) const VIEW_TTL: Duration = Duration::from_secs(3600);
/// Entries and attributes of editable views. Within one overlay every
/// change goes through the kernel, which updates its own caches; what the
/// service changes itself (`spfs reset`, a commit, another stack) gets a new
/// overlay, a new inode space. So the TTL only bounds how long a `stat`
/// through a superseded overlay's inode may still answer from the cache
/// (docs/performance.md, "Editable runtimes", measures 0 s, 1 s and this).
const EDIT_TTL: Duration = Duration::from_secs(60);

/// The trees of every runtime, as the FUSE callbacks find them.
pub(super) struct Trees {
    pub router: Arc<Router>,
    /// How long entries and attributes below the root may be cached.
    view_ttl: Duration,
}

impl Trees {
    pub fn new(router: Arc<Router>) -> Trees {
        // For benchmarks only: what the kernel's name cache being off costs
        // (macFUSE with `novncache` asks the service for every component).
        let view_ttl = match std::env::var("SPFS_KERNEL_CACHE").as_deref() {
            Ok("off") => Duration::ZERO,
            _ => VIEW_TTL,
        };
        Trees { router, view_ttl }
    }

    /// What the process that sent a request (its thread id `pid`) sees.
    pub fn shown_for_caller(&self, pid: u32) -> Option<Shown> {
        self.router.shown_for_caller(pid)
    }

    /// What an inode below the root names: a view or overlay, and its node.
    pub fn resolve(&self, ino: INodeNo) -> Result<(Shown, u32), Errno> {
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
    pub fn editable_dir(&self, pid: u32, parent: INodeNo) -> Result<(Arc<Overlay>, u32), Errno> {
        if parent == INodeNo::ROOT {
            return match self.router.shown_for_caller(pid) {
                Some(Shown::Overlay(overlay)) => Ok((overlay, 0)),
                _ => Err(Errno::EROFS),
            };
        }
        self.editable_node(pid, parent)
    }

    /// A node to change: of an editable view, and of the caller's own
    /// runtime. Another runtime's tree (reached through `/proc/PID/cwd`, say)
    /// is read-only to the caller, so a process can only change its own.
    pub fn editable_node(&self, pid: u32, ino: INodeNo) -> Result<(Arc<Overlay>, u32), Errno> {
        if ino == INodeNo::ROOT {
            return Err(Errno::EROFS);
        }
        let (overlay, node) = match self.resolve(ino)? {
            (Shown::Overlay(overlay), node) => (overlay, node),
            (Shown::View(_), _) => return Err(Errno::EROFS),
        };
        self.check_caller(pid, &overlay)?;
        Ok((overlay, node))
    }

    /// EROFS unless the caller's runtime shows `overlay` now.
    pub fn check_caller(&self, pid: u32, overlay: &Arc<Overlay>) -> Result<(), Errno> {
        match self.router.shown_for_caller(pid) {
            Some(Shown::Overlay(mine)) if Arc::ptr_eq(&mine, overlay) => Ok(()),
            _ => Err(Errno::EROFS),
        }
    }

    /// How long the kernel may keep a new entry of an editable view: in the
    /// mount root, whose entries differ per process, not at all.
    pub fn entry_ttl(&self, parent: INodeNo) -> Duration {
        match parent == INodeNo::ROOT {
            true => ROOT_ENTRY_TTL,
            false => self.view_ttl.min(EDIT_TTL),
        }
    }

    /// How long the kernel may keep entries and attributes below the root.
    pub fn view_ttl(&self) -> Duration {
        self.view_ttl
    }

    /// How long the kernel may keep entries and attributes of an editable view.
    pub fn edit_ttl(&self) -> Duration {
        self.view_ttl.min(EDIT_TTL)
    }
}

/// A lookup answer that means ENOENT, cached like an entry (inode 0).
pub(super) fn negative_entry() -> FileAttr {
    let mut attr = view::empty_root_attr();
    attr.ino = INodeNo(0);
    attr
}

/// The attributes of node `node` of `view`, with its inode number.
pub(super) fn attr_with_ino(view: &View, node: u32) -> FileAttr {
    let mut attr = view.node(node).expect("resolved node").attr;
    attr.ino = encode(view.id, node);
    attr
}
