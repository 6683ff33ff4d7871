//! Editable views: a runtime's read-only [`View`] of its layers with its
//! changes on top, kept in its scratch directory (`runtime::scratch`).
//!
//! A path shows its scratch file when `upper/PATH` exists, else the layers'
//! entry unless a deletion marker at the path or an ancestor hides it. A
//! file of the layers is copied into the scratch directory whole on its
//! first open for writing or change of metadata (`Overlay::copy_up`);
//! deleting a path of the layers records a marker; directories merge.
//!
//! Nodes are numbered in the order they are first looked up, one per path
//! for the overlay's life (a rename moves the node, an unlink retires it);
//! inode numbers carry the overlay's id like a view's, so a new overlay (the
//! runtime was reset, or shows another stack) is a fresh inode space and the
//! kernel's caches of the old one cannot leak into it. All changes to one
//! overlay's tree are made under its lock, so two processes of a runtime
//! see one order of events. Data writes do not take that lock (they would
//! serialize every write of a runtime): each holds a pass of the runtime's
//! write gate (`runtime::writes`, shared by every overlay of its changes)
//! across its check and its `pwrite` instead. A freeze
//! ([`Overlay::set_editable`]`(false)`) takes both the lock and the gate,
//! so it returns only once every change and every data write already under
//! way has reached the scratch directory, and none starts after it: `spfs
//! commit` and `spfs edit --off` then read changes that no longer move. An
//! overlay the runtime no longer shows ([`Overlay::supersede`]: reset,
//! another stack) takes no tree change, but its open files write on, into
//! the same scratch files, until the runtime is frozen or ends.

pub mod at;
pub mod attr;
pub mod write;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use fuser::{Errno, FileAttr, FileType};
use nix::fcntl::OFlag;

use at::At;

use super::inode::encode;
use super::view::{self, Content, View};
use crate::runtime::Scratch;

/// How files of the scratch directory are opened: never through a
/// symlink, never blocking (a FIFO), never as a controlling terminal.
const OPEN_FLAGS: OFlag = OFlag::O_NOFOLLOW
    .union(OFlag::O_NONBLOCK)
    .union(OFlag::O_NOCTTY);

/// Most nodes one overlay numbers (its inode numbers' low 32 bits).
const MAX_NODES: usize = u32::MAX as usize;

pub struct Overlay {
    /// Inode space, from the router's view ids (never reused).
    pub id: u64,
    /// The layers, read-only.
    pub lower: Arc<View>,
    /// Its changes; their [`Scratch::writes`] says whether writes land,
    /// for this overlay and every other of the runtime's.
    pub scratch: Arc<Scratch>,
    /// No runtime shows it any more (it was reset, shows another stack, or
    /// ended); only its open files still work. Its tree no longer matches
    /// the scratch directory, where another overlay may make anything
    /// (a symlink where this one saw a directory), so nothing is looked
    /// up through it again.
    superseded: AtomicBool,
    tree: Mutex<Tree>,
}

struct Tree {
    nodes: Vec<Node>,
    /// Freed nodes (deleted, forgotten by the kernel, nothing below them),
    /// numbered again before the tree grows: a build's million temporary
    /// files cost the service no memory once they are gone.
    free: Vec<u32>,
    /// Live nodes by (parent, name).
    index: HashMap<(u32, OsString), u32>,
    /// Every deletion marker (paths relative to the mountpoint), as on disk.
    masks: HashSet<PathBuf>,
}

struct Node {
    parent: u32,
    name: OsString,
    /// The layers' node of the same path, when the layers show there.
    lower: Option<u32>,
    /// `upper/PATH` exists.
    upper: bool,
    /// Deleted (unlinked, removed, renamed over): its path now names
    /// something else or nothing, so nothing may be done through it by
    /// path. Its open files still work (`Overlay::setattr` with one).
    gone: bool,
    /// How many lookups of it the kernel holds (FUSE's nlookup): entries
    /// replied, less what FORGET gave back. A gone node at 0 is freed.
    lookups: u64,
    /// Nodes whose parent it is, freed ones aside: a node is freed only
    /// once none is left (a path is built through its parents).
    children: u32,
    /// Freed: its number may name another node from now on.
    freed: bool,
}

/// One entry of a directory listing.
pub struct Listed {
    pub name: OsString,
    pub node: u32,
    pub kind: FileType,
}

/// An open file and whether writes through it go to the scratch directory.
pub struct Opened {
    pub file: File,
    pub writable: bool,
}

