//! Hardening: other users kept out, faults survived, bad input refused,
//! upgrades and idle stops handled.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use spfs::client::{self, ControlClient};
use spfs::proto::{MountRequest, StatusRequest, UnmountRequest};

fn mount_request(env: &TestEnv, pid: i64, spec: &str) -> MountRequest {
    MountRequest {
        root_pid: pid,
        env_spec: spec.into(),
        repositories: vec![env.repo.to_string_lossy().into_owned()],
        name: String::new(),
        ..MountRequest::default()
    }
}

/// Not a test on its own: the client half of the cross-user test, run as
/// another uid. It does nothing unless SPFS_TEST_PEER_SOCKET is set.
#[test]
fn peer_client_helper() {
    let Some(socket) = std::env::var_os("SPFS_TEST_PEER_SOCKET") else {
        return;
    };
    block_on(async {
        let channel = client::connect(std::path::Path::new(&socket))
            .await
            .unwrap();
        let status = ControlClient::new(channel.clone())
            .status(StatusRequest {})
            .await;
        println!("status: {:?}", status.map(drop).map_err(|s| s.code()));
        let health = tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await;
        println!("health: {:?}", health.map(drop).map_err(|s| s.code()));
    });
}

#[test]
fn another_user_is_refused_even_when_the_socket_is_reachable() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run a client as another uid");
        return;
    }
    let env = TestEnv::new();
    run_ok(&mut env.spfs(&["service", "start"]));
    // Take away the file-permission barrier, so the peer check alone must hold.
    run_ok(
        env.command("chmod")
            .args(["711", env.runtime_dir.to_str().unwrap()]),
    );
    run_ok(
        env.command("chmod")
            .args(["666", env.socket().to_str().unwrap()]),
    );
    let output = run_ok(
        env.command("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "peer_client_helper",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SPFS_TEST_PEER_SOCKET", env.socket()),
    );
    let text = stdout(&output);
    assert!(text.contains("status: Err(PermissionDenied)"), "{text}");
    assert!(text.contains("health: Err(PermissionDenied)"), "{text}");
    let denied = env.service_events("service.denied");
    assert!(!denied.is_empty());
    assert!(denied.iter().all(|d| d["uid"] == 65534), "{denied:?}");
    // Restore for the harness's own clean-up and checks.
    run_ok(
        env.command("chmod")
            .args(["700", env.runtime_dir.to_str().unwrap()]),
    );
}

