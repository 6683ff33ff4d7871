use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::*;
use crate::storage::fixtures;

fn d(text: &str) -> Digest {
    Digest::parse(&format!("{text}====")).unwrap()
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Copy a fixture input with the modes the real inputs had: folders 0755,
/// files 0644, `bin/run.sh` 0755; `link-*` become the symlinks they were
/// (git keeps them as files holding the target); `empty/` is added.
fn input(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    copy(&fixtures::path(&format!("inputs/{name}")), tmp.path());
    if name == "base" {
        std::fs::create_dir(tmp.path().join("empty")).unwrap();
        set_mode(&tmp.path().join("empty"), 0o755);
        set_mode(&tmp.path().join("bin/run.sh"), 0o755);
        for link in ["link-to-hello", "link-deep"] {
            let path = tmp.path().join(link);
            let target = std::fs::read_to_string(&path).unwrap();
            std::fs::remove_file(&path).unwrap();
            std::os::unix::fs::symlink(target, &path).unwrap();
        }
    }
    tmp
}

fn copy(from: &Path, to: &Path) {
    for item in std::fs::read_dir(from).unwrap() {
        let item = item.unwrap();
        let dest = to.join(item.file_name());
        if item.file_type().unwrap().is_dir() {
            std::fs::create_dir(&dest).unwrap();
            set_mode(&dest, 0o755);
            copy(&item.path(), &dest);
        } else {
            std::fs::copy(item.path(), &dest).unwrap();
            set_mode(&dest, 0o644);
        }
    }
}

fn new_repo() -> (tempfile::TempDir, FsRepository) {
    let tmp = tempfile::tempdir().unwrap();
    let repo = FsRepository::create(&tmp.path().join("repo")).unwrap();
    (tmp, repo)
}

fn commit(repo: &FsRepository, dir: &Path) -> (Digest, Digest) {
    let mut last = CommitStats::default();
    let out = commit_dir(repo, dir, &mut |s| last = s).unwrap();
    assert_eq!(last.files, last.total_files);
    assert_eq!(last.bytes, last.total_bytes);
    out
}

#[test]
fn committing_the_fixture_inputs_gives_the_real_tools_digests() {
    let (_tmp, repo) = new_repo();
    let base = input("base");
    let (base_layer, base_manifest) = commit(&repo, base.path());
    assert_eq!(
        base_manifest,
        d("VKPPE7W4F4WZTVQNTVY7OQYC4AOBXQPZ6GUWJ5FLU2DNKSS7JP6A")
    );
    assert_eq!(
        base_layer,
        d("J2W56GBLNURZPCYUYXPJEGDYNEZJJ4T76QBWVDKXHVAGWJXOVBCQ")
    );

    let (layer, manifest) = commit(&repo, input("base2").path());
    assert_eq!(
        manifest,
        d("4I4CWJD4Q4MRDVZUCLRZ6R5M3SEXK4WQD4GSPEGO7JN5B2W65RPA")
    );
    assert_eq!(
        layer,
        d("W4QCIP2D4GN4LIFZ3QZMA232HLNRE2XWEC3NDXNMZRRETHNOIKJA")
    );

    let (app_layer, manifest) = commit(&repo, input("app").path());
    assert_eq!(
        manifest,
        d("BNDTAF7T4QAP7VOSEU6TVPFV5ETWBXRVSQ5LV7WNO25XSU4EA4FA")
    );
    assert_eq!(
        app_layer,
        d("BNK4OLWRSOFILS2OXQRHJWS4EKTY5DR53LOBVEQI3YATN5EI7Q2Q")
    );

    let stack = commit_platform(
        &repo,
        &ProxyRepository::from_repositories(Vec::new()),
        &[base_layer, app_layer],
    )
    .unwrap();
    assert_eq!(
        stack,
        d("VK6HKZ57PWKPI4L5PVJDVPWZDMVAWUAQQX75GEWDPAAHKFSKCVHQ")
    );

    // what we wrote is byte for byte what spfs wrote
    let real = FsRepository::open(&fixtures::path("repo-a")).unwrap();
    for digest in real.iter_objects().map(Result::unwrap) {
        let ours = std::fs::read(repo.object_path(&digest)).unwrap();
        let theirs = std::fs::read(real.object_path(&digest)).unwrap();
        assert!(ours == theirs, "object {digest} differs");
    }
    for digest in real.iter_payloads().map(Result::unwrap) {
        assert!(repo.has_payload(&digest), "payload {digest}");
    }
    // committing again changes nothing
    assert_eq!(commit(&repo, base.path()), (base_layer, base_manifest));
    assert!(commit_platform(
        &repo,
        &ProxyRepository::from_repositories(Vec::new()),
        &[Digest::of(b"no such layer")]
    )
    .is_err());
}

#[test]
fn a_whiteout_commits_as_a_mask() {
    let (_tmp, repo) = new_repo();
    let dir = input("mask");
    let gone = dir.path().join("gone");
    let made = nix::sys::stat::mknod(
        &gone,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o644),
        0,
    );
    if let Err(e) = made {
        eprintln!("skipped: mknod needs root ({e})");
        return;
    }
    set_mode(&gone, 0o644);
    let (mask_layer, manifest) = commit(&repo, dir.path());
    assert_eq!(
        manifest,
        d("FAVZX2YAGAQ5FYFPKVIGJMBV5WW3WTKFJOIJSJR5JTAVBLXS74OA")
    );
    assert_eq!(
        mask_layer,
        d("VCASFHRQTNIA6A2T7HM27CXETLSBFUGSI73YCD6IP2SNCUFYFISQ")
    );
    let (base_layer, _) = commit(&repo, input("base").path());
    let masked = commit_platform(
        &repo,
        &ProxyRepository::from_repositories(Vec::new()),
        &[base_layer, mask_layer],
    )
    .unwrap();
    assert_eq!(
        masked,
        d("4FH6NJEQPB3LVTWZCFSXIYKSKYMWQU63L3RJQU6QFFS7GU6AIHDA")
    );
    let real = FsRepository::open(&fixtures::path("repo-mask")).unwrap();
    for digest in real.iter_objects().map(Result::unwrap) {
        let ours = std::fs::read(repo.object_path(&digest)).unwrap();
        assert!(
            ours == std::fs::read(real.object_path(&digest)).unwrap(),
            "{digest}"
        );
    }
}

#[test]
fn special_files_are_refused_by_name() {
    let (_tmp, repo) = new_repo();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let err = commit_dir(&repo, dir.path(), &mut |_| {}).unwrap_err();
    assert!(matches!(err, StorageError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("pipe"), "{err}");
}
