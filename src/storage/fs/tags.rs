//! Tag streams of an [`FsRepository`]: `tags/<org>/<name>.tag`.
//!
//! Writers hold `<name>.tag.lock` (created exclusively, retried for a few
//! seconds), read the stream, change it, write a temp file beside it and
//! rename it over the stream, so readers never see a torn file and two
//! concurrent pushes both land.

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{make_dirs, temp_name, write_new_file, FsRepository};
use crate::encoding::Digest;
use crate::storage::error::StorageError;
use crate::storage::tag::{self, Tag, TagSpec};

/// How long a writer waits for another writer's lock.
#[cfg(not(test))]
const LOCK_WAIT: Duration = Duration::from_secs(5);
/// Short in tests, which wait on a stale lock on purpose.
#[cfg(test)]
const LOCK_WAIT: Duration = Duration::from_millis(500);

impl FsRepository {
    pub(crate) fn tag_file(&self, spec: &TagSpec) -> PathBuf {
        self.tags_dir().join(format!("{}.tag", spec.path()))
    }

    /// All versions of a tag, newest first.
    pub fn tag_stream(&self, spec: &TagSpec) -> Result<Vec<Tag>, StorageError> {
        let mut tags = self
            .read_stream(spec)?
            .ok_or_else(|| StorageError::UnknownTag {
                spec: spec.to_string(),
                reason: "no such tag in this repository".into(),
            })?;
        tags.reverse();
        Ok(tags)
    }

    /// The version `~N` of a tag (`~0` = newest).
    pub fn resolve_tag(&self, spec: &TagSpec) -> Result<Tag, StorageError> {
        let tags = self.tag_stream(spec)?;
        let count = tags.len();
        usize::try_from(spec.version())
            .ok()
            .and_then(|i| tags.into_iter().nth(i))
            .ok_or_else(|| StorageError::UnknownTag {
                spec: spec.to_string(),
                reason: format!(
                    "the stream {} has {count} version(s), so ~0..~{} exist",
                    spec.path(),
                    count.saturating_sub(1)
                ),
            })
    }

    /// Point the tag at `target`, as its new newest version. If the newest
    /// version already points there, nothing is written (as spfs does).
    pub fn push_tag(&self, spec: &TagSpec, target: &Digest) -> Result<Tag, StorageError> {
        let spec = spec.with_version(0);
        let path = self.tag_file(&spec);
        if let Some(parent) = path.parent() {
            make_dirs(parent)?;
        }
        let _lock = TagLock::acquire(&path)?;
        let mut tags = self.read_stream(&spec)?.unwrap_or_default();
        let newest = tags.iter().max_by(|a, b| a.stream_order(b));
        if let Some(newest) = newest {
            if newest.target == *target {
                return Ok(newest.clone());
            }
        }
        let new = Tag {
            org: spec.org().map(str::to_string),
            name: spec.name().to_string(),
            target: *target,
            parent: newest.map(Tag::digest).unwrap_or(Digest::NULL),
            user: current_user(),
            time: tag::now(),
        };
        tags.push(new.clone());
        tags.sort_by(|a, b| a.stream_order(b));
        write_stream(&path, &tags, self.tag_mode())?;
        Ok(new)
    }

    /// Remove one version of a tag. Removing the last version removes the
    /// stream file too.
    pub fn remove_tag(&self, tag: &Tag) -> Result<(), StorageError> {
        let spec = tag.spec(0);
        let path = self.tag_file(&spec);
        let lock = TagLock::acquire(&path)?;
        let tags = self.read_stream(&spec)?.unwrap_or_default();
        let before = tags.len();
        let kept: Vec<Tag> = tags.into_iter().filter(|t| t != tag).collect();
        if kept.len() == before {
            return Err(StorageError::UnknownTag {
                spec: spec.to_string(),
                reason: format!(
                    "no version of it points at {} at {}",
                    tag.target,
                    tag::format_time(tag.time)
                ),
            });
        }
        if kept.is_empty() {
            remove_file(&path)?;
            drop(lock);
            self.remove_empty_parents(&path)
        } else {
            write_stream(&path, &kept, self.tag_mode())
        }
    }

    /// Remove every version of a tag: the stream file, then its folders as
    /// long as they are empty (as spfs does).
    pub fn remove_tag_stream(&self, spec: &TagSpec) -> Result<(), StorageError> {
        let spec = spec.with_version(0);
        let path = self.tag_file(&spec);
        if !path.is_file() {
            return Err(StorageError::UnknownTag {
                spec: spec.to_string(),
                reason: "no such tag in this repository".into(),
            });
        }
        let lock = TagLock::acquire(&path)?;
        remove_file(&path)?;
        drop(lock);
        self.remove_empty_parents(&path)
    }