#[test]
fn mount_refuses_a_process_outside_the_callers_tree_and_bad_fields() {
    let env = TestEnv::new();
    run_ok(&mut env.spfs(&["service", "start"]));
    let mut sleeper = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    env.track(sleeper.id() as i32);
    let sleeper_pid = i64::from(sleeper.id());
    let me = i64::from(std::process::id());
    block_on(async {
        let mut control = control(&env).await;
        let err = control
            .mount(mount_request(&env, sleeper_pid, "base"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(
            err.message().contains("nor one of its ancestors"),
            "{}",
            err.message()
        );

        for (pid, spec, code, text) in [
            (0, "base", tonic::Code::InvalidArgument, "positive"),
            (-1, "base", tonic::Code::InvalidArgument, "positive"),
            (
                i64::from(i32::MAX) + 1,
                "base",
                tonic::Code::InvalidArgument,
                "positive",
            ),
            (
                4_194_000,
                "base",
                tonic::Code::PermissionDenied,
                "ancestors",
            ),
            (
                me,
                &"x".repeat(70_000),
                tonic::Code::InvalidArgument,
                "at most 65536",
            ),
            (
                me,
                &vec!["base"; 1001].join("+"),
                tonic::Code::InvalidArgument,
                "at most 1000",
            ),
            (
                me,
                &format!("/{}", "deep/".repeat(900)),
                tonic::Code::InvalidArgument,
                "File name too long",
            ),
            (me, "base++app", tonic::Code::InvalidArgument, "position 2"),
        ] {
            let started = Instant::now();
            let err = control
                .mount(mount_request(&env, pid, spec))
                .await
                .unwrap_err();
            assert_eq!(
                err.code(),
                code,
                "{pid} {}: {}",
                &spec[..spec.len().min(40)],
                err.message()
            );
            assert!(err.message().contains(text), "{}", err.message());
            assert!(
                err.message().len() < 1000,
                "one screen: {}",
                err.message().len()
            );
            assert!(started.elapsed() < Duration::from_secs(2));
        }
        // Still healthy afterwards.
        control
            .mount(mount_request(&env, me, "base"))
            .await
            .unwrap();
        control
            .unmount(UnmountRequest { root_pid: me })
            .await
            .unwrap();
    });
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

#[test]
fn kill_9_with_active_runtimes_is_recovered_by_the_next_run() {
    let env = TestEnv::new();
    let mut runtime = env
        .spfs(&["run", "base", "--", "sleep", "30"])
        .spawn()
        .unwrap();
    env.track(runtime.id() as i32);
    assert!(env.wait_for(Duration::from_secs(10), || {
        env.service_pid().is_some() && !env.service_events("service.mount").is_empty()
    }));
    let pid = env.service_pid().unwrap();
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    assert!(env.wait_for(Duration::from_secs(5), || !is_alive(pid)));

    let output = run_ok(&mut env.spfs(&["run", "-", "--", "echo", "recovered"]));
    assert_eq!(stdout(&output), "recovered\n");
    assert_ne!(env.service_pid(), Some(pid));
    assert_eq!(env.service_events("service.stale_mount_cleaned").len(), 1);
    assert_eq!(
        env.launcher_events("launcher.stale_socket_removed").len(),
        1
    );
    let _ = runtime.kill();
    let _ = runtime.wait();
}

#[test]
fn kill_9_during_startup_is_recovered_by_the_next_run() {
    let env = TestEnv::new();
    let first = env
        .spfs(&["run", "-", "--", "true"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the service the moment it holds its pidfile, before or while it mounts.
    let started = Instant::now();
    let mut killed = None;
    while started.elapsed() < Duration::from_secs(10) && killed.is_none() {
        if let Some(pid) = env.service_pid() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            killed = Some(pid);
        }
    }
    let killed = killed.expect("a service started");
    let _ = first.wait_with_output().unwrap();
    assert!(env.wait_for(Duration::from_secs(5), || !is_alive(killed)));

    let output = run_ok(&mut env.spfs(&["run", "-", "--", "echo", "recovered"]));
    assert_eq!(stdout(&output), "recovered\n");
    assert!(env.service_pid().is_some_and(|p| p != killed));
}

#[test]
fn a_launcher_killed_while_holding_the_spawn_lock_does_not_block_the_next() {
    let env = TestEnv::new();
    let fake_pid = env.root.path().join("fake.pid");
    let fake = env.root.path().join("fake-service");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho $$ > {}\nexec sleep 60\n",
            fake_pid.display()
        ),
    )
    .unwrap();
    run_ok(env.command("chmod").args(["755", fake.to_str().unwrap()]));
    let mut stuck = env
        .spfs(&["run", "-", "--", "true"])
        .env("SPFS_FUSE_SERVICE_BIN", &fake)
        .env("SPFS_SERVICE_START_TIMEOUT", "60")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The file exists a moment before the shell has written its pid.
    let read_pid = || {
        std::fs::read_to_string(&fake_pid)
            .ok()
            .and_then(|text| text.trim().parse::<i32>().ok())
    };
    assert!(env.wait_for(Duration::from_secs(10), || read_pid().is_some()));
    env.track(read_pid().unwrap());
    assert_eq!(env.launcher_events("launcher.lock_acquired").len(), 1);
    kill(Pid::from_raw(stuck.id() as i32), Signal::SIGKILL).unwrap();
    let _ = stuck.wait();

    let started = Instant::now();
    let output = run_ok(&mut env.spfs(&["run", "-", "--", "echo", "not blocked"]));
    assert_eq!(stdout(&output), "not blocked\n");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn another_version_is_restarted_when_idle_and_kept_with_a_warning_when_busy() {
    let env = TestEnv::new();
    run_ok(
        env.spfs(&["service", "start"])
            .env("SPFS_TEST_SERVICE_VERSION", "0.0.1-old"),
    );
    let old = env.service_pid().unwrap();
    assert_eq!(status_json(&env)["version"], "0.0.1-old");

    // No runtime: the launcher replaces it.
    let output = run_ok(&mut env.spfs(&["run", "-", "--", "echo", "upgraded"]));
    assert_eq!(stdout(&output), "upgraded\n");
    let new = env.service_pid().unwrap();
    assert_ne!(new, old);
    assert_eq!(status_json(&env)["version"], env!("CARGO_PKG_VERSION"));
    let restarted = env.launcher_events("launcher.version_restart");
    assert_eq!(restarted.len(), 1);
    assert_eq!(restarted[0]["service_version"], "0.0.1-old");

    // With a runtime active: kept, one warning with the remedy.
    run_ok(&mut env.spfs(&["service", "stop"]));
    run_ok(
        env.spfs(&["service", "start"])
            .env("SPFS_TEST_SERVICE_VERSION", "0.0.1-old"),
    );
    let old = env.service_pid().unwrap();
    let me = i64::from(std::process::id());
    block_on(async {
        control(&env)
            .await
            .mount(mount_request(&env, me, "base"))
            .await
            .unwrap()
    });
    let output = run_ok(&mut env.spfs(&["run", "-", "--", "echo", "kept"]));
    assert_eq!(stdout(&output), "kept\n");
    assert_eq!(env.service_pid(), Some(old));
    let err = stderr(&output);
    assert_eq!(err.matches("warning").count(), 1, "{err}");
    assert!(err.contains("spfs service stop"), "{err}");
    assert_eq!(env.launcher_events("launcher.version_mismatch").len(), 1);
    block_on(async {
        control(&env)
            .await
            .unmount(UnmountRequest { root_pid: me })
            .await
            .unwrap()
    });
}

#[test]
fn the_idle_timeout_stops_an_unused_service_and_racing_launchers_still_work() {
    let env = TestEnv::new();
    let idle = |cmd: &mut std::process::Command| {
        cmd.env("SPFS_SERVICE_IDLE_TIMEOUT", "300ms");
    };
    // A runtime keeps it alive past the timeout.
    let mut cmd = env.spfs(&["run", "-", "--", "sleep", "1"]);
    idle(&mut cmd);
    let started = Instant::now();
    run_ok(&mut cmd);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(
        env.service_events("service.idle").is_empty(),
        "not idle while a runtime ran"
    );
    let pid = env
        .service_pid()
        .expect("still running right after the runtime ended");
    assert!(
        env.wait_for(Duration::from_secs(5), || !is_alive(pid)),
        "stopped when idle"
    );
    assert_eq!(
        env.service_events("service.shutdown").last().unwrap()["reason"],
        "idle"
    );
    assert!(!env.is_mounted());

    // Launchers arriving around the moment it stops still get a service.
    for delay_ms in [250u64, 280, 300, 320, 350, 0] {
        std::thread::sleep(Duration::from_millis(delay_ms));
        let mut cmd = env.spfs(&["run", "-", "--", "echo", "ok"]);
        idle(&mut cmd);
        let output = run_ok(&mut cmd);
        assert_eq!(stdout(&output), "ok\n");
    }
}

#[test]
fn sigterm_with_a_busy_runtime_stops_within_bounds_and_leaves_nothing() {
    let env = TestEnv::new();
    std::fs::create_dir_all(env.layers.join("base/etc")).unwrap();
    env.tag_layers();
    let script = format!("cd {}/etc && sleep 30", env.mountpoint.display());
    let mut busy = env
        .spfs(&["run", "base", "--", "sh", "-c", &script])
        .spawn()
        .unwrap();
    env.track(busy.id() as i32);
    assert!(env.wait_for(Duration::from_secs(10), || !env
        .service_events("service.mount")
        .is_empty()));
    std::thread::sleep(Duration::from_millis(100));
    let pid = env.service_pid().unwrap();
    let started = Instant::now();
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    assert!(env.wait_for(Duration::from_secs(10), || !is_alive(pid)));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(!env.socket().exists());
    assert!(!env.pidfile().exists());
    assert!(
        !env.is_mounted(),
        "unmounted (lazily) although a process sits in it"
    );
    let shutdown = &env.service_events("service.shutdown")[0];
    assert_eq!(shutdown["reason"], "SIGTERM");
    assert_eq!(shutdown["active_runtimes"], 1);
    let _ = busy.kill();
    let _ = busy.wait();
}

/// Mount's fields as raw bytes, to send what our own client never would.
#[derive(Clone, PartialEq, prost::Message)]
struct RawMount {
    #[prost(int64, tag = "1")]
    root_pid: i64,
    #[prost(bytes = "vec", tag = "2")]
    env_spec: Vec<u8>,
}

#[test]
fn a_non_utf8_env_spec_gets_an_error_and_the_service_carries_on() {
    let env = TestEnv::new();
    run_ok(&mut env.spfs(&["service", "start"]));
    let me = i64::from(std::process::id());
    block_on(async {
        let channel = client::connect(&env.socket()).await.unwrap();
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let codec = tonic_prost::ProstCodec::<RawMount, spfs::proto::MountResponse>::default();
        let path =
            tonic::codegen::http::uri::PathAndQuery::from_static("/spfs.vfs.v1.VfsService/Mount");
        let request = RawMount {
            root_pid: me,
            env_spec: vec![b'b', 0xff, 0xfe, b'+', 0xc3],
        };
        let started = Instant::now();
        let err = grpc
            .unary(tonic::Request::new(request), path, codec)
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_ne!(err.code(), tonic::Code::Ok);
        assert!(
            err.message().contains("UTF-8"),
            "{:?}: {}",
            err.code(),
            err.message()
        );
        // The service is unharmed.
        let status = ControlClient::new(channel)
            .status(StatusRequest {})
            .await
            .unwrap();
        assert!(status.into_inner().runtimes.is_empty());
    });
}

/// A layer directory with `files` files, big enough that building its view
/// takes longer than a tiny idle timeout.
fn big_layer(env: &TestEnv, files: usize) -> std::path::PathBuf {
    let dir = env.root.path().join("bigdir");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..files {
        std::fs::write(dir.join(format!("f{i:06}")), b"x").unwrap();
    }
    dir
}

#[test]
fn a_mount_longer_than_the_idle_timeout_keeps_the_service_and_shows_its_layers() {
    let env = TestEnv::new();
    let big = big_layer(&env, 20_000);
    let probe = env.mountpoint.join("f000000");
    // The command looks after a pause: a service stopped mid-Mount has unmounted by then.
    let script = format!("sleep 0.5; test -e {}", probe.display());
    let output = env
        .spfs(&["run", big.to_str().unwrap(), "--", "sh", "-c", &script])
        .env("SPFS_SERVICE_IDLE_TIMEOUT", "20ms")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let mount = env.service_events("service.mount");
    assert_eq!(mount.len(), 1);
    let mount_ms = mount[0]["elapsed_ms"].as_f64().unwrap();
    assert!(
        mount_ms > 20.0,
        "the Mount took {mount_ms} ms: make the layer bigger"
    );
    assert!(
        env.service_events("service.idle").len() <= 1,
        "stopped at most once, after the run"
    );
}

#[test]
fn concurrent_runs_with_a_tiny_idle_timeout_all_see_their_layers() {
    let env = TestEnv::new();
    let big = big_layer(&env, 3_000);
    let probe = env.mountpoint.join("f000000");
    let children: Vec<_> = (0..12)
        .map(|_| {
            env.spfs(&["run", big.to_str().unwrap(), "--", "test", "-e"])
                .arg(&probe)
                .env("SPFS_SERVICE_IDLE_TIMEOUT", "1ms")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        let text = stderr(&output);
        assert!(output.status.success(), "{text}");
    }
}

#[test]
fn a_run_after_the_socket_was_deleted_does_not_spawn_a_storm() {
    let env = TestEnv::new();
    run_ok(&mut env.spfs(&["service", "start"]));
    let pid = env.service_pid().unwrap();
    std::fs::remove_file(env.socket()).unwrap();
    let output = env
        .spfs(&["run", "-", "--", "echo", "ok"])
        .env("SPFS_SERVICE_START_TIMEOUT", "5")
        .output()
        .unwrap();
    let spawns = env.launcher_events("launcher.spawn").len();
    assert!(spawns <= 2, "{spawns} spawns: {}", stderr(&output));
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "ok\n");
    assert_eq!(
        env.service_pid(),
        Some(pid),
        "the same service serves again"
    );
    assert_eq!(env.service_events("service.socket_restored").len(), 1);
}

/// Sends SIGCONT on drop, so a test that stopped a process never leaves it stopped.
struct Continue(i32);

impl Drop for Continue {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGCONT);
    }
}

#[test]
fn a_live_service_without_its_socket_is_named_not_respawned() {
    let env = TestEnv::new();
    run_ok(&mut env.spfs(&["service", "start"]));
    let pid = env.service_pid().unwrap();
    // Stopped, it cannot restore its socket: the launcher must say who holds the pidfile.
    kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    let _cont = Continue(pid);
    std::fs::remove_file(env.socket()).unwrap();
    let output = env
        .spfs(&["run", "-", "--", "true"])
        .env("SPFS_SERVICE_START_TIMEOUT", "3")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(text.contains(&format!("pid {pid}")), "{text}");
    assert!(text.contains("kill"), "{text}");
    assert!(!text.contains("did not become ready"), "{text}");
    let spawns = env.launcher_events("launcher.spawn").len();
    assert!(spawns <= 1, "{spawns} spawns");
}

#[test]
fn a_deleted_runtime_dir_is_restored_and_the_tools_still_find_the_service() {
    let env = TestEnv::new();
    run_ok(&mut env.spfs(&["service", "start"]));
    let pid = env.service_pid().unwrap();
    std::fs::remove_dir_all(&env.runtime_dir).unwrap();
    assert!(
        env.wait_for(Duration::from_secs(5), || env.service_pid() == Some(pid)
            && env.socket().exists()),
        "the service recreated its runtime dir, pidfile and socket"
    );
    assert_eq!(status_json(&env)["pid"], pid);
    let output = run_ok(&mut env.spfs(&["run", "-", "--", "echo", "ok"]));
    assert_eq!(stdout(&output), "ok\n");
    assert_eq!(env.service_pid(), Some(pid));
    run_ok(&mut env.spfs(&["service", "stop"]));
    assert!(env.wait_for(Duration::from_secs(5), || !is_alive(pid)));
    assert!(!env.is_mounted());
}

#[test]
fn a_stopped_service_holding_the_mount_is_named_by_status_stop_and_doctor() {
    let env = TestEnv::new();
    run_ok(&mut env.spfs(&["service", "start"]));
    let pid = env.service_pid().unwrap();
    kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    let _cont = Continue(pid);
    std::fs::remove_dir_all(&env.runtime_dir).unwrap();
    for args in [
        &["service", "status"][..],
        &["doctor"],
        &["run", "-", "--", "true"],
    ] {
        let output = env
            .spfs(args)
            .env("SPFS_SERVICE_START_TIMEOUT", "2")
            .output()
            .unwrap();
        let text = format!("{}{}", stdout(&output), stderr(&output));
        assert!(!output.status.success(), "{args:?}: {text}");
        assert!(text.contains(&format!("pid {pid}")), "{args:?}: {text}");
        assert!(!text.contains("not running"), "{args:?}: {text}");
    }
    // doctor's mountpoint check names the pid of the service that hangs it.
    let output = env.spfs(&["doctor"]).output().unwrap();
    let text = stdout(&output);
    let line = text
        .lines()
        .find(|l| l.contains("mountpoint:"))
        .unwrap_or_default();
    assert!(line.contains(&format!("pid {pid}")), "{text}");
}

#[test]
fn service_stop_refuses_while_runtimes_are_active_unless_forced() {
    let env = TestEnv::new();
    let mut runtime = env
        .spfs(&["run", "base", "--", "sleep", "30"])
        .spawn()
        .unwrap();
    env.track(runtime.id() as i32);
    assert!(env.wait_for(Duration::from_secs(10), || {
        !env.service_events("service.mount").is_empty()
    }));
    let pid = env.service_pid().unwrap();
    let output = env.spfs(&["service", "stop"]).output().unwrap();
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(text.contains(&runtime.id().to_string()), "{text}");
    assert!(text.contains("--force"), "{text}");
    assert!(is_alive(pid));
    run_ok(&mut env.spfs(&["service", "stop", "--force"]));
    assert!(env.wait_for(Duration::from_secs(5), || !is_alive(pid)));
    let _ = runtime.kill();
    let _ = runtime.wait();
}

#[test]
fn a_pidfile_symlink_or_fifo_is_refused_at_once() {
    let env = TestEnv::new();
    std::fs::create_dir_all(&env.runtime_dir).unwrap();
    run_ok(
        env.command("chmod")
            .args(["700", env.runtime_dir.to_str().unwrap()]),
    );
    let victim = env.root.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    std::os::unix::fs::symlink(&victim, env.pidfile()).unwrap();
    let output = env.spfs(&["service", "start"]).output().unwrap();
    assert!(!output.status.success());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert!(stderr(&output).contains("symlink"), "{}", stderr(&output));

    std::fs::remove_file(env.pidfile()).unwrap();
    nix::unistd::mkfifo(
        &env.pidfile(),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let started = Instant::now();
    let output = env.spfs(&["service", "stop"]).output().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stop hung on a FIFO"
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("not a regular file"),
        "{}",
        stderr(&output)
    );
    let output = env.spfs(&["service", "start"]).output().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "start hung on a FIFO"
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("not a regular file"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_closed_stdout_ends_the_commands_quietly() {
    let env = TestEnv::new();
    run_ok(&mut env.spfs(&["service", "start"]));
    for args in [
        &["service", "status"][..],
        &["service", "logs", "-n", "200"],
        &["doctor"],
    ] {
        let mut child = env
            .spfs(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the read end before the command writes.
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let text = stderr(&output);
        assert!(!text.contains("panicked"), "{args:?}: {text}");
        assert_ne!(output.status.code(), Some(101), "{args:?}: {text}");
    }
}

#[test]
fn a_huge_ref_is_never_echoed_whole() {
    let env = TestEnv::new();
    let huge = "a".repeat(70_000);
    let output = env.spfs(&["run", &huge, "--", "true"]).output().unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).len() < 2_000,
        "{} bytes",
        stderr(&output).len()
    );
    assert!(stderr(&output).contains("65536"), "{}", stderr(&output));
    assert_eq!(
        env.service_pid(),
        None,
        "a ref the service must refuse starts no service"
    );
    // A ref that parses but does not resolve goes through the service.
    let long_dir = format!("/{}", "d".repeat(5_000));
    let output = env
        .spfs(&["run", &long_dir, "--", "true"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).len() < 2_000,
        "{} bytes",
        stderr(&output).len()
    );
    // A long ref that mounts: its env_spec is shortened in every log line.
    let long_ok = vec!["base"; 300].join("+");
    run_ok(&mut env.spfs(&["run", &long_ok, "--", "true"]));
    for line in env
        .log_lines("spfs")
        .iter()
        .chain(&env.log_lines("spfs-fuse-macos"))
    {
        if let Some(spec) = line["env_spec"].as_str() {
            assert!(
                spec.len() <= 203,
                "env_spec of {} bytes in {}",
                spec.len(),
                line["event"]
            );
        }
        let text = line.to_string();
        assert!(
            text.len() < 2_000,
            "a log line of {} bytes: {}",
            text.len(),
            &text[..300]
        );
    }
}

#[test]
fn kill_9_during_a_mount_says_the_service_died_and_the_next_run_recovers() {
    let env = TestEnv::new();
    let big = big_layer(&env, 60_000);
    run_ok(&mut env.spfs(&["service", "start"]));
    let pid = env.service_pid().unwrap();
    let child = env
        .spfs(&["run", big.to_str().unwrap(), "--", "true"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // `launcher.ensure` is the last line before the Mount call.
    assert!(env.wait_for(Duration::from_secs(10), || !env
        .launcher_events("launcher.ensure")
        .is_empty()));
    std::thread::sleep(Duration::from_millis(30));
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let output = child.wait_with_output().unwrap();
    let text = stderr(&output);
    assert!(
        !output.status.success(),
        "the Mount finished before the kill: make the layer bigger"
    );
    assert!(text.contains("stopped answering during Mount"), "{text}");
    assert!(text.contains("next command starts a new service"), "{text}");
    assert!(env.wait_for(Duration::from_secs(5), || !is_alive(pid)));
    let output = run_ok(&mut env.spfs(&["run", "-", "--", "echo", "recovered"]));
    assert_eq!(stdout(&output), "recovered\n");
}

#[test]
fn a_stopped_service_is_named_by_its_pid_not_called_foreign() {
    let env = TestEnv::new();
    run_ok(&mut env.spfs(&["service", "start"]));
    let pid = env.service_pid().unwrap();
    kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    let _cont = Continue(pid);
    for args in [&["run", "-", "--", "true"][..], &["service", "status"]] {
        let output = env
            .spfs(args)
            .env("SPFS_SERVICE_START_TIMEOUT", "3")
            .output()
            .unwrap();
        let text = stderr(&output);
        assert!(!output.status.success(), "{args:?}");
        assert!(text.contains(&format!("pid {pid}")), "{args:?}: {text}");
        assert!(text.contains("does not answer"), "{args:?}: {text}");
        assert!(
            text.contains(&format!("kill -CONT {pid}")),
            "{args:?}: {text}"
        );
        assert!(
            !text.contains("foreign") && !text.contains("grpc.health"),
            "{args:?}: {text}"
        );
    }
    // stop sends SIGTERM and SIGCONT, so even a stopped service goes.
    run_ok(&mut env.spfs(&["service", "stop"]));
    // stop returns when the pidfile lock is free; the exit follows at once.
    assert!(env.wait_for(Duration::from_secs(5), || !is_alive(pid)));
}

#[test]
fn mount_refuses_pid_1_and_processes_outside_the_session_unless_forced() {
    let env = TestEnv::new();
    let output = env
        .service_cmd(&["mount", "--root-process", "1", "base"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("--force"), "{}", stderr(&output));
    // The test process is an ancestor of the mount, but in another session.
    let me = std::process::id().to_string();
    let output = env
        .command("setsid")
        .args([
            "--fork",
            "--wait",
            common::SERVICE,
            "mount",
            "--root-process",
            &me,
            "base",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("outside your session"),
        "{}",
        stderr(&output)
    );
    assert!(env.service_events("service.mount").is_empty());
}

fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn log_dir_and_files_are_private_and_never_followed() {
    let env = TestEnv::new();
    run_ok(&mut env.spfs(&["run", "-", "--", "true"]));
    assert_eq!(mode_of(&env.log_dir), 0o700);
    let mut files = 0;
    for entry in std::fs::read_dir(&env.log_dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_symlink() {
            assert_eq!(mode_of(&path), 0o600, "{}", path.display());
            files += 1;
        }
    }
    assert!(files >= 3, "launcher log, service log and stderr file");
    env.stop_service();

    // A symlink planted at today's launcher log: never followed.
    let victim = env.root.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let today = spfs::telemetry::current_file_name("spfs");
    std::fs::remove_file(env.log_dir.join(&today)).unwrap();
    std::os::unix::fs::symlink(&victim, env.log_dir.join(&today)).unwrap();
    let output = run_ok(&mut env.spfs(&["run", "-", "--", "true"]));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert!(stderr(&output).contains("symlink"), "{}", stderr(&output));
    std::fs::remove_file(env.log_dir.join(&today)).unwrap();
    env.stop_service();

    // A log dir others may write to is not used, by the launcher nor the service.
    run_ok(
        env.command("chmod")
            .args(["777", env.log_dir.to_str().unwrap()]),
    );
    let before: Vec<_> = std::fs::read_dir(&env.log_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let output = run_ok(&mut env.spfs(&["run", "-", "--", "echo", "ran"]));
    assert_eq!(stdout(&output), "ran\n");
    let warnings = stderr(&output).matches("warning").count();
    assert_eq!(warnings, 1, "{}", stderr(&output));
    assert!(stderr(&output).contains("chmod 700"), "{}", stderr(&output));
    let after: Vec<_> = std::fs::read_dir(&env.log_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before.len(), after.len(), "{after:?}");
    env.stop_service();
    run_ok(
        env.command("chmod")
            .args(["700", env.log_dir.to_str().unwrap()]),
    );
}

#[test]
fn a_read_only_log_dir_gives_one_warning_and_the_service_still_starts() {
    if nix::unistd::geteuid().is_root() {
        // Root writes through mode bits; a read-only dir needs a read-only mount.
        let env = TestEnv::new();
        std::fs::create_dir_all(&env.log_dir).unwrap();
        let status = env
            .command("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                "size=64k,ro,mode=700",
                "spfs-test",
                env.log_dir.to_str().unwrap(),
            ])
            .status()
            .unwrap();
        if !status.success() {
            eprintln!("skipped: cannot mount a tmpfs here");
            return;
        }
        let _unmount = Unmount(env.log_dir.clone());
        let output = env
            .spfs(&["run", "-", "--", "echo", "ran"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        assert_eq!(stdout(&output), "ran\n");
        assert_eq!(
            stderr(&output).matches("warning").count(),
            1,
            "{}",
            stderr(&output)
        );
        env.stop_service();
        // Nothing could be logged there: leave an empty log dir behind, not a mount.
        drop(_unmount);
        std::fs::remove_dir(&env.log_dir).unwrap();
    }
}

/// Unmounts a test's tmpfs on drop, also when the test failed.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = spfs::platform::force_unmount(&self.0);
    }
}

#[test]
fn a_full_log_filesystem_never_leaves_a_broken_line_and_counts_what_it_dropped() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to mount a small tmpfs");
        return;
    }
    let env = TestEnv::new();
    std::fs::create_dir_all(&env.log_dir).unwrap();
    run_ok(env.command("mount").args([
        "-t",
        "tmpfs",
        "-o",
        "size=64k,mode=700",
        "spfs-test",
        env.log_dir.to_str().unwrap(),
    ]));
    let unmount = Unmount(env.log_dir.clone());
    run_ok(&mut env.spfs(&["service", "start"]));
    // Fill the filesystem to the last byte.
    let filler = env.log_dir.join("filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = [b'x'; 4096];
        while file.write_all(&block).is_ok() {}
        while file.write_all(&block[..1]).is_ok() {}
    }
    // Enough service lines to overflow the slack in its file's last page.
    for _ in 0..30 {
        let _ = env.spfs(&["run", "-", "--", "true"]).output().unwrap();
    }
    std::fs::remove_file(&filler).unwrap();
    run_ok(&mut env.spfs(&["run", "-", "--", "true"]));
    // Every line whole (Drop checks every line parses); the service said what it lost.
    env.assert_logs_are_json();
    let dropped = env.service_events("log.lines_dropped");
    assert!(
        !dropped.is_empty(),
        "the service reported its dropped lines"
    );
    assert!(dropped[0]["dropped"].as_u64().unwrap() > 0);
    // The logs are checked once more as the env drops, before the unmount.
    drop(env);
    drop(unmount);
}

/// Runs `command` as uid/gid 65534 (root only), with the env's variables.
fn as_nobody(env: &TestEnv, program: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = env.command("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
        program,
    ])
    .args(args)
    .env("HOME", env.root.path());
    cmd.output().unwrap()
}

#[test]
fn doctor_says_when_dev_fuse_cannot_be_opened() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run doctor as another uid");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata("/dev/fuse").map(|m| m.permissions().mode() & 0o777);
    if mode.map_or(true, |m| m & 0o006 == 0o006) {
        eprintln!("skipped: /dev/fuse is open to everyone here");
        return;
    }
    let env = TestEnv::new();
    let output = as_nobody(&env, common::SPFS, &["doctor"]);
    let text = stdout(&output);
    let fuse_line = text
        .lines()
        .find(|l| l.contains("FUSE"))
        .unwrap_or_default();
    assert!(fuse_line.starts_with("[FAIL]"), "{text}");
    assert!(text.contains("/dev/fuse"), "{text}");
    assert!(text.contains("chmod 666 /dev/fuse"), "{text}");
}

#[test]
fn another_users_service_on_the_mountpoint_is_named_with_the_per_user_fix() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to act as a second user");
        return;
    }
    let env = TestEnv::new();
    run_ok(&mut env.spfs(&["service", "start"]));
    // Let the second user reach the paths; it gets a runtime dir of its own.
    run_ok(
        env.command("chmod")
            .args(["755", env.root.path().to_str().unwrap()]),
    );
    let theirs = env.root.path().join("run-nobody");
    std::fs::create_dir_all(&theirs).unwrap();
    run_ok(
        env.command("chown")
            .args(["65534:65534", theirs.to_str().unwrap()]),
    );
    run_ok(env.command("chmod").args(["700", theirs.to_str().unwrap()]));
    let output = {
        let mut cmd = env.command("setpriv");
        cmd.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            common::SPFS,
            "doctor",
        ])
        .env("HOME", env.root.path())
        .env("SPFS_RUNTIME_DIR", &theirs)
        .env("SPFS_LOG_DIR", theirs.join("log"));
        cmd.output().unwrap()
    };
    let text = stdout(&output);
    let line = text
        .lines()
        .find(|l| l.contains("mountpoint"))
        .unwrap_or_default();
    assert!(line.starts_with("[FAIL]"), "{text}");
    assert!(text.contains("another user"), "{text}");
    assert!(text.contains("uid 0"), "{text}");
    assert!(text.contains("SPFS_MOUNTPOINT"), "{text}");
    assert!(!text.contains("SPFS_RUNTIME_DIR?"), "{text}");
}

