//! Reading a directory tree to commit it (or hash it: a directory layer's
//! manifest, a diff), without trusting it to stay put: the walk goes by
//! directory fds (`crate::dirfd`), never by full paths, so no symlink is
//! followed, a tree deeper than `PATH_MAX` reads as any other, and what
//! the walk saw is what is read: each file is opened later relative to
//! its directory with `O_NOFOLLOW | O_NONBLOCK` and must still be the
//! regular file (device, inode) the walk saw. A file swapped for a
//! symlink, a FIFO or another file after the walk is refused, naming it.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::stat::FileStat;

use super::manifest::Entry;
use crate::dirfd::{self, Dir};
use crate::encoding::Digest;
use crate::graph::EntryKind;
use crate::storage::error::StorageError;

/// A directory read from disk: its tree, with the files and symlinks whose
/// payloads are still to be read. `DirWalk::store` writes them to a
/// repository (a commit); `DirWalk::hash` only computes their digests.
pub struct DirWalk {
    pub(super) root: Entry,
    pub(super) found: Vec<Found>,
    /// The walked directory, open, and its path (for messages); None for
    /// [`DirWalk::empty`].
    pub(super) dir: Option<(Dir, PathBuf)>,
}

pub(super) enum Job {
    /// A regular file, below the walked directory, as the walk saw it.
    File {
        relative: PathBuf,
        seen: FileStat,
    },
    Link {
        target: Vec<u8>,
    },
}

pub(super) struct Found {
    pub(super) job: Job,
    /// Names from the committed root down to the entry.
    pub(super) at: Vec<String>,
    pub(super) size: u64,
}

#[allow(clippy::unnecessary_cast)] // mode_t is u16 on macOS
fn mode_of(stat: &FileStat) -> u32 {
    stat.st_mode as u32
}

/// Reads the tree under `dir` (never following symlinks); no payload is read yet.
pub fn walk_dir(dir: &Path) -> Result<DirWalk, StorageError> {
    // One fd per level of the tree is open during the walk: a deep tree
    // needs more than the default soft limit.
    static RAISED: std::sync::Once = std::sync::Once::new();
    RAISED.call_once(|| {
        let _ = crate::platform::raise_fd_limit();
    });
    let opened = Dir::open(dir).map_err(|e| StorageError::io("read", dir, e))?;
    let stat = opened
        .stat()
        .map_err(|e| StorageError::io("stat", dir, e))?;
    let mut root = Entry::dir(mode_of(&stat));
    let mut found = Vec::new();
    let mut at = Vec::new();
    scan(&opened, dir, &mut root, &mut at, &mut found)?;
    Ok(DirWalk {
        root,
        found,
        dir: Some((opened, dir.to_owned())),
    })
}

impl DirWalk {
    /// The walk of an empty directory of `mode` (type bits included).
    pub fn empty(mode: u32) -> DirWalk {
        DirWalk {
            root: Entry::dir(mode),
            found: Vec::new(),
            dir: None,
        }
    }

    /// The tree as walked: blobs have a NULL object until stored or hashed.
    pub fn root(&self) -> &Entry {
        &self.root
    }

    /// The tree as walked, payloads unread (blob objects NULL, sizes from disk).
    pub fn into_root(self) -> Entry {
        self.root
    }
}

/// Where an entry `at` below `base` is, for messages.
fn shown(base: &Path, at: &[String]) -> PathBuf {
    let mut path = base.to_owned();
    path.extend(at);
    path
}

