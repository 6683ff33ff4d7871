//! The read side of the service's pidfile, for anyone who asks whether a
//! service is alive (the launcher, `spfs service stop`, tests): the running
//! service holds an exclusive `flock` on it for its whole life and writes
//! its pid in it (the write side is `service::pidfile`).
//!
//! Every open uses `O_NOFOLLOW | O_NONBLOCK` and checks for a regular file:
//! a symlink planted at the path is never followed (nothing it points to is
//! truncated), and a FIFO or device there is refused at once instead of
//! blocking the opener.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

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
pub fn open_regular(path: &Path, options: &mut OpenOptions) -> Result<File, PidFileError> {
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
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("service.pid");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(check_held(&path).is_err());
        assert_eq!(read_pid(&path), None);
        assert!(!is_held(&path));
    }

    #[test]
    fn a_symlink_is_no_pidfile() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "12").unwrap();
        let path = dir.path().join("service.pid");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        assert_eq!(read_pid(&path), None);
        let err = check_held(&path).unwrap_err();
        assert!(err.to_string().contains("a symlink"), "{err}");
    }
}
