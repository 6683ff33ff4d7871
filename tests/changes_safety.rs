//! Editable runtimes, commit and the scratch directory under attack and
//! misuse (the third hardening round): nothing outside a runtime's own
//! changes is ever deleted or read, a crash or a signal at any point
//! leaves one whole state, every failure is reported with what is kept.
//! Real service, real FUSE mounts, each test in its own temp dirs.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

/// A directory outside every runtime with a file in it, to aim links at.
fn victim(env: &TestEnv) -> std::path::PathBuf {
    let victim = env.root.path().join("victim");
    std::fs::create_dir_all(victim.join("build")).unwrap();
    std::fs::write(victim.join("build/precious"), "mine\n").unwrap();
    victim
}

#[test]
fn reset_never_deletes_through_a_symlink_made_in_the_runtime() {
    let env = TestEnv::with_base_to_edit();
    let victim = victim(&env);
    let out = env.sh(
        &["-e", "base"],
        &format!(
            "ln -s {v} $M/proj; $SPFS reset proj/build; echo reset=$?; \
             $SPFS reset proj; echo link=$?; ls -A $M",
            v = victim.display()
        ),
    );
    assert!(
        victim.join("build/precious").exists(),
        "reset deleted a file outside the runtime through a symlink: {}{}",
        stdout(&out),
        stderr(&out)
    );
    // Nothing of the runtime was at proj/build (its parent is a link), and
    // resetting the link itself drops the link, not what it points to.
    assert_eq!(
        stdout(&out),
        "reset=0\nlink=0\netc\nshare\n",
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_reset_of_a_path_below_a_file_drops_nothing_else_and_the_view_matches_the_disk() {
    let env = TestEnv::with_base_to_edit();
    // `share/kept` is a changed file: `share/kept/x` can hold no change.
    let out = env.sh(
        &["-e", "base"],
        "echo changed > $M/etc/version; echo more >> $M/share/kept; \
         $SPFS reset etc/version share/kept/x; echo rc=$?; cat $M/etc/version $M/share/kept",
    );
    assert_eq!(
        stdout(&out),
        "rc=0\n1.0\nstays\nmore\n",
        "both paths reset as one, and the layer's etc/version shows again: {}",
        stderr(&out)
    );
}

#[test]
fn runtime_names_that_are_not_plain_names_are_refused_everywhere() {
    let env = TestEnv::with_base_to_edit();
    env.durable_runtime_of_a_killed_service("kept");
    let parent_files = || std::fs::read_dir(env.root.path()).unwrap().count();
    let before = parent_files();
    for name in [".", "..", ".hidden"] {
        let out = env
            .spfs(&["run", "--runtime-name", name, "-", "--", "true"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name} was accepted");
        assert!(
            stderr(&out).contains("is not usable") && stderr(&out).contains("'.'"),
            "{name}: {}",
            stderr(&out)
        );
    }
    // Over the socket, as any client of the service's user could send it.
    run_ok(&mut env.spfs(&["service", "start"]));
    for name in [".", ".."] {
        let refused = block_on(async {
            control(&env)
                .await
                .remove_runtime(spfs::proto::RemoveRuntimeRequest { name: name.into() })
                .await
        })
        .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{name}");
    }
    assert!(
        env.scratch.join("kept/upper/etc/version").exists(),
        "the stopped runtime's changes are kept"
    );
    assert_eq!(parent_files(), before, "nothing above the scratch dir went");
    // A running runtime is not removed over the socket either.
    let (held, _) = env.hold_run(&["--runtime-name", "live", "-e", "base"], "echo up");
    let running = block_on(async {
        control(&env)
            .await
            .remove_runtime(spfs::proto::RemoveRuntimeRequest {
                name: "live".into(),
            })
            .await
    })
    .unwrap_err();
    assert_eq!(running.code(), tonic::Code::FailedPrecondition);
    release(held);
}

#[test]
fn files_open_for_writing_keep_writing_after_a_reset_of_another_path_or_a_stack_change() {
    let env = TestEnv::with_base_to_edit();
    let out = env.sh(
        &["-e", "base"],
        "exec 3>$M/build.log; echo one >&3; echo x > $M/etc/version; \
         $SPFS reset etc/version || echo reset-failed; echo two >&3 || echo two-failed; \
         $SPFS runtime change-stack base+app >/dev/null || echo change-failed; \
         echo three >&3 || echo three-failed; exec 3>&-; cat $M/build.log",
    );
    assert_eq!(
        stdout(&out),
        "one\ntwo\nthree\n",
        "an open log kept writing: {}",
        stderr(&out)
    );
}

/// `spfs run ARGS... -- sh -c SCRIPT` with `$M` and `$SPFS` set, as
/// [`TestEnv::sh`] runs it, not started yet.
fn sh_command(env: &TestEnv, args: &[&str], script: &str) -> std::process::Command {
    let mut command = env.spfs(&["run"]);
    command
        .args(args)
        .args(["--", "sh", "-c", script])
        .env("M", &env.mountpoint)
        .env("SPFS", SPFS);
    command
}

/// Starts `command` with the test pause at `point` (`src/test_hooks.rs`)
/// and waits until a process of it is there. Returns the child (output
/// piped) and the pause's file, which holds the paused process's pid;
/// deleting it lets that process go on.
fn start_paused(
    env: &TestEnv,
    mut command: std::process::Command,
    point: &str,
) -> (std::process::Child, std::path::PathBuf) {
    let marker = env.root.path().join(format!("paused-{point}"));
    let child = command
        .env("SPFS_TEST_PAUSE", format!("{point}:{}", marker.display()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        env.wait_for(Duration::from_secs(30), || marker.exists()),
        "{point}: never reached"
    );
    (child, marker)
}

/// The digest a commit reported on stderr (`created digest=...`), first one.
fn created_digest(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("created digest="))
        .unwrap_or_else(|| panic!("no digest reported: {stderr}"))
        .to_owned()
}

#[test]
fn a_service_killed_during_a_commits_stack_change_leaves_one_whole_runtime() {
    // Killed after the new stack was saved, and again half way through
    // dropping the changes (the markers set aside, the files not yet).
    for point in ["stack_change.saved", "drop_all.masks_aside"] {
        let env = TestEnv::with_base_to_edit();
        let script = sh_command(
            &env,
            &["--runtime-name", "c", "-e", "base"],
            "echo new > $M/etc/version; rm $M/etc/gone; mkdir $M/opt; echo t > $M/opt/tool; \
             $SPFS commit layer; echo rc=$?",
        );
        let (child, _) = start_paused(&env, script, point);
        env.kill_service();
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        let layer = created_digest(&err);
        assert!(
            stdout(&out).ends_with("rc=1\n"),
            "{point}: {}",
            stdout(&out)
        );
        assert!(
            err.contains(&format!("layer {layer} was committed")) && err.contains("never less"),
            "{point}: {err}"
        );
        // The next service finds the runtime with the new stack saved and
        // shows exactly what the runtime showed before the commit.
        let info = stdout(&run_ok(&mut env.spfs(&["runtime", "info", "c"])));
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        // spfs's runtime JSON: the stack top-down
        let stack = info["status"]["stack"].as_array().unwrap();
        let last = stack.first().unwrap().as_str().unwrap();
        assert_eq!(
            last.trim_end_matches('='),
            layer.trim_end_matches('='),
            "{point}: {info}"
        );
        let shown = env.sh_ok(
            &["--rerun", "c"],
            "cat $M/etc/version; ls $M/etc; cat $M/opt/tool",
        );
        assert_eq!(shown, "new\nversion\nt\n", "{point}");
    }
}

/// Moves the local repository to `origin` (a secondary repository, as a
/// studio's origin is), leaving no local repository at all.
fn move_repo_to_origin(env: &TestEnv) -> std::path::PathBuf {
    let origin = env.root.path().join("origin");
    std::fs::rename(&env.repo, &origin).unwrap();
    origin
}

#[test]
fn commit_platform_and_ref_over_a_base_only_in_a_secondary_repository() {
    let env = TestEnv::with_base_to_edit();
    let origin = move_repo_to_origin(&env);
    let address = format!("file://{}", origin.display());
    let out = env
        .spfs(&["run", "-e", "base", "--", "sh", "-c"])
        .arg("echo built > $M/etc/built; $SPFS commit platform; echo rc=$?")
        .env("M", &env.mountpoint)
        .env("SPFS", SPFS)
        .env("SPFS_REMOTE_origin_ADDRESS", &address)
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(text.ends_with("rc=0\n"), "{text}{}", stderr(&out));
    let platform = text.lines().next().unwrap().to_owned();
    assert!(
        env.repo.join("VERSION").exists(),
        "the local repository was made"
    );
    let shown = run_ok(
        env.spfs(&["run", &platform, "--", "cat"])
            .arg(env.mountpoint.join("etc/built"))
            .arg(env.mountpoint.join("etc/version"))
            .env("SPFS_REMOTE_origin_ADDRESS", &address),
    );
    assert_eq!(stdout(&shown), "built\n1.0\n");
    // `spfs commit --ref` of the same base works too.
    let by_ref = env
        .spfs(&["commit", "--ref", "base"])
        .env("SPFS_REMOTE_origin_ADDRESS", &address)
        .output()
        .unwrap();
    assert!(by_ref.status.success(), "{}", stderr(&by_ref));
}

#[test]
fn commit_layer_on_a_fresh_machine_makes_the_local_repository() {
    let env = TestEnv::new();
    std::fs::remove_dir_all(&env.repo).unwrap();
    let out = env.sh(&["-"], "echo x > $M/f; $SPFS commit layer; echo rc=$?");
    assert!(
        stdout(&out).ends_with("rc=0\n"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let layer = stdout(&out).lines().next().unwrap().to_owned();
    let shown = run_ok(
        env.spfs(&["run", &layer, "--", "cat"])
            .arg(env.mountpoint.join("f")),
    );
    assert_eq!(stdout(&shown), "x\n");
}

#[test]
fn a_commit_whose_tag_cannot_be_written_keeps_the_runtime_editable_and_names_the_digest() {
    let env = TestEnv::with_base_to_edit();
    // A file where the tag's folder should be.
    std::fs::write(env.repo.join("tags/broken"), "not a folder").unwrap();
    let out = env.sh(
        &["-e", "base"],
        "echo mine > $M/etc/mine; $SPFS commit layer -t broken/tag; echo rc=$?; \
         echo more >> $M/etc/mine && cat $M/etc/mine; $SPFS diff",
    );
    let err = stderr(&out);
    let digest = created_digest(&err);
    assert!(
        err.contains(&format!("{digest} was committed, but tag \"broken/tag\"")),
        "{err}"
    );
    assert_eq!(
        stdout(&out),
        format!("rc=1\nmine\nmore\n+{}/etc/mine\n", env.mountpoint.display()),
        "editable again, with its changes: {err}"
    );
}

#[test]
fn keep_runtime_without_edit_keeps_a_read_only_runtime_to_rerun() {
    let env = TestEnv::with_base_to_edit();
    run_ok(&mut env.spfs(&[
        "run",
        "--keep-runtime",
        "--runtime-name",
        "ro",
        "base",
        "--",
        "true",
    ]));
    let list = stdout(&run_ok(&mut env.spfs(&["runtime", "list"])));
    assert!(
        list.contains("ro ") && list.contains("editable=false\tdurable=true\tstatus=saved"),
        "{list}"
    );
    let again = env.sh(
        &["--rerun", "ro"],
        "cat $M/etc/version; echo x > $M/etc/new 2>/dev/null || echo read-only",
    );
    assert_eq!(stdout(&again), "1.0\nread-only\n", "{}", stderr(&again));
}

#[test]
fn removing_a_running_durable_runtime_does_what_it_says() {
    let env = TestEnv::with_base_to_edit();
    let (held, _) = env.hold_run(
        &["--keep-runtime", "--runtime-name", "d", "-e", "base"],
        &format!("echo x > {}/etc/new; echo up", env.mountpoint.display()),
    );
    // --force alone ends nothing: the runtime is durable.
    let refused = env
        .spfs(&["runtime", "remove", "d", "--force"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("--remove-durable"));
    let removed = run_ok(&mut env.spfs(&["runtime", "remove", "d", "--force", "--remove-durable"]));
    assert!(stderr(&removed).contains("removed runtime d"));
    let list = stdout(&run_ok(&mut env.spfs(&["runtime", "list", "-q"])));
    assert!(!list.lines().any(|l| l == "d"), "{list}");
    assert!(!env.scratch.join("d").exists(), "its changes are gone");
    let _ = held.wait_with_output();
}

#[test]
fn a_scratch_dir_deleted_under_a_running_runtime_is_made_again() {
    let env = TestEnv::with_base_to_edit();
    let out = env.sh(
        &["--runtime-name", "lost", "-e", "base"],
        "echo one > $M/etc/one; rm -rf $S/lost; echo two > $M/etc/two && cat $M/etc/two; \
         $SPFS reset; echo reset=$?; echo three > $M/etc/three && cat $M/etc/three; \
         ls $S/lost",
    );
    assert_eq!(
        stdout(&out),
        "two\nreset=0\nthree\nin-use\nmasks\nruntime.json\nupper\n",
        "{}",
        stderr(&out)
    );
    assert!(
        !env.service_events("service.scratch_recreated").is_empty(),
        "the loss is logged"
    );
}

#[test]
fn another_service_or_shell_never_takes_a_running_runtime_for_a_stopped_one() {
    let env = TestEnv::with_base_to_edit();
    let (held, _) = env.hold_run(
        &["--runtime-name", "live", "-e", "base"],
        &format!("echo mine > {}/etc/mine; echo up", env.mountpoint.display()),
    );
    // A shell of the same user with another runtime dir (cron, `su`, a
    // second SPFS_RUNTIME_DIR) sees the same scratch dir, not the service.
    let other = TestEnv::new();
    let there = |args: &[&str]| {
        other
            .spfs(args)
            .env("SPFS_SCRATCH_DIR", &env.scratch)
            .output()
            .unwrap()
    };
    let list = there(&["runtime", "list", "-q"]);
    assert!(!stdout(&list).contains("live"), "{}", stdout(&list));
    let prune = there(&["runtime", "prune", "--remove-durable"]);
    assert!(prune.status.success(), "{}", stderr(&prune));
    let remove = there(&["runtime", "remove", "live"]);
    assert!(!remove.status.success());
    // A second service started there does not list it either.
    let started = there(&["service", "start"]);
    assert!(started.status.success(), "{}", stderr(&started));
    let list = there(&["runtime", "list", "-q"]);
    assert!(!stdout(&list).contains("live"), "{}", stdout(&list));
    let prune = there(&["runtime", "prune", "--remove-durable"]);
    assert!(prune.status.success(), "{}", stderr(&prune));
    assert!(
        env.scratch.join("live/upper/etc/mine").exists(),
        "the running runtime's changes are kept"
    );
    release(held);
    // Once it ended, its own service removed it as usual.
    assert!(env.wait_for(Duration::from_secs(5), || !env
        .scratch
        .join("live")
        .exists()));
}

#[test]
fn a_scratch_dir_or_runtime_directory_another_user_can_write_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to give a directory to another user");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::with_base_to_edit();
    std::fs::create_dir_all(&env.scratch).unwrap();
    // Writable by everyone: refused with the fix.
    std::fs::set_permissions(&env.scratch, std::fs::Permissions::from_mode(0o777)).unwrap();
    let open = env.sh(&["-e", "base"], "echo x > $M/f");
    assert!(!open.status.success());
    assert!(
        stderr(&open).contains("writable by group or others")
            && stderr(&open).contains("chmod 700"),
        "{}",
        stderr(&open)
    );
    // Another user's: refused, naming them.
    std::fs::set_permissions(&env.scratch, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&env.scratch, Some(65534), Some(65534)).unwrap();
    env.stop_service();
    let theirs = env.sh(&["-e", "base"], "echo x > $M/f");
    assert!(
        stderr(&theirs).contains("owned by uid 65534"),
        "{}",
        stderr(&theirs)
    );
    // A runtime directory planted by another user in our scratch dir is
    // neither listed nor re-entered.
    std::os::unix::fs::chown(&env.scratch, Some(0), Some(0)).unwrap();
    env.stop_service();
    env.durable_runtime_of_a_killed_service("planted");
    let planted = env.scratch.join("planted");
    std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
    let list = stdout(&run_ok(&mut env.spfs(&["runtime", "list", "-q"])));
    assert!(!list.contains("planted"), "{list}");
    let rerun = env.sh(&["--rerun", "planted"], "true");
    assert!(!rerun.status.success(), "{}", stderr(&rerun));
}

#[test]
fn ctrl_c_during_a_commit_leaves_the_runtime_editable_and_no_temp_file() {
    let env = TestEnv::with_base_to_edit();
    let script = sh_command(
        &env,
        &["-e", "base"],
        "head -c 6000000 /dev/zero > $M/big; $SPFS commit layer; echo rc=$?; \
         echo more > $M/etc/more && echo editable; $SPFS diff",
    );
    let (child, marker) = start_paused(&env, script, "payload.writing");
    // The commit is half way through a payload: Ctrl-C.
    let committer: i32 = std::fs::read_to_string(&marker).unwrap().parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(committer),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let m = env.mountpoint.display();
    assert_eq!(
        stdout(&out),
        format!("rc=130\neditable\n+{m}/big\n+{m}/etc/more\n"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
    let work = env.repo.join("payloads/work");
    let left: Vec<_> = std::fs::read_dir(&work)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "temp files left: {left:?}");
}

/// Makes `depth` nested directories named `name` below `top` by directory
/// fds (the path may be longer than PATH_MAX), with `file` at the bottom.
fn deep_tree(top: &Path, name: &str, depth: usize) {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::{mkdirat, Mode};
    std::fs::create_dir_all(top).unwrap();
    let mut dir = nix::fcntl::open(top, OFlag::O_DIRECTORY, Mode::empty()).unwrap();
    for _ in 0..depth {
        mkdirat(&dir, name, Mode::from_bits_truncate(0o755)).unwrap();
        dir = openat(&dir, name, OFlag::O_DIRECTORY, Mode::empty()).unwrap();
    }
    let file = openat(
        &dir,
        "file",
        OFlag::O_CREAT | OFlag::O_WRONLY,
        Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    nix::unistd::write(&file, b"deep\n").unwrap();
}

#[test]
fn commit_path_of_paths_longer_than_path_max_commits_them_whole() {
    let env = TestEnv::new();
    let top = env.root.path().join("deep");
    // 30 levels of 200-byte names: 6,000-byte paths.
    deep_tree(&top, &"n".repeat(200), 30);
    let out = run_ok(&mut env.spfs(&["commit", "--path", top.to_str().unwrap()]));
    let layer = stdout(&out).trim().to_owned();
    let shown = env.sh_ok(
        &[&layer],
        "find $M -type d | wc -l; find $M -name file -execdir cat {} \\;",
    );
    assert_eq!(shown, "31\ndeep\n");
    // Deeper than a layer may nest: refused, naming the limit.
    let deeper = env.root.path().join("deeper");
    deep_tree(&deeper, "d", 1_100);
    let refused = env
        .spfs(&["commit", "--path", deeper.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = stderr(&refused);
    assert!(
        err.contains("deeper than 1024 levels") && err.len() < 2_000,
        "{err}"
    );
}

/// Not a test on its own: the half of the next test that runs inside the
/// runtime (shells cannot `cd` past PATH_MAX). Does nothing unless
/// SPFS_TEST_DEEP_IN is set to the mountpoint.
#[test]
fn deep_writes_helper() {
    use nix::fcntl::{openat, renameat, OFlag};
    use nix::sys::stat::{fchmodat, mkdirat, FchmodatFlags, Mode};
    let Some(mountpoint) = std::env::var_os("SPFS_TEST_DEEP_IN") else {
        return;
    };
    let name = "n".repeat(200);
    let mut dir = nix::fcntl::open(
        &Path::new(&mountpoint).join("etc"),
        OFlag::O_DIRECTORY,
        Mode::empty(),
    )
    .unwrap();
    for _ in 0..30 {
        mkdirat(&dir, name.as_str(), Mode::from_bits_truncate(0o755)).unwrap();
        dir = openat(&dir, name.as_str(), OFlag::O_DIRECTORY, Mode::empty()).unwrap();
    }
    let write = |file: &str, flags: OFlag, text: &[u8]| {
        let fd = openat(
            &dir,
            file,
            flags | OFlag::O_WRONLY,
            Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        nix::unistd::write(&fd, text).unwrap();
    };
    write("f", OFlag::O_CREAT, b"deep\n");
    write("f", OFlag::O_APPEND, b"more\n");
    renameat(&dir, "f", &dir, "g").unwrap();
    let fd = openat(&dir, "g", OFlag::O_RDONLY, Mode::empty()).unwrap();
    let mut text = [0u8; 64];
    let n = nix::unistd::read(&fd, &mut text).unwrap();
    print!("{}", String::from_utf8_lossy(&text[..n]));
    nix::unistd::unlinkat(&dir, "g", nix::unistd::UnlinkatFlags::NoRemoveDir).unwrap();
    write("h", OFlag::O_CREAT, b"kept\n");
    fchmodat(
        &dir,
        "h",
        Mode::from_bits_truncate(0o600),
        FchmodatFlags::FollowSymlink,
    )
    .unwrap();
    let commit = std::process::Command::new(std::env::var_os("SPFS").unwrap())
        .args(["commit", "layer"])
        .output()
        .unwrap();
    print!("{}", String::from_utf8_lossy(&commit.stdout));
    eprint!("{}", String::from_utf8_lossy(&commit.stderr));
}

#[test]
fn an_editable_runtime_holds_and_commits_paths_longer_than_path_max() {
    let env = TestEnv::with_base_to_edit();
    let me = std::env::current_exe().unwrap();
    let out = env
        .spfs(&["run", "-e", "base", "--"])
        .arg(&me)
        .args([
            "deep_writes_helper",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SPFS_TEST_DEEP_IN", &env.mountpoint)
        .env("SPFS", SPFS)
        .output()
        .unwrap();
    let text = stdout(&out);
    let layer = text
        .split_once("deep\nmore\n")
        .and_then(|(_, rest)| rest.lines().next())
        .unwrap_or_else(|| panic!("{text}{}", stderr(&out)))
        .to_owned();
    let shown = env.sh_ok(
        &[&format!("base+{layer}")],
        "find $M/etc -name h -execdir cat {} \\; -execdir stat -c %a {} \\;; find $M/etc -type d | wc -l",
    );
    assert_eq!(shown, "kept\n600\n31\n");
}

#[test]
fn commit_path_refuses_a_file_swapped_for_a_symlink_or_a_fifo_after_its_walk() {
    let env = TestEnv::new();
    let dir = env.root.path().join("folder");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a"), "a").unwrap();
    let secret = env.root.path().join("secret");
    std::fs::write(&secret, "0600 secret\n").unwrap();
    for swap in ["symlink", "fifo"] {
        let commit = env.spfs(&["commit", "--path", dir.to_str().unwrap()]);
        let (child, marker) = start_paused(&env, commit, "commit.walked");
        std::fs::remove_file(dir.join("a")).unwrap();
        match swap {
            "symlink" => std::os::unix::fs::symlink(&secret, dir.join("a")).unwrap(),
            _ => nix::unistd::mkfifo(
                &dir.join("a"),
                nix::sys::stat::Mode::from_bits_truncate(0o644),
            )
            .unwrap(),
        }
        // The walk is done and nothing read yet: let it go on.
        std::fs::remove_file(&marker).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success(), "{swap}: committed anyway");
        assert!(
            stderr(&out).contains("changed while it was committed"),
            "{swap}: {}",
            stderr(&out)
        );
        std::fs::remove_file(dir.join("a")).unwrap();
        std::fs::write(dir.join("a"), "a").unwrap();
    }
}

#[test]
fn an_overlay_forgets_the_paths_a_build_made_and_deleted() {
    let env = TestEnv::new();
    env.sh_ok(
        &["-"],
        "i=0; while [ $i -lt 2000 ]; do echo x > $M/tmp.$i; rm $M/tmp.$i; i=$((i+1)); done; \
         mkdir $M/d; i=0; while [ $i -lt 500 ]; do echo x > $M/d/f.$i; i=$((i+1)); done; rm -r $M/d",
    );
    let freed = || {
        env.service_events("service.view_freed")
            .into_iter()
            .find(|e| e["editable"] == true)
    };
    assert!(env.wait_for(Duration::from_secs(10), || freed().is_some()));
    let event = freed().unwrap();
    let (nodes, unused) = (
        event["nodes"].as_u64().unwrap(),
        event["nodes_freed"].as_u64().unwrap(),
    );
    // 2,501 paths were made and deleted, at most 501 at once: the tree
    // numbered about that many, and freed them as they went.
    assert!(nodes < 600, "the overlay numbered {nodes} nodes: {event}");
    assert!(nodes - unused < 10, "{event}");
}

/// The payload file in `repo` whose contents are `text`.
fn payload_with(repo: &Path, text: &str) -> std::path::PathBuf {
    let mut pending = vec![repo.join("payloads")];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if std::fs::read(&path).unwrap() == text.as_bytes() {
                return path;
            }
        }
    }
    panic!("no payload holds {text:?}")
}

#[test]
fn a_payload_swapped_in_place_is_refused_from_another_user_and_found_by_check_rehash() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to give a payload to another user");
        return;
    }
    let env = TestEnv::with_base_to_edit();
    let payload = payload_with(&env.repo, "1.0\n");
    let cat = || {
        env.spfs(&["run", "base", "--", "cat"])
            .arg(env.mountpoint.join("etc/version"))
            .output()
            .unwrap()
    };
    // Ours, swapped for bytes of the same size: served (we could write our
    // own files anyway), and `spfs check --rehash` finds it.
    std::fs::write(&payload, "2.0\n").unwrap();
    assert_eq!(stdout(&cat()), "2.0\n");
    let plain = run_ok(&mut env.spfs(&["check"]));
    assert!(stdout(&plain).contains("No issues found"));
    let rehashed = env.spfs(&["check", "--rehash"]).output().unwrap();
    assert_eq!(rehashed.status.code(), Some(1));
    assert!(
        stderr(&rehashed).contains("corrupt payload")
            && stderr(&rehashed).contains("changed on disk"),
        "{}",
        stderr(&rehashed)
    );
    // Another user's payload is hashed before it is served.
    std::os::unix::fs::chown(&payload, Some(65534), Some(65534)).unwrap();
    let refused = cat();
    assert!(!refused.status.success(), "served: {}", stdout(&refused));
    std::fs::write(&payload, "1.0\n").unwrap();
    std::os::unix::fs::chown(&payload, Some(65534), Some(65534)).unwrap();
    assert_eq!(stdout(&cat()), "1.0\n", "a good one is served");
    assert!(run_ok(&mut env.spfs(&["check", "--rehash"]))
        .status
        .success());
}

#[test]
fn of_two_commits_at_once_the_second_is_refused_and_thaws_nothing() {
    let env = TestEnv::with_base_to_edit();
    let (checked, frozen) = (
        env.root.path().join("b-checked"),
        env.root.path().join("a-frozen"),
    );
    // B has looked (the runtime is editable) when A freezes it; then B
    // goes on to freeze it too. (Each wait gives up after 30 s, so a broken
    // pause point fails the test instead of hanging it.)
    let out = env.sh(
        &["-e", "base"],
        &format!(
            "echo mine > $M/etc/mine; \
             SPFS_TEST_PAUSE=commit.checked:{b} $SPFS commit layer > /dev/null 2> $M/../b.err & b=$!; \
             n=0; while [ ! -e {b} ] && [ $n -lt 3000 ]; do sleep 0.01; n=$((n+1)); done; \
             SPFS_TEST_PAUSE=commit.frozen:{a} $SPFS commit layer > /dev/null 2>&1 & a=$!; \
             n=0; while [ ! -e {a} ] && [ $n -lt 3000 ]; do sleep 0.01; n=$((n+1)); done; \
             rm {b}; wait $b; echo second=$?; rm {a}; wait $a; echo first=$?; \
             $SPFS runtime info | grep '\"editable\"'; echo x > $M/etc/late || echo read-only",
            a = frozen.display(),
            b = checked.display()
        ),
    );
    let second = std::fs::read_to_string(env.root.path().join("b.err")).unwrap_or_default();
    assert_eq!(
        stdout(&out),
        // spfs's runtime JSON: editable is in `status`
        "second=1\nfirst=0\n    \"editable\": false,\nread-only\n",
        "{}{second}",
        stderr(&out)
    );
    assert!(second.contains("not editable now"), "{second}");
    assert!(!second.contains("was committed"), "no false word: {second}");
}

#[test]
fn a_durable_runtime_rerun_the_moment_it_ends_is_re_entered() {
    // The service stalls half way through ending the runtime (listed as
    // stopped, its directory still marked in use): a `--rerun` then must
    // wait for the end to finish, not take the runtime for another
    // service's.
    let env = TestEnv::with_base_to_edit();
    let first = sh_command(
        &env,
        &["--keep-runtime", "--runtime-name", "r", "-e", "base"],
        "echo kept > $M/etc/version",
    );
    let (first, marker) = start_paused(&env, first, "runtime.ending");
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", stderr(&first));
    let rerun = sh_command(&env, &["--rerun", "r"], "cat $M/etc/version")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::remove_file(&marker).unwrap();
    let rerun = rerun.wait_with_output().unwrap();
    assert!(rerun.status.success(), "{}", stderr(&rerun));
    assert_eq!(stdout(&rerun), "kept\n");
    // The rerun's own end stalls there too: let it go.
    assert!(env.wait_for(Duration::from_secs(10), || marker.exists()));
    std::fs::remove_file(&marker).unwrap();
}