    /// What `spfs ls-tags PATH` lists: `name` for each stream and `dir/`
    /// for each folder under `tags/PATH`, sorted. A missing folder lists
    /// nothing.
    pub fn ls_tags(&self, path: &str) -> Result<Vec<String>, StorageError> {
        let rel = path.trim_matches('/');
        if rel.split('/').any(|p| p == ".." || p == ".") {
            return Err(StorageError::InvalidTagSpec {
                spec: path.to_string(),
                reason: "a tag folder cannot hold '.' or '..'".into(),
            });
        }
        let dir = if rel.is_empty() {
            self.tags_dir()
        } else {
            self.tags_dir().join(rel)
        };
        let read = match std::fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
                return Ok(Vec::new())
            }
            Err(e) => return Err(StorageError::io("list", dir, e)),
        };
        let mut out = Vec::new();
        for entry in read {
            let entry = entry.map_err(|e| StorageError::io("list", &dir, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if is_dir {
                out.push(format!("{name}/"));
            } else if let Some(stem) = name.strip_suffix(".tag") {
                if !stem.is_empty() && !stem.starts_with('.') {
                    out.push(stem.to_string());
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Every tag stream in the repository (as version 0), sorted.
    pub fn iter_tag_streams(&self) -> impl Iterator<Item = Result<TagSpec, StorageError>> {
        let root = self.tags_dir();
        let mut out = Vec::new();
        walk_tags(&root, &root, &mut out, 0);
        out.sort_by(|a, b| match (a, b) {
            (Ok(a), Ok(b)) => a.cmp(b),
            (Ok(_), Err(_)) => std::cmp::Ordering::Less,
            (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
            (Err(_), Err(_)) => std::cmp::Ordering::Equal,
        });
        out.into_iter()
    }

    /// The stream, oldest first; `None` if there is no such stream.
    fn read_stream(&self, spec: &TagSpec) -> Result<Option<Vec<Tag>>, StorageError> {
        let path = self.tag_file(spec);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
                return Ok(None)
            }
            Err(e) => return Err(StorageError::io("read", path, e)),
        };
        tag::decode_stream(&bytes)
            .map(Some)
            .map_err(|e| e.in_file(&path))
    }

    fn remove_empty_parents(&self, file: &Path) -> Result<(), StorageError> {
        let root = self.tags_dir();
        let mut dir = file.parent();
        while let Some(d) = dir {
            if d == root || !d.starts_with(&root) {
                break;
            }
            match std::fs::remove_dir(d) {
                Ok(()) => dir = d.parent(),
                Err(e)
                    if matches!(e.kind(), ErrorKind::DirectoryNotEmpty | ErrorKind::NotFound) =>
                {
                    break
                }
                Err(e) => return Err(StorageError::io("remove the empty tag folder", d, e)),
            }
        }
        Ok(())
    }
}

fn walk_tags(root: &Path, dir: &Path, out: &mut Vec<Result<TagSpec, StorageError>>, depth: usize) {
    if depth > 64 {
        return;
    }
    let read = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == ErrorKind::NotFound => return,
        Err(e) => return out.push(Err(StorageError::io("list", dir, e))),
    };
    for entry in read.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            walk_tags(root, &path, out, depth + 1);
        } else if kind.is_file() {
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let Some(rel) = rel.to_str() else { continue };
            if let Some(spec) = rel.strip_suffix(".tag") {
                out.push(TagSpec::parse(spec).map_err(|e| {
                    StorageError::corrupt(&path, format!("its name is not a tag ({e})"))
                }));
            }
        }
    }
}

fn remove_file(path: &Path) -> Result<(), StorageError> {
    std::fs::remove_file(path).map_err(|e| StorageError::io("remove", path, e))
}

impl FsRepository {
    /// The mode of a tag file: 0666 as spfs sets it (whatever the umask, so
    /// a shared repository's tags can be moved by everyone who shares it),
    /// unless the repository is private (its root closed to group and
    /// others, `chmod 700`): then 0600, so no other user may rewrite them
    /// should they ever reach them.
    fn tag_mode(&self) -> u32 {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(self.root()) {
            Ok(meta) if meta.mode() & 0o077 == 0 => 0o600,
            _ => 0o666,
        }
    }
}

/// Replace the stream file atomically, with mode `mode`.
fn write_stream(path: &Path, tags: &[Tag], mode: u32) -> Result<(), StorageError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let stem = path.file_name().and_then(|n| n.to_str()).unwrap_or("tag");
    let temp = temp_name(dir, stem);
    write_new_file(&temp, &tag::encode_stream(tags))?;
    let _ = std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode));
    std::fs::rename(&temp, path).map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        StorageError::io("rename into place", path, e)
    })
}

/// `user@host`, as spfs records who pushed a tag.
fn current_user() -> String {
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into());
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    format!("{user}@{host}")
}

/// `<stream>.lock`, held while a writer changes the stream.
struct TagLock {
    path: PathBuf,
}

impl TagLock {
    fn acquire(stream: &Path) -> Result<TagLock, StorageError> {
        let mut name = stream.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        let start = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(_) => return Ok(TagLock { path }),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    if start.elapsed() >= LOCK_WAIT {
                        return Err(StorageError::TagLocked {
                            path: stream.to_path_buf(),
                            lock: path,
                            waited_secs: LOCK_WAIT.as_secs(),
                        });
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    return Err(StorageError::UnknownTag {
                        spec: stream.display().to_string(),
                        reason: "its folder does not exist".into(),
                    })
                }
                Err(e) => return Err(StorageError::io("create the lock file", path, e)),
            }
        }
    }
}

impl Drop for TagLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests;
