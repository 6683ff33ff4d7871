//! spfs's runtime commands from inside editable runtimes, as a user types
//! them: `spfs commit layer|platform`, `spfs edit [--off]`, `spfs reset`,
//! `spfs diff`, `spfs runtime change-stack|remove|prune`, and tags made by
//! commits. Real service, real FUSE mounts, each test in its own temp dirs.

mod common;

use std::time::Duration;

use common::*;

/// Runs `sh -c SCRIPT` in `spfs run ARGS...`, with `$M` the mountpoint and
/// `$SPFS` our binary.
fn sh(env: &TestEnv, args: &[&str], script: &str) -> std::process::Output {
    let mut full = vec!["run"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--", "sh", "-c", script]);
    env.spfs(&full)
        .env("M", &env.mountpoint)
        .env("SPFS", SPFS)
        .output()
        .expect("spfs run")
}

fn sh_ok(env: &TestEnv, args: &[&str], script: &str) -> String {
    let output = sh(env, args, script);
    assert!(
        output.status.success(),
        "spfs run {args:?} -- sh -c {script:?}: {:?}\nstdout: {}\nstderr: {}",
        output.status,
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

/// A base layer (tag `base`) with files to edit and delete, and a tree.
fn env_with_base() -> TestEnv {
    let env = TestEnv::new();
    let base = env.layers.join("base");
    std::fs::create_dir_all(base.join("etc")).unwrap();
    std::fs::write(base.join("etc/version"), "1.0\n").unwrap();
    std::fs::write(base.join("etc/gone"), "delete me\n").unwrap();
    std::fs::create_dir_all(base.join("share/tree/deep")).unwrap();
    std::fs::write(base.join("share/tree/deep/file"), "x\n").unwrap();
    std::fs::write(base.join("share/kept"), "stays\n").unwrap();
    env.tag_layers();
    env
}

#[test]
fn a_file_written_in_an_empty_runtime_and_committed_as_a_layer_is_in_its_tag() {
    let env = TestEnv::new();
    let out = sh_ok(
        &env,
        &["-"],
        "set -e; mkdir -p $M/bin; printf '#!/bin/sh\\necho made\\n' > $M/bin/tool; \
         chmod 755 $M/bin/tool; $SPFS commit layer -t my-tool/1.0; \
         $M/bin/tool; echo x > $M/bin/other 2>/dev/null || echo read-only-now",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(lines[0].len(), 56, "the layer's digest on stdout: {out}");
    assert_eq!(
        &lines[1..],
        ["made", "read-only-now"],
        "after the commit the same contents show, and the runtime is read-only, as in spfs"
    );
    assert_eq!(
        sh_ok(
            &env,
            &["my-tool/1.0"],
            "$M/bin/tool; stat -c %a $M/bin/tool"
        ),
        "made\n755\n"
    );
}

#[test]
fn deletions_and_edits_committed_as_a_platform_are_what_the_platform_shows() {
    let env = env_with_base();
    sh_ok(
        &env,
        &["-e", "base"],
        "set -e; echo 2.0 > $M/etc/version; rm $M/etc/gone; rm -rf $M/share/tree; \
         $SPFS commit platform -t base-edited",
    );
    let me = nix::unistd::geteuid().as_raw();
    let out = sh_ok(
        &env,
        &["base-edited"],
        "cat $M/etc/version; ls $M/etc; ls $M/share; stat -c %u $M/etc $M/share",
    );
    assert_eq!(
        out,
        format!("2.0\nversion\nkept\n{me}\n{me}\n"),
        "the edit shows; the file and the tree are gone; their directories remain, the user's"
    );
    // The base is unchanged.
    assert_eq!(
        sh_ok(&env, &["base"], "cat $M/etc/gone; ls $M/share/tree"),
        "delete me\ndeep\n"
    );
}

#[test]
fn edit_off_keeps_the_changes_and_refuses_writes() {
    let env = env_with_base();
    let out = sh_ok(
        &env,
        &["-e", "base"],
        "rm $M/etc/gone; $SPFS edit --off; test ! -e $M/etc/gone && echo still-deleted; \
         echo x > $M/etc/new 2>&1 || echo refused; rm $M/etc/version 2>/dev/null || echo refused; \
         $SPFS edit; echo x > $M/etc/new && echo writable-again",
    );
    assert_eq!(out, "still-deleted\nrefused\nrefused\nwritable-again\n");
    let erofs = sh(&env, &["-e", "base"], "$SPFS edit --off; touch $M/x");
    assert!(
        stderr(&erofs).contains("Read-only file system"),
        "{}",
        stderr(&erofs)
    );
}

#[test]
fn a_commit_keeps_open_files_and_paths_readable() {
    let env = env_with_base();
    let out = sh_ok(
        &env,
        &["-e", "base"],
        "set -e; echo fresh > $M/etc/version; exec 3< $M/etc/version; \
         $SPFS commit layer -t v >/dev/null 2>&1; cat <&3; cat $M/etc/version; exec 3<&-",
    );
    assert_eq!(out, "fresh\nfresh\n");
}

#[test]
fn three_commits_make_three_versions_of_a_tag_and_untag_works_as_in_spfs() {
    let env = TestEnv::new();
    let mut digests = Vec::new();
    for version in ["one", "two", "three"] {
        let out = sh_ok(
            &env,
            &["-"],
            &format!("echo {version} > $M/v; $SPFS commit layer -t T 2>/dev/null"),
        );
        digests.push(out.trim().to_owned());
    }
    let log = stdout(&run_ok(&mut env.spfs(&["log", "T"])));
    assert_eq!(log.lines().count(), 3, "{log}");
    // Newest first: T~1 is the middle commit.
    assert_eq!(sh_ok(&env, &["T~1"], "cat $M/v"), "two\n");
    assert_eq!(sh_ok(&env, &["T"], "cat $M/v"), "three\n");
    let info = stdout(&run_ok(&mut env.spfs(&["info", "T~1"])));
    assert!(info.contains(&digests[1]), "{info}");

    run_ok(&mut env.spfs(&["untag", "T~1"]));
    assert_eq!(
        stdout(&run_ok(&mut env.spfs(&["log", "T"])))
            .lines()
            .count(),
        2
    );
    assert_eq!(sh_ok(&env, &["T~1"], "cat $M/v"), "one\n");
    run_ok(&mut env.spfs(&["untag", "T", "--latest"]));
    assert_eq!(sh_ok(&env, &["T"], "cat $M/v"), "one\n");
    run_ok(&mut env.spfs(&["untag", "T", "--all"]));
    let gone = env.spfs(&["info", "T"]).output().unwrap();
    assert!(!gone.status.success(), "no version of T is left");
    assert!(stderr(&gone).contains("T"), "{}", stderr(&gone));
}

#[test]
fn diff_lists_added_changed_and_removed_paths_and_reset_drops_them() {
    let env = env_with_base();
    let m = env.mountpoint.display().to_string();
    let out = sh_ok(
        &env,
        &["-e", "base"],
        "echo new > $M/added; echo 2.0 > $M/etc/version; rm $M/etc/gone; $SPFS diff; \
         echo --; $SPFS reset etc/version; cat $M/etc/version; $SPFS diff; echo --; \
         $SPFS reset; ls $M $M/etc; $SPFS diff 2>&1",
    );
    let parts: Vec<&str> = out.split("--\n").collect();
    assert_eq!(
        parts[0],
        format!("+{m}/added\n-{m}/etc/gone\n~{m}/etc/version [content, size {{4=>4}}]\n")
            .replace(" [content, size {4=>4}]", " [content]"),
        "{out}"
    );
    assert_eq!(
        parts[1],
        format!("1.0\n+{m}/added\n-{m}/etc/gone\n"),
        "reset of one path: {out}"
    );
    assert_eq!(
        parts[2],
        format!("{m}:\netc\nshare\n\n{m}/etc:\ngone\nversion\nno changes\n"),
        "reset of everything: {out}"
    );
}

#[test]
fn changing_the_stack_keeps_the_changes_unless_asked_to_drop_them() {
    let env = env_with_base();
    std::fs::create_dir_all(env.layers.join("app/opt")).unwrap();
    std::fs::write(env.layers.join("app/opt/app"), "app\n").unwrap();
    env.tag_layers();
    let out = sh_ok(
        &env,
        &["-e", "base"],
        "set -e; echo mine > $M/etc/mine; $SPFS runtime change-stack base+app >/dev/null; \
         cat $M/opt/app $M/etc/mine $M/etc/version; \
         $SPFS runtime change-stack app --drop-changes >/dev/null; \
         ls $M; test ! -e $M/etc && echo dropped",
    );
    assert_eq!(out, "app\nmine\n1.0\nopt\ndropped\n");
}

#[test]
fn a_durable_runtime_left_by_a_killed_service_can_still_be_committed() {
    let env = env_with_base();
    let (held, line) = env.hold_run(
        &["--keep-runtime", "--runtime-name", "build-7", "-e", "base"],
        &format!(
            "echo unsaved > {m}/etc/version; rm {m}/etc/gone; echo ready",
            m = env.mountpoint.display()
        ),
    );
    assert_eq!(line, "ready");
    let service = env.service_pid().expect("service");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(service),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(env.wait_for(Duration::from_secs(5), || !is_alive(service)));
    release(held);
    let listed = stdout(&run_ok(&mut env.spfs(&["runtime", "list"])));
    assert!(
        listed.contains("build-7") && listed.contains("running=false"),
        "a new service lists the stopped runtime: {listed}"
    );
    sh_ok(
        &env,
        &["--rerun", "build-7"],
        "$SPFS commit platform -t saved 2>/dev/null",
    );
    assert_eq!(
        sh_ok(
            &env,
            &["saved"],
            "cat $M/etc/version; test ! -e $M/etc/gone && echo deleted"
        ),
        "unsaved\ndeleted\n"
    );
    // Removed on request, with its changes.
    let removed = env
        .spfs(&["runtime", "remove", "--remove-durable", "build-7"])
        .output()
        .unwrap();
    assert!(removed.status.success(), "{}", stderr(&removed));
    assert!(!env.scratch.join("build-7").exists());
    assert!(!stdout(&run_ok(&mut env.spfs(&["runtime", "list", "-q"]))).contains("build-7"));
}

#[test]
fn prune_removes_what_a_dead_service_left_and_keeps_durable_runtimes() {
    let env = TestEnv::new();
    let (a, _) = env.hold_run(
        &["--runtime-name", "left-behind", "-"],
        &format!("echo x > {}/x; echo up", env.mountpoint.display()),
    );
    let (b, _) = env.hold_run(
        &["--keep-runtime", "--runtime-name", "kept", "-"],
        &format!("echo y > {}/y; echo up", env.mountpoint.display()),
    );
    let service = env.service_pid().expect("service");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(service),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(env.wait_for(Duration::from_secs(5), || !is_alive(service)));
    release(a);
    release(b);
    let pruned = stderr(&run_ok(&mut env.spfs(&["runtime", "prune"])));
    assert!(pruned.contains("Pruned runtime left-behind"), "{pruned}");
    assert!(!env.scratch.join("left-behind").exists());
    assert!(env.scratch.join("kept/upper/y").exists(), "durable: kept");
}

#[test]
fn bad_input_gets_clear_errors_and_loses_nothing() {
    let env = env_with_base();
    // Committing outside a runtime, without --path.
    let outside = env.spfs(&["commit", "layer"]).output().unwrap();
    assert_eq!(outside.status.code(), Some(1));
    assert!(
        stderr(&outside).contains("no active runtime") && stderr(&outside).contains("--path"),
        "{}",
        stderr(&outside)
    );
    // An unknown runtime name.
    let unknown = env
        .spfs(&["runtime", "info", "no-such-runtime"])
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains("no-such-runtime"),
        "{}",
        stderr(&unknown)
    );
    // A process outside a runtime asks to change it (this test process
    // carries no SPFS_RUNTIME and descends from none).
    let (held, _) = env.hold_run(&["--runtime-name", "theirs", "-e", "base"], "echo up");
    let refused = block_on(async {
        control(&env)
            .await
            .edit(spfs::proto::EditRequest {
                name: "theirs".into(),
                editable: false,
            })
            .await
    })
    .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(
        refused.message().contains("not in runtime \"theirs\""),
        "{}",
        refused.message()
    );
    release(held);
    // A runtime name that is no longer there (a stale SPFS_RUNTIME).
    let stale = env
        .spfs(&["edit"])
        .env("SPFS_RUNTIME", "ended-long-ago")
        .output()
        .unwrap();
    assert!(!stale.status.success());
    assert!(
        stderr(&stale).contains("ended-long-ago"),
        "{}",
        stderr(&stale)
    );
    // Committing a read-only runtime.
    let read_only = sh(&env, &["base"], "$SPFS commit layer");
    assert_eq!(read_only.status.code(), Some(1), "{}", stderr(&read_only));
    assert!(
        stderr(&read_only).contains("not editable"),
        "{}",
        stderr(&read_only)
    );
    // Nothing to commit.
    let empty = sh(&env, &["-e", "base"], "$SPFS commit layer");
    assert_eq!(empty.status.code(), Some(1));
    assert!(
        stderr(&empty).contains("Nothing to commit")
            || stderr(&empty).contains("nothing to commit"),
        "{}",
        stderr(&empty)
    );
    // A failed commit leaves the runtime editable with its changes.
    let kept = sh_ok(
        &env,
        &["-e", "base"],
        "echo mine > $M/mine; $SPFS commit layer -t 'bad tag!' 2>/dev/null; cat $M/mine; \
         echo more >> $M/mine && echo still-editable",
    );
    assert_eq!(kept, "mine\nstill-editable\n");
}
