//! Whole-process figures of `spfs run - -- true`, the way users meet the
//! launcher: warm against `true`, cold against warm, 64 racing cold runs
//! against 64 racing warm ones, and the service's idle memory.
//!
//! Every build measured gets its own isolated dirs and its own service
//! binary. With `SPFS_BENCH_BEFORE=DIR` (a directory holding an earlier
//! build's `spfs` and `spfs-fuse-macos`) that build is measured too,
//! interleaved with this one (A B A B ...), so the two columns come from the
//! same minutes of the same machine.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::ms;
use crate::stats::summarize;

/// One build under test: its binaries and its own runtime, log and mount dirs.
pub struct Build {
    pub name: &'static str,
    spfs: PathBuf,
    service: PathBuf,
    root: PathBuf,
}

impl Build {
    pub fn new(name: &'static str, spfs: &Path, service: &Path, root: &Path) -> Build {
        let root = root.join(name);
        std::fs::create_dir_all(&root).unwrap();
        Build {
            name,
            spfs: spfs.to_owned(),
            service: service.to_owned(),
            root,
        }
    }

    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("SPFS_RUNTIME_DIR", self.root.join("run"))
            .env("SPFS_LOG_DIR", self.root.join("log"))
            .env("SPFS_MOUNTPOINT", self.root.join("mnt"))
            .env("SPFS_SCRATCH_DIR", self.root.join("scratch"))
            .env("SPFS_FUSE_SERVICE_BIN", &self.service)
            .env_remove("SPFS_RUNTIME")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        cmd
    }

    /// `spfs run - -- true`, as a whole process.
    fn run_true(&self) -> Command {
        let mut cmd = self.command(&self.spfs);
        cmd.args(["run", "-", "--", "true"]);
        cmd
    }

    fn timed_run(&self) -> f64 {
        let started = Instant::now();
        let status = self.run_true().status().unwrap();
        assert!(status.success(), "{}: spfs run failed", self.name);
        ms(started.elapsed())
    }

    /// Stops this build's service; every run has exited by now, so
    /// `--force` only covers a runtime whose end is still being looked into.
    pub fn stop(&self) {
        let _ = self
            .command(&self.spfs)
            .args(["service", "stop", "--force"])
            .stderr(Stdio::null())
            .status();
        let pidfile = self.root.join("run").join("service.pid");
        let deadline = Instant::now() + Duration::from_secs(10);
        while spfs::contract::pidfile::is_held(&pidfile) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            !spfs::contract::pidfile::is_held(&pidfile),
            "{}: the service did not stop",
            self.name
        );
    }

    fn service_rss_mib(&self) -> f64 {
        let pidfile = self.root.join("run").join("service.pid");
        let pid = spfs::contract::pidfile::read_pid(&pidfile).expect("service pid");
        crate::rss_mib(pid)
    }
}

fn time_true() -> f64 {
    let started = Instant::now();
    assert!(Command::new("true").status().unwrap().success());
    ms(started.elapsed())
}

