//! Runtimes as spfs users handle them: named, listed, described and ended by
//! name, from inside and outside. Real service, real FUSE mounts.

mod common;

use std::time::Duration;

use common::*;

fn list_quiet(env: &TestEnv) -> Vec<String> {
    stdout(&run_ok(&mut env.spfs(&["runtime", "list", "-q"])))
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn runtime_list_shows_exactly_the_live_runtimes() {
    let env = TestEnv::new();
    // Inside a runtime: itself, by the name it carries.
    let inside = run_ok(&mut env.spfs(&[
        "run",
        "base",
        "--",
        "sh",
        "-c",
        &format!("{SPFS} runtime list -q; echo \"me=$SPFS_RUNTIME\""),
    ]));
    let text = stdout(&inside);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[1], format!("me={}", lines[0]));

    let held: Vec<_> = (0..4).map(|_| env.hold_run(&["base"], "echo up")).collect();
    assert_eq!(list_quiet(&env).len(), 4);
    let long = stdout(&run_ok(&mut env.spfs(&["runtime", "list"])));
    assert_eq!(
        long.lines().filter(|l| l.contains("running=true")).count(),
        4,
        "{long}"
    );
    for (child, _) in held {
        release(child);
    }
    assert!(env.wait_for(Duration::from_secs(5), || list_quiet(&env).is_empty()));

    // A nested run starts its own runtime and leaves none behind. (The
    // outer shell stays in the outer runtime; a nested `spfs run` that the
    // outer command execs directly takes its process, and so its runtime's
    // place, as the last process of the outer one.)
    let nested = run_ok(&mut env.spfs(&[
        "run",
        "base",
        "--",
        "sh",
        "-c",
        &format!("{SPFS} run app -- {SPFS} runtime list -q; true"),
    ]));
    assert_eq!(stdout(&nested).lines().count(), 2, "{}", stdout(&nested));
    assert!(env.wait_for(Duration::from_secs(5), || list_quiet(&env).is_empty()));
}

#[test]
fn runtimes_are_named_described_and_removed_by_name() {
    let env = TestEnv::new();
    let (child, first) = env.hold_run(
        &["--runtime-name", "build-1", "base+app"],
        "echo $SPFS_RUNTIME",
    );
    assert_eq!(first, "build-1");
    let info = stdout(&run_ok(&mut env.spfs(&["runtime", "info", "build-1"])));
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["name"], "build-1");
    assert_eq!(info["status"]["running"], true);
    // base and app are both empty: one layer, as spfs keeps a digest once
    assert_eq!(info["status"]["stack"].as_array().unwrap().len(), 1);

    // The name is taken while the runtime lives.
    let taken = env
        .spfs(&["run", "--runtime-name", "build-1", "-", "--", "true"])
        .output()
        .unwrap();
    assert!(!taken.status.success());
    assert!(
        stderr(&taken).contains("already running"),
        "{}",
        stderr(&taken)
    );

    // Unknown names and a running runtime without --force are refused.
    let unknown = env.spfs(&["runtime", "info", "nope"]).output().unwrap();
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("no runtime named \"nope\""),
        "{}",
        stderr(&unknown)
    );
    let refused = env
        .spfs(&["runtime", "remove", "build-1"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("--force"), "{}", stderr(&refused));
    assert_eq!(list_quiet(&env), ["build-1"]);

    run_ok(&mut env.spfs(&["runtime", "remove", "--force", "build-1"]));
    assert!(list_quiet(&env).is_empty());
    release(child);
    let ended = env.service_events("service.runtime_ended");
    assert_eq!(ended[0]["runtime"], "build-1");
    assert_eq!(ended[0]["reason"], "request");
}
