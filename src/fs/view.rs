//! Views: the immutable merged tree of one env spec, built once at `Mount`.
//!
//! Directories present in several layers are merged; a file, symlink or
//! other non-directory comes from the top-most layer that has the path, and
//! hides whatever lies below it (a directory above a file hides the file).
//! Attributes (type, mode, owner, size, times, symlink targets) are those on
//! disk. Nodes are numbered by their index; index 0 is the view's root.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

pub struct View {
    pub id: u64,
    pub spec: String,
    nodes: Vec<Node>,
}

pub struct Node {
    pub attr: FileAttr,
    pub content: Content,
}

pub enum Content {
    /// Children sorted by name: (name, node index).
    Dir(Vec<(OsString, u32)>),
    /// The file in its layer, opened for reads.
    File(PathBuf),
    Symlink(PathBuf),
    /// FIFOs, sockets, devices: attributes only.
    Special,
}

impl View {
    /// Builds the merged tree of `layers` (bottom to top). Blocking I/O.
    pub fn build(id: u64, spec: String, layers: &[PathBuf]) -> std::io::Result<View> {
        let mut nodes = Vec::new();
        if layers.is_empty() {
            nodes.push(Node {
                attr: empty_root_attr(),
                content: Content::Dir(Vec::new()),
            });
        } else {
            let roots: Vec<(PathBuf, Metadata)> = layers
                .iter()
                .map(|p| std::fs::metadata(p).map(|m| (p.clone(), m)))
                .collect::<std::io::Result<_>>()?;
            build_dir(&roots, &mut nodes);
        }
        Ok(View { id, spec, nodes })
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
    pub fn child(&self, dir: u32, name: &std::ffi::OsStr) -> Option<u32> {
        match &self.node(dir)?.content {
            Content::Dir(children) => children
                .binary_search_by(|(n, _)| n.as_os_str().cmp(name))
                .ok()
                .map(|i| children[i].1),
            _ => None,
        }
    }
}

impl Drop for View {
    fn drop(&mut self) {
        // The last route or open handle let go of it.
        tracing::info!(
            event = "service.view_freed",
            view_id = self.id,
            env_spec = self.spec.as_str(),
            nodes = self.nodes.len() as u64,
            "view freed"
        );
    }
}

/// Merges directories `sources` (bottom to top) into a new node; returns its index.
fn build_dir(sources: &[(PathBuf, Metadata)], nodes: &mut Vec<Node>) -> u32 {
    let index = nodes.len() as u32;
    let (_, top_meta) = sources.last().expect("at least one source");
    nodes.push(Node {
        attr: attr_of(top_meta),
        content: Content::Dir(Vec::new()),
    });
    // name -> every layer's entry for it, bottom to top.
    let mut entries: BTreeMap<OsString, Vec<(PathBuf, Metadata)>> = BTreeMap::new();
    for (dir, _) in sources {
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
                    .push((path, meta));
            }
        }
    }
    let mut children = Vec::with_capacity(entries.len());
    for (name, candidates) in entries {
        // The top-most entry decides; a directory merges with the directories
        // directly beneath it, down to the first non-directory.
        let merged: Vec<(PathBuf, Metadata)> = candidates
            .iter()
            .rev()
            .take_while(|(_, m)| m.is_dir())
            .cloned()
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let child = if merged.is_empty() {
            let (path, meta) = candidates.into_iter().next_back().expect("non-empty");
            leaf(path, &meta, nodes)
        } else {
            build_dir(&merged, nodes)
        };
        children.push((name, child));
    }
    nodes[index as usize].content = Content::Dir(children);
    index
}

fn leaf(path: PathBuf, meta: &Metadata, nodes: &mut Vec<Node>) -> u32 {
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
    nodes.push(Node {
        attr: attr_of(meta),
        content,
    });
    (nodes.len() - 1) as u32
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
    use std::os::unix::fs::symlink;
    use std::path::Path;

    #[test]
    fn upper_layers_win_and_directories_merge() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base");
        let app = tmp.path().join("app");
        std::fs::create_dir_all(base.join("etc")).unwrap();
        std::fs::create_dir_all(app.join("etc")).unwrap();
        std::fs::write(base.join("etc/version"), "base").unwrap();
        std::fs::write(app.join("etc/version"), "app").unwrap();
        std::fs::write(base.join("etc/only-base"), "").unwrap();
        std::fs::create_dir_all(base.join("shadowed")).unwrap();
        std::fs::write(base.join("shadowed/inside"), "").unwrap();
        std::fs::write(app.join("shadowed"), "now a file").unwrap();
        symlink("etc/version", app.join("link")).unwrap();

        let view = View::build(1, "base+app".into(), &[base.clone(), app.clone()]).unwrap();
        let etc = view.child(0, "etc".as_ref()).unwrap();
        let version = view.child(etc, "version".as_ref()).unwrap();
        assert!(
            matches!(&view.node(version).unwrap().content, Content::File(p) if p == &app.join("etc/version"))
        );
        assert!(view.child(etc, "only-base".as_ref()).is_some());
        let shadowed = view.child(0, "shadowed".as_ref()).unwrap();
        assert!(matches!(
            view.node(shadowed).unwrap().content,
            Content::File(_)
        ));
        let link = view.child(0, "link".as_ref()).unwrap();
        assert!(
            matches!(&view.node(link).unwrap().content, Content::Symlink(t) if t == Path::new("etc/version"))
        );
    }
}
