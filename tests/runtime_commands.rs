//! spfs's runtime commands from inside editable runtimes, as a user types
//! them: `spfs commit layer|platform`, `spfs edit [--off]`, `spfs reset`,
//! `spfs diff`, `spfs runtime change-stack|remove|prune`, and tags made by
//! commits. Real service, real FUSE mounts, each test in its own temp dirs.

mod common;

use common::*;

#[test]
fn a_file_written_in_an_empty_runtime_and_committed_as_a_layer_is_in_its_tag() {
    let env = TestEnv::new();
    let out = env.sh_ok(
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
        env.sh_ok(&["my-tool/1.0"], "$M/bin/tool; stat -c %a $M/bin/tool"),
        "made\n755\n"
    );
}

#[test]
fn deletions_and_edits_committed_as_a_platform_are_what_the_platform_shows() {
    let env = TestEnv::with_base_to_edit();
    env.sh_ok(
        &["-e", "base"],
        "set -e; echo 2.0 > $M/etc/version; rm $M/etc/gone; rm -rf $M/share/tree; \
         $SPFS commit platform -t base-edited",
    );
    let me = nix::unistd::geteuid().as_raw();
    let out = env.sh_ok(
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
        env.sh_ok(&["base"], "cat $M/etc/gone; ls $M/share/tree"),
        "delete me\ndeep\n"
    );
}

#[test]
fn edit_off_keeps_the_changes_and_refuses_writes() {
    let env = TestEnv::with_base_to_edit();
    let out = env.sh_ok(
        &["-e", "base"],
        "rm $M/etc/gone; $SPFS edit --off; test ! -e $M/etc/gone && echo still-deleted; \
         echo x > $M/etc/new 2>&1 || echo refused; rm $M/etc/version 2>/dev/null || echo refused; \
         $SPFS edit; echo x > $M/etc/new && echo writable-again",
    );
    assert_eq!(out, "still-deleted\nrefused\nrefused\nwritable-again\n");
    let erofs = env.sh(&["-e", "base"], "$SPFS edit --off; touch $M/x");
    assert!(
        stderr(&erofs).contains("Read-only file system"),
        "{}",
        stderr(&erofs)
    );
}

#[test]
fn a_commit_keeps_open_files_and_paths_readable() {
    let env = TestEnv::with_base_to_edit();
    let out = env.sh_ok(
        &["-e", "base"],
        "set -e; echo fresh > $M/etc/version; exec 3< $M/etc/version; \
         $SPFS commit layer -t v >/dev/null 2>&1; cat <&3; cat $M/etc/version; exec 3<&-",
    );
    assert_eq!(out, "fresh\nfresh\n");
}

#[test]
fn three_commits_make_three_versions_of_a_tag_and_untag_works_as_in_spfs() {
    let env = TestEnv::new();
    // A name that cannot be read as a partial digest: once no version is
    // left, `T` would name any one object whose digest starts with T.
    let mut digests = Vec::new();
    for version in ["one", "two", "three"] {
        let out = env.sh_ok(
            &["-"],
            &format!("echo {version} > $M/v; $SPFS commit layer -t my-tag 2>/dev/null"),
        );
        digests.push(out.trim().to_owned());
    }
    let log = stdout(&run_ok(&mut env.spfs(&["log", "my-tag"])));
    assert_eq!(log.lines().count(), 3, "{log}");
    // Newest first: T~1 is the middle commit.
    assert_eq!(env.sh_ok(&["my-tag~1"], "cat $M/v"), "two\n");
    assert_eq!(env.sh_ok(&["my-tag"], "cat $M/v"), "three\n");
    let info = stdout(&run_ok(&mut env.spfs(&["info", "my-tag~1"])));
    assert!(info.contains(&digests[1]), "{info}");

    run_ok(&mut env.spfs(&["untag", "my-tag~1"]));
    assert_eq!(
        stdout(&run_ok(&mut env.spfs(&["log", "my-tag"])))
            .lines()
            .count(),
        2
    );
    assert_eq!(env.sh_ok(&["my-tag~1"], "cat $M/v"), "one\n");
    run_ok(&mut env.spfs(&["untag", "my-tag", "--latest"]));
    assert_eq!(env.sh_ok(&["my-tag"], "cat $M/v"), "one\n");
    run_ok(&mut env.spfs(&["untag", "my-tag", "--all"]));
    let gone = env.spfs(&["info", "my-tag"]).output().unwrap();
    assert!(!gone.status.success(), "no version of T is left");
    assert!(stderr(&gone).contains("my-tag"), "{}", stderr(&gone));
}

#[test]
fn diff_lists_added_changed_and_removed_paths_and_reset_drops_them() {
    let env = TestEnv::with_base_to_edit();
    let m = env.mountpoint.display().to_string();
    let out = env.sh_ok(
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
    let env = TestEnv::with_base_to_edit();
    std::fs::create_dir_all(env.layers.join("app/opt")).unwrap();
    std::fs::write(env.layers.join("app/opt/app"), "app\n").unwrap();
    env.tag_layers();
    let out = env.sh_ok(
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
    let env = TestEnv::with_base_to_edit();
    env.durable_runtime_of_a_killed_service("build-7");
    let listed = stdout(&run_ok(&mut env.spfs(&["runtime", "list"])));
    assert!(
        listed.contains("build-7") && listed.contains("running=false"),
        "a new service lists the stopped runtime: {listed}"
    );
    env.sh_ok(
        &["--rerun", "build-7"],
        "$SPFS commit platform -t saved 2>/dev/null",
    );
    assert_eq!(
        env.sh_ok(
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
    env.kill_service();
    release(a);
    release(b);
    let pruned = stderr(&run_ok(&mut env.spfs(&["runtime", "prune"])));
    assert!(pruned.contains("Pruned runtime left-behind"), "{pruned}");
    assert!(!env.scratch.join("left-behind").exists());
    assert!(env.scratch.join("kept/upper/y").exists(), "durable: kept");
}

#[test]
fn bad_input_gets_clear_errors_and_loses_nothing() {
    let env = TestEnv::with_base_to_edit();
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
                ..Default::default()
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
    let read_only = env.sh(&["base"], "$SPFS commit layer");
    assert_eq!(read_only.status.code(), Some(1), "{}", stderr(&read_only));
    assert!(
        stderr(&read_only).contains("not editable"),
        "{}",
        stderr(&read_only)
    );
    // Nothing to commit.
    let empty = env.sh(&["-e", "base"], "$SPFS commit layer");
    assert_eq!(empty.status.code(), Some(1));
    assert!(
        stderr(&empty).contains("Nothing to commit")
            || stderr(&empty).contains("nothing to commit"),
        "{}",
        stderr(&empty)
    );
    // A failed commit leaves the runtime editable with its changes.
    let kept = env.sh_ok(
        &["-e", "base"],
        "echo mine > $M/mine; $SPFS commit layer -t 'bad tag!' 2>/dev/null; cat $M/mine; \
         echo more >> $M/mine && echo still-editable",
    );
    assert_eq!(kept, "mine\nstill-editable\n");
}
