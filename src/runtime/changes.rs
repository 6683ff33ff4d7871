//! What an editable runtime changed, read from its [`Scratch`] against the
//! merged manifest of its stack (the "base"): listing the changes (`spfs
//! diff`), committing them as one layer (`spfs commit`), and dropping them
//! (`spfs reset`).
//!
//! The runtime shows the base, and over it its changes: `upper/P` shows at
//! `P` (a directory there merges with the base's unless masked); a marker
//! `masks/Q` hides everything of the base at and below `Q`. As a layer this
//! is: every entry of `upper/` (stored exactly as `commit_dir` stores a
//! directory), a mask entry for each marker with nothing in `upper/` at its
//! path, and, under a marker whose path `upper/` made again as a directory
//! (an "opaque" directory), a mask for every entry of the base that
//! `upper/` did not make again, so the layer merged over its stack shows
//! exactly what the runtime showed.

use std::path::{Component, Path, PathBuf};

use super::scratch::Scratch;
use crate::encoding::Digest;
use crate::error::{Error, Result};
use crate::graph::EntryKind;
use crate::storage::error::StorageError;
use crate::storage::proxy::ProxyRepository;
use crate::storage::FsRepository;
use crate::tracking::commit::{
    manifest_of_dir, payload_digest_at, walk_dir, write_layer, CommitStats, DirWalk, MASK_MODE,
};
use crate::tracking::env_spec::{EnvSpec, Layer};
use crate::tracking::{Entry, Manifest};

/// How a path differs between the base and what the runtime shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Changed,
    Removed,
}

/// An entry's facts a change is described by (no children).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryMeta {
    pub kind: EntryKind,
    pub mode: u32,
    pub size: u64,
}

impl From<&Entry> for EntryMeta {
    fn from(entry: &Entry) -> Self {
        EntryMeta {
            kind: entry.kind,
            mode: entry.mode,
            size: if entry.is_dir() { 0 } else { entry.size },
        }
    }
}

/// One changed path, relative to the mountpoint (`bin/tool`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    pub path: String,
    /// What the base has there (Changed, Removed).
    pub before: Option<EntryMeta>,
    /// What the runtime shows there (Added, Changed).
    pub after: Option<EntryMeta>,
    /// The bytes differ (Changed files and symlinks, or a change of kind).
    pub content: bool,
}

impl Change {
    /// One line as `spfs diff` prints it: `+/spfs/path`, `-/spfs/path`,
    /// `~/spfs/path [mode {100644=>100755}, content, size {1=>2}]`.
    pub fn format(&self, mountpoint: &Path) -> String {
        let symbol = match self.kind {
            ChangeKind::Added => '+',
            ChangeKind::Changed => '~',
            ChangeKind::Removed => '-',
        };
        let mut about = Vec::new();
        if let (Some(a), Some(b)) = (self.before, self.after) {
            if a.mode != b.mode {
                about.push(format!("mode {{{:06o}=>{:06o}}}", a.mode, b.mode));
            }
            if self.content {
                about.push("content".to_string());
            }
            if a.size != b.size {
                about.push(format!("size {{{}=>{}}}", a.size, b.size));
            }
        }
        let about = if about.is_empty() {
            String::new()
        } else {
            format!(" [{}]", about.join(", "))
        };
        let root = mountpoint.to_string_lossy();
        let root = root.trim_end_matches('/');
        format!("{symbol}{root}/{}{about}", self.path)
    }
}

/// A layer made of a runtime's changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerCommit {
    pub layer: Digest,
    pub manifest: Digest,
    /// How many paths it changes; 0 for the empty layer `--allow-empty` makes.
    pub changes: usize,
}

