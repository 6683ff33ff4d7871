//! Objects and payloads of an [`FsRepository`]: reading (verified against
//! the digest in the file name), writing (temp file, fsync, rename,
//! deduplicated), partial-digest lookup and listing.

use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use super::{create_new, make_dirs, temp_name, write_atomic, FsRepository};
use crate::encoding::{Digest, Hasher, PartialDigest};
use crate::graph::{Blob, DigestStrategy, EncodingFormat, Object};
use crate::storage::error::StorageError;

/// Object files larger than this are refused rather than read into memory.
const MAX_OBJECT_SIZE: u64 = 1 << 30;

impl FsRepository {
    /// Read, decode and verify an object: its contents must hash, with the
    /// strategy its header names, to the digest it is stored under.
    pub fn read_object(&self, digest: &Digest) -> Result<Object, StorageError> {
        let path = self.object_path(digest);
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(StorageError::UnknownObject(*digest))
            }
            Err(e) => return Err(StorageError::io("open", path, e)),
        };
        let mut bytes = Vec::new();
        (&mut file)
            .take(MAX_OBJECT_SIZE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| StorageError::io("read", &path, e))?;
        if bytes.len() as u64 > MAX_OBJECT_SIZE {
            return Err(StorageError::corrupt(
                &path,
                format!("it is larger than {MAX_OBJECT_SIZE} bytes"),
            ));
        }
        self.decode_verified(digest, &path, &bytes)
    }

    /// Decode the bytes of object file `path` and check them against
    /// `digest` (and a Blob's size against its payload, when present).
    pub(crate) fn decode_verified(
        &self,
        digest: &Digest,
        path: &Path,
        bytes: &[u8],
    ) -> Result<Object, StorageError> {
        let (header, object) =
            Object::decode(bytes).map_err(|e| StorageError::from(e).in_file(path))?;
        let actual = object.digest(header.strategy);
        if actual != *digest {
            return Err(StorageError::corrupt(
                path,
                format!(
                    "its contents hash to {actual}, not to the digest in its name ({:?} strategy)",
                    header.strategy
                ),
            ));
        }
        if let Object::Blob(blob) = &object {
            // A blob's digest does not cover its size: check it against the
            // payload when this repository has it.
            if let Ok(meta) = std::fs::metadata(self.payload_path(digest)) {
                if meta.len() != blob.size {
                    return Err(StorageError::corrupt(
                        path,
                        format!(
                            "it says the payload has {} bytes, but it has {}",
                            blob.size,
                            meta.len()
                        ),
                    ));
                }
            }
        }
        Ok(object)
    }

    pub fn has_object(&self, digest: &Digest) -> bool {
        self.object_path(digest).is_file()
    }

    /// Store an object as spfs 0.44 does by default (FlatBuffers, salted
    /// digest). Writing an object that is already there does nothing.
    pub fn write_object(&self, object: &Object) -> Result<Digest, StorageError> {
        let strategy = DigestStrategy::WithKindAndSalt;
        let digest = object.digest(strategy);
        let path = self.object_path(&digest);
        if path.is_file() {
            return Ok(digest);
        }
        let bytes = object.encode(EncodingFormat::FlatBuffers, strategy);
        write_atomic(&self.objects_dir().join("work"), &path, &bytes)?;
        Ok(digest)
    }

    pub fn has_payload(&self, digest: &Digest) -> bool {
        self.payload_path(digest).is_file()
    }

    pub fn open_payload(&self, digest: &Digest) -> Result<std::fs::File, StorageError> {
        let path = self.payload_path(digest);
        match std::fs::File::open(&path) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(StorageError::UnknownPayload(*digest)),
            Err(e) => Err(StorageError::io("open", path, e)),
        }
    }

    /// Copy `reader` into the payload store, hashing as it goes. Returns
    /// the digest and the size; a payload already stored is kept as is.
    pub fn write_payload(&self, reader: &mut dyn Read) -> Result<(Digest, u64), StorageError> {
        let work = self.payloads_dir().join("work");
        make_dirs(&work)?;
        let temp = temp_name(&work, "payload");
        let result = copy_hashing(reader, &temp);
        let (digest, size) = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                return Err(e);
            }
        };
        let target = self.payload_path(&digest);
        if target.is_file() {
            let _ = std::fs::remove_file(&temp);
            return Ok((digest, size));
        }
        if let Some(parent) = target.parent() {
            make_dirs(parent)?;
        }
        std::fs::rename(&temp, &target).map_err(|e| {
            let _ = std::fs::remove_file(&temp);
            StorageError::io("rename into place", &target, e)
        })?;
        Ok((digest, size))
    }

    /// Store a payload and its Blob object (spfs keeps both).
    pub fn write_blob(&self, reader: &mut dyn Read) -> Result<Digest, StorageError> {
        let (payload, size) = self.write_payload(reader)?;
        self.write_object(&Object::Blob(Blob { payload, size }))?;
        Ok(payload)
    }

    /// Store in-memory bytes as a payload and Blob object (symlink targets,
    /// small files): skips the temp file when the payload is already there.
    pub fn write_blob_bytes(&self, bytes: &[u8]) -> Result<Digest, StorageError> {
        let payload = Digest::of(bytes);
        let path = self.payload_path(&payload);
        if !path.is_file() {
            write_atomic(&self.payloads_dir().join("work"), &path, bytes)?;
        }
        self.write_object(&Object::Blob(Blob {
            payload,
            size: bytes.len() as u64,
        }))?;
        Ok(payload)
    }

    /// The objects whose digest starts with `partial` (sorted). Payloads
    /// need no search of their own: every payload has a Blob object.
    pub fn find_digests(&self, partial: &PartialDigest) -> Result<Vec<Digest>, StorageError> {
        let prefix = partial.as_str();
        let base = self.objects_dir();
        let folders: Vec<String> = if prefix.len() >= 2 {
            vec![prefix[..2].to_string()]
        } else {
            list_folders(&base)?
        };
        let mut found = Vec::new();
        for folder in folders {
            let dir = base.join(&folder);
            for name in list_names(&dir)? {
                let text = format!("{folder}{name}");
                if text.starts_with(prefix) {
                    if let Ok(d) = Digest::parse(&text) {
                        found.push(d);
                    }
                }
            }
        }
        found.sort();
        Ok(found)
    }

    /// Every object digest in the repository. A file whose name is not a
    /// digest is reported as an error item (naming it) and skipped.
    pub fn iter_objects(&self) -> impl Iterator<Item = Result<Digest, StorageError>> {
        iter_store(self.objects_dir())
    }

    /// Every payload digest in the repository.
    pub fn iter_payloads(&self) -> impl Iterator<Item = Result<Digest, StorageError>> {
        iter_store(self.payloads_dir())
    }
}

