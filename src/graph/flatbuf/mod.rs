//! The FlatBuffers encoding of spfs objects (format 1): spfs's schema as
//! constants (union type ids, entry kinds, the vtable slot of every field)
//! and its `Digest` struct, shared by the reading side ([`read`]) and the
//! writing side ([`write`](mod@write)).
//!
//! The eight tables of spfs's schema (AnyObject, Platform, Layer,
//! Annotation, AnnotationString, AnnotationDigest, Manifest, Blob, plus
//! Tree and Entry) are written by hand on top of the `flatbuffers` runtime;
//! no code generation.

pub mod read;
pub mod write;

use flatbuffers::{Follow, InvalidFlatbuffer, SimpleToVerifyInSlice, Verifiable, Verifier};

use crate::encoding::Digest;

/// vtable byte offset of field slot `n`.
pub(crate) const fn slot(n: u16) -> u16 {
    4 + 2 * n
}

// Union type ids of AnyObject.object.
pub(crate) const OBJECT_PLATFORM: u8 = 1;
pub(crate) const OBJECT_LAYER: u8 = 2;
pub(crate) const OBJECT_MANIFEST: u8 = 3;
pub(crate) const OBJECT_BLOB: u8 = 4;
// Union type ids of Annotation.data.
pub(crate) const ANNOTATION_STRING: u8 = 1;
pub(crate) const ANNOTATION_DIGEST: u8 = 2;
// EntryKind values.
pub(crate) const KIND_BLOB: u8 = 0;
pub(crate) const KIND_TREE: u8 = 4;
pub(crate) const KIND_MASK: u8 = 5;

// Field slots, in schema order.
pub(crate) mod vt {
    use super::slot;
    pub const ANY_OBJECT_TYPE: u16 = slot(0);
    pub const ANY_OBJECT: u16 = slot(1);
    pub const PLATFORM_LAYERS: u16 = slot(0);
    pub const LAYER_MANIFEST: u16 = slot(0);
    pub const LAYER_ANNOTATIONS: u16 = slot(1);
    pub const ANNOTATION_KEY: u16 = slot(0);
    pub const ANNOTATION_DATA_TYPE: u16 = slot(1);
    pub const ANNOTATION_DATA: u16 = slot(2);
    pub const ANNOTATION_STRING_DATA: u16 = slot(0);
    pub const ANNOTATION_DIGEST_DIGEST: u16 = slot(0);
    pub const MANIFEST_TREES: u16 = slot(0);
    pub const BLOB_SIZE: u16 = slot(0);
    pub const BLOB_PAYLOAD: u16 = slot(1);
    pub const TREE_ENTRIES: u16 = slot(0);
    pub const ENTRY_KIND: u16 = slot(0);
    pub const ENTRY_OBJECT: u16 = slot(1);
    pub const ENTRY_MODE: u16 = slot(2);
    pub const ENTRY_SIZE: u16 = slot(3);
    pub const ENTRY_NAME: u16 = slot(4);
}

/// The `Digest` struct of the schema: 32 bytes, alignment 1.
#[derive(Clone, Copy, PartialEq)]
#[repr(transparent)]
pub(crate) struct FbDigest(pub [u8; 32]);

impl<'a> Follow<'a> for FbDigest {
    type Inner = Digest;
    unsafe fn follow(buf: &'a [u8], loc: usize) -> Digest {
        // Verified positions always hold 32 bytes; `get` keeps even an
        // unverified one from reading out of bounds (it would give zeros).
        let mut out = [0u8; 32];
        if let Some(bytes) = loc.checked_add(32).and_then(|end| buf.get(loc..end)) {
            out.copy_from_slice(bytes);
        }
        Digest(out)
    }
}

impl Verifiable for FbDigest {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.in_buffer::<Self>(pos)
    }
}

impl SimpleToVerifyInSlice for FbDigest {}

impl flatbuffers::Push for FbDigest {
    type Output = FbDigest;
    unsafe fn push(&self, dst: &mut [u8], _written_len: usize) {
        dst.copy_from_slice(&self.0);
    }
    fn alignment() -> flatbuffers::PushAlignment {
        flatbuffers::PushAlignment::new(1)
    }
}
