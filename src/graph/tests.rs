use super::*;
use crate::storage::fixtures;

#[test]
fn every_fixture_object_decodes_and_hashes_to_its_name() {
    for repo in fixtures::REPOS {
        let objects = fixtures::objects(repo);
        assert!(objects.len() > 5, "{repo}");
        for (name, bytes) in objects {
            let (header, object) =
                Object::decode(&bytes).unwrap_or_else(|e| panic!("{repo} {name}: {e}"));
            assert_eq!(header.kind, object.kind());
            assert_eq!(
                object.digest(header.strategy).to_base32(),
                name,
                "{repo} {name} {object:?}"
            );
        }
    }
}

#[test]
fn fixture_headers_are_as_documented() {
    for (repo, want) in [
        (
            "repo-a",
            (DigestStrategy::WithKindAndSalt, EncodingFormat::FlatBuffers),
        ),
        (
            "repo-mask",
            (DigestStrategy::WithKindAndSalt, EncodingFormat::FlatBuffers),
        ),
        (
            "repo-legacy",
            (DigestStrategy::Legacy, EncodingFormat::Legacy),
        ),
    ] {
        for (name, bytes) in fixtures::objects(repo) {
            let header = Header::parse(&bytes).unwrap();
            assert_eq!((header.strategy, header.format), want, "{repo} {name}");
        }
    }
}

#[test]
fn fixture_objects_re_encode_to_the_same_bytes() {
    for repo in fixtures::REPOS {
        for (name, bytes) in fixtures::objects(repo) {
            let (header, object) = Object::decode(&bytes).unwrap();
            let again = object.encode(header.format, header.strategy);
            assert!(
                again == bytes,
                "{repo} {name} {:?}\n{:02x?}\n{:02x?}",
                object.kind(),
                &bytes[17..],
                &again[17..]
            );
        }
    }
}

mod mutations {
    use proptest::prelude::*;

    use super::*;

    /// 256 by default; more with PROPTEST_CASES=N.
    fn cases() -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256)
    }

    fn all_objects() -> Vec<Vec<u8>> {
        fixtures::REPOS
            .iter()
            .flat_map(|r| fixtures::objects(r))
            .map(|(_, bytes)| bytes)
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

        /// Random edits of every fixture object: decoding returns a value
        /// or an error, never panics, and a decoded value still encodes.
        #[test]
        fn decode_never_panics(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            for original in all_objects() {
                let mut bytes = original.clone();
                for (at, value, how) in &edits {
                    if bytes.is_empty() { break; }
                    let i = at.index(bytes.len());
                    match how {
                        0 => bytes[i] = *value,
                        1 => bytes[i] ^= 1 << (value % 8),
                        2 => { bytes.remove(i); }
                        _ => bytes.insert(i, *value),
                    }
                }
                for candidate in [&bytes[..], &bytes[..cut.index(bytes.len() + 1)]] {
                    if let Ok((header, object)) = Object::decode(candidate) {
                        let _ = object.digest(header.strategy);
                        let _ = object.encode(header.format, header.strategy);
                    }
                }
            }
        }

        /// Arbitrary bytes after a valid header, in every format.
        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512), kind in 0u8..6, format in 0u8..3, strategy in 0u8..3) {
            let mut bytes = HEADER_PREFIX.to_vec();
            bytes.extend_from_slice(&[strategy, format, 0, 0, 0, 0, 0, kind]);
            bytes.extend_from_slice(&body);
            let _ = Object::decode(&bytes);
        }

        #[test]
        fn tag_streams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = crate::storage::tag::decode_stream(&bytes);
        }
    }
}

#[test]
fn huge_counts_do_not_allocate() {
    // a legacy manifest claiming 2^60 trees, and a platform claiming 2^60 layers
    let mut bytes = Header {
        strategy: DigestStrategy::Legacy,
        format: EncodingFormat::Legacy,
        kind: ObjectKind::Platform,
    }
    .to_bytes()
    .to_vec();
    bytes.extend_from_slice(&(1u64 << 60).to_be_bytes());
    let err = Object::decode(&bytes).unwrap_err();
    assert!(err.to_string().contains("items"), "{err}");
    let mut bytes = Header {
        strategy: DigestStrategy::Legacy,
        format: EncodingFormat::Legacy,
        kind: ObjectKind::Manifest,
    }
    .to_bytes()
    .to_vec();
    bytes.extend_from_slice(&0u64.to_be_bytes());
    bytes.extend_from_slice(&(1u64 << 60).to_be_bytes());
    assert!(Object::decode(&bytes).is_err());
}

