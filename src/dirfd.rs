//! Working below a directory through file descriptors, never through
//! paths: every step is an `openat` from the directory above with
//! `O_NOFOLLOW`, so a symlink put where a directory or file was (by a
//! process of the runtime, or another user) is never followed out of the
//! tree, no path handed to the kernel is longer than one name (a tree
//! deeper than `PATH_MAX` works), and opens are non-blocking (a FIFO put
//! in a file's place cannot hang the opener). A file opened after a walk
//! can be checked to be the very file (device and inode) the walk saw.
//!
//! Used wherever a tree that others can change is read or deleted: a
//! runtime's scratch directory (`spfs reset`), directories committed as
//! layers and directory layers shown in `/spfs`.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode};
use nix::unistd::UnlinkatFlags;

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC)
    .union(OFlag::O_NONBLOCK);

const FILE_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC)
    .union(OFlag::O_NONBLOCK)
    .union(OFlag::O_NOCTTY);

/// One open directory.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
}

/// Which file a stat describes: device and inode. (`dev_t` is `i32` on
/// macOS.)
#[allow(clippy::unnecessary_cast)]
pub fn identity(stat: &FileStat) -> (u64, u64) {
    (stat.st_dev as u64, stat.st_ino as u64)
}

#[allow(clippy::unnecessary_cast)] // mode_t is u16 on macOS
fn file_type(stat: &FileStat) -> u32 {
    (stat.st_mode as u32) & libc::S_IFMT as u32
}

#[allow(clippy::unnecessary_cast)] // mode_t is u16 on macOS
pub fn is_dir(stat: &FileStat) -> bool {
    file_type(stat) == libc::S_IFDIR as u32
}

#[allow(clippy::unnecessary_cast)] // mode_t is u16 on macOS
pub fn is_regular(stat: &FileStat) -> bool {
    file_type(stat) == libc::S_IFREG as u32
}

#[allow(clippy::unnecessary_cast)] // mode_t is u16 on macOS
pub fn is_symlink(stat: &FileStat) -> bool {
    file_type(stat) == libc::S_IFLNK as u32
}

/// Whether an error means "nothing of that kind is there": missing, a
/// symlink (`ELOOP` under `O_NOFOLLOW`), or not a directory.
pub fn is_absent(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ENOENT | libc::ELOOP | libc::ENOTDIR)
    )
}

