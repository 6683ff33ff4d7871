//! [`Manifest`]: a directory tree in memory, keyed by name at each level.
//!
//! It is built from a stored [`graph::Manifest`] (its trees unpacked by
//! digest, bounded in depth and size so a corrupt manifest cannot loop or
//! exhaust memory), turned back into one exactly as spfs 0.44 orders it,
//! and merged layer over layer as spfs does: directories merge, anything
//! else replaces, and a mask replaces what is below and stays as a mask.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::encoding::Digest;
use crate::graph::{self, EntryKind, Object, Tree};
use crate::storage::error::StorageError;
use crate::storage::FsRepository;

/// Deepest directory nesting accepted from a stored manifest.
pub const MAX_DEPTH: usize = 1024;
/// Most entries a stored manifest may unpack to (shared subtrees count
/// once per place they appear).
pub const MAX_ENTRIES: usize = 50_000_000;
/// A manifest may always unpack to this many entries, however few it stores.
pub const MIN_ENTRY_BUDGET: usize = 1_000_000;
/// Past [`MIN_ENTRY_BUDGET`], a manifest may unpack to at most this many
/// times the entries it stores: a tree shared by the entries of another
/// shared tree multiplies, so a few KiB could otherwise stand for billions
/// of entries (a "zip bomb").
pub const MAX_SHARING: usize = 64;

/// The mode of the root directory (spfs uses an open directory).
const ROOT_MODE: u32 = 0o040777;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    root: Entry,
}

/// One file, directory, symlink or mask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: EntryKind,
    /// A blob's payload digest; NULL for directories and masks.
    pub object: Digest,
    /// Full `st_mode`, file type bits included.
    pub mode: u32,
    pub size: u64,
    /// Children of a directory, by name.
    pub entries: BTreeMap<String, Entry>,
}

impl Entry {
    /// An empty directory with the given mode.
    pub fn dir(mode: u32) -> Entry {
        Entry {
            kind: EntryKind::Tree,
            object: Digest::NULL,
            mode,
            size: 0,
            entries: BTreeMap::new(),
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind == EntryKind::Tree
    }

    pub fn is_mask(&self) -> bool {
        self.kind == EntryKind::Mask
    }

    pub fn is_symlink(&self) -> bool {
        self.mode & 0o170000 == 0o120000
    }

    /// Merge `top` over this entry, as spfs does.
    pub fn update(&mut self, top: &Entry) {
        self.kind = top.kind;
        self.object = top.object;
        self.mode = top.mode;
        if !self.is_dir() {
            self.size = top.size;
            self.entries.clear();
            return;
        }
        for (name, node) in &top.entries {
            if node.is_mask() {
                self.entries.remove(name);
            }
            match self.entries.get_mut(name) {
                Some(existing) => existing.update(node),
                None => {
                    self.entries.insert(name.clone(), node.clone());
                }
            }
        }
        self.size = top.size;
    }
}

impl Default for Manifest {
    fn default() -> Self {
        Manifest {
            root: Entry::dir(ROOT_MODE),
        }
    }
}

impl Manifest {
    /// A manifest with the given root directory.
    pub fn new(root: Entry) -> Manifest {
        Manifest { root }
    }

    pub fn root(&self) -> &Entry {
        &self.root
    }

    pub fn root_mut(&mut self) -> &mut Entry {
        &mut self.root
    }

    /// Unpack a stored manifest. A tree entry whose tree is missing, a
    /// cycle, nesting deeper than [`MAX_DEPTH`], or more entries than
    /// [`entry_budget`] allows is an invalid-object error (`StorageError::invalid_object`) (add
    /// the file name with [`StorageError::in_file`] to make it `Corrupt`).
    /// The entries are counted before any is built, so a manifest refused
    /// for its size costs no memory.
    pub fn from_graph(m: &graph::Manifest) -> Result<Manifest, StorageError> {
        let Some(root) = m.trees.first() else {
            return Ok(Manifest::default());
        };
        let by_digest: HashMap<Digest, &Tree> = m.trees.iter().map(|t| (t.digest(), t)).collect();
        let mut unpack = Unpack {
            by_digest,
            on_path: HashSet::new(),
            count: 0,
            counted: HashMap::new(),
        };
        let stored = m.trees.iter().map(|t| t.entries.len()).sum::<usize>();
        let budget = entry_budget(stored);
        let total = unpack.count(root, 0)?;
        if total > budget as u64 {
            return Err(StorageError::invalid_object(if budget == MAX_ENTRIES {
                format!("manifest unpacks to {total} entries, more than {MAX_ENTRIES}")
            } else {
                format!(
                    "manifest unpacks to {total} entries but stores {stored}: its shared \
                     subtrees repeat them more than {MAX_SHARING} times over (at most \
                     {budget} entries are unpacked from it)"
                )
            }));
        }
        let mut entry = Entry::dir(ROOT_MODE);
        unpack.tree(root, &mut entry, 0)?;
        Ok(Manifest { root: entry })
    }

    /// Read and unpack the Manifest object `digest` of `repo` (verified);
    /// a damaged manifest is [`StorageError::Corrupt`] naming its file.
    pub fn read(repo: &FsRepository, digest: &Digest) -> Result<Manifest, StorageError> {
        let path = repo.object_path(digest);
        match repo.read_object(digest)? {
            Object::Manifest(m) => Manifest::from_graph(&m).map_err(|e| e.in_file(&path)),
            other => Err(StorageError::corrupt(
                path,
                format!(
                    "a manifest was expected, but it holds a {}",
                    other.kind().name()
                ),
            )),
        }
    }