/// A path as the user gives it to `spfs reset`: absolute under the
/// mountpoint (`/spfs/bin/tool`, or under the configured mountpoint), or
/// relative to the mountpoint (`bin/tool`), as spfs takes it. Returns the
/// path relative to the mountpoint, or what is wrong with it.
pub fn mount_relative(path: &str, mountpoint: &Path) -> std::result::Result<PathBuf, String> {
    let given = Path::new(path);
    let inner = if given.is_absolute() {
        given
            .strip_prefix(mountpoint)
            .or_else(|_| given.strip_prefix("/spfs"))
            .map_err(|_| {
                format!(
                    "{path} is not below the mountpoint {}; give a path inside it (e.g. {}/bin/tool or bin/tool)",
                    mountpoint.display(),
                    mountpoint.display()
                )
            })?
    } else {
        given
    };
    let mut relative = PathBuf::new();
    for component in inner.components() {
        match component {
            Component::Normal(name) => relative.push(name),
            Component::CurDir => {}
            _ => {
                return Err(format!(
                    "{path} leaves the mountpoint ('..'); give a path inside it"
                ))
            }
        }
    }
    if relative.as_os_str().is_empty() {
        return Err(format!(
            "{path} is the mountpoint itself; give paths below it, or none to reset every change"
        ));
    }
    Ok(relative)
}

/// The merged manifest of a runtime's stack (bottom to top: digests, read
/// from `repos`, or absolute directories, read from disk), as the runtime
/// shows it before any change. Masks of the layers stay in it as masks.
pub fn base_manifest(stack: &[String], repos: &ProxyRepository) -> Result<Manifest> {
    spec_manifest(&stack.join("+"), repos)
}

/// The merged manifest of an env spec (`base+app`, digests, tags,
/// directories) resolved in `repos`.
pub fn spec_manifest(spec: &str, repos: &ProxyRepository) -> Result<Manifest> {
    let mut base = Manifest::default();
    for layer in EnvSpec::parse(spec)?.resolve(repos)? {
        let manifest = match layer {
            Layer::Manifest { manifest, .. } => Manifest::from_graph(&manifest)?,
            Layer::Dir(path) => manifest_of_dir(&path)?,
        };
        base.update(&manifest);
    }
    Ok(base)
}

/// The runtime's changes against `base`, parents before children, each
/// directory's entries by name. A directory that is in `upper/` only
/// because something below it changed is no change unless its mode
/// differs; everything below an added or removed directory is listed too,
/// as spfs lists it.
pub fn diff(scratch: &Scratch, base: &Manifest) -> Result<Vec<Change>> {
    let upper = scratch.upper().to_owned();
    let root = walk_upper(scratch)?.into_root();
    let changes = changes_tree(scratch, base, root)?;
    let mut out = Vec::new();
    let mut digest_of = |path: &str| payload_digest_at(&upper, Path::new(path));
    compare(Some(base.root()), &changes, "", &mut digest_of, &mut out)?;
    Ok(out)
}

/// What the runtime shows: `base` with its changes merged over it (every
/// file of `upper/` hashed).
pub fn visible_manifest(scratch: &Scratch, base: &Manifest) -> Result<Manifest> {
    let root = walk_upper(scratch)?.hash()?;
    let changes = changes_tree(scratch, base, root)?;
    let mut shown = base.clone();
    shown.update(&Manifest::new(changes));
    Ok(shown)
}

/// How `to` differs from `from` (`spfs diff FROM TO`), listed as [`diff`]
/// lists a runtime's changes; masks in either count as nothing there.
pub fn diff_manifests(from: &Manifest, to: &Manifest) -> Vec<Change> {
    let mut overlay = to.root().clone();
    mask_opaque(&mut overlay, from.root());
    let mut out = Vec::new();
    // every blob of a manifest has its digest: nothing is read
    let mut known = |_: &str| Ok(Digest::NULL);
    // cannot fail: `known` never fails
    let _ = compare(Some(from.root()), &overlay, "", &mut known, &mut out);
    out
}

