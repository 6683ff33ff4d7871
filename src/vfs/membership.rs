//! Membership: which processes belong to which runtime, and what each
//! runtime shows.
//!
//! It works the way a mount namespace does: a process that is in a
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
//! Every member's exit is watched (pidfd on Linux, kqueue on macOS; the
//! router runs the watches), so a member's pid is never reused while it is
//! in the table: a request from a member costs one hash lookup, no `/proc`
//! or `sysctl` read. When the last known member exits, processes carrying
//! the runtime's name are looked for once more ([`Membership::claim`])
//! before the runtime ends.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use tokio::sync::mpsc;

use super::shown::Shown;
use crate::platform;
use crate::sync::{lock, read, write};

/// The walk stops after this many ancestors: far deeper than real process
/// trees (a chain longer than this is treated as not reaching a runtime).
const MAX_ANCESTRY: usize = 65_536;

/// How long a runtime whose last known process exited waits before the
/// second look for processes carrying its name.
const EXEC_GRACE: std::time::Duration = std::time::Duration::from_millis(20);

/// Identifies one runtime for the service's life (never reused).
pub type RuntimeId = u64;

/// A process to watch until it exits: its pid and start time.
#[derive(Clone, Copy, Debug)]
pub struct Watch {
    pub pid: i32,
    pub start_time: u64,
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

/// What [`Membership::claim`] found for a runtime with no known process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Processes carrying its name joined it: it goes on.
    Claimed,
    /// Nothing carries its name: it is over.
    Unclaimed,
    /// It was removed meanwhile.
    Gone,
}

#[derive(Default)]
pub struct Membership {
    state: RwLock<State>,
    /// Where processes to watch go; absent in unit tests (then members
    /// stay until their runtime is removed).
    watcher: Mutex<Option<mpsc::UnboundedSender<Watch>>>,
}

#[derive(Default)]
struct State {
    runtimes: HashMap<RuntimeId, RuntimeRoute>,
    members: HashMap<i32, Member>,
}

impl Membership {
    /// Every member from now on is sent to `watcher` to be watched.
    pub fn set_watcher(&self, watcher: mpsc::UnboundedSender<Watch>) {
        *lock(&self.watcher) = Some(watcher);
    }

    /// Adds runtime `id`, with process `root` (started at the route's root
    /// start time) as its first member. A root that was a member of another
    /// runtime moves: the runtime named last is the nearest.
    pub fn add(&self, id: RuntimeId, root: i32, route: RuntimeRoute) {
        let start_time = route.root_start_time;
        let mut state = write(&self.state);
        state.runtimes.insert(id, route);
        state.join(root, start_time, id);
        drop(state);
        self.watch(root, start_time);
    }

    /// Takes runtime `id` out: its members see nothing from here on.
    pub fn remove(&self, id: RuntimeId) -> Option<RuntimeRoute> {
        let mut state = write(&self.state);
        state.members.retain(|_, m| m.runtime != id);
        state.runtimes.remove(&id)
    }

    /// Runtime `id` shows `shown` from now on; what it showed before, or
    /// `None` when the runtime is gone.
    pub fn set_shown(&self, id: RuntimeId, shown: Shown) -> Option<Shown> {
        let mut state = write(&self.state);
        let route = state.runtimes.get_mut(&id)?;
        Some(std::mem::replace(&mut route.shown, shown))
    }

    /// What runtime `id` shows now.
    pub fn shown_by(&self, id: RuntimeId) -> Option<Shown> {
        read(&self.state).shown_of(id)
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
        if let Some(member) = read(&self.state).members.get(&pid) {
            return Some(member.runtime);
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
            if let Some(member) = read(&self.state).members.get(&pid) {
                return Some(member.runtime);
            }
        }
        let (mut chain, found) = self.walk_up(pid, info);
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

    /// The way from `pid` up to its nearest ancestor that is a member
    /// (each step's pid and start time, `pid` first), and that member's
    /// runtime when there is one.
    fn walk_up(
        &self,
        pid: i32,
        mut info: platform::ProcInfo,
    ) -> (Vec<(i32, u64)>, Option<RuntimeId>) {
        let mut chain = vec![(pid, info.start_time)];
        for _ in 0..MAX_ANCESTRY {
            let (current, start_time) = *chain.last().expect("non-empty");
            if let Some(member) = read(&self.state).members.get(&current) {
                // Same pid, different process: the member exited a moment ago.
                let found = (member.start_time == start_time).then_some(member.runtime);
                return (chain, found);
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
        (chain, None)
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
            let _ = tx.send(Watch { pid, start_time });
        }
    }

    /// A member exited: it leaves its runtime. The runtime, when that was
    /// its last known process (see [`Membership::claim`]).
    pub fn member_exited(&self, pid: i32, start_time: u64) -> Option<RuntimeId> {
        let mut state = write(&self.state);
        let member = *state.members.get(&pid)?;
        if member.start_time != start_time {
            return None;
        }
        state.leave(pid);
        state
            .runtimes
            .get(&member.runtime)
            .filter(|r| r.members == 0)
            .map(|_| member.runtime)
    }

    /// Runtime `runtime` has no known process left: the processes carrying
    /// its name join it. Blocking: scans the user's processes, and waits
    /// `EXEC_GRACE` for one caught in the middle of `exec`.
    pub fn claim(&self, runtime: RuntimeId) -> Claim {
        let Some((name, uid, root_start)) = read(&self.state)
            .runtimes
            .get(&runtime)
            .map(|r| (r.name.clone(), r.uid, r.root_start_time))
        else {
            return Claim::Gone;
        };
        let me = std::process::id() as i32;
        let young = |start: u64| !platform::START_TIMES_ORDERED || start >= root_start;
        let scan = || {
            let found = platform::processes_with_marker(&name, uid, root_start);
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
                return Claim::Gone;
            }
            for (member, start) in carriers {
                if !state.members.contains_key(&member) {
                    state.join(member, start, runtime);
                    joined.push((member, start));
                }
            }
        }
        if joined.is_empty() {
            return Claim::Unclaimed;
        }
        for (member, start) in joined {
            self.watch(member, start);
        }
        Claim::Claimed
    }

    /// The members of runtime `id`: pid and start time.
    pub fn members_of(&self, id: RuntimeId) -> Vec<(i32, u64)> {
        read(&self.state)
            .members
            .iter()
            .filter(|(_, m)| m.runtime == id)
            .map(|(pid, m)| (*pid, m.start_time))
            .collect()
    }

    /// Whether runtime `id` is there with no known process.
    pub fn is_emptied(&self, id: RuntimeId) -> bool {
        read(&self.state)
            .runtimes
            .get(&id)
            .is_some_and(|r| r.members == 0)
    }

    pub fn contains(&self, id: RuntimeId) -> bool {
        read(&self.state).runtimes.contains_key(&id)
    }

    /// Runtimes live now.
    pub fn runtime_count(&self) -> usize {
        read(&self.state).runtimes.len()
    }

    /// Processes known to be in runtime `id`.
    pub fn member_count(&self, id: RuntimeId) -> usize {
        read(&self.state).runtimes.get(&id).map_or(0, |r| r.members)
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