pub(crate) fn errno(err: io::Error) -> Errno {
    Errno::from(err)
}

impl Overlay {
    /// The overlay of `lower` and the changes in `scratch` (which may hold
    /// changes from before: a re-entered runtime, a service restart). The
    /// runtime's changes take writes from now on if `editable` (for every
    /// overlay of them: a reset's new overlay opens them again).
    pub fn new(
        id: u64,
        lower: Arc<View>,
        scratch: Arc<Scratch>,
        editable: bool,
    ) -> io::Result<Overlay> {
        let masks: HashSet<PathBuf> = scratch.masks()?.into_iter().collect();
        // Copies left half-made by a crash (or by the overlay this one
        // replaces, which takes no more writes): never anyone's file.
        scratch.clear_leftovers();
        let root = Node {
            parent: 0,
            name: OsString::new(),
            lower: Some(0),
            // Made on the first change (`begin_change`) if not yet.
            upper: scratch.is_made(),
            gone: false,
            lookups: 0,
            children: 0,
            freed: false,
        };
        scratch.writes().set(editable);
        Ok(Overlay {
            id,
            lower,
            scratch,
            superseded: AtomicBool::new(false),
            tree: Mutex::new(Tree {
                nodes: vec![root],
                free: Vec::new(),
                index: HashMap::new(),
                masks,
            }),
        })
    }

    /// Whether its tree takes changes: the runtime's changes take writes,
    /// and a runtime still shows this overlay.
    pub fn is_editable(&self) -> bool {
        self.scratch.writes().is_open() && !self.is_superseded()
    }

    /// Writes `data` at `offset` of `file`, a file of this overlay opened
    /// for writing (copied up at its open), unless the runtime's changes
    /// take no more writes. A superseded overlay's open files write on:
    /// each is the same file in the scratch directory.
    pub fn write(&self, file: &File, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let _pass = self.scratch.writes().pass().ok_or(Errno::EROFS)?;
        if let Some(stall) = crate::test_hooks::write_stall() {
            std::thread::sleep(stall);
        }
        std::os::unix::fs::FileExt::write_all_at(file, data, offset).map_err(errno)
    }

    /// Accept or refuse writes from now on, through this overlay and every
    /// other of the runtime's changes; the changes stay either way. Taken
    /// under the lock and the write gate, so every change and data write
    /// already under way finishes first. Blocking: call it off the async
    /// workers.
    pub fn set_editable(&self, editable: bool) {
        let _tree = self.lock();
        self.scratch.writes().set(editable);
    }

    /// A commit's freeze: as `set_editable(false)`, but only if the runtime
    /// took writes (true); false when another freeze came first.
    pub fn freeze_if_editable(&self) -> bool {
        let _tree = self.lock();
        self.scratch.writes().close_if_open()
    }

    /// No runtime shows it any more (it was reset or shows another stack):
    /// its nodes are stale (see `superseded`), its tree takes no change;
    /// data writes through its open files go on as the runtime's do.
    /// Taken under the lock, so a change under way finishes first.
    pub fn supersede(&self) {
        let _tree = self.lock();
        self.superseded.store(true, Ordering::Release);
    }

    /// The runtime ended: superseded, and nothing more is written.
    pub fn end(&self) {
        self.set_editable(false);
        self.supersede();
    }

    pub fn is_superseded(&self) -> bool {
        self.superseded.load(Ordering::Acquire)
    }

    fn lock(&self) -> MutexGuard<'_, Tree> {
        self.tree.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_editable(&self) -> Result<(), Errno> {
        if self.is_editable() {
            Ok(())
        } else {
            Err(Errno::EROFS)
        }
    }

    /// Before any change: the overlay is editable, and the scratch
    /// directory is made (on the runtime's first change; until then the
    /// root has no `upper/` and nothing reads the disk for it).
    fn begin_change(&self, tree: &mut Tree) -> Result<(), Errno> {
        self.check_editable()?;
        if !tree.nodes[0].upper {
            self.scratch.make().map_err(|err| {
                tracing::warn!(
                    event = "service.scratch_failed",
                    view_id = self.id,
                    scratch_dir = %self.scratch.root().display(),
                    error = %err,
                    "cannot make the scratch directory of an editable runtime"
                );
                errno(err)
            })?;
            tree.nodes[0].upper = true;
        } else {
            self.recovered(tree);
        }
        Ok(())
    }