/// Commits the runtime's changes against `base` as one layer in `repo`:
/// payloads stored as `commit_dir` stores them (progress reported), masks
/// for deletions. `None` if nothing changed, unless `allow_empty` (then a
/// layer of an empty manifest, with `changes` 0).
pub fn commit_changes(
    repo: &FsRepository,
    scratch: &Scratch,
    base: &Manifest,
    allow_empty: bool,
    progress: &mut dyn FnMut(CommitStats),
) -> Result<Option<LayerCommit>> {
    let root = walk_upper(scratch)?.store(repo, progress)?;
    let changes = changes_tree(scratch, base, root)?;
    let mut listed = Vec::new();
    // every blob is stored, so its digest is known and this is not called
    let upper = scratch.upper();
    let mut digest_of = |path: &str| payload_digest_at(upper, Path::new(path));
    compare(Some(base.root()), &changes, "", &mut digest_of, &mut listed)?;
    let manifest = if listed.is_empty() {
        if !allow_empty {
            return Ok(None);
        }
        Manifest::default()
    } else {
        Manifest::new(changes)
    };
    let (layer, manifest) = write_layer(repo, &manifest)?;
    Ok(Some(LayerCommit {
        layer,
        manifest,
        changes: listed.len(),
    }))
}

/// The tree of `upper/`: an empty directory if the runtime changed nothing
/// yet (its scratch directory was never made), as `upper/` is made.
fn walk_upper(scratch: &Scratch) -> std::result::Result<DirWalk, StorageError> {
    match scratch.is_made() {
        true => walk_dir(scratch.upper()),
        false => Ok(DirWalk::empty(0o040755)),
    }
}

/// The tree of `upper/` (`root`) with the masks the markers stand for.
fn changes_tree(scratch: &Scratch, base: &Manifest, mut root: Entry) -> Result<Entry> {
    let markers = scratch
        .masks()
        .map_err(|e| Error::io(format!("cannot read {}", scratch.masks_dir().display()), e))?;
    for marker in markers {
        // A name that is not UTF-8 cannot be in any layer: nothing to hide.
        let Some(parts) = marker
            .components()
            .map(|c| c.as_os_str().to_str().map(str::to_owned))
            .collect::<Option<Vec<String>>>()
        else {
            continue;
        };
        let Some(base_entry) = visible(base.root(), &parts) else {
            continue;
        };
        let upper = scratch.upper_entry(&marker).map_err(|err| {
            Error::io(
                format!("cannot read {}", scratch.upper().join(&marker).display()),
                err,
            )
        })?;
        match upper {
            None => add_mask(&mut root, base.root(), &parts),
            Some(stat) if crate::dirfd::is_dir(&stat) => {
                if let Some(made) = entry_mut(&mut root, &parts) {
                    if made.is_dir() {
                        mask_opaque(made, base_entry);
                    }
                }
            }
            // a file or symlink replaces whatever the base had
            Some(_) => {}
        }
    }
    Ok(root)
}

/// The base's entry at `parts`, if the base shows one (no mask on the way).
fn visible<'a>(root: &'a Entry, parts: &[String]) -> Option<&'a Entry> {
    let mut entry = root;
    for name in parts {
        if !entry.is_dir() {
            return None;
        }
        entry = entry.entries.get(name)?;
        if entry.is_mask() {
            return None;
        }
    }
    Some(entry)
}

fn entry_mut<'a>(root: &'a mut Entry, parts: &[String]) -> Option<&'a mut Entry> {
    let mut entry = root;
    for name in parts {
        entry = entry.entries.get_mut(name)?;
    }
    Some(entry)
}

fn mask_entry() -> Entry {
    Entry {
        kind: EntryKind::Mask,
        object: Digest::NULL,
        mode: MASK_MODE,
        size: 0,
        entries: Default::default(),
    }
}

