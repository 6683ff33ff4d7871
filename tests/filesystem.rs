//! What processes see at the mountpoint: their runtime's merged layers, and
//! nothing outside a runtime. Real FUSE mounts in temp mountpoints.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use spfs::proto::UnmountRequest;

/// Writes `files` (path, content) into layer directory `name`.
fn layer(env: &TestEnv, name: &str, files: &[(&str, &str)]) {
    for (path, content) in files {
        let full = env.layers.join(name).join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, content).unwrap();
    }
}

fn base_and_app(env: &TestEnv) {
    layer(
        env,
        "base",
        &[("etc/version", "base\n"), ("etc/only-base", "from base\n")],
    );
    layer(
        env,
        "app",
        &[("etc/version", "app\n"), ("share/app.txt", "app data\n")],
    );
    env.tag_layers();
}

fn mnt(env: &TestEnv, rel: &str) -> String {
    env.mountpoint.join(rel).to_string_lossy().into_owned()
}

#[test]
fn the_top_layer_wins_and_lower_files_show_through() {
    let env = TestEnv::new();
    base_and_app(&env);
    let output = run_ok(&mut env.spfs(&[
        "run",
        "base+app",
        "--",
        "cat",
        &mnt(&env, "etc/version"),
        &mnt(&env, "etc/only-base"),
        &mnt(&env, "share/app.txt"),
    ]));
    assert_eq!(stdout(&output), "app\nfrom base\napp data\n");
    let reversed =
        run_ok(&mut env.spfs(&["run", "app+base", "--", "cat", &mnt(&env, "etc/version")]));
    assert_eq!(stdout(&reversed), "base\n");
}

