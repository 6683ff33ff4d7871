//! The registry of trees: every view and overlay still alive (held by a
//! runtime or by open handles), found by the id in their inode numbers;
//! views by what they show ([`StackKey`]), so runtimes of the same stack
//! share one; and the views kept a while after their last runtime let go
//! of them (`linger`). Tree ids come from here and are never reused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use super::linger::{Linger, Lingering};
use super::overlay::Overlay;
use super::shown::Shown;
use super::view::View;
use crate::encoding::Digest;
use crate::sync::{lock, read, write};

/// What a view shows, exactly: the repositories its payloads come from and
/// the manifests of its layers, bottom to top. Only stacks of committed
/// layers have one (a directory layer may change on disk at any time).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StackKey {
    pub repositories: Vec<std::path::PathBuf>,
    pub manifests: Vec<Option<Digest>>,
}

#[derive(Default)]
pub struct Registry {
    next_view: AtomicU64,
    /// Every view still alive: held by a runtime or by open handles.
    views: RwLock<HashMap<u64, Weak<View>>>,
    /// Every overlay still alive, likewise.
    overlays: RwLock<HashMap<u64, Weak<Overlay>>>,
    /// Views by what they show, so runtimes of the same stack share one.
    shared: Mutex<HashMap<StackKey, Weak<View>>>,
    /// Shared views kept a while after their last runtime let go of them.
    lingering: Lingering,
}

impl Registry {
    /// A fresh tree id; never 0, never reused.
    pub fn next_view_id(&self) -> u64 {
        self.next_view.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Makes `shown` reachable by its inode numbers.
    pub fn register(&self, shown: &Shown) {
        match shown {
            Shown::View(view) => {
                write(&self.views).insert(view.id, Arc::downgrade(view));
            }
            Shown::Overlay(overlay) => {
                write(&self.views).insert(overlay.lower.id, Arc::downgrade(&overlay.lower));
                write(&self.overlays).insert(overlay.id, Arc::downgrade(overlay));
            }
        }
    }

    /// Forgets the trees nobody holds any more.
    pub fn forget_dropped(&self) {
        write(&self.views).retain(|_, view| view.strong_count() > 0);
        write(&self.overlays).retain(|_, overlay| overlay.strong_count() > 0);
        lock(&self.shared).retain(|_, view| view.strong_count() > 0);
    }

    /// The view or overlay whose inode space is `id`, while it is alive.
    pub fn shown(&self, id: u64) -> Option<Shown> {
        if let Some(overlay) = read(&self.overlays).get(&id).and_then(Weak::upgrade) {
            return Some(Shown::Overlay(overlay));
        }
        self.view(id).map(Shown::View)
    }

    pub fn view(&self, id: u64) -> Option<Arc<View>> {
        read(&self.views).get(&id)?.upgrade()
    }

    /// The live view of exactly this stack, if a runtime or an open file still holds one.
    pub fn shared_view(&self, key: &StackKey) -> Option<Arc<View>> {
        lock(&self.shared).get(key)?.upgrade()
    }

    /// Offers `view` to later runtimes of the same stack.
    pub fn share(&self, key: StackKey, view: &Arc<View>) {
        write(&self.views).insert(view.id, Arc::downgrade(view));
        lock(&self.shared).insert(key, Arc::downgrade(view));
    }

    /// A runtime let go of `view`: a shared view lingers (`vfs::linger`).
    pub fn linger(&self, view: &Arc<View>) {
        let shared = lock(&self.shared)
            .values()
            .any(|weak| std::ptr::eq(weak.as_ptr(), Arc::as_ptr(view)));
        if shared {
            self.lingering.keep(view);
        }
    }

    /// Keeps views `linger` long after their last runtime ended, checking
    /// for expired ones on the current tokio runtime until the registry goes.
    pub fn start_lingering(self: &Arc<Self>, linger: Linger) {
        self.lingering.set(linger);
        if linger.time.is_zero() {
            return;
        }
        let registry = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(linger.tick());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(registry) = registry.upgrade() else {
                    break;
                };
                let expired = registry.lingering.take_expired(std::time::Instant::now());
                if expired.is_empty() {
                    registry.forget_dropped();
                    continue;
                }
                // Freeing a big view (its nodes, memory given back) is
                // blocking work: off the async workers.
                let _ = tokio::task::spawn_blocking(move || {
                    drop(expired);
                    registry.forget_dropped();
                })
                .await;
            }
        });
    }

    /// Frees the lingering views now (the service is stopping).
    pub fn stop_lingering(&self) {
        self.lingering.stop();
        self.forget_dropped();
    }

    /// How many views linger now.
    pub fn lingering(&self) -> usize {
        self.lingering.len()
    }

    /// Views and overlays alive now.
    pub fn live_views(&self) -> usize {
        let views = read(&self.views)
            .values()
            .filter(|v| v.strong_count() > 0)
            .count();
        let overlays = read(&self.overlays)
            .values()
            .filter(|v| v.strong_count() > 0)
            .count();
        views + overlays
    }
}
