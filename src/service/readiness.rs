//! The service's half of the readiness pipe (`SPFS_READY_FD`): one line
//! when it is SERVING, or one when startup fails, in the format
//! `contract::ready` defines. The launcher's half is `launcher::spawn`.

use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};

use crate::contract::{ReadyLine, StartReason, READY_FD_VAR};

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
        // SAFETY: `fd` is open (checked above); setting FD_CLOEXEC on it
        // touches no memory and no other fd.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        // SAFETY: the launcher gave us this fd for our exclusive use.
        Some(ReadyNotifier(unsafe { File::from_raw_fd(fd) }))
    }

    pub fn ready(self) {
        self.send(ReadyLine::Ready {
            pid: std::process::id() as i32,
        });
    }

    pub fn failed(self, reason: StartReason, error: &str) {
        self.send(ReadyLine::Failed {
            reason,
            error: error.to_owned(),
        });
    }

    fn send(mut self, line: ReadyLine) {
        // Nobody reading (the launcher gave up): nothing to tell.
        let _ = self.0.write_all(line.to_line().as_bytes());
    }
}
