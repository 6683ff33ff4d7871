//! [`FsRepository`]: an spfs repository on a local filesystem, laid out as
//! spfs 0.44 lays it out:
//!
//! ```text
//! <root>/VERSION            format version (0.44.0); another major is refused
//! <root>/objects/XX/REST    encoded objects, named by digest (base32, padded)
//! <root>/payloads/XX/REST   file contents
//! <root>/{objects,payloads}/work/   temp files: written, fsynced, renamed
//! <root>/tags/<org>/<name>.tag      tag streams (see [`super::tag`])
//! ```
//!
//! Folders are created 0777 and files 0666, both before the umask, so a
//! repository can be shared. Objects and payloads live in `objects.rs`, tags
//! in `tags.rs`, batched durable writes in [`BatchWriter`].

mod batch;
mod objects;
mod tags;

pub use batch::BatchWriter;

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::StorageError;
use crate::encoding::Digest;

/// The format version this code reads and writes (what spfs 0.44 writes).
pub const REPOSITORY_VERSION: &str = "0.44.0";
const SUPPORTED_MAJOR: u64 = 0;

/// A repository in a folder.
#[derive(Clone, Debug)]
pub struct FsRepository {
    root: PathBuf,
}

impl FsRepository {
    /// Open an existing repository. A `VERSION` of another major version is
    /// refused; a missing or empty `VERSION` counts as the current version
    /// (as spfs does: empty or very old repositories have none).
    pub fn open(root: &Path) -> Result<FsRepository, StorageError> {
        let meta = std::fs::metadata(root).map_err(|e| StorageError::NotARepository {
            path: root.to_path_buf(),
            reason: format!("cannot read it ({e})"),
        })?;
        if !meta.is_dir() {
            return Err(StorageError::NotARepository {
                path: root.to_path_buf(),
                reason: "it is not a folder".into(),
            });
        }
        check_version(root)?;
        Ok(FsRepository {
            root: root.to_path_buf(),
        })
    }

    /// Create a repository (parents included) or open the one there, and
    /// make sure it has `VERSION`, `objects/`, `payloads/` and `tags/`.
    pub fn create(root: &Path) -> Result<FsRepository, StorageError> {
        make_dirs(root)?;
        for sub in ["objects", "payloads", "tags"] {
            make_dirs(&root.join(sub))?;
        }
        let version = root.join("VERSION");
        match std::fs::read_to_string(&version) {
            Ok(text) if !text.trim().is_empty() => {}
            Ok(_) => write_version(root)?,
            Err(e) if e.kind() == ErrorKind::NotFound => write_version(root)?,
            Err(e) => return Err(StorageError::io("read", version, e)),
        }
        FsRepository::open(root)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn objects_dir(&self) -> PathBuf {
        self.root.join("objects")
    }

    fn payloads_dir(&self) -> PathBuf {
        self.root.join("payloads")
    }

    fn tags_dir(&self) -> PathBuf {
        self.root.join("tags")
    }

    /// Where the object with this digest is (or would be) stored.
    pub fn object_path(&self, digest: &Digest) -> PathBuf {
        digest_path(&self.objects_dir(), digest)
    }

    /// Where the payload with this digest is (or would be) stored.
    pub fn payload_path(&self, digest: &Digest) -> PathBuf {
        digest_path(&self.payloads_dir(), digest)
    }
}

fn check_version(root: &Path) -> Result<(), StorageError> {
    let path = root.join("VERSION");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StorageError::io("read", path, e)),
    };
    let text = text.trim();
    if text.is_empty() {
        return Ok(());
    }
    let major = text
        .split('.')
        .next()
        .and_then(|m| m.parse::<u64>().ok())
        .filter(|_| text.split('.').count() >= 3)
        .ok_or_else(|| {
            StorageError::corrupt(&path, format!("{text:?} is not a version like 0.44.0"))
        })?;
    if major != SUPPORTED_MAJOR {
        return Err(StorageError::IncompatibleVersion {
            path: root.to_path_buf(),
            found: text.to_string(),
            supported: REPOSITORY_VERSION.to_string(),
        });
    }
    Ok(())
}

fn write_version(root: &Path) -> Result<(), StorageError> {
    let target = root.join("VERSION");
    let temp = temp_name(root, "VERSION");
    write_new_file(&temp, REPOSITORY_VERSION.as_bytes())?;
    std::fs::rename(&temp, &target).map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        StorageError::io("rename into place", target, e)
    })
}

/// `<base>/XX/REST` for a digest's padded base32 text.
pub(crate) fn digest_path(base: &Path, digest: &Digest) -> PathBuf {
    let text = digest.to_base32();
    base.join(&text[..2]).join(&text[2..])
}

/// `mkdir -p` with mode 0777 (before the umask).
pub(crate) fn make_dirs(path: &Path) -> Result<(), StorageError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o777)
        .create(path)
        .map_err(|e| StorageError::io("create folder", path, e))
}

/// How old a temp file in a `work` folder must be before it counts as
/// left behind by a writer that died (a live one touches its file at
/// every 256 KiB it writes).
pub const STALE_WORK: std::time::Duration = std::time::Duration::from_secs(3600);

impl FsRepository {
    /// Deletes the temp files writers that died (killed, machine crash)
    /// left in the `work` folders, older than `age`; how many went. Run
    /// before each commit, so none stays forever.
    pub fn clear_stale_work(&self, age: std::time::Duration) -> usize {
        let mut removed = 0;
        for work in [
            self.objects_dir().join("work"),
            self.payloads_dir().join("work"),
        ] {
            let Ok(entries) = std::fs::read_dir(&work) else {
                continue;
            };
            for entry in entries.flatten() {
                let stale = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|elapsed| elapsed >= age);
                let temp = entry.file_name().to_string_lossy().ends_with(".tmp");
                if stale && temp && std::fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh temp file name in `dir`, unique within this host.
pub(crate) fn temp_name(dir: &Path, stem: &str) -> PathBuf {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    dir.join(format!(".{stem}.{}-{nanos}-{n}.tmp", std::process::id()))
}

/// Create `path` (must not exist) with mode 0666 before the umask.
pub(crate) fn create_new(path: &Path) -> Result<File, StorageError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o666)
        .open(path)
        .map_err(|e| StorageError::io("create", path, e))
}

/// Write `bytes` into a new file and fsync it.
pub(crate) fn write_new_file(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let mut file = create_new(path)?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(|e| {
            let _ = std::fs::remove_file(path);
            StorageError::io("write", path, e)
        })
}

/// Write `bytes` to `target` atomically: a temp file in `work_dir`, fsync,
/// rename. Parents of `target` are created.
pub(crate) fn write_atomic(
    work_dir: &Path,
    target: &Path,
    bytes: &[u8],
) -> Result<(), StorageError> {
    let temp = temp_name(work_dir, "write");
    match write_new_file(&temp, bytes) {
        Err(StorageError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
            make_dirs(work_dir)?;
            write_new_file(&temp, bytes)?;
        }
        other => other?,
    }
    batch::rename_into_place(&temp, target)
}

#[cfg(test)]
mod tests;
