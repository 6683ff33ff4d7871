//! Views kept alive for a while after their last runtime ended, so the next
//! runtime of the same stack reuses the view instead of building it again.
//!
//! Scripts and builds run `spfs run REF -- CMD` many times in a row, each
//! runtime ending before the next begins. Sharing alone (`Router::share`)
//! only helps runtimes that overlap; without this, a 100,000-entry stack
//! would be read and built again (tens of milliseconds) for every one of
//! them. A view lingers for [`Linger::time`] after it was last shown, within
//! a bound on views and on their entries, and is freed (logged as
//! `service.view_freed`) when that time is up, when newer views push it out,
//! or when the service stops. Only views of committed layers linger: the
//! router offers nothing else, since a directory layer may change on disk.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::view::View;

/// How long, and how much, views linger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Linger {
    /// `SPFS_VIEW_LINGER`; zero keeps nothing.
    pub time: Duration,
    /// At most this many views linger; the oldest goes first.
    pub max_views: usize,
    /// At most this many entries (nodes) in all of them together.
    pub max_nodes: usize,
}

impl Linger {
    /// Nothing lingers (the router's default, and unit tests').
    pub const OFF: Linger = Linger {
        time: Duration::ZERO,
        max_views: 0,
        max_nodes: 0,
    };

    /// The service's default: ten seconds, four views, 500,000 entries in
    /// all (a view holds about 440 bytes per entry: 220 MB at most, for
    /// ten seconds after the runs of the largest stacks).
    pub const DEFAULT: Linger = Linger {
        time: Duration::from_secs(10),
        max_views: 4,
        max_nodes: 500_000,
    };

    /// The default, with the time from `SPFS_VIEW_LINGER` when set; a bad
    /// value is an error naming it.
    pub fn from_env() -> Result<Linger, String> {
        Linger::from_setting(std::env::var("SPFS_VIEW_LINGER").ok())
    }

    fn from_setting(setting: Option<String>) -> Result<Linger, String> {
        let mut linger = Linger::DEFAULT;
        if let Some(text) = setting.filter(|t| !t.trim().is_empty()) {
            if matches!(text.trim(), "0" | "0s" | "0ms") {
                linger.time = Duration::ZERO;
                return Ok(linger);
            }
            linger.time = crate::settings::parse_duration(&text).map_err(|problem| {
                format!("SPFS_VIEW_LINGER={text:?} is not a duration ({problem}); use seconds such as 10, 500ms, or 0 to free views at once")
            })?;
        }
        Ok(linger)
    }

