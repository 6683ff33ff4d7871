//! Whether a runtime's changes take writes, and the gate a freeze waits
//! at. One per runtime's [`Scratch`](super::Scratch), shared by every
//! overlay of it: the one the runtime shows and the superseded ones whose
//! files are still open (a build's log opened before a `spfs reset OTHER`
//! or a `spfs runtime change-stack` writes on into the same scratch file).
//! A freeze (`spfs edit --off`, a commit under way) closes it for all of
//! them at once, after every data write already under way has landed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

#[derive(Debug, Default)]
pub struct Writes {
    open: AtomicBool,
    /// Data writes under way each hold a pass (shared); [`Writes::set`]
    /// takes it exclusively, so it waits for them, and a write that comes
    /// after a close sees it.
    gate: RwLock<()>,
}

/// Held across one data write's `pwrite`.
pub struct Pass<'a> {
    _guard: RwLockReadGuard<'a, ()>,
}

impl Writes {
    /// A pass for one data write, or None while writes are refused.
    pub fn pass(&self) -> Option<Pass<'_>> {
        let guard = crate::sync::read(&self.gate);
        self.is_open().then_some(Pass { _guard: guard })
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Refuses writes from now on if it took them (true); false when it
    /// was closed already: one step, so of two freezes only one wins.
    pub fn close_if_open(&self) -> bool {
        let _gate = crate::sync::write(&self.gate);
        self.open.swap(false, Ordering::AcqRel)
    }

    /// Take writes from now on, or refuse them. A close returns once every
    /// data write that had its pass is on the disk. Blocking: call it off
    /// the async workers.
    pub fn set(&self, open: bool) {
        let _gate = crate::sync::write(&self.gate);
        self.open.store(open, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_close_waits_for_the_writes_under_way() {
        let writes = std::sync::Arc::new(Writes::default());
        assert!(writes.pass().is_none(), "closed until opened");
        writes.set(true);
        let pass = writes.pass().expect("open");
        let closer = {
            let writes = std::sync::Arc::clone(&writes);
            std::thread::spawn(move || writes.set(false))
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!closer.is_finished(), "the close waits for the pass");
        drop(pass);
        closer.join().unwrap();
        assert!(writes.pass().is_none());
    }
}