    /// The stored form, as spfs 0.44 builds it: each tree's entries with
    /// directories first then the rest, each group by name; the trees
    /// listed root first, then depth-first in that entry order, each
    /// distinct tree once.
    pub fn to_graph(&self) -> graph::Manifest {
        graph::Manifest {
            trees: build_trees(&self.root)
                .into_iter()
                .map(|(_, t)| t)
                .collect(),
        }
    }

    /// Merge `top` over this manifest.
    pub fn update(&mut self, top: &Manifest) {
        self.root.update(&top.root);
    }

    /// The entry at a slash-separated path (`""` or `"/"` is the root).
    /// Masks are returned as they are; callers decide to hide them.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        let mut entry = &self.root;
        for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            if !entry.is_dir() {
                return None;
            }
            entry = entry.entries.get(part)?;
        }
        Some(entry)
    }
}

/// How many entries a manifest storing `stored` entries may unpack to:
/// [`MAX_SHARING`] times as many, at least [`MIN_ENTRY_BUDGET`], at most
/// [`MAX_ENTRIES`].
pub fn entry_budget(stored: usize) -> usize {
    stored
        .saturating_mul(MAX_SHARING)
        .clamp(MIN_ENTRY_BUDGET, MAX_ENTRIES)
}

struct Unpack<'m> {
    by_digest: HashMap<Digest, &'m Tree>,
    on_path: HashSet<Digest>,
    count: usize,
    /// Entries below each tree already counted, by digest.
    counted: HashMap<Digest, u64>,
}

impl<'m> Unpack<'m> {
    fn subtree(&self, e: &graph::Entry) -> Result<&'m Tree, StorageError> {
        self.by_digest.get(&e.object).copied().ok_or_else(|| {
            StorageError::invalid_object(format!(
                "manifest entry {:?} refers to tree {} that the manifest does not hold",
                e.name, e.object
            ))
        })
    }

    fn enter(&mut self, digest: Digest) -> Result<(), StorageError> {
        if self.on_path.insert(digest) {
            Ok(())
        } else {
            Err(StorageError::invalid_object(format!(
                "manifest tree {digest} contains itself"
            )))
        }
    }

    /// How many entries `tree` unpacks to (saturating), each distinct tree
    /// counted once: linear in the stored manifest, whatever it unpacks to.
    fn count(&mut self, tree: &Tree, depth: usize) -> Result<u64, StorageError> {
        if depth > MAX_DEPTH {
            return Err(StorageError::invalid_object(format!(
                "manifest nests directories deeper than {MAX_DEPTH}"
            )));
        }
        let mut total = 0u64;
        for e in &tree.entries {
            total = total.saturating_add(1);
            if e.kind != EntryKind::Tree {
                continue;
            }
            let below = match self.counted.get(&e.object) {
                Some(n) => *n,
                None => {
                    let sub = self.subtree(e)?;
                    self.enter(e.object)?;
                    let n = self.count(sub, depth + 1)?;
                    self.on_path.remove(&e.object);
                    self.counted.insert(e.object, n);
                    n
                }
            };
            total = total.saturating_add(below);
        }
        Ok(total)
    }

    fn tree(&mut self, tree: &Tree, into: &mut Entry, depth: usize) -> Result<(), StorageError> {
        if depth > MAX_DEPTH {
            return Err(StorageError::invalid_object(format!(
                "manifest nests directories deeper than {MAX_DEPTH}"
            )));
        }
        for e in &tree.entries {
            self.count += 1;
            if self.count > MAX_ENTRIES {
                return Err(StorageError::invalid_object(format!(
                    "manifest unpacks to more than {MAX_ENTRIES} entries"
                )));
            }
            if e.name.is_empty() || e.name.contains('/') || e.name == "." || e.name == ".." {
                return Err(StorageError::invalid_object(format!(
                    "manifest holds an entry named {:?}, which is not a file name",
                    e.name
                )));
            }
            let mut child = Entry {
                kind: e.kind,
                object: e.object,
                mode: e.mode,
                size: e.size,
                entries: BTreeMap::new(),
            };
            if e.kind == EntryKind::Tree {
                child.object = Digest::NULL;
                let sub = self.subtree(e)?;
                self.enter(e.object)?;
                self.tree(sub, &mut child, depth + 1)?;
                self.on_path.remove(&e.object);
            }
            into.entries.insert(e.name.clone(), child);
        }
        Ok(())
    }
}

/// [this tree, its subtrees depth-first...], each distinct tree once, with
/// their digests.
fn build_trees(dir: &Entry) -> Vec<(Digest, Tree)> {
    let mut children: Vec<(&String, &Entry)> = dir.entries.iter().collect();
    // directories first, then everything else; by name within each group
    children.sort_by(|a, b| b.1.is_dir().cmp(&a.1.is_dir()).then_with(|| a.0.cmp(b.0)));
    let mut entries = Vec::with_capacity(children.len());
    let mut subs: Vec<Vec<(Digest, Tree)>> = Vec::new();
    for (name, child) in children {
        let object = if child.is_dir() {
            let sub = build_trees(child);
            let digest = sub[0].0;
            subs.push(sub);
            digest
        } else {
            child.object
        };
        entries.push(graph::Entry {
            kind: child.kind,
            object,
            mode: child.mode,
            size: if child.is_dir() { 0 } else { child.size },
            name: name.clone(),
        });
    }
    let tree = Tree { entries };
    let mut seen = HashSet::new();
    std::iter::once((tree.digest(), tree))
        .chain(subs.into_iter().flatten())
        .filter(|(digest, _)| seen.insert(*digest))
        .collect()
}

#[cfg(test)]
mod tests;
