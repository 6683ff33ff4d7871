//! Test harness: an isolated SPFS environment (runtime dir, log dir, mountpoint,
//! spfs repository and config dir in a temp dir) driving the real binaries. Dropping it stops any
//! service it started, kills helper processes and detaches a leftover mount,
//! also when the test failed.
//!
//! Platform differences (the mount table, telling a zombie from a live
//! process) sit in the `os` module below, behind `cfg` like `src/platform/`.
//! The suite runs on Linux; on macOS it is type-checked and linted only.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use spfs::contract::pidfile;

pub const SPFS: &str = env!("CARGO_BIN_EXE_spfs");
pub const SERVICE: &str = env!("CARGO_BIN_EXE_spfs-fuse-macos");

pub struct TestEnv {
    pub root: tempfile::TempDir,
    pub runtime_dir: PathBuf,
    pub log_dir: PathBuf,
    pub mountpoint: PathBuf,
    /// Directories to commit as layers ([`TestEnv::tag_layers`]).
    pub layers: PathBuf,
    /// The local spfs repository (`SPFS_STORAGE_ROOT`).
    pub repo: PathBuf,
    /// Editable runtimes' changes (`SPFS_SCRATCH_DIR`).
    pub scratch: PathBuf,
    /// Extra processes a test started (fake services, sleepers) to kill at the end.
    pub helpers: std::sync::Mutex<Vec<i32>>,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        let root = tempfile::Builder::new()
            .prefix("spfs-t")
            .tempdir_in("/tmp")
            .expect("temp dir");
        // The kernel's mount table names resolved paths (macOS: /tmp -> /private/tmp).
        let base = root.path().canonicalize().expect("temp dir path");
        let env = TestEnv {
            runtime_dir: base.join("run"),
            log_dir: base.join("log"),
            mountpoint: base.join("mnt"),
            layers: base.join("layers"),
            repo: base.join("repo"),
            scratch: base.join("scratch"),
            root,
            helpers: Default::default(),
        };
        // Two (empty) layers, tagged so the refs `base`, `app` and `base+app` resolve.
        for layer in ["base", "app"] {
            std::fs::create_dir_all(env.layers.join(layer)).unwrap();
        }
        env.tag_layers();
        env
    }

    /// Commits every directory in `layers/` with `spfs commit --path`, tagged
    /// with its name, so a ref naming it shows its current contents.
    pub fn tag_layers(&self) {
        for entry in std::fs::read_dir(&self.layers).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                let name = path.file_name().unwrap().to_str().unwrap().to_owned();
                run_ok(&mut self.spfs(&[
                    "commit",
                    "--allow-empty",
                    "--path",
                    path.to_str().unwrap(),
                    "-t",
                    &name,
                ]));
            }
        }
    }

    /// A command for one of our binaries (or anything) with this env's variables.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        for (key, _) in std::env::vars_os() {
            let key_text = key.to_string_lossy();
            if key_text.starts_with("SPFS_") || key_text.starts_with("OTEL_") {
                cmd.env_remove(&key);
            }
        }
        cmd.env("SPFS_RUNTIME_DIR", &self.runtime_dir)
            .env("SPFS_LOG_DIR", &self.log_dir)
            .env("SPFS_MOUNTPOINT", &self.mountpoint)
            .env("SPFS_STORAGE_ROOT", &self.repo)
            .env("SPFS_SCRATCH_DIR", &self.scratch)
            // A view is freed with its last runtime, as the tests of freeing
            // expect; the tests of lingering views set their own time.
            .env("SPFS_VIEW_LINGER", "0")
            // No spfs config of the machine's user may leak into a test.
            .env("XDG_CONFIG_HOME", self.root.path().join("config"))
            .stdin(Stdio::null());
        cmd
    }

    pub fn spfs(&self, args: &[&str]) -> Command {
        let mut cmd = self.command(SPFS);
        cmd.args(args);
        cmd
    }

    pub fn service_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = self.command(SERVICE);
        cmd.args(args);
        cmd
    }

    pub fn socket(&self) -> PathBuf {
        self.runtime_dir.join("vfs.sock")
    }

    pub fn pidfile(&self) -> PathBuf {
        self.runtime_dir.join("service.pid")
    }

    /// The live service's pid, from its locked pidfile.
    pub fn service_pid(&self) -> Option<i32> {
        if pidfile::is_held(&self.pidfile()) {
            pidfile::read_pid(&self.pidfile())
        } else {
            None
        }
    }

    pub fn is_mounted(&self) -> bool {
        is_mounted(&self.mountpoint)
    }

    /// Every JSON line of the launcher (`spfs.*.log`) or service log files.
    pub fn log_lines(&self, prefix: &str) -> Vec<Value> {
        let mut lines = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.log_dir) else {
            return lines;
        };
        let mut files: Vec<PathBuf> = entries
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                name.starts_with(&format!("{prefix}.2")) && name.ends_with(".log")
            })
            .collect();
        files.sort();
        for file in files {
            for line in std::fs::read_to_string(&file).unwrap().lines() {
                lines.push(
                    serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", file.display())),
                );
            }
        }
        lines
    }

    pub fn launcher_events(&self, event: &str) -> Vec<Value> {
        self.log_lines("spfs")
            .into_iter()
            .filter(|l| l["event"] == event)
            .collect()
    }

    pub fn service_events(&self, event: &str) -> Vec<Value> {
        self.log_lines("spfs-fuse-macos")
            .into_iter()
            .filter(|l| l["event"] == event)
            .collect()
    }

    /// Checks the logging contract on every line of every `.log` file written.
    pub fn assert_logs_are_json(&self) {
        let mut count = 0;
        for entry in std::fs::read_dir(&self.log_dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "log") && !path.is_symlink() {
                for line in std::fs::read_to_string(&path).unwrap().lines() {
                    let value: Value = serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", path.display()));
                    for field in ["timestamp", "level", "event", "pid", "message"] {
                        assert!(
                            !value[field].is_null(),
                            "{}: no {field}: {line}",
                            path.display()
                        );
                    }
                    count += 1;
                }
            }
        }
        assert!(
            count > 0,
            "no log lines were written in {}",
            self.log_dir.display()
        );
    }

    /// Starts `spfs run ARGS... -- sh -c SCRIPT` where SCRIPT prints a line and
    /// the command then waits for stdin; returns the child and that line.
    /// [`release`] lets it finish.
    pub fn hold_run(&self, args: &[&str], script: &str) -> (std::process::Child, String) {
        use std::io::{BufRead, BufReader};
        let mut full = vec!["run"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--", "sh", "-c"]);
        let script = format!("{script}; read _ || true");
        full.push(&script);
        let mut child = self
            .spfs(&full)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        (child, line.trim().to_owned())
    }

    pub fn track(&self, pid: i32) {
        self.helpers.lock().unwrap().push(pid);
    }

    /// Waits until `check` holds, up to `limit`.
    pub fn wait_for(&self, limit: Duration, mut check: impl FnMut() -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if check() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        check()
    }

    /// Stops the service with SIGTERM (SIGKILL if it hangs) and waits until
    /// the process is gone, not only its pidfile. A service whose pidfile was
    /// deleted (a test removed its runtime dir) is found by its mountpoint.
    pub fn stop_service(&self) {
        let found = self
            .service_pid()
            .or_else(|| spfs::platform::find_service_process(&self.mountpoint));
        if let Some(pid) = found {
            // A test may have stopped it (SIGSTOP); SIGTERM needs it running.
            let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            if !self.wait_for(Duration::from_secs(10), || !is_alive(pid)) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                self.wait_for(Duration::from_secs(5), || !is_alive(pid));
            }
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.stop_service();
        // The logging contract holds for every test's logs, not only the ones that check it.
        if !std::thread::panicking() && self.log_dir.exists() {
            self.assert_logs_are_json();
        }
        for pid in self.helpers.lock().unwrap().drain(..) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if self.is_mounted() {
            // Detaches (Linux) or forces (macOS) even a busy or dead mount.
            let _ = spfs::platform::force_unmount(&self.mountpoint);
        }
    }
}

