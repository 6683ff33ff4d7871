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
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .map_err(|err| Error::io(format!("cannot open spawn lock {}", path.display()), err))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| {
            Error::io(
                format!("cannot lock {}", path.display()),
                std::io::Error::from(errno),
            )
        })?;
        Ok(SpawnLock { _lock: lock })
    }
}
