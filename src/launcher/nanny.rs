//! The nanny, and every `unsafe` of starting the service: the launcher
//! forks the nanny, which starts a new session, forks the service and
//! `exec`s it, then waits and reports on the readiness pipe how the service
//! exited (`contract::ready`'s nanny lines). Between `fork` and `exec` only
//! async-signal-safe calls are allowed in a multithreaded process, so
//! everything the children need is made before the fork ([`Exec`]).

use std::ffi::CString;

use nix::unistd::Pid;

use crate::contract::ready::{
    NannyLine, NANNY_EXEC_FAILED, NANNY_EXITED, NANNY_FORK_FAILED, NANNY_SIGNALED,
};
use crate::error::{Error, Result};

/// A program, its arguments and its environment, ready for `execve`.
pub struct Exec {
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

impl Exec {
    /// `program` run with `args` (its name first) in exactly `env`; a NUL
    /// byte in any of them is an error naming it.
    pub fn new(program: &[u8], args: &[&[u8]], env: &[(Vec<u8>, Vec<u8>)]) -> Result<Exec> {
        Ok(Exec {
            program: cstring(program)?,
            argv: args.iter().map(|a| cstring(a)).collect::<Result<_>>()?,
            envp: env
                .iter()
                .map(|(k, v)| cstring(&[k.as_slice(), b"=", v.as_slice()].concat()))
                .collect::<Result<_>>()?,
        })
    }
}

fn cstring(bytes: &[u8]) -> Result<CString> {
    CString::new(bytes).map_err(|_| Error::NulByte {
        what: String::from_utf8_lossy(bytes.split(|b| *b == 0).next().unwrap_or_default())
            .chars()
            .take(60)
            .collect(),
    })
}

/// The fds the service gets as stdin, stdout and stderr, and the readiness pipe.
pub struct ChildFds {
    pub devnull: libc::c_int,
    pub stderr: libc::c_int,
    pub ready: libc::c_int,
}

/// Forks the nanny, which forks and execs `exec`; the nanny's pid.
pub fn fork_nanny(exec: &Exec, fds: &ChildFds) -> std::io::Result<Pid> {
    let argv: Vec<*const libc::c_char> = exec
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = exec
        .envp
        .iter()
        .map(|e| e.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let root = c"/";
    // SAFETY: the child branch only makes async-signal-safe calls (see nanny_main).
    let nanny = unsafe { libc::fork() };
    if nanny < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if nanny == 0 {
        // SAFETY: in the forked child; never returns.
        unsafe { nanny_main(fds, exec.program.as_ptr(), &argv, &envp, root.as_ptr()) }
    }
    Ok(Pid::from_raw(nanny))
}

/// The nanny: new session, fork the service, report how it exits.
///
/// # Safety
/// Only for the child of `fork`; uses async-signal-safe calls only.
unsafe fn nanny_main(
    fds: &ChildFds,
    program: *const libc::c_char,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    root: *const libc::c_char,
) -> ! {
    libc::setsid();
    let service = libc::fork();
    if service == 0 {
        libc::dup2(fds.devnull, 0);
        libc::dup2(fds.stderr, 1);
        libc::dup2(fds.stderr, 2);
        libc::chdir(root);
        // The readiness pipe is the one fd the service inherits beyond stdio.
        libc::fcntl(fds.ready, libc::F_SETFD, 0);
        crate::platform::mark_fds_cloexec_except(fds.ready);
        libc::execve(program, argv.as_ptr(), envp.as_ptr());
        write_line(
            fds.ready,
            NANNY_EXEC_FAILED,
            *crate::platform::errno_location(),
        );
        libc::_exit(127);
    }
    if service < 0 {
        write_line(
            fds.ready,
            NANNY_FORK_FAILED,
            *crate::platform::errno_location(),
        );
        libc::_exit(1);
    }
    // Hold nothing but the pipe: an inherited spawn lock would outlive a killed launcher.
    for fd in [0, 1, 2] {
        libc::dup2(fds.devnull, fd);
    }
    crate::platform::close_fds_except(fds.ready);
    let mut status = 0;
    while libc::waitpid(service, &mut status, 0) < 0 {
        if *crate::platform::errno_location() != libc::EINTR {
            libc::_exit(1);
        }
    }
    if libc::WIFSIGNALED(status) {
        write_line(fds.ready, NANNY_SIGNALED, libc::WTERMSIG(status));
    } else {
        write_line(fds.ready, NANNY_EXITED, libc::WEXITSTATUS(status));
    }
    libc::_exit(0);
}

/// Writes `line`'s head, `number` in decimal, and its tail as one `write`.
/// Async-signal-safe.
unsafe fn write_line(fd: libc::c_int, (head, tail): NannyLine, number: i32) {
    let mut buf = [0u8; 256];
    let mut len = 0;
    let mut push = |bytes: &[u8]| {
        let n = bytes.len().min(buf.len() - len);
        buf[len..len + n].copy_from_slice(&bytes[..n]);
        len += n;
    };
    push(head);
    let mut digits = [0u8; 12];
    let mut i = digits.len();
    let negative = number < 0;
    let mut value = (number as i64).unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    if negative {
        i -= 1;
        digits[i] = b'-';
    }
    push(&digits[i..]);
    push(tail);
    libc::write(fd, buf.as_ptr().cast(), len);
}