impl Dir {
    /// Opens `path` as the root of a walk. Symlinks in `path` itself are
    /// followed (it is what the caller named); nothing below it will be.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            Mode::empty(),
        )?;
        Ok(Dir { fd })
    }

    /// Opens `path` as the root of a walk, refusing a symlink at its last
    /// component too (a directory the service made, which nobody may
    /// replace by a link).
    pub fn open_exact(path: &Path) -> io::Result<Dir> {
        let fd = nix::fcntl::open(path, DIR_FLAGS, Mode::empty())?;
        Ok(Dir { fd })
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn try_clone(&self) -> io::Result<Dir> {
        Ok(Dir {
            fd: self.fd.try_clone()?,
        })
    }

    /// This directory's own attributes.
    pub fn stat(&self) -> io::Result<FileStat> {
        Ok(nix::sys::stat::fstat(&self.fd)?)
    }

    /// Child directory `name`; ELOOP when it is a symlink, ENOTDIR when it
    /// is anything else.
    pub fn child(&self, name: &OsStr) -> io::Result<Dir> {
        check_one_name(name)?;
        let fd = nix::fcntl::openat(&self.fd, name, DIR_FLAGS, Mode::empty())?;
        Ok(Dir { fd })
    }

    /// Child directory `name`, which must still be the directory `expected`
    /// describes (not another put in its place).
    pub fn child_checked(&self, name: &OsStr, expected: &FileStat) -> io::Result<Dir> {
        let dir = self.child(name)?;
        same_file(&dir.stat()?, expected)?;
        Ok(dir)
    }

    /// The directory at `relative` (normal components only) below this
    /// one, name by name; None when a component is missing, a symlink or
    /// not a directory: nothing below it is in this tree.
    pub fn descend(&self, relative: &Path) -> io::Result<Option<Dir>> {
        let mut dir = self.try_clone()?;
        for component in relative.components() {
            let Component::Normal(name) = component else {
                return Err(not_below(relative));
            };
            match dir.child(name) {
                Ok(child) => dir = child,
                Err(err) if is_absent(&err) => return Ok(None),
                Err(err) => return Err(err),
            }
        }
        Ok(Some(dir))
    }

    /// The attributes of entry `name`, not following a symlink; None when
    /// it is missing.
    pub fn stat_at(&self, name: &OsStr) -> io::Result<Option<FileStat>> {
        check_one_name(name)?;
        match nix::sys::stat::fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(stat)),
            Err(nix::errno::Errno::ENOENT) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// Every entry but `.` and `..`, with its attributes (symlinks not
    /// followed); an entry that vanished between the listing and its stat
    /// is left out.
    pub fn entries(&self) -> io::Result<Vec<(OsString, FileStat)>> {
        let listing = nix::dir::Dir::from_fd(self.fd.try_clone()?)?;
        let mut entries = Vec::new();
        for entry in listing {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = OsStr::from_bytes(name).to_owned();
            if let Some(stat) = self.stat_at(&name)? {
                entries.push((name, stat));
            }
        }
        Ok(entries)
    }

    /// Makes directory `name` (mode `perm`, narrowed by the umask as
    /// mkdir(2) narrows it) and opens it.
    pub fn make_dir(&self, name: &OsStr, perm: u32) -> io::Result<Dir> {
        check_one_name(name)?;
        nix::sys::stat::mkdirat(&self.fd, name, Mode::from_bits_truncate(perm as _))?;
        self.child(name)
    }

    /// Creates regular file `name`, which must not exist (never through a
    /// symlink), mode `perm`.
    pub fn create_file(&self, name: &OsStr, perm: u32) -> io::Result<File> {
        check_one_name(name)?;
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(&self.fd, name, flags, Mode::from_bits_truncate(perm as _))?;
        Ok(File::from(fd))
    }

    /// The target of symlink `name`.
    pub fn read_link(&self, name: &OsStr) -> io::Result<PathBuf> {
        check_one_name(name)?;
        Ok(nix::fcntl::readlinkat(&self.fd, name)?.into())
    }

    /// Opens regular file `name` for reading, without following a symlink
    /// or blocking; with `expected`, only if it is still that file.
    pub fn open_file(&self, name: &OsStr, expected: Option<&FileStat>) -> io::Result<File> {
        check_one_name(name)?;
        let fd = nix::fcntl::openat(&self.fd, name, FILE_FLAGS, Mode::empty())?;
        let stat = nix::sys::stat::fstat(&fd)?;
        if !is_regular(&stat) {
            return Err(io::Error::other("no longer a regular file"));
        }
        if let Some(expected) = expected {
            same_file(&stat, expected)?;
        }
        Ok(File::from(fd))
    }

    /// Removes entry `name` and, for a directory, everything below it,
    /// never following a symlink (a link is removed, not what it names).
    /// A missing entry is fine.
    pub fn remove(&self, name: &OsStr) -> io::Result<()> {
        let Some(stat) = self.stat_at(name)? else {
            return Ok(());
        };
        if !is_dir(&stat) {
            return unlink(&self.fd, name, UnlinkatFlags::NoRemoveDir);
        }
        // Depth first with a stack of open directories (one fd per level),
        // not recursion: a tree may be far deeper than the thread's stack.
        let mut stack = vec![Emptying::open(self.child(name)?, name.to_owned())?];
        while let Some(top) = stack.last_mut() {
            if let Some(below) = top.subdirs.pop() {
                match top.dir.child(&below) {
                    Ok(child) => stack.push(Emptying::open(child, below)?),
                    // a symlink or file put there meanwhile: removed as one
                    Err(err) if is_absent(&err) => top.dir.remove(&below)?,
                    Err(err) => return Err(err),
                }
                continue;
            }
            let done = stack.pop().expect("the loop saw it");
            let parent = stack.last().map_or(&self.fd, |up| &up.dir.fd);
            match nix::unistd::unlinkat(parent, done.name.as_os_str(), UnlinkatFlags::RemoveDir) {
                Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
                // something was made in it meanwhile: emptied again
                Err(nix::errno::Errno::ENOTEMPTY | nix::errno::Errno::EEXIST) => {
                    stack.push(Emptying::open(done.dir, done.name)?)
                }
                Err(err) => return Err(err.into()),
            }
        }
        Ok(())
    }

    /// Removes what is at `relative` (normal components) below this
    /// directory, as [`Dir::remove`] does; nothing when a directory on the
    /// way is missing, a symlink or not a directory (nothing of this tree
    /// is there).
    pub fn remove_below(&self, relative: &Path) -> io::Result<()> {
        let (Some(parent), Some(name)) = (relative.parent(), relative.file_name()) else {
            return Err(not_below(relative));
        };
        match self.descend(parent)? {
            Some(dir) => dir.remove(name),
            None => Ok(()),
        }
    }

    /// Empties this directory (it stays).
    pub fn clear(&self) -> io::Result<()> {
        for (name, _) in self.entries()? {
            self.remove(&name)?;
        }
        Ok(())
    }
}

