//! Building a view: the layers of a stack merged into one node list in a
//! single pass, within a [`Budget`] (a deadline, a bound on entries, and a
//! flag that cancels the build when the caller has gone away).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};
use nix::sys::stat::FileStat;

use super::disk::{is_regular, DiskDir};
use super::{attr_of, empty_root_attr, kind_of_mode, Content, Node};
use crate::encoding::Digest;
use crate::graph::{self, EntryKind};
use crate::tracking::env_spec::Layer;

/// What one build may cost.
#[derive(Clone)]
pub struct Budget {
    /// Give up after this moment.
    pub deadline: Instant,
    /// Give up beyond this many entries.
    pub max_entries: usize,
    /// Set when nobody waits for the result any more.
    pub cancelled: Arc<AtomicBool>,
    /// For messages: the setting that moves the deadline.
    pub deadline_setting: &'static str,
    /// For messages: the setting that moves the entry bound.
    pub entries_setting: &'static str,
}

impl Budget {
    pub fn unlimited() -> Budget {
        Budget {
            deadline: Instant::now() + Duration::from_secs(365 * 24 * 3600),
            max_entries: usize::MAX,
            cancelled: Arc::default(),
            deadline_setting: "",
            entries_setting: "",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the view has more than {max} entries; raise {setting} if this stack is meant to be that big")]
    TooBig { max: usize, setting: &'static str },
    #[error("building the view took longer than the deadline; raise {setting} if the layers are on a slow filesystem")]
    Deadline { setting: &'static str },
    #[error("the client went away; the build was stopped")]
    Cancelled,
    #[error("cannot read directory layer {path}: {error}")]
    Layer { path: String, error: std::io::Error },
    #[error("the layers nest directories deeper than {max} levels; such a stack cannot be shown")]
    TooDeep { max: usize },
    #[error("cannot start a thread to build the view: {0}")]
    Thread(std::io::Error),
}

/// Deepest directory nesting a view is built to, as for `spfs info` and
/// the other commands that unpack a manifest.
pub const MAX_DEPTH: usize = crate::tracking::manifest::MAX_DEPTH;

/// Stack of the thread a view is built on. Building recurses once per
/// directory level, a few KiB a level in a debug build: enough for
/// [`MAX_DEPTH`] levels with room to spare. Only the pages used are touched.
const BUILD_STACK: usize = 64 << 20;

/// Merges `layers` (bottom to top) into nodes; index 0 is the root. Returns
/// them and the number of directory-layer entries that could not be read.
///
/// Runs on a thread of its own with a [`BUILD_STACK`]-byte stack: the
/// caller's (a tokio blocking thread has 2 MiB) could not hold
/// [`MAX_DEPTH`] levels, and overflowing it aborts the whole service. An
/// empty stack (`spfs run -`: nothing to recurse into) is built here, as
/// starting the thread would be most of its cost.
pub fn build(layers: &[Layer], budget: &Budget) -> Result<(Vec<Node>, u64), BuildError> {
    if layers.is_empty() {
        return build_here(layers, budget);
    }
    std::thread::scope(|scope| {
        let builder = std::thread::Builder::new()
            .name("spfs-view-build".into())
            .stack_size(BUILD_STACK)
            .spawn_scoped(scope, || build_here(layers, budget))
            .map_err(BuildError::Thread)?;
        builder
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn build_here(layers: &[Layer], budget: &Budget) -> Result<(Vec<Node>, u64), BuildError> {
    let indexes: Vec<Option<TreeIndex>> = layers
        .iter()
        .map(|layer| match layer {
            Layer::Manifest { manifest, .. } => Some(TreeIndex::new(manifest)),
            Layer::Dir(_) => None,
        })
        .collect();
    let mut roots = Vec::with_capacity(layers.len());
    for (layer, index) in layers.iter().zip(&indexes) {
        match (layer, index) {
            (Layer::Dir(path), _) => {
                let (dir, stat) = DiskDir::open_root(path).map_err(|error| BuildError::Layer {
                    path: path.display().to_string(),
                    error,
                })?;
                roots.push(Source::Disk(dir, stat));
            }
            (Layer::Manifest { .. }, Some(index)) => {
                if let Some(root) = index.root() {
                    roots.push(Source::Tree(index, root, 0o040755))
                }
            }
            _ => {}
        }
    }
    let mut builder = Builder {
        nodes: Vec::new(),
        owner: (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        ),
        budget,
        unreadable: 0,
    };
    if roots.is_empty() {
        builder.nodes.push(Node {
            attr: empty_root_attr(),
            content: Content::Dir(Vec::new()),
        });
    } else {
        builder.dir(roots, 0)?;
    }
    Ok((builder.nodes, builder.unreadable))
}

/// A manifest's trees by digest, so a tree entry finds its child tree.
struct TreeIndex<'a> {
    manifest: &'a graph::Manifest,
    by_digest: HashMap<Digest, usize>,
}

impl<'a> TreeIndex<'a> {
    fn new(manifest: &'a graph::Manifest) -> TreeIndex<'a> {
        let by_digest = manifest
            .trees
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, tree)| (tree.digest(), i))
            .collect();
        TreeIndex {
            manifest,
            by_digest,
        }
    }

    fn root(&self) -> Option<&'a graph::Tree> {
        self.manifest.trees.first()
    }

    fn tree(&self, digest: &Digest) -> Option<&'a graph::Tree> {
        self.by_digest.get(digest).map(|&i| &self.manifest.trees[i])
    }
}

/// One layer's directory at some path.
enum Source<'a> {
    /// A manifest tree, with the directory's mode.
    Tree(&'a TreeIndex<'a>, &'a graph::Tree, u32),
    /// An open directory of a directory layer, with its attributes.
    Disk(DiskDir, FileStat),
}

/// One layer's entry for a name.
enum Candidate<'a> {
    Entry(&'a TreeIndex<'a>, &'a graph::Entry),
    /// An entry of the open directory `parent` (an index into the sources).
    Disk {
        parent: usize,
        stat: FileStat,
    },
}

impl Candidate<'_> {
    fn is_dir(&self) -> bool {
        match self {
            Candidate::Entry(_, entry) => entry.kind == EntryKind::Tree,
            Candidate::Disk { stat, .. } => kind_of_mode(mode_of(stat)) == FileType::Directory,
        }
    }

    fn is_mask(&self) -> bool {
        matches!(self, Candidate::Entry(_, entry) if entry.kind == EntryKind::Mask)
    }
}

#[allow(clippy::unnecessary_cast)] // mode_t is u16 on macOS
fn mode_of(stat: &FileStat) -> u32 {
    stat.st_mode as u32
}

struct Builder<'b> {
    nodes: Vec<Node>,
    owner: (u32, u32),
    budget: &'b Budget,
    unreadable: u64,
}

impl Builder<'_> {
    /// Merges directories `sources` (bottom to top), `depth` levels below
    /// the root, into a new node; returns its index.
    fn dir(&mut self, sources: Vec<Source>, depth: usize) -> Result<u32, BuildError> {
        if depth > MAX_DEPTH {
            return Err(BuildError::TooDeep { max: MAX_DEPTH });
        }
        let index = self.nodes.len() as u32;
        let attr = match sources.last().expect("at least one source") {
            Source::Tree(_, tree, mode) => {
                self.entry_attr(*mode, tree.entries.len() as u64, FileType::Directory)
            }
            Source::Disk(_, stat) => attr_of(stat),
        };
        self.push(attr, Content::Dir(Vec::new()))?;
        if let [Source::Tree(tree_index, tree, _)] = sources.as_slice() {
            // Only one layer has this directory (the common case): nothing to merge.
            let children = self.one_tree(tree_index, tree, depth)?;
            self.nodes[index as usize].content = Content::Dir(children);
            return Ok(index);
        }
        let entries = self.candidates(&sources);
        let mut children = Vec::with_capacity(entries.len());
        for (name, candidates) in entries {
            // The top-most entry decides: a mask hides the name.
            if candidates.last().expect("non-empty").is_mask() {
                continue;
            }
            let child = self.merged_child(&sources, &name, candidates, depth)?;
            children.push((name, child));
        }
        self.nodes[index as usize].content = Content::Dir(children);
        Ok(index)
    }

