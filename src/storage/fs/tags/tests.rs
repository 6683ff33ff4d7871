use super::*;
use crate::storage::fixtures;
use crate::storage::fs::tests::{copy_repo, fixture_repo, new_repo};

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

#[test]
fn pushing_tags_builds_a_stream() {
    let (_tmp, repo) = new_repo();
    let spec = TagSpec::parse("org/sub/name").unwrap();
    let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
    let first = repo.push_tag(&spec, &a).unwrap();
    assert_eq!(first.parent, Digest::NULL);
    assert!(first.user.contains('@'));
    assert_eq!(
        repo.push_tag(&spec, &a).unwrap(),
        first,
        "same target: no new version"
    );
    let second = repo.push_tag(&spec, &b).unwrap();
    assert_eq!(second.parent, first.digest());
    let stream = repo.tag_stream(&spec).unwrap();
    assert_eq!(
        stream.iter().map(|t| t.target).collect::<Vec<_>>(),
        vec![b, a]
    );
    assert_eq!(repo.resolve_tag(&spec).unwrap().target, b);
    assert_eq!(repo.resolve_tag(&spec.with_version(1)).unwrap().target, a);
    assert_eq!(repo.ls_tags("org").unwrap(), vec!["sub/"]);
    assert_eq!(repo.ls_tags("org/sub").unwrap(), vec!["name"]);

    repo.remove_tag(&first).unwrap();
    let stream = repo.tag_stream(&spec).unwrap();
    assert_eq!(stream.len(), 1);
    assert_eq!(stream[0].target, b);
    assert!(matches!(
        repo.remove_tag(&first),
        Err(StorageError::UnknownTag { .. })
    ));

    repo.push_tag(&TagSpec::parse("org/other").unwrap(), &a)
        .unwrap();
    repo.remove_tag_stream(&spec).unwrap();
    assert!(matches!(
        repo.tag_stream(&spec),
        Err(StorageError::UnknownTag { .. })
    ));
    assert!(
        !repo.root().join("tags/org/sub").exists(),
        "empty folders go"
    );
    assert!(
        repo.root().join("tags/org").is_dir(),
        "a folder with a tag stays"
    );
    assert!(matches!(
        repo.remove_tag_stream(&spec),
        Err(StorageError::UnknownTag { .. })
    ));
    // no lock or temp files left
    let names: Vec<String> = std::fs::read_dir(repo.root().join("tags/org"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["other.tag"]);
}

#[test]
fn concurrent_pushes_all_land() {
    let (_tmp, repo) = new_repo();
    let spec = TagSpec::parse("race/tag").unwrap();
    std::thread::scope(|s| {
        for i in 0..8u8 {
            let (repo, spec) = (&repo, &spec);
            s.spawn(move || repo.push_tag(spec, &Digest::of(&[i])).unwrap());
        }
    });
    let stream = repo.tag_stream(&spec).unwrap();
    assert_eq!(stream.len(), 8);
    let mut targets: Vec<Digest> = stream.iter().map(|t| t.target).collect();
    targets.sort();
    let mut want: Vec<Digest> = (0..8u8).map(|i| Digest::of(&[i])).collect();
    want.sort();
    assert_eq!(targets, want);
    // each version's parent is a version pushed before it
    let digests: Vec<Digest> = stream.iter().map(|t| t.digest()).collect();
    for tag in &stream[..7] {
        assert!(digests.contains(&tag.parent), "{tag:?}");
    }
}

#[test]
fn a_stale_lock_times_out_with_advice() {
    let (_tmp, repo) = new_repo();
    let spec = TagSpec::parse("locked").unwrap();
    repo.push_tag(&spec, &Digest::EMPTY).unwrap();
    std::fs::write(repo.root().join("tags/locked.tag.lock"), "").unwrap();
    let err = repo.push_tag(&spec, &Digest::NULL).unwrap_err();
    assert!(matches!(err, StorageError::TagLocked { .. }), "{err}");
    assert!(err.with_fix().contains("locked.tag.lock"), "{err}");
}

#[test]
fn a_corrupt_tag_file_is_named() {
    let (_tmp, repo) = copy_repo("repo-a");
    let path = repo.root().join("tags/test/base.tag");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(bytes.len() - 3);
    std::fs::write(&path, &bytes).unwrap();
    let err = repo
        .resolve_tag(&TagSpec::parse("test/base").unwrap())
        .unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("base.tag"), "{err}");
}
