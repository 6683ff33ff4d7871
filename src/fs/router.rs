//! Routing: which view a request sees.
//!
//! Lookups in the mount root are routed by the caller: its thread id is mapped
//! to its process, and the process's ancestry is walked to the nearest root
//! pid with a route. Start times must not increase along the walk and must
//! match the root's recorded one, so a reused pid never inherits a view.
//! Everything below the root is routed by inode number: the view id sits in
//! the high 32 bits and the node index in the low 32 bits. View ids are never
//! reused, so an inode number names one file of one view for the life of the
//! service, and the kernel's shared caches cannot leak one view into another.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};

use fuser::INodeNo;

use super::view::View;
use crate::platform;

/// The walk stops after this many ancestors (deeper trees do not exist in practice).
const MAX_ANCESTRY: usize = 1024;

#[derive(Default)]
pub struct Router {
    next_view: AtomicU64,
    routes: RwLock<HashMap<i32, Route>>,
    /// Every view still alive: held by a route or by open handles.
    views: RwLock<HashMap<u64, Weak<View>>>,
}

struct Route {
    start_time: u64,
    view: Arc<View>,
}

pub fn encode(view: u64, node: u32) -> INodeNo {
    INodeNo((view << 32) | u64::from(node))
}

pub fn decode(ino: INodeNo) -> (u64, u32) {
    (ino.0 >> 32, ino.0 as u32)
}

impl Router {
    /// A fresh view id; never 0, never reused.
    pub fn next_view_id(&self) -> u64 {
        self.next_view.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Shows `view` to `pid` (whose start time is `start_time`) and its descendants.
    pub fn add(&self, pid: i32, start_time: u64, view: Arc<View>) {
        write(&self.views).insert(view.id, Arc::downgrade(&view));
        write(&self.routes).insert(pid, Route { start_time, view });
    }

    /// Drops the route of `pid`; its view lives on while handles hold it.
    pub fn remove(&self, pid: i32) {
        let removed = write(&self.routes).remove(&pid);
        drop(removed);
        write(&self.views).retain(|_, view| view.strong_count() > 0);
    }

    pub fn view(&self, id: u64) -> Option<Arc<View>> {
        read(&self.views).get(&id)?.upgrade()
    }

    /// The view for the process that sent a request (by its thread id).
    pub fn view_for_caller(&self, tid: u32) -> Option<Arc<View>> {
        let routes = read(&self.routes);
        if routes.is_empty() {
            return None;
        }
        // FUSE gives the calling thread's id; for a main thread it is the pid.
        let mut pid = tid as i32;
        let mut info = platform::process_info(pid).ok()?;
        if info.is_thread {
            pid = platform::process_of_thread(pid).ok()?;
            info = platform::process_info(pid).ok()?;
        }
        for _ in 0..MAX_ANCESTRY {
            if let Some(route) = routes.get(&pid) {
                // Same pid, different process: the root exited and its pid was reused.
                return (route.start_time == info.start_time).then(|| Arc::clone(&route.view));
            }
            if info.ppid <= 0 || info.ppid == pid {
                return None;
            }
            let parent = platform::process_info(info.ppid).ok()?;
            // A parent younger than its child is a reused pid: the chain is
            // broken. Only where start times are clock-independent (not macOS).
            if platform::START_TIMES_ORDERED && parent.start_time > info.start_time {
                return None;
            }
            pid = info.ppid;
            info = parent;
        }
        None
    }

    pub fn route_count(&self) -> usize {
        read(&self.routes).len()
    }

    pub fn live_views(&self) -> usize {
        read(&self.views)
            .values()
            .filter(|v| v.strong_count() > 0)
            .count()
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let empty = Arc::new(crate::storage::proxy::ProxyRepository::from_repositories(
            vec![],
        ));
        let view = Arc::new(View::build(router.next_view_id(), "-".into(), &[], empty).unwrap());
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        // Route the child's pid: we (its parent) must not see it.
        let start = platform::start_time(child.id() as i32).unwrap();
        router.add(child.id() as i32, start, Arc::clone(&view));
        assert!(router.view_for_caller(child.id()).is_some());
        assert!(router.view_for_caller(me as u32).is_none());
        // A recorded start time that does not match means a reused pid.
        router.add(child.id() as i32, start + 1, Arc::clone(&view));
        assert!(router.view_for_caller(child.id()).is_none());
        router.remove(child.id() as i32);
        assert_eq!(router.route_count(), 0);
        assert_eq!(router.live_views(), 1, "our Arc still holds it");
        drop(view);
        assert_eq!(router.live_views(), 0);
        let _ = child.kill();
        let _ = child.wait();
    }
}
