//! Payload files the service's user does not own (a shared repository
//! another user can write) are read whole and hashed before they are
//! served, once per file version: another user could otherwise swap a
//! payload for other bytes of the same size and have our processes (a
//! root service's: anyone's) run them. Files of our own user or root are
//! served as they are (they can change our files anyway); `spfs check
//! --rehash` finds those changed on disk.
//!
//! A version is the file's device, inode, size and change time: writing
//! to it or renaming another over it makes it a new one, verified again
//! at its next open. What is not covered: the owner rewriting the file in
//! place while it is open (the kernel's cache of what was read stays).

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Mutex;

use crate::encoding::{Digest, Hasher};

/// Most versions remembered; past it the memory starts over.
const MAX_REMEMBERED: usize = 100_000;

type Version = (u64, u64, u64, i64, i64);

static VERIFIED: Mutex<Option<HashSet<Version>>> = Mutex::new(None);

/// Whether the service may serve `file` (payload `digest`) as it is: it is
/// ours or root's, or its bytes hash to `digest`.
pub fn may_serve(file: &File, meta: &std::fs::Metadata, digest: &Digest) -> bool {
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() == me || meta.uid() == 0 {
        return true;
    }
    let version = (
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.ctime(),
        meta.ctime_nsec(),
    );
    if remembered()
        .as_ref()
        .is_some_and(|seen| seen.contains(&version))
    {
        return true;
    }
    if hash_of(file).ok() != Some(*digest) {
        return false;
    }
    let mut seen = remembered();
    let seen = seen.get_or_insert_with(HashSet::new);
    if seen.len() >= MAX_REMEMBERED {
        seen.clear();
    }
    seen.insert(version);
    true
}

fn remembered() -> std::sync::MutexGuard<'static, Option<HashSet<Version>>> {
    crate::sync::lock(&VERIFIED)
}

/// The digest of `file`'s bytes, read with `pread` (its offset stays 0).
fn hash_of(file: &File) -> std::io::Result<Digest> {
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let n = file.read_at(&mut buf, offset)?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
}