    /// Every layer's entry for each name of the directories `sources`,
    /// bottom to top.
    fn candidates<'a>(
        &mut self,
        sources: &'a [Source<'a>],
    ) -> BTreeMap<OsString, Vec<Candidate<'a>>> {
        let mut entries: BTreeMap<OsString, Vec<Candidate>> = BTreeMap::new();
        for (position, source) in sources.iter().enumerate() {
            match source {
                Source::Tree(index, tree, _) => {
                    for entry in &tree.entries {
                        entries
                            .entry(OsString::from(&entry.name))
                            .or_default()
                            .push(Candidate::Entry(index, entry));
                    }
                }
                Source::Disk(dir, _) => match dir.entries() {
                    Ok(listing) => {
                        for (name, stat) in listing {
                            entries.entry(name).or_default().push(Candidate::Disk {
                                parent: position,
                                stat,
                            });
                        }
                    }
                    // Shown empty, as natively; counted and logged.
                    Err(error) => self.unreadable(&dir.display(), &error),
                },
            }
        }
        entries
    }

    /// The node of `name` in a merged directory: a directory merges with
    /// the directories directly beneath it, down to the first
    /// non-directory or mask; anything else is the top-most entry.
    fn merged_child(
        &mut self,
        sources: &[Source],
        name: &OsString,
        mut candidates: Vec<Candidate>,
        depth: usize,
    ) -> Result<u32, BuildError> {
        if !candidates.last().expect("non-empty").is_dir() {
            let top = candidates.pop().expect("non-empty");
            return self.leaf(sources, name, top);
        }
        let below = candidates.iter().rev().take_while(|c| c.is_dir()).count();
        let mut merged = Vec::with_capacity(below);
        for candidate in candidates.drain(candidates.len() - below..) {
            match candidate {
                Candidate::Entry(index, entry) => {
                    if let Some(tree) = index.tree(&entry.object) {
                        merged.push(Source::Tree(index, tree, entry.mode));
                    }
                }
                Candidate::Disk { parent, stat } => {
                    let Source::Disk(dir, _) = &sources[parent] else {
                        continue;
                    };
                    match dir.open_child(name, &stat) {
                        Ok(child) => merged.push(Source::Disk(child, stat)),
                        Err(error) => self.unreadable(&dir.display().join(name), &error),
                    }
                }
            }
        }
        if merged.is_empty() {
            // A tree entry whose tree is not in its manifest, or a
            // directory that cannot be opened: show it empty.
            let attr = self.entry_attr(0o040755, 0, FileType::Directory);
            return self.push(attr, Content::Dir(Vec::new()));
        }
        self.dir(merged, depth + 1)
    }

    /// The children of a directory only one manifest has, sorted by name.
    fn one_tree(
        &mut self,
        index: &TreeIndex,
        tree: &graph::Tree,
        depth: usize,
    ) -> Result<Vec<(OsString, u32)>, BuildError> {
        let mut children = Vec::with_capacity(tree.entries.len());
        for entry in &tree.entries {
            let child = match entry.kind {
                EntryKind::Mask => continue,
                EntryKind::Tree => match index.tree(&entry.object) {
                    Some(child) => {
                        self.dir(vec![Source::Tree(index, child, entry.mode)], depth + 1)?
                    }
                    None => {
                        let attr = self.entry_attr(0o040755, 0, FileType::Directory);
                        self.push(attr, Content::Dir(Vec::new()))?
                    }
                },
                EntryKind::Blob => self.manifest_leaf(entry)?,
            };
            children.push((OsString::from(&entry.name), child));
        }
        // Manifests list directories first: binary search needs name order.
        children.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(children)
    }

    fn manifest_leaf(&mut self, entry: &graph::Entry) -> Result<u32, BuildError> {
        let kind = kind_of_mode(entry.mode);
        let content = match kind {
            FileType::RegularFile => Content::Payload(entry.object),
            FileType::Symlink => Content::LinkPayload(entry.object),
            _ => Content::Special,
        };
        let attr = self.entry_attr(entry.mode, entry.size, kind);
        self.push(attr, content)
    }

    /// Adds a node, or stops when the budget is spent.
    fn push(&mut self, attr: FileAttr, content: Content) -> Result<u32, BuildError> {
        if self.nodes.len() >= self.budget.max_entries {
            return Err(BuildError::TooBig {
                max: self.budget.max_entries,
                setting: self.budget.entries_setting,
            });
        }
        // Checked every 4096 entries: cheap, and often enough to stop within milliseconds.
        if self.nodes.len() % 4096 == 4095 {
            if self.budget.cancelled.load(Ordering::Relaxed) {
                return Err(BuildError::Cancelled);
            }
            if Instant::now() >= self.budget.deadline {
                return Err(BuildError::Deadline {
                    setting: self.budget.deadline_setting,
                });
            }
        }
        self.nodes.push(Node { attr, content });
        Ok((self.nodes.len() - 1) as u32)
    }

    fn unreadable(&mut self, path: &std::path::Path, error: &std::io::Error) {
        self.unreadable += 1;
        // The first few are named; the count covers the rest.
        if self.unreadable <= 10 {
            tracing::warn!(
                event = "service.layer_unreadable",
                path = %path.display(),
                error = %error,
                "part of a directory layer cannot be read; it shows as empty"
            );
        }
    }

    fn leaf(
        &mut self,
        sources: &[Source],
        name: &OsString,
        candidate: Candidate,
    ) -> Result<u32, BuildError> {
        match candidate {
            Candidate::Entry(_, entry) => self.manifest_leaf(entry),
            Candidate::Disk { parent, stat } => {
                let Source::Disk(dir, _) = &sources[parent] else {
                    unreachable!("a disk candidate comes from a disk source");
                };
                let kind = kind_of_mode(mode_of(&stat));
                let content = if kind == FileType::Symlink {
                    match dir.read_link(name) {
                        Ok(target) => Content::Symlink(target),
                        Err(error) => {
                            self.unreadable(&dir.display().join(name), &error);
                            Content::Special
                        }
                    }
                } else if is_regular(&stat) {
                    Content::File(Box::new(dir.file(name, &stat)))
                } else {
                    Content::Special
                };
                self.push(attr_of(&stat), content)
            }
        }
    }

    /// Attributes of a manifest entry: its mode and size, owned by the user
    /// the service runs as (as spfs renders files for its user), with blocks
    /// that match the size so `du` adds up, and fixed times so build tools
    /// see the same file as unchanged from one runtime to the next.
    fn entry_attr(&self, mode: u32, size: u64, kind: FileType) -> FileAttr {
        FileAttr {
            ino: INodeNo(0),
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm: (mode & 0o7777) as u16,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: self.owner.0,
            gid: self.owner.1,
            rdev: 0,
            flags: 0,
            blksize: 4096,
        }
    }
}
