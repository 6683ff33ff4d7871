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

/// Waits for a path to exist (the service works on its own threads).
fn wait_exists(env: &TestEnv, path: &Path) -> bool {
    env.wait_for(Duration::from_secs(5), || path.exists())
}
