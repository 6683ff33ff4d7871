//! The spfs object graph: Platform -> Layer -> Manifest -> (Tree) -> Blob,
//! as owned Rust values, with the 17-byte object header and the two body
//! encodings (legacy binary in [`legacy`], FlatBuffers in [`flatbuf`]).
//!
//! Digests are computed as spfs computes them: a Blob's digest is its
//! payload's; the others hash the legacy encoding, prefixed by a salt and the
//! kind byte under [`DigestStrategy::WithKindAndSalt`].

pub mod flatbuf;
pub mod legacy;
pub mod mode;

use crate::encoding::{Digest, EncodingError, Hasher};

/// The first 9 bytes of every object file.
pub const HEADER_PREFIX: &[u8; 9] = b"--SPFS--\n";
/// Prefix plus 8 bytes of fields.
pub const HEADER_SIZE: usize = 17;
/// Hashed before the kind byte and the legacy encoding under the salted strategy.
pub const DIGEST_SALT: &[u8] = b"spfs digest da8d8e62-9459-11ee-adab-00155dcb338b\0";

/// The kind of object stored in a file (header byte 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    Blob = 0,
    Manifest = 1,
    Layer = 2,
    Platform = 3,
}

impl ObjectKind {
    pub fn from_u8(value: u8) -> Option<ObjectKind> {
        Some(match value {
            0 => ObjectKind::Blob,
            1 => ObjectKind::Manifest,
            2 => ObjectKind::Layer,
            3 => ObjectKind::Platform,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::Blob => "blob",
            ObjectKind::Manifest => "manifest",
            ObjectKind::Layer => "layer",
            ObjectKind::Platform => "platform",
        }
    }
}

/// How the body after the header is encoded (header byte 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EncodingFormat {
    Legacy = 0,
    FlatBuffers = 1,
}

/// How the digest of an object is computed (header byte 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DigestStrategy {
    Legacy = 0,
    WithKindAndSalt = 1,
}

/// The decoded header of an object file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub strategy: DigestStrategy,
    pub format: EncodingFormat,
    pub kind: ObjectKind,
}

impl Header {
    /// Read the header at the start of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Header, EncodingError> {
        if bytes.len() < HEADER_SIZE {
            return Err(EncodingError::InvalidObject(format!(
                "{} bytes is too short for the {HEADER_SIZE}-byte object header",
                bytes.len()
            )));
        }
        if &bytes[..9] != HEADER_PREFIX {
            return Err(EncodingError::InvalidObject(
                "it does not start with the --SPFS-- object header".into(),
            ));
        }
        let strategy = match bytes[9] {
            0 => DigestStrategy::Legacy,
            1 => DigestStrategy::WithKindAndSalt,
            n => {
                return Err(EncodingError::InvalidObject(format!(
                    "unknown digest strategy {n} (a newer spfs may have written it)"
                )))
            }
        };
        let format = match bytes[10] {
            0 => EncodingFormat::Legacy,
            1 => EncodingFormat::FlatBuffers,
            n => {
                return Err(EncodingError::InvalidObject(format!(
                    "unknown encoding format {n} (a newer spfs may have written it)"
                )))
            }
        };
        if bytes[11..16].iter().any(|b| *b != 0) {
            return Err(EncodingError::InvalidObject(
                "reserved header bytes 2..7 are not zero".into(),
            ));
        }
        let kind = ObjectKind::from_u8(bytes[16]).ok_or_else(|| {
            EncodingError::InvalidObject(format!("unknown object kind {}", bytes[16]))
        })?;
        Ok(Header {
            strategy,
            format,
            kind,
        })
    }

    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut out = [0u8; HEADER_SIZE];
        out[..9].copy_from_slice(HEADER_PREFIX);
        out[9] = self.strategy as u8;
        out[10] = self.format as u8;
        out[16] = self.kind as u8;
        out
    }
}

/// An ordered stack of layers (and other platforms).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Platform {
    /// Bottom-up: the last one is on top.
    pub layers: Vec<Digest>,
}

/// One layer: a manifest and/or annotations.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Layer {
    pub manifest: Option<Digest>,
    pub annotations: Vec<Annotation>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Annotation {
    pub key: String,
    pub value: AnnotationValue,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnnotationValue {
    String(String),
    Blob(Digest),
}

/// A directory tree, flattened to its distinct trees.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Manifest {
    /// `trees[0]` is the root; the others are unique by digest.
    pub trees: Vec<Tree>,
}