#[test]
fn bad_headers_say_what_is_wrong() {
    let (_, blob) = Object::decode(&fixtures::objects("repo-a")[0].1).unwrap();
    let good = blob.encode(EncodingFormat::FlatBuffers, DigestStrategy::WithKindAndSalt);
    for (at, value, says) in [
        (0, b'X', "--SPFS--"),
        (9, 7, "digest strategy"),
        (10, 9, "encoding format"),
        (12, 1, "reserved"),
        (16, 9, "object kind"),
    ] {
        let mut bad = good.clone();
        bad[at] = value;
        let err = Object::decode(&bad).unwrap_err().to_string();
        assert!(err.contains(says), "{err}");
    }
    assert!(Object::decode(&good[..10])
        .unwrap_err()
        .to_string()
        .contains("too short"));
    // the header's kind must match the body
    let mut bad = good.clone();
    bad[16] = ObjectKind::Layer as u8;
    assert!(Object::decode(&bad)
        .unwrap_err()
        .to_string()
        .contains("header says layer"));
}

#[test]
fn all_four_combinations_round_trip() {
    for repo in fixtures::REPOS {
        for (_, bytes) in fixtures::objects(repo) {
            let (_, object) = Object::decode(&bytes).unwrap();
            for format in [EncodingFormat::Legacy, EncodingFormat::FlatBuffers] {
                for strategy in [DigestStrategy::Legacy, DigestStrategy::WithKindAndSalt] {
                    let encoded = object.encode(format, strategy);
                    let (header, again) = Object::decode(&encoded).unwrap();
                    assert_eq!((header.format, header.strategy), (format, strategy));
                    assert_eq!(again, object);
                }
            }
        }
    }
}

/// A FlatBuffer manifest whose tree lists `n` offsets to one entry table
/// with a `name_len`-byte name: small on disk, `n * name_len` bytes of
/// names if decoded.
fn shared_entry_flatbuffer(n: usize, name_len: usize) -> Vec<u8> {
    use super::flatbuf::{vt, FbDigest, OBJECT_MANIFEST};
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let name = fbb.create_string(&"n".repeat(name_len));
    let t = fbb.start_table();
    fbb.push_slot_always(vt::ENTRY_NAME, name);
    fbb.push_slot_always(vt::ENTRY_OBJECT, FbDigest([7; 32]));
    let entry = fbb.end_table(t);
    let entries = fbb.create_vector(&vec![entry; n]);
    let t = fbb.start_table();
    fbb.push_slot_always(vt::TREE_ENTRIES, entries);
    let tree = fbb.end_table(t);
    let trees = fbb.create_vector(&[tree]);
    let t = fbb.start_table();
    fbb.push_slot_always(vt::MANIFEST_TREES, trees);
    let manifest = fbb.end_table(t).as_union_value();
    let t = fbb.start_table();
    fbb.push_slot_always(vt::ANY_OBJECT, manifest);
    fbb.push_slot::<u8>(vt::ANY_OBJECT_TYPE, OBJECT_MANIFEST, 0);
    let root = fbb.end_table(t);
    fbb.finish_minimal(root);
    let mut bytes = Header {
        strategy: DigestStrategy::WithKindAndSalt,
        format: EncodingFormat::FlatBuffers,
        kind: ObjectKind::Manifest,
    }
    .to_bytes()
    .to_vec();
    bytes.extend_from_slice(fbb.finished_data());
    bytes
}

/// Checked for item 19 (it already held): FlatBuffers lets many offsets
/// share one table, so a 260 KB file could stand for 3 GB of entry names.
/// The verifier's apparent-size bound (8 x the buffer + 64 KiB) refuses it
/// before anything is copied.
#[test]
fn flatbuffer_tables_shared_many_times_are_refused_not_copied() {
    let bytes = shared_entry_flatbuffer(50_000, 60_000);
    assert!(bytes.len() < 300_000, "{}", bytes.len());
    let err = Object::decode(&bytes).unwrap_err().to_string();
    assert!(err.contains("invalid FlatBuffer"), "{err}");
    // the same layout at a small scale decodes: the refusal is the bound
    let (_, object) = Object::decode(&shared_entry_flatbuffer(10, 100)).unwrap();
    let Object::Manifest(m) = object else {
        panic!("{object:?}")
    };
    assert_eq!(m.trees[0].entries.len(), 10);
}
