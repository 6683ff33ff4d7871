//! Changes to an editable view: creating, writing, deleting and renaming in
//! the scratch directory, copying files of the layers up first, and
//! recording deletions of the layers' paths as markers on disk.
//!
//! Renaming a directory that has entries from the layers fails with EXDEV,
//! as overlayfs does without `redirect_dir`: `mv` then copies and deletes.
//! Hard links are refused (EPERM): spfs layers have none.

use std::ffi::OsStr;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::MutexGuard;
use std::time::SystemTime;

use fuser::{Errno, FileAttr, FileType, TimeOrNow};
use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;

use super::at::At;
use super::view::Content;
use super::{errno, Opened, Overlay, Tree};
use nix::fcntl::OFlag;

/// Who a new file belongs to: the calling process's user and group.
#[derive(Clone, Copy, Debug)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

pub(super) fn nix_errno(err: nix::Error) -> Errno {
    Errno::from_i32(err as i32)
}

pub(super) fn timespec(time: Option<TimeOrNow>) -> TimeSpec {
    match time {
        None => TimeSpec::UTIME_OMIT,
        Some(TimeOrNow::Now) => TimeSpec::UTIME_NOW,
        Some(TimeOrNow::SpecificTime(at)) => system_timespec(at),
    }
}

fn system_timespec(at: SystemTime) -> TimeSpec {
    match at.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) => TimeSpec::new(since.as_secs() as _, since.subsec_nanos() as _),
        Err(before) => TimeSpec::new(-(before.duration().as_secs() as i64) as _, 0),
    }
}

