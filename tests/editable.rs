//! Editable runtimes as a user meets them in `/spfs`: writing, copying up,
//! deleting, renaming, read-only runtimes, isolation between runtimes, and
//! changes that outlive a killed service. Real service, real FUSE mounts,
//! each test in its own temp dirs (runtime dir, logs, mountpoint,
//! repository, scratch dir).

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::*;

fn scratch_entries(env: &TestEnv) -> Vec<String> {
    match std::fs::read_dir(&env.scratch) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn an_empty_runtime_is_editable_and_its_files_belong_to_the_user() {
    let env = TestEnv::new();
    let out = env.sh_ok(
        &["-"],
        "set -e; echo hello > $M/greeting; mkdir -p $M/opt/tool/bin; \
         printf '#!/bin/sh\\necho tool\\n' > $M/opt/tool/bin/run; chmod 755 $M/opt/tool/bin/run; \
         $M/opt/tool/bin/run; cat $M/greeting; ln -s greeting $M/link; cat $M/link; \
         echo more >> $M/greeting; wc -l < $M/greeting; \
         stat -c '%u %a' $M/greeting $M/opt/tool/bin/run; du -k $M/greeting | cut -f1; \
         df -k $M | tail -1 | awk '{print ($4 > 0) ? \"space\" : \"full\"}'",
    );
    let me = nix::unistd::geteuid().as_raw();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        &lines[..4],
        ["tool", "hello", "hello", "2"],
        "the tool ran, the file and the symlink read back, the append landed: {out}"
    );
    assert_eq!(lines[4], format!("{me} 644"), "{out}");
    assert_eq!(lines[5], format!("{me} 755"), "{out}");
    assert_ne!(
        lines[6], "0",
        "du must not report 0 for a written file: {out}"
    );
    // A new runtime starts empty again, and the ended one's changes are gone.
    let again = env.sh_ok(&["-"], "ls -A $M | wc -l");
    assert_eq!(again.trim(), "0");
    assert!(
        env.wait_for(Duration::from_secs(5), || scratch_entries(&env).is_empty()),
        "an ended runtime's scratch directory is deleted: {:?}",
        scratch_entries(&env)
    );
}

#[test]
fn a_runtime_that_changes_nothing_leaves_nothing_on_disk_and_its_first_change_is_kept() {
    let env = TestEnv::with_base_to_edit();
    // Nothing written: no scratch directory, and every command that reads
    // the changes sees none (as in a runtime whose changes were reset).
    let untouched = env.sh(
        &["-e", "base"],
        "ls -A $S | wc -l; $SPFS diff; $SPFS reset; \
         df -k $M | tail -1 | awk '{print ($4 > 0) ? \"space\" : \"full\"}'; \
         $SPFS commit layer; echo commit=$?",
    );
    let out = stdout(&untouched);
    assert_eq!(out, "0\nspace\ncommit=1\n", "{}", stderr(&untouched));
    assert!(
        stderr(&untouched).contains("no changes"),
        "{}",
        stderr(&untouched)
    );
    // The first change makes the directory, with the runtime's state.
    let changed = env.sh_ok(
        &["-e", "base"],
        "rm $M/etc/gone; ls $S/*; cat $S/*/runtime.json | grep -c '\"editable\": true'; \
         $SPFS diff",
    );
    assert!(
        changed.contains("masks") && changed.contains("upper") && changed.contains("runtime.json"),
        "{changed}"
    );
    assert!(
        changed
            .lines()
            .any(|line| line.starts_with('-') && line.ends_with("etc/gone")),
        "{changed}"
    );
    assert!(
        env.wait_for(Duration::from_secs(5), || scratch_entries(&env).is_empty()),
        "deleted at the runtime's end: {:?}",
        scratch_entries(&env)
    );
}

