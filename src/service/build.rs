//! What a runtime shows: its env spec resolved in its repositories
//! (`tracking`), and built into a view (`vfs`), or the live view of the
//! same stack reused, within the limits one `Mount` may cost. Blocking:
//! it runs on the blocking pool, bounded by [`BuildLimits`].

use std::sync::Arc;

use super::error::RuntimeError;
use crate::storage::proxy::ProxyRepository;
use crate::tracking::env_spec::{self, EnvSpec, StackItem};
use crate::vfs::registry::StackKey;
use crate::vfs::view::{Budget, View};
use crate::vfs::Router;

/// What one `Mount` may cost, from the service's environment.
#[derive(Clone, Copy, Debug)]
pub struct BuildLimits {
    /// `SPFS_MOUNT_TIMEOUT` (seconds, or `500ms`); default 60 s.
    pub timeout: std::time::Duration,
    /// `SPFS_MOUNT_MAX_ENTRIES`; default 5,000,000.
    pub max_entries: usize,
}

impl Default for BuildLimits {
    fn default() -> Self {
        BuildLimits {
            timeout: std::time::Duration::from_secs(60),
            max_entries: 5_000_000,
        }
    }
}

impl BuildLimits {
    /// Reads the settings; a bad value is an error naming it.
    pub fn from_env() -> Result<BuildLimits, String> {
        let mut limits = BuildLimits::default();
        if let Some(text) = std::env::var("SPFS_MOUNT_TIMEOUT")
            .ok()
            .filter(|t| !t.trim().is_empty())
        {
            limits.timeout = crate::settings::parse_duration(&text)
                .map_err(|problem| format!("SPFS_MOUNT_TIMEOUT={text:?} is not a duration ({problem}); use seconds such as 60, or 500ms"))?;
        }
        if let Some(text) = std::env::var("SPFS_MOUNT_MAX_ENTRIES")
            .ok()
            .filter(|t| !t.trim().is_empty())
        {
            limits.max_entries = text.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                format!("SPFS_MOUNT_MAX_ENTRIES={text:?} is not a positive number of entries")
            })?;
        }
        Ok(limits)
    }

    /// The budget of one build starting now.
    pub fn budget(&self, cancelled: Arc<std::sync::atomic::AtomicBool>) -> Budget {
        Budget {
            deadline: std::time::Instant::now() + self.timeout,
            max_entries: self.max_entries,
            cancelled,
            deadline_setting: "SPFS_MOUNT_TIMEOUT",
            entries_setting: "SPFS_MOUNT_MAX_ENTRIES",
        }
    }
}

/// A view for a Mount, and whether it is shared with other runtimes.
pub struct Built {
    pub view: Arc<View>,
    /// An existing view of the same stack was reused.
    pub shared: bool,
    /// The layers shown, bottom to top: digests, or absolute directory paths
    /// (what `Runtime.stack` reports and a durable runtime saves).
    pub stack: Vec<String>,
}

/// Opens `repositories` (local first), resolves `spec` in them and builds
/// its view, or reuses the live view of the same stack. Blocking I/O: reads
/// platform and layer objects, and manifests only for a new view.
pub fn build_view(
    router: &Router,
    repositories: &[std::path::PathBuf],
    spec: &EnvSpec,
    budget: &Budget,
) -> Result<Built, RuntimeError> {
    let repos = Arc::new(ProxyRepository::open(repositories).map_err(RuntimeError::Repository)?);
    let stack = spec.resolve_stack(&repos)?;
    let names = stack.iter().map(StackItem::name).collect();
    let key = stack_key(repositories, &stack);
    if let Some(view) = key.as_ref().and_then(|key| router.shared_view(key)) {
        return Ok(Built {
            view,
            shared: true,
            stack: names,
        });
    }
    let layers = env_spec::load(stack, &repos)?;
    let view = View::build(router.next_view_id(), spec.clone(), &layers, repos, budget).map_err(
        |error| RuntimeError::Build {
            spec: spec.to_string(),
            error,
        },
    )?;
    let view = Arc::new(view);
    if let Some(key) = key {
        router.share(key, &view);
    }
    Ok(Built {
        view,
        shared: false,
        stack: names,
    })
}

/// The sharing key of a stack of committed layers; none with a directory layer.
fn stack_key(repositories: &[std::path::PathBuf], stack: &[StackItem]) -> Option<StackKey> {
    let manifests = stack
        .iter()
        .map(|item| match item {
            StackItem::Object { manifest, .. } => Some(*manifest),
            StackItem::Dir(_) => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some(StackKey {
        repositories: repositories.to_vec(),
        manifests,
    })
}
