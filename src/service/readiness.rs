//! The service's half of the readiness pipe (`SPFS_READY_FD`): one JSON line
//! when it is SERVING, or one when startup fails. See `launcher::spawn`.

use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};

use crate::launcher::spawn::READY_FD_VAR;

pub struct ReadyNotifier(File);

impl ReadyNotifier {
    /// Takes the fd named by `SPFS_READY_FD` and clears the variable.
    ///
    /// Call at the top of `main`, before any thread starts: it edits the environment.
    pub fn from_env() -> Option<ReadyNotifier> {
        let value = std::env::var(READY_FD_VAR).ok()?;
        std::env::remove_var(READY_FD_VAR);
        let fd: RawFd = value.trim().parse().ok()?;
        // SAFETY: fcntl on any integer is safe; it fails with EBADF if not open.
        if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return None;
        }
        // Not inherited by helpers we run (fusermount3), or EOF would come late.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        // SAFETY: the launcher gave us this fd for our exclusive use.
        Some(ReadyNotifier(unsafe { File::from_raw_fd(fd) }))
    }

    pub fn ready(mut self) {
        let line = serde_json::json!({"ready": true, "pid": std::process::id()});
        let _ = writeln!(self.0, "{line}");
    }

    pub fn failed(mut self, reason: &str, message: &str) {
        let line = serde_json::json!({"error": message, "reason": reason});
        let _ = writeln!(self.0, "{line}");
    }
}
