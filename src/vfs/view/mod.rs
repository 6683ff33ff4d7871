//! Views: the immutable merged tree of one env spec, built once at `Mount`.
//!
//! Layers are spfs manifests (from a repository) or directories on disk.
//! Directories present in several layers are merged; anything else comes from
//! the top-most layer that has the path and hides whatever lies below it (a
//! directory above a file hides the file); a mask (an spfs deletion) hides
//! the path and everything below it. Nodes are numbered by their index; index
//! 0 is the view's root. Building (`build`) reads manifests only: file
//! contents stay in the repositories' payload files and are opened on first
//! use; directory layers are walked safely ([`disk`]).

mod build;
pub mod disk;
mod trust;

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};
use nix::sys::stat::FileStat;

use crate::encoding::Digest;
use crate::graph;
use crate::storage::proxy::ProxyRepository;
use crate::tracking::env_spec::{EnvSpec, Layer};
pub use build::{Budget, BuildError};
use disk::DiskFile;

pub struct View {
    pub id: u64,
    /// What it shows, for logs.
    pub spec: EnvSpec,
    nodes: Vec<Node>,
    /// Where payloads are read from, in order.
    repos: Arc<ProxyRepository>,
    /// Entries of directory layers that could not be read at `Mount`.
    pub unreadable: u64,
}

pub struct Node {
    pub attr: FileAttr,
    pub content: Content,
}

pub enum Content {
    /// Children sorted by name: (name, node index).
    Dir(Vec<(OsString, u32)>),
    /// A file of a directory layer.
    File(Box<DiskFile>),
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
    /// Builds the merged tree of `layers` (bottom to top), within `budget`.
    /// Blocking I/O for directory layers only; manifest layers are already
    /// in memory.
    pub fn build(
        id: u64,
        spec: EnvSpec,
        layers: &[Layer],
        repos: Arc<ProxyRepository>,
        budget: &Budget,
    ) -> Result<View, BuildError> {
        let (nodes, unreadable) = build::build(layers, budget)?;
        Ok(View {
            id,
            spec,
            nodes,
            repos,
            unreadable,
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

    /// The names in the directory at `path` (components below the root),
    /// or none when no directory is there.
    pub fn names_in(&self, path: &[&str]) -> Vec<OsString> {
        let mut node = 0;
        for name in path {
            match self.child(node, OsStr::new(name)) {
                Some(child) => node = child,
                None => return Vec::new(),
            }
        }
        match &self.nodes[node as usize].content {
            Content::Dir(children) => children.iter().map(|(name, _)| name.clone()).collect(),
            _ => Vec::new(),
        }
    }

    /// Opens the file behind a file node for reading. Nothing is followed
    /// through a symlink and nothing blocks (a FIFO put in a file's place
    /// never hangs us); the file must still be the regular file `Mount` saw
    /// (for a payload: of the size the manifest records). Anything else is an
    /// I/O error and a log line.
    pub fn open(&self, node: u32) -> std::io::Result<File> {
        let node = self
            .node(node)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ESTALE))?;
        match &node.content {
            Content::File(file) => file.open().map_err(|err| {
                tracing::warn!(
                    event = "service.layer_file_refused",
                    path = %file.root.join(&file.relative).display(),
                    error = %err,
                    "refused to open a file of a directory layer"
                );
                std::io::Error::from_raw_os_error(libc::EIO)
            }),
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
            if !trust::may_serve(&file, &meta, digest) {
                tracing::warn!(event = "service.payload_unreadable", digest = %digest, path = %path.display(), error = "another user's file whose contents do not hash to its name", "refused a payload");
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
            env_spec = %self.spec,
            nodes = self.nodes.len() as u64,
            "view freed"
        );
        drop(std::mem::take(&mut self.nodes));
        crate::platform::release_free_memory();
    }
}

fn time(seconds: i64, nanos: i64) -> SystemTime {
    if seconds >= 0 {
        UNIX_EPOCH + Duration::new(seconds as u64, nanos.clamp(0, 999_999_999) as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(seconds.unsigned_abs())
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

/// Attributes as on disk; `ino` is filled in per reply. The field types of
/// `stat` differ between Linux and macOS, hence the casts.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn attr_of(stat: &FileStat) -> FileAttr {
    let mode = stat.st_mode as u32;
    FileAttr {
        ino: INodeNo(0),
        size: stat.st_size as u64,
        blocks: stat.st_blocks as u64,
        atime: time(stat.st_atime as i64, stat.st_atime_nsec as i64),
        mtime: time(stat.st_mtime as i64, stat.st_mtime_nsec as i64),
        ctime: time(stat.st_ctime as i64, stat.st_ctime_nsec as i64),
        crtime: time(stat.st_mtime as i64, stat.st_mtime_nsec as i64),
        kind: kind_of_mode(mode),
        perm: (mode & 0o7777) as u16,
        nlink: stat.st_nlink as u32,
        uid: stat.st_uid,
        gid: stat.st_gid,
        rdev: stat.st_rdev as u32,
        flags: 0,
        blksize: stat.st_blksize as u32,
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
        // Writable, so the kernel lets an editable runtime's processes
        // create in its root; read-only runtimes answer EROFS themselves.
        perm: 0o755,
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
    use crate::graph::{Entry, EntryKind, Manifest, Tree};

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
        let view = View::build(
            1,
            EnvSpec::empty(),
            &[base, top],
            empty,
            &Budget::unlimited(),
        )
        .unwrap();
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

    /// `depth` directories `d/d/d/...`, each its own tree.
    fn nested(depth: usize) -> Layer {
        let mut trees = vec![Tree::default()];
        for _ in 0..depth {
            let below = trees.last().unwrap();
            trees.push(Tree {
                entries: vec![dir("d", below)],
            });
        }
        trees.reverse();
        layer(trees)
    }

    /// Found checking the decoders of untrusted files (item 19): the view is
    /// built recursively, and on the service's 2 MiB blocking threads a
    /// manifest 5,000 directories deep (315 KB) overflowed the stack, which
    /// aborts the whole service with every runtime in it. Now the build
    /// runs on a thread with room for `MAX_DEPTH` levels, and deeper is an
    /// error naming the limit.
    #[test]
    fn a_manifest_nested_deeper_than_max_depth_is_refused_without_overflowing() {
        let build = |layer: Layer| {
            // as the service calls it: from a thread with a 2 MiB stack
            std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || {
                    let empty = Arc::new(ProxyRepository::from_repositories(vec![]));
                    View::build(1, EnvSpec::empty(), &[layer], empty, &Budget::unlimited())
                        .map(|view| view.len())
                })
                .unwrap()
                .join()
                .unwrap()
        };
        assert_eq!(
            build(nested(crate::tracking::manifest::MAX_DEPTH)).unwrap(),
            crate::tracking::manifest::MAX_DEPTH + 1
        );
        for depth in [crate::tracking::manifest::MAX_DEPTH + 1, 20_000] {
            let err = build(nested(depth)).unwrap_err().to_string();
            assert!(err.contains("deeper than 1024 levels"), "{depth}: {err}");
        }
    }
}
