//! spfs repositories as users have them: the fixtures written by the real
//! spfs 0.44 are read exactly through `spfs run`, `spfs commit` reproduces the
//! real tool's digests, and every bad ref, corrupt file or missing payload is
//! named. Real binaries, real FUSE mounts, temp repositories.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/spfs");

/// Copies a fixture repository into the env and makes it the local one.
fn use_fixture_repo(env: &TestEnv, name: &str) -> PathBuf {
    let target = env.root.path().join(name);
    run_ok(env.command("cp").args([
        "-r",
        &format!("{FIXTURES}/{name}"),
        target.to_str().unwrap(),
    ]));
    target
}

/// `inputs/NAME` as the real tool saw it: modes restored, symlinks made,
/// `base/empty/` added (git keeps none of these).
fn prepared_input(env: &TestEnv, name: &str) -> PathBuf {
    let dir = env.root.path().join("inputs").join(name);
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    run_ok(env.command("cp").args([
        "-r",
        &format!("{FIXTURES}/inputs/{name}"),
        dir.to_str().unwrap(),
    ]));
    run_ok(env.command("sh").args([
        "-c",
        &format!(
            "cd {} && find . -type d -exec chmod 755 {{}} + && find . -type f -exec chmod 644 {{}} +",
            dir.display()
        ),
    ]));
    if name == "base" {
        std::fs::set_permissions(
            dir.join("bin/run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        for (link, target) in [
            ("link-to-hello", "hello.txt"),
            ("link-deep", "a/b/c/deep.txt"),
        ] {
            std::fs::remove_file(dir.join(link)).unwrap();
            std::os::unix::fs::symlink(target, dir.join(link)).unwrap();
        }
        std::fs::create_dir_all(dir.join("empty")).unwrap();
        std::fs::set_permissions(dir.join("empty"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
    }
    dir
}

/// Names, types, modes, sizes of files and link targets, plus each file's sha256.
fn describe(env: &TestEnv, dir: &Path, inside: Option<(&str, &[(&str, &Path)])>) -> String {
    let script = format!(
        "cd {} && find . -mindepth 1 \\( -type d -printf '%P|%y|%m|%l\\n' \\) -o \\( ! -type d -printf '%P|%y|%m|%s|%l\\n' \\) | sort && find . -type f -exec sha256sum {{}} + | sort -k2",
        dir.display()
    );
    let output = match inside {
        Some((spec, vars)) => {
            let mut cmd = env.spfs(&["run", spec, "--", "sh", "-c", &script]);
            for (key, value) in vars {
                cmd.env(key, value);
            }
            run_ok(&mut cmd)
        }
        None => run_ok(env.command("sh").args(["-c", &script])),
    };
    stdout(&output)
}

fn expected_merge(env: &TestEnv, layers: &[&Path]) -> PathBuf {
    let merged = env.root.path().join(format!("merged-{}", layers.len()));
    std::fs::create_dir_all(&merged).unwrap();
    for layer in layers {
        run_ok(env.command("cp").args([
            "-a",
            &format!("{}/.", layer.display()),
            merged.to_str().unwrap(),
        ]));
    }
    merged
}

#[test]
fn fixture_repositories_are_read_exactly() {
    let env = TestEnv::new();
    let base = prepared_input(&env, "base");
    let base2 = prepared_input(&env, "base2");
    let app = prepared_input(&env, "app");
    let mask = prepared_input(&env, "mask");
    let repo_a = use_fixture_repo(&env, "repo-a");
    let repo_mask = use_fixture_repo(&env, "repo-mask");
    let repo_legacy = use_fixture_repo(&env, "repo-legacy");
    let mnt = env.mountpoint.clone();

    let in_repo = |repo: &Path| vec![("SPFS_STORAGE_ROOT", repo.to_path_buf())];
    for (repo, spec, layers) in [
        (&repo_a, "test/base~1", vec![base.as_path()]),
        (&repo_a, "test/base", vec![base2.as_path()]),
        (
            &repo_a,
            "test/base~1+test/app",
            vec![base.as_path(), app.as_path()],
        ),
        (&repo_a, "test/stack", vec![base.as_path(), app.as_path()]),
        (
            &repo_a,
            "BNK4OLWRSO+test/base~1",
            vec![app.as_path(), base.as_path()],
        ),
        (
            &repo_legacy,
            "test/stack",
            vec![base.as_path(), app.as_path()],
        ),
        (&repo_legacy, "test/base", vec![base.as_path()]),
    ] {
        let expected = describe(&env, &expected_merge(&env, &layers), None);
        let vars = in_repo(repo);
        let vars: Vec<(&str, &Path)> = vars.iter().map(|(k, v)| (*k, v.as_path())).collect();
        let seen = describe(&env, &mnt, Some((spec, &vars)));
        assert_eq!(seen, expected, "{spec} in {}", repo.display());
        assert!(
            seen.contains("link-to-hello|l|777|9|hello.txt") || !layers.contains(&base.as_path())
        );
        let _ = std::fs::remove_dir_all(env.root.path().join(format!("merged-{}", layers.len())));
    }

    // The mask hides `gone`; the platform shows base under it.
    let masked_expected = expected_merge(&env, &[base.as_path()]);
    std::fs::remove_file(masked_expected.join("gone")).unwrap();
    std::fs::copy(mask.join("added.txt"), masked_expected.join("added.txt")).unwrap();
    let expected = describe(&env, &masked_expected, None);
    let vars = [("SPFS_STORAGE_ROOT", repo_mask.as_path())];
    assert_eq!(describe(&env, &mnt, Some(("test/masked", &vars))), expected);
    assert!(!expected.contains("gone"));
}

#[test]
fn commit_reproduces_the_real_tools_digests() {
    let env = TestEnv::new();
    let repo = env.root.path().join("new-repo");
    let commit = |dir: &Path, tag: &str| -> String {
        let output = run_ok(
            env.spfs(&["commit", "--path", dir.to_str().unwrap(), "-t", tag])
                .env("SPFS_STORAGE_ROOT", &repo),
        );
        assert!(stderr(&output).contains(&format!("created tag=\"{tag}\"")));
        stdout(&output).trim().to_owned()
    };
    let base = prepared_input(&env, "base");
    assert_eq!(
        commit(&base, "test/base"),
        "J2W56GBLNURZPCYUYXPJEGDYNEZJJ4T76QBWVDKXHVAGWJXOVBCQ===="
    );
    assert_eq!(
        commit(&prepared_input(&env, "base2"), "test/base"),
        "W4QCIP2D4GN4LIFZ3QZMA232HLNRE2XWEC3NDXNMZRRETHNOIKJA===="
    );
    assert_eq!(
        commit(&prepared_input(&env, "app"), "test/app"),
        "BNK4OLWRSOFILS2OXQRHJWS4EKTY5DR53LOBVEQI3YATN5EI7Q2Q===="
    );
    // Committing the same content again gives the same digest.
    assert_eq!(
        commit(&base, "test/again"),
        "J2W56GBLNURZPCYUYXPJEGDYNEZJJ4T76QBWVDKXHVAGWJXOVBCQ===="
    );
    let platform = run_ok(
        env.spfs(&[
            "commit",
            "--ref",
            "test/base~1+test/app",
            "-t",
            "test/stack",
        ])
        .env("SPFS_STORAGE_ROOT", &repo),
    );
    assert_eq!(
        stdout(&platform).trim(),
        "VK6HKZ57PWKPI4L5PVJDVPWZDMVAWUAQQX75GEWDPAAHKFSKCVHQ===="
    );
    let info = run_ok(
        env.spfs(&["info", "test/base~1", "test/stack"])
            .env("SPFS_STORAGE_ROOT", &repo),
    );
    let info = stdout(&info);
    assert!(
        info.contains(" manifest: VKPPE7W4F4WZTVQNTVY7OQYC4AOBXQPZ6GUWJ5FLU2DNKSS7JP6A===="),
        "{info}"
    );
    assert!(
        info.contains("stack (top-down):\n  - BNK4OLWRSOFILS2OXQRHJWS4EKTY5DR53LOBVEQI3YATN5EI7Q2Q====\n  - J2W56GBLNURZPCYUYXPJEGDYNEZJJ4T76QBWVDKXHVAGWJXOVBCQ===="),
        "{info}"
    );
    // The mask input: a 0/0 character device becomes a mask.
    let mask = prepared_input(&env, "mask");
    nix::sys::stat::mknod(
        &mask.join("gone"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o644),
        0,
    )
    .unwrap();
    assert_eq!(
        commit(&mask, "test/mask"),
        "VCASFHRQTNIA6A2T7HM27CXETLSBFUGSI73YCD6IP2SNCUFYFISQ===="
    );
    // Ours passes our check, and the real tool's files read back identically.
    let check = run_ok(env.spfs(&["check"]).env("SPFS_STORAGE_ROOT", &repo));
    assert!(
        stdout(&check).contains("No issues found"),
        "{}",
        stdout(&check)
    );
    let log = run_ok(
        env.spfs(&["log", "test/base"])
            .env("SPFS_STORAGE_ROOT", &repo),
    );
    let log = stdout(&log);
    let lines: Vec<&str> = log.lines().map(|l| l.split(' ').nth(1).unwrap()).collect();
    assert_eq!(lines, ["test/base", "test/base~1"]);
    let read = run_ok(
        env.spfs(&["read", "test/base~1", "random.bin"])
            .env("SPFS_STORAGE_ROOT", &repo),
    );
    assert_eq!(
        read.stdout,
        std::fs::read(format!("{FIXTURES}/inputs/base/random.bin")).unwrap()
    );
}

/// A small deterministic generator, so a failing tree can be rebuilt.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_tree(rng: &mut Rng, dir: &Path, depth: u32) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..rng.below(6) {
        let name = format!("n{i}-{}", rng.below(1000));
        let path = dir.join(&name);
        match rng.below(5) {
            0 if depth < 4 => random_tree(rng, &path, depth + 1),
            1 => std::os::unix::fs::symlink(format!("../target-{}", rng.below(50)), &path).unwrap(),
            _ => {
                let size = [0, 1, 100, 4096, 70_000][rng.below(5) as usize];
                let bytes: Vec<u8> = (0..size).map(|_| rng.next() as u8).collect();
                std::fs::write(&path, bytes).unwrap();
                let mode = [0o644, 0o755, 0o600, 0o444][rng.below(4) as usize];
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            }
        }
    }
}

#[test]
fn random_trees_read_back_identical_after_commit() {
    let env = TestEnv::new();
    let mut entries = 0;
    for seed in 1..=6u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let lower = env.root.path().join(format!("tree-{seed}-lower"));
        let upper = env.root.path().join(format!("tree-{seed}-upper"));
        random_tree(&mut rng, &lower, 0);
        random_tree(&mut rng, &upper, 0);
        let tag = |dir: &Path, name: &str| {
            run_ok(&mut env.spfs(&[
                "commit",
                "--allow-empty",
                "--path",
                dir.to_str().unwrap(),
                "-t",
                name,
            ]));
        };
        tag(&lower, &format!("rand/lower{seed}"));
        tag(&upper, &format!("rand/upper{seed}"));
        let expected = describe(&env, &expected_merge(&env, &[&lower, &upper]), None);
        entries += expected.lines().count();
        let spec = format!("rand/lower{seed}+rand/upper{seed}");
        assert_eq!(
            describe(&env, &env.mountpoint, Some((&spec, &[]))),
            expected,
            "seed {seed}"
        );
        std::fs::remove_dir_all(env.root.path().join("merged-2")).unwrap();
    }
    assert!(entries > 40, "the trees were not trivial: {entries} lines");
}