/// One directory's entries.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Tree {
    pub entries: Vec<Entry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: EntryKind,
    /// A blob's payload digest, a child tree's digest, or NULL for a mask.
    pub object: Digest,
    /// The full `st_mode`, file type bits included.
    pub mode: u32,
    pub size: u64,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    Blob,
    Tree,
    Mask,
}

impl EntryKind {
    /// The text of the legacy encoding.
    pub fn as_text(self) -> &'static str {
        match self {
            EntryKind::Blob => "file",
            EntryKind::Tree => "tree",
            EntryKind::Mask => "mask",
        }
    }
}

/// A file's contents by digest, and its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blob {
    pub payload: Digest,
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    Platform(Platform),
    Layer(Layer),
    Manifest(Manifest),
    Blob(Blob),
}

impl Object {
    /// Decode a whole object file: header and body, any of the four
    /// format/strategy combinations. Never panics; corrupt input is an
    /// [`EncodingError::InvalidObject`].
    pub fn decode(bytes: &[u8]) -> Result<(Header, Object), EncodingError> {
        let header = Header::parse(bytes)?;
        let body = &bytes[HEADER_SIZE..];
        let object = match header.format {
            EncodingFormat::Legacy => legacy::decode_body(header.kind, body)?,
            EncodingFormat::FlatBuffers => flatbuf::read::decode_body(body)?,
        };
        if object.kind() != header.kind {
            return Err(EncodingError::InvalidObject(format!(
                "the header says {} but the body holds a {}",
                header.kind.name(),
                object.kind().name()
            )));
        }
        Ok((header, object))
    }

    /// Encode header and body.
    pub fn encode(&self, format: EncodingFormat, strategy: DigestStrategy) -> Vec<u8> {
        let header = Header {
            strategy,
            format,
            kind: self.kind(),
        };
        let mut out = header.to_bytes().to_vec();
        match format {
            EncodingFormat::Legacy => legacy::encode_body(self, &mut out),
            EncodingFormat::FlatBuffers => {
                out.extend_from_slice(&flatbuf::write::encode_body(self))
            }
        }
        out
    }

    /// The digest spfs gives this object under `strategy`.
    pub fn digest(&self, strategy: DigestStrategy) -> Digest {
        if let Object::Blob(blob) = self {
            return blob.payload;
        }
        let mut hasher = Hasher::new();
        if strategy == DigestStrategy::WithKindAndSalt {
            hasher.update(DIGEST_SALT);
            hasher.update(&[self.kind() as u8]);
        }
        let mut body = Vec::new();
        legacy::encode_digest_body(self, &mut body);
        hasher.update(&body);
        hasher.finish()
    }

    pub fn kind(&self) -> ObjectKind {
        match self {
            Object::Platform(_) => ObjectKind::Platform,
            Object::Layer(_) => ObjectKind::Layer,
            Object::Manifest(_) => ObjectKind::Manifest,
            Object::Blob(_) => ObjectKind::Blob,
        }
    }

    /// The objects this one refers to (not payloads).
    pub fn child_objects(&self) -> Vec<Digest> {
        match self {
            Object::Platform(p) => p.layers.clone(),
            Object::Layer(l) => {
                let mut out: Vec<Digest> = l.manifest.into_iter().collect();
                out.extend(l.annotations.iter().filter_map(|a| match a.value {
                    AnnotationValue::Blob(d) => Some(d),
                    AnnotationValue::String(_) => None,
                }));
                out
            }
            Object::Manifest(m) => {
                let mut out: Vec<Digest> = m
                    .trees
                    .iter()
                    .flat_map(|t| t.entries.iter())
                    .filter(|e| e.kind == EntryKind::Blob)
                    .map(|e| e.object)
                    .collect();
                out.sort();
                out.dedup();
                out
            }
            Object::Blob(_) => Vec::new(),
        }
    }
}

impl Tree {
    /// The tree's digest: SHA-256 of its legacy encoding with the entries
    /// sorted by name, never salted. A Tree entry's `object` is this.
    pub fn digest(&self) -> Digest {
        let mut out = Vec::new();
        legacy::encode_tree(self, &mut out);
        Digest::of(&out)
    }
}

impl Manifest {
    /// The root tree (an empty tree if there is none).
    pub fn root(&self) -> Option<&Tree> {
        self.trees.first()
    }
}

#[cfg(test)]
mod tests;
