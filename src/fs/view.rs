//! Views: the immutable merged tree of one env spec, built once at `Mount`.
//!
//! Layers are spfs manifests (from a repository) or directories on disk.
//! Directories present in several layers are merged; anything else comes from
//! the top-most layer that has the path and hides whatever lies below it (a
//! directory above a file hides the file); a mask (an spfs deletion) hides
//! the path and everything below it. Nodes are numbered by their index; index
//! 0 is the view's root. Building reads manifests only: file contents stay in
//! the repositories' payload files and are opened on first use.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

use crate::storage::encoding::Digest;
use crate::storage::graph::{self, EntryKind};
use crate::storage::proxy::ProxyRepository;
use crate::tracking::env_spec::Layer;

pub struct View {
    pub id: u64,
    pub spec: String,
    nodes: Vec<Node>,
    /// Where payloads are read from, in order.
    repos: Arc<ProxyRepository>,
}

pub struct Node {
    pub attr: FileAttr,
    pub content: Content,
}

pub enum Content {
    /// Children sorted by name: (name, node index).
    Dir(Vec<(OsString, u32)>),
    /// A file of a directory layer, opened for reads.
    File(PathBuf),
    /// A symlink of a directory layer.
    Symlink(PathBuf),
    /// A file of a manifest layer: its payload.
    Payload(Digest),
    /// A symlink of a manifest layer: its target is the payload.
    LinkPayload(Digest),
    /// FIFOs, sockets, devices: attributes only.
    Special,
}

/// The longest symlink target read from a payload.
const MAX_LINK_TARGET: u64 = 4096;

impl View {
    /// Builds the merged tree of `layers` (bottom to top). Blocking I/O for
    /// directory layers only; manifest layers are already in memory.
    pub fn build(
        id: u64,
        spec: String,
        layers: &[Layer],
        repos: Arc<ProxyRepository>,
    ) -> std::io::Result<View> {
        let owner = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
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
                    roots.push(Source::Disk(path.clone(), std::fs::metadata(path)?))
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
            owner,
        };
        if roots.is_empty() {
            builder.nodes.push(Node {
                attr: empty_root_attr(),
                content: Content::Dir(Vec::new()),
            });
        } else {
            builder.dir(&roots);
        }
        Ok(View {
            id,
            spec,
            nodes: builder.nodes,
            repos,
        })
    }

    pub fn node(&self, index: u32) -> Option<&Node> {
        self.nodes.get(index as usize)
    }

    pub fn root(&self) -> &Node {
        &self.nodes[0]
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.len() <= 1
    }

    /// The child `name` of directory `dir`, as a node index.
    pub fn child(&self, dir: u32, name: &OsStr) -> Option<u32> {
        match &self.node(dir)?.content {
            Content::Dir(children) => children
                .binary_search_by(|(n, _)| n.as_os_str().cmp(name))
                .ok()
                .map(|i| children[i].1),
            _ => None,
        }
    }

    /// Opens the file behind a file node for reading. Payloads are opened
    /// without following symlinks and without blocking (a FIFO put in a
    /// payload's place never hangs us), and must still be a regular file of
    /// the size the manifest records; anything else is an I/O error.
    pub fn open(&self, node: u32) -> std::io::Result<File> {
        let node = self
            .node(node)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ESTALE))?;
        match &node.content {
            Content::File(path) => File::open(path),
            Content::Payload(digest) => self.open_payload(digest, Some(node.attr.size)),
            Content::Dir(_) => Err(std::io::Error::from_raw_os_error(libc::EISDIR)),
            _ => Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }

    /// The target of a symlink node.
    pub fn read_link(&self, node: u32) -> std::io::Result<Vec<u8>> {
        let node = self
            .node(node)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ESTALE))?;
        match &node.content {
            Content::Symlink(target) => Ok(target.as_os_str().as_bytes().to_vec()),
            Content::LinkPayload(digest) => {
                let file = self.open_payload(digest, Some(node.attr.size))?;
                let mut target = Vec::new();
                file.take(MAX_LINK_TARGET).read_to_end(&mut target)?;
                Ok(target)
            }
            _ => Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }

    fn open_payload(&self, digest: &Digest, size: Option<u64>) -> std::io::Result<File> {
        for path in self.repos.payload_paths(digest) {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
                .open(&path);
            let file = match file {
                Ok(file) => file,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => {
                    tracing::warn!(event = "service.payload_unreadable", digest = %digest, path = %path.display(), error = %err, "cannot open a payload");
                    return Err(std::io::Error::from_raw_os_error(libc::EIO));
                }
            };
            let meta = file.metadata()?;
            if !meta.is_file() || size.is_some_and(|s| s != meta.len()) {
                tracing::warn!(event = "service.payload_unreadable", digest = %digest, path = %path.display(), error = "not a regular file of the recorded size", "refused a payload");
                return Err(std::io::Error::from_raw_os_error(libc::EIO));
            }
            return Ok(file);
        }
        tracing::warn!(event = "service.payload_missing", digest = %digest, view_id = self.id, "a payload is in no repository; run `spfs check`");
        Err(std::io::Error::from_raw_os_error(libc::EIO))
    }
}

