//! Routing: which view a request sees, and which processes belong to which
//! runtime.
//!
//! Membership works the way a mount namespace does: a process that is in a
//! runtime stays in it for its whole life, whatever happens to its parents,
//! and the runtime ends when its last process exits. A process joins when
//!
//! - `Mount` names it as the runtime's root;
//! - it first asks for the mount root and its ancestry reaches a member (the
//!   ancestors in between join too); or
//! - it carries the runtime's name in its environment (`SPFS_RUNTIME`, set by
//!   `spfs run` for the command and inherited by everything it starts, so a
//!   daemon reparented to init before it ever looked at `/spfs` is found),
//!   runs as the runtime's user, and started after the runtime's root.
//!
//! Every member's exit is watched (pidfd on Linux, kqueue on macOS), so a
//! member's pid is never reused while it is in the table: a request from a
//! member costs one hash lookup, no `/proc` or `sysctl` read. When the last
//! known member exits, processes carrying the runtime's name are looked for
//! once more before the runtime ends.
//!
//! Everything below the root is routed by inode number: the view id sits in
//! the high 32 bits and the node index in the low 32 bits. View ids are never
//! reused, so an inode number names one file of one view for the life of the
//! service, and the kernel's shared caches cannot leak one view into another.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use fuser::INodeNo;
use tokio::sync::mpsc;

use super::linger::{Linger, Lingering};
use super::overlay::Overlay;
use super::view::View;
use crate::platform;

/// The walk stops after this many ancestors: far deeper than real process
/// trees (a chain longer than this is treated as not reaching a runtime).
const MAX_ANCESTRY: usize = 65_536;

/// How long a runtime whose last known process exited waits before the
/// second look for processes carrying its name.
const EXEC_GRACE: std::time::Duration = std::time::Duration::from_millis(20);

/// Identifies one runtime for the router's life (never reused).
pub type RuntimeId = u64;

/// Why a runtime ended, as the router saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Its last process exited.
    LastProcessExited,
}

/// What the router asks of its owner: watch members, hear about ended runtimes.
enum Event {
    Watch { pid: i32, start_time: u64 },
}

#[derive(Default)]
pub struct Router {
    next_view: AtomicU64,
    state: RwLock<State>,
    /// Every view still alive: held by a runtime or by open handles.
    views: RwLock<HashMap<u64, Weak<View>>>,
    /// Every overlay still alive, likewise.
    overlays: RwLock<HashMap<u64, Weak<Overlay>>>,
    /// Views by what they show, so runtimes of the same stack share one.
    shared: Mutex<HashMap<StackKey, Weak<View>>>,
    /// Shared views kept a while after their last runtime let go of them.
    lingering: Lingering,
    /// Exit watching; absent in unit tests (then members stay until removed).
    watcher: Mutex<Option<mpsc::UnboundedSender<Event>>>,
    /// Told when a runtime ends by itself.
    ended: Mutex<Option<mpsc::UnboundedSender<(RuntimeId, EndReason)>>>,
}

#[derive(Default)]
struct State {
    runtimes: HashMap<RuntimeId, RuntimeRoute>,
    members: HashMap<i32, Member>,
}

/// What a runtime shows: the read-only view of its layers, or (once it
/// was editable) an overlay of its changes on them.
#[derive(Clone)]
pub enum Shown {
    View(Arc<View>),
    Overlay(Arc<Overlay>),
}

impl Shown {
    /// The inode space (view id) it is numbered in.
    pub fn id(&self) -> u64 {
        match self {
            Shown::View(view) => view.id,
            Shown::Overlay(overlay) => overlay.id,
        }
    }

    /// The read-only layers below.
    pub fn layers(&self) -> &Arc<View> {
        match self {
            Shown::View(view) => view,
            Shown::Overlay(overlay) => &overlay.lower,
        }
    }
}

impl From<Arc<View>> for Shown {
    fn from(view: Arc<View>) -> Shown {
        Shown::View(view)
    }
}

