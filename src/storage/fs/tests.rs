use super::*;
use crate::storage::encoding::PartialDigest;
use crate::storage::fixtures;
use crate::storage::graph::{EntryKind, Object};
use crate::storage::tag::TagSpec;

fn d(text: &str) -> Digest {
    Digest::parse(&format!("{text}====")).unwrap()
}

fn fixture_repo(name: &str) -> FsRepository {
    FsRepository::open(&fixtures::path(name)).unwrap()
}

fn tag(repo: &FsRepository, spec: &str) -> Digest {
    repo.resolve_tag(&TagSpec::parse(spec).unwrap())
        .unwrap()
        .target
}

fn manifest_of(repo: &FsRepository, layer: &Digest) -> Digest {
    match repo.read_object(layer).unwrap() {
        Object::Layer(l) => l.manifest.unwrap(),
        other => panic!("{layer} is not a layer: {other:?}"),
    }
}

#[test]
fn every_fixture_object_reads_verified() {
    for name in fixtures::REPOS {
        let repo = fixture_repo(name);
        let all: Vec<Digest> = repo.iter_objects().map(Result::unwrap).collect();
        assert!(all.len() > 5);
        for digest in all {
            repo.read_object(&digest)
                .unwrap_or_else(|e| panic!("{name} {digest}: {e}"));
        }
        for payload in repo.iter_payloads().map(Result::unwrap) {
            assert!(
                repo.has_object(&payload),
                "{name}: payload {payload} has no blob"
            );
        }
    }
}

#[test]
fn repo_a_tags_resolve_to_the_readme_digests() {
    let repo = fixture_repo("repo-a");
    let base1 = tag(&repo, "test/base~1");
    assert_eq!(
        base1,
        d("J2W56GBLNURZPCYUYXPJEGDYNEZJJ4T76QBWVDKXHVAGWJXOVBCQ")
    );
    assert_eq!(
        manifest_of(&repo, &base1),
        d("VKPPE7W4F4WZTVQNTVY7OQYC4AOBXQPZ6GUWJ5FLU2DNKSS7JP6A")
    );
    let base = tag(&repo, "test/base");
    assert_eq!(
        base,
        d("W4QCIP2D4GN4LIFZ3QZMA232HLNRE2XWEC3NDXNMZRRETHNOIKJA")
    );
    assert_eq!(tag(&repo, "test/base~0"), base);
    assert_eq!(
        manifest_of(&repo, &base),
        d("4I4CWJD4Q4MRDVZUCLRZ6R5M3SEXK4WQD4GSPEGO7JN5B2W65RPA")
    );
    let app = tag(&repo, "test/app");
    assert_eq!(
        app,
        d("BNK4OLWRSOFILS2OXQRHJWS4EKTY5DR53LOBVEQI3YATN5EI7Q2Q")
    );
    assert_eq!(
        manifest_of(&repo, &app),
        d("BNDTAF7T4QAP7VOSEU6TVPFV5ETWBXRVSQ5LV7WNO25XSU4EA4FA")
    );
    let stack = tag(&repo, "test/stack");
    assert_eq!(
        stack,
        d("VK6HKZ57PWKPI4L5PVJDVPWZDMVAWUAQQX75GEWDPAAHKFSKCVHQ")
    );
    match repo.read_object(&stack).unwrap() {
        Object::Platform(p) => assert_eq!(p.layers, vec![base1, app], "bottom-up"),
        other => panic!("{other:?}"),
    }
    // test/base has two versions; ~2 does not exist
    let stream = repo
        .tag_stream(&TagSpec::parse("test/base").unwrap())
        .unwrap();
    assert_eq!(stream.len(), 2);
    assert_eq!(
        stream[0].parent,
        stream[1].digest(),
        "parent is the previous record's digest"
    );
    assert_eq!(stream[1].parent, Digest::NULL);
    assert_eq!(stream[0].user, "root@vm");
    let err = repo
        .resolve_tag(&TagSpec::parse("test/base~2").unwrap())
        .unwrap_err();
    assert!(matches!(err, StorageError::UnknownTag { .. }), "{err}");
    assert!(err.to_string().contains("2 version"), "{err}");
    let err = repo
        .resolve_tag(&TagSpec::parse("test/nope").unwrap())
        .unwrap_err();
    assert!(matches!(err, StorageError::UnknownTag { .. }), "{err}");
}

#[test]
fn fixture_tag_files_re_encode_to_the_same_bytes() {
    for name in fixtures::REPOS {
        let repo = fixture_repo(name);
        for spec in repo.iter_tag_streams() {
            let spec = spec.unwrap();
            let file = repo.tag_file(&spec);
            let bytes = std::fs::read(&file).unwrap();
            let tags = crate::storage::tag::decode_stream(&bytes).unwrap();
            assert_eq!(
                crate::storage::tag::encode_stream(&tags),
                bytes,
                "{}",
                file.display()
            );
        }
    }
}