fn copy_hashing(reader: &mut dyn Read, temp: &Path) -> Result<(Digest, u64), StorageError> {
    let mut file = create_new(temp)?;
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        if crate::interrupt::requested() {
            return Err(StorageError::Interrupted);
        }
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(StorageError::io("read the data being stored into", temp, e)),
        };
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .map_err(|e| StorageError::io("write", temp, e))?;
        size += n as u64;
        crate::test_hooks::pause("payload.writing");
    }
    file.sync_all()
        .map_err(|e| StorageError::io("fsync", temp, e))?;
    Ok((hasher.finish(), size))
}

/// The two-character folders of a store (not `work`).
fn list_folders(base: &Path) -> Result<Vec<String>, StorageError> {
    let mut out: Vec<String> = list_names(base)?
        .into_iter()
        .filter(|n| n.len() == 2 && n != "work")
        .collect();
    out.sort();
    Ok(out)
}

fn list_names(dir: &Path) -> Result<Vec<String>, StorageError> {
    let read = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StorageError::io("list", dir, e)),
    };
    let mut names = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| StorageError::io("list", dir, e))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

fn iter_store(base: PathBuf) -> impl Iterator<Item = Result<Digest, StorageError>> {
    let folders = match list_folders(&base) {
        Ok(f) => f,
        Err(e) => return vec![Err(e)].into_iter(),
    };
    let mut out = Vec::new();
    for folder in folders {
        let dir = base.join(&folder);
        match list_names(&dir) {
            Err(e) => out.push(Err(e)),
            Ok(mut names) => {
                names.sort();
                for name in names {
                    let path = dir.join(&name);
                    match Digest::parse(&format!("{folder}{name}")) {
                        Ok(d) => out.push(Ok(d)),
                        Err(_) => out.push(Err(StorageError::corrupt(
                            path,
                            "its name is not a digest (a stray file in the store)",
                        ))),
                    }
                }
            }
        }
    }
    out.into_iter()
}
