//! Metadata changes to an editable view (`setattr`: chmod, chown,
//! truncate, utimens): on the scratch copy by path (the layers' file is
//! copied up first), or through an open file when the node was deleted.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;

use fuser::{Errno, FileAttr, FileType, TimeOrNow};
use nix::sys::stat::{utimensat, UtimensatFlags};

use super::at::At;
use super::write::{nix_errno, timespec};
use super::{errno, Overlay};
use nix::fcntl::OFlag;

/// The metadata changes of one `setattr`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
}

impl SetAttr {
    /// Whether it changes nothing the scratch directory keeps.
    fn is_empty(&self) -> bool {
        self.mode.is_none()
            && self.uid.is_none()
            && self.gid.is_none()
            && self.size.is_none()
            && self.atime.is_none()
            && self.mtime.is_none()
    }
}

/// Makes `change` to the scratch copy at `path` (a `kind`); a truncate goes
/// through `open` when the change came through an open file.
fn apply_at_path(
    path: &At,
    kind: FileType,
    change: SetAttr,
    open: Option<&File>,
) -> Result<(), Errno> {
    if let Some(mode) = change.mode {
        if kind != FileType::Symlink {
            path.chmod(mode & 0o7777).map_err(errno)?;
        }
    }
    if change.uid.is_some() || change.gid.is_some() {
        nix::unistd::fchownat(
            path.fd(),
            path.path(),
            change.uid.map(nix::unistd::Uid::from_raw),
            change.gid.map(nix::unistd::Gid::from_raw),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(nix_errno)?;
    }
    if let Some(size) = change.size {
        if kind != FileType::RegularFile {
            return Err(Errno::EINVAL);
        }
        match open {
            Some(file) => file.set_len(size).map_err(errno)?,
            None => path
                .open(OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK, 0)
                .and_then(|file| file.set_len(size))
                .map_err(errno)?,
        }
    }
    if change.atime.is_some() || change.mtime.is_some() {
        utimensat(
            path.fd(),
            path.path(),
            &timespec(change.atime),
            &timespec(change.mtime),
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(nix_errno)?;
    }
    Ok(())
}

impl Overlay {
    /// `setattr`: chmod, chown, truncate, utimens on the scratch copy.
    /// `open` is the caller's open file, if the change came through one.
    pub fn setattr(
        &self,
        node: u32,
        change: SetAttr,
        open: Option<&File>,
    ) -> Result<FileAttr, Errno> {
        // Checked under the lock: `set_editable(false)` (Reset, ChangeStack)
        // then knows no change is still on its way to the disk.
        let mut tree = self.lock();
        self.begin_change(&mut tree)?;
        if (node as usize) >= tree.nodes.len() {
            return Err(Errno::ESTALE);
        }
        if self.live(&tree, node).is_err() {
            // Deleted but still open (`fchmod`, `ftruncate` after `unlink`):
            // the change goes to the open file; by path it would bring the
            // layers' file back, or change whatever has that name now.
            return self.setattr_open(node, change, open.ok_or(Errno::ENOENT)?);
        }
        if change.is_empty() {
            // Only what the scratch directory does not keep (macOS: BSD
            // flags, creation and backup times): no copy-up for nothing.
            return self.attr(&tree, node);
        }
        let truncating = change.size == Some(0) && open.is_none();
        self.copy_up(&mut tree, node, truncating)?;
        let path = self.upper_at(&tree, node)?;
        let kind = self.attr(&tree, node)?.kind;
        apply_at_path(&path, kind, change, open)?;
        self.attr(&tree, node)
    }

    /// `setattr` through `file`, open for writing through this overlay
    /// after no runtime shows it any more: as a data write through it, it
    /// lands unless the runtime's changes take no writes.
    pub fn setattr_superseded(
        &self,
        node: u32,
        change: SetAttr,
        file: &File,
    ) -> Result<FileAttr, Errno> {
        let _pass = self.scratch.writes().pass().ok_or(Errno::EROFS)?;
        self.setattr_open(node, change, file)
    }

    /// `setattr` on a deleted node, through a file it has open.
    fn setattr_open(&self, node: u32, change: SetAttr, file: &File) -> Result<FileAttr, Errno> {
        use std::os::fd::AsFd;
        if let Some(mode) = change.mode {
            file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
                .map_err(errno)?;
        }
        if change.uid.is_some() || change.gid.is_some() {
            nix::unistd::fchown(
                file.as_fd(),
                change.uid.map(nix::unistd::Uid::from_raw),
                change.gid.map(nix::unistd::Gid::from_raw),
            )
            .map_err(nix_errno)?;
        }
        if let Some(size) = change.size {
            file.set_len(size).map_err(errno)?;
        }
        if change.atime.is_some() || change.mtime.is_some() {
            nix::sys::stat::futimens(
                file.as_fd(),
                &timespec(change.atime),
                &timespec(change.mtime),
            )
            .map_err(nix_errno)?;
        }
        self.open_attr(node, file)
    }
}