#[test]
fn concurrent_runtimes_see_their_own_files_and_outsiders_see_nothing() {
    let env = TestEnv::new();
    base_and_app(&env);
    let version = mnt(&env, "etc/version");
    let script = format!("for i in 1 2 3 4 5 6; do cat {version}; sleep 0.1; done");
    let spawn = |spec: &str| {
        env.spfs(&["run", spec, "--", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let a = spawn("base");
    let b = spawn("base+app");
    // While both run, this process (in no runtime) sees an empty mountpoint.
    let mut outsider_saw = Vec::new();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(100));
        if let Ok(entries) = std::fs::read_dir(&env.mountpoint) {
            outsider_saw.extend(entries.map(|e| e.unwrap().file_name()));
        }
        assert!(
            std::fs::metadata(&version).is_err(),
            "an outsider must not see {version}"
        );
    }
    let a = a.wait_with_output().unwrap();
    let b = b.wait_with_output().unwrap();
    assert!(
        a.status.success() && b.status.success(),
        "{} {}",
        stderr(&a),
        stderr(&b)
    );
    assert_eq!(stdout(&a), "base\n".repeat(6));
    assert_eq!(stdout(&b), "app\n".repeat(6));
    assert!(outsider_saw.is_empty(), "outsider saw {outsider_saw:?}");
    assert!(env.service_events("service.mount").len() >= 2);
}

#[test]
fn grandchildren_and_threads_of_other_processes_see_the_runtime() {
    let env = TestEnv::new();
    base_and_app(&env);
    let version = mnt(&env, "etc/version");
    let thread_reader = format!(
        "import threading\nout = []\nt = threading.Thread(target=lambda: out.append(open({version:?}).read()))\nt.start(); t.join()\nprint(out[0], end='')"
    );
    let script = format!("sh -c 'cat {version}'; python3 -c \"$0\"");
    let output =
        run_ok(&mut env.spfs(&["run", "base+app", "--", "sh", "-c", &script, &thread_reader]));
    assert_eq!(stdout(&output), "app\napp\n");
}

/// `find` output describing the tree under `dir`, one line per entry.
fn describe_tree(env: &TestEnv, dir: &Path, inside: Option<&str>, format: &str) -> String {
    let find = format!(
        "cd {} && find . -mindepth 1 -printf '{format}' | sort",
        dir.display()
    );
    let output = match inside {
        Some(spec) => run_ok(&mut env.spfs(&["run", spec, "--", "sh", "-c", &find])),
        None => run_ok(env.command("sh").args(["-c", &find])),
    };
    stdout(&output)
}

/// Names, types, modes, sizes, owners, mtimes and link targets.
const ON_DISK: &str = "%P|%y|%m|%s|%U|%G|%T@|%l\\n";
/// What an spfs layer records: names, types, modes and link targets.
const IN_MANIFEST: &str = "%P|%y|%m|%l\\n";

#[test]
fn listings_and_metadata_match_the_merged_layers() {
    let env = TestEnv::new();
    base_and_app(&env);
    let base = env.layers.join("base");
    let app = env.layers.join("app");
    std::fs::create_dir_all(base.join("bin")).unwrap();
    std::fs::write(base.join("bin/tool"), "#!/bin/sh\necho tool\n").unwrap();
    run_ok(
        env.command("chmod")
            .args(["755", base.join("bin/tool").to_str().unwrap()]),
    );
    run_ok(
        env.command("chmod")
            .args(["600", app.join("share/app.txt").to_str().unwrap()]),
    );
    std::os::unix::fs::symlink("../etc/version", app.join("share/version-link")).unwrap();
    std::os::unix::fs::symlink("/nowhere/dangling", app.join("dangling")).unwrap();
    let big: Vec<u8> = (0..6 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(base.join("big.bin"), &big).unwrap();
    env.tag_layers();

    // The expected merge, built natively: base, then app copied over it.
    let merged = env.root.path().join("merged");
    run_ok(
        env.command("cp")
            .args(["-a", base.to_str().unwrap(), merged.to_str().unwrap()]),
    );
    run_ok(env.command("cp").args([
        "-a",
        &format!("{}/.", app.display()),
        merged.to_str().unwrap(),
    ]));

    // Directory layers show the disk as it is; committed layers show what
    // spfs records, with every file's size.
    let dirs = format!("{}+{}", base.display(), app.display());
    let expected = describe_tree(&env, &merged, None, ON_DISK);
    assert!(expected.lines().count() >= 9, "{expected}");
    assert_eq!(
        describe_tree(&env, &env.mountpoint, Some(&dirs), ON_DISK),
        expected
    );
    let expected = describe_tree(&env, &merged, None, IN_MANIFEST);
    assert_eq!(
        describe_tree(&env, &env.mountpoint, Some("base+app"), IN_MANIFEST),
        expected
    );
    let sizes = "%P|%s\\n";
    let file_sizes = |spec: Option<&str>, dir: &Path| {
        let find = format!(
            "cd {} && find . -mindepth 1 ! -type d -printf '{sizes}' | sort",
            dir.display()
        );
        let output = match spec {
            Some(spec) => run_ok(&mut env.spfs(&["run", spec, "--", "sh", "-c", &find])),
            None => run_ok(env.command("sh").args(["-c", &find])),
        };
        stdout(&output)
    };
    assert_eq!(
        file_sizes(Some("base+app"), &env.mountpoint),
        file_sizes(None, &merged)
    );

    let checks = format!(
        "sha256sum < {big} && readlink {link} && stat -c '%F %a %s' {tool} {link} && ls -la {etc} | tail -n +2 | awk '$NF != \"..\" {{print $1, $NF}}' && du -k {big}",
        big = mnt(&env, "big.bin"),
        link = mnt(&env, "share/version-link"),
        tool = mnt(&env, "bin/tool"),
        etc = mnt(&env, "etc"),
    );
    let native = checks.replace(env.mountpoint.to_str().unwrap(), merged.to_str().unwrap());
    let outside = stdout(&run_ok(env.command("sh").args(["-c", &native])));
    for spec in ["base+app", dirs.as_str()] {
        let inside = run_ok(&mut env.spfs(&["run", spec, "--", "sh", "-c", &checks]));
        assert_eq!(
            stdout(&inside).replace(env.mountpoint.to_str().unwrap(), ""),
            outside.replace(merged.to_str().unwrap(), ""),
            "{spec}"
        );
    }
    assert!(outside.contains("../etc/version"));
}

#[test]
fn writes_fail_with_read_only_file_system() {
    let env = TestEnv::new();
    base_and_app(&env);
    let etc = mnt(&env, "etc");
    for attempt in [
        format!("touch {etc}/new"),
        format!("echo hi > {etc}/version"),
        format!("mkdir {etc}/dir"),
        format!("rm {etc}/version"),
        format!("chmod 777 {etc}/version"),
        format!("touch {}", mnt(&env, "top-level-new")),
    ] {
        let output = env
            .spfs(&["run", "base", "--", "sh", "-c", &attempt])
            .output()
            .unwrap();
        assert!(!output.status.success(), "{attempt} succeeded");
        assert!(
            stderr(&output).contains("Read-only file system"),
            "{attempt}: {}",
            stderr(&output)
        );
    }
    let unchanged = run_ok(&mut env.spfs(&["run", "base", "--", "cat", &format!("{etc}/version")]));
    assert_eq!(stdout(&unchanged), "base\n");
}

#[test]
fn after_the_command_exits_its_route_is_gone() {
    let env = TestEnv::new();
    base_and_app(&env);
    run_ok(&mut env.spfs(&["run", "base", "--", "cat", &mnt(&env, "etc/version")]));
    assert!(
        env.wait_for(Duration::from_secs(5), || status_json(&env)["runtimes"]
            .as_array()
            .unwrap()
            .is_empty())
    );
    // Freed once the kernel has also released the command's open files.
    assert!(
        env.wait_for(Duration::from_secs(5), || env
            .service_events("service.view_freed")
            .len()
            == 1),
        "its view was freed"
    );
    let listing = run_ok(env.command("ls").arg("-A").arg(&env.mountpoint));
    assert_eq!(
        stdout(&listing),
        "",
        "a process with no runtime sees nothing"
    );
    let in_empty_env = run_ok(&mut env.spfs(&["run", "-", "--", "ls", "-A", &mnt(&env, "")]));
    assert_eq!(stdout(&in_empty_env), "");
}

#[test]
fn open_files_keep_reading_after_unmount() {
    let env = TestEnv::new();
    base_and_app(&env);
    let gate = env.root.path().join("gate");
    nix::unistd::mkfifo(&gate, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let script = format!(
        "exec 3< {version}; echo $$; read _ < {gate}; cat <&3; ls -A {root} | wc -l",
        version = mnt(&env, "etc/version"),
        gate = gate.display(),
        root = env.mountpoint.display(),
    );
    let mut child = env
        .spfs(&["run", "base", "--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut pid_line = String::new();
    out.read_line(&mut pid_line).unwrap();
    let pid: i64 = pid_line.trim().parse().unwrap();
    block_on(async {
        let mut control = control(&env).await;
        control
            .unmount(UnmountRequest { root_pid: pid })
            .await
            .unwrap();
    });
    std::fs::OpenOptions::new()
        .write(true)
        .open(&gate)
        .unwrap()
        .write_all(b"go\n")
        .unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(
        rest, "base\n0\n",
        "the open file still reads; the root is empty now"
    );
    let ended = env.service_events("service.runtime_ended");
    assert_eq!(ended[0]["reason"], "request");
    assert_eq!(ended[0]["live_views"], 1, "the open file held its view");
    assert!(
        env.wait_for(Duration::from_secs(5), || env
            .service_events("service.view_freed")
            .len()
            == 1),
        "freed once the file was closed"
    );
}

#[test]
fn bad_refs_are_refused_with_the_bad_part_named_and_nothing_runs() {
    let env = TestEnv::new();
    base_and_app(&env);
    let plainfile = env.root.path().join("plainfile");
    std::fs::write(&plainfile, "not a layer").unwrap();
    let marker = env.root.path().join("ran");
    let cases = [
        ("base++app", "empty item at position 2"),
        ("+", "empty item at position 1"),
        ("base+/tmp/../etc", "contains '..'"),
        ("base+nosuchtag", "nosuchtag"),
        (plainfile.to_str().unwrap(), "is not a directory"),
        ("/no/such/dir", "\"/no/such/dir\" does not exist"),
        ("bad tag!", "\"bad tag!\""),
    ];
    for (spec, expected) in cases {
        let output = env
            .spfs(&["run", spec, "--", "touch", marker.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!output.status.success(), "{spec} was accepted");
        assert!(
            stderr(&output).contains(expected),
            "{spec}: {}",
            stderr(&output)
        );
        assert!(!marker.exists(), "{spec}: the command ran");
    }
    let listed = run_ok(&mut env.spfs(&["tags"]));
    assert_eq!(stdout(&listed), "app\nbase\n");
}

#[test]
fn an_absolute_directory_is_a_layer_too() {
    let env = TestEnv::new();
    base_and_app(&env);
    let outside = env.root.path().join("elsewhere");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("note"), "absolute\n").unwrap();
    let spec = format!("base+{}", outside.display());
    let output = run_ok(&mut env.spfs(&[
        "run",
        &spec,
        "--",
        "cat",
        &mnt(&env, "note"),
        &mnt(&env, "etc/version"),
    ]));
    assert_eq!(stdout(&output), "absolute\nbase\n");
}

#[test]
fn tags_resolve_in_the_callers_repository() {
    let env = TestEnv::new();
    base_and_app(&env);
    run_ok(&mut env.spfs(&["service", "start"]));
    let other_repo = env.root.path().join("other-repo");
    let other_layer = env.root.path().join("other-layer");
    std::fs::create_dir_all(other_layer.join("etc")).unwrap();
    std::fs::write(other_layer.join("etc/version"), "other base\n").unwrap();
    run_ok(
        env.spfs(&[
            "commit",
            "--path",
            other_layer.to_str().unwrap(),
            "-t",
            "base",
        ])
        .env("SPFS_STORAGE_ROOT", &other_repo),
    );
    let output = run_ok(
        env.spfs(&["run", "base", "--", "cat", &mnt(&env, "etc/version")])
            .env("SPFS_STORAGE_ROOT", &other_repo),
    );
    assert_eq!(stdout(&output), "other base\n");
    let output = run_ok(&mut env.spfs(&["run", "base", "--", "cat", &mnt(&env, "etc/version")]));
    assert_eq!(stdout(&output), "base\n");
}
