//! Committing a directory on disk as a layer, exactly as spfs 0.44 does so
//! the digests match: every file and symlink target becomes a payload plus
//! its Blob object, the tree becomes a Manifest, and a Layer points at it.
//!
//! The walk (`tracking::walk`) never follows symlinks. A symlink is a Blob entry (`S_IFLNK`
//! mode) whose payload is its target; a 0/0 character device (an overlayfs
//! whiteout) is a Mask; any other special file is refused, naming it.
//! Payloads are written by several threads at once, small ones in batches
//! made durable together (see [`BatchWriter`]); mtimes, owners and
//! xattrs are not part of spfs digests and are not recorded.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

use super::manifest::{Entry, Manifest};
pub use super::walk::{payload_digest_at, walk_dir, DirWalk};
use super::walk::{Found, Job, Opener};
use crate::dirfd::Dir;
use crate::encoding::Digest;
use crate::graph::{Blob, Layer, Object, Platform};
use crate::storage::error::StorageError;
use crate::storage::fs::BatchWriter;
use crate::storage::proxy::ProxyRepository;
use crate::storage::FsRepository;

/// Files up to this size are read whole and hashed before anything is
/// written, so a payload already stored costs no write.
const SMALL_FILE: u64 = 4 << 20;

/// Progress of a commit, passed to the caller's callback.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Files and symlinks stored so far.
    pub files: u64,
    /// Bytes of them so far.
    pub bytes: u64,
    /// Files and symlinks found by the walk.
    pub total_files: u64,
    /// Bytes of them.
    pub total_bytes: u64,
}

/// The mode of a mask entry written for a deletion: a character device with
/// no permission bits, as overlayfs makes its whiteouts (and so as spfs
/// records the deletions of a runtime).
pub const MASK_MODE: u32 = 0o020000;

impl DirWalk {
    /// Stores every payload (and its Blob object) in `repo`, reporting
    /// progress; returns the tree with every blob's digest and size.
    pub fn store(
        self,
        repo: &FsRepository,
        progress: &mut dyn FnMut(CommitStats),
    ) -> Result<Entry, StorageError> {
        self.finish(Some(repo), progress)
    }

    /// Computes every payload digest without writing anything.
    pub fn hash(self) -> Result<Entry, StorageError> {
        self.finish(None, &mut |_| {})
    }

    fn finish(
        self,
        repo: Option<&FsRepository>,
        progress: &mut dyn FnMut(CommitStats),
    ) -> Result<Entry, StorageError> {
        let DirWalk {
            mut root,
            found,
            dir,
        } = self;
        let mut stats = CommitStats {
            total_files: found.len() as u64,
            total_bytes: found.iter().map(|f| f.size).sum(),
            ..CommitStats::default()
        };
        progress(stats);
        let results = process_all(repo, dir.as_ref(), &found, &mut stats, progress)?;
        for (item, (digest, size)) in found.iter().zip(results) {
            // the walk inserted every found item, so the lookup always succeeds
            if let Some(entry) = entry_at_mut(&mut root, &item.at) {
                entry.object = digest;
                entry.size = size;
            }
        }
        Ok(root)
    }
}

/// Commit `dir` as a new layer in `repo`; returns (layer, manifest) digests.
pub fn commit_dir(
    repo: &FsRepository,
    dir: &Path,
    progress: &mut dyn FnMut(CommitStats),
) -> Result<(Digest, Digest), StorageError> {
    let walked = walk_dir(dir)?;
    crate::test_hooks::pause("commit.walked");
    let root = walked.store(repo, progress)?;
    write_layer(repo, &Manifest::new(root))
}

/// The manifest of `dir` as a commit would record it, without writing anything.
pub fn manifest_of_dir(dir: &Path) -> Result<Manifest, StorageError> {
    Ok(Manifest::new(walk_dir(dir)?.hash()?))
}

/// Writes `manifest` and a Layer of it; returns (layer, manifest) digests.
/// Every blob it names must already be stored.
pub fn write_layer(
    repo: &FsRepository,
    manifest: &Manifest,
) -> Result<(Digest, Digest), StorageError> {
    let manifest_digest = repo.write_object(&Object::Manifest(manifest.to_graph()))?;
    let layer = Layer {
        manifest: Some(manifest_digest),
        annotations: Vec::new(),
    };
    let layer_digest = repo.write_object(&Object::Layer(layer))?;
    Ok((layer_digest, manifest_digest))
}

fn entry_at_mut<'e>(root: &'e mut Entry, at: &[String]) -> Option<&'e mut Entry> {
    let mut entry = root;
    for name in at {
        entry = entry.entries.get_mut(name)?;
    }
    Some(entry)
}

/// Commit a stack of existing layers (or platforms), bottom first, into
/// `repo`. Each must be in `repo` or in one of `also_in` (the repositories
/// the stack was resolved in: a base from origin under a build committed
/// locally, as spfs allows).
pub fn commit_platform(
    repo: &FsRepository,
    also_in: &ProxyRepository,
    layers_bottom_up: &[Digest],
) -> Result<Digest, StorageError> {
    for layer in layers_bottom_up {
        if !repo.has_object(layer) && !also_in.has_object(layer) {
            return Err(StorageError::UnknownObject(*layer));
        }
    }
    repo.write_object(&Object::Platform(Platform {
        layers: layers_bottom_up.to_vec(),
    }))
}