    /// Whether the scratch directory was gone (deleted by something else)
    /// and is made again, empty: the tree then forgets every change. Checked
    /// before each change, and when a read finds a change's file missing.
    fn recovered(&self, tree: &mut Tree) -> bool {
        match self.scratch.recover_if_lost() {
            Ok(true) => {
                forget_changes(tree);
                true
            }
            Ok(false) => false,
            Err(err) => {
                tracing::warn!(
                    event = "service.scratch_failed",
                    view_id = self.id,
                    scratch_dir = %self.scratch.root().display(),
                    error = %err,
                    "cannot make a deleted scratch directory again; the runtime's changes fail"
                );
                false
            }
        }
    }

    /// Whether node `index` was handed out by this overlay.
    pub fn has_node(&self, index: u32) -> bool {
        (index as usize) < self.lock().nodes.len()
    }

    /// Whether node `index` was deleted (it, or a directory above it).
    pub fn is_gone(&self, index: u32) -> bool {
        let tree = self.lock();
        (index as usize) < tree.nodes.len() && self.live(&tree, index).is_err()
    }

    /// ENOENT when `node` or a directory above it was deleted: its path
    /// names something else now (perhaps a symlink a process made there,
    /// which a path built on it would follow out of the scratch directory).
    fn live(&self, tree: &Tree, node: u32) -> Result<(), Errno> {
        let mut current = node;
        loop {
            let found = tree.nodes.get(current as usize).ok_or(Errno::ESTALE)?;
            if found.gone {
                return Err(Errno::ENOENT);
            }
            if current == 0 {
                return Ok(());
            }
            current = found.parent;
        }
    }

    /// The child `name` of directory `dir`: its node and attributes.
    /// An entry the kernel is given counts as one of its lookups.
    pub fn lookup(&self, dir: u32, name: &OsStr) -> Result<(u32, FileAttr), Errno> {
        let mut tree = self.lock();
        let found = self.child(&mut tree, dir, name).and_then(|child| {
            let child = child.ok_or(Errno::ENOENT)?;
            Ok((child, self.attr(&tree, child)?))
        });
        let found = match found {
            Err(Errno::ENOENT) if self.recovered(&mut tree) => {
                let child = self.child(&mut tree, dir, name)?.ok_or(Errno::ENOENT)?;
                Ok((child, self.attr(&tree, child)?))
            }
            found => found,
        };
        if let Ok((child, _)) = &found {
            looked_up(&mut tree, *child);
        }
        found
    }

    /// FORGET: the kernel gives back `count` lookups of `node`; a deleted
    /// node it no longer knows is freed.
    pub fn forget(&self, node: u32, count: u64) {
        let mut tree = self.lock();
        let Some(found) = tree.nodes.get_mut(node as usize) else {
            return;
        };
        found.lookups = found.lookups.saturating_sub(count);
        free_if_done(&mut tree, node);
    }

    /// How many nodes the tree holds, and how many of them are freed.
    pub fn node_counts(&self) -> (usize, usize) {
        let tree = self.lock();
        (tree.nodes.len(), tree.free.len())
    }

    pub fn getattr(&self, node: u32) -> Result<FileAttr, Errno> {
        let mut tree = self.lock();
        match self.attr(&tree, node) {
            Err(Errno::ENOENT) if self.recovered(&mut tree) => self.attr(&tree, node),
            found => found,
        }
    }

