//! `spfs join NAME|--pid PID [-- CMD]`: entering a running runtime from
//! another process tree sees that runtime's view (its changes too) and
//! carries its name. Real service, real FUSE mounts.

mod common;

use common::*;

#[test]
fn join_enters_a_running_runtime_by_name_or_by_a_process_in_it() {
    let env = TestEnv::with_base_to_edit();
    let (held, pid) = env.hold_run(
        &["--runtime-name", "joined", "-e", "base"],
        &format!(
            "echo edited > {}/etc/mine; echo $$",
            env.mountpoint.display()
        ),
    );
    let mine = env.mountpoint.join("etc/mine");
    let read_it = format!("cat {}; echo \"$SPFS_RUNTIME\"", mine.display());
    for how in [vec!["joined"], vec!["--pid", pid.as_str()]] {
        let mut args = vec!["join"];
        args.extend(how.iter().copied());
        args.extend(["--", "sh", "-c", read_it.as_str()]);
        let out = env.spfs(&args).output().unwrap();
        assert_eq!(
            stdout(&out),
            "edited\njoined\n",
            "{how:?}: {}",
            stderr(&out)
        );
    }
    // Outside it, nothing of it shows.
    assert!(!mine.exists());
    release(held);
}

#[test]
fn joining_what_does_not_run_says_so() {
    let env = TestEnv::new();
    // No service at all.
    let out = env.spfs(&["join", "nope", "--", "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no spfs service is running"),
        "{}",
        stderr(&out)
    );
    let (held, _) = env.hold_run(&["--runtime-name", "other", "base"], "echo up");
    let out = env.spfs(&["join", "nope", "--", "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no running runtime named \"nope\""),
        "{}",
        stderr(&out)
    );
    // A process in no runtime (this test).
    let me = std::process::id().to_string();
    let out = env
        .spfs(&["join", "--pid", &me, "--", "true"])
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("is in no running runtime"),
        "{}",
        stderr(&out)
    );
    release(held);
}
