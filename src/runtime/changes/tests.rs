use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::tracking::commit::commit_dir;

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn write(root: &Path, path: &str, text: &str) {
    let path = root.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    set_mode(&path, 0o644);
}

fn mkdir(root: &Path, path: &str) {
    let path = root.join(path);
    std::fs::create_dir_all(&path).unwrap();
    set_mode(&path, 0o755);
}

/// A repository holding one layer: `a/{x,y}`, `b/{c/z}`, `d/{p,q,sub/r}`, `top`;
/// the runtime's scratch; the base manifest of that layer.
struct Fixture {
    _tmp: tempfile::TempDir,
    repo: FsRepository,
    scratch: Scratch,
    base: Manifest,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let layer_dir = tmp.path().join("layer");
    for dir in ["", "a", "b", "b/c", "d", "d/sub"] {
        mkdir(&layer_dir, dir);
    }
    for (path, text) in [
        ("a/x", "x"),
        ("a/y", "y"),
        ("b/c/z", "z"),
        ("d/p", "p"),
        ("d/q", "q"),
        ("d/sub/r", "r"),
        ("top", "top"),
    ] {
        write(&layer_dir, path, text);
    }
    let repo = FsRepository::create(&tmp.path().join("repo")).unwrap();
    let (layer, _) = commit_dir(&repo, &layer_dir, &mut |_| {}).unwrap();
    let repos = ProxyRepository::from_repositories(vec![FsRepository::open(repo.root()).unwrap()]);
    let base = base_manifest(&[layer.to_base32()], &repos).unwrap();
    let scratch = Scratch::create(&tmp.path().join("scratch/rt")).unwrap();
    Fixture {
        _tmp: tmp,
        repo,
        scratch,
        base,
    }
}

fn lines(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .map(|c| c.format(Path::new("/spfs")))
        .collect()
}

/// What the stack shows with the committed layer on top (masks hidden).
fn merged_paths(f: &Fixture, commit: &LayerCommit) -> Vec<String> {
    let mut merged = f.base.clone();
    merged.update(&Manifest::read(&f.repo, &commit.manifest).unwrap());
    let mut out = Vec::new();
    fn walk(entry: &Entry, prefix: &str, out: &mut Vec<String>) {
        for (name, child) in &entry.entries {
            if child.is_mask() {
                continue;
            }
            let path = join(prefix, name);
            out.push(path.clone());
            walk(child, &path, out);
        }
    }
    walk(merged.root(), "", &mut out);
    out
}

fn commit(f: &Fixture) -> Option<LayerCommit> {
    commit_changes(&f.repo, &f.scratch, &f.base, false, &mut |_| {}).unwrap()
}

#[test]
fn deletions_become_masks() {
    let f = fixture();
    // rm a/x; rm -r b
    f.scratch.add_mask(Path::new("a/x")).unwrap();
    f.scratch.add_mask(Path::new("b")).unwrap();
    // a marker for something the stack never had changes nothing
    f.scratch.add_mask(Path::new("nothing/here")).unwrap();
    assert_eq!(
        lines(&diff(&f.scratch, &f.base).unwrap()),
        ["-/spfs/a/x", "-/spfs/b", "-/spfs/b/c", "-/spfs/b/c/z"]
    );
    let done = commit(&f).unwrap();
    assert_eq!(done.changes, 4);
    let layer = Manifest::read(&f.repo, &done.manifest).unwrap();
    let a = layer.get("a").unwrap();
    assert!(a.is_dir() && a.mode == f.base.get("a").unwrap().mode);
    assert_eq!(a.entries.len(), 1);
    let mask = layer.get("a/x").unwrap();
    assert_eq!(
        (mask.kind, mask.mode, mask.object),
        (EntryKind::Mask, MASK_MODE, Digest::NULL)
    );
    assert!(layer.get("b").unwrap().is_mask());
    assert!(layer.get("nothing").is_none());
    assert_eq!(
        merged_paths(&f, &done),
        ["a", "a/y", "d", "d/p", "d/q", "d/sub", "d/sub/r", "top"]
    );
}

