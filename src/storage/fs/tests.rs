use super::*;
use crate::encoding::PartialDigest;
use crate::graph::{EntryKind, Object};
use crate::storage::fixtures;
use crate::storage::tag::TagSpec;

pub(crate) fn d(text: &str) -> Digest {
    Digest::parse(&format!("{text}====")).unwrap()
}

pub(crate) fn fixture_repo(name: &str) -> FsRepository {
    FsRepository::open(&fixtures::path(name)).unwrap()
}

pub(crate) fn tag(repo: &FsRepository, spec: &str) -> Digest {
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

pub(crate) fn copy_repo(name: &str) -> (tempfile::TempDir, FsRepository) {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join(name);
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(fixtures::path(name))
        .arg(&dest)
        .status()
        .unwrap();
    assert!(status.success());
    let repo = FsRepository::open(&dest).unwrap();
    (tmp, repo)
}

pub(crate) fn new_repo() -> (tempfile::TempDir, FsRepository) {
    let tmp = tempfile::tempdir().unwrap();
    let repo = FsRepository::create(&tmp.path().join("a/b/repo")).unwrap();
    (tmp, repo)
}

#[test]
fn a_flipped_byte_is_corrupt_naming_the_file() {
    let (_tmp, repo) = copy_repo("repo-a");
    let all: Vec<Digest> = repo.iter_objects().map(Result::unwrap).collect();
    for digest in all {
        let path = repo.object_path(&digest);
        let good = std::fs::read(&path).unwrap();
        let original = repo.read_object(&digest).unwrap();
        // through the files, a few places
        for at in [0, 9, 16, 17] {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            std::fs::write(&path, &bad).unwrap();
            let err = repo.read_object(&digest).unwrap_err();
            assert!(
                matches!(err, StorageError::Corrupt { .. }),
                "{digest} @{at}: {err}"
            );
            assert!(err.to_string().contains(&digest.to_base32()[2..]), "{err}");
        }
        std::fs::write(&path, &good).unwrap();
        // in memory, every byte and every length
        let mut detected = 0;
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            match repo.decode_verified(&digest, &path, &bad) {
                Err(err) => {
                    assert!(
                        matches!(err, StorageError::Corrupt { .. }),
                        "{digest} @{at}: {err}"
                    );
                    detected += 1;
                }
                // a flip in FlatBuffers padding leaves the object intact
                Ok(object) => assert_eq!(object, original, "{digest} @{at}: undetected change"),
            }
        }
        assert!(
            detected > good.len() / 2,
            "{digest}: {detected} of {}",
            good.len()
        );
        for len in 0..good.len() {
            match repo.decode_verified(&digest, &path, &good[..len]) {
                Err(err) => assert!(
                    matches!(err, StorageError::Corrupt { .. }),
                    "{digest} len {len}: {err}"
                ),
                // only trailing FlatBuffers padding can go unnoticed
                Ok(object) => {
                    assert_eq!(object, original, "{digest} len {len}");
                    assert!(good[len..].iter().all(|b| *b == 0), "{digest} len {len}");
                }
            }
        }
        repo.read_object(&digest).unwrap();
    }
}

#[test]
fn versions_other_majors_are_refused_and_missing_is_current() {
    let (tmp, repo) = new_repo();
    assert_eq!(
        std::fs::read_to_string(repo.root().join("VERSION")).unwrap(),
        "0.44.0"
    );
    for sub in ["objects", "payloads", "tags"] {
        assert!(repo.root().join(sub).is_dir());
    }
    std::fs::write(repo.root().join("VERSION"), "1.0.0").unwrap();
    let err = FsRepository::open(repo.root()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("1.0.0") && text.contains("0.44.0"), "{text}");
    assert!(
        FsRepository::create(repo.root()).is_err(),
        "create does not overwrite"
    );
    std::fs::write(repo.root().join("VERSION"), "0.45.2\n").unwrap();
    FsRepository::open(repo.root()).unwrap();
    std::fs::remove_file(repo.root().join("VERSION")).unwrap();
    FsRepository::open(repo.root()).unwrap();
    std::fs::write(repo.root().join("VERSION"), "banana").unwrap();
    assert!(matches!(
        FsRepository::open(repo.root()),
        Err(StorageError::Corrupt { .. })
    ));
    let missing = tmp.path().join("nothing");
    assert!(matches!(
        FsRepository::open(&missing),
        Err(StorageError::NotARepository { .. })
    ));
}

