//! The spawn lock: an exclusive `flock` on `spawn.lock` in the runtime dir,
//! held by the one launcher that is starting the service. The kernel drops it
//! when the holder exits, so a killed launcher never blocks the next one.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};

pub struct SpawnLock {
    _lock: Flock<File>,
}

impl SpawnLock {
    /// Blocks until the lock is ours. Run it on a blocking thread.
    pub fn acquire(path: &Path) -> Result<SpawnLock> {
        Self::lock(path, FlockArg::LockExclusive).map(|lock| lock.expect("a blocking lock"))
    }

    /// The lock if nobody holds it, without waiting: the usual cold start
    /// needs no blocking thread (starting one costs about 0.1 ms).
    pub fn try_acquire(path: &Path) -> Result<Option<SpawnLock>> {
        Self::lock(path, FlockArg::LockExclusiveNonblock)
    }

    fn lock(path: &Path, how: FlockArg) -> Result<Option<SpawnLock>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .map_err(|err| Error::io(format!("cannot open spawn lock {}", path.display()), err))?;
        match Flock::lock(file, how) {
            Ok(lock) => Ok(Some(SpawnLock { _lock: lock })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if how == FlockArg::LockExclusiveNonblock => {
                Ok(None)
            }
            Err((_, errno)) => Err(Error::io(
                format!("cannot lock {}", path.display()),
                std::io::Error::from(errno),
            )),
        }
    }
}
