use super::*;
use crate::graph::Object;
use crate::storage::fixtures;
use crate::storage::{FsRepository, TagSpec};

fn manifest_of(repo: &FsRepository, tag: &str) -> graph::Manifest {
    let layer = repo
        .resolve_tag(&TagSpec::parse(tag).unwrap())
        .unwrap()
        .target;
    let Object::Layer(layer) = repo.read_object(&layer).unwrap() else {
        panic!("{tag}")
    };
    let Object::Manifest(m) = repo.read_object(&layer.manifest.unwrap()).unwrap() else {
        panic!("{tag}")
    };
    m
}

#[test]
fn fixture_manifests_unpack_and_pack_to_the_same_trees() {
    for (repo, tags) in [
        ("repo-a", &["test/base~1", "test/base", "test/app"][..]),
        ("repo-mask", &["test/base", "test/mask"][..]),
        ("repo-legacy", &["test/base", "test/app"][..]),
    ] {
        let repo = FsRepository::open(&fixtures::path(repo)).unwrap();
        for tag in tags {
            let stored = manifest_of(&repo, tag);
            let unpacked = Manifest::from_graph(&stored).unwrap();
            let packed = unpacked.to_graph();
            // same trees in the same order; entries may be ordered differently
            // in legacy files (sorted by name), which does not change digests
            assert_eq!(packed.trees.len(), stored.trees.len(), "{tag}");
            for (a, b) in packed.trees.iter().zip(&stored.trees) {
                assert_eq!(a.digest(), b.digest(), "{tag}");
            }
            assert_eq!(
                Object::Manifest(packed.clone()).digest(crate::graph::DigestStrategy::Legacy),
                Object::Manifest(stored.clone()).digest(crate::graph::DigestStrategy::Legacy)
            );
        }
    }
}

#[test]
fn merging_layers_masks_and_overrides() {
    let repo = FsRepository::open(&fixtures::path("repo-mask")).unwrap();
    let mut merged = Manifest::from_graph(&manifest_of(&repo, "test/base")).unwrap();
    assert!(merged
        .get("gone")
        .is_some_and(|e| e.kind == EntryKind::Blob));
    assert!(merged.get("/a/b/c/deep.txt").is_some());
    assert!(merged.get("link-to-hello").unwrap().is_symlink());
    assert!(merged.get("a/conf.ini/x").is_none());
    let top = Manifest::from_graph(&manifest_of(&repo, "test/mask")).unwrap();
    merged.update(&top);
    let gone = merged.get("gone").unwrap();
    assert!(gone.is_mask(), "a mask stays in the merged tree");
    assert_eq!((gone.mode, gone.object), (0o020644, Digest::NULL));
    assert!(merged.get("added.txt").is_some());
    assert!(merged.get("hello.txt").is_some());
    assert!(merged.get("empty").unwrap().is_dir());

    let repo = FsRepository::open(&fixtures::path("repo-a")).unwrap();
    let mut merged = Manifest::from_graph(&manifest_of(&repo, "test/base~1")).unwrap();
    let base_hello = merged.get("hello.txt").unwrap().object;
    merged.update(&Manifest::from_graph(&manifest_of(&repo, "test/app")).unwrap());
    let hello = merged.get("hello.txt").unwrap();
    assert_ne!(hello.object, base_hello, "the top layer's file wins");
    assert_eq!(hello.size, 19);
    assert!(merged.get("newfile.txt").is_some() && merged.get("random.bin").is_some());
}

#[test]
fn directories_merge_and_files_replace_directories() {
    let file = |size| Entry {
        kind: EntryKind::Blob,
        object: Digest::of(b"x"),
        mode: 0o100644,
        size,
        entries: BTreeMap::new(),
    };
    let mut bottom = Manifest::default();
    let mut d = Entry::dir(0o040755);
    d.entries.insert("one".into(), file(1));
    bottom.root_mut().entries.insert("d".into(), d.clone());
    bottom.root_mut().entries.insert("x".into(), d);
    let mut top = Manifest::default();
    let mut d2 = Entry::dir(0o040700);
    d2.entries.insert("two".into(), file(2));
    top.root_mut().entries.insert("d".into(), d2);
    top.root_mut().entries.insert("x".into(), file(3));
    bottom.update(&top);
    assert_eq!(bottom.get("d").unwrap().mode, 0o040700);
    assert!(bottom.get("d/one").is_some() && bottom.get("d/two").is_some());
    assert_eq!(bottom.get("x").unwrap().size, 3);
    assert!(bottom.get("x/one").is_none());
}

