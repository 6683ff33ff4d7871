//! The service as scripts and users drive it: one instance per runtime dir,
//! runtimes tracked and dropped, clean stops that leave nothing behind.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use spfs::proto::{MountRequest, StatusRequest, UnmountRequest};

fn runtime_pids(status: &serde_json::Value) -> Vec<i64> {
    status["runtimes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["root_pid"].as_i64().unwrap())
        .collect()
}

#[test]
fn a_runtime_is_listed_while_its_command_runs_and_dropped_when_it_exits() {
    let env = TestEnv::new();
    let script = format!("echo $$; {SPFS} service status --json");
    let output = run_ok(&mut env.spfs(&["run", "base+app", "--", "sh", "-c", &script]));
    let text = stdout(&output);
    let (pid_line, status_line) = text.split_once('\n').unwrap();
    let pid: i64 = pid_line.trim().parse().unwrap();
    let inside: serde_json::Value = serde_json::from_str(status_line).unwrap();
    assert_eq!(runtime_pids(&inside), vec![pid]);
    assert_eq!(inside["runtimes"][0]["env_spec"], "base+app");
    assert!(
        env.wait_for(Duration::from_secs(5), || runtime_pids(&status_json(&env))
            .is_empty()),
        "the runtime is dropped once the command has exited"
    );
    let ended = env.service_events("service.runtime_ended");
    assert_eq!(ended[0]["reason"], "last_process_exited");
    assert_eq!(ended[0]["root_pid"], pid);
}

#[test]
fn a_script_may_stop_the_service_right_after_its_runs_end() {
    let env = TestEnv::new();
    // The end of a runtime is seen a moment after its command exits; the
    // status the stop asks for must not count it still.
    let one_by_one = format!(
        "for i in $(seq 20); do {SPFS} run base -- true && {SPFS} service stop >/dev/null || exit 1; done"
    );
    let output = run_ok(env.command("sh").args(["-c", &one_by_one]));
    assert_eq!(stderr(&output), "");
    // Many at once: the last runtimes' ends are still being looked into
    // (processes of other runs caught mid-exec) when the stop asks.
    let at_once = format!(
        "for r in 1 2 3 4 5; do for i in $(seq 64); do {SPFS} run base -- true & done; wait; {SPFS} service stop >/dev/null || exit 1; done"
    );
    let output = run_ok(env.command("sh").args(["-c", &at_once]));
    assert_eq!(stderr(&output), "");
    let ended = env.service_events("service.runtime_ended");
    assert_eq!(ended.len(), 20 + 5 * 64);
    assert!(ended.iter().all(|e| e["reason"] == "last_process_exited"));
    assert!(!env.is_mounted());
}

#[test]
fn unmount_drops_a_runtime_before_its_process_exits() {
    let env = TestEnv::new();
    run_ok(&mut env.spfs(&["service", "start"]));
    // The caller may give a runtime to itself: this test process is the root.
    let pid = i64::from(std::process::id());
    block_on(async {
        let mut control = control(&env).await;
        control
            .mount(MountRequest {
                root_pid: pid,
                env_spec: "base".into(),
                repositories: vec![env.repo.to_string_lossy().into_owned()],
                name: String::new(),
                ..MountRequest::default()
            })
            .await
            .unwrap();
        let listed = control.status(StatusRequest {}).await.unwrap().into_inner();
        assert_eq!(listed.runtimes.len(), 1);
        assert_eq!(listed.runtimes[0].root_pid, pid);
        control
            .unmount(UnmountRequest { root_pid: pid })
            .await
            .unwrap();
        let listed = control.status(StatusRequest {}).await.unwrap().into_inner();
        assert!(listed.runtimes.is_empty());
        let again = control
            .unmount(UnmountRequest { root_pid: pid })
            .await
            .unwrap_err();
        assert_eq!(again.code(), tonic::Code::NotFound);
        let bad = control
            .mount(MountRequest {
                root_pid: -5,
                env_spec: "base".into(),
                repositories: vec![],
                name: String::new(),
                ..MountRequest::default()
            })
            .await
            .unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
        assert!(bad.message().contains("positive"), "{}", bad.message());
        let relative = control
            .mount(MountRequest {
                root_pid: pid,
                env_spec: "base".into(),
                repositories: vec!["repo".into()],
                name: String::new(),
                ..MountRequest::default()
            })
            .await
            .unwrap_err();
        assert_eq!(relative.code(), tonic::Code::InvalidArgument);
        assert!(relative.message().contains("not an absolute path"));
    });
    assert_eq!(
        env.service_events("service.runtime_ended")[0]["reason"],
        "request"
    );
}

#[test]
fn a_second_service_instance_refuses_to_start() {
    let env = TestEnv::new();
    run_ok(&mut env.spfs(&["service", "start"]));
    let pid = env.service_pid().unwrap();
    let output = env
        .service_cmd(&["service"])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains(&format!("already running (pid {pid})")),
        "{}",
        stderr(&output)
    );
    assert_eq!(env.service_pid(), Some(pid), "the first one is untouched");
}

