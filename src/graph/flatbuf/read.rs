//! The FlatBuffers encoding of spfs objects, reading side: every buffer
//! is verified with bounded [`VerifierOptions`] before any accessor runs,
//! then copied into the owned types of `graph`.

use flatbuffers::{
    Follow, ForwardsUOffset, InvalidFlatbuffer, Table, Vector, Verifiable, Verifier,
    VerifierOptions,
};

use super::{
    vt, FbDigest, ANNOTATION_DIGEST, ANNOTATION_STRING, KIND_BLOB, KIND_MASK, KIND_TREE,
    OBJECT_BLOB, OBJECT_LAYER, OBJECT_MANIFEST, OBJECT_PLATFORM,
};
use crate::encoding::EncodingError;
use crate::graph::{
    Annotation, AnnotationValue, Blob, Entry, EntryKind, Layer, Manifest, Object, Platform, Tree,
};

/// Declares a table wrapper that can be followed and verified.
macro_rules! table {
    ($name:ident, |$v:ident| $verify:expr) => {
        #[derive(Clone, Copy)]
        struct $name<'a>(Table<'a>);

        impl<'a> Follow<'a> for $name<'a> {
            type Inner = $name<'a>;
            unsafe fn follow(buf: &'a [u8], loc: usize) -> Self {
                // SAFETY: forwarded to the caller (a verified position).
                $name(unsafe { Table::new(buf, loc) })
            }
        }

        impl Verifiable for $name<'_> {
            fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
                let $v = v.visit_table(pos)?;
                $verify.finish();
                Ok(())
            }
        }
    };
}

type Str<'a> = ForwardsUOffset<&'a str>;

table!(FbAnyObject, |t| t.visit_union::<u8, _>(
    "object_type",
    vt::ANY_OBJECT_TYPE,
    "object",
    vt::ANY_OBJECT,
    true,
    |key, v, pos| match key {
        OBJECT_PLATFORM => v.verify_union_variant::<ForwardsUOffset<FbPlatform>>("Platform", pos),
        OBJECT_LAYER => v.verify_union_variant::<ForwardsUOffset<FbLayer>>("Layer", pos),
        OBJECT_MANIFEST => v.verify_union_variant::<ForwardsUOffset<FbManifest>>("Manifest", pos),
        OBJECT_BLOB => v.verify_union_variant::<ForwardsUOffset<FbBlob>>("Blob", pos),
        _ => Ok(()),
    }
)?);
table!(FbPlatform, |t| t
    .visit_field::<ForwardsUOffset<Vector<'_, FbDigest>>>(
        "layers",
        vt::PLATFORM_LAYERS,
        true
    )?);
table!(FbLayer, |t| t
    .visit_field::<FbDigest>("manifest", vt::LAYER_MANIFEST, false)?
    .visit_field::<ForwardsUOffset<Vector<'_, ForwardsUOffset<FbAnnotation>>>>(
        "annotations",
        vt::LAYER_ANNOTATIONS,
        true
    )?);
table!(FbAnnotation, |t| t
    .visit_field::<Str<'static>>("key", vt::ANNOTATION_KEY, true)?
    .visit_union::<u8, _>(
        "data_type",
        vt::ANNOTATION_DATA_TYPE,
        "data",
        vt::ANNOTATION_DATA,
        true,
        |key, v, pos| match key {
            ANNOTATION_STRING => v.verify_union_variant::<ForwardsUOffset<FbAnnotationString>>(
                "AnnotationString",
                pos
            ),
            ANNOTATION_DIGEST => v.verify_union_variant::<ForwardsUOffset<FbAnnotationDigest>>(
                "AnnotationDigest",
                pos
            ),
            _ => Ok(()),
        }
    )?);
table!(FbAnnotationString, |t| t.visit_field::<Str<'static>>(
    "data",
    vt::ANNOTATION_STRING_DATA,
    true
)?);
table!(FbAnnotationDigest, |t| t.visit_field::<FbDigest>(
    "digest",
    vt::ANNOTATION_DIGEST_DIGEST,
    true
)?);
table!(FbManifest, |t| t.visit_field::<ForwardsUOffset<
    Vector<'_, ForwardsUOffset<FbTree>>,
>>("trees", vt::MANIFEST_TREES, true)?);
table!(FbBlob, |t| t
    .visit_field::<u64>("size", vt::BLOB_SIZE, false)?
    .visit_field::<FbDigest>("payload", vt::BLOB_PAYLOAD, true)?);
