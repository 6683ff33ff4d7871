//! Runtime membership as a mount namespace behaves: a process stays in its
//! runtime for life (a daemon whose parents are gone included), the runtime
//! ends with its last process, deep trees see their view, runtimes of the
//! same stack share one view yet end on their own, and no cache ever shows
//! one runtime's answer to another. Real service, real FUSE mounts.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;

fn with_layers(env: &TestEnv) {
    for (layer, content) in [("base", "base\n"), ("app", "app\n")] {
        let dir = env.layers.join(layer).join("etc");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("version"), content).unwrap();
        std::fs::write(env.layers.join(layer).join(format!("only-{layer}")), "").unwrap();
    }
    env.tag_layers();
}

fn runtimes(env: &TestEnv) -> Vec<serde_json::Value> {
    status_json(env)["runtimes"].as_array().unwrap().clone()
}

#[test]
fn a_daemon_outlives_its_parents_and_keeps_the_runtime_until_it_exits() {
    let env = TestEnv::new();
    with_layers(&env);
    let version = env.mountpoint.join("etc/version");
    let out = env.root.path().join("daemon.out");
    // The daemon starts in a new session and is reparented to init once the
    // intermediate shell exits; it reads /spfs only a second after its runtime's
    // root process (the `spfs run` command) has exited.
    let script = format!(
        "setsid sh -c 'echo $$; sleep 1; cat {version} > {out}.tmp && mv {out}.tmp {out}; sleep 1' > {pidfile} 2>/dev/null &",
        version = version.display(),
        out = out.display(),
        pidfile = env.root.path().join("daemon.pid").display(),
    );
    run_ok(&mut env.spfs(&["run", "base", "--", "sh", "-c", &script]));
    assert!(
        env.wait_for(Duration::from_secs(5), || env
            .root
            .path()
            .join("daemon.pid")
            .metadata()
            .is_ok_and(|m| m.len() > 0)),
        "the daemon started"
    );
    let daemon: i32 = std::fs::read_to_string(env.root.path().join("daemon.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    env.track(daemon);
    // The root has exited; the runtime lives on with the daemon.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(runtimes(&env).len(), 1, "listed while the daemon runs");
    assert!(
        env.wait_for(Duration::from_secs(5), || out.exists()),
        "the daemon wrote its output"
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "base\n");
    assert!(
        env.wait_for(Duration::from_secs(5), || !is_alive(daemon)),
        "the daemon exits"
    );
    assert!(
        env.wait_for(Duration::from_secs(5), || runtimes(&env).is_empty()),
        "gone once its last process exited"
    );
    let ended = env.service_events("service.runtime_ended");
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0]["reason"], "last_process_exited");
}

#[test]
fn a_process_two_thousand_levels_deep_sees_the_view() {
    let env = TestEnv::new();
    with_layers(&env);
    let version = env.mountpoint.join("etc/version");
    // Each level is a new shell process that waits for its child.
    let script = format!(
        "n=$1; if [ \"$n\" -gt 0 ]; then sh \"$0\" $((n - 1)); else cat {}; fi",
        version.display()
    );
    let script_file = env.root.path().join("deep.sh");
    std::fs::write(&script_file, script).unwrap();
    let output = run_ok(&mut env.spfs(&[
        "run",
        "base",
        "--",
        "sh",
        script_file.to_str().unwrap(),
        "2000",
    ]));
    assert_eq!(stdout(&output), "base\n");
}

#[test]
fn runtimes_of_one_stack_share_a_view_and_still_end_on_their_own() {
    let env = TestEnv::new();
    with_layers(&env);
    let version = env.mountpoint.join("etc/version");
    let spawn = || {
        let (child, line) = env.hold_run(&["base+app"], &format!("cat {}", version.display()));
        assert_eq!(line, "app");
        child
    };
    let first = spawn();
    let second = spawn();
    let mounts = env.service_events("service.mount");
    assert_eq!(mounts.len(), 2);
    assert_eq!(mounts[0]["view_shared"], false);
    assert_eq!(
        mounts[1]["view_shared"], true,
        "the second runtime reuses the view"
    );
    assert_eq!(mounts[0]["view_id"], mounts[1]["view_id"]);
    assert!(
        std::fs::metadata(&version).is_err(),
        "an outsider sees nothing"
    );
    // The first ends; the second still reads its files.
    release(first);
    assert!(env.wait_for(Duration::from_secs(5), || runtimes(&env).len() == 1));
    let again = run_ok(&mut env.spfs(&["run", "base+app", "--", "cat", version.to_str().unwrap()]));
    assert_eq!(stdout(&again), "app\n");
    release(second);
    assert!(env.wait_for(Duration::from_secs(5), || runtimes(&env).is_empty()));
    assert!(
        env.wait_for(Duration::from_secs(5), || env
            .service_events("service.view_freed")
            .len()
            == 1),
        "one view, freed once"
    );
}