/// Reads `dir`'s tree into `into`. Depth first with a stack of open
/// directories, not recursion: a tree may be far deeper than a thread's
/// stack allows (thousands of levels).
fn scan(
    dir: &Dir,
    base: &Path,
    into: &mut Entry,
    at: &mut Vec<String>,
    found: &mut Vec<Found>,
) -> Result<(), StorageError> {
    struct Level {
        dir: Dir,
        entry: Entry,
        pending: std::vec::IntoIter<(String, FileStat)>,
    }
    let open = |dir: Dir, entry: Entry, at: &mut Vec<String>| -> Result<Level, StorageError> {
        let pending = listing(&dir, base, at)?.into_iter();
        Ok(Level {
            dir,
            entry,
            pending,
        })
    };
    let root = std::mem::replace(into, Entry::dir(0));
    let mut stack = vec![open(
        dir.try_clone()
            .map_err(|e| StorageError::io("read", base, e))?,
        root,
        at,
    )?];
    loop {
        let level = stack.last_mut().expect("the root level is popped last");
        let Some((name, stat)) = level.pending.next() else {
            let done = stack.pop().expect("just seen");
            match stack.last_mut() {
                Some(parent) => {
                    let name = at.pop().expect("a level below the root has a name");
                    parent.entry.entries.insert(name, done.entry);
                }
                None => {
                    *into = done.entry;
                    return Ok(());
                }
            }
            continue;
        };
        at.push(name.clone());
        let entry = scan_entry(&level.dir, base, &name, &stat, at, found)?;
        if dirfd::is_dir(&stat) {
            if at.len() > super::manifest::MAX_DEPTH {
                return Err(StorageError::Unsupported {
                    path: shown(base, &at[..super::manifest::MAX_DEPTH.min(40)]),
                    reason: format!(
                        "it nests folders deeper than {} levels, which a layer cannot hold (spfs could not show it)",
                        super::manifest::MAX_DEPTH
                    ),
                    fix: "flatten the tree",
                });
            }
            let child = level
                .dir
                .child_checked(OsStr::new(&name), &stat)
                .map_err(|e| StorageError::io("open the folder", shown(base, at), e))?;
            let below = open(child, entry, at)?;
            stack.push(below);
        } else {
            at.pop();
            level.entry.entries.insert(name, entry);
        }
    }
}

/// A directory's entries, names checked to be UTF-8 (spfs records no other).
fn listing(
    dir: &Dir,
    base: &Path,
    at: &mut Vec<String>,
) -> Result<Vec<(String, FileStat)>, StorageError> {
    let entries = dir
        .entries()
        .map_err(|e| StorageError::io("list", shown(base, at), e))?;
    entries
        .into_iter()
        .map(|(name, stat)| match name.to_str() {
            Some(name) => Ok((name.to_owned(), stat)),
            None => {
                at.push(name.to_string_lossy().into_owned());
                Err(StorageError::Unsupported {
                    path: shown(base, at),
                    reason: "its name is not UTF-8, which spfs cannot record".into(),
                    fix: "rename it",
                })
            }
        })
        .collect()
}

/// One entry of a directory: a folder (its entries to come), a symlink, a
/// file or a mask.
fn scan_entry(
    dir: &Dir,
    base: &Path,
    name: &str,
    stat: &FileStat,
    at: &[String],
    found: &mut Vec<Found>,
) -> Result<Entry, StorageError> {
    let mut entry = Entry {
        kind: EntryKind::Blob,
        object: Digest::NULL,
        mode: mode_of(stat),
        size: stat.st_size as u64,
        entries: BTreeMap::new(),
    };
    let name = OsStr::new(name);
    if dirfd::is_dir(stat) {
        // its entries are read by `scan`
        entry.kind = EntryKind::Tree;
        entry.size = 0;
    } else if dirfd::is_symlink(stat) {
        let target = dir
            .read_link(name)
            .map_err(|e| StorageError::io("read the link", shown(base, at), e))?;
        let target = target.as_os_str().as_bytes().to_vec();
        if std::str::from_utf8(&target).is_err() {
            return Err(StorageError::Unsupported {
                path: shown(base, at),
                reason: "the symlink's target is not UTF-8".into(),
                fix: "point the link at a UTF-8 path",
            });
        }
        let size = target.len() as u64;
        found.push(Found {
            job: Job::Link { target },
            at: at.to_vec(),
            size,
        });
    } else if dirfd::is_regular(stat) {
        found.push(Found {
            job: Job::File {
                relative: at.iter().collect(),
                seen: *stat,
            },
            at: at.to_vec(),
            size: entry.size,
        });
    } else if is_whiteout(stat) {
        entry.kind = EntryKind::Mask;
        entry.size = 0;
    } else {
        return Err(StorageError::Unsupported {
            path: shown(base, at),
            reason: "it is a device, socket or fifo; a layer holds only files, folders, symlinks and 0/0 character devices (deletions)".into(),
            fix: "remove it from the folder before committing",
        });
    }
    Ok(entry)
}