table!(FbTree, |t| t.visit_field::<ForwardsUOffset<
    Vector<'_, ForwardsUOffset<FbEntry>>,
>>("entries", vt::TREE_ENTRIES, true)?);
table!(FbEntry, |t| t
    .visit_field::<u8>("kind", vt::ENTRY_KIND, false)?
    .visit_field::<FbDigest>("object", vt::ENTRY_OBJECT, true)?
    .visit_field::<u32>("mode", vt::ENTRY_MODE, false)?
    .visit_field::<u64>("size", vt::ENTRY_SIZE, false)?
    .visit_field::<Str<'static>>("name", vt::ENTRY_NAME, true)?);

// Accessors. SAFETY (all of them): tables are only reached from
// `decode_body`, which verified the whole buffer first, and each call names
// the type the verifier checked for that slot.
impl<'a> FbAnyObject<'a> {
    fn object_type(&self) -> u8 {
        unsafe { self.0.get::<u8>(vt::ANY_OBJECT_TYPE, Some(0)) }.unwrap_or(0)
    }
    fn object(&self) -> Option<Table<'a>> {
        unsafe {
            self.0
                .get::<ForwardsUOffset<Table<'a>>>(vt::ANY_OBJECT, None)
        }
    }
}

fn missing(what: &str) -> EncodingError {
    EncodingError::InvalidObject(format!("required field {what} is missing"))
}

/// Verify and decode a FlatBuffers body (the bytes after the header).
pub fn decode_body(body: &[u8]) -> Result<Object, EncodingError> {
    let opts = VerifierOptions {
        max_depth: 16,
        // every table takes at least 4 bytes of the buffer
        max_tables: body.len() / 4 + 8,
        // the bytes verified, counting shared vtables once per table
        max_apparent_size: body.len().saturating_mul(8).saturating_add(1 << 16),
        ignore_missing_null_terminator: false,
    };
    let any = flatbuffers::root_with_opts::<FbAnyObject>(&opts, body)
        .map_err(|e| EncodingError::InvalidObject(format!("invalid FlatBuffer: {e}")))?;
    // The verifier checks the union's value only for known types, so the
    // type is checked before the value is followed.
    let object_type = any.object_type();
    if !(OBJECT_PLATFORM..=OBJECT_BLOB).contains(&object_type) {
        return Err(EncodingError::InvalidObject(format!(
            "unknown object type {object_type} in the FlatBuffer union (expected 1..4)"
        )));
    }
    let table = any.object().ok_or_else(|| missing("AnyObject.object"))?;
    match object_type {
        OBJECT_PLATFORM => decode_platform(FbPlatform(table)),
        OBJECT_LAYER => decode_layer(FbLayer(table)),
        OBJECT_MANIFEST => decode_manifest(FbManifest(table)),
        OBJECT_BLOB => decode_blob(FbBlob(table)),
        n => Err(EncodingError::InvalidObject(format!(
            "unknown object type {n} in the FlatBuffer union (expected 1..4)"
        ))),
    }
}

// The union's arms. SAFETY (every accessor): the table is the verified
// union value of its type, and each slot is read as the type the verifier
// checked for it.

fn decode_platform(t: FbPlatform<'_>) -> Result<Object, EncodingError> {
    let layers = unsafe {
        t.0.get::<ForwardsUOffset<Vector<'_, FbDigest>>>(vt::PLATFORM_LAYERS, None)
    }
    .ok_or_else(|| missing("Platform.layers"))?;
    Ok(Object::Platform(Platform {
        layers: layers.iter().collect(),
    }))
}

fn decode_layer(t: FbLayer<'_>) -> Result<Object, EncodingError> {
    let manifest = unsafe { t.0.get::<FbDigest>(vt::LAYER_MANIFEST, None) };
    let list = unsafe {
        t.0.get::<ForwardsUOffset<Vector<'_, ForwardsUOffset<FbAnnotation>>>>(
            vt::LAYER_ANNOTATIONS,
            None,
        )
    }
    .ok_or_else(|| missing("Layer.annotations"))?;
    let mut annotations = Vec::with_capacity(list.len());
    for a in list.iter() {
        annotations.push(decode_annotation(a)?);
    }
    Ok(Object::Layer(Layer {
        manifest,
        annotations,
    }))
}

