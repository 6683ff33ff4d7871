//! [`BatchWriter`]: many small payloads and objects made durable together.
//!
//! A commit writes two files per input file (payload and Blob object); an
//! fsync for each makes it fsync-bound. The batch writer writes each to a
//! temp file in the work folder without syncing, and on [`flush`]
//! (automatic every [`BATCH`] files) makes them all durable at once with one
//! `syncfs(2)` per filesystem, then renames them into place, payloads before
//! the objects that name them. A crash leaves either the old state or whole
//! files, never a torn one, as with fsync-then-rename. Where `syncfs` is
//! missing (macOS) each file is fsynced as it is written.
//!
//! [`flush`]: BatchWriter::flush

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use super::{create_new, make_dirs, temp_name, FsRepository};
use crate::encoding::Digest;
use crate::graph::{Blob, DigestStrategy, EncodingFormat, Object};
use crate::storage::error::StorageError;

/// Files staged before a flush.
pub const BATCH: usize = 512;

/// Stages writes to one repository; flush before relying on them. Temp
/// files not flushed are removed on drop.
pub struct BatchWriter<'r> {
    repo: &'r FsRepository,
    /// (temp, target) in the order they must land.
    pending: Vec<(PathBuf, PathBuf)>,
}

impl<'r> BatchWriter<'r> {
    pub fn new(repo: &'r FsRepository) -> BatchWriter<'r> {
        BatchWriter {
            repo,
            pending: Vec::new(),
        }
    }

    /// Like [`FsRepository::write_blob_bytes`], durable at the next flush.
    pub fn write_blob_bytes(&mut self, bytes: &[u8]) -> Result<Digest, StorageError> {
        let payload = Digest::of(bytes);
        let target = self.repo.payload_path(&payload);
        if !target.is_file() {
            self.stage(&self.repo.payloads_dir().join("work"), target, bytes)?;
        }
        self.write_object(&Object::Blob(Blob {
            payload,
            size: bytes.len() as u64,
        }))?;
        Ok(payload)
    }

    /// Like [`FsRepository::write_object`], durable at the next flush.
    pub fn write_object(&mut self, object: &Object) -> Result<Digest, StorageError> {
        let strategy = DigestStrategy::WithKindAndSalt;
        let digest = object.digest(strategy);
        let target = self.repo.object_path(&digest);
        if !target.is_file() {
            let bytes = object.encode(EncodingFormat::FlatBuffers, strategy);
            self.stage(&self.repo.objects_dir().join("work"), target, &bytes)?;
        }
        Ok(digest)
    }

    fn stage(&mut self, work: &Path, target: PathBuf, bytes: &[u8]) -> Result<(), StorageError> {
        let temp = temp_name(work, "batch");
        let mut file = match create_new(&temp) {
            Err(StorageError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
                make_dirs(work)?;
                create_new(&temp)?
            }
            other => other?,
        };
        let written = file.write_all(bytes).and_then(|_| {
            if cfg!(any(target_os = "linux", target_os = "android")) {
                Ok(())
            } else {
                file.sync_all()
            }
        });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(StorageError::io("write", temp, e));
        }
        self.pending.push((temp, target));
        if self.pending.len() >= BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Make everything staged durable and put it in place.
    pub fn flush(&mut self) -> Result<(), StorageError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.sync()?;
        for (temp, target) in std::mem::take(&mut self.pending) {
            rename_into_place(&temp, &target)?;
        }
        Ok(())
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn sync(&self) -> Result<(), StorageError> {
        use std::os::unix::fs::MetadataExt;
        let mut synced: Vec<u64> = Vec::new();
        for (temp, _) in &self.pending {
            let dir = temp.parent().unwrap_or(Path::new("."));
            let file = std::fs::File::open(dir).map_err(|e| StorageError::io("open", dir, e))?;
            let dev = file
                .metadata()
                .map_err(|e| StorageError::io("stat", dir, e))?
                .dev();
            if synced.contains(&dev) {
                continue;
            }
            nix::unistd::syncfs(&file)
                .map_err(|e| StorageError::io("flush to disk the filesystem of", dir, e.into()))?;
            synced.push(dev);
        }
        Ok(())
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn sync(&self) -> Result<(), StorageError> {
        // each staged file was fsynced as it was written
        Ok(())
    }
}

impl Drop for BatchWriter<'_> {
    fn drop(&mut self) {
        for (temp, _) in self.pending.drain(..) {
            let _ = std::fs::remove_file(temp);
        }
    }
}

/// Rename, creating the target's folder if it is missing.
pub(crate) fn rename_into_place(temp: &Path, target: &Path) -> Result<(), StorageError> {
    let renamed = match std::fs::rename(temp, target) {
        Err(e) if e.kind() == ErrorKind::NotFound && temp.exists() => {
            if let Some(parent) = target.parent() {
                make_dirs(parent)?;
            }
            std::fs::rename(temp, target)
        }
        other => other,
    };
    renamed.map_err(|e| {
        let _ = std::fs::remove_file(temp);
        StorageError::io("rename into place", target, e)
    })
}