#[test]
fn corrupt_objects_and_missing_payloads_are_named_by_check_and_run() {
    let env = TestEnv::new();
    let layer = env.root.path().join("layer");
    std::fs::create_dir_all(&layer).unwrap();
    std::fs::write(layer.join("file.txt"), "precious\n").unwrap();
    let digest = stdout(&run_ok(&mut env.spfs(&[
        "commit",
        "--path",
        layer.to_str().unwrap(),
        "-t",
        "t/layer",
    ])));
    let digest = digest.trim();
    let check = run_ok(&mut env.spfs(&["check"]));
    assert!(stdout(&check).contains("No issues found"));

    // A missing payload: check names it and fails; reading it in a runtime fails.
    let payload_digest = spfs::encoding::Digest::of(b"precious\n").to_base32();
    let payload = env
        .repo
        .join("payloads")
        .join(&payload_digest[..2])
        .join(&payload_digest[2..]);
    assert!(payload.exists(), "sha256 of the file names its payload");
    let kept = env.root.path().join("kept-payload");
    std::fs::rename(&payload, &kept).unwrap();
    let check = env.spfs(&["check"]).output().unwrap();
    assert_eq!(check.status.code(), Some(1));
    assert!(
        stderr(&check).contains(&format!("missing payload {payload_digest}")),
        "{}",
        stderr(&check)
    );
    let cat = env
        .spfs(&[
            "run",
            "t/layer",
            "--",
            "cat",
            &format!("{}/file.txt", env.mountpoint.display()),
        ])
        .output()
        .unwrap();
    assert!(!cat.status.success());
    assert!(
        stderr(&cat).contains("Input/output error"),
        "{}",
        stderr(&cat)
    );
    assert!(!env.service_events("service.payload_missing").is_empty());
    std::fs::rename(&kept, &payload).unwrap();

    // A flipped byte in the layer object: check and run both name the file.
    let object = env
        .repo
        .join("objects")
        .join(&digest[..2])
        .join(&digest[2..]);
    let mut bytes = std::fs::read(&object).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::set_permissions(&object, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&object, bytes).unwrap();
    let check = env.spfs(&["check"]).output().unwrap();
    assert_eq!(check.status.code(), Some(1));
    assert!(
        stderr(&check).contains(object.to_str().unwrap()),
        "{}",
        stderr(&check)
    );
    let marker = env.root.path().join("ran");
    let run = env
        .spfs(&["run", "t/layer", "--", "touch", marker.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(
        stderr(&run).contains(object.to_str().unwrap()),
        "{}",
        stderr(&run)
    );
    assert!(!marker.exists(), "nothing ran");
}

#[test]
fn bad_refs_and_repositories_each_get_their_own_error_and_nothing_runs() {
    let env = TestEnv::new();
    let repo_a = use_fixture_repo(&env, "repo-a");
    let marker = env.root.path().join("ran");
    let run = |spec: &str, vars: &[(&str, &str)]| {
        let mut cmd = env.spfs(&["run", spec, "--", "touch", marker.to_str().unwrap()]);
        cmd.env("SPFS_STORAGE_ROOT", &repo_a);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let output = cmd.output().unwrap();
        assert!(!output.status.success(), "{spec} was accepted");
        assert!(!marker.exists(), "{spec}: the command ran");
        stderr(&output)
    };
    let err = run("test/nosuch", &[]);
    assert!(err.contains("unknown tag test/nosuch"), "{err}");
    let err = run("test/base~7", &[]);
    assert!(err.contains("test/base~7"), "{err}");
    // B and BN start several objects of repo-a.
    let err = run("BN", &[]);
    assert!(err.contains("ambiguous reference \"BN\""), "{err}");
    assert!(
        err.contains("BNK4OLWRSOFILS2OXQRHJWS4EKTY5DR53LOBVEQI3YATN5EI7Q2Q===="),
        "{err}"
    );
    let err = run("test/bad name", &[]);
    assert!(err.contains("\"test/bad name\""), "{err}");
    let err = run(
        "test/base",
        &[("SPFS_REMOTE_origin_ADDRESS", "http://spfs.example.com/")],
    );
    assert!(err.contains("not supported: remote \"origin\""), "{err}");
    std::fs::write(repo_a.join("VERSION"), "1.0.0").unwrap();
    let err = run("test/base", &[]);
    assert!(err.contains("1.0.0") && err.contains("0."), "{err}");
}

#[test]
fn concurrent_commits_to_one_tag_both_land() {
    let env = TestEnv::new();
    let dirs: Vec<PathBuf> = (0..2)
        .map(|i| {
            let dir = env.root.path().join(format!("c{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("which"), format!("{i}\n")).unwrap();
            dir
        })
        .collect();
    let children: Vec<_> = dirs
        .iter()
        .map(|dir| {
            env.spfs(&["commit", "--path", dir.to_str().unwrap(), "-t", "same/tag"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
    }
    let log = stdout(&run_ok(&mut env.spfs(&["log", "same/tag"])));
    assert_eq!(log.lines().count(), 2, "{log}");
    let check = run_ok(&mut env.spfs(&["check"]));
    assert!(stdout(&check).contains("No issues found"));
}

#[test]
fn a_payload_only_in_a_file_remote_is_served() {
    let env = TestEnv::new();
    let layer = env.root.path().join("layer");
    std::fs::create_dir_all(&layer).unwrap();
    std::fs::write(layer.join("remote.txt"), "from the remote\n").unwrap();
    run_ok(&mut env.spfs(&[
        "commit",
        "--path",
        layer.to_str().unwrap(),
        "-t",
        "t/remote",
    ]));
    let remote = env.root.path().join("remote-repo");
    run_ok(
        env.command("cp")
            .args(["-a", env.repo.to_str().unwrap(), remote.to_str().unwrap()]),
    );
    // The payload leaves the local repository; objects stay.
    std::fs::remove_dir_all(env.repo.join("payloads")).unwrap();
    let file = format!("{}/remote.txt", env.mountpoint.display());
    let without = env
        .spfs(&["run", "t/remote", "--", "cat", &file])
        .output()
        .unwrap();
    assert!(
        !without.status.success(),
        "no remote: nowhere to read it from"
    );
    let with = run_ok(env.spfs(&["run", "t/remote", "--", "cat", &file]).env(
        "SPFS_REMOTE_origin_ADDRESS",
        format!("file://{}", remote.display()),
    ));
    assert_eq!(stdout(&with), "from the remote\n");
}

#[test]
fn repository_commands_follow_spfs() {
    let env = TestEnv::new();
    let repo_a = use_fixture_repo(&env, "repo-a");
    let spfs = |args: &[&str]| {
        let output = run_ok(env.spfs(args).env("SPFS_STORAGE_ROOT", &repo_a));
        stdout(&output)
    };
    assert_eq!(spfs(&["tags"]), "test/app\ntest/base\ntest/stack\n");
    assert_eq!(spfs(&["ls-tags"]), "test/\n");
    assert_eq!(spfs(&["ls-tags", "test"]), "app\nbase\nstack\n");
    let layers = spfs(&["layers"]);
    assert_eq!(layers.lines().count(), 3, "{layers}");
    assert!(layers.contains("J2W56GBLNURZPCYUYXPJEGDYNEZJJ4T76QBWVDKXHVAGWJXOVBCQ===="));
    assert_eq!(
        spfs(&["platforms"]),
        "VK6HKZ57PWKPI4L5PVJDVPWZDMVAWUAQQX75GEWDPAAHKFSKCVHQ====\n"
    );
    assert_eq!(spfs(&["ls", "test/base~1", "a"]), "b/\nconf.ini\n");
    assert_eq!(
        spfs(&["read", "test/stack", "/spfs/hello.txt"]),
        std::fs::read_to_string(format!("{FIXTURES}/inputs/app/hello.txt")).unwrap()
    );
    let log = spfs(&["log", "test/base"]);
    let first: Vec<&str> = log.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(first, ["W4QCIP2D4G", "J2W56GBLNU"]);
    // Tag, write, untag as spfs does.
    let blob = run_ok(
        env.spfs(&["write", "-t", "test/blob"])
            .env("SPFS_STORAGE_ROOT", &repo_a)
            .stdin(Stdio::piped())
            .stdin(std::fs::File::open(format!("{FIXTURES}/inputs/base/hello.txt")).unwrap()),
    );
    assert_eq!(stdout(&blob).trim().len(), 56);
    assert_eq!(
        spfs(&["read", "test/blob"]),
        std::fs::read_to_string(format!("{FIXTURES}/inputs/base/hello.txt")).unwrap()
    );
    spfs(&["tag", "test/base~1", "test/base"]);
    assert_eq!(spfs(&["log", "test/base"]).lines().count(), 3);
    spfs(&["untag", "test/base~1"]);
    assert_eq!(spfs(&["log", "test/base"]).lines().count(), 2);
    spfs(&["untag", "--latest", "test/base"]);
    assert_eq!(spfs(&["log", "test/base"]).lines().count(), 1);
    spfs(&["untag", "--all", "test/base"]);
    let gone = env
        .spfs(&["info", "test/base"])
        .env("SPFS_STORAGE_ROOT", &repo_a)
        .output()
        .unwrap();
    assert_eq!(gone.status.code(), Some(1));
    assert!(stderr(&gone).contains("test/base"), "{}", stderr(&gone));
    // A closed pipe ends the command quietly, as it ends other tools.
    let piped = run_ok(env.command("sh").env("SPFS_STORAGE_ROOT", &repo_a).args(["-c", &format!("{SPFS} layers | head -1; {SPFS} read test/base~1 random.bin | head -c 10 >/dev/null; echo done")]));
    assert!(!stderr(&piped).contains("panicked"), "{}", stderr(&piped));
    assert_eq!(stdout(&piped).lines().last(), Some("done"));
}

#[test]
fn the_readme_first_command_runs_a_tagged_environment() {
    let env = TestEnv::new();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = readme.split("```sh\n").nth(1).unwrap();
    let command = block.split("\n```").next().unwrap();
    let command = command
        .strip_prefix("cargo build && ")
        .expect("the README's first command starts with cargo build")
        .replace("./target/debug/spfs", SPFS)
        .replace(
            "/tmp/spfs-demo",
            env.root.path().join("demo").to_str().unwrap(),
        );
    let output = run_ok(
        env.command("sh")
            .args(["-c", &command])
            .current_dir(env!("CARGO_MANIFEST_DIR")),
    );
    let text = stdout(&output);
    assert!(text.contains("app 2.3 (on top of base)"), "{text}");
    assert!(text.contains("hello"), "{text}");
}