impl From<Arc<Overlay>> for Shown {
    fn from(overlay: Arc<Overlay>) -> Shown {
        Shown::Overlay(overlay)
    }
}

/// What a runtime shows and who may join it.
pub struct RuntimeRoute {
    pub shown: Shown,
    /// `SPFS_RUNTIME` of its processes.
    pub name: String,
    /// Only this user's processes join by name.
    pub uid: u32,
    /// The root's start time: a process started earlier cannot be a member.
    pub root_start_time: u64,
    members: usize,
}

impl RuntimeRoute {
    pub fn new(
        shown: impl Into<Shown>,
        name: String,
        uid: u32,
        root_start_time: u64,
    ) -> RuntimeRoute {
        RuntimeRoute {
            shown: shown.into(),
            name,
            uid,
            root_start_time,
            members: 0,
        }
    }
}

#[derive(Clone, Copy)]
struct Member {
    start_time: u64,
    runtime: RuntimeId,
}

/// What a view shows, exactly: the repositories its payloads come from and
/// the manifests of its layers, bottom to top. Only stacks of committed
/// layers have one (a directory layer may change on disk at any time).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StackKey {
    pub repositories: Vec<std::path::PathBuf>,
    pub manifests: Vec<Option<crate::encoding::Digest>>,
}

pub fn encode(view: u64, node: u32) -> INodeNo {
    INodeNo((view << 32) | u64::from(node))
}

pub fn decode(ino: INodeNo) -> (u64, u32) {
    (ino.0 >> 32, ino.0 as u32)
}