impl Drop for View {
    fn drop(&mut self) {
        // The last route or open handle let go of it.
        tracing::info!(
            event = "service.view_freed",
            view_id = self.id,
            env_spec = crate::tracking::env_spec::shorten(&self.spec),
            nodes = self.nodes.len() as u64,
            "view freed"
        );
    }
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
    Disk(PathBuf, Metadata),
}

/// One layer's entry for a name.
enum Candidate<'a> {
    Entry(&'a TreeIndex<'a>, &'a graph::Entry),
    Disk(PathBuf, Metadata),
}

impl Candidate<'_> {
    fn is_dir(&self) -> bool {
        match self {
            Candidate::Entry(_, entry) => entry.kind == EntryKind::Tree,
            Candidate::Disk(_, meta) => meta.is_dir(),
        }
    }

    fn is_mask(&self) -> bool {
        matches!(self, Candidate::Entry(_, entry) if entry.kind == EntryKind::Mask)
    }
}

struct Builder {
    nodes: Vec<Node>,
    owner: (u32, u32),
}

impl Builder {
    /// Merges directories `sources` (bottom to top) into a new node; returns its index.
    fn dir(&mut self, sources: &[Source]) -> u32 {
        let index = self.nodes.len() as u32;
        let attr = match sources.last().expect("at least one source") {
            Source::Tree(_, tree, mode) => {
                self.entry_attr(*mode, tree.entries.len() as u64, FileType::Directory)
            }
            Source::Disk(_, meta) => attr_of(meta),
        };
        self.nodes.push(Node {
            attr,
            content: Content::Dir(Vec::new()),
        });
        // name -> every layer's entry for it, bottom to top.
        let mut entries: BTreeMap<OsString, Vec<Candidate>> = BTreeMap::new();
        for source in sources {
            match source {
                Source::Tree(index, tree, _) => {
                    for entry in &tree.entries {
                        entries
                            .entry(OsString::from(&entry.name))
                            .or_default()
                            .push(Candidate::Entry(index, entry));
                    }
                }
                Source::Disk(dir, _) => {
                    // An unreadable directory shows as empty, as it would natively.
                    let Ok(listing) = std::fs::read_dir(dir) else {
                        continue;
                    };
                    for entry in listing.flatten() {
                        let path = entry.path();
                        if let Ok(meta) = std::fs::symlink_metadata(&path) {
                            entries
                                .entry(entry.file_name())
                                .or_default()
                                .push(Candidate::Disk(path, meta));
                        }
                    }
                }
            }
        }
        let mut children = Vec::with_capacity(entries.len());
        for (name, mut candidates) in entries {
            // The top-most entry decides: a mask hides the name; a directory
            // merges with the directories directly beneath it, down to the
            // first non-directory or mask.
            let top = candidates.last().expect("non-empty");
            if top.is_mask() {
                continue;
            }
            let child = if top.is_dir() {
                let below = candidates.iter().rev().take_while(|c| c.is_dir()).count();
                let merged: Vec<Source> = candidates
                    .drain(candidates.len() - below..)
                    .filter_map(|c| match c {
                        Candidate::Entry(index, entry) => index
                            .tree(&entry.object)
                            .map(|tree| Source::Tree(index, tree, entry.mode)),
                        Candidate::Disk(path, meta) => Some(Source::Disk(path, meta)),
                    })
                    .collect();
                if merged.is_empty() {
                    // A tree entry whose tree is not in its manifest: show it empty.
                    let attr = self.entry_attr(0o040755, 0, FileType::Directory);
                    self.push(attr, Content::Dir(Vec::new()))
                } else {
                    self.dir(&merged)
                }
            } else {
                let top = candidates.pop().expect("non-empty");
                self.leaf(top)
            };
            children.push((name, child));
        }
        self.nodes[index as usize].content = Content::Dir(children);
        index
    }

    fn push(&mut self, attr: FileAttr, content: Content) -> u32 {
        self.nodes.push(Node { attr, content });
        (self.nodes.len() - 1) as u32
    }