/// A 0/0 character device: an overlayfs whiteout, recorded as a mask.
#[allow(clippy::unnecessary_cast)]
fn is_whiteout(stat: &FileStat) -> bool {
    (stat.st_mode as u32) & libc::S_IFMT as u32 == libc::S_IFCHR as u32 && stat.st_rdev == 0
}

/// Opens the files a walk found, each relative to its directory (the last
/// directory is kept open: a directory's files are mostly read in a row).
pub(super) struct Opener<'w> {
    root: Option<&'w (Dir, PathBuf)>,
    cached: Option<(PathBuf, Dir)>,
}

impl<'w> Opener<'w> {
    pub(super) fn new(walk: Option<&'w (Dir, PathBuf)>) -> Opener<'w> {
        Opener {
            root: walk,
            cached: None,
        }
    }

    /// Opens `relative` for reading, only if it is still the regular file
    /// `seen` describes (not a symlink, FIFO or other file put there).
    pub(super) fn open(&mut self, relative: &Path, seen: &FileStat) -> Result<File, StorageError> {
        let Some((root, base)) = self.root else {
            return Err(StorageError::io(
                "open",
                relative,
                std::io::Error::from_raw_os_error(libc::ENOENT),
            ));
        };
        let path = || base.join(relative);
        let (parent, name) = split(relative, base)?;
        if self.cached.as_ref().is_none_or(|(p, _)| p != parent) {
            let dir = folder(root, parent, &path)?;
            self.cached = Some((parent.to_owned(), dir));
        }
        let (_, dir) = self.cached.as_ref().expect("just cached");
        dir.open_file(name, Some(seen))
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => replaced(path(), "it is a symlink now"),
                Some(_) => StorageError::io("open", path(), e),
                None => replaced(path(), &e.to_string()),
            })
    }
}

/// `relative`'s folder and name; a path without a name (the root) is
/// no file.
fn split<'p>(relative: &'p Path, base: &Path) -> Result<(&'p Path, &'p OsStr), StorageError> {
    match (relative.parent(), relative.file_name()) {
        (Some(parent), Some(name)) => Ok((parent, name)),
        _ => Err(StorageError::io(
            "open",
            base.join(relative),
            std::io::Error::from_raw_os_error(libc::EISDIR),
        )),
    }
}

/// The folder `parent` below `root`, name by name, following no symlink;
/// one gone or replaced on the way is an error about `path()`.
fn folder(root: &Dir, parent: &Path, path: &dyn Fn() -> PathBuf) -> Result<Dir, StorageError> {
    root.descend(parent)
        .map_err(|e| StorageError::io("open the folder of", path(), e))?
        .ok_or_else(|| replaced(path(), "a folder on its way is gone or was replaced"))
}

fn replaced(path: PathBuf, what: &str) -> StorageError {
    StorageError::Unsupported {
        path,
        reason: format!("it changed while it was committed: {what}"),
        fix: "commit again once nothing changes the folder",
    }
}

/// The payload digest of one file or symlink (its target) at `relative`
/// below `root`, as a commit would record it, read by directory fds.
pub fn payload_digest_at(root: &Path, relative: &Path) -> Result<Digest, StorageError> {
    let path = || root.join(relative);
    let (parent, name) = split(relative, root)?;
    let opened = Dir::open(root).map_err(|e| StorageError::io("read", root, e))?;
    let dir = folder(&opened, parent, &path)?;
    let stat = dir
        .stat_at(name)
        .map_err(|e| StorageError::io("stat", path(), e))?
        .ok_or_else(|| {
            StorageError::io(
                "stat",
                path(),
                std::io::Error::from_raw_os_error(libc::ENOENT),
            )
        })?;
    if dirfd::is_symlink(&stat) {
        let target = dir
            .read_link(name)
            .map_err(|e| StorageError::io("read the link", path(), e))?;
        return Ok(Digest::of(target.as_os_str().as_bytes()));
    }
    let mut file = dir
        .open_file(name, Some(&stat))
        .map_err(|e| StorageError::io("open", path(), e))?;
    let mut hasher = crate::encoding::Hasher::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| StorageError::io("read", path(), e))?;
    Ok(hasher.finish())
}