#[test]
fn editing_on_a_stack_copies_up_and_deletions_hide_files_and_trees() {
    let env = TestEnv::with_base_to_edit();
    let out = env.sh_ok(
        &["-e", "base"],
        "set -e; echo 2.0 > $M/etc/version; cat $M/etc/version; rm $M/etc/gone; \
         rm -rf $M/share/tree; ls $M/etc; echo --; ls $M/share; \
         test ! -e $M/etc/gone && test ! -e $M/share/tree && echo hidden; \
         mkdir $M/share/tree; ls -A $M/share/tree | wc -l; stat -c %u $M/share",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "2.0", "{out}");
    assert_eq!(&lines[1..4], ["version", "--", "kept"], "{out}");
    assert_eq!(lines[4], "hidden", "{out}");
    assert_eq!(
        lines[5], "0",
        "a directory made again after its deletion shows none of the layer's entries: {out}"
    );
    assert_eq!(
        lines[6],
        nix::unistd::geteuid().as_raw().to_string(),
        "{out}"
    );
    // The layer itself is untouched: a read-only runtime of it shows it whole.
    let base = env.sh_ok(
        &["base"],
        "cat $M/etc/version $M/etc/gone $M/share/tree/deep/file",
    );
    assert_eq!(base, "1.0\ndelete me\nx\n");
}

#[test]
fn renames_move_files_and_directories_and_replace_what_was_there() {
    let env = TestEnv::with_base_to_edit();
    let out = env.sh_ok(
        &["-e", "base"],
        "set -e; mv $M/etc/gone $M/etc/version; cat $M/etc/version; ls $M/etc; \
         mkdir -p $M/new/a; echo f > $M/new/a/f; mv $M/new $M/moved; cat $M/moved/a/f; \
         test ! -e $M/new && echo old-name-gone; \
         mv $M/share $M/share2; ls $M/share2; test ! -e $M/share && echo layer-dir-moved",
    );
    assert_eq!(
        out, "delete me\nversion\nf\nold-name-gone\nkept\ntree\nlayer-dir-moved\n",
        "a file replaced another, a new tree moved, and a directory of the \
         layer moved too (by copy, as mv does after EXDEV)"
    );
}

#[test]
fn a_read_only_runtime_refuses_every_write_with_erofs() {
    let env = TestEnv::with_base_to_edit();
    for (what, script) in [
        ("create", "echo x > $M/new"),
        ("write", "echo x >> $M/etc/version"),
        ("mkdir", "mkdir $M/dir"),
        ("unlink", "rm $M/etc/version"),
        ("rmdir", "rm -r $M/share/tree"),
        ("chmod", "chmod 600 $M/etc/version"),
        ("rename", "mv $M/etc/version $M/etc/v2"),
        ("symlink", "ln -s x $M/link"),
        ("truncate", "truncate -s 0 $M/etc/version"),
    ] {
        let output = env.sh(&["base"], script);
        assert!(!output.status.success(), "{what} succeeded");
        assert!(
            stderr(&output).contains("Read-only file system"),
            "{what}: {}",
            stderr(&output)
        );
    }
    assert_eq!(
        env.sh_ok(&["base"], "cat $M/etc/version"),
        "1.0\n",
        "nothing changed"
    );
    assert!(scratch_entries(&env).is_empty(), "no scratch directory");
}

#[test]
fn two_editable_runtimes_on_one_base_never_see_each_others_writes() {
    let env = TestEnv::with_base_to_edit();
    let (first, line) = env.hold_run(
        &["-e", "base"],
        &format!(
            "echo one > {m}/etc/version; echo mine-1 > {m}/only-one; echo ready",
            m = env.mountpoint.display()
        ),
    );
    assert_eq!(line, "ready");
    let (second, line) = env.hold_run(
        &["-e", "base"],
        &format!(
            "echo two > {m}/etc/version; rm {m}/etc/gone; echo ready",
            m = env.mountpoint.display()
        ),
    );
    assert_eq!(line, "ready");
    // A third runtime of the same base sees the layer as it is.
    let third = env.sh_ok(
        &["base"],
        "cat $M/etc/version; cat $M/etc/gone; test ! -e $M/only-one && echo clean",
    );
    assert_eq!(third, "1.0\ndelete me\nclean\n");
    // This process is in no runtime: it sees an empty mount.
    assert_eq!(std::fs::read_dir(&env.mountpoint).unwrap().count(), 0);
    // Each scratch directory holds its own runtime's changes only.
    let mut versions: Vec<String> = scratch_entries(&env)
        .iter()
        .map(|name| {
            std::fs::read_to_string(env.scratch.join(name).join("upper/etc/version")).unwrap()
        })
        .collect();
    versions.sort();
    assert_eq!(versions, ["one\n", "two\n"]);
    release(first);
    release(second);
}