#[test]
fn stop_then_run_starts_a_fresh_service_and_leaves_nothing_behind() {
    let env = TestEnv::new();
    run_ok(&mut env.spfs(&["run", "-", "--", "true"]));
    let first = env.service_pid().unwrap();

    let stopped = run_ok(&mut env.service_cmd(&["service", "--stop"]));
    assert!(
        stdout(&stopped).contains(&format!("pid {first}")),
        "{}",
        stdout(&stopped)
    );
    // --stop returns once the pidfile lock is free, the service's last act
    // before its process ends.
    assert!(
        env.wait_for(Duration::from_secs(2), || !is_alive(first)),
        "it exits right after --stop returns"
    );
    assert!(!env.socket().exists(), "socket removed");
    assert!(!env.pidfile().exists(), "pidfile removed");
    assert!(!env.is_mounted(), "FUSE unmounted");
    assert_eq!(env.service_events("service.shutdown")[0]["reason"], "rpc");

    let none = run_ok(&mut env.service_cmd(&["service", "--stop"]));
    assert!(
        stdout(&none).contains("no spfs service was running"),
        "{}",
        stdout(&none)
    );
    let status = env.spfs(&["service", "status"]).output().unwrap();
    assert_eq!(status.status.code(), Some(3), "status says not running");

    run_ok(&mut env.spfs(&["run", "-", "--", "true"]));
    let second = env.service_pid().unwrap();
    assert_ne!(first, second);
    assert_eq!(env.launcher_events("launcher.spawn").len(), 2);
    env.assert_logs_are_json();
}

#[test]
fn sigterm_stops_the_service_cleanly() {
    let env = TestEnv::new();
    run_ok(&mut env.spfs(&["service", "start"]));
    let pid = env.service_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(env.wait_for(Duration::from_secs(10), || !is_alive(pid)));
    assert!(!env.socket().exists());
    assert!(!env.pidfile().exists());
    assert!(!env.is_mounted());
    assert_eq!(
        env.service_events("service.shutdown")[0]["reason"],
        "SIGTERM"
    );
}

#[test]
fn a_dead_fuse_mount_from_a_killed_service_is_cleaned_up() {
    let env = TestEnv::new();
    run_ok(&mut env.spfs(&["service", "start"]));
    let pid = env.service_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(env.wait_for(Duration::from_secs(5), || !is_alive(pid)));
    assert!(env.is_mounted(), "kill -9 leaves the mount behind");
    let err = std::fs::metadata(&env.mountpoint).unwrap_err();
    assert!(
        matches!(
            err.raw_os_error(),
            Some(libc::ENOTCONN | libc::ECONNABORTED)
        ),
        "a dead mount: {err}"
    );

    let output = run_ok(&mut env.spfs(&["run", "-", "--", "ls", env.mountpoint.to_str().unwrap()]));
    assert_eq!(stdout(&output), "", "an empty directory again");
    assert_eq!(env.service_events("service.stale_mount_cleaned").len(), 1);
    assert_eq!(
        env.launcher_events("launcher.stale_socket_removed").len(),
        1
    );
}

#[test]
fn the_mountpoint_is_empty_and_a_read_only_runtime_refuses_writes() {
    let env = TestEnv::new();
    let mnt = env.mountpoint.to_str().unwrap().to_owned();
    let listing = run_ok(&mut env.spfs(&["run", "-", "--", "ls", "-A", &mnt]));
    assert_eq!(stdout(&listing), "");
    // `base` is an empty layer; unlike `-`, a stack is read-only unless -e.
    let write = env
        .spfs(&["run", "base", "--", "touch", &format!("{mnt}/new-file")])
        .output()
        .unwrap();
    assert!(!write.status.success());
    assert!(
        stderr(&write).contains("Read-only file system"),
        "{}",
        stderr(&write)
    );
}

#[test]
fn mount_for_scripts_refuses_a_process_outside_the_callers_ancestry() {
    let env = TestEnv::new();
    let mut sleeper = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    env.track(sleeper.id() as i32);
    let output = env
        .service_cmd(&["mount", "--root-process", &sleeper.id().to_string(), "base"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("not this process or one of its ancestors"),
        "{}",
        stderr(&output)
    );
    let _ = sleeper.kill();
    let _ = sleeper.wait();

    // The default root is the caller: the shell that runs the script.
    let script = format!("{SERVICE} mount base && echo $$ && {SPFS} service status --json");
    let output = run_ok(env.command("sh").args(["-c", &script]));
    let text = stdout(&output);
    let mut lines = text.lines().skip(1);
    let shell_pid: i64 = lines.next().unwrap().parse().unwrap();
    let status: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(runtime_pids(&status), vec![shell_pid]);
}
