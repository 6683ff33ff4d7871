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
