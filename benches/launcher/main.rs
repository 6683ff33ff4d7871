//! Launcher benchmark: ours against the plan's launcher (`baseline.rs`),
//! interleaved A B A B on the same machine, the same service binary.
//!
//!     cargo bench --bench launcher
//!
//! Prints a table and writes `target/bench-results/launcher.json`.
//! Figures: cold start, warm check, concurrent cold start with 4/16/64
//! launcher processes, `spfs run REF -- true` against `true`, service memory;
//! then the whole-process figures of `process.rs` (`spfs run - -- true` warm,
//! cold, 64 racing; service RSS idle), against an earlier build given as
//! `SPFS_BENCH_BEFORE=DIR` (and this build's from `SPFS_BENCH_AFTER=DIR`:
//! `cargo bench` builds its own binaries with the dev-dependencies' features,
//! which makes them larger). `SPFS_BENCH_ONLY=process` runs only those.

mod baseline;
mod process;
mod stats;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use spfs::client::{self, ControlClient};
use spfs::paths::Paths;
use spfs::Settings;
use stats::summarize;

const SERVICE_BIN: &str = env!("CARGO_BIN_EXE_spfs-fuse-macos");
const SPFS_BIN: &str = env!("CARGO_BIN_EXE_spfs");
/// The example layers, as absolute directory refs (no repository needed).
const BASE_APP: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/layers/base+",
    env!("CARGO_MANIFEST_DIR"),
    "/examples/layers/app"
);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Ours,
    Baseline,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ours => "ours",
            Kind::Baseline => "baseline",
        }
    }
}

fn settings(paths: &Paths) -> Settings {
    Settings {
        paths: paths.clone(),
        start_timeout: Duration::from_secs(10),
        service_bin: Some(PathBuf::from(SERVICE_BIN)),
        idle_timeout: None,
    }
}

fn env_for(cmd: &mut Command, paths: &Paths) {
    cmd.env("SPFS_RUNTIME_DIR", &paths.runtime_dir)
        .env("SPFS_LOG_DIR", &paths.log_dir)
        .env("SPFS_MOUNTPOINT", &paths.mountpoint)
        .env("SPFS_SCRATCH_DIR", &paths.scratch_dir)
        .env("SPFS_FUSE_SERVICE_BIN", SERVICE_BIN);
}