pub use os::{is_alive, is_mounted};

#[cfg(target_os = "linux")]
mod os {
    use super::*;

    /// Whether anything is mounted at `path`, from `/proc/self/mountinfo`
    /// (never touching the path itself, which may be a dead mount).
    pub fn is_mounted(path: &Path) -> bool {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let path = path.to_string_lossy();
        text.lines().any(|l| l.split(' ').nth(4) == Some(&*path))
    }

    /// Alive: exists and is not a zombie. A killed multithreaded process shows its
    /// leader as a zombie while other threads still tear down (and hold its fds),
    /// so it counts as alive until its last thread is gone.
    pub fn is_alive(pid: i32) -> bool {
        if kill(Pid::from_raw(pid), None).is_err() {
            return false;
        }
        let zombie_leader = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        });
        let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
        !zombie_leader || threads > 1
    }
}

#[cfg(target_os = "macos")]
mod os {
    use super::*;

    /// Whether a FUSE filesystem is mounted at `path`, from the kernel's mount
    /// table (`getfsstat(MNT_NOWAIT)`; never touching the path itself).
    pub fn is_mounted(path: &Path) -> bool {
        spfs::platform::is_fuse_mounted_at(path).unwrap_or(false)
    }

    /// Alive: exists and is not a zombie (`ps` shows state `Z`).
    pub fn is_alive(pid: i32) -> bool {
        if kill(Pid::from_raw(pid), None).is_err() {
            return false;
        }
        let state = Command::new("ps")
            .args(["-o", "stat=", "-p", &pid.to_string()])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        !state.starts_with('Z')
    }
}