#[test]
fn repo_mask_has_the_mask_entry() {
    let repo = fixture_repo("repo-mask");
    assert_eq!(
        tag(&repo, "test/base"),
        d("J2W56GBLNURZPCYUYXPJEGDYNEZJJ4T76QBWVDKXHVAGWJXOVBCQ")
    );
    let mask = tag(&repo, "test/mask");
    assert_eq!(
        mask,
        d("VCASFHRQTNIA6A2T7HM27CXETLSBFUGSI73YCD6IP2SNCUFYFISQ")
    );
    let manifest = manifest_of(&repo, &mask);
    assert_eq!(
        manifest,
        d("FAVZX2YAGAQ5FYFPKVIGJMBV5WW3WTKFJOIJSJR5JTAVBLXS74OA")
    );
    let Object::Manifest(m) = repo.read_object(&manifest).unwrap() else {
        panic!()
    };
    let gone = m.trees[0]
        .entries
        .iter()
        .find(|e| e.name == "gone")
        .unwrap();
    assert_eq!(
        (gone.kind, gone.mode, gone.object),
        (EntryKind::Mask, 0o020644, Digest::NULL)
    );
    assert!(m.trees[0]
        .entries
        .iter()
        .any(|e| e.name == "added.txt" && e.kind == EntryKind::Blob));
    assert_eq!(
        tag(&repo, "test/masked"),
        d("4FH6NJEQPB3LVTWZCFSXIYKSKYMWQU63L3RJQU6QFFS7GU6AIHDA")
    );
}

#[test]
fn repo_legacy_reads_with_legacy_digests() {
    let repo = fixture_repo("repo-legacy");
    let base = tag(&repo, "test/base");
    assert_eq!(
        base,
        d("ZMPF7TNI7QKEMXDSOU52XRJD7ZGYJFGFFLXH4IMOPCVVFMIQGEEA")
    );
    assert_eq!(
        manifest_of(&repo, &base),
        d("OJBF4Y2KVJR75CMYYSSHJVPGURCJQHARVWBXETFVSED4TATWHERQ")
    );
    let app = tag(&repo, "test/app");
    assert_eq!(
        app,
        d("TURX4ANKUOAX2RBJFK73DES3Q4GXYXZIJBR4QTFM3DKZLCEZH6FA")
    );
    let stack = tag(&repo, "test/stack");
    assert_eq!(
        stack,
        d("JWXACJJVAYDZ6SQH55M7UN3GNVFSQ4XIKNHYNKBRB26FTCKU2AUQ")
    );
    let Object::Platform(p) = repo.read_object(&stack).unwrap() else {
        panic!()
    };
    assert_eq!(p.layers, vec![base, app]);
}

#[test]
fn payloads_read_back() {
    let repo = fixture_repo("repo-a");
    let want = std::fs::read(fixtures::path("inputs/base/random.bin")).unwrap();
    let digest = Digest::of(&want);
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut repo.open_payload(&digest).unwrap(), &mut got).unwrap();
    assert!(got == want);
    let missing = Digest::of(b"not there");
    assert!(
        matches!(repo.open_payload(&missing), Err(StorageError::UnknownPayload(x)) if x == missing)
    );
    assert!(
        matches!(repo.read_object(&missing), Err(StorageError::UnknownObject(x)) if x == missing)
    );
}

#[test]
fn partial_digests_find_objects() {
    let repo = fixture_repo("repo-a");
    let found = repo
        .find_digests(&PartialDigest::parse("J2W56").unwrap())
        .unwrap();
    assert_eq!(
        found,
        vec![d("J2W56GBLNURZPCYUYXPJEGDYNEZJJ4T76QBWVDKXHVAGWJXOVBCQ")]
    );
    let all = repo
        .find_digests(&PartialDigest::parse("B").unwrap())
        .unwrap();
    assert!(all.len() >= 2, "{all:?}");
    assert!(repo
        .find_digests(&PartialDigest::parse("Z7Z7Z7").unwrap())
        .unwrap()
        .is_empty());
}

#[test]
fn ls_tags_lists_streams_and_folders() {
    let repo = fixture_repo("repo-a");
    assert_eq!(repo.ls_tags("").unwrap(), vec!["test/"]);
    assert_eq!(repo.ls_tags("test").unwrap(), vec!["app", "base", "stack"]);
    assert_eq!(repo.ls_tags("nothing/here").unwrap(), Vec::<String>::new());
    let all: Vec<String> = repo
        .iter_tag_streams()
        .map(|s| s.unwrap().to_string())
        .collect();
    assert_eq!(all, vec!["test/app", "test/base", "test/stack"]);
}