#[test]
fn durable_changes_survive_a_killed_service_and_the_runtime_can_be_re_entered() {
    let env = TestEnv::with_base_to_edit();
    env.durable_runtime_of_a_killed_service("build-1");
    // The changes are on disk, as the runtime left them.
    let scratch = env.scratch.join("build-1");
    assert_eq!(
        std::fs::read_to_string(scratch.join("upper/etc/version")).unwrap(),
        "unsaved\n"
    );
    assert!(scratch.join("masks/etc/gone").is_file());
    // A new service finds the stopped runtime; re-entering shows the changes.
    let out = env.sh_ok(
        &["--rerun", "build-1"],
        "cat $M/etc/version; test ! -e $M/etc/gone && echo still-deleted; \
         echo more >> $M/etc/version; echo $SPFS_RUNTIME",
    );
    assert_eq!(out, "unsaved\nstill-deleted\nbuild-1\n");
    // Durable: kept again after this run, with what it added.
    assert!(env.wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(scratch.join("upper/etc/version")).ok()
            == Some("unsaved\nmore\n".into())
    }));
    assert_eq!(
        env.sh_ok(&["--rerun", "build-1"], "cat $M/etc/version"),
        "unsaved\nmore\n"
    );
    // Its name is taken while it is stopped.
    let taken = env.sh(&["--runtime-name", "build-1", "base"], "true");
    assert!(!taken.status.success());
    assert!(
        stderr(&taken).contains("--rerun build-1"),
        "{}",
        stderr(&taken)
    );
}

#[test]
fn bad_rerun_and_names_get_clear_errors() {
    let env = TestEnv::new();
    let unknown = env.sh(&["--rerun", "no-such-runtime"], "true");
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains("no runtime named \"no-such-runtime\""),
        "{}",
        stderr(&unknown)
    );
    let (held, _) = env.hold_run(&["--runtime-name", "busy", "-"], "echo up");
    let running = env.sh(&["--rerun", "busy"], "true");
    assert!(!running.status.success());
    assert!(
        stderr(&running).contains("is running"),
        "{}",
        stderr(&running)
    );
    // Its name is taken although it has written nothing (no directory yet),
    // and a durable runtime of that name changes nothing of it.
    let same_name = env.sh(&["--keep-runtime", "--runtime-name", "busy", "-"], "true");
    assert!(!same_name.status.success());
    assert!(
        stderr(&same_name).contains("\"busy\""),
        "{}",
        stderr(&same_name)
    );
    assert!(!env.scratch.join("busy").exists());
    release(held);
}

#[test]
fn a_service_stopped_under_an_editable_runtime_keeps_its_changes() {
    let env = TestEnv::new();
    let (held, _) = env.hold_run(
        &["--runtime-name", "unsaved", "-"],
        &format!("echo work > {}/notes; echo up", env.mountpoint.display()),
    );
    run_ok(&mut env.spfs(&["service", "stop", "--force"]));
    release(held);
    let notes = env.scratch.join("unsaved/upper/notes");
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "work\n");
    assert_eq!(
        env.sh_ok(&["--rerun", "unsaved"], "cat $M/notes"),
        "work\n",
        "the runtime can be re-entered, so nothing was lost"
    );
    let _ = Path::new(&notes).metadata().map(|m| m.uid());
}

#[test]
fn a_deleted_file_stays_readable_through_a_descriptor_still_open() {
    let env = TestEnv::with_base_to_edit();
    let out = env.sh_ok(
        &["-e", "base"],
        "set -e; echo scratch > $M/tmp-file; exec 3< $M/tmp-file; exec 4< $M/etc/version; \
         rm $M/tmp-file $M/etc/version; cat <&3; cat <&4; \
         test ! -e $M/tmp-file && test ! -e $M/etc/version && echo both-gone",
    );
    assert_eq!(out, "scratch\n1.0\nboth-gone\n");
}

