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
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode};

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
    fd: OwnedFd,
    /// Below the layer's root (empty for the root).
    pub relative: PathBuf,
    pub root: std::sync::Arc<Path>,
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC)
    .union(OFlag::O_NONBLOCK);

impl DiskDir {
    /// Opens a layer's root (the path the user gave may hold symlinks: it
    /// is followed once, here), and its attributes.
    pub fn open_root(path: &Path) -> io::Result<(DiskDir, FileStat)> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let stat = nix::sys::stat::fstat(&fd)?;
        Ok((
            DiskDir {
                fd,
                relative: PathBuf::new(),
                root: path.into(),
            },
            stat,
        ))
    }

    /// Every entry but `.` and `..`, with its attributes (symlinks not followed).
    pub fn entries(&self) -> io::Result<Vec<(OsString, FileStat)>> {
        use std::os::unix::ffi::OsStrExt;
        let listing = nix::dir::Dir::from_fd(self.fd.try_clone()?)?;
        let mut entries = Vec::new();
        for entry in listing {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_bytes() == b"." || name.to_bytes() == b".." {
                continue;
            }
            // An entry that vanished between the listing and the stat is simply gone.
            if let Ok(stat) = nix::sys::stat::fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            {
                entries.push((OsStr::from_bytes(name.to_bytes()).to_owned(), stat));
            }
        }
        Ok(entries)
    }

    /// Opens child directory `name`, which must still be `expected` (not a
    /// symlink, not another directory put in its place).
    pub fn open_child(&self, name: &OsStr, expected: &FileStat) -> io::Result<DiskDir> {
        let fd = nix::fcntl::openat(&self.fd, name, DIR_FLAGS, Mode::empty())?;
        let (dev, ino) = identity(expected);
        same_file(&nix::sys::stat::fstat(&fd)?, dev, ino)?;
        Ok(DiskDir {
            fd,
            relative: self.relative.join(name),
            root: std::sync::Arc::clone(&self.root),
        })
    }

    /// The target of symlink `name`.
    pub fn read_link(&self, name: &OsStr) -> io::Result<PathBuf> {
        Ok(nix::fcntl::readlinkat(&self.fd, name)?.into())
    }

    pub fn file(&self, name: &OsStr, stat: &FileStat) -> DiskFile {
        DiskFile {
            root: self.root.to_path_buf(),
            relative: self.relative.join(name),
            dev: identity(stat).0,
            ino: identity(stat).1,
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
        let (mut dir, _) = DiskDir::open_root(&self.root)?;
        let mut names: Vec<&OsStr> = self.relative.iter().collect();
        let last = names
            .pop()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EISDIR))?;
        for name in names {
            let fd = nix::fcntl::openat(&dir.fd, name, DIR_FLAGS, Mode::empty())?;
            dir.fd = fd;
        }
        let flags = OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_CLOEXEC
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY;
        let fd = nix::fcntl::openat(dir.fd.as_fd(), last, flags, Mode::empty())?;
        let stat = nix::sys::stat::fstat(&fd)?;
        if !is_regular(&stat) {
            return Err(io::Error::other("no longer a regular file"));
        }
        same_file(&stat, self.dev, self.ino)?;
        Ok(File::from(fd))
    }
}

fn same_file(stat: &FileStat, dev: u64, ino: u64) -> io::Result<()> {
    if identity(stat) == (dev, ino) {
        Ok(())
    } else {
        Err(io::Error::other(
            "replaced since Mount (another device or inode)",
        ))
    }
}

/// Device and inode: which file this is. (`dev_t` is `i32` on macOS.)
#[allow(clippy::unnecessary_cast)]
fn identity(stat: &FileStat) -> (u64, u64) {
    (stat.st_dev as u64, stat.st_ino as u64)
}

#[allow(clippy::unnecessary_cast)] // mode_t is u16 on macOS
pub fn is_regular(stat: &FileStat) -> bool {
    (stat.st_mode as u32) & crate::graph::mode::TYPE_MASK == crate::graph::mode::REGULAR
}
