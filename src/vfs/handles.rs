//! Open files and directories: what each FUSE handle holds (an open file
//! keeps its view or overlay alive; a directory handle its listing), the
//! table of them, and the replies that make or read one.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use fuser::{
    Errno, FileHandle, FileType, FopenFlags, INodeNo, ReplyData, ReplyDirectory, ReplyOpen,
};

use super::inode::encode;
use super::overlay::Overlay;
use super::shown::Shown;
use super::view::{Content, View};
use crate::sync::lock;

/// What an open file or directory handle holds; it keeps its view alive.
pub enum Handle {
    File {
        _shown: Shown,
        /// The inode it was opened as.
        ino: INodeNo,
        file: Arc<File>,
        /// Set when writes through it go to this editable view.
        writes: Option<Arc<Overlay>>,
    },
    Dir {
        view: Option<Arc<View>>,
        node: u32,
    },
    /// A directory of an editable view: its entries as of opening.
    Listing(Listing),
    /// The mount root: its listing is chosen per `readdir` request, because
    /// macFUSE shares one open root handle between processes.
    Root,
}

/// Entries of a listing as readdir sends them: `.`, `..`, then the names.
pub type Listing = Vec<(INodeNo, FileType, OsString)>;

/// Open handles by number; shared with `open`s running on the blocking pool.
#[derive(Default)]
pub struct Handles {
    table: Mutex<HashMap<u64, Handle>>,
    next: AtomicU64,
}

impl Handles {
    pub fn lock(&self) -> MutexGuard<'_, HashMap<u64, Handle>> {
        lock(&self.table)
    }

    pub fn add(&self, handle: Handle) -> FileHandle {
        // Handle numbers start at 1.
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.lock().insert(fh, handle);
        FileHandle(fh)
    }

    pub fn remove(&self, fh: FileHandle) {
        self.lock().remove(&fh.0);
    }

    /// The open file of handle `fh`, if it is one.
    pub fn file(&self, fh: FileHandle) -> Option<Arc<File>> {
        match self.lock().get(&fh.0) {
            Some(Handle::File { file, .. }) => Some(Arc::clone(file)),
            _ => None,
        }
    }

    /// The open file of handle `fh` and the overlay it writes to, if it
    /// was opened for writing.
    pub fn writer(&self, fh: FileHandle) -> Option<(Arc<File>, Arc<Overlay>)> {
        match self.lock().get(&fh.0) {
            Some(Handle::File {
                file,
                writes: Some(overlay),
                ..
            }) => Some((Arc::clone(file), Arc::clone(overlay))),
            _ => None,
        }
    }

    /// An open file of inode `ino`: handle `fh` if it is one, else any
    /// (`writable`: one that writes to an editable view).
    pub fn file_of(
        &self,
        ino: INodeNo,
        fh: Option<FileHandle>,
        writable: bool,
    ) -> Option<Arc<File>> {
        let handles = self.lock();
        let fits = |handle: &Handle| match handle {
            Handle::File {
                ino: opened,
                file,
                writes,
                ..
            } if *opened == ino && (writes.is_some() || !writable) => Some(Arc::clone(file)),
            _ => None,
        };
        if let Some(found) = fh.and_then(|fh| handles.get(&fh.0)).and_then(fits) {
            return Some(found);
        }
        handles.values().find_map(fits)
    }
}

/// `size` bytes at `offset` (fewer at end of file), or the error, as the reply.
pub fn read_into_reply(file: &File, offset: u64, size: u32, reply: ReplyData) {
    let mut buffer = vec![0u8; size as usize];
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read_at(&mut buffer[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return reply.error(Errno::from(err)),
        }
    }
    reply.data(&buffer[..filled]);
}