#[test]
fn the_service_gets_only_the_environment_it_needs() {
    let env = TestEnv::new();
    run_ok(
        env.spfs(&["service", "start"])
            .env("SPFS_TEST_SECRET_TOKEN_IS_SPFS", "kept")
            // Started from inside a runtime: the service belongs to none.
            .env("SPFS_RUNTIME", "some-runtime")
            .env("AWS_SECRET_ACCESS_KEY", "leaked")
            .env("LC_ALL", "C")
            .env("RUST_BACKTRACE", "1"),
    );
    let pid = env.service_pid().unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let names: Vec<String> = environ
        .split(|b| *b == 0)
        .filter_map(|var| {
            std::str::from_utf8(var)
                .ok()?
                .split('=')
                .next()
                .map(str::to_owned)
        })
        .filter(|n| !n.is_empty())
        .collect();
    for dropped in ["AWS_SECRET_ACCESS_KEY", "SPFS_RUNTIME"] {
        assert!(
            !names.contains(&dropped.to_string()),
            "{dropped}: {names:?}"
        );
    }
    for kept in [
        "PATH",
        "HOME",
        "LC_ALL",
        "RUST_BACKTRACE",
        "SPFS_RUNTIME_DIR",
        "SPFS_TEST_SECRET_TOKEN_IS_SPFS",
    ] {
        assert!(
            names.contains(&kept.to_string()),
            "{kept} missing: {names:?}"
        );
    }
}