#[test]
fn an_opaque_recreated_dir_masks_the_base_children_not_made_again() {
    let f = fixture();
    // rm -r d; mkdir -p d/sub; echo new > d/p; echo r2 > d/sub/r2
    f.scratch.add_mask(Path::new("d")).unwrap();
    let upper = f.scratch.upper();
    mkdir(upper, "d/sub");
    write(upper, "d/p", "new");
    write(upper, "d/sub/r2", "r2");
    assert_eq!(
        lines(&diff(&f.scratch, &f.base).unwrap()),
        [
            "~/spfs/d/p [content, size {1=>3}]",
            "-/spfs/d/q",
            "-/spfs/d/sub/r",
            "+/spfs/d/sub/r2",
        ]
    );
    let done = commit(&f).unwrap();
    let layer = Manifest::read(&f.repo, &done.manifest).unwrap();
    assert!(layer.get("d/q").unwrap().is_mask());
    assert!(layer.get("d/sub/r").unwrap().is_mask());
    assert_eq!(
        merged_paths(&f, &done),
        ["a", "a/x", "a/y", "b", "b/c", "b/c/z", "d", "d/p", "d/sub", "d/sub/r2", "top"]
    );
    let p = layer.get("d/p").unwrap();
    assert!(f.repo.has_payload(&p.object));
}

#[test]
fn a_copied_up_unchanged_parent_dir_is_not_a_change() {
    let f = fixture();
    let upper = f.scratch.upper();
    mkdir(upper, "b/c");
    // a file opened for writing but left as it was
    write(upper, "a/x", "x");
    set_mode(&upper.join("a"), 0o755);
    assert!(diff(&f.scratch, &f.base).unwrap().is_empty());
    assert_eq!(commit(&f), None);
    let empty = commit_changes(&f.repo, &f.scratch, &f.base, true, &mut |_| {})
        .unwrap()
        .unwrap();
    assert_eq!(empty.changes, 0);
    assert!(Manifest::read(&f.repo, &empty.manifest)
        .unwrap()
        .root()
        .entries
        .is_empty());
    // its mode changed: now it is a change
    set_mode(&upper.join("b/c"), 0o700);
    assert_eq!(
        lines(&diff(&f.scratch, &f.base).unwrap()),
        ["~/spfs/b/c [mode {040755=>040700}]"]
    );
}

#[test]
fn added_changed_and_replaced_entries_are_listed_as_spfs_lists_them() {
    let f = fixture();
    let upper = f.scratch.upper();
    write(upper, "new/deep/file", "hello");
    mkdir(upper, "new");
    mkdir(upper, "new/deep");
    write(upper, "top", "TOP");
    set_mode(&upper.join("top"), 0o755);
    // a directory replaced by a file
    f.scratch.add_mask(Path::new("b")).unwrap();
    write(upper, "b", "now a file");
    std::os::unix::fs::symlink("a/y", upper.join("link")).unwrap();
    assert_eq!(
        lines(&diff(&f.scratch, &f.base).unwrap()),
        [
            "~/spfs/b [mode {040755=>100644}, content, size {0=>10}]",
            "-/spfs/b/c",
            "-/spfs/b/c/z",
            "+/spfs/link",
            "+/spfs/new",
            "+/spfs/new/deep",
            "+/spfs/new/deep/file",
            "~/spfs/top [mode {100644=>100755}, content]",
        ]
    );
    let done = commit(&f).unwrap();
    let layer = Manifest::read(&f.repo, &done.manifest).unwrap();
    assert!(layer.get("link").unwrap().is_symlink());
    assert!(!layer.get("b").unwrap().is_dir());
}

#[test]
fn reset_drops_changes_at_and_below_paths_or_all_of_them() {
    let f = fixture();
    let upper = f.scratch.upper();
    write(upper, "a/x", "changed");
    write(upper, "a/new", "new");
    write(upper, "top", "changed");
    f.scratch.add_mask(Path::new("b/c")).unwrap();
    f.scratch.add_mask(Path::new("d/q")).unwrap();
    f.scratch
        .reset(&[PathBuf::from("a/x"), PathBuf::from("b")])
        .unwrap();
    assert!(!upper.join("a/x").exists());
    assert!(upper.join("a/new").exists());
    assert_eq!(
        f.scratch.masks().unwrap().into_iter().collect::<Vec<_>>(),
        [PathBuf::from("d/q")]
    );
    assert!(f.scratch.reset(&[PathBuf::from("../etc")]).is_err());
    f.scratch.reset(&[]).unwrap();
    assert_eq!(std::fs::read_dir(upper).unwrap().count(), 0);
    assert!(f.scratch.masks().unwrap().is_empty());
    assert!(Scratch::open(f.scratch.root()).is_ok());
    assert!(diff(&f.scratch, &f.base).unwrap().is_empty());
}