    /// How often expired views are looked for.
    pub fn tick(&self) -> Duration {
        (self.time / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

struct Kept {
    view: Arc<View>,
    until: Instant,
}

/// Views whose lingering time is up, freed when this is dropped.
pub struct Expired(Vec<Kept>);

impl Expired {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The lingering views, oldest first, and the settings they obey (one
/// lock: a view offered as the service stops is refused, not kept on).
pub struct Lingering {
    state: Mutex<(Linger, VecDeque<Kept>)>,
}

impl Default for Lingering {
    fn default() -> Self {
        Lingering {
            state: Mutex::new((Linger::OFF, VecDeque::new())),
        }
    }
}

impl Lingering {
    pub fn set(&self, linger: Linger) {
        lock(&self.state).0 = linger;
    }

    /// `view` was just let go of by a runtime: keep it for the linger time
    /// from now (again, if it was kept already).
    pub fn keep(&self, view: &Arc<View>) {
        let mut pushed_out = Vec::new();
        {
            let mut state = lock(&self.state);
            let (linger, kept) = &mut *state;
            if linger.time.is_zero() || linger.max_views == 0 || view.len() > linger.max_nodes {
                return;
            }
            if let Some(at) = kept.iter().position(|k| Arc::ptr_eq(&k.view, view)) {
                pushed_out.extend(kept.remove(at));
            }
            kept.push_back(Kept {
                view: Arc::clone(view),
                until: Instant::now() + linger.time,
            });
            let mut nodes: usize = kept.iter().map(|k| k.view.len()).sum();
            while kept.len() > linger.max_views || nodes > linger.max_nodes {
                let Some(oldest) = kept.pop_front() else {
                    break;
                };
                nodes -= oldest.view.len();
                pushed_out.push(oldest);
            }
        }
        // Freeing a view (its log line, giving memory back) happens outside the lock.
        drop(pushed_out);
    }

    /// Lets go of the views whose time is up at `now`.
    pub fn expire(&self, now: Instant) {
        drop(self.take_expired(now));
    }

    /// The views whose time is up at `now`, no longer kept; they are freed
    /// when the returned value is dropped (on a blocking thread: freeing a
    /// big view is work). Empty, and cheap, when nothing is due.
    pub fn take_expired(&self, now: Instant) -> Expired {
        let mut state = lock(&self.state);
        if !state.1.iter().any(|k| k.until <= now) {
            return Expired(Vec::new());
        }
        let (gone, stay): (Vec<Kept>, Vec<Kept>) = state.1.drain(..).partition(|k| k.until <= now);
        state.1.extend(stay);
        Expired(gone)
    }

    /// Keeps nothing from now on and lets go of every view (the service
    /// is stopping).
    pub fn stop(&self) {
        let all: Vec<Kept> = {
            let mut state = lock(&self.state);
            state.0 = Linger::OFF;
            state.1.drain(..).collect()
        };
        drop(all);
    }

    /// How many views linger now.
    pub fn len(&self) -> usize {
        lock(&self.state).1.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A poisoned lock still holds a consistent list: every change is one call.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::proxy::ProxyRepository;

    fn view(id: u64) -> Arc<View> {
        let empty = Arc::new(ProxyRepository::from_repositories(vec![]));
        let budget = crate::vfs::view::Budget::unlimited();
        Arc::new(
            View::build(
                id,
                crate::tracking::env_spec::EnvSpec::empty(),
                &[],
                empty,
                &budget,
            )
            .unwrap(),
        )
    }

    fn on(time: Duration, max_views: usize) -> Lingering {
        let lingering = Lingering::default();
        lingering.set(Linger {
            time,
            max_views,
            max_nodes: 10,
        });
        lingering
    }

    #[test]
    fn a_view_is_held_until_its_time_is_up() {
        let lingering = on(Duration::from_secs(60), 4);
        let first = view(1);
        let weak = Arc::downgrade(&first);
        lingering.keep(&first);
        drop(first);
        lingering.expire(Instant::now());
        assert!(weak.upgrade().is_some(), "still lingering");
        lingering.expire(Instant::now() + Duration::from_secs(61));
        assert!(weak.upgrade().is_none(), "freed when its time was up");
        assert!(lingering.is_empty());
    }

    #[test]
    fn the_oldest_goes_first_and_a_view_kept_again_is_kept_once() {
        let lingering = on(Duration::from_secs(60), 2);
        let views: Vec<Arc<View>> = (1..=3).map(view).collect();
        let weak: Vec<_> = views.iter().map(Arc::downgrade).collect();
        lingering.keep(&views[0]);
        lingering.keep(&views[1]);
        lingering.keep(&views[0]);
        assert_eq!(lingering.len(), 2, "kept once, its time renewed");
        lingering.keep(&views[2]);
        drop(views);
        assert!(weak[1].upgrade().is_none(), "the oldest was pushed out");
        assert!(weak[0].upgrade().is_some() && weak[2].upgrade().is_some());
        lingering.stop();
        assert!(weak.iter().all(|w| w.upgrade().is_none()));
        let late = view(4);
        lingering.keep(&late);
        assert!(lingering.is_empty(), "nothing is kept once stopped");
    }

    #[test]
    fn off_keeps_nothing_and_a_bad_setting_is_named() {
        let lingering = Lingering::default();
        let only = view(1);
        lingering.keep(&only);
        assert!(lingering.is_empty());
        let err = Linger::from_setting(Some("soon".into())).unwrap_err();
        assert!(err.contains("SPFS_VIEW_LINGER=\"soon\""), "{err}");
        let short = Linger::from_setting(Some("250ms".into())).unwrap();
        assert_eq!(short.time, Duration::from_millis(250));
        assert_eq!(Linger::from_setting(None).unwrap(), Linger::DEFAULT);
        let off = Linger::from_setting(Some("0".into())).unwrap();
        assert!(off.time.is_zero());
    }
}
