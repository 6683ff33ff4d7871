//! Directories that must be ours alone, the runtime dir (socket, locks)
//! and the log dir: made with mode 0700 when missing, and refused when
//! they are a symlink, not a directory, another user's, or writable by
//! group or others. Every error says what is wrong and what to do.

use std::fs::DirBuilder;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

/// Why a directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// It exists but is not safe: what is wrong, and the fix.
    #[error("{problem}")]
    Unsafe { problem: String, fix: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// Creates `dir` (and its parents, mode 0700) if needed, then [`check`]s it.
pub fn ensure(dir: &Path, what: &str, setting: (&str, &str)) -> Result<(), DirError> {
    if let Err(source) = DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        return Err(DirError::Io {
            context: format!("cannot create {what} {}", dir.display()),
            source,
        });
    }
    check(dir, what, setting)
}

/// A directory that is ours alone: not a symlink, a directory, owned by us,
/// not writable by group or others. `setting` is the variable that moves it
/// and a safe value to suggest.
pub fn check(dir: &Path, what: &str, (variable, fallback): (&str, &str)) -> Result<(), DirError> {
    let unsafe_dir = |problem: String, fix: String| DirError::Unsafe { problem, fix };
    let meta = std::fs::symlink_metadata(dir).map_err(|source| DirError::Io {
        context: format!("cannot inspect {what} {}", dir.display()),
        source,
    })?;
    if meta.file_type().is_symlink() {
        return Err(unsafe_dir(
            "it is a symlink".into(),
            format!(
                "remove the symlink {} or set {variable} to a real directory you own",
                dir.display()
            ),
        ));
    }
    if !meta.is_dir() {
        return Err(unsafe_dir(
            "it is not a directory".into(),
            format!("remove {} or set {variable} elsewhere", dir.display()),
        ));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(unsafe_dir(
            format!(
                "it is owned by uid {}, not by you (uid {me}): another user created it first",
                meta.uid()
            ),
            format!(
                "have that user or an admin remove it (`sudo rm -r {}`); until then, `export {variable}={fallback}` (any directory of your own)",
                dir.display(),
            ),
        ));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(unsafe_dir(
            format!("its mode is {mode:o}, writable by group or others"),
            format!("chmod 700 {}", dir.display()),
        ));
    }
    Ok(())
}
