//! Our `grpc.health.v1` as clients not written here see it: the official
//! Python `grpcio-health-checking` package, from the venv `.ci/run` creates
//! (`SPFS_TEST_PYTHON` points elsewhere).

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/interop/health_client.py"
);

fn python() -> PathBuf {
    let path = std::env::var_os("SPFS_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python")));
    assert!(
        path.exists(),
        "no Python with grpcio-health-checking at {}: run .ci/run, or \
         `python3 -m venv .venv && .venv/bin/pip install grpcio-health-checking`",
        path.display()
    );
    path
}

fn health(args: &[&str]) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg(SCRIPT).args(args);
    cmd
}

/// Kills a helper child when the test ends, pass or fail.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn python_health_client_checks_and_watches_the_service() {
    let env = TestEnv::new();
    run_ok(&mut env.spfs(&["service", "start"]));
    let socket = env.socket();
    let socket = socket.to_str().unwrap();
    for service in ["", "spfs.vfs.v1.VfsService"] {
        let output = run_ok(&mut health(&["check", socket, service]));
        assert_eq!(stdout(&output).trim(), "SERVING", "Check({service:?})");
    }
    let unknown = health(&["check", socket, "no.such.Service"])
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains("NOT_FOUND"),
        "{}",
        stderr(&unknown)
    );

    let mut watcher = Reaped(
        health(&["watch", socket, "spfs.vfs.v1.VfsService"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(watcher.0.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "SERVING");
    run_ok(&mut env.spfs(&["service", "stop"]));
    assert_eq!(lines.next().unwrap().unwrap(), "NOT_SERVING");
}

#[test]
fn a_service_stuck_in_not_serving_fails_after_the_deadline_with_its_own_error() {
    let env = TestEnv::new();
    std::fs::create_dir_all(&env.runtime_dir).unwrap();
    let socket = env.socket();
    let mut server = Reaped(
        health(&["serve", socket.to_str().unwrap(), "NOT_SERVING"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut ready = String::new();
    BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "LISTENING");

    let started = Instant::now();
    let output = env
        .spfs(&["run", "-", "--", "true"])
        .env("SPFS_SERVICE_START_TIMEOUT", "1")
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("answered NOT_SERVING"),
        "{}",
        stderr(&output)
    );
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(4),
        "{elapsed:?}"
    );
    assert_eq!(
        env.launcher_events("launcher.start_failed")[0]["reason"],
        "not_serving"
    );
    assert!(
        env.service_pid().is_none(),
        "no service was spawned over a live one"
    );
}
