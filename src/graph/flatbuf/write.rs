//! The FlatBuffers encoding of spfs objects, writing side.
//!
//! Tables are built in the order spfs 0.44 builds them and each table's
//! fields are added in the order flatc's generated `create` adds them
//! (8-byte fields, then 4-byte fields and structs, then 1-byte fields; last
//! declared first within a size), so an object spfs wrote re-encodes to the
//! same bytes. Manifests are rebuilt the way spfs walks a directory tree:
//! each subtree is built where it is first referenced, once per reference,
//! and the trees vector lists the manifest's trees in the given order.

use std::collections::{HashMap, HashSet};

use flatbuffers::{FlatBufferBuilder, WIPOffset};

use super::{
    vt, FbDigest, ANNOTATION_DIGEST, ANNOTATION_STRING, KIND_MASK, KIND_TREE, OBJECT_BLOB,
    OBJECT_LAYER, OBJECT_MANIFEST, OBJECT_PLATFORM,
};
use crate::encoding::Digest;
use crate::graph::{AnnotationValue, Entry, EntryKind, Manifest, Object, Tree};

type Off = WIPOffset<flatbuffers::UnionWIPOffset>;

/// Encode `object` as a finished FlatBuffer (no identifier, no size prefix).
pub fn encode_body(object: &Object) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::new();
    let (object_type, offset) = match object {
        Object::Platform(p) => {
            let digests: Vec<FbDigest> = p.layers.iter().map(|d| FbDigest(d.0)).collect();
            let layers = fbb.create_vector(&digests);
            let t = fbb.start_table();
            fbb.push_slot_always(vt::PLATFORM_LAYERS, layers);
            (OBJECT_PLATFORM, fbb.end_table(t).as_union_value())
        }
        Object::Layer(l) => {
            let mut annotations = Vec::with_capacity(l.annotations.len());
            for a in &l.annotations {
                let key = fbb.create_string(&a.key);
                let (data_type, data): (u8, Off) = match &a.value {
                    AnnotationValue::String(text) => {
                        let s = fbb.create_string(text);
                        let t = fbb.start_table();
                        fbb.push_slot_always(vt::ANNOTATION_STRING_DATA, s);
                        (ANNOTATION_STRING, fbb.end_table(t).as_union_value())
                    }
                    AnnotationValue::Blob(d) => {
                        let t = fbb.start_table();
                        fbb.push_slot_always(vt::ANNOTATION_DIGEST_DIGEST, FbDigest(d.0));
                        (ANNOTATION_DIGEST, fbb.end_table(t).as_union_value())
                    }
                };
                let t = fbb.start_table();
                fbb.push_slot_always(vt::ANNOTATION_DATA, data);
                fbb.push_slot_always(vt::ANNOTATION_KEY, key);
                fbb.push_slot::<u8>(vt::ANNOTATION_DATA_TYPE, data_type, 0);
                annotations.push(fbb.end_table(t));
            }
            let annotations = fbb.create_vector(&annotations);
            let t = fbb.start_table();
            fbb.push_slot_always(vt::LAYER_ANNOTATIONS, annotations);
            if let Some(m) = &l.manifest {
                fbb.push_slot_always(vt::LAYER_MANIFEST, FbDigest(m.0));
            }
            (OBJECT_LAYER, fbb.end_table(t).as_union_value())
        }
        Object::Manifest(m) => (OBJECT_MANIFEST, build_manifest(&mut fbb, m)),
        Object::Blob(b) => {
            let t = fbb.start_table();
            fbb.push_slot::<u64>(vt::BLOB_SIZE, b.size, 0);
            fbb.push_slot_always(vt::BLOB_PAYLOAD, FbDigest(b.payload.0));
            (OBJECT_BLOB, fbb.end_table(t).as_union_value())
        }
    };
    let t = fbb.start_table();
    fbb.push_slot_always(vt::ANY_OBJECT, offset);
    fbb.push_slot::<u8>(vt::ANY_OBJECT_TYPE, object_type, 0);
    let root = fbb.end_table(t);
    fbb.finish_minimal(root);
    fbb.finished_data().to_vec()
}

type TreeOff = WIPOffset<flatbuffers::TableFinishedWIPOffset>;

struct ManifestWriter<'m> {
    by_digest: HashMap<Digest, &'m Tree>,
    /// First built table of each tree.
    built: HashMap<Digest, TreeOff>,
    /// Tables built so far; past the budget, trees are built once and reused
    /// (still a valid encoding, just not spfs's byte layout) so a manifest
    /// of heavily shared subtrees cannot blow up.
    count: usize,
    budget: usize,
    on_path: HashSet<Digest>,
}

fn build_manifest(fbb: &mut FlatBufferBuilder<'_>, m: &Manifest) -> Off {
    let mut w = ManifestWriter {
        by_digest: m.trees.iter().map(|t| (t.digest(), t)).collect(),
        built: HashMap::new(),
        count: 0,
        budget: 200_000 + 16 * m.trees.len(),
        on_path: HashSet::new(),
    };
    let mut order = Vec::with_capacity(m.trees.len());
    if let Some(root) = m.trees.first() {
        w.build_tree(fbb, root, 0);
    }
    // Trees never reached from the root (inconsistent manifests) still get encoded.
    for tree in &m.trees {
        let digest = tree.digest();
        let off = match w.built.get(&digest) {
            Some(off) => *off,
            None => w.build_tree(fbb, tree, 0),
        };
        order.push(off);
    }
    let trees = fbb.create_vector(&order);
    let t = fbb.start_table();
    fbb.push_slot_always(vt::MANIFEST_TREES, trees);
    fbb.end_table(t).as_union_value()
}

impl<'m> ManifestWriter<'m> {
    fn build_tree(
        &mut self,
        fbb: &mut FlatBufferBuilder<'_>,
        tree: &'m Tree,
        depth: usize,
    ) -> TreeOff {
        let digest = tree.digest();
        self.on_path.insert(digest);
        let mut entries = Vec::with_capacity(tree.entries.len());
        for entry in &tree.entries {
            if entry.kind == EntryKind::Tree
                && depth < 1024
                && !self.on_path.contains(&entry.object)
            {
                if let Some(sub) = self.by_digest.get(&entry.object).copied() {
                    let reuse = self.count >= self.budget && self.built.contains_key(&entry.object);
                    if !reuse {
                        self.build_tree(fbb, sub, depth + 1);
                    }
                }
            }
            entries.push(build_entry(fbb, entry));
        }
        let entries = fbb.create_vector(&entries);
        let t = fbb.start_table();
        fbb.push_slot_always(vt::TREE_ENTRIES, entries);
        let off = fbb.end_table(t);
        self.count += 1;
        self.built.entry(digest).or_insert(off);
        self.on_path.remove(&digest);
        off
    }
}

fn build_entry(fbb: &mut FlatBufferBuilder<'_>, entry: &Entry) -> TreeOff {
    let name = fbb.create_string(&entry.name);
    let kind = match entry.kind {
        EntryKind::Blob => 0,
        EntryKind::Tree => KIND_TREE,
        EntryKind::Mask => KIND_MASK,
    };
    let t = fbb.start_table();
    fbb.push_slot::<u64>(vt::ENTRY_SIZE, entry.size, 0);
    fbb.push_slot_always(vt::ENTRY_NAME, name);
    fbb.push_slot::<u32>(vt::ENTRY_MODE, entry.mode, 0);
    fbb.push_slot_always(vt::ENTRY_OBJECT, FbDigest(entry.object.0));
    fbb.push_slot::<u8>(vt::ENTRY_KIND, kind, 0);
    fbb.end_table(t)
}