#[test]
fn a_rename_from_another_runtimes_tree_is_refused_and_loses_nothing() {
    let env = TestEnv::with_base_to_edit();
    // A process of runtime B sits in B's /spfs/etc.
    let (b, line) = env.hold_run(
        &["-e", "base"],
        &format!("cd {}/etc && echo up", env.mountpoint.display()),
    );
    assert_eq!(line, "up");
    let b_cwd = format!("/proc/{}/cwd", b.id());
    // Runtime A reaches into B's tree through B's working directory.
    let out = env.sh(&["-e", "base"], &format!("mv {b_cwd}/version $M/stolen"));
    // The rename fails (EXDEV), so mv copies and then cannot delete the
    // original: another runtime's tree is read-only to this one.
    assert!(!out.status.success(), "a move across runtimes succeeded");
    assert!(
        stderr(&out).contains("Read-only file system"),
        "{}",
        stderr(&out)
    );
    let direct = env.sh(
        &["-e", "base"],
        &format!("echo x > {b_cwd}/planted; rm {b_cwd}/version; chmod 600 {b_cwd}/version"),
    );
    assert!(!direct.status.success());
    assert_eq!(
        stderr(&direct).matches("Read-only file system").count(),
        3,
        "{}",
        stderr(&direct)
    );
    assert_eq!(
        std::fs::read_to_string(format!("{b_cwd}/version")).unwrap(),
        "1.0\n",
        "B's file is still there"
    );
    release(b);
}

#[test]
fn a_deleted_file_still_open_keeps_working_and_stays_deleted() {
    let env = TestEnv::with_base_to_edit();
    // Open, delete, then change through the open file: fstat, fchmod,
    // ftruncate and futimens reach the open file and bring nothing back.
    let out = env.sh_ok(
        &["-e", "base"],
        r#"set -e; cd $M; python3 -c "
import os
for path in ['etc/version', 'new-temp']:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    os.unlink(path)
    os.pwrite(fd, b'changed', 0)
    os.fchmod(fd, 0o600)
    os.ftruncate(fd, 4)
    os.utime(fd, (1000000000, 1000000000))
    st = os.fstat(fd)
    print(path, st.st_size, oct(st.st_mode & 0o777), int(st.st_mtime), os.pread(fd, 10, 0))
    os.close(fd)
    print(path, 'exists' if os.path.lexists(path) else 'deleted')
"; ls etc"#,
    );
    assert_eq!(
        out,
        "etc/version 4 0o600 1000000000 b'chan'\netc/version deleted\n\
         new-temp 4 0o600 1000000000 b'chan'\nnew-temp deleted\ngone\n",
        "the layer's file must not come back from a change through a deleted file's fd"
    );
}

#[test]
fn after_a_reset_a_directory_held_open_looks_nothing_up_through_the_old_tree() {
    let env = TestEnv::with_base_to_edit();
    let outside = env.root.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), "outside the scratch dir\n").unwrap();
    // A process keeps its cwd in the old tree (and a file open, which keeps
    // the old overlay alive); after the reset the runtime puts a symlink
    // to a directory outside where that cwd was. Nothing may be read or
    // written there through the old tree.
    let output = env
        .spfs(&[
            "run",
            "-e",
            "base",
            "--",
            "sh",
            "-c",
            r#"set -e; cd $M/share/tree; exec 3< $M/etc/version; "$SPFS" reset;
               rm -rf $M/share/tree; ln -s "$OUT" $M/share/tree; ls $M/share/tree;
               if cat secret 2>/dev/null; then echo read-through; else echo refused; fi;
               if echo x 2>/dev/null > new; then echo wrote; else echo not-written; fi"#,
        ])
        .env("M", &env.mountpoint)
        .env("OUT", &outside)
        .env("SPFS", SPFS)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "secret\nrefused\nnot-written\n");
    assert!(!outside.join("new").exists());
}

