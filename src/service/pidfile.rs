//! The pidfile: the running service holds an exclusive `flock` on it for its
//! whole life, so a second instance for the same runtime dir refuses to start
//! and anyone can tell whether a service is alive without trusting the socket.
//!
//! Every open uses `O_NOFOLLOW | O_NONBLOCK` and checks for a regular file:
//! a symlink planted at the path is never followed (nothing it points to is
//! truncated), and a FIFO or device there is refused at once instead of
//! blocking the opener.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

pub struct PidFile {
    path: PathBuf,
    lock: Flock<File>,
}

#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    /// Another live process holds the lock; its pid when the file names one.
    #[error("already running{}", .0.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    AlreadyRunning(Option<i32>),
    /// Something other than a regular file is at the path.
    #[error("pidfile {path} is {what}, not a regular file; remove it (`rm {path}`) and retry", path = .path.display())]
    NotAFile { path: PathBuf, what: &'static str },
    #[error("cannot open pidfile {path}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Opens `path` without following a symlink or blocking, and only if it is
/// a regular file.
fn open_regular(path: &Path, options: &mut OpenOptions) -> Result<File, PidFileError> {
    let file = options
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| match source.raw_os_error() {
            Some(libc::ELOOP) => PidFileError::NotAFile {
                path: path.to_owned(),
                what: "a symlink",
            },
            _ => PidFileError::Io {
                path: path.to_owned(),
                source,
            },
        })?;
    let meta = file.metadata().map_err(|source| PidFileError::Io {
        path: path.to_owned(),
        source,
    })?;
    let kind = meta.file_type();
    if !kind.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "a device"
        };
        return Err(PidFileError::NotAFile {
            path: path.to_owned(),
            what,
        });
    }
    Ok(file)
}

impl PidFile {
    /// Locks the pidfile (without waiting) and writes our pid into it.
    pub fn acquire(path: &Path) -> Result<PidFile, PidFileError> {
        let file = open_regular(
            path,
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600),
        )?;
        let io_err = |source: io::Error| PidFileError::Io {
            path: path.to_owned(),
            source,
        };
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(PidFileError::AlreadyRunning(read_pid(path)));
            }
            Err((_, errno)) => return Err(io_err(errno.into())),
        };
        let written = lock
            .set_len(0)
            .and_then(|()| lock.seek(SeekFrom::Start(0)).map(drop))
            .and_then(|()| writeln!(*lock, "{}", std::process::id()));
        written.map_err(io_err)?;
        Ok(PidFile {
            path: path.to_owned(),
            lock,
        })
    }

    /// Whether the path still names the file we hold (it was not deleted or
    /// replaced, for example with the whole runtime dir).
    pub fn is_intact(&self) -> bool {
        same_file(&self.lock, &self.path)
    }

    /// Deletes the file if it is still ours, then lets go of the lock (last
    /// step of shutdown).
    pub fn remove(self) {
        if self.is_intact() {
            let _ = std::fs::remove_file(&self.path);
        }
        drop(self.lock);
    }
}

/// Whether `path` (not followed) is the very file `file` has open.
fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(open), Ok(at_path)) => open.dev() == at_path.dev() && open.ino() == at_path.ino(),
        _ => false,
    }
}

/// The pid written in the file, live or not.
pub fn read_pid(path: &Path) -> Option<i32> {
    let mut text = String::new();
    open_regular(path, OpenOptions::new().read(true))
        .ok()?
        .read_to_string(&mut text)
        .ok()?;
    text.trim().parse().ok()
}

/// Whether a live service holds the pidfile's lock. A symlink or non-file at
/// the path is not a pidfile, so nobody holds it.
pub fn is_held(path: &Path) -> bool {
    check_held(path).unwrap_or(false)
}

/// Like [`is_held`], but says when the path is not a regular file.
pub fn check_held(path: &Path) -> Result<bool, PidFileError> {
    let file = match open_regular(path, OpenOptions::new().read(true)) {
        Ok(file) => file,
        Err(PidFileError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(false)
        }
        Err(err) => return Err(err),
    };
    Ok(matches!(
        Flock::lock(file, FlockArg::LockSharedNonblock),
        Err((_, Errno::EWOULDBLOCK))
    ))
}

/// The pid of the live service holding the pidfile, if any.
pub fn holder(path: &Path) -> Option<i32> {
    if is_held(path) {
        read_pid(path)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_is_not_followed_and_its_target_is_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let path = dir.path().join("service.pid");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let err = PidFile::acquire(&path).err().unwrap();
        assert!(err.to_string().contains("a symlink"), "{err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(!is_held(&path));
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("service.pid");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = PidFile::acquire(&path).err().unwrap();
        assert!(err.to_string().contains("a FIFO"), "{err}");
        assert!(check_held(&path).is_err());
        assert_eq!(read_pid(&path), None);
    }

    #[test]
    fn a_replaced_pidfile_is_not_intact_and_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("service.pid");
        let held = PidFile::acquire(&path).unwrap();
        assert!(held.is_intact());
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "other").unwrap();
        assert!(!held.is_intact());
        held.remove();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "other");
    }
}