/// Store (or with no repository, only hash) every found payload, a few at
/// a time; results in `found` order. Small files go through one
/// [`BatchWriter`] per worker, flushed before the worker ends, so
/// everything is durable when this returns `Ok`.
fn process_all(
    repo: Option<&FsRepository>,
    walked: Option<&(Dir, PathBuf)>,
    found: &[Found],
    stats: &mut CommitStats,
    progress: &mut dyn FnMut(CommitStats),
) -> Result<Vec<(Digest, u64)>, StorageError> {
    // The work waits on the disk more than on the CPU: more threads than
    // cores keep more writes in flight.
    let workers = std::thread::available_parallelism()
        .map(|n| n.get() * 8)
        .unwrap_or(16)
        .clamp(16, 64)
        .min(found.len().max(1));
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let mut results: Vec<Option<(Digest, u64)>> = vec![None; found.len()];
    let (tx, rx) = mpsc::channel::<Result<(usize, Digest, u64), StorageError>>();
    let mut first_error = None;
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let tx = tx.clone();
            let (next, stop) = (&next, &stop);
            scope.spawn(move || worker(repo, walked, found, next, stop, tx));
        }
        drop(tx);
        for message in rx {
            match message {
                Ok((i, digest, size)) => {
                    results[i] = Some((digest, size));
                    stats.files += 1;
                    stats.bytes += size;
                    if stats.files.is_multiple_of(256) || stats.files == stats.total_files {
                        progress(*stats);
                    }
                }
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    first_error.get_or_insert(e);
                }
            }
        }
    });
    if let Some(e) = first_error {
        return Err(e);
    }
    results
        .into_iter()
        .zip(found)
        .map(|(r, f)| {
            r.ok_or_else(|| StorageError::Unsupported {
                path: PathBuf::from(f.at.join("/")),
                reason: "it was not stored (a worker stopped early)".into(),
                fix: "commit again",
            })
        })
        .collect()
}

/// One worker of [`process_all`]: takes the next item until none is left
/// or one failed, and sends each result (by index) or the error.
fn worker(
    repo: Option<&FsRepository>,
    walked: Option<&(Dir, PathBuf)>,
    found: &[Found],
    next: &AtomicUsize,
    stop: &AtomicBool,
    tx: mpsc::Sender<Result<(usize, Digest, u64), StorageError>>,
) {
    let mut batch = repo.map(BatchWriter::new);
    let mut opener = Opener::new(walked);
    'work: while !stop.load(Ordering::Relaxed) {
        // A run of items at a time: files of one folder are found in a row,
        // and the opener keeps their folder open.
        let first = next.fetch_add(RUN, Ordering::Relaxed);
        for i in first..first + RUN {
            let Some(item) = found.get(i) else {
                break 'work;
            };
            if crate::interrupt::requested() {
                let _ = tx.send(Err(StorageError::Interrupted));
                stop.store(true, Ordering::Relaxed);
                return;
            }
            let result = match (repo, batch.as_mut()) {
                (Some(repo), Some(batch)) => store_one(repo, batch, &item.job, &mut opener),
                _ => hash_one(&item.job, &mut opener),
            };
            let failed = result.is_err();
            let _ = tx.send(result.map(|(digest, size)| (i, digest, size)));
            if failed || stop.load(Ordering::Relaxed) {
                stop.store(true, Ordering::Relaxed);
                return;
            }
        }
    }
    if let Some(Err(e)) = batch.as_mut().map(BatchWriter::flush) {
        stop.store(true, Ordering::Relaxed);
        let _ = tx.send(Err(e));
    }
}

/// How many found items a worker takes at once.
const RUN: usize = 16;

/// The payload digest and size of one item, read but not stored.
fn hash_one(job: &Job, opener: &mut Opener<'_>) -> Result<(Digest, u64), StorageError> {
    match job {
        Job::Link { target } => Ok((Digest::of(target), target.len() as u64)),
        Job::File { relative, seen } => {
            let mut file = opener.open(relative, seen)?;
            let mut hasher = crate::encoding::Hasher::new();
            let size = std::io::copy(&mut file, &mut hasher)
                .map_err(|e| StorageError::io("read", relative, e))?;
            Ok((hasher.finish(), size))
        }
    }
}

fn store_one(
    repo: &FsRepository,
    batch: &mut BatchWriter<'_>,
    job: &Job,
    opener: &mut Opener<'_>,
) -> Result<(Digest, u64), StorageError> {
    match job {
        Job::Link { target } => Ok((batch.write_blob_bytes(target)?, target.len() as u64)),
        Job::File { relative, seen } => {
            let mut file = opener.open(relative, seen)?;
            let len = file
                .metadata()
                .map_err(|e| StorageError::io("stat", relative, e))?
                .len();
            if len <= SMALL_FILE {
                let mut bytes = Vec::with_capacity(len as usize);
                file.read_to_end(&mut bytes)
                    .map_err(|e| StorageError::io("read", relative, e))?;
                Ok((batch.write_blob_bytes(&bytes)?, bytes.len() as u64))
            } else {
                let (payload, size) = repo.write_payload(&mut file)?;
                repo.write_object(&Object::Blob(Blob { payload, size }))?;
                Ok((payload, size))
            }
        }
    }
}

#[cfg(test)]
mod tests;