#[test]
fn an_editable_runtime_reports_its_scratch_disks_free_space() {
    let env = TestEnv::with_base_to_edit();
    // `df` (and Finder, installers) check free space before writing: an
    // editable runtime has its scratch directory's; a read-only one none.
    let editable = env.sh_ok(&["-e", "base"], "stat -f -c '%a %b' $M $M/etc");
    let read_only = env.sh_ok(&["base"], "stat -f -c '%a' $M/etc");
    for line in editable.lines() {
        let free: u64 = line.split(' ').next().unwrap().parse().unwrap();
        assert!(free > 0, "no free blocks reported: {editable}");
    }
    assert_eq!(read_only, "0\n");
}

#[test]
fn what_one_process_writes_the_next_sees_at_once_whatever_the_kernel_cached() {
    let env = TestEnv::with_base_to_edit();
    // Every step reads through the kernel's caches (pages kept across
    // opens, attributes and entries cached below the root) right after
    // another process changed the file.
    let out = env.sh_ok(
        &["-e", "base"],
        "set -e; cat $M/etc/version; sh -c 'echo 2.0 > $M/etc/version'; cat $M/etc/version; \
         stat -c %s $M/etc/version; sh -c 'head -c 1048576 /dev/zero >> $M/etc/version'; \
         stat -c %s $M/etc/version; du -k $M/etc/version | cut -f1; \
         sh -c 'mv $M/etc/version $M/etc/v2 && echo 3.0 > $M/etc/version'; cat $M/etc/version; \
         sh -c 'rm $M/etc/version'; test ! -e $M/etc/version && echo removed; \
         sh -c 'chmod 600 $M/etc/v2'; stat -c %a $M/etc/v2; \
         $SPFS reset etc/version; cat $M/etc/version",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..4], ["1.0", "2.0", "4", "1048580"], "{out}");
    assert!(
        lines[4].parse::<u64>().unwrap() >= 1024,
        "du sees the appended MiB: {out}"
    );
    assert_eq!(&lines[5..], ["3.0", "removed", "600", "1.0"], "{out}");
}

/// `spfs commit layer` freezes the runtime while it reads the changes: a
/// data write already under way when the freeze comes must land before the
/// changes are read (the freeze waits for it), and none may land after.
/// Every write here stalls in the service (`SPFS_TEST_WRITE_STALL`, as on
/// a slow disk), so the commit comes while one is under way, every round.
/// What the writer was told it wrote, the committed layer and what the
/// runtime shows afterwards must agree byte for byte.
#[test]
fn a_commit_racing_a_writer_keeps_exactly_the_acknowledged_writes() {
    let env = TestEnv::new();
    let out = env.root.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    // Appends 8-byte records while they are acknowledged; counts them.
    let script = r#"
        i=0
        while printf "%07d\n" "$i" >> "$SPFS_MOUNTPOINT/data" 2>/dev/null; do
            i=$((i + 1))
        done
        echo "$i" > "$OUT/acked"
    "#;
    let round_script = format!(
        r#"
        sh -c '{script}' &
        sleep 0.5
        "$SPFS" commit layer > "$OUT/digest" 2> "$OUT/commit.err" || exit 3
        wait
        cat "$SPFS_MOUNTPOINT/data" > "$OUT/shown"
        "#
    );
    for round in 0..12 {
        let output = env
            .spfs(&["run", "-", "--", "sh", "-c", &round_script])
            .env("SPFS", SPFS)
            .env("OUT", &out)
            .env("SPFS_TEST_WRITE_STALL", "100ms")
            .output()
            .unwrap();
        let read = |name: &str| std::fs::read_to_string(out.join(name)).unwrap_or_default();
        assert!(
            output.status.success(),
            "round {round}: {}\n{}",
            stderr(&output),
            read("commit.err")
        );
        let acked: usize = read("acked").trim().parse().unwrap();
        let expected: String = (0..acked).map(|i| format!("{i:07}\n")).collect();
        assert!(
            acked > 0,
            "round {round}: nothing was written before the commit"
        );
        assert_eq!(
            read("shown"),
            expected,
            "round {round}: the runtime after the commit"
        );
        let digest = read("digest");
        let committed = run_ok(&mut env.spfs(&["read", digest.trim(), "data"]));
        assert_eq!(
            stdout(&committed),
            expected,
            "round {round}: the committed layer holds what the writer was told it wrote"
        );
    }
}