async fn ensure(kind: Kind, paths: &Paths) -> Result<(), String> {
    match kind {
        Kind::Ours => spfs::ensure_service_running(&settings(paths))
            .await
            .map(drop)
            .map_err(|e| e.to_string()),
        Kind::Baseline => {
            baseline::ensure_service_running(
                Path::new(SERVICE_BIN),
                &paths.socket(),
                &paths.mountpoint,
            )
            .await
        }
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Resident memory of process `pid` (`VmRSS`), MiB.
fn rss_mib(pid: i32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kib / 1024.0
}

/// Stops the service (if any) and waits until it has exited and unmounted.
fn stop_service(paths: &Paths) {
    let mut cmd = Command::new(SPFS_BIN);
    cmd.args(["service", "stop"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    env_for(&mut cmd, paths);
    let _ = cmd.status();
    // Baseline racers may leave a second instance on its way out: wait for quiet.
    let deadline = Instant::now() + Duration::from_secs(10);
    while spfs::contract::pidfile::is_held(&paths.pidfile()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn count_service_starts(paths: &Paths) -> usize {
    let mut count = 0;
    if let Ok(entries) = std::fs::read_dir(&paths.log_dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("spfs-fuse-macos.2") {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                count += text
                    .lines()
                    .filter(|l| l.contains("\"event\":\"service.starting\""))
                    .count();
            }
        }
    }
    count
}

/// One launcher process of the concurrent figure: wait at the gate, ensure, report.
fn child_main(kind: Kind, gate: &Path) {
    let mut byte = [0u8; 1];
    let mut gate = std::fs::File::open(gate).expect("gate");
    while gate
        .read(&mut byte)
        .map(|n| n == 1 && byte[0] != b'\n')
        .unwrap_or(false)
    {}
    let settings = Settings::from_env().expect("settings");
    if kind == Kind::Ours {
        spfs::telemetry::init(spfs::telemetry::Program::Launcher, &settings.paths.log_dir);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match runtime.block_on(ensure(kind, &settings.paths)) {
        Ok(()) => println!("ok {}", now_ns()),
        Err(e) => println!("fail {} {}", now_ns(), e.replace('\n', " ")),
    }
}

struct Bench {
    _root: tempfile::TempDir,
    paths: Paths,
    runtime: tokio::runtime::Runtime,
    results: serde_json::Map<String, Value>,
    table: Vec<String>,
}

impl Bench {
    fn new() -> Bench {
        let root = tempfile::Builder::new()
            .prefix("spfs-bench")
            .tempdir_in("/tmp")
            .unwrap();
        let base = root.path().to_owned();
        let paths = Paths {
            runtime_dir: base.join("run"),
            log_dir: base.join("log"),
            mountpoint: base.join("mnt"),
            scratch_dir: base.join("scratch"),
        };
        paths.ensure_runtime_dir().unwrap();
        // The baseline's service inherits our environment, as in the plan: point
        // it at the same isolated dirs. Called before any thread exists.
        std::env::set_var("SPFS_RUNTIME_DIR", &paths.runtime_dir);
        std::env::set_var("SPFS_LOG_DIR", &paths.log_dir);
        std::env::set_var("SPFS_MOUNTPOINT", &paths.mountpoint);
        std::env::set_var("SPFS_SCRATCH_DIR", &paths.scratch_dir);
        Bench {
            _root: root,
            paths,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            results: Default::default(),
            table: Vec::new(),
        }
    }

    fn row(&mut self, figure: &str, unit: &str, ours: &[f64], base: Option<&[f64]>) -> Value {
        let o = summarize(ours);
        let mut value = json!({"unit": unit, "ours": o.json()});
        let (b_text, ratio_text) = match base {
            Some(base) => {
                let b = summarize(base);
                let ratio = b.median / o.median;
                value["baseline"] = b.json();
                value["baseline_over_ours_median"] = json!(ratio);
                (
                    format!("{:.3} ({:.3}) [{:.3}-{:.3}]", b.median, b.p95, b.min, b.max),
                    format!("{ratio:.2}"),
                )
            }
            None => ("-".into(), "-".into()),
        };
        self.table.push(format!(
            "| {figure} ({unit}) | {:.3} ({:.3}) [{:.3}-{:.3}] | {b_text} | {ratio_text} |",
            o.median, o.p95, o.min, o.max
        ));
        self.results.insert(figure.into(), value.clone());
        value
    }

    fn cold_start(&mut self, pairs: usize) {
        let mut samples = [Vec::new(), Vec::new()];
        let mut baseline_unready = 0;
        for _ in 0..pairs {
            for (i, kind) in [Kind::Ours, Kind::Baseline].into_iter().enumerate() {
                stop_service(&self.paths);
                let paths = self.paths.clone();
                let started = Instant::now();
                self.runtime
                    .block_on(ensure(kind, &paths))
                    .expect("cold start");
                samples[i].push(ms(started.elapsed()));
                let serving = self.runtime.block_on(is_serving(&paths.socket()));
                if kind == Kind::Baseline && !serving {
                    baseline_unready += 1;
                }
                assert!(
                    serving || kind == Kind::Baseline,
                    "ours returned before SERVING"
                );
            }
        }
        stop_service(&self.paths);
        let row = self.row("cold start", "ms", &samples[0], Some(&samples[1]));
        let _ = row;
        self.results.insert(
            "cold start: baseline returned before SERVING".into(),
            json!({"count": baseline_unready, "of": pairs}),
        );
    }

    /// Where a cold start's time goes, from the JSON logs (ours only: the baseline logs nothing).
    fn cold_start_phases(&mut self) {
        let lines = |prefix: &str| -> Vec<Value> {
            let mut out = Vec::new();
            for entry in std::fs::read_dir(&self.paths.log_dir).unwrap().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!("{prefix}.2")) {
                    let text = std::fs::read_to_string(entry.path()).unwrap();
                    out.extend(
                        text.lines()
                            .filter_map(|l| serde_json::from_str::<Value>(l).ok()),
                    );
                }
            }
            out
        };
        let launcher = lines("spfs");
        let service = lines("spfs-fuse-macos");
        let mut phases = serde_json::Map::new();
        let mut text = Vec::new();
        let started: Vec<&Value> = launcher
            .iter()
            .filter(|l| l["event"] == "launcher.ensure" && l["outcome"] == "started")
            .collect();
        for field in [
            "probe_ms",
            "lock_wait_ms",
            "spawn_ms",
            "readiness_wait_ms",
            "confirm_ms",
        ] {
            let values: Vec<f64> = started.iter().filter_map(|l| l[field].as_f64()).collect();
            let median = summarize(&values).median;
            phases.insert(field.into(), json!(median));
            text.push(format!("{} {median:.2}", field.trim_end_matches("_ms")));
        }
        for (event, field) in [
            ("service.listening", "elapsed_ms"),
            ("service.fuse_mounted", "elapsed_ms"),
            ("service.ready", "startup_ms"),
        ] {
            let values: Vec<f64> = service
                .iter()
                .filter(|l| l["event"] == event)
                .filter_map(|l| l[field].as_f64())
                .collect();
            if !values.is_empty() {
                let median = summarize(&values).median;
                phases.insert(format!("{event}.{field}"), json!(median));
                text.push(format!("{event} {median:.2}"));
            }
        }
        self.table.push(format!(
            "| cold start phases, ours, medians (ms) | {} | | |",
            text.join(", ")
        ));
        self.results.insert(
            "cold start phases (ours, from the JSON logs)".into(),
            Value::Object(phases),
        );
    }

    fn warm_check(&mut self, rounds: usize, per_round: usize) {
        let mut samples = [Vec::new(), Vec::new()];
        self.runtime
            .block_on(ensure(Kind::Ours, &self.paths))
            .unwrap();
        for _ in 0..rounds {
            for (i, kind) in [Kind::Ours, Kind::Baseline].into_iter().enumerate() {
                for _ in 0..per_round {
                    let started = Instant::now();
                    self.runtime.block_on(ensure(kind, &self.paths)).unwrap();
                    samples[i].push(ms(started.elapsed()));
                }
            }
        }
        self.row("warm check", "ms", &samples[0], Some(&samples[1]));
    }

    fn concurrent(&mut self, launchers: usize, pairs: usize) {
        let mut last_served = [Vec::new(), Vec::new()];
        let mut spawned = [Vec::new(), Vec::new()];
        let mut failed = [0usize, 0usize];
        let gate = self.paths.runtime_dir.join("gate");
        for _ in 0..pairs {
            for (i, kind) in [Kind::Ours, Kind::Baseline].into_iter().enumerate() {
                stop_service(&self.paths);
                let _ = std::fs::remove_file(&gate);
                nix::unistd::mkfifo(&gate, nix::sys::stat::Mode::from_bits_truncate(0o600))
                    .unwrap();
                let mut gate_handle = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&gate)
                    .unwrap();
                let starts_before = count_service_starts(&self.paths);
                let children: Vec<_> = (0..launchers)
                    .map(|_| {
                        let mut cmd = Command::new(std::env::current_exe().unwrap());
                        cmd.args(["--child", kind.name()])
                            .arg(&gate)
                            .stdout(Stdio::piped());
                        env_for(&mut cmd, &self.paths);
                        cmd.spawn().unwrap()
                    })
                    .collect();
                // Let every launcher reach the gate, then open it with one write.
                std::thread::sleep(Duration::from_millis(300 + 10 * launchers as u64));
                let opened = now_ns();
                gate_handle.write_all(&vec![b'\n'; launchers]).unwrap();
                let mut last = 0u128;
                for child in children {
                    let output = child.wait_with_output().unwrap();
                    let text = String::from_utf8_lossy(&output.stdout).into_owned();
                    let mut words = text.split_whitespace();
                    let status = words.next().unwrap_or("fail");
                    let at: u128 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                    if status == "ok" {
                        last = last.max(at);
                    } else {
                        failed[i] += 1;
                    }
                }
                drop(gate_handle);
                last_served[i].push((last.saturating_sub(opened)) as f64 / 1e6);
                // Give losing baseline instances time to log and exit before counting.
                std::thread::sleep(Duration::from_millis(200));
                spawned[i].push((count_service_starts(&self.paths) - starts_before) as f64);
            }
        }
        stop_service(&self.paths);
        let figure = format!("{launchers} concurrent cold launchers: last served");
        let mut value = self.row(&figure, "ms", &last_served[0], Some(&last_served[1]));
        value["service_processes_spawned"] = json!({
            "ours": spawned[0], "baseline": spawned[1]
        });
        value["failed_launchers"] =
            json!({"ours": failed[0], "baseline": failed[1], "of": launchers * pairs});
        self.table.push(format!(
            "| {launchers} concurrent: service processes spawned per run | {:?} | {:?} | |",
            spawned[0].iter().map(|s| *s as u32).collect::<Vec<_>>(),
            spawned[1].iter().map(|s| *s as u32).collect::<Vec<_>>()
        ));
        self.table.push(format!(
            "| {launchers} concurrent: failed launchers | {} of {} | {} of {} | |",
            failed[0],
            launchers * pairs,
            failed[1],
            launchers * pairs
        ));
        self.results.insert(figure, value);
    }

    fn run_overhead(&mut self, pairs: usize) {
        self.runtime
            .block_on(ensure(Kind::Ours, &self.paths))
            .unwrap();
        let mut with_spfs = Vec::new();
        let mut plain = Vec::new();
        for _ in 0..pairs {
            let mut cmd = Command::new(SPFS_BIN);
            cmd.args(["run", BASE_APP, "--", "true"]);
            env_for(&mut cmd, &self.paths);
            let started = Instant::now();
            assert!(cmd.status().unwrap().success());
            with_spfs.push(ms(started.elapsed()));
            let started = Instant::now();
            assert!(Command::new("true").status().unwrap().success());
            plain.push(ms(started.elapsed()));
        }
        let o = summarize(&with_spfs);
        let p = summarize(&plain);
        self.table.push(format!(
            "| `spfs run base+app -- true`, warm (ms) | {:.3} ({:.3}) [{:.3}-{:.3}] | `true`: {:.3} ({:.3}) | adds {:.2} ms |",
            o.median, o.p95, o.min, o.max, p.median, p.p95, o.median - p.median
        ));
        self.results.insert(
            "spfs run REF -- true, warm".into(),
            json!({"unit": "ms", "spfs_run": o.json(), "true": p.json(), "added_median_ms": o.median - p.median}),
        );
    }

    fn memory(&mut self, runtimes: usize) {
        stop_service(&self.paths);
        self.runtime
            .block_on(ensure(Kind::Ours, &self.paths))
            .unwrap();
        let pid = spfs::contract::pidfile::read_pid(&self.paths.pidfile()).unwrap();
        let rss = || rss_mib(pid);
        let idle = rss();
        // Each runtime's root gives itself a runtime, as a script would, then waits.
        let script = r#""$0" mount --root-process $$ "$1" >/dev/null && exec sleep 120"#;
        let mut sleepers: Vec<_> = (0..runtimes)
            .map(|_| {
                let mut cmd = Command::new("sh");
                cmd.args(["-c", script, SERVICE_BIN, BASE_APP]);
                env_for(&mut cmd, &self.paths);
                cmd.spawn().unwrap()
            })
            .collect();
        let wanted = runtimes;
        let deadline = Instant::now() + Duration::from_secs(30);
        let socket = self.paths.socket();
        while Instant::now() < deadline {
            let count = self.runtime.block_on(async {
                let mut control = ControlClient::new(client::connect(&socket).await.unwrap());
                control
                    .status(spfs::proto::StatusRequest {})
                    .await
                    .unwrap()
                    .into_inner()
                    .runtimes
                    .len()
            });
            if count >= wanted {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let busy = rss();
        for child in &mut sleepers {
            let _ = child.kill();
            let _ = child.wait();
        }
        std::thread::sleep(Duration::from_millis(300));
        let after = rss();
        stop_service(&self.paths);
        self.table.push(format!(
            "| service RSS (MiB): idle / {runtimes} runtimes of base+app / after they exit | {idle:.1} / {busy:.1} / {after:.1} | | |"
        ));
        self.results.insert(
            "service resident memory".into(),
            json!({"unit": "MiB", "idle": idle, "with_runtimes": busy, "runtimes": runtimes, "after_exit": after}),
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let kind = if args[i + 1] == "ours" {
            Kind::Ours
        } else {
            Kind::Baseline
        };
        child_main(kind, Path::new(&args[i + 2]));
        return;
    }
    let quick = std::env::var_os("SPFS_BENCH_QUICK").is_some();
    let scale = |n: usize| if quick { (n / 5).max(2) } else { n };
    let started = Instant::now();
    let mut bench = Bench::new();
    spfs::telemetry::init(spfs::telemetry::Program::Launcher, &bench.paths.log_dir);

    let only_process = std::env::var("SPFS_BENCH_ONLY").is_ok_and(|v| v == "process");
    if !only_process {
        eprintln!("cold start ...");
        bench.cold_start(scale(30));
        bench.cold_start_phases();
        eprintln!("warm check ...");
        bench.warm_check(scale(10), 200);
        for launchers in [4, 16, 64] {
            eprintln!("{launchers} concurrent launchers ...");
            bench.concurrent(launchers, scale(5));
        }
        eprintln!("run overhead ...");
        bench.run_overhead(scale(200));
        eprintln!("memory ...");
        bench.memory(100);
        stop_service(&bench.paths);
    }

    eprintln!("whole processes ...");
    let root = bench._root.path().to_owned();
    // `cargo bench` builds the binaries with the dev-dependencies' features
    // too (about 1 MB larger here, and slower to start): for a comparison,
    // give both sides `cargo build --release` binaries.
    let after = std::env::var_os("SPFS_BENCH_AFTER").map(PathBuf::from);
    let (spfs_bin, service_bin) = match &after {
        Some(dir) => (dir.join("spfs"), dir.join("spfs-fuse-macos")),
        None => (PathBuf::from(SPFS_BIN), PathBuf::from(SERVICE_BIN)),
    };
    let mut builds = vec![process::Build::new("after", &spfs_bin, &service_bin, &root)];
    let before = std::env::var_os("SPFS_BENCH_BEFORE").map(PathBuf::from);
    if let Some(dir) = &before {
        builds.insert(
            0,
            process::Build::new(
                "before",
                &dir.join("spfs"),
                &dir.join("spfs-fuse-macos"),
                &root,
            ),
        );
    }
    let (process_table, process_json) = process::whole_process(&builds, scale);
    bench.results.insert(
        "whole processes".into(),
        json!({
            "before_dir": before.map(|d| d.display().to_string()),
            "after_dir": after.map(|d| d.display().to_string()),
            "builds": process_json,
        }),
    );

    let machine = json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpu": std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default().lines()
            .find_map(|l| l.strip_prefix("model name\t: ")).unwrap_or("").to_owned(),
    });
    println!("\n| figure | ours: median (p95) [min-max] | baseline: median (p95) [min-max] | baseline / ours |");
    println!("|---|---:|---:|---:|");
    for line in &bench.table {
        println!("{line}");
    }
    println!("\n| whole processes | median (p95) | against | difference |");
    println!("|---|---:|---:|---:|");
    for line in &process_table {
        println!("{line}");
    }
    let out_dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-results"));
    std::fs::create_dir_all(&out_dir).unwrap();
    let report = json!({"machine": machine, "quick": quick, "seconds": started.elapsed().as_secs_f64(), "figures": bench.results});
    let text = serde_json::to_string_pretty(&report).unwrap();
    std::fs::write(out_dir.join("launcher.json"), &text).unwrap();
    std::fs::write(
        out_dir.join(format!("launcher-{}.json", now_ns() / 1_000_000_000)),
        &text,
    )
    .unwrap();
    println!(
        "\nmachine: {machine}; took {:.0} s; JSON: target/bench-results/launcher.json",
        started.elapsed().as_secs_f64()
    );
}

/// Whether the service on `socket` answers its health Check with SERVING.
async fn is_serving(socket: &Path) -> bool {
    use tonic_health::pb::health_check_response::ServingStatus;
    let Ok(channel) = spfs::client::connect(socket).await else {
        return false;
    };
    let request = tonic_health::pb::HealthCheckRequest {
        service: spfs::proto::VFS_SERVICE_NAME.into(),
    };
    match spfs::client::HealthClient::new(channel)
        .check(request)
        .await
    {
        Ok(response) => response.into_inner().status == ServingStatus::Serving as i32,
        Err(_) => false,
    }
}
