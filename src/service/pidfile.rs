//! The write side of the pidfile: the running service holds an exclusive
//! `flock` on it for its whole life, so a second instance for the same
//! runtime dir refuses to start and anyone can tell whether a service is
//! alive without trusting the socket (the read side, with the rules every
//! open follows, is `contract::pidfile`).

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::contract::pidfile::{open_regular, read_pid, PidFileError};

pub struct PidFile {
    path: PathBuf,
    lock: Flock<File>,
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
}

impl Drop for PidFile {
    /// Deletes the file if it is still ours; the lock goes with the file
    /// handle (the last step of a shutdown, or of a start that failed).
    fn drop(&mut self) {
        if self.is_intact() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Whether `path` (not followed) is the very file `file` has open.
fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(open), Ok(at_path)) => open.dev() == at_path.dev() && open.ino() == at_path.ino(),
        _ => false,
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
        assert!(!crate::contract::pidfile::is_held(&path));
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("service.pid");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = PidFile::acquire(&path).err().unwrap();
        assert!(err.to_string().contains("a FIFO"), "{err}");
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
        drop(held);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "other");
    }
}