fn decode_manifest(t: FbManifest<'_>) -> Result<Object, EncodingError> {
    let list = unsafe {
        t.0.get::<ForwardsUOffset<Vector<'_, ForwardsUOffset<FbTree>>>>(vt::MANIFEST_TREES, None)
    }
    .ok_or_else(|| missing("Manifest.trees"))?;
    let mut trees = Vec::with_capacity(list.len());
    for tree in list.iter() {
        trees.push(decode_tree(tree)?);
    }
    Ok(Object::Manifest(Manifest { trees }))
}

fn decode_blob(t: FbBlob<'_>) -> Result<Object, EncodingError> {
    let size = unsafe { t.0.get::<u64>(vt::BLOB_SIZE, Some(0)) }.unwrap_or(0);
    let payload = unsafe { t.0.get::<FbDigest>(vt::BLOB_PAYLOAD, None) }
        .ok_or_else(|| missing("Blob.payload"))?;
    Ok(Object::Blob(Blob { payload, size }))
}

fn decode_annotation(a: FbAnnotation<'_>) -> Result<Annotation, EncodingError> {
    let key = unsafe { a.0.get::<Str<'_>>(vt::ANNOTATION_KEY, None) }
        .ok_or_else(|| missing("Annotation.key"))?
        .to_string();
    let data_type = unsafe { a.0.get::<u8>(vt::ANNOTATION_DATA_TYPE, Some(0)) }.unwrap_or(0);
    // only follow the union's value once its type is known (and so verified)
    if data_type != ANNOTATION_STRING && data_type != ANNOTATION_DIGEST {
        return Err(EncodingError::InvalidObject(format!(
            "unknown annotation value type {data_type} for key {key:?}"
        )));
    }
    let data = unsafe {
        a.0.get::<ForwardsUOffset<Table<'_>>>(vt::ANNOTATION_DATA, None)
    }
    .ok_or_else(|| missing("Annotation.data"))?;
    let value = match data_type {
        ANNOTATION_STRING => AnnotationValue::String(
            unsafe {
                FbAnnotationString(data)
                    .0
                    .get::<Str<'_>>(vt::ANNOTATION_STRING_DATA, None)
            }
            .ok_or_else(|| missing("AnnotationString.data"))?
            .to_string(),
        ),
        ANNOTATION_DIGEST => AnnotationValue::Blob(
            unsafe {
                FbAnnotationDigest(data)
                    .0
                    .get::<FbDigest>(vt::ANNOTATION_DIGEST_DIGEST, None)
            }
            .ok_or_else(|| missing("AnnotationDigest.digest"))?,
        ),
        n => {
            return Err(EncodingError::InvalidObject(format!(
                "unknown annotation value type {n} for key {key:?}"
            )))
        }
    };
    Ok(Annotation { key, value })
}

fn decode_tree(tree: FbTree<'_>) -> Result<Tree, EncodingError> {
    let list = unsafe {
        tree.0
            .get::<ForwardsUOffset<Vector<'_, ForwardsUOffset<FbEntry>>>>(vt::TREE_ENTRIES, None)
    }
    .ok_or_else(|| missing("Tree.entries"))?;
    let mut entries = Vec::with_capacity(list.len());
    for e in list.iter() {
        let kind = match unsafe { e.0.get::<u8>(vt::ENTRY_KIND, Some(KIND_BLOB)) } {
            Some(KIND_BLOB) | None => EntryKind::Blob,
            Some(KIND_TREE) => EntryKind::Tree,
            Some(KIND_MASK) => EntryKind::Mask,
            Some(n) => {
                return Err(EncodingError::InvalidObject(format!(
                    "unknown entry kind {n} (expected 0, 4 or 5)"
                )))
            }
        };
        let object = unsafe { e.0.get::<FbDigest>(vt::ENTRY_OBJECT, None) }
            .ok_or_else(|| missing("Entry.object"))?;
        let mode = unsafe { e.0.get::<u32>(vt::ENTRY_MODE, Some(0)) }.unwrap_or(0);
        let size = unsafe { e.0.get::<u64>(vt::ENTRY_SIZE, Some(0)) }.unwrap_or(0);
        let name = unsafe { e.0.get::<Str<'_>>(vt::ENTRY_NAME, None) }
            .ok_or_else(|| missing("Entry.name"))?
            .to_string();
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
