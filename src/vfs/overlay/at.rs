//! A path of the scratch directory as the kernel takes it: whole when it
//! fits (one syscall, as before), else relative to a directory opened on
//! the way, so a runtime's tree may be as deep as its disk holds, with
//! paths far longer than `PATH_MAX`. Every change of an overlay goes
//! through `*at` calls on an [`At`].
//!
//! The directories on the way are the overlay's own (made under its lock
//! in the service's private scratch directory), so opening several names
//! at once follows nothing a process of the runtime could plant: a
//! symlink it makes is a leaf, never looked up through (`Overlay::live`).

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// Longest path handed to the kernel in one call; well within `PATH_MAX`
/// (4096 on Linux, 1024 on macOS).
const CHUNK: usize = 900;

/// `path` relative to `dir` (the working directory when None).
pub struct At {
    dir: Option<OwnedFd>,
    path: PathBuf,
}

impl At {
    /// `relative` (normal components) below `base`.
    pub fn new(base: &Path, relative: &Path) -> io::Result<At> {
        let whole = base.as_os_str().len() + 1 + relative.as_os_str().len();
        if whole <= CHUNK {
            return Ok(At {
                dir: None,
                path: base.join(relative),
            });
        }
        let mut dir = nix::fcntl::open(base, dir_flags(), Mode::empty())?;
        let names: Vec<&OsStr> = relative.iter().collect();
        let Some((last, parents)) = names.split_last() else {
            return Ok(At {
                dir: Some(dir),
                path: PathBuf::from("."),
            });
        };
        let mut chunk = PathBuf::new();
        for name in parents {
            if chunk.as_os_str().len() + 1 + name.len() > CHUNK {
                dir = nix::fcntl::openat(&dir, &chunk, dir_flags(), Mode::empty())?;
                chunk = PathBuf::new();
            }
            chunk.push(name);
        }
        if !chunk.as_os_str().is_empty() {
            dir = nix::fcntl::openat(&dir, &chunk, dir_flags(), Mode::empty())?;
        }
        Ok(At {
            dir: Some(dir),
            path: PathBuf::from(last),
        })
    }

    /// The directory the path is relative to.
    pub fn fd(&self) -> BorrowedFd<'_> {
        match &self.dir {
            Some(dir) => dir.as_fd(),
            None => nix::fcntl::AT_FDCWD,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Child `name` of this directory.
    pub fn child(&self, name: &OsStr) -> io::Result<At> {
        if self.path.as_os_str().len() + 1 + name.len() <= CHUNK {
            return Ok(At {
                dir: self.dir.as_ref().map(OwnedFd::try_clone).transpose()?,
                path: self.path.join(name),
            });
        }
        let dir = nix::fcntl::openat(self.fd(), &self.path, dir_flags(), Mode::empty())?;
        Ok(At {
            dir: Some(dir),
            path: PathBuf::from(name),
        })
    }

    pub fn lstat(&self) -> io::Result<nix::sys::stat::FileStat> {
        Ok(nix::sys::stat::fstatat(
            self.fd(),
            &self.path,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )?)
    }

    /// Whether something is there (ENOENT and ENOTDIR say no).
    pub fn exists(&self) -> io::Result<bool> {
        match self.lstat() {
            Ok(_) => Ok(true),
            Err(err) if matches!(err.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                Ok(false)
            }
            Err(err) => Err(err),
        }
    }

    pub fn open(&self, flags: OFlag, mode: u32) -> io::Result<std::fs::File> {
        let fd = nix::fcntl::openat(
            self.fd(),
            &self.path,
            flags | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode as _),
        )?;
        Ok(std::fs::File::from(fd))
    }

    /// The names in this directory, but `.` and `..`.
    pub fn read_dir(&self) -> io::Result<Vec<std::ffi::OsString>> {
        let fd = nix::fcntl::openat(self.fd(), &self.path, dir_flags(), Mode::empty())?;
        let mut names = Vec::new();
        for entry in nix::dir::Dir::from_fd(fd)? {
            let name = entry?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                names.push(OsStr::from_bytes(&name).to_owned());
            }
        }
        Ok(names)
    }

    pub fn read_link(&self) -> io::Result<PathBuf> {
        Ok(nix::fcntl::readlinkat(self.fd(), &self.path)?.into())
    }

    /// Makes a directory of mode `perm` exactly (not narrowed by the umask).
    pub fn mkdir(&self, perm: u32) -> io::Result<()> {
        let mode = Mode::from_bits_truncate(perm as _);
        nix::sys::stat::mkdirat(self.fd(), &self.path, mode)?;
        self.chmod(perm)
    }

    pub fn chmod(&self, perm: u32) -> io::Result<()> {
        Ok(nix::sys::stat::fchmodat(
            self.fd(),
            &self.path,
            Mode::from_bits_truncate(perm as _),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )?)
    }

    pub fn symlink(&self, target: &Path) -> io::Result<()> {
        Ok(nix::unistd::symlinkat(target, self.fd(), &self.path)?)
    }

    pub fn unlink(&self) -> io::Result<()> {
        Ok(nix::unistd::unlinkat(
            self.fd(),
            &self.path,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        )?)
    }

    pub fn rmdir(&self) -> io::Result<()> {
        Ok(nix::unistd::unlinkat(
            self.fd(),
            &self.path,
            nix::unistd::UnlinkatFlags::RemoveDir,
        )?)
    }

    /// Renames this to `to`, replacing what is there as rename(2) does.
    pub fn rename_to(&self, to: &At) -> io::Result<()> {
        Ok(nix::fcntl::renameat(
            self.fd(),
            &self.path,
            to.fd(),
            &to.path,
        )?)
    }
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_longer_than_path_max_work_through_open_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let name = "n".repeat(200);
        let mut relative = PathBuf::new();
        for _ in 0..30 {
            relative.push(&name);
            At::new(tmp.path(), &relative)
                .unwrap()
                .mkdir(0o755)
                .unwrap();
        }
        assert!(relative.as_os_str().len() > 4096);
        let file = At::new(tmp.path(), &relative.join("f")).unwrap();
        use std::io::Write;
        file.open(OFlag::O_CREAT | OFlag::O_WRONLY, 0o644)
            .unwrap()
            .write_all(b"x")
            .unwrap();
        assert!(file.exists().unwrap());
        let dir = At::new(tmp.path(), &relative).unwrap();
        assert_eq!(dir.read_dir().unwrap(), ["f"]);
        let moved = dir.child(OsStr::new("g")).unwrap();
        file.rename_to(&moved).unwrap();
        assert!(!file.exists().unwrap() && moved.exists().unwrap());
        moved.unlink().unwrap();
        assert!(dir.read_dir().unwrap().is_empty());
    }
}
