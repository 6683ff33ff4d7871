//! Directory layers on disk, walked and opened without trusting the disk to
//! stay put: every step is an `openat` from the directory above with
//! `O_NOFOLLOW` (so no path is ever longer than one name, and a directory
//! or file swapped for a symlink after `Mount` is never followed), entries
//! are `fstatat`ed without following symlinks, and a file opened later must
//! still be the regular file (device and inode) seen at `Mount`. Opens are
//! non-blocking, so a FIFO put in a file's place cannot hang the opener.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::sys::stat::FileStat;

pub use crate::dirfd::is_regular;
use crate::dirfd::{identity, Dir};

/// What `Mount` recorded of a file in a directory layer, to open it later.
#[derive(Debug, Clone)]
pub struct DiskFile {
    /// The layer's root, as given in the ref.
    pub root: PathBuf,
    /// The file below the root, one name per component.
    pub relative: PathBuf,
    pub dev: u64,
    pub ino: u64,
}

/// An open directory of a directory layer.
pub struct DiskDir {
    dir: Dir,
    /// Below the layer's root (empty for the root).
    pub relative: PathBuf,
    pub root: std::sync::Arc<Path>,
}

impl DiskDir {
    /// Opens a layer's root (the path the user gave may hold symlinks: it
    /// is followed once, here), and its attributes.
    pub fn open_root(path: &Path) -> io::Result<(DiskDir, FileStat)> {
        let dir = Dir::open(path)?;
        let stat = dir.stat()?;
        Ok((
            DiskDir {
                dir,
                relative: PathBuf::new(),
                root: path.into(),
            },
            stat,
        ))
    }

    /// Every entry but `.` and `..`, with its attributes (symlinks not followed).
    pub fn entries(&self) -> io::Result<Vec<(OsString, FileStat)>> {
        self.dir.entries()
    }

    /// Opens child directory `name`, which must still be `expected` (not a
    /// symlink, not another directory put in its place).
    pub fn open_child(&self, name: &OsStr, expected: &FileStat) -> io::Result<DiskDir> {
        Ok(DiskDir {
            dir: self.dir.child_checked(name, expected)?,
            relative: self.relative.join(name),
            root: std::sync::Arc::clone(&self.root),
        })
    }

    /// The target of symlink `name`.
    pub fn read_link(&self, name: &OsStr) -> io::Result<PathBuf> {
        self.dir.read_link(name)
    }

    pub fn file(&self, name: &OsStr, stat: &FileStat) -> DiskFile {
        let (dev, ino) = identity(stat);
        DiskFile {
            root: self.root.to_path_buf(),
            relative: self.relative.join(name),
            dev,
            ino,
        }
    }

    /// Where this directory is, for messages.
    pub fn display(&self) -> PathBuf {
        self.root.join(&self.relative)
    }
}

impl DiskFile {
    /// Opens the file for reading: name by name from the layer's root,
    /// following no symlink, without blocking, and only if it is still the
    /// regular file `Mount` saw.
    pub fn open(&self) -> io::Result<File> {
        let root = Dir::open(&self.root)?;
        let (Some(parent), Some(name)) = (self.relative.parent(), self.relative.file_name()) else {
            return Err(io::Error::from_raw_os_error(libc::EISDIR));
        };
        let dir = root
            .descend(parent)?
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        let file = dir.open_file(name, None)?;
        let stat = nix::sys::stat::fstat(&file)?;
        if identity(&stat) != (self.dev, self.ino) {
            return Err(io::Error::other(
                "replaced since Mount (another device or inode)",
            ));
        }
        Ok(file)
    }
}
