//! The mark of a live runtime's directory: a lock (`flock`) on its
//! `in-use` file, held by the service that shows the runtime for as long
//! as the runtime runs, and let go when it ends. A runtime whose
//! directory is marked is never listed as stopped nor removed, by any
//! service or command: one of another runtime dir (cron, `su`, `sudo -u`,
//! a second `SPFS_RUNTIME_DIR`) sees the same scratch dir but not the same
//! service, and would otherwise take a running runtime for one a dead
//! service left. The kernel lets go of the lock when its service dies, so
//! a crash leaves the runtime stopped, as it is.

use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

/// The lock file's name in a runtime's directory.
pub const LOCK_FILE: &str = "in-use";

/// Held while a runtime runs (or while a stopped one is removed).
#[derive(Debug)]
pub struct InUse {
    _lock: Flock<File>,
}

impl InUse {
    /// Marks runtime directory `root` as in use; None when another holds
    /// it (a live runtime of another service).
    pub fn take(root: &Path) -> io::Result<Option<InUse>> {
        let path = root.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)?;
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a regular file", path.display()),
            ));
        }
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(InUse { _lock: lock })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, err)) => Err(err.into()),
        }
    }
}

/// Whether a live runtime's service holds `root` (without taking it: a
/// directory with no lock file was never marked).
pub fn is_held(root: &Path) -> bool {
    let path = root.join(LOCK_FILE);
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path)
    else {
        return false;
    };
    matches!(
        Flock::lock(file, FlockArg::LockSharedNonblock),
        Err((_, nix::errno::Errno::EWOULDBLOCK))
    )
}

/// The error for a runtime another service runs.
pub fn held_error(name: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::ResourceBusy,
        format!(
            "runtime {name:?} is running under another spfs service (one of another SPFS_RUNTIME_DIR holds its directory); end it there first"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_a_crash_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_held(dir.path()), "never marked");
        let held = InUse::take(dir.path()).unwrap().expect("free");
        assert!(is_held(dir.path()));
        assert!(InUse::take(dir.path()).unwrap().is_none(), "taken");
        drop(held);
        assert!(!is_held(dir.path()));
        assert!(InUse::take(dir.path()).unwrap().is_some());
    }
}