#[test]
fn a_relative_xdg_runtime_dir_is_ignored_as_the_spec_says() {
    let env = TestEnv::new();
    let output = env
        .spfs(&["service", "status", "--json"])
        .env_remove("SPFS_RUNTIME_DIR")
        .env("XDG_RUNTIME_DIR", "relative/run")
        .output()
        .unwrap();
    let text = format!("{}{}", stdout(&output), stderr(&output));
    assert!(!text.contains("SPFS_RUNTIME_DIR"), "{text}");
    let status: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let socket = status["socket"].as_str().unwrap();
    assert!(
        socket.starts_with('/') && !socket.contains("relative/run"),
        "{socket}"
    );
}

#[test]
fn a_runtime_dir_pre_created_by_another_user_gets_the_exact_fix() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to create a dir as another user");
        return;
    }
    let env = TestEnv::new();
    std::fs::create_dir_all(&env.runtime_dir).unwrap();
    run_ok(
        env.command("chown")
            .args(["65534:65534", env.runtime_dir.to_str().unwrap()]),
    );
    let output = env.spfs(&["run", "-", "--", "true"]).output().unwrap();
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(text.contains("owned by uid 65534"), "{text}");
    assert!(
        text.contains(&format!("sudo rm -r {}", env.runtime_dir.display())),
        "{text}"
    );
    assert!(text.contains("export SPFS_RUNTIME_DIR="), "{text}");
}

