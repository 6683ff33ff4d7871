//! What a support engineer uses on one machine: `spfs service logs` and
//! `spfs doctor`, against real services and real failures.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use common::*;

#[test]
fn logs_shows_the_last_events_readably_and_follows_new_ones() {
    let env = TestEnv::new();
    run_ok(&mut env.spfs(&["run", "base", "--", "true"]));
    // The runtime ends (and is logged) after the command exits: let it settle.
    assert!(env.wait_for(Duration::from_secs(5), || {
        env.service_events("service.view_freed").len() == 1
            && env.service_events("service.runtime_ended").len() == 1
    }));
    let json_lines = env.log_lines("spfs-fuse-macos");
    let last_five: Vec<&serde_json::Value> = json_lines.iter().rev().take(5).rev().collect();

    let output = run_ok(&mut env.spfs(&["service", "logs", "-n", "5"]));
    let text = stdout(&output);
    let shown: Vec<&str> = text.lines().collect();
    assert_eq!(shown.len(), 5, "{text}");
    for (line, event) in shown.iter().zip(&last_five) {
        let name = event["event"].as_str().unwrap();
        let time = &event["timestamp"].as_str().unwrap()[11..23];
        assert!(
            line.contains(name) && line.contains(time),
            "{line} vs {event}"
        );
        assert!(!line.starts_with('{'), "readable, not JSON: {line}");
    }
    let raw = run_ok(&mut env.spfs(&["service", "logs", "-n", "1", "--json"]));
    let parsed: serde_json::Value = serde_json::from_str(stdout(&raw).trim()).unwrap();
    assert_eq!(&parsed, *last_five.last().unwrap());
    let launcher = run_ok(&mut env.spfs(&["service", "logs", "-n", "3", "--launcher"]));
    assert!(
        stdout(&launcher).contains("launcher.exec"),
        "{}",
        stdout(&launcher)
    );

    // -f: a line written after it started shows up.
    let mut follower = env
        .spfs(&["service", "logs", "-f", "-n", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    env.track(follower.id() as i32);
    let (tx, rx) = mpsc::channel();
    let out = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    run_ok(&mut env.spfs(&["run", "app", "--", "true"]));
    let mut seen = Vec::new();
    let found = loop {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(line) if line.contains("service.mount") && line.contains("env_spec=app") => {
                break true
            }
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    assert!(found, "the new mount was not followed; saw {seen:?}");

    // Rotation: the symlink moves to a new day's file; the follower moves too.
    let next_day = env.log_dir.join("spfs-fuse-macos.2099-01-01.log");
    std::fs::write(&next_day, "").unwrap();
    let link = env.log_dir.join("spfs-fuse-macos.log");
    let temp = env.log_dir.join("link.tmp");
    std::os::unix::fs::symlink("spfs-fuse-macos.2099-01-01.log", &temp).unwrap();
    std::fs::rename(&temp, &link).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let rotated = r#"{"timestamp":"2099-01-01T00:00:00.000000000Z","level":"info","pid":1,"event":"service.ready","message":"after rotation","startup_ms":1.0}"#;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&next_day)
        .unwrap();
    std::io::Write::write_all(&mut file, format!("{rotated}\n").as_bytes()).unwrap();
    let found = loop {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(line) if line.contains("after rotation") => break true,
            Ok(_) => {}
            Err(_) => break false,
        }
    };
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(found, "the follower did not move to the new file");
    std::fs::remove_file(&next_day).unwrap();
}

fn doctor(env: &TestEnv, configure: impl FnOnce(&mut std::process::Command)) -> (bool, String) {
    let mut cmd = env.spfs(&["doctor"]);
    configure(&mut cmd);
    let output = cmd.output().unwrap();
    (output.status.success(), stdout(&output))
}

fn failed_line<'a>(report: &'a str, check: &str) -> Option<&'a str> {
    report
        .lines()
        .find(|l| l.starts_with(&format!("[FAIL] {check}:")))
}

#[test]
fn doctor_passes_when_all_is_well_and_names_each_failure_with_its_fix() {
    let env = TestEnv::new();
    run_ok(&mut env.spfs(&["run", "base", "--", "true"]));
    let (ok, report) = doctor(&env, |_| {});
    assert!(ok, "{report}");
    assert_eq!(
        report.lines().filter(|l| l.starts_with("[ok]")).count(),
        6,
        "{report}"
    );

    // Service binary missing.
    let (ok, report) = doctor(&env, |c| {
        c.env("SPFS_FUSE_SERVICE_BIN", "/opt/nowhere/spfs-fuse-macos");
    });
    assert!(!ok);
    let line = failed_line(&report, "service binary").expect(&report);
    assert!(line.contains("/opt/nowhere/spfs-fuse-macos"), "{report}");
    assert!(report.contains("fix: install it beside `spfs`"), "{report}");

    // Service stopped.
    run_ok(&mut env.spfs(&["service", "stop"]));
    let (ok, report) = doctor(&env, |_| {});
    assert!(!ok);
    assert!(failed_line(&report, "service")
        .expect(&report)
        .contains("not running"));
    assert!(report.contains("spfs service start"), "{report}");

    // The last start failed: its reason is reported.
    let failed = env
        .spfs(&["run", "-", "--", "true"])
        .env("SPFS_FUSE_SERVICE_BIN", "/opt/nowhere/spfs-fuse-macos")
        .output()
        .unwrap();
    assert!(!failed.status.success());
    let (_, report) = doctor(&env, |_| {});
    assert!(
        failed_line(&report, "last start")
            .expect(&report)
            .contains("reason binary_not_found"),
        "{report}"
    );

    // Something foreign on the socket.
    let listener = UnixListener::bind(env.socket()).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn);
        }
    });
    let (ok, report) = doctor(&env, |_| {});
    assert!(!ok);
    assert!(
        failed_line(&report, "service")
            .expect(&report)
            .contains("foreign"),
        "{report}"
    );
    std::fs::remove_file(env.socket()).unwrap();

    // Runtime dir open to everyone.
    std::fs::set_permissions(&env.runtime_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (ok, report) = doctor(&env, |_| {});
    assert!(!ok);
    assert!(
        failed_line(&report, "runtime dir")
            .expect(&report)
            .contains("777"),
        "{report}"
    );
    assert!(report.contains("fix: chmod 700"), "{report}");
    std::fs::set_permissions(&env.runtime_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
}