/// Gives a new file to the caller when the service runs as root for
/// someone else (`allow_other`); otherwise it is the service's user's
/// already, which is the caller.
fn give_to(at: &At, owner: Owner) -> Result<(), Errno> {
    if !nix::unistd::geteuid().is_root() || owner.uid == 0 {
        return Ok(());
    }
    nix::unistd::fchownat(
        at.fd(),
        at.path(),
        Some(nix::unistd::Uid::from_raw(owner.uid)),
        Some(nix::unistd::Gid::from_raw(owner.gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(nix_errno)
}

/// A copy of a file of the layers in the scratch directory's `work/`,
/// not yet in its place; deleted when dropped unless it was moved there.
pub struct StagedCopy {
    lower: u32,
    path: PathBuf,
}

impl StagedCopy {
    fn at(&self) -> io::Result<At> {
        let (Some(dir), Some(name)) = (self.path.parent(), self.path.file_name()) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        At::new(dir, Path::new(name))
    }
}

impl Drop for StagedCopy {
    fn drop(&mut self) {
        // Gone already when it was renamed into place.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What a checked rename moves: the source node, the node it replaces.
struct RenamePlan {
    source: u32,
    target: Option<u32>,
    source_is_dir: bool,
}

/// Numbers copies in `work/`, so concurrent ones never share a name.
static COPIES: AtomicU64 = AtomicU64::new(0);

impl Overlay {
    /// Copies the file of the layers `lower` (or makes it empty) into
    /// `work/`, with the layers' mode and times.
    fn copy_to_work(&self, lower: u32, empty: bool) -> io::Result<StagedCopy> {
        let attr = self
            .lower
            .node(lower)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESTALE))?
            .attr;
        let work = self.scratch.root().join("work");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&work)?;
        let number = COPIES.fetch_add(1, Ordering::Relaxed);
        let copy = StagedCopy {
            lower,
            path: work.join(format!("copy-up-{}-{number}", self.id)),
        };
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&copy.path)?;
        if !empty {
            let mut from = self.lower.open(lower)?;
            io::copy(&mut from, &mut out)?;
        }
        out.set_permissions(std::fs::Permissions::from_mode(u32::from(attr.perm)))?;
        Ok(copy)
    }

    /// For a writing open of a file of the layers not copied up yet: its
    /// copy, made without the lock. A big file takes a while, and every
    /// other request of this runtime waits for the lock meanwhile (on
    /// macOS the one FUSE thread, and so every runtime, with it).
    pub(super) fn prepare_copy(&self, tree: MutexGuard<'_, Tree>, node: u32) -> Option<StagedCopy> {
        let found = tree.nodes.get(node as usize)?;
        if found.upper {
            return None;
        }
        let lower = found.lower?;
        if !matches!(
            self.lower.node(lower)?.content,
            Content::File(_) | Content::Payload(_)
        ) {
            return None;
        }
        drop(tree);
        // On failure, `copy_up` tries again under the lock and reports it.
        self.copy_to_work(lower, false).ok()
    }

    /// Makes `node` exist in the scratch directory, with its directories
    /// above it: a directory is made with the layers' mode and times; a
    /// file is copied whole (or made empty when `empty`, for a truncating
    /// open) through a temporary file, so a crash never leaves half a copy
    /// in its place; a symlink is made again.
    pub(super) fn copy_up(&self, tree: &mut Tree, node: u32, empty: bool) -> Result<(), Errno> {
        self.copy_up_with(tree, node, empty, None)
    }

    /// `copy_up`, using `prepared` (a copy of the node's file of the layers
    /// made without the lock) when it still fits.
    pub(super) fn copy_up_with(
        &self,
        tree: &mut Tree,
        node: u32,
        empty: bool,
        mut prepared: Option<StagedCopy>,
    ) -> Result<(), Errno> {
        if tree.nodes[node as usize].upper {
            return Ok(());
        }
        // A deleted file must not come back from the layers.
        self.live(tree, node)?;
        let parent = tree.nodes[node as usize].parent;
        self.copy_up(tree, parent, false)?;
        let lower = tree.nodes[node as usize].lower.ok_or(Errno::ESTALE)?;
        let lower_node = self.lower.node(lower).ok_or(Errno::ESTALE)?;
        let attr = lower_node.attr;
        let target = self.upper_at(tree, node)?;
        match &lower_node.content {
            Content::Dir(_) => target.mkdir(u32::from(attr.perm)).map_err(errno)?,
            Content::Symlink(_) | Content::LinkPayload(_) => {
                let link = self.lower.read_link(lower).map_err(errno)?;
                let link: &OsStr = std::os::unix::ffi::OsStrExt::from_bytes(&link);
                target.symlink(Path::new(link)).map_err(errno)?;
            }
            Content::File(_) | Content::Payload(_) => {
                let copy = match prepared.take() {
                    Some(copy) if copy.lower == lower && !empty => Ok(copy),
                    _ => self.copy_to_work(lower, empty),
                };
                let placed = copy.and_then(|copy| copy.at()?.rename_to(&target));
                if let Err(err) = placed {
                    tracing::warn!(
                        event = "service.copy_up_failed",
                        view_id = self.id,
                        path = %self.path(tree, node).display(),
                        error = %err,
                        "cannot copy a file of the layers into the scratch directory"
                    );
                    return Err(errno(err));
                }
            }
            Content::Special => return Err(Errno::EPERM),
        }
        // The layers' times, as a copy keeps them (a symlink's own too).
        let _ = utimensat(
            target.fd(),
            target.path(),
            &system_timespec(attr.atime),
            &system_timespec(attr.mtime),
            UtimensatFlags::NoFollowSymlink,
        );
        tree.nodes[node as usize].upper = true;
        Ok(())
    }

    /// Ready to make `name` in directory `dir`: editable, `dir` a directory
    /// in the scratch directory, `name` free. Returns the new path.
    fn prepare_new(&self, tree: &mut Tree, dir: u32, name: &OsStr) -> Result<At, Errno> {
        self.begin_change(tree)?;
        if self.attr(tree, dir)?.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        if self.child(tree, dir, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        self.copy_up(tree, dir, false)?;
        self.upper_at(tree, dir)?.child(name).map_err(errno)
    }

    /// Numbers a path just made in the scratch directory. The layers'
    /// entry of that name, if any, is hidden by a marker already (else the
    /// name would not have been free).
    fn made(&self, tree: &mut Tree, dir: u32, name: &OsStr) -> Result<(u32, FileAttr), Errno> {
        let node = self.add_node(tree, dir, name, None, true)?;
        let attr = self.attr(tree, node)?;
        // the kernel is given its entry
        super::looked_up(tree, node);
        Ok((node, attr))
    }

    /// `create`: a new regular file, opened for reading and writing.
    pub fn create(
        &self,
        dir: u32,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        owner: Owner,
    ) -> Result<(u32, FileAttr, Opened), Errno> {
        let mut tree = self.lock();
        if flags & libc::O_EXCL == 0 {
            // Created by someone else since the kernel looked: open it.
            if let Some(existing) = self.child(&mut tree, dir, name)? {
                drop(tree);
                let opened = self.open(existing, flags)?;
                let attr = self.getattr(existing)?;
                // the kernel is given its entry
                super::looked_up(&mut self.lock(), existing);
                return Ok((existing, attr, opened));
            }
        }
        let path = self.prepare_new(&mut tree, dir, name)?;
        let perm = mode & !umask & 0o7777;
        let file = path
            .open(
                OFlag::O_RDWR
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_NOCTTY,
                perm,
            )
            .map_err(errno)?;
        // The service's umask must not narrow what the caller asked for.
        file.set_permissions(std::fs::Permissions::from_mode(perm))
            .map_err(errno)?;
        give_to(&path, owner)?;
        let (node, attr) = self.made(&mut tree, dir, name)?;
        Ok((
            node,
            attr,
            Opened {
                file,
                writable: true,
            },
        ))
    }

    /// `mknod`: regular files only (spfs layers hold no devices or FIFOs).
    pub fn mknod(
        &self,
        dir: u32,
        name: &OsStr,
        mode: u32,
        umask: u32,
        owner: Owner,
    ) -> Result<(u32, FileAttr), Errno> {
        if crate::graph::mode::file_type(mode) != crate::graph::mode::REGULAR {
            return Err(Errno::EPERM);
        }
        let (node, attr, _) = self.create(dir, name, mode, umask, libc::O_EXCL, owner)?;
        Ok((node, attr))
    }

    pub fn mkdir(
        &self,
        dir: u32,
        name: &OsStr,
        mode: u32,
        umask: u32,
        owner: Owner,
    ) -> Result<(u32, FileAttr), Errno> {
        let mut tree = self.lock();
        // No deeper than a layer may nest (`tracking::manifest::MAX_DEPTH`):
        // what could not be committed nor shown is not made.
        if self.depth(&tree, dir) >= crate::tracking::manifest::MAX_DEPTH {
            tracing::warn!(
                event = "service.overlay_too_deep",
                view_id = self.id,
                max = crate::tracking::manifest::MAX_DEPTH,
                "a directory deeper than a layer may nest was refused"
            );
            return Err(Errno::ENAMETOOLONG);
        }
        let path = self.prepare_new(&mut tree, dir, name)?;
        path.mkdir(mode & !umask & 0o7777).map_err(errno)?;
        give_to(&path, owner)?;
        self.made(&mut tree, dir, name)
    }

    pub fn symlink(
        &self,
        dir: u32,
        name: &OsStr,
        target: &Path,
        owner: Owner,
    ) -> Result<(u32, FileAttr), Errno> {
        let mut tree = self.lock();
        let path = self.prepare_new(&mut tree, dir, name)?;
        path.symlink(target).map_err(errno)?;
        give_to(&path, owner)?;
        self.made(&mut tree, dir, name)
    }

    /// Hides the layers' entry at `node`'s path, when they show one there.
    fn mask(&self, tree: &mut Tree, node: u32) -> Result<(), Errno> {
        if tree.nodes[node as usize].lower.is_none() {
            return Ok(());
        }
        let path = self.path(tree, node);
        self.scratch.add_mask(&path).map_err(errno)?;
        tree.masks.retain(|m| !m.starts_with(&path));
        tree.masks.insert(path);
        Ok(())
    }

    /// Takes a deleted `node` out of the tree for good: see `Node::gone`.
    fn bury(&self, tree: &mut Tree, node: u32) {
        self.retire(tree, node);
        tree.nodes[node as usize].gone = true;
        super::free_if_done(tree, node);
    }

    /// Takes `node` out of the tree: its name no longer leads to it.
    fn retire(&self, tree: &mut Tree, node: u32) {
        let found = &mut tree.nodes[node as usize];
        found.gone = true;
        let key = (found.parent, found.name.clone());
        if tree.index.get(&key) == Some(&node) {
            tree.index.remove(&key);
        }
    }

    pub fn unlink(&self, dir: u32, name: &OsStr) -> Result<(), Errno> {
        // Checked under the lock: `set_editable(false)` (Reset, ChangeStack)
        // then knows no change is still on its way to the disk.
        let mut tree = self.lock();
        self.begin_change(&mut tree)?;
        let node = self.child(&mut tree, dir, name)?.ok_or(Errno::ENOENT)?;
        if self.attr(&tree, node)?.kind == FileType::Directory {
            return Err(if cfg!(target_os = "linux") {
                Errno::EISDIR
            } else {
                Errno::EPERM
            });
        }
        // The marker first: a crash in between leaves upper/PATH over a
        // marker (our file, shown), never the layers' file back.
        self.mask(&mut tree, node)?;
        if tree.nodes[node as usize].upper {
            self.upper_at(&tree, node)?.unlink().map_err(errno)?;
            tree.nodes[node as usize].upper = false;
        }
        self.bury(&mut tree, node);
        Ok(())
    }

    pub fn rmdir(&self, dir: u32, name: &OsStr) -> Result<(), Errno> {
        // Checked under the lock: `set_editable(false)` (Reset, ChangeStack)
        // then knows no change is still on its way to the disk.
        let mut tree = self.lock();
        self.begin_change(&mut tree)?;
        let node = self.child(&mut tree, dir, name)?.ok_or(Errno::ENOENT)?;
        if self.attr(&tree, node)?.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        if !self.names(&tree, node)?.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        // The marker first, as in `unlink`.
        self.mask(&mut tree, node)?;
        if tree.nodes[node as usize].upper {
            // Shown entries are all gone, so the scratch directory is empty.
            self.upper_at(&tree, node)?.rmdir().map_err(errno)?;
            tree.nodes[node as usize].upper = false;
        }
        self.bury(&mut tree, node);
        Ok(())
    }

    /// `rename`, replacing what `newname` showed (RENAME_NOREPLACE:
    /// refusing to). RENAME_EXCHANGE is not offered (EINVAL).
    pub fn rename(
        &self,
        dir: u32,
        name: &OsStr,
        newdir: u32,
        newname: &OsStr,
        noreplace: bool,
        exchange: bool,
    ) -> Result<(), Errno> {
        if exchange {
            return Err(Errno::EINVAL);
        }
        let mut tree = self.lock();
        self.begin_change(&mut tree)?;
        let Some(plan) = self.check_rename(&mut tree, (dir, name), (newdir, newname), noreplace)?
        else {
            return Ok(());
        };
        self.copy_up(&mut tree, plan.source, false)?;
        self.copy_up(&mut tree, newdir, false)?;
        let from = self.upper_at(&tree, plan.source)?;
        let to = self
            .upper_at(&tree, newdir)?
            .child(newname)
            .map_err(errno)?;
        // The markers first, as in `unlink`: a crash before the rename
        // leaves markers under our own files (shown as they were), never
        // the layers' entries back.
        self.mask_for_rename(&mut tree, &plan, newdir, newname)?;
        // rename(2) replaces our file, or our (empty) directory, there.
        from.rename_to(&to).map_err(errno)?;
        self.move_node(&mut tree, &plan, newdir, newname);
        Ok(())
    }

    /// The checks of a rename, as rename(2) makes them; `None` when the
    /// source and target are one node (nothing to do).
    fn check_rename(
        &self,
        tree: &mut Tree,
        (dir, name): (u32, &OsStr),
        (newdir, newname): (u32, &OsStr),
        noreplace: bool,
    ) -> Result<Option<RenamePlan>, Errno> {
        let source = self.child(tree, dir, name)?.ok_or(Errno::ENOENT)?;
        if self.attr(tree, newdir)?.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        let target = self.child(tree, newdir, newname)?;
        if target == Some(source) {
            return Ok(None);
        }
        let source_is_dir = self.attr(tree, source)?.kind == FileType::Directory;
        if source_is_dir && self.is_within(tree, newdir, source) {
            // Moving a directory into itself.
            return Err(Errno::EINVAL);
        }
        if let Some(target) = target {
            if noreplace {
                return Err(Errno::EEXIST);
            }
            let target_is_dir = self.attr(tree, target)?.kind == FileType::Directory;
            match (source_is_dir, target_is_dir) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) if !self.names(tree, target)?.is_empty() => {
                    return Err(Errno::ENOTEMPTY)
                }
                _ => {}
            }
        }
        // A directory with the layers' entries in it would need them all
        // copied: refuse as overlayfs does, and `mv` copies instead.
        if source_is_dir && tree.nodes[source as usize].lower.is_some() {
            return Err(Errno::EXDEV);
        }
        Ok(Some(RenamePlan {
            source,
            target,
            source_is_dir,
        }))
    }

    /// How many directories `node` is below the root.
    fn depth(&self, tree: &Tree, mut node: u32) -> usize {
        let mut depth = 0;
        while node != 0 {
            node = tree.nodes[node as usize].parent;
            depth += 1;
        }
        depth
    }

    /// Whether `node` is `ancestor` or below it.
    fn is_within(&self, tree: &Tree, mut node: u32, ancestor: u32) -> bool {
        loop {
            if node == ancestor {
                return true;
            }
            if node == 0 {
                return false;
            }
            node = tree.nodes[node as usize].parent;
        }
    }

    /// The markers a rename needs before it is made: what the layers showed
    /// at the new name (a file is hidden by ours; a directory must not merge
    /// into the one moved there), and at the old name.
    fn mask_for_rename(
        &self,
        tree: &mut Tree,
        plan: &RenamePlan,
        newdir: u32,
        newname: &OsStr,
    ) -> Result<(), Errno> {
        match plan.target {
            Some(target) if plan.source_is_dir => self.mask(tree, target)?,
            Some(_) => {}
            None if plan.source_is_dir => {
                let path = self.path(tree, newdir).join(newname);
                let shown_below = !tree.masks.contains(&path)
                    && tree.nodes[newdir as usize]
                        .lower
                        .and_then(|l| self.lower.child(l, newname))
                        .is_some();
                if shown_below {
                    self.scratch.add_mask(&path).map_err(errno)?;
                    tree.masks.retain(|m| !m.starts_with(&path));
                    tree.masks.insert(path);
                }
            }
            None => {}
        }
        // What the layers showed at the old name stays hidden.
        self.mask(tree, plan.source)
    }

    /// The tree after a rename made on disk: the target (if any) is gone,
    /// the source's node now has the new name.
    fn move_node(&self, tree: &mut Tree, plan: &RenamePlan, newdir: u32, newname: &OsStr) {
        if let Some(target) = plan.target {
            tree.nodes[target as usize].upper = false;
            self.bury(tree, target);
        }
        self.retire(tree, plan.source);
        let old_parent = tree.nodes[plan.source as usize].parent;
        tree.nodes[old_parent as usize].children -= 1;
        tree.nodes[newdir as usize].children += 1;
        // What the layers still have under the new name (a file ours now
        // hides), so deleting it later hides that too.
        let new_path = self.path(tree, newdir).join(newname);
        let lower = match tree.masks.contains(&new_path) {
            true => None,
            false => tree.nodes[newdir as usize]
                .lower
                .and_then(|l| self.lower.child(l, newname)),
        };
        let moved = &mut tree.nodes[plan.source as usize];
        moved.gone = false;
        moved.parent = newdir;
        moved.name = newname.to_owned();
        moved.lower = lower;
        moved.upper = true;
        tree.index.insert((newdir, newname.to_owned()), plan.source);
    }
}