/// SIGKILLs a process on drop (a service started outside the env's runtime dir).
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if is_alive(self.0) {
            let _ = kill(Pid::from_raw(self.0), Signal::SIGKILL);
        }
    }
}

#[test]
fn a_runtime_dir_whose_parent_is_gone_shuts_the_service_down_cleanly() {
    let env = TestEnv::new();
    // As after a logout: the runtime dir's parent ($XDG_RUNTIME_DIR) goes.
    let parent = env.root.path().join("xdg-run");
    let runtime_dir = parent.join("spfs");
    std::fs::create_dir_all(&parent).unwrap();
    let output = run_ok(
        env.spfs(&["service", "start"])
            .env("SPFS_RUNTIME_DIR", &runtime_dir),
    );
    let pid: i32 = spfs::contract::pidfile::read_pid(&runtime_dir.join("service.pid"))
        .unwrap_or_else(|| panic!("no pid: {}", stdout(&output)));
    let _kill = KillOnDrop(pid);
    std::fs::remove_dir_all(&parent).unwrap();
    assert!(
        env.wait_for(Duration::from_secs(10), || !is_alive(pid)),
        "the service stopped"
    );
    assert!(!env.is_mounted());
    let lost = env.service_events("service.runtime_dir_lost");
    assert_eq!(lost.len(), 1);
    assert_eq!(
        env.service_events("service.shutdown").last().unwrap()["reason"],
        "runtime_dir_lost"
    );
}