#[test]
fn corrupt_manifests_are_errors_not_panics() {
    let missing = graph::Manifest {
        trees: vec![Tree {
            entries: vec![graph::Entry {
                kind: EntryKind::Tree,
                object: Digest::of(b"nowhere"),
                mode: 0o040755,
                size: 0,
                name: "d".into(),
            }],
        }],
    };
    let err = Manifest::from_graph(&missing).unwrap_err();
    assert!(err.to_string().contains("does not hold"), "{err}");
    let bad_name = graph::Manifest {
        trees: vec![Tree {
            entries: vec![graph::Entry {
                kind: EntryKind::Blob,
                object: Digest::EMPTY,
                mode: 0o100644,
                size: 0,
                name: "../escape".into(),
            }],
        }],
    };
    assert!(Manifest::from_graph(&bad_name).is_err());
    assert_eq!(
        Manifest::from_graph(&graph::Manifest::default()).unwrap(),
        Manifest::default()
    );
}

#[test]
fn read_names_the_file_when_it_is_not_a_manifest() {
    let repo = FsRepository::open(&fixtures::path("repo-a")).unwrap();
    let layer = repo
        .resolve_tag(&TagSpec::parse("test/app").unwrap())
        .unwrap()
        .target;
    let err = Manifest::read(&repo, &layer).unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("holds a layer"), "{err}");
    let Object::Layer(l) = repo.read_object(&layer).unwrap() else {
        panic!()
    };
    let m = Manifest::read(&repo, &l.manifest.unwrap()).unwrap();
    assert_eq!(m.get("newfile.txt").unwrap().size, 9);
}

/// `levels` trees above a one-file tree, each holding `width` directories
/// that all refer to the tree below: `width^levels` files from a few KiB.
fn shared_subtree_bomb(levels: usize, width: usize) -> graph::Manifest {
    let mut trees = vec![Tree {
        entries: vec![graph::Entry {
            kind: EntryKind::Blob,
            object: Digest::EMPTY,
            mode: 0o100644,
            size: 0,
            name: "f".into(),
        }],
    }];
    for _ in 0..levels {
        let below = trees.last().unwrap().digest();
        let entries = (0..width)
            .map(|i| graph::Entry {
                kind: EntryKind::Tree,
                object: below,
                mode: 0o040755,
                size: 0,
                name: format!("d{i}"),
            })
            .collect();
        trees.push(Tree { entries });
    }
    trees.reverse();
    graph::Manifest { trees }
}

/// Found reviewing `from_graph` for unbounded memory: a 2.7 KB manifest of
/// 22 trees of two directories each made it build 8 million entries (9 GB,
/// 18 s); 24 trees would have gone on to the 50 million entry cap, past this
/// machine's memory.
#[test]
fn a_manifest_of_shared_subtrees_is_refused_before_anything_is_built() {
    // 16^5 = 1,048,576 files (2.1 million entries) from 81 stored entries
    let started = std::time::Instant::now();
    let refused = |m: &graph::Manifest| match Manifest::from_graph(m) {
        Ok(_) => panic!("a manifest of shared subtrees was unpacked"),
        Err(e) => e.to_string(),
    };
    let err = refused(&shared_subtree_bomb(5, 16));
    assert!(err.contains("more than 64 times over"), "{err}");
    // 2^200 entries from 401: counted (saturating), not built
    let err = refused(&shared_subtree_bomb(200, 2));
    assert!(err.contains("stores 401"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    // some sharing is fine: 2^12 files, and what they unpack to is right
    let m = Manifest::from_graph(&shared_subtree_bomb(12, 2)).unwrap();
    let mut files = 0;
    fn walk(e: &Entry, files: &mut usize) {
        for child in e.entries.values() {
            if child.is_dir() {
                walk(child, files);
            } else {
                *files += 1;
            }
        }
    }
    walk(m.root(), &mut files);
    assert_eq!(files, 1 << 12);

    assert_eq!(entry_budget(0), MIN_ENTRY_BUDGET);
    assert_eq!(entry_budget(100_000), 6_400_000);
    assert_eq!(entry_budget(usize::MAX), MAX_ENTRIES);
}

/// `MAX_DEPTH` levels unpack, one more is refused, and neither overflows a
/// 2 MiB stack (a tokio worker's) even in a debug build.
#[test]
fn nesting_is_bounded_and_fits_a_small_stack() {
    fn nested(depth: usize) -> graph::Manifest {
        let mut trees = vec![Tree::default()];
        for _ in 0..depth {
            let below = trees.last().unwrap().digest();
            trees.push(Tree {
                entries: vec![graph::Entry {
                    kind: EntryKind::Tree,
                    object: below,
                    mode: 0o040755,
                    size: 0,
                    name: "d".into(),
                }],
            });
        }
        trees.reverse();
        graph::Manifest { trees }
    }
    let unpack = |depth: usize| {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || Manifest::from_graph(&nested(depth)).map(|_| ()))
            .unwrap()
            .join()
            .unwrap()
    };
    unpack(MAX_DEPTH).unwrap();
    let err = unpack(MAX_DEPTH + 1).unwrap_err().to_string();
    assert!(err.contains("deeper than 1024"), "{err}");
}
