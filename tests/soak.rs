//! Soak: many `spfs run`s against one service leave it as they found it: the
//! same open fds and threads, memory within 10%, no runtime, no stray or
//! zombie process of the test's or the service's. CI runs a short round; `SPFS_SOAK=full` runs the long one
//! (1,000 sequential and 50 rounds of 32 concurrent).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;

struct Sample {
    fds: usize,
    threads: u64,
    rss_kib: u64,
}

fn sample(pid: i32) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    };
    Sample {
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count(),
        threads: field("Threads:"),
        rss_kib: field("VmRSS:"),
    }
}

/// Processes whose parent is `pid` (the service), and zombies among the
/// processes this test started or the service did: this test process's
/// and the service's children. Never other processes of the machine:
/// another tool's zombies say nothing of ours.
fn children_and_our_zombies(pid: i32) -> (Vec<i32>, Vec<i32>) {
    let me = std::process::id() as i32;
    let mut children = Vec::new();
    let mut zombies = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(other) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{other}/stat")) else {
            continue;
        };
        let rest: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let parent = rest.get(1).and_then(|p| p.parse::<i32>().ok());
        if parent == Some(pid) {
            children.push(other);
        }
        if rest.first() == Some(&"Z") && (parent == Some(pid) || parent == Some(me)) {
            zombies.push(other);
        }
    }
    (children, zombies)
}

fn run_one(env: &TestEnv, spec: &str) {
    let output = env.spfs(&["run", spec, "--", "true"]).output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn many_runs_leave_the_service_as_they_found_it() {
    let full = std::env::var("SPFS_SOAK").as_deref() == Ok("full");
    let (sequential, rounds) = if full { (1000, 50) } else { (200, 5) };
    let env = TestEnv::new();
    std::fs::create_dir_all(env.layers.join("base/etc")).unwrap();
    std::fs::write(env.layers.join("base/etc/version"), "base\n").unwrap();
    env.tag_layers();

    for _ in 0..50 {
        run_one(&env, "base+app");
    }
    let pid = env.service_pid().unwrap();
    // Let exit watches settle and idle blocking threads (2 s keep-alive) exit.
    std::thread::sleep(Duration::from_secs(3));
    let before = sample(pid);

    for _ in 50..sequential {
        run_one(&env, "base+app");
    }
    for _ in 0..rounds {
        let children: Vec<_> = (0..32)
            .map(|_| {
                env.spfs(&[
                    "run",
                    "base",
                    "--",
                    "cat",
                    &format!("{}/etc/version", env.mountpoint.display()),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
            })
            .collect();
        for child in children {
            let output = child.wait_with_output().unwrap();
            assert!(output.status.success(), "{}", stderr(&output));
            assert_eq!(stdout(&output), "base\n");
        }
    }
    assert_eq!(env.service_pid(), Some(pid), "one service throughout");
    assert!(
        env.wait_for(Duration::from_secs(5), || status_json(&env)["runtimes"]
            .as_array()
            .unwrap()
            .is_empty()),
        "no runtime left"
    );
    std::thread::sleep(Duration::from_secs(3));
    let after = sample(pid);
    assert_eq!(after.fds, before.fds, "open fds");
    assert_eq!(after.threads, before.threads, "threads");
    assert!(
        after.rss_kib * 10 <= before.rss_kib * 11,
        "resident memory grew more than 10%: {} KiB -> {} KiB",
        before.rss_kib,
        after.rss_kib
    );
    let (children, zombies) = children_and_our_zombies(pid);
    assert!(
        children.is_empty(),
        "the service has child processes: {children:?}"
    );
    assert!(zombies.is_empty(), "zombies of ours: {zombies:?}");
    let mounts = env.service_events("service.mount").len();
    assert_eq!(mounts, sequential + rounds * 32);
    eprintln!(
        "soak: {} runs; fds {} -> {}, threads {} -> {}, rss {} -> {} KiB",
        mounts, before.fds, after.fds, before.threads, after.threads, before.rss_kib, after.rss_kib
    );
}