impl TestEnv {
    /// `spfs run ARGS... -- sh -c SCRIPT`, with `$M` the mountpoint and
    /// `$SPFS` our binary in the script's environment.
    pub fn sh(&self, args: &[&str], script: &str) -> Output {
        let mut full = vec!["run"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--", "sh", "-c", script]);
        self.spfs(&full)
            .env("M", &self.mountpoint)
            .env("S", &self.scratch)
            .env("SPFS", SPFS)
            .output()
            .expect("spfs run")
    }

    /// [`TestEnv::sh`] that must succeed; its stdout.
    pub fn sh_ok(&self, args: &[&str], script: &str) -> String {
        let output = self.sh(args, script);
        assert!(
            output.status.success(),
            "spfs run {args:?} -- sh -c {script:?}: {:?}\nstdout: {}\nstderr: {}",
            output.status,
            stdout(&output),
            stderr(&output)
        );
        stdout(&output)
    }

    /// A layer `base` to edit: `etc/version` (1.0), `etc/gone`, and
    /// `share/kept` beside a tree `share/tree/deep/file`.
    pub fn with_base_to_edit() -> TestEnv {
        let env = TestEnv::new();
        let base = env.layers.join("base");
        std::fs::create_dir_all(base.join("etc")).unwrap();
        std::fs::write(base.join("etc/version"), "1.0\n").unwrap();
        std::fs::write(base.join("etc/gone"), "delete me\n").unwrap();
        std::fs::create_dir_all(base.join("share/tree/deep")).unwrap();
        std::fs::write(base.join("share/tree/deep/file"), "x\n").unwrap();
        std::fs::write(base.join("share/kept"), "stays\n").unwrap();
        env.tag_layers();
        env
    }

    /// A durable editable runtime `name` of `base` (from
    /// [`TestEnv::with_base_to_edit`]) with unsaved changes (`etc/version`
    /// rewritten, `etc/gone` deleted), left behind by a service killed with
    /// SIGKILL while its command still ran.
    pub fn durable_runtime_of_a_killed_service(&self, name: &str) {
        let (held, line) = self.hold_run(
            &["--keep-runtime", "--runtime-name", name, "-e", "base"],
            &format!(
                "echo unsaved > {m}/etc/version; rm {m}/etc/gone; echo ready",
                m = self.mountpoint.display()
            ),
        );
        assert_eq!(line, "ready");
        self.kill_service();
        release(held);
    }

    /// Kills the service with SIGKILL (a crash) and waits until it is gone.
    pub fn kill_service(&self) {
        let service = self.service_pid().expect("a service is running");
        kill(Pid::from_raw(service), Signal::SIGKILL).unwrap();
        assert!(self.wait_for(Duration::from_secs(5), || !is_alive(service)));
    }
}

/// Lets a command started by [`TestEnv::hold_run`] finish; it must succeed.
pub fn release(mut child: std::process::Child) {
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs the command, failing the test with its output if it does not succeed.
pub fn run_ok(cmd: &mut Command) -> Output {
    let output = cmd.output().expect("spawn");
    assert!(
        output.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        output.status,
        stdout(&output),
        stderr(&output)
    );
    output
}

/// Runs a future on a fresh single-thread runtime (for gRPC calls from tests).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// A control-API client on the env's socket.
pub async fn control(env: &TestEnv) -> spfs::client::ControlClient {
    spfs::client::ControlClient::new(spfs::client::connect(&env.socket()).await.unwrap())
}

/// A real service status, from `spfs service status --json`.
pub fn status_json(env: &TestEnv) -> Value {
    let output = env.spfs(&["service", "status", "--json"]).output().unwrap();
    serde_json::from_str(&stdout(&output))
        .unwrap_or_else(|e| panic!("status --json: {e}: {}", stdout(&output)))
}
