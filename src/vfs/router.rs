//! Routing: what a request sees. The router ties the two halves together:
//! [`Membership`] (which process is in which runtime, and what each
//! runtime shows) and the [`Registry`] (every tree alive, by the id in its
//! inode numbers, shared views and lingering ones). It runs the watches on
//! members' exits, and ends a runtime whose last process exited: its
//! overlay is superseded, its view lingers if shared, and the runtime
//! table hears of it.
//!
//! Only root-level lookups are routed by the caller's pid
//! ([`Router::shown_for_caller`]); everything below the root is routed by
//! inode number (`vfs::inode`), or by open handle.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::linger::Linger;
use super::membership::{Claim, Membership, RuntimeId, RuntimeRoute, Watch};
use super::registry::{Registry, StackKey};
use super::shown::Shown;
use super::view::View;
use crate::platform;
use crate::sync::lock;

#[derive(Default)]
pub struct Router {
    membership: Membership,
    registry: Arc<Registry>,
    /// Told when a runtime ends by itself (its last process exited).
    ended: Mutex<Option<mpsc::UnboundedSender<RuntimeId>>>,
}

impl Router {
    /// Starts watching members' exits on the current tokio runtime; the
    /// runtimes that end by themselves are sent to `ended`.
    pub fn start_watching(
        self: &Arc<Self>,
        ended: mpsc::UnboundedSender<RuntimeId>,
    ) -> tokio::task::JoinHandle<()> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Watch>();
        self.membership.set_watcher(tx);
        *lock(&self.ended) = Some(ended);
        let router = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(Watch { pid, start_time }) = rx.recv().await {
                let router = router.clone();
                tokio::spawn(async move {
                    let watch = platform::ExitWatch::new(pid);
                    // The pidfd (or kqueue) now pins the process: check that it is
                    // still the one that joined, not a reused pid.
                    let same = platform::start_time(pid).ok() == Some(start_time);
                    if let (Ok(watch), true) = (watch, same) {
                        watch.exited().await;
                    }
                    if let Some(router) = router.upgrade() {
                        tokio::task::spawn_blocking(move || router.member_exited(pid, start_time));
                    }
                });
            }
        })
    }

    /// A fresh tree id; never 0, never reused.
    pub fn next_view_id(&self) -> u64 {
        self.registry.next_view_id()
    }

    /// Adds runtime `id`, showing `route.shown`, with process `root` as its
    /// first member.
    pub fn add_runtime(&self, id: RuntimeId, root: i32, route: RuntimeRoute) {
        self.registry.register(&route.shown);
        self.membership.add(id, root, route);
    }

    /// Ends runtime `id` now: its members see nothing from here on; its view
    /// lives on while open files hold it (and lingers, if shared).
    pub fn remove_runtime(&self, id: RuntimeId) -> bool {
        let Some(route) = self.membership.remove(id) else {
            return false;
        };
        if let Shown::Overlay(overlay) = &route.shown {
            overlay.end();
        }
        self.let_go(&route.shown, None);
        drop(route);
        self.registry.forget_dropped();
        true
    }

    /// Runtime `id` shows `shown` from now on (it became editable, was
    /// reset, or shows another stack); what it showed before lives on while
    /// open files hold it. False when the runtime is gone.
    pub fn set_shown(&self, id: RuntimeId, shown: Shown) -> bool {
        self.registry.register(&shown);
        let new_overlay = match &shown {
            Shown::Overlay(overlay) => Some(Arc::clone(overlay)),
            Shown::View(_) => None,
        };
        let Some(old) = self.membership.set_shown(id, shown) else {
            return false;
        };
        self.let_go(&old, new_overlay.as_ref());
        drop(old);
        self.registry.forget_dropped();
        true
    }

    /// A runtime no longer shows `old`: an overlay other than `kept` is
    /// superseded (its open files work on, nothing else), and its view
    /// lingers if shared.
    fn let_go(&self, old: &Shown, kept: Option<&Arc<super::overlay::Overlay>>) {
        if let Shown::Overlay(overlay) = old {
            if !kept.is_some_and(|kept| Arc::ptr_eq(kept, overlay)) {
                overlay.supersede();
            }
        }
        self.registry.linger(old.layers());
    }

    /// What runtime `id` shows now.
    pub fn shown_by(&self, id: RuntimeId) -> Option<Shown> {
        self.membership.shown_by(id)
    }

    /// The view or overlay whose inode space is `id`, while it is alive.
    pub fn shown(&self, id: u64) -> Option<Shown> {
        self.registry.shown(id)
    }

    /// What the process that sent a request (by its thread id) sees.
    pub fn shown_for_caller(&self, tid: u32) -> Option<Shown> {
        self.membership.shown_for_caller(tid)
    }

    /// The runtime a process is in (joining it, as a request from it would).
    pub fn runtime_of_process(&self, pid: i32) -> Option<RuntimeId> {
        self.membership.runtime_of_process(pid)
    }

    /// The live view of exactly this stack, if a runtime or an open file still holds one.
    pub fn shared_view(&self, key: &StackKey) -> Option<Arc<View>> {
        self.registry.shared_view(key)
    }

    /// Offers `view` to later runtimes of the same stack.
    pub fn share(&self, key: StackKey, view: &Arc<View>) {
        self.registry.share(key, view);
    }

    /// Keeps views `linger` long after their last runtime ended.
    pub fn start_lingering(&self, linger: Linger) {
        self.registry.start_lingering(linger);
    }

    /// Frees the lingering views now (the service is stopping).
    pub fn stop_lingering(&self) {
        self.registry.stop_lingering();
    }

    /// How many views linger now.
    pub fn lingering(&self) -> usize {
        self.registry.lingering()
    }

    /// Views and overlays alive now.
    pub fn live_views(&self) -> usize {
        self.registry.live_views()
    }

    /// A member exited; a runtime left without a known process ends
    /// unless processes carrying its name claim it.
    fn member_exited(&self, pid: i32, start_time: u64) {
        if let Some(emptied) = self.membership.member_exited(pid, start_time) {
            self.end_unless_claimed(emptied);
        }
    }

    /// Runtime `id` has no known process left: the processes carrying its
    /// name join it, or if there is none it ends.
    fn end_unless_claimed(&self, id: RuntimeId) {
        if self.membership.claim(id) == Claim::Unclaimed && self.remove_runtime(id) {
            if let Some(tx) = lock(&self.ended).as_ref() {
                let _ = tx.send(id);
            }
        }
    }

    /// Checks runtime `id`'s members now instead of waiting for their exit
    /// watches (which report a moment later): the exited ones leave, and if
    /// none is left the runtime ends. True when runtime `id` is gone.
    pub fn reap(&self, id: RuntimeId) -> bool {
        for (pid, start_time) in self.membership.members_of(id) {
            if platform::start_time(pid).ok() != Some(start_time) {
                self.member_exited(pid, start_time);
            }
        }
        // Emptied a moment ago, with its exit watch still looking for
        // processes carrying its name: look now too, not wait for it.
        if self.membership.is_emptied(id) {
            self.end_unless_claimed(id);
        }
        !self.membership.contains(id)
    }

    /// Runtimes live now.
    pub fn runtime_count(&self) -> usize {
        self.membership.runtime_count()
    }

    /// Processes known to be in runtime `id`.
    pub fn member_count(&self, id: RuntimeId) -> usize {
        self.membership.member_count(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::proxy::ProxyRepository;
    use crate::vfs::view::View;

    fn empty_view(router: &Router) -> Arc<View> {
        let empty = Arc::new(ProxyRepository::from_repositories(vec![]));
        Arc::new(
            View::build(
                router.next_view_id(),
                crate::tracking::env_spec::EnvSpec::empty(),
                &[],
                empty,
                &crate::vfs::view::Budget::unlimited(),
            )
            .unwrap(),
        )
    }

    #[test]
    fn a_process_and_its_children_see_the_view_others_do_not() {
        let router = Router::default();
        let me = std::process::id() as i32;
        let view = empty_view(&router);
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        // Route the child's pid: we (its parent) must not see it.
        let start = platform::start_time(child.id() as i32).unwrap();
        let uid = nix::unistd::geteuid().as_raw();
        router.add_runtime(
            1,
            child.id() as i32,
            RuntimeRoute::new(Arc::clone(&view), "rt-1".into(), uid, start),
        );
        assert!(router.shown_for_caller(child.id()).is_some());
        assert!(router.shown_for_caller(me as u32).is_none());
        assert_eq!(router.member_count(1), 1);
        assert!(router.remove_runtime(1));
        assert_eq!(router.runtime_count(), 0);
        assert!(router.shown_for_caller(child.id()).is_none());
        assert_eq!(router.live_views(), 1, "our Arc still holds it");
        drop(view);
        assert_eq!(router.live_views(), 0);
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The child of a process recorded under the same pid but another start
    /// time (the real root exited and its pid was reused) gets no view.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_reused_pid_gets_no_view() {
        let mut shell = std::process::Command::new("sh")
            .args(["-c", "sleep 5; true"])
            .spawn()
            .unwrap();
        let parent = shell.id() as i32;
        let children = format!("/proc/{parent}/task/{parent}/children");
        let mut child = None;
        for _ in 0..500 {
            child = std::fs::read_to_string(&children)
                .ok()
                .and_then(|text| text.split_whitespace().next()?.parse::<u32>().ok());
            if child.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let child = child.expect("the shell started sleep");
        let start = platform::start_time(parent).unwrap();
        let uid = nix::unistd::geteuid().as_raw();
        for (recorded, sees) in [(start + 1, false), (start, true)] {
            let router = Router::default();
            let view = empty_view(&router);
            router.add_runtime(
                1,
                parent,
                RuntimeRoute::new(view, "rt".into(), uid, recorded),
            );
            assert_eq!(
                router.shown_for_caller(child).is_some(),
                sees,
                "recorded {recorded}, real {start}"
            );
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = shell.kill();
        let _ = shell.wait();
    }
}