#[test]
fn a_scripts_next_run_of_the_same_stack_reuses_the_lingering_view_until_its_time_is_up() {
    let env = TestEnv::new();
    with_layers(&env);
    let version = env.mountpoint.join("etc/version");
    let run = |stack: &str| {
        let output = run_ok(
            env.spfs(&["run", stack, "--", "cat", version.to_str().unwrap()])
                .env("SPFS_VIEW_LINGER", "1500ms"),
        );
        // The runtime has ended before the next run begins, as in a script.
        assert!(env.wait_for(Duration::from_secs(5), || runtimes(&env).is_empty()));
        stdout(&output)
    };
    assert_eq!(run("base+app"), "app\n");
    assert_eq!(run("base+app"), "app\n");
    assert_eq!(run("base"), "base\n");
    let mounts = env.service_events("service.mount");
    assert_eq!(mounts.len(), 3);
    assert_eq!(mounts[0]["view_shared"], false);
    assert_eq!(
        mounts[1]["view_shared"], true,
        "the second run reuses the view the first one left"
    );
    assert_eq!(mounts[0]["view_id"], mounts[1]["view_id"]);
    assert_eq!(
        mounts[2]["view_shared"], false,
        "another stack, another view"
    );
    assert!(
        std::fs::metadata(&version).is_err(),
        "a lingering view is shown to nobody"
    );
    assert!(
        env.wait_for(Duration::from_secs(10), || env
            .service_events("service.view_freed")
            .len()
            == 2),
        "both views are freed when their time is up"
    );
    assert!(env.service_pid().is_some(), "the service itself goes on");
}

#[test]
fn a_lingering_view_goes_with_the_service() {
    let env = TestEnv::new();
    with_layers(&env);
    run_ok(
        env.spfs(&["run", "base", "--", "true"])
            .env("SPFS_VIEW_LINGER", "600"),
    );
    assert!(env.wait_for(Duration::from_secs(5), || runtimes(&env).is_empty()));
    assert!(env.service_events("service.view_freed").is_empty());
    let pid = env.service_pid().unwrap();
    run_ok(&mut env.spfs(&["service", "stop"]));
    assert!(env.wait_for(Duration::from_secs(5), || !is_alive(pid)));
    assert_eq!(env.service_events("service.view_freed").len(), 1);
    assert!(!env.is_mounted());
}

#[test]
fn caches_never_show_one_runtimes_answer_to_another() {
    let env = TestEnv::new();
    with_layers(&env);
    let mnt = env.mountpoint.display().to_string();
    // Each runtime probes the same names, present in one layer and missing
    // in the other, from the main thread and from threads, many times.
    let probe = format!(
        r#"
import os, sys, threading
mnt = {mnt:?}
expect = sys.argv[1]
def check():
    for _ in range(200):
        seen = (os.path.exists(mnt + "/only-base"), os.path.exists(mnt + "/only-app"),
                os.path.exists(mnt + "/etc/missing"))
        version = open(mnt + "/etc/version").read().strip() if os.path.exists(mnt + "/etc/version") else None
        got = {{"base": (True, False, False, "base"), "app": (False, True, False, "app"),
               "none": (False, False, False, None)}}[expect]
        assert seen + (version,) == got, (expect, seen, version)
threads = [threading.Thread(target=check) for _ in range(3)]
for t in threads: t.start()
check()
for t in threads: t.join()
print("ok")
"#
    );
    let script = env.root.path().join("probe.py");
    std::fs::write(&script, probe).unwrap();
    let script = script.to_str().unwrap();
    let mut children = Vec::new();
    for round in 0..3 {
        for (spec, expect) in [("base", "base"), ("app", "app")] {
            children.push((
                format!("{spec} #{round}"),
                env.spfs(&["run", spec, "--", "python3", script, expect])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap(),
            ));
        }
        children.push((
            format!("outsider #{round}"),
            env.command("python3")
                .args([script, "none"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        ));
    }
    for (what, child) in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{what}: {}", stderr(&output));
        assert_eq!(stdout(&output), "ok\n", "{what}");
    }
}