/// Puts a mask at `parts`, adding the directories above it that `upper/`
/// lacks with the base's modes (so merging them changes nothing else).
fn add_mask(root: &mut Entry, base: &Entry, parts: &[String]) {
    let Some((last, parents)) = parts.split_last() else {
        return;
    };
    let mut entry = root;
    let mut base_dir = Some(base);
    for name in parents {
        base_dir = base_dir.and_then(|d| d.entries.get(name));
        let mode = base_dir.map_or(0o040755, |d| d.mode);
        entry = entry
            .entries
            .entry(name.clone())
            .or_insert_with(|| Entry::dir(mode));
        if !entry.is_dir() {
            // replaced by a file: nothing of the base shows below it anyway
            return;
        }
    }
    entry.entries.entry(last.clone()).or_insert_with(mask_entry);
}

/// Under an opaque directory: masks every entry of the base's `base_dir`
/// that `made` lacks, at every level both have a directory, so `made`
/// merged over `base_dir` shows exactly `made`.
fn mask_opaque(made: &mut Entry, base_dir: &Entry) {
    if !base_dir.is_dir() {
        return;
    }
    for (name, below) in &base_dir.entries {
        if below.is_mask() {
            continue;
        }
        match made.entries.get_mut(name) {
            None => {
                made.entries.insert(name.clone(), mask_entry());
            }
            Some(child) if child.is_dir() && below.is_dir() => mask_opaque(child, below),
            Some(_) => {}
        }
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}/{name}")
    }
}

/// Lists how `changes` (merged over `base_dir`) differs from `base_dir`.
/// `digest_of` gives the payload digest of a blob of `changes` whose
/// object is not known yet (NULL), by its path.
fn compare(
    base_dir: Option<&Entry>,
    changes: &Entry,
    prefix: &str,
    digest_of: &mut dyn FnMut(&str) -> std::result::Result<Digest, StorageError>,
    out: &mut Vec<Change>,
) -> Result<()> {
    for (name, made) in &changes.entries {
        let path = join(prefix, name);
        let before = base_dir
            .filter(|d| d.is_dir())
            .and_then(|d| d.entries.get(name))
            .filter(|e| !e.is_mask());
        let change = |kind, content| Change {
            kind,
            path: path.clone(),
            before: before.map(EntryMeta::from),
            after: (kind != ChangeKind::Removed).then(|| EntryMeta::from(made)),
            content,
        };
        match (before, made.kind) {
            (None, EntryKind::Mask) => {}
            (Some(old), EntryKind::Mask) => removed(old, &path, out),
            (None, _) => {
                out.push(change(ChangeKind::Added, false));
                if made.is_dir() {
                    compare(None, made, &path, digest_of, out)?;
                }
            }
            (Some(old), EntryKind::Tree) => {
                if !old.is_dir() {
                    out.push(change(ChangeKind::Changed, true));
                    compare(None, made, &path, digest_of, out)?;
                } else {
                    if old.mode != made.mode {
                        out.push(change(ChangeKind::Changed, false));
                    }
                    compare(Some(old), made, &path, digest_of, out)?;
                }
            }
            (Some(old), _) if old.is_dir() => {
                out.push(change(ChangeKind::Changed, true));
                for (child, below) in &old.entries {
                    if !below.is_mask() {
                        removed(below, &join(&path, child), out);
                    }
                }
            }
            (Some(old), _) => {
                let content = if old.size != made.size {
                    true
                } else {
                    let digest = if made.object == Digest::NULL {
                        digest_of(&path)?
                    } else {
                        made.object
                    };
                    digest != old.object
                };
                if content || old.mode != made.mode {
                    out.push(change(ChangeKind::Changed, content));
                }
            }
        }
    }
    Ok(())
}

/// `entry` at `path` and everything below it, removed.
fn removed(entry: &Entry, path: &str, out: &mut Vec<Change>) {
    out.push(Change {
        kind: ChangeKind::Removed,
        path: path.to_owned(),
        before: Some(EntryMeta::from(entry)),
        after: None,
        content: false,
    });
    for (name, below) in &entry.entries {
        if !below.is_mask() {
            removed(below, &join(path, name), out);
        }
    }
}

#[cfg(test)]
mod tests;