    /// The target of a symlink node.
    pub fn read_link(&self, node: u32) -> Result<Vec<u8>, Errno> {
        let tree = self.lock();
        self.live(&tree, node)?;
        let found = tree.nodes.get(node as usize).ok_or(Errno::ESTALE)?;
        if found.upper {
            let target = self.upper_at(&tree, node)?.read_link().map_err(errno)?;
            return Ok(std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str()).to_vec());
        }
        let lower = found.lower.ok_or(Errno::ESTALE)?;
        drop(tree);
        self.lower.read_link(lower).map_err(errno)
    }

    /// Opens a file node. Opening for writing (or truncating) copies a file
    /// of the layers into the scratch directory first.
    pub fn open(&self, node: u32, flags: i32) -> Result<Opened, Errno> {
        let writing = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let mut tree = self.lock();
        self.live(&tree, node)?;
        if writing {
            self.begin_change(&mut tree)?;
            if self.attr(&tree, node)?.kind == FileType::Directory {
                return Err(Errno::EISDIR);
            }
            let truncate = flags & libc::O_TRUNC != 0;
            let mut prepared = None;
            if !truncate {
                prepared = self.prepare_copy(tree, node);
                tree = self.lock();
                // What changed meanwhile (deleted, made read-only) counts.
                self.live(&tree, node)?;
                self.check_editable()?;
            }
            self.copy_up_with(&mut tree, node, truncate, prepared)?;
            let truncate = match flags & libc::O_TRUNC != 0 {
                true => OFlag::O_TRUNC,
                false => OFlag::empty(),
            };
            let file = self
                .upper_at(&tree, node)?
                .open(OFlag::O_RDWR | truncate | OPEN_FLAGS, 0)
                .map_err(errno)?;
            return Ok(Opened {
                file,
                writable: true,
            });
        }
        let found = &tree.nodes[node as usize];
        if found.upper {
            let file = self
                .upper_at(&tree, node)?
                .open(OFlag::O_RDONLY | OPEN_FLAGS, 0)
                .map_err(errno)?;
            if !file.metadata().map_err(errno)?.is_file() {
                return Err(Errno::EINVAL);
            }
            return Ok(Opened {
                file,
                writable: false,
            });
        }
        let lower = found.lower.ok_or(Errno::ESTALE)?;
        drop(tree);
        // A file of the layers: opened as a read-only view opens it.
        let file = self.lower.open(lower).map_err(errno)?;
        Ok(Opened {
            file,
            writable: false,
        })
    }

    /// The entries of directory `dir`, each with its node, sorted by name.
    pub fn list(&self, dir: u32) -> Result<Vec<Listed>, Errno> {
        let mut tree = self.lock();
        let names = match self.names(&tree, dir) {
            Err(Errno::ENOENT) if self.recovered(&mut tree) => self.names(&tree, dir)?,
            names => names?,
        };
        let mut listed = Vec::with_capacity(names.len());
        for name in names {
            // A name that vanished from the disk under us is left out.
            if let Some(node) = self.child(&mut tree, dir, &name)? {
                if let Ok(attr) = self.attr(&tree, node) {
                    listed.push(Listed {
                        name,
                        node,
                        kind: attr.kind,
                    });
                }
            }
        }
        Ok(listed)
    }

    /// The names shown in directory `dir`: the scratch directory's and the
    /// layers' (less what markers hide).
    fn names(&self, tree: &Tree, dir: u32) -> Result<BTreeSet<OsString>, Errno> {
        self.live(tree, dir)?;
        let node = tree.nodes.get(dir as usize).ok_or(Errno::ESTALE)?;
        let mut names = BTreeSet::new();
        if node.upper {
            match self.upper_at(tree, dir)?.read_dir() {
                Ok(entries) => names.extend(entries),
                Err(err) if err.raw_os_error() == Some(libc::ENOTDIR) => {
                    return Err(Errno::ENOTDIR)
                }
                Err(err) => return Err(errno(err)),
            }
        }
        if let Some(lower) = node.lower {
            if let Some(Content::Dir(children)) = self.lower.node(lower).map(|n| &n.content) {
                let base = self.path(tree, dir);
                for (name, _) in children {
                    if !tree.masks.contains(&base.join(name)) {
                        names.insert(name.clone());
                    }
                }
            } else if !node.upper {
                return Err(Errno::ENOTDIR);
            }
        }
        Ok(names)
    }

    /// The live node of `dir`'s child `name`, numbering it on first sight;
    /// None when nothing shows there.
    fn child(&self, tree: &mut Tree, dir: u32, name: &OsStr) -> Result<Option<u32>, Errno> {
        self.live(tree, dir)?;
        if let Some(&found) = tree.index.get(&(dir, name.to_owned())) {
            return Ok(Some(found));
        }
        check_name(name)?;
        let path = self.path(tree, dir).join(name);
        // Nothing of a directory that is not in the scratch directory can
        // be: most of a stack is looked up without touching the disk.
        let upper = tree.nodes[dir as usize].upper
            && At::new(self.scratch.upper(), &path)
                .and_then(|at| at.exists())
                .map_err(errno)?;
        let lower = if tree.masks.contains(&path) {
            None
        } else {
            tree.nodes[dir as usize]
                .lower
                .and_then(|l| self.lower.child(l, name))
        };
        if !upper && lower.is_none() {
            return Ok(None);
        }
        Ok(Some(self.add_node(tree, dir, name, lower, upper)?))
    }

    fn add_node(
        &self,
        tree: &mut Tree,
        parent: u32,
        name: &OsStr,
        lower: Option<u32>,
        upper: bool,
    ) -> Result<u32, Errno> {
        let node = Node {
            parent,
            name: name.to_owned(),
            lower,
            upper,
            gone: false,
            lookups: 0,
            children: 0,
            freed: false,
        };
        let index = match tree.free.pop() {
            Some(index) => {
                tree.nodes[index as usize] = node;
                index
            }
            None if tree.nodes.len() >= MAX_NODES => {
                tracing::warn!(
                    event = "service.overlay_full",
                    view_id = self.id,
                    "an editable runtime holds 2^32 paths at once; restart it"
                );
                return Err(Errno::ENOSPC);
            }
            None => {
                tree.nodes.push(node);
                (tree.nodes.len() - 1) as u32
            }
        };
        tree.nodes[parent as usize].children += 1;
        tree.index.insert((parent, name.to_owned()), index);
        Ok(index)
    }

    /// The node's path relative to the mountpoint.
    fn path(&self, tree: &Tree, node: u32) -> PathBuf {
        let mut names = Vec::new();
        let mut current = node;
        while current != 0 {
            let found = &tree.nodes[current as usize];
            names.push(found.name.as_os_str());
            current = found.parent;
        }
        names.iter().rev().collect()
    }

    /// The node's file in the scratch directory, as the kernel takes it.
    fn upper_at(&self, tree: &Tree, node: u32) -> Result<At, Errno> {
        At::new(self.scratch.upper(), &self.path(tree, node)).map_err(errno)
    }

    fn attr(&self, tree: &Tree, node: u32) -> Result<FileAttr, Errno> {
        self.live(tree, node)?;
        let found = tree.nodes.get(node as usize).ok_or(Errno::ESTALE)?;
        let mut attr = if found.upper {
            let stat = self.upper_at(tree, node)?.lstat().map_err(errno)?;
            view::attr_of(&stat)
        } else {
            let lower = found.lower.ok_or(Errno::ESTALE)?;
            self.lower.node(lower).ok_or(Errno::ESTALE)?.attr
        };
        attr.ino = encode(self.id, node);
        Ok(attr)
    }
}