/// `launchers` processes `spfs run - -- true` wait at a FIFO gate (in `sh`,
/// before spfs starts), then all go at once; milliseconds from opening the
/// gate until the last one has exited.
fn racing(build: &Build, launchers: usize) -> f64 {
    let gate = build.root.join("gate");
    let _ = std::fs::remove_file(&gate);
    nix::unistd::mkfifo(&gate, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut gate_handle = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&gate)
        .unwrap();
    let mut children: Vec<_> = (0..launchers)
        .map(|_| {
            let mut cmd = build.command(Path::new("sh"));
            cmd.arg("-c")
                .arg(r#"read _ < "$0" && exec "$@""#)
                .arg(&gate)
                .arg(&build.spfs)
                .args(["run", "-", "--", "true"]);
            cmd.spawn().unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200 + 5 * launchers as u64));
    let opened = Instant::now();
    gate_handle.write_all(&vec![b'\n'; launchers]).unwrap();
    let mut failed = 0;
    for child in &mut children {
        if !child.wait().unwrap().success() {
            failed += 1;
        }
    }
    let last = ms(opened.elapsed());
    assert_eq!(failed, 0, "{}: {failed} racing runs failed", build.name);
    last
}

/// Runs every figure for every build, interleaved, and returns table lines
/// and the JSON for them.
pub fn whole_process(builds: &[Build], scale: impl Fn(usize) -> usize) -> (Vec<String>, Value) {
    let mut table = Vec::new();
    let mut results = serde_json::Map::new();
    let n = builds.len();
    let mut warm = vec![Vec::new(); n];
    let mut cold = vec![Vec::new(); n];
    let mut plain = Vec::new();
    let mut race_cold = vec![Vec::new(); n];
    let mut race_warm = vec![Vec::new(); n];
    let mut rss = vec![Vec::new(); n];

    // Warm against `true`: the service up, one run to warm the caches.
    for build in builds {
        build.timed_run();
    }
    for _ in 0..scale(200) {
        for (i, build) in builds.iter().enumerate() {
            warm[i].push(build.timed_run());
        }
        plain.push(time_true());
    }
    // Cold, then warm right after; the stop is not timed.
    let mut cold_warm = vec![Vec::new(); n];
    for _ in 0..scale(40) {
        for (i, build) in builds.iter().enumerate() {
            build.stop();
            cold[i].push(build.timed_run());
            cold_warm[i].push(build.timed_run());
        }
    }
    // Idle memory: a fresh service, one empty runtime that has ended.
    for _ in 0..scale(10).min(5) {
        for (i, build) in builds.iter().enumerate() {
            build.stop();
            build.timed_run();
            std::thread::sleep(Duration::from_millis(300));
            rss[i].push(build.service_rss_mib());
        }
    }
    // 64 racing runs, cold and warm.
    for _ in 0..scale(10) {
        for (i, build) in builds.iter().enumerate() {
            build.stop();
            race_cold[i].push(racing(build, 64));
            race_warm[i].push(racing(build, 64));
        }
    }
    for build in builds {
        build.stop();
    }

    let t = summarize(&plain).median;
    for (i, build) in builds.iter().enumerate() {
        let w = summarize(&warm[i]);
        let c = summarize(&cold[i]);
        let cw = summarize(&cold_warm[i]).median;
        let rc = summarize(&race_cold[i]);
        let rw = summarize(&race_warm[i]);
        let r = summarize(&rss[i]).median;
        let name = build.name;
        table.push(format!(
            "| {name}: warm `spfs run - -- true` (ms) | {:.3} ({:.3}) | `true`: {t:.3} | adds **{:.2}** ms |",
            w.median,
            w.p95,
            w.median - t
        ));
        table.push(format!(
            "| {name}: cold `spfs run - -- true` (ms) | {:.3} ({:.3}) | warm right after: {cw:.3} | adds **{:.2}** ms |",
            c.median,
            c.p95,
            c.median - cw
        ));
        table.push(format!(
            "| {name}: 64 racing runs, last exited (ms) | cold {:.2} ({:.2}) | warm {:.2} ({:.2}) | adds **{:.2}** ms ({:.2} cold runs) |",
            rc.median,
            rc.p95,
            rw.median,
            rw.p95,
            rc.median - rw.median,
            (rc.median - rw.median) / (c.median - cw)
        ));
        table.push(format!(
            "| {name}: service RSS idle (MiB) | **{r:.2}** | | |"
        ));
        results.insert(
            name.into(),
            json!({
                "unit": "ms",
                "true": summarize(&plain).json(),
                "warm": w.json(),
                "warm_minus_true": w.median - t,
                "cold": c.json(),
                "warm_after_cold": cw,
                "cold_minus_warm": c.median - cw,
                "racing_64_cold": rc.json(),
                "racing_64_warm": rw.json(),
                "racing_cold_minus_warm": rc.median - rw.median,
                "service_rss_idle_mib": r,
            }),
        );
    }
    (table, Value::Object(results))
}
