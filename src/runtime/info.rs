//! A runtime as the tools show it ([`RuntimeInfo`]): what it is (its
//! state), whether processes run in it, since when, and where its changes
//! are. The service reports running and stopped runtimes so; without a
//! service, the stopped ones are read from the scratch dir the same way.

use std::path::{Path, PathBuf};

use super::state::RuntimeState;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeInfo {
    pub state: RuntimeState,
    /// Its root process, while it runs.
    pub root_pid: Option<i32>,
    /// Seconds since the epoch: when it started (running) or was made (stopped).
    pub since_unix: i64,
    /// Its changes' directory, once it was ever editable.
    pub scratch_dir: Option<PathBuf>,
}

impl RuntimeInfo {
    /// A runtime with no process, whose changes are in `scratch_dir`.
    pub fn stopped(state: RuntimeState, scratch_dir: &Path) -> RuntimeInfo {
        RuntimeInfo {
            root_pid: None,
            since_unix: state.created_unix,
            scratch_dir: Some(scratch_dir.join(&state.name)),
            state,
        }
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    pub fn is_running(&self) -> bool {
        self.root_pid.is_some()
    }
}