impl Overlay {
    /// The attributes of `node` as a file it has open shows them (a
    /// deleted node's, which has no path any more).
    pub fn open_attr(&self, node: u32, file: &File) -> Result<FileAttr, Errno> {
        let stat = nix::sys::stat::fstat(std::os::fd::AsFd::as_fd(file))
            .map_err(|e| Errno::from_i32(e as i32))?;
        let mut attr = view::attr_of(&stat);
        attr.ino = encode(self.id, node);
        Ok(attr)
    }
}

/// The kernel was given an entry of `node`.
fn looked_up(tree: &mut Tree, node: u32) {
    let found = &mut tree.nodes[node as usize];
    found.lookups = found.lookups.saturating_add(1);
}

/// Frees `node` if it is deleted, unknown to the kernel and has nothing
/// below it, then its parent the same way (a deleted directory whose last
/// entry went).
fn free_if_done(tree: &mut Tree, mut node: u32) {
    while node != 0 {
        let found = &mut tree.nodes[node as usize];
        if found.freed || !found.gone || found.lookups > 0 || found.children > 0 {
            return;
        }
        found.freed = true;
        found.name = OsString::new();
        let parent = found.parent;
        tree.free.push(node);
        let up = &mut tree.nodes[parent as usize];
        up.children = up.children.saturating_sub(1);
        node = parent;
    }
}

/// The scratch directory was made again, empty: nothing of the tree is in
/// it any more. Paths of the layers show the layers again; paths that
/// were only changes are gone.
fn forget_changes(tree: &mut Tree) {
    tree.masks.clear();
    for node in tree.nodes.iter_mut().skip(1) {
        node.upper = false;
        node.gone |= node.lower.is_none();
    }
    tree.index
        .retain(|_, node| !tree.nodes[*node as usize].gone);
}

/// A name the kernel may send: one non-empty component, within NAME_MAX.
fn check_name(name: &OsStr) -> Result<(), Errno> {
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(name);
    if bytes.is_empty() || bytes.contains(&b'/') || name == "." || name == ".." {
        return Err(Errno::EINVAL);
    }
    if bytes.len() > 255 {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(())
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let (nodes, freed) = self.node_counts();
        tracing::info!(
            event = "service.view_freed",
            view_id = self.id,
            env_spec = %self.lower.spec,
            nodes = nodes as u64,
            nodes_freed = freed as u64,
            editable = true,
            "view freed"
        );
    }
}