/// A directory being emptied by [`Dir::remove`]: its files and links are
/// gone, its subdirectories wait.
struct Emptying {
    dir: Dir,
    name: OsString,
    subdirs: Vec<OsString>,
}

impl Emptying {
    fn open(dir: Dir, name: OsString) -> io::Result<Emptying> {
        let mut subdirs = Vec::new();
        for (entry, stat) in dir.entries()? {
            if is_dir(&stat) {
                subdirs.push(entry);
            } else {
                unlink(&dir.fd, &entry, UnlinkatFlags::NoRemoveDir)?;
            }
        }
        Ok(Emptying { dir, name, subdirs })
    }
}

fn unlink(dir: &OwnedFd, name: &OsStr, flags: UnlinkatFlags) -> io::Result<()> {
    match nix::unistd::unlinkat(dir, name, flags) {
        Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// One name, never a path: no `/`, not `.` or `..`, not empty.
fn check_one_name(name: &OsStr) -> io::Result<()> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.contains(&b'/') || bytes == b"." || bytes == b".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{:?} is not one name of a directory", name),
        ));
    }
    Ok(())
}

fn not_below(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{} is not a path below the directory", path.display()),
    )
}

/// `stat` is of the file `expected` describes.
pub fn same_file(stat: &FileStat, expected: &FileStat) -> io::Result<()> {
    if identity(stat) == identity(expected) {
        Ok(())
    } else {
        Err(io::Error::other(
            "replaced while it was read (another device or inode)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn removal_never_follows_a_link_and_handles_deep_trees() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::create_dir_all(victim.join("build")).unwrap();
        std::fs::write(victim.join("build/keep"), "x").unwrap();
        let tree = tmp.path().join("tree");
        std::fs::create_dir_all(tree.join("a")).unwrap();
        symlink(&victim, tree.join("proj")).unwrap();
        symlink(&victim, tree.join("a/link")).unwrap();
        let dir = Dir::open(&tree).unwrap();
        // through a link: nothing of this tree is there
        dir.remove_below(Path::new("proj/build")).unwrap();
        assert!(victim.join("build/keep").exists());
        // a tree holding a link: the link goes, not its target's files
        dir.remove(OsStr::new("a")).unwrap();
        assert!(!tree.join("a").exists());
        assert!(victim.join("build/keep").exists());
        dir.remove(OsStr::new("proj")).unwrap();
        assert!(victim.exists() && !tree.join("proj").exists());
        assert!(dir.remove(OsStr::new("..")).is_err());
        // deeper than PATH_MAX
        let mut deep = dir.try_clone().unwrap();
        for _ in 0..2_000 {
            nix::sys::stat::mkdirat(deep.as_fd(), "dd", Mode::from_bits_truncate(0o755)).unwrap();
            deep = deep.child(OsStr::new("dd")).unwrap();
        }
        dir.clear().unwrap();
        assert_eq!(std::fs::read_dir(&tree).unwrap().count(), 0);
    }

    #[test]
    fn a_file_is_opened_only_if_it_is_still_the_one_seen() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), "one").unwrap();
        let dir = Dir::open(tmp.path()).unwrap();
        let seen = dir.stat_at(OsStr::new("f")).unwrap().unwrap();
        assert!(dir.open_file(OsStr::new("f"), Some(&seen)).is_ok());
        std::fs::remove_file(tmp.path().join("f")).unwrap();
        std::fs::write(tmp.path().join("g"), "two").unwrap();
        symlink(tmp.path().join("g"), tmp.path().join("f")).unwrap();
        assert!(dir.open_file(OsStr::new("f"), Some(&seen)).is_err());
        std::fs::remove_file(tmp.path().join("f")).unwrap();
        nix::unistd::mkfifo(&tmp.path().join("f"), Mode::from_bits_truncate(0o644)).unwrap();
        let err = dir.open_file(OsStr::new("f"), None).unwrap_err();
        assert!(err.to_string().contains("regular"), "{err}");
    }
}