#[test]
fn writes_are_deduplicated_and_read_back() {
    let (_tmp, repo) = new_repo();
    let data = b"some file contents".to_vec();
    let (digest, size) = repo.write_payload(&mut &data[..]).unwrap();
    assert_eq!((digest, size), (Digest::of(&data), data.len() as u64));
    assert_eq!(repo.write_payload(&mut &data[..]).unwrap(), (digest, size));
    let blob = repo.write_blob(&mut &data[..]).unwrap();
    assert_eq!(blob, digest);
    assert_eq!(
        repo.read_object(&blob).unwrap(),
        Object::Blob(crate::graph::Blob {
            payload: digest,
            size
        })
    );
    assert_eq!(repo.write_blob_bytes(&data).unwrap(), digest);
    let payloads: Vec<Digest> = repo.iter_payloads().map(Result::unwrap).collect();
    assert_eq!(payloads, vec![digest]);
    // nothing left behind in the work folders
    for work in ["objects/work", "payloads/work"] {
        let left = std::fs::read_dir(repo.root().join(work)).unwrap().count();
        assert_eq!(left, 0, "{work}");
    }
    let layer = Object::Layer(crate::graph::Layer {
        manifest: Some(digest),
        annotations: vec![crate::graph::Annotation {
            key: "note".into(),
            value: crate::graph::AnnotationValue::String("hi".into()),
        }],
    });
    let d = repo.write_object(&layer).unwrap();
    assert_eq!(repo.read_object(&d).unwrap(), layer);
}

#[test]
fn batched_writes_land_on_flush_and_vanish_on_drop() {
    let (_tmp, repo) = new_repo();
    let mut batch = BatchWriter::new(&repo);
    let kept = batch.write_blob_bytes(b"kept").unwrap();
    assert!(
        !repo.has_payload(&kept) && !repo.has_object(&kept),
        "not before flush"
    );
    batch.flush().unwrap();
    assert!(repo.has_payload(&kept) && repo.has_object(&kept));
    assert_eq!(
        repo.read_object(&kept).unwrap(),
        Object::Blob(crate::graph::Blob {
            payload: kept,
            size: 4
        })
    );
    let dropped = batch.write_blob_bytes(b"dropped").unwrap();
    drop(batch);
    assert!(!repo.has_payload(&dropped) && !repo.has_object(&dropped));
    for work in ["objects/work", "payloads/work"] {
        let left = std::fs::read_dir(repo.root().join(work)).unwrap().count();
        assert_eq!(left, 0, "{work}");
    }
}

#[test]
fn stale_temp_files_of_dead_writers_are_cleared_and_live_ones_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = FsRepository::create(&tmp.path().join("repo")).unwrap();
    let work = repo.payloads_dir().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let old = work.join(".payload.1-2-3.tmp");
    let fresh = work.join(".payload.4-5-6.tmp");
    let other = work.join("not-ours");
    for path in [&old, &fresh, &other] {
        std::fs::write(path, "x").unwrap();
    }
    let hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    for path in [&old, &other] {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(hours_ago)
            .unwrap();
    }
    assert_eq!(repo.clear_stale_work(STALE_WORK), 1);
    assert!(!old.exists() && fresh.exists() && other.exists());
}

#[test]
fn tags_are_shareable_as_spfs_makes_them_and_private_in_a_private_repository() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmp = tempfile::tempdir().unwrap();
    let repo = FsRepository::create(&tmp.path().join("repo")).unwrap();
    let mode_of = |name: &str| {
        let path = repo.root().join(format!("tags/{name}.tag"));
        std::fs::metadata(path).unwrap().mode() & 0o777
    };
    std::fs::set_permissions(repo.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
    repo.push_tag(&TagSpec::parse("shared").unwrap(), &Digest::of(b"a"))
        .unwrap();
    assert_eq!(mode_of("shared"), 0o666, "as spfs sets them");
    std::fs::set_permissions(repo.root(), std::fs::Permissions::from_mode(0o700)).unwrap();
    repo.push_tag(&TagSpec::parse("mine").unwrap(), &Digest::of(b"b"))
        .unwrap();
    assert_eq!(mode_of("mine"), 0o600);
    // a tag written again in a private repository becomes private too
    repo.push_tag(&TagSpec::parse("shared").unwrap(), &Digest::of(b"c"))
        .unwrap();
    assert_eq!(mode_of("shared"), 0o600);
}
