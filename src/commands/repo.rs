//! What the repository commands share: opening the repositories the user's
//! spfs configuration names, resolving refs, and a progress line on a
//! terminal. The runner and `Out` now live in `commands::runner`, shared by
//! every command; they are re-exported here for the repository commands.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use crate::encoding::Digest;
use crate::error::{Error, Result};
use crate::graph::Object;
use crate::storage::fs::FsRepository;
use crate::storage::proxy::ProxyRepository;
use crate::storage::tag::TagSpec;
use crate::tracking::env_spec::{self, EnvSpec};

pub use super::runner::{run, Out};

/// The repository a write goes to: `--remote NAME`, else the local one
/// (created if it does not exist yet, as spfs does).
pub fn writable(remote: Option<&str>) -> Result<FsRepository> {
    let config = crate::paths::load_spfs_config()?;
    match remote {
        Some(name) => Ok(FsRepository::open(config.remote_root(name)?)?),
        None => Ok(FsRepository::create(&config.local_root)?),
    }
}

/// The repositories a read looks in: `--remote NAME` alone, else the local
/// one and then the secondary repositories, as a runtime reads them.
pub fn readable(remote: Option<&str>) -> Result<ProxyRepository> {
    let config = crate::paths::load_spfs_config()?;
    match remote {
        Some(name) => Ok(ProxyRepository::from_repositories(vec![
            FsRepository::open(config.remote_root(name)?)?,
        ])),
        None => Ok(ProxyRepository::open(&config.runtime_repositories()?)?),
    }
}

/// One ref item (a digest, partial digest or tag; no `+`) as an object digest.
pub fn resolve_digest(repos: &ProxyRepository, reference: &str) -> Result<Digest> {
    let spec = EnvSpec::parse(reference)?;
    let [(part, item)] = spec.items() else {
        return Err(Error::Usage(format!(
            "{:?} is not a single reference; give one tag or digest (no '+')",
            spec.to_string()
        )));
    };
    Ok(env_spec::item_digest(part, item, repos)?)
}

/// Parses a tag given on the command line.
pub fn tag_spec(text: &str) -> Result<TagSpec> {
    Ok(TagSpec::parse(text)?)
}

/// `layer`, `platform`, `manifest` or `blob`.
pub fn kind_name(object: &Object) -> &'static str {
    object.kind().name()
}

/// A line of progress on stderr while long work runs, only on a terminal,
/// redrawn at most ten times a second and erased at the end.
pub struct Progress {
    enabled: bool,
    last: Option<Instant>,
    drawn: bool,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            enabled: std::io::stderr().is_terminal(),
            last: None,
            drawn: false,
        }
    }

    pub fn update(&mut self, text: impl FnOnce() -> String) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(now);
        self.drawn = true;
        eprint!("\r\x1b[2K{}", text());
    }

    pub fn clear(&mut self) {
        if self.drawn {
            eprint!("\r\x1b[2K");
            self.drawn = false;
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}

/// `1.5 Ki`, as spfs prints sizes.
pub fn format_size(bytes: u64) -> String {
    let units = ["B", "Ki", "Mi", "Gi", "Ti", "Pi"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1024.0 && unit < units.len() - 1 {
        size /= 1024.0;
        unit += 1;
    }
    format!("{size:3.1} {}", units[unit])
}