    fn leaf(&mut self, candidate: Candidate) -> u32 {
        match candidate {
            Candidate::Entry(_, entry) => {
                let kind = kind_of_mode(entry.mode);
                let content = match kind {
                    FileType::RegularFile => Content::Payload(entry.object),
                    FileType::Symlink => Content::LinkPayload(entry.object),
                    _ => Content::Special,
                };
                let attr = self.entry_attr(entry.mode, entry.size, kind);
                self.push(attr, content)
            }
            Candidate::Disk(path, meta) => {
                let kind = meta.file_type();
                let content = if kind.is_symlink() {
                    match std::fs::read_link(&path) {
                        Ok(target) => Content::Symlink(target),
                        Err(_) => Content::Special,
                    }
                } else if kind.is_file() {
                    Content::File(path)
                } else {
                    Content::Special
                };
                self.push(attr_of(&meta), content)
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

fn kind_of_mode(mode: u32) -> FileType {
    match graph::mode::file_type(mode) {
        graph::mode::DIRECTORY => FileType::Directory,
        graph::mode::SYMLINK => FileType::Symlink,
        graph::mode::FIFO => FileType::NamedPipe,
        graph::mode::SOCKET => FileType::Socket,
        graph::mode::BLOCK_DEVICE => FileType::BlockDevice,
        graph::mode::CHAR_DEVICE => FileType::CharDevice,
        _ => FileType::RegularFile,
    }
}

fn time(seconds: i64, nanos: i64) -> SystemTime {
    if seconds >= 0 {
        UNIX_EPOCH + Duration::new(seconds as u64, nanos as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(seconds.unsigned_abs())
    }
}

fn file_type(meta: &Metadata) -> FileType {
    let t = meta.file_type();
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else if t.is_fifo() {
        FileType::NamedPipe
    } else if t.is_socket() {
        FileType::Socket
    } else if t.is_block_device() {
        FileType::BlockDevice
    } else if t.is_char_device() {
        FileType::CharDevice
    } else {
        FileType::RegularFile
    }
}

/// Attributes as on disk; `ino` is filled in per reply.
fn attr_of(meta: &Metadata) -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: meta.size(),
        blocks: meta.blocks(),
        atime: time(meta.atime(), meta.atime_nsec()),
        mtime: time(meta.mtime(), meta.mtime_nsec()),
        ctime: time(meta.ctime(), meta.ctime_nsec()),
        crtime: time(meta.mtime(), meta.mtime_nsec()),
        kind: file_type(meta),
        perm: (meta.mode() & 0o7777) as u16,
        nlink: meta.nlink() as u32,
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: meta.rdev() as u32,
        flags: 0,
        blksize: meta.blksize() as u32,
    }
}

/// The root shown when a runtime has no layers, or to a process with no runtime.
pub fn empty_root_attr() -> FileAttr {
    let now = SystemTime::now();
    FileAttr {
        ino: INodeNo::ROOT,
        size: 0,
        blocks: 0,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        kind: FileType::Directory,
        perm: 0o555,
        nlink: 2,
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        rdev: 0,
        flags: 0,
        blksize: 4096,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::graph::{Entry, Manifest, Tree};

    fn file(name: &str, content: &str) -> Entry {
        Entry {
            kind: EntryKind::Blob,
            object: Digest::of(content.as_bytes()),
            mode: 0o100644,
            size: content.len() as u64,
            name: name.into(),
        }
    }

    fn dir(name: &str, tree: &Tree) -> Entry {
        Entry {
            kind: EntryKind::Tree,
            object: tree.digest(),
            mode: 0o040755,
            size: 0,
            name: name.into(),
        }
    }

    fn mask(name: &str) -> Entry {
        Entry {
            kind: EntryKind::Mask,
            object: Digest::NULL,
            mode: 0o020644,
            size: 0,
            name: name.into(),
        }
    }

    fn layer(trees: Vec<Tree>) -> Layer {
        let manifest = Manifest { trees };
        Layer::Manifest {
            digest: Digest::of(format!("{manifest:?}").as_bytes()),
            manifest,
        }
    }

    #[test]
    fn directories_merge_the_top_wins_and_masks_hide_what_is_below() {
        let etc_base = Tree {
            entries: vec![file("only-base", "b"), file("version", "base")],
        };
        let base = layer(vec![
            Tree {
                entries: vec![
                    dir("etc", &etc_base),
                    file("gone", "x"),
                    file("shadowed", "f"),
                ],
            },
            etc_base,
        ]);
        let etc_top = Tree {
            entries: vec![file("version", "top!")],
        };
        let fresh = Tree {
            entries: vec![file("new", "n")],
        };
        let top = layer(vec![
            Tree {
                entries: vec![dir("etc", &etc_top), mask("gone"), dir("shadowed", &fresh)],
            },
            etc_top,
            fresh,
        ]);
        let empty = Arc::new(ProxyRepository::from_repositories(vec![]));
        let view = View::build(1, "base+top".into(), &[base, top], empty).unwrap();
        let etc = view.child(0, "etc".as_ref()).unwrap();
        let version = view.child(etc, "version".as_ref()).unwrap();
        assert_eq!(
            view.node(version).unwrap().attr.size,
            4,
            "the top layer's file"
        );
        assert!(
            view.child(etc, "only-base".as_ref()).is_some(),
            "directories merge"
        );
        assert!(
            view.child(0, "gone".as_ref()).is_none(),
            "the mask hides it"
        );
        let shadowed = view.child(0, "shadowed".as_ref()).unwrap();
        assert_eq!(view.node(shadowed).unwrap().attr.kind, FileType::Directory);
        assert!(view.child(shadowed, "new".as_ref()).is_some());
        let attr = view.node(version).unwrap().attr;
        assert_eq!((attr.perm, attr.blocks, attr.nlink), (0o644, 1, 1));
        // Nothing was read from disk: the file's payload is in no repository.
        assert_eq!(
            view.open(version).unwrap_err().raw_os_error(),
            Some(libc::EIO)
        );
    }
}