/// Opens a layer file and replies with a new handle for it.
pub fn open_into_reply(handles: &Handles, view: Arc<View>, node: u32, reply: ReplyOpen) {
    match view.open(node) {
        Ok(file) => {
            let fh = handles.add(Handle::File {
                ino: encode(view.id, node),
                _shown: Shown::View(view),
                file: Arc::new(file),
                writes: None,
            });
            // Views never change, so the page cache stays valid across opens.
            reply.opened(fh, FopenFlags::FOPEN_KEEP_CACHE);
        }
        Err(err) => reply.error(Errno::from(err)),
    }
}

/// Opens a file of an editable view (copying it up when opened for
/// writing) and replies with a new handle for it.
pub fn open_overlay_into_reply(
    handles: &Handles,
    overlay: Arc<Overlay>,
    node: u32,
    flags: i32,
    reply: ReplyOpen,
) {
    match overlay.open(node, flags) {
        Ok(opened) => {
            let writes = opened.writable.then(|| Arc::clone(&overlay));
            let file = Arc::new(opened.file);
            let fh = handles.add(Handle::File {
                ino: encode(overlay.id, node),
                _shown: Shown::Overlay(overlay),
                file,
                writes,
            });
            // Its contents change only through this kernel (writes update
            // the page cache; a copy-up keeps the same bytes), and what the
            // service changes itself comes as a new inode: the page cache
            // stays valid across opens.
            reply.opened(fh, FopenFlags::FOPEN_KEEP_CACHE);
        }
        Err(errno) => reply.error(errno),
    }
}

/// `.` (inode `ino`) and `..` (the mount root), as every listing starts.
fn dots(ino: INodeNo) -> [(INodeNo, FileType, &'static OsStr); 2] {
    [
        (ino, FileType::Directory, OsStr::new(".")),
        (INodeNo::ROOT, FileType::Directory, OsStr::new("..")),
    ]
}

/// Directory `dir` of an editable view, listed now; its inode is `ino`.
pub fn overlay_listing(overlay: &Overlay, dir: u32, ino: INodeNo) -> Result<Listing, Errno> {
    let mut entries: Listing = dots(ino)
        .into_iter()
        .map(|(ino, kind, name)| (ino, kind, name.to_owned()))
        .collect();
    for listed in overlay.list(dir)? {
        entries.push((encode(overlay.id, listed.node), listed.kind, listed.name));
    }
    Ok(entries)
}

/// Replies with a listing's entries from `offset` on, as many as fit.
pub fn reply_listing(entries: &Listing, offset: u64, reply: ReplyDirectory) {
    let borrowed = entries
        .iter()
        .map(|(ino, kind, name)| (*ino, *kind, name.as_os_str()));
    reply_entries(borrowed, offset, reply);
}

/// Replies with directory `node` of `view` (none: the empty root) from
/// `offset` on; its inode is `ino`. The names are the view's own (a walk
/// lists every directory: nothing is copied).
pub fn reply_view_listing(
    view: Option<&View>,
    node: u32,
    ino: INodeNo,
    offset: u64,
    reply: ReplyDirectory,
) {
    let children = view.and_then(|view| match view.node(node).map(|n| &n.content) {
        Some(Content::Dir(children)) => Some((view, children)),
        _ => None,
    });
    let entries = children.into_iter().flat_map(|(view, children)| {
        children.iter().map(move |(name, child)| {
            let kind = view.node(*child).expect("child node").attr.kind;
            (encode(view.id, *child), kind, name.as_os_str())
        })
    });
    reply_entries(dots(ino).into_iter().chain(entries), offset, reply);
}

/// Replies with `entries` from `offset` on, as many as fit.
fn reply_entries<'a>(
    entries: impl Iterator<Item = (INodeNo, FileType, &'a OsStr)>,
    offset: u64,
    mut reply: ReplyDirectory,
) {
    for (index, (ino, kind, name)) in entries.enumerate().skip(offset as usize) {
        if reply.add(ino, index as u64 + 1, kind, name) {
            break;
        }
    }
    reply.ok();
}
