//! The launcher as users meet it: `spfs run` starts the service on demand,
//! reuses it, starts exactly one under a race, and explains failures quickly.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn first_run_starts_the_service_and_the_second_reuses_it() {
    let env = TestEnv::new();
    let first = run_ok(&mut env.spfs(&["run", "-", "--", "echo", "hello"]));
    assert_eq!(stdout(&first), "hello\n");
    let pid = env.service_pid().expect("a service is left running");
    assert!(is_alive(pid));
    assert!(
        env.is_mounted(),
        "the service mounted FUSE at the mountpoint"
    );
    assert_eq!(env.launcher_events("launcher.spawn").len(), 1);
    let ensures = env.launcher_events("launcher.ensure");
    assert_eq!(ensures[0]["outcome"], "started");
    for phase in [
        "elapsed_ms",
        "probe_ms",
        "lock_wait_ms",
        "spawn_ms",
        "readiness_wait_ms",
        "confirm_ms",
    ] {
        assert!(
            ensures[0][phase].is_number(),
            "launcher.ensure has numeric {phase}"
        );
    }

    let second = run_ok(&mut env.spfs(&["run", "-", "--", "echo", "again"]));
    assert_eq!(stdout(&second), "again\n");
    assert_eq!(env.service_pid(), Some(pid), "same service");
    assert_eq!(
        env.launcher_events("launcher.spawn").len(),
        1,
        "no new spawn"
    );
    let ensures = env.launcher_events("launcher.ensure");
    assert_eq!(ensures.len(), 2);
    assert_eq!(ensures[1]["outcome"], "already_running");
    // The warm path: one probe (its Check went beside the Mount), then the Mount.
    let probes = env.launcher_events("launcher.probe");
    let warm_probe = probes.last().unwrap();
    assert_eq!(warm_probe["attempt"], 1);
    assert_eq!(warm_probe["result"], "serving");
    assert_eq!(warm_probe["pid"], ensures[1]["pid"]);
    let mounts = env.launcher_events("launcher.mount");
    assert_eq!(mounts.len(), 2, "{mounts:?}");
    assert_eq!(mounts[1]["pid"], ensures[1]["pid"]);
    assert_eq!(env.service_events("service.starting").len(), 1);
    env.assert_logs_are_json();
}

