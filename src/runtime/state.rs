//! `runtime.json`: what a runtime is, saved next to its changes so a
//! durable runtime (or one whose service died) can be listed and re-entered.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The state file's name in a runtime's directory.
pub const STATE_FILE: &str = "runtime.json";

/// Longest state file read; a real one is a few hundred bytes.
const MAX_STATE_BYTES: u64 = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeState {
    /// The runtime's name (`SPFS_RUNTIME`), also its directory's name.
    pub name: String,
    /// The env spec as the user gave it, for display.
    pub env_spec: String,
    /// The layers shown, bottom to top: digests, or absolute directory paths.
    pub stack: Vec<String>,
    /// The repositories the layers are read from, local first.
    pub repositories: Vec<PathBuf>,
    /// Writes are accepted.
    pub editable: bool,
    /// Kept after its processes exit (`--keep-runtime`).
    pub durable: bool,
    /// When it was made, seconds since the Unix epoch.
    pub created_unix: i64,
    /// What it runs (spfs's `status.command`): the command and its
    /// arguments, or `[""]` for an interactive shell.
    #[serde(default)]
    pub command: Vec<String>,
}

impl RuntimeState {
    /// The stack as an env spec that names exactly these layers.
    pub fn stack_spec(&self) -> String {
        if self.stack.is_empty() {
            "-".into()
        } else {
            self.stack.join("+")
        }
    }

    /// Reads `dir/runtime.json`; a missing, oversized or malformed file is
    /// an error that names it.
    pub fn read(dir: &Path) -> Result<RuntimeState, String> {
        let path = dir.join(STATE_FILE);
        let file = std::fs::File::open(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_STATE_BYTES), &mut text)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        serde_json::from_slice(&text).map_err(|e| {
            format!(
                "{} is not a runtime's state ({e}); remove that runtime with `spfs runtime remove`",
                path.display()
            )
        })
    }

    /// Writes `dir/runtime.json` whole or not at all (a temporary file
    /// renamed over it), so a crash of the service never leaves half a
    /// state. With `sync` the file is on disk before it is renamed, so it
    /// also outlives a crash of the machine: for a runtime that is kept
    /// (durable, or stopped with its changes). A runtime that ends with its
    /// processes skips that wait (an fsync, 0.5 ms of every `Mount` of an
    /// editable runtime on this project's VM): its changes, unsynced as any
    /// file a process writes, are deleted at its end anyway.
    pub fn write(&self, dir: &Path, sync: bool) -> std::io::Result<()> {
        // Unique per write: two threads of the service may save one state
        // at once (a runtime ending while it is re-entered).
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(STATE_FILE);
        let temp = dir.join(format!(".{STATE_FILE}.{}.{n}", std::process::id()));
        let mut file = std::fs::File::create(&temp)?;
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        file.write_all(&text)?;
        if sync {
            file.sync_all()?;
        }
        drop(file);
        std::fs::rename(&temp, &path)
    }
}

/// A runtime's directory must be ours alone, as the service made it (not
/// a symlink, owned by us, writable by nobody else): another's could hold
/// anything they put there.
pub fn check_own(root: &Path) -> std::io::Result<()> {
    let setting = crate::paths::SCRATCH_DIR_SETTING;
    crate::private_dir::check(root, "runtime directory", setting).map_err(|err| match err {
        crate::private_dir::DirError::Unsafe { problem, fix } => std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "the runtime directory {} is not ours alone ({problem}); {fix}",
                root.display()
            ),
        ),
        crate::private_dir::DirError::Io { source, .. } => source,
    })
}

/// The runtimes whose directories are in `scratch_dir`, by name: durable
/// ones whose processes exited, and those a service that died or stopped
/// left behind; never one a live service holds (`runtime::in_use`). A directory without a readable state is skipped and
/// logged (`spfs runtime remove NAME` deletes it).
pub fn on_disk(scratch_dir: &Path) -> std::collections::BTreeMap<String, RuntimeState> {
    let mut found = std::collections::BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(scratch_dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        // A live runtime of another service: not stopped.
        if super::in_use::is_held(&entry.path()) {
            continue;
        }
        if let Err(error) = check_own(&entry.path()) {
            tracing::warn!(
                event = "service.scratch_failed",
                runtime = name.as_str(),
                error = %error,
                "a runtime directory that is not ours alone was skipped"
            );
            continue;
        }
        match RuntimeState::read(&entry.path()) {
            Ok(state) if state.name == name => {
                found.insert(name, state);
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(
                event = "service.scratch_failed",
                runtime = name.as_str(),
                error = error.as_str(),
                "a runtime directory without a readable state was skipped"
            ),
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_a_corrupt_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let state = RuntimeState {
            name: "build-1".into(),
            env_spec: "base".into(),
            stack: vec!["A".repeat(52)],
            repositories: vec!["/repo".into()],
            editable: true,
            durable: false,
            created_unix: 1,
            command: vec!["make".into(), "a b".into()],
        };
        state.write(dir.path(), true).unwrap();
        assert_eq!(RuntimeState::read(dir.path()).unwrap(), state);
        std::fs::write(dir.path().join(STATE_FILE), b"{not json").unwrap();
        let err = RuntimeState::read(dir.path()).unwrap_err();
        assert!(err.contains("is not a runtime's state"), "{err}");
    }
}