impl Router {
    /// Starts watching members' exits on the current tokio runtime; ended
    /// runtimes are sent to `ended`.
    pub fn start_watching(
        self: &Arc<Self>,
        ended: mpsc::UnboundedSender<(RuntimeId, EndReason)>,
    ) -> tokio::task::JoinHandle<()> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        *lock(&self.watcher) = Some(tx);
        *lock(&self.ended) = Some(ended);
        let router = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(Event::Watch { pid, start_time }) = rx.recv().await {
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

    /// A fresh view id; never 0, never reused.
    pub fn next_view_id(&self) -> u64 {
        self.next_view.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Adds runtime `id`, with process `root` (started at `start_time`) as
    /// its first member. A root that was a member of another runtime moves:
    /// the runtime named last is the nearest.
    pub fn add_runtime(&self, id: RuntimeId, root: i32, route: RuntimeRoute) {
        let start_time = route.root_start_time;
        self.register(&route.shown);
        let mut state = write(&self.state);
        state.runtimes.insert(id, route);
        state.join(root, start_time, id);
        drop(state);
        self.watch(root, start_time);
    }

    /// Ends runtime `id` now: its members see nothing from here on; its view
    /// lives on while open files hold it.
    pub fn remove_runtime(&self, id: RuntimeId) -> bool {
        let removed = {
            let mut state = write(&self.state);
            state.members.retain(|_, m| m.runtime != id);
            state.runtimes.remove(&id)
        };
        let found = removed.is_some();
        if let Some(route) = &removed {
            if let Shown::Overlay(overlay) = &route.shown {
                overlay.supersede();
            }
            self.linger(route.shown.layers());
        }
        drop(removed);
        self.forget_dropped();
        found
    }

    /// Makes `shown` reachable by its inode numbers.
    fn register(&self, shown: &Shown) {
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

    fn forget_dropped(&self) {
        write(&self.views).retain(|_, view| view.strong_count() > 0);
        write(&self.overlays).retain(|_, overlay| overlay.strong_count() > 0);
        self.shared_views()
            .retain(|_, view| view.strong_count() > 0);
    }

    /// Runtime `id` shows `shown` from now on (it became editable, was
    /// reset, or shows another stack); what it showed before lives on while
    /// open files hold it. False when the runtime is gone.
    pub fn set_shown(&self, id: RuntimeId, shown: Shown) -> bool {
        self.register(&shown);
        let new_overlay = match &shown {
            Shown::Overlay(overlay) => Some(Arc::clone(overlay)),
            Shown::View(_) => None,
        };
        let old = {
            let mut state = write(&self.state);
            match state.runtimes.get_mut(&id) {
                Some(route) => Some(std::mem::replace(&mut route.shown, shown)),
                None => None,
            }
        };
        let found = old.is_some();
        if let Some(Shown::Overlay(old)) = &old {
            if !new_overlay.is_some_and(|new| Arc::ptr_eq(&new, old)) {
                old.supersede();
            }
        }
        if let Some(old) = &old {
            self.linger(old.layers());
        }
        drop(old);
        self.forget_dropped();
        found
    }

    /// What runtime `id` shows now.
    pub fn shown_by(&self, id: RuntimeId) -> Option<Shown> {
        read(&self.state).shown_of(id)
    }

    /// The view or overlay whose inode space is `id`, while it is alive.
    pub fn shown(&self, id: u64) -> Option<Shown> {
        if let Some(overlay) = read(&self.overlays).get(&id).and_then(Weak::upgrade) {
            return Some(Shown::Overlay(overlay));
        }
        self.view(id).map(Shown::View)
    }

    /// The live view of exactly this stack, if a runtime or an open file still holds one.
    pub fn shared_view(&self, key: &StackKey) -> Option<Arc<View>> {
        self.shared_views().get(key)?.upgrade()
    }

    /// Offers `view` to later runtimes of the same stack.
    pub fn share(&self, key: StackKey, view: &Arc<View>) {
        write(&self.views).insert(view.id, Arc::downgrade(view));
        self.shared_views().insert(key, Arc::downgrade(view));
    }

    /// A runtime let go of `view`: a shared view lingers (`fs::linger`).
    fn linger(&self, view: &Arc<View>) {
        let shared = self
            .shared_views()
            .values()
            .any(|weak| std::ptr::eq(weak.as_ptr(), Arc::as_ptr(view)));
        if shared {
            self.lingering.keep(view);
        }
    }

    /// Keeps views `linger` long after their last runtime ended, checking
    /// for expired ones on the current tokio runtime until the router goes.
    pub fn start_lingering(self: &Arc<Self>, linger: Linger) {
        self.lingering.set(linger);
        if linger.time.is_zero() {
            return;
        }
        let router = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(linger.tick());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(router) = router.upgrade() else {
                    break;
                };
                router.lingering.expire(std::time::Instant::now());
                router.forget_dropped();
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

    fn shared_views(&self) -> std::sync::MutexGuard<'_, HashMap<StackKey, Weak<View>>> {
        lock(&self.shared)
    }

    pub fn view(&self, id: u64) -> Option<Arc<View>> {
        read(&self.views).get(&id)?.upgrade()
    }

    /// What the process that sent a request (by its thread id) sees.
    pub fn shown_for_caller(&self, tid: u32) -> Option<Shown> {
        {
            let state = read(&self.state);
            if state.runtimes.is_empty() {
                return None;
            }
            // A live member's pid is its main thread's id and cannot have been
            // reused (its exit is watched): the hot path reads nothing.
            if let Some(member) = state.members.get(&(tid as i32)) {
                return state.shown_of(member.runtime);
            }
        }
        let runtime = self.route_new_caller(tid as i32)?;
        read(&self.state).shown_of(runtime)
    }

    /// The runtime a process is in (joining it, as a request from it would).
    pub fn runtime_of_process(&self, pid: i32) -> Option<RuntimeId> {
        {
            let state = read(&self.state);
            if let Some(member) = state.members.get(&pid) {
                return Some(member.runtime);
            }
        }
        self.route_new_caller(pid)
    }

    /// A caller not (yet) known as a member: a thread of a member, a process
    /// whose ancestry reaches a member, or one that carries a runtime's name.
    fn route_new_caller(&self, tid: i32) -> Option<RuntimeId> {
        let mut pid = tid;
        let mut info = platform::process_info(pid).ok()?;
        if info.is_thread {
            pid = platform::process_of_thread(pid).ok()?;
            info = platform::process_info(pid).ok()?;
            let state = read(&self.state);
            if let Some(member) = state.members.get(&pid) {
                return Some(member.runtime);
            }
        }
        // Walk up to the nearest member, remembering the way.
        let mut chain = vec![(pid, info.start_time)];
        let mut found = None;
        for _ in 0..MAX_ANCESTRY {
            let (current, start_time) = *chain.last().expect("non-empty");
            {
                let state = read(&self.state);
                if let Some(member) = state.members.get(&current) {
                    // Same pid, different process: the member exited a moment ago.
                    if member.start_time == start_time {
                        found = Some(member.runtime);
                    }
                    break;
                }
            }
            if info.ppid <= 0 || info.ppid == current {
                break;
            }
            let Ok(parent) = platform::process_info(info.ppid) else {
                break;
            };
            // A parent younger than its child is a reused pid: the chain is broken.
            if platform::START_TIMES_ORDERED && parent.start_time > start_time {
                break;
            }
            chain.push((info.ppid, parent.start_time));
            info = parent;
        }
        let runtime = match found {
            Some(runtime) => runtime,
            None => {
                chain.truncate(1);
                self.runtime_by_marker(pid, chain[0].1)?
            }
        };
        let mut state = write(&self.state);
        state.runtimes.get(&runtime)?;
        let mut joined = Vec::new();
        // Everything between the member and the caller is in the runtime too.
        for &(member, start_time) in chain.iter().rev() {
            if !state.members.contains_key(&member) {
                state.join(member, start_time, runtime);
                joined.push((member, start_time));
            }
        }
        drop(state);
        for (member, start_time) in joined {
            self.watch(member, start_time);
        }
        Some(runtime)
    }

    /// The runtime whose name `pid` carries in its environment, if it may join it.
    fn runtime_by_marker(&self, pid: i32, start_time: u64) -> Option<RuntimeId> {
        let name = platform::runtime_marker(pid)?;
        let uid = platform::process_uid(pid).ok()?;
        let state = read(&self.state);
        state.runtimes.iter().find_map(|(id, route)| {
            (route.name == name
                && route.uid == uid
                && (!platform::START_TIMES_ORDERED || start_time >= route.root_start_time))
                .then_some(*id)
        })
    }

    fn watch(&self, pid: i32, start_time: u64) {
        if let Some(tx) = lock(&self.watcher).as_ref() {
            let _ = tx.send(Event::Watch { pid, start_time });
        }
    }

    /// A member exited. When it was its runtime's last known process, the
    /// processes carrying the runtime's name are looked for; if none is
    /// left, the runtime ends.
    fn member_exited(&self, pid: i32, start_time: u64) {
        let emptied = {
            let mut state = write(&self.state);
            match state.members.get(&pid) {
                Some(member) if member.start_time == start_time => {
                    let runtime = member.runtime;
                    state.leave(pid);
                    state
                        .runtimes
                        .get(&runtime)
                        .filter(|r| r.members == 0)
                        .map(|r| (runtime, r.name.clone(), r.uid, r.root_start_time))
                }
                _ => None,
            }
        };
        if let Some((runtime, name, uid, root_start)) = emptied {
            self.end_unless_claimed(runtime, &name, uid, root_start);
        }
    }

    /// Runtime `runtime` has no known process left: the processes carrying
    /// its name join it, or if there is none it ends.
    fn end_unless_claimed(&self, runtime: RuntimeId, name: &str, uid: u32, root_start: u64) {
        let me = std::process::id() as i32;
        let young = |start: u64| !platform::START_TIMES_ORDERED || start >= root_start;
        let scan = || {
            let found = platform::processes_with_marker(name, uid, root_start);
            let carriers: Vec<(i32, u64)> = found
                .carriers
                .into_iter()
                .filter(|(pid, start)| *pid != me && young(*start))
                .collect();
            let unsure = found.in_exec.into_iter().any(young);
            (carriers, unsure)
        };
        let (mut carriers, unsure) = scan();
        if carriers.is_empty() && unsure {
            // A process in the middle of `exec` shows an empty environment
            // for a moment (Linux fills it in after switching address
            // spaces): a daemon exec'ing `setsid` as its parent exits was
            // missed about one time in ten. Look once more before ending.
            std::thread::sleep(EXEC_GRACE);
            carriers = scan().0;
        }
        let mut joined = Vec::new();
        {
            let mut state = write(&self.state);
            if !state.runtimes.contains_key(&runtime) {
                return;
            }
            for (member, start) in carriers {
                if !state.members.contains_key(&member) {
                    state.join(member, start, runtime);
                    joined.push((member, start));
                }
            }
        }
        if joined.is_empty() {
            if self.remove_runtime(runtime) {
                if let Some(tx) = lock(&self.ended).as_ref() {
                    let _ = tx.send((runtime, EndReason::LastProcessExited));
                }
            }
        } else {
            for (member, start) in joined {
                self.watch(member, start);
            }
        }
    }

    /// Checks runtime `id`'s members now instead of waiting for their exit
    /// watches (which report a moment later): the exited ones leave, and if
    /// none is left the runtime ends. True when runtime `id` is gone.
    pub fn reap(&self, id: RuntimeId) -> bool {
        let members: Vec<(i32, u64)> = read(&self.state)
            .members
            .iter()
            .filter(|(_, m)| m.runtime == id)
            .map(|(pid, m)| (*pid, m.start_time))
            .collect();
        for (pid, start_time) in members {
            if platform::start_time(pid).ok() != Some(start_time) {
                self.member_exited(pid, start_time);
            }
        }
        // Emptied a moment ago, with its exit watch still looking for
        // processes carrying its name: look now too, not wait for it.
        let emptied = read(&self.state)
            .runtimes
            .get(&id)
            .filter(|r| r.members == 0)
            .map(|r| (r.name.clone(), r.uid, r.root_start_time));
        if let Some((name, uid, root_start)) = emptied {
            self.end_unless_claimed(id, &name, uid, root_start);
        }
        !read(&self.state).runtimes.contains_key(&id)
    }

    /// RuntimeTable live now.
    pub fn runtime_count(&self) -> usize {
        read(&self.state).runtimes.len()
    }

    /// Processes known to be in runtime `id`.
    pub fn member_count(&self, id: RuntimeId) -> usize {
        read(&self.state).runtimes.get(&id).map_or(0, |r| r.members)
    }

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

impl State {
    fn shown_of(&self, runtime: RuntimeId) -> Option<Shown> {
        self.runtimes.get(&runtime).map(|r| r.shown.clone())
    }

    /// Records `pid` as a member of `runtime`, leaving any runtime it was in.
    fn join(&mut self, pid: i32, start_time: u64, runtime: RuntimeId) {
        self.leave(pid);
        if let Some(route) = self.runtimes.get_mut(&runtime) {
            route.members += 1;
            self.members.insert(
                pid,
                Member {
                    start_time,
                    runtime,
                },
            );
        }
    }

    fn leave(&mut self, pid: i32) {
        if let Some(old) = self.members.remove(&pid) {
            if let Some(route) = self.runtimes.get_mut(&old.runtime) {
                route.members = route.members.saturating_sub(1);
            }
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::proxy::ProxyRepository;

    fn empty_view(router: &Router) -> Arc<View> {
        let empty = Arc::new(ProxyRepository::from_repositories(vec![]));
        Arc::new(
            View::build(
                router.next_view_id(),
                "-".into(),
                &[],
                empty,
                &crate::vfs::view::Budget::unlimited(),
            )
            .unwrap(),
        )
    }

    #[test]
    fn inode_numbers_carry_the_view() {
        let ino = encode(7, 42);
        assert_eq!(decode(ino), (7, 42));
        assert_ne!(encode(1, 0), INodeNo::ROOT);
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