#[test]
fn run_returns_the_commands_exit_status_and_the_command_is_the_runtime_root() {
    let env = TestEnv::new();
    let output = env
        .spfs(&["run", "base", "--", "sh", "-c", "echo $$; exit 7"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(7), "{}", stderr(&output));
    let shell_pid: i64 = stdout(&output).trim().parse().unwrap();
    let mounts = env.service_events("service.mount");
    assert_eq!(
        mounts[0]["root_pid"], shell_pid,
        "exec kept the pid that was mounted"
    );

    let missing = env
        .spfs(&["run", "base", "--", "/no/such/program"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(127));
    assert!(
        stderr(&missing).contains("/no/such/program"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn sixteen_cold_runs_at_once_start_exactly_one_service() {
    let env = TestEnv::new();
    // A FIFO as a starting gate: each launcher waits to read one line from it.
    // We hold it open read-write, so lines wait in it for late readers too.
    let gate = env.root.path().join("gate");
    nix::unistd::mkfifo(&gate, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut gate_handle = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&gate)
        .unwrap();
    let children: Vec<_> = (0..16)
        .map(|i| {
            env.command("sh")
                .arg("-c")
                .arg(r#"read _ < "$1"; exec "$2" run - -- echo "ran $3""#)
                .args(["gate", gate.to_str().unwrap(), SPFS, &i.to_string()])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Let them all reach the gate, then open it for everyone with one write.
    std::thread::sleep(Duration::from_millis(300));
    gate_handle.write_all(&[b'\n'; 16]).unwrap();
    for (i, child) in children.into_iter().enumerate() {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "run {i} failed: {}",
            stderr(&output)
        );
        assert_eq!(stdout(&output), format!("ran {i}\n"));
    }
    drop(gate_handle);
    assert_eq!(
        env.launcher_events("launcher.spawn").len(),
        1,
        "exactly one spawn"
    );
    assert_eq!(
        env.service_events("service.starting").len(),
        1,
        "exactly one service process"
    );
    let outcomes: Vec<String> = env
        .launcher_events("launcher.ensure")
        .iter()
        .map(|e| e["outcome"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(outcomes.len(), 16);
    assert_eq!(outcomes.iter().filter(|o| *o == "started").count(), 1);
    env.assert_logs_are_json();
}

#[test]
fn a_missing_service_binary_is_named_with_the_fix() {
    let env = TestEnv::new();
    let started = Instant::now();
    let output = env
        .spfs(&["run", "-", "--", "true"])
        .env("SPFS_FUSE_SERVICE_BIN", "/opt/nowhere/spfs-fuse-macos")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains("/opt/nowhere/spfs-fuse-macos"), "{err}");
    assert!(err.contains("SPFS_FUSE_SERVICE_BIN"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let failed = env.launcher_events("launcher.start_failed");
    assert_eq!(failed[0]["reason"], "binary_not_found");
}

#[test]
fn a_service_that_fails_at_startup_reports_its_reason_at_once() {
    let env = TestEnv::new();
    std::fs::write(&env.mountpoint, "a regular file, not a directory").unwrap();
    let started = Instant::now();
    let output = env.spfs(&["run", "-", "--", "true"]).output().unwrap();
    let elapsed = started.elapsed();
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains("is not a directory"), "{err}");
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    assert_eq!(
        env.launcher_events("launcher.start_failed")[0]["reason"],
        "mountpoint"
    );
    assert!(env.service_pid().is_none(), "the failed service is gone");
    assert!(!env.socket().exists(), "it removed its socket");
}

/// Writes an executable shell script standing in for the service binary.
fn fake_service(env: &TestEnv, body: &str) -> std::path::PathBuf {
    let path = env.root.path().join("fake-service");
    let mut file = std::fs::File::create(&path).unwrap();
    writeln!(file, "#!/bin/sh\n{body}").unwrap();
    drop(file);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn a_service_that_crashes_shows_its_exit_status_and_stderr() {
    let env = TestEnv::new();
    let fake = fake_service(&env, "echo 'panicked at: boom in startup' >&2\nexit 3");
    let started = Instant::now();
    let output = env
        .spfs(&["run", "-", "--", "true"])
        .env("SPFS_FUSE_SERVICE_BIN", &fake)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains("exit code 3"), "{err}");
    assert!(err.contains("panicked at: boom in startup"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn a_service_that_never_gets_ready_times_out_naming_the_phase() {
    let env = TestEnv::new();
    let pidfile = env.root.path().join("fake.pid");
    let fake = fake_service(
        &env,
        &format!("echo $$ > {}\nexec sleep 30", pidfile.display()),
    );
    let started = Instant::now();
    let output = env
        .spfs(&["run", "-", "--", "true"])
        .env("SPFS_FUSE_SERVICE_BIN", &fake)
        .env("SPFS_SERVICE_START_TIMEOUT", "1")
        .output()
        .unwrap();
    if let Ok(pid) = std::fs::read_to_string(&pidfile) {
        env.track(pid.trim().parse().unwrap());
    }
    let elapsed = started.elapsed();
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains("phase: readiness_wait"), "{err}");
    assert!(err.contains(env.socket().to_str().unwrap()), "{err}");
    assert!(err.contains("spfs-fuse-macos.log"), "{err}");
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(4),
        "{elapsed:?}"
    );
    assert_eq!(
        env.launcher_events("launcher.start_failed")[0]["reason"],
        "timeout"
    );
}

#[test]
fn a_stale_socket_is_recovered() {
    let env = TestEnv::new();
    std::fs::create_dir_all(&env.runtime_dir).unwrap();
    std::fs::set_permissions(&env.runtime_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    // Bound then closed: the file stays, nobody listens, as after kill -9.
    drop(UnixListener::bind(env.socket()).unwrap());
    assert!(env.socket().exists());
    let output = run_ok(&mut env.spfs(&["run", "-", "--", "echo", "recovered"]));
    assert_eq!(stdout(&output), "recovered\n");
    assert_eq!(
        env.launcher_events("launcher.stale_socket_removed").len(),
        1
    );
}

#[test]
fn a_foreign_listener_gives_a_specific_error_not_a_hang() {
    let env = TestEnv::new();
    std::fs::create_dir_all(&env.runtime_dir).unwrap();
    std::fs::set_permissions(&env.runtime_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let listener = UnixListener::bind(env.socket()).unwrap();
    // Accept and hold connections without ever answering.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn);
        }
    });
    let started = Instant::now();
    let output = env.spfs(&["run", "-", "--", "true"]).output().unwrap();
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains("does not answer grpc.health.v1"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        env.service_pid().is_none(),
        "no service was started over it"
    );
}

#[test]
fn an_unsafe_runtime_dir_is_refused() {
    let env = TestEnv::new();
    std::fs::create_dir_all(&env.runtime_dir).unwrap();
    std::fs::set_permissions(&env.runtime_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let output = env.spfs(&["run", "-", "--", "true"]).output().unwrap();
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains("writable by group or others"), "{err}");
    assert!(err.contains("chmod 700"), "{err}");
    assert!(env.service_pid().is_none());
}

#[test]
fn a_bad_start_timeout_is_explained() {
    let env = TestEnv::new();
    let output = env
        .spfs(&["run", "-", "--", "true"])
        .env("SPFS_SERVICE_START_TIMEOUT", "soon")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("SPFS_SERVICE_START_TIMEOUT"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn without_fuse_the_error_says_how_to_install_it() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to hide /dev/fuse in a private mount namespace");
        return;
    }
    let env = TestEnv::new();
    // A private mount namespace whose /dev has null but no fuse: FUSE is really absent.
    let script = format!(
        "mount -t tmpfs tmpfs /dev && mknod -m 666 /dev/null c 1 3 && exec {SPFS} run - -- true"
    );
    let started = Instant::now();
    let output = env
        .command("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains("FUSE is not available"), "{err}");
    assert!(err.contains("fuse3"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        env.launcher_events("launcher.start_failed")[0]["reason"],
        "fuse_unavailable"
    );
}

#[test]
fn shell_runs_the_users_shell_in_the_environment() {
    let env = TestEnv::new();
    let mut child = env
        .spfs(&["shell", "base"])
        .env("SHELL", "/bin/sh")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{SPFS} service status --json\nexit 4\n").as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(4));
    let status: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(status["runtimes"][0]["env_spec"], "base");
}