#[test]
fn paths_are_taken_under_the_mountpoint_or_relative_to_it() {
    let mnt = Path::new("/tmp/mnt");
    let ok = |p: &str| mount_relative(p, mnt).unwrap();
    assert_eq!(ok("/spfs/bin/tool"), PathBuf::from("bin/tool"));
    assert_eq!(ok("/tmp/mnt/bin/"), PathBuf::from("bin"));
    assert_eq!(ok("./bin/./tool"), PathBuf::from("bin/tool"));
    for bad in ["/etc/passwd", "/spfs", "bin/../..", "", "/tmp/mnt"] {
        assert!(mount_relative(bad, mnt).is_err(), "{bad}");
    }
}

#[test]
fn a_directory_layer_is_part_of_the_base() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a/x", "from the dir layer");
    let repos =
        ProxyRepository::from_repositories(vec![FsRepository::open(f.repo.root()).unwrap()]);
    let layer = merged_layer_digest(&f);
    let stack = [layer, dir.path().display().to_string()];
    let base = base_manifest(&stack, &repos).unwrap();
    let x = base.get("a/x").unwrap();
    assert_eq!(x.object, Digest::of(b"from the dir layer"));
    assert!(base.get("a/y").is_some());
    assert!(base_manifest(&[], &repos)
        .unwrap()
        .root()
        .entries
        .is_empty());
    assert!(base_manifest(&["/no/such/dir".into()], &repos).is_err());
}

fn merged_layer_digest(f: &Fixture) -> String {
    let (layer, _) = write_layer(&f.repo, &f.base).unwrap();
    layer.to_base32()
}

#[test]
fn two_manifests_differ_as_their_trees_do() {
    let f = fixture();
    let upper = f.scratch.upper();
    f.scratch.add_mask(Path::new("b")).unwrap();
    write(upper, "a/x", "changed");
    write(upper, "new", "new");
    let shown = visible_manifest(&f.scratch, &f.base).unwrap();
    assert_eq!(
        lines(&diff_manifests(&f.base, &shown)),
        lines(&diff(&f.scratch, &f.base).unwrap())
    );
    assert_eq!(
        lines(&diff_manifests(&shown, &f.base)),
        [
            "~/spfs/a/x [content, size {7=>1}]",
            "+/spfs/b",
            "+/spfs/b/c",
            "+/spfs/b/c/z",
            "-/spfs/new",
        ]
    );
    assert!(diff_manifests(&f.base, &f.base).is_empty());
}

/// A deletion commits to the same manifest as the overlayfs whiteout spfs
/// commits for it (a 0/0 character device with mode 0), byte for byte.
#[test]
fn a_deletion_commits_as_spfs_commits_an_overlayfs_whiteout() {
    let f = fixture();
    f.scratch.add_mask(Path::new("a/x")).unwrap();
    write(f.scratch.upper(), "a/new", "new");
    set_mode(&f.scratch.upper().join("a"), 0o755);
    let ours = commit(&f).unwrap();

    let overlay = tempfile::tempdir().unwrap();
    mkdir(overlay.path(), "a");
    write(overlay.path(), "a/new", "new");
    let made = nix::sys::stat::mknod(
        &overlay.path().join("a/x"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        0,
    );
    if let Err(e) = made {
        eprintln!("skipped: mknod needs root ({e})");
        return;
    }
    set_mode(&overlay.path().join("a/x"), 0);
    let (_, theirs) = commit_dir(&f.repo, overlay.path(), &mut |_| {}).unwrap();
    assert_eq!(ours.manifest, theirs);
}
