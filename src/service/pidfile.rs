//! The pidfile: the running service holds an exclusive `flock` on it for its
//! whole life, so a second instance for the same runtime dir refuses to start
//! and anyone can tell whether a service is alive without trusting the socket.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

pub struct PidFile {
    path: PathBuf,
    lock: Flock<File>,
}

#[derive(Debug)]
pub enum PidFileError {
    /// Another live process holds the lock; its pid when the file names one.
    AlreadyRunning(Option<i32>),
    Io(io::Error),
}

impl PidFile {
    /// Locks the pidfile (without waiting) and writes our pid into it.
    pub fn acquire(path: &Path) -> Result<PidFile, PidFileError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(PidFileError::Io)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(PidFileError::AlreadyRunning(read_pid(path)));
            }
            Err((_, errno)) => return Err(PidFileError::Io(errno.into())),
        };
        let written = lock
            .set_len(0)
            .and_then(|()| lock.seek(SeekFrom::Start(0)).map(drop))
            .and_then(|()| writeln!(*lock, "{}", std::process::id()));
        written.map_err(PidFileError::Io)?;
        Ok(PidFile {
            path: path.to_owned(),
            lock,
        })
    }

    /// Deletes the file, then lets go of the lock (last step of shutdown).
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
        drop(self.lock);
    }
}

/// The pid written in the file, live or not.
pub fn read_pid(path: &Path) -> Option<i32> {
    let mut text = String::new();
    File::open(path).ok()?.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// Whether a live service holds the pidfile's lock.
pub fn is_held(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    matches!(
        Flock::lock(file, FlockArg::LockSharedNonblock),
        Err((_, Errno::EWOULDBLOCK))
    )
}
