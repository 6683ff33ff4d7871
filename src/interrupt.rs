//! Ctrl-C and SIGTERM during work that must end cleanly (a commit between
//! its freeze and thaw, payloads on their way into a repository): while
//! [`catch`]'s guard lives they only set a flag, which the work checks at
//! each step ([`requested`]); it then stops with `StorageError::Interrupted`,
//! deleting what it had half written, and the command undoes what it must
//! (a runtime made editable again) before it exits with status 130.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Whether Ctrl-C or SIGTERM came while a [`Caught`] was held.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// While it lives, SIGINT and SIGTERM set the flag instead of ending the
/// process; dropping it restores what was there before.
pub struct Caught {
    previous: Vec<(Signal, SigAction)>,
}

/// Catches SIGINT and SIGTERM until the guard is dropped.
pub fn catch() -> Caught {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    let mut previous = Vec::new();
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe; the previous action is restored on drop.
        if let Ok(old) = unsafe { sigaction(signal, &action) } {
            previous.push((signal, old));
        }
    }
    Caught { previous }
}

impl Drop for Caught {
    fn drop(&mut self) {
        for (signal, old) in self.previous.drain(..) {
            // SAFETY: puts back the action `catch` found, as it was.
            let _ = unsafe { sigaction(signal, &old) };
        }
    }
}
