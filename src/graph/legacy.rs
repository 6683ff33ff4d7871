//! The legacy binary encoding of spfs objects (format 0): big-endian u64s,
//! raw 32-byte digests, NUL-terminated UTF-8 strings. Digests of Platform,
//! Layer and Manifest objects are computed over this encoding whatever the
//! file's format, so the encoder here is also the digest encoder.

use super::{
    Annotation, AnnotationValue, Blob, Entry, EntryKind, Layer, Manifest, Object, ObjectKind,
    Platform, Tree,
};
use crate::encoding::{write, EncodingError, Reader};

/// Smallest legacy entry: digest, "tree\0", mode, size, "\0".
const MIN_ENTRY: usize = 32 + 5 + 8 + 8 + 1;
/// Smallest legacy tree: its entry count.
const MIN_TREE: usize = 8;

/// Annotation value kinds in the digest encoding.
const ANNOTATION_STRING: u8 = 1;
const ANNOTATION_BLOB: u8 = 2;

/// The body of a legacy object file.
pub fn encode_body(object: &Object, out: &mut Vec<u8>) {
    match object {
        Object::Blob(blob) => {
            write::digest(out, &blob.payload);
            write::u64_be(out, blob.size);
        }
        other => encode_digest_body(other, out),
    }
}

/// What the digest of a Platform, Layer or Manifest is computed over.
pub fn encode_digest_body(object: &Object, out: &mut Vec<u8>) {
    match object {
        Object::Platform(platform) => {
            write::u64_be(out, platform.layers.len() as u64);
            for layer in platform.layers.iter().rev() {
                write::digest(out, layer);
            }
        }
        Object::Layer(layer) => {
            if let Some(manifest) = &layer.manifest {
                write::digest(out, manifest);
            }
            for annotation in &layer.annotations {
                write::cstr(out, &annotation.key);
                match &annotation.value {
                    AnnotationValue::String(text) => {
                        out.push(ANNOTATION_STRING);
                        write::cstr(out, text);
                    }
                    AnnotationValue::Blob(digest) => {
                        out.push(ANNOTATION_BLOB);
                        write::digest(out, digest);
                    }
                }
            }
        }
        Object::Manifest(manifest) => {
            // The root tree, the number of other trees, the other trees.
            let empty = Tree::default();
            encode_tree(manifest.trees.first().unwrap_or(&empty), out);
            let others = manifest.trees.get(1..).unwrap_or(&[]);
            write::u64_be(out, others.len() as u64);
            for tree in others {
                encode_tree(tree, out);
            }
        }
        Object::Blob(blob) => {
            write::digest(out, &blob.payload);
            write::u64_be(out, blob.size);
        }
    }
}

/// A tree's legacy encoding: its entries sorted by name.
pub fn encode_tree(tree: &Tree, out: &mut Vec<u8>) {
    let mut entries: Vec<&Entry> = tree.entries.iter().collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    write::u64_be(out, entries.len() as u64);
    for entry in entries {
        write::digest(out, &entry.object);
        write::cstr(out, entry.kind.as_text());
        write::u64_be(out, u64::from(entry.mode));
        write::u64_be(out, entry.size);
        write::cstr(out, &entry.name);
    }
}

/// Decode the body of a legacy object file of the given kind.
pub fn decode_body(kind: ObjectKind, body: &[u8]) -> Result<Object, EncodingError> {
    let mut r = Reader::new(body);
    let object = match kind {
        ObjectKind::Blob => Object::Blob(Blob {
            payload: r.digest("blob payload digest")?,
            size: r.u64_be("blob size")?,
        }),
        ObjectKind::Platform => {
            let n = r.count(32, "platform layer count")?;
            let mut layers = Vec::with_capacity(n);
            for _ in 0..n {
                layers.push(r.digest("platform layer digest")?);
            }
            layers.reverse();
            Object::Platform(Platform { layers })
        }
        ObjectKind::Layer => Object::Layer(decode_layer(&mut r)?),
        ObjectKind::Manifest => {
            let root = decode_tree(&mut r)?;
            let n = r.count(MIN_TREE, "manifest tree count")?;
            let mut trees = Vec::with_capacity(n + 1);
            trees.push(root);
            for _ in 0..n {
                trees.push(decode_tree(&mut r)?);
            }
            Object::Manifest(Manifest { trees })
        }
    };
    if !r.is_empty() {
        return Err(EncodingError::InvalidObject(format!(
            "{} unexpected bytes after the {} at offset {}",
            r.remaining(),
            kind.name(),
            r.position()
        )));
    }
    Ok(object)
}

fn decode_layer(r: &mut Reader<'_>) -> Result<Layer, EncodingError> {
    // A layer is its manifest digest, optionally followed by annotations.
    let manifest = if r.is_empty() {
        None
    } else {
        Some(r.digest("layer manifest digest")?)
    };
    let mut annotations = Vec::new();
    while !r.is_empty() {
        let key = r.cstr("annotation key")?.to_string();
        let value = match r.bytes(1, "annotation kind")?[0] {
            ANNOTATION_STRING => AnnotationValue::String(r.cstr("annotation value")?.to_string()),
            ANNOTATION_BLOB => AnnotationValue::Blob(r.digest("annotation digest")?),
            n => {
                return Err(EncodingError::InvalidObject(format!(
                    "unknown annotation kind {n} for key {key:?}"
                )))
            }
        };
        annotations.push(Annotation { key, value });
    }
    Ok(Layer {
        manifest,
        annotations,
    })
}

fn decode_tree(r: &mut Reader<'_>) -> Result<Tree, EncodingError> {
    let n = r.count(MIN_ENTRY, "tree entry count")?;
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        let object = r.digest("entry object digest")?;
        let kind = match r.cstr("entry kind")? {
            "file" => EntryKind::Blob,
            "tree" => EntryKind::Tree,
            "mask" => EntryKind::Mask,
            other => {
                return Err(EncodingError::InvalidObject(format!(
                    "unknown entry kind {other:?} (expected file, tree or mask)"
                )))
            }
        };
        let mode = r.u64_be("entry mode")?;
        let mode = u32::try_from(mode).map_err(|_| {
            EncodingError::InvalidObject(format!("entry mode {mode:#o} does not fit in 32 bits"))
        })?;
        let size = r.u64_be("entry size")?;
        let name = r.cstr("entry name")?.to_string();
        entries.push(Entry {
            kind,
            object,
            mode,
            size,
            name,
        });
    }
    Ok(Tree { entries })
}
