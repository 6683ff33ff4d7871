//! `spfs doctor`: every check a support engineer would run first, each with a
//! pass/fail line and the fix. Exit status 0 only when all pass.

use std::process::ExitCode;
use std::time::Duration;

use super::block_on;
use super::runner::{self, Out};
use crate::contract::VERSION;
use crate::launcher::find_service_binary;
use crate::launcher::probe::{probe_service, Probe};
use crate::paths;
use crate::platform;
use crate::settings::Settings;
use crate::telemetry::reader;

struct Check {
    name: &'static str,
    passed: bool,
    detail: String,
    fix: Option<String>,
}

fn pass(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        passed: true,
        detail: detail.into(),
        fix: None,
    }
}

/// A failed check whose fix, if any, comes from the error.
fn failed(name: &'static str, detail: &str, fix: Option<&str>) -> Check {
    Check {
        name,
        passed: false,
        detail: detail.to_owned(),
        fix: fix.map(str::to_owned),
    }
}

fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name,
        passed: false,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

pub fn doctor() -> ExitCode {
    runner::run("spfs doctor", run_checks)
}

fn run_checks() -> crate::error::Result<ExitCode> {
    let mut out = Out::new();
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(err) => {
            out.line(format_args!("[FAIL] settings: {err}"))?;
            out.finish()?;
            return Ok(ExitCode::FAILURE);
        }
    };
    let checks = vec![
        check_fuse(),
        check_binary(&settings),
        check_runtime_dir(&settings),
        check_mountpoint(&settings),
        block_on(check_service(&settings)),
        check_last_failure(&settings),
    ];
    let mut all_passed = true;
    for check in &checks {
        let mark = if check.passed { "[ok]  " } else { "[FAIL]" };
        out.line(format_args!("{mark} {}: {}", check.name, check.detail))?;
        if let Some(fix) = &check.fix {
            out.line(format_args!("       fix: {fix}"))?;
        }
        all_passed &= check.passed;
    }
    out.finish()?;
    Ok(if all_passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn check_fuse() -> Check {
    match platform::check_fuse_available() {
        Ok(()) => pass("FUSE", "available"),
        Err(missing) => fail("FUSE", missing.problem, missing.fix),
    }
}

fn check_binary(settings: &Settings) -> Check {
    let name = "service binary";
    let binary = match find_service_binary(settings) {
        Ok(binary) => binary,
        Err(err) => return failed(name, &err.to_string(), err.fix().as_deref()),
    };
    let output = std::process::Command::new(&binary)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output();
    let version = output
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .and_then(|text| text.rsplit(' ').next().map(str::to_owned));
    match version {
        Some(v) if v == VERSION => pass(name, format!("{} (version {v})", binary.display())),
        Some(v) => fail(
            name,
            format!(
                "{} is version {v}, this spfs is {VERSION}",
                binary.display()
            ),
            "install spfs and spfs-fuse-macos from the same release",
        ),
        None => fail(
            name,
            format!("{} does not run (`--version` failed)", binary.display()),
            "reinstall it, or point SPFS_FUSE_SERVICE_BIN at a working binary",
        ),
    }
}

fn check_runtime_dir(settings: &Settings) -> Check {
    let name = "runtime dir";
    let dir = &settings.paths.runtime_dir;
    if !dir.exists() {
        return pass(
            name,
            format!("{} (created with mode 0700 on first use)", dir.display()),
        );
    }
    match paths::check_runtime_dir(dir) {
        Ok(()) => pass(
            name,
            format!("{} (yours, not writable by others)", dir.display()),
        ),
        Err(crate::Error::UnsafeRuntimeDir { problem, fix, .. }) => {
            fail(name, format!("{}: {problem}", dir.display()), fix)
        }
        Err(err) => fail(
            name,
            err.to_string(),
            "set SPFS_RUNTIME_DIR to a directory of your own",
        ),
    }
}

fn check_mountpoint(settings: &Settings) -> Check {
    let name = "mountpoint";
    let path = settings.paths.mountpoint.clone();
    if let Err(err) = crate::vfs::check_not_another_users_mount(&path) {
        return failed(name, &err.to_string(), err.fix().as_deref());
    }
    // A hung FUSE server would block a stat forever: ask on a thread, wait briefly.
    let (tx, rx) = std::sync::mpsc::channel();
    let probe_path = path.clone();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::metadata(&probe_path));
    });
    let Ok(found) = rx.recv_timeout(Duration::from_secs(2)) else {
        return hung_mountpoint(settings);
    };
    match found {
        Ok(meta) if meta.is_dir() => {
            use std::os::unix::fs::MetadataExt;
            match crate::vfs::check_mountpoint_owner(&path, meta.uid(), nix::unistd::geteuid().as_raw()) {
                Ok(()) => pass(name, format!("{} is a directory you own", path.display())),
                Err(err) => failed(name, &err.to_string(), err.fix().as_deref()),
            }
        }
        Ok(_) => fail(
            name,
            format!("{} is not a directory", path.display()),
            "remove it, or set SPFS_MOUNTPOINT to a directory",
        ),
        Err(err) if platform::is_stale_mount_error(&err) => fail(
            name,
            format!("{} is a dead FUSE mount left by a killed service ({err})", path.display()),
            "the next `spfs run` cleans it up; or by hand: `umount -l` (Linux), `umount -f` (macOS)",
        ),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let parent_writable = path
                .parent()
                .is_some_and(|p| nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_ok());
            if parent_writable {
                pass(name, format!("{} (created on first use)", path.display()))
            } else {
                fail(
                    name,
                    format!("{} does not exist and cannot be created", path.display()),
                    platform::mountpoint_fix(&path),
                )
            }
        }
        Err(err) => fail(name, format!("{}: {err}", path.display()), "see docs/troubleshooting.md"),
    }
}

/// The mountpoint did not answer a `stat` in time: its service is stopped or hung.
fn hung_mountpoint(settings: &Settings) -> Check {
    let (name, path) = ("mountpoint", &settings.paths.mountpoint);
    match crate::launcher::probe::locate_service(&settings.paths) {
        Some(pid) => fail(
            name,
            format!(
                "{} did not answer within 2 s: its service (pid {pid}) is stopped or hung",
                path.display()
            ),
            format!("`kill -CONT {pid}` if you stopped it; otherwise `spfs service stop` (or `kill -9 {pid}`)"),
        ),
        None => fail(
            name,
            format!("{} did not answer within 2 s (a hung service?)", path.display()),
            "spfs service stop; if that hangs, kill -9 the service pid from `spfs service status`",
        ),
    }
}

async fn check_service(settings: &Settings) -> Check {
    let name = "service";
    let socket = settings.paths.socket();
    match probe_service(&settings.paths).await {
        Probe::Serving { version, .. } => {
            let version = version.unwrap_or_else(|| "unknown".into());
            if version == VERSION {
                pass(
                    name,
                    format!("SERVING on {} (version {version})", socket.display()),
                )
            } else {
                fail(
                    name,
                    format!(
                        "SERVING on {} but version {version}, this spfs is {VERSION}",
                        socket.display()
                    ),
                    "spfs service stop (the next spfs run starts the new version)",
                )
            }
        }
        Probe::NotServing(_) => fail(
            name,
            format!("NOT_SERVING on {}", socket.display()),
            "wait a moment; if it stays so: spfs service stop, then read `spfs service logs`",
        ),
        Probe::Absent { .. } => fail(
            name,
            format!("not running (no service on {})", socket.display()),
            "it starts with the next `spfs run`, or now with `spfs service start`",
        ),
        Probe::Foreign(detail) => fail(
            name,
            format!(
                "something foreign listens on {} ({detail})",
                socket.display()
            ),
            "stop the program that owns that socket, or set SPFS_RUNTIME_DIR elsewhere",
        ),
        Probe::Unanswering { pid } => fail(
            name,
            format!(
                "the service (pid {pid}) is running but does not answer on {}: stopped (SIGSTOP), hung, or its socket was deleted",
                socket.display()
            ),
            format!("`kill -CONT {pid}` if you stopped it; otherwise `kill {pid}` (`kill -9 {pid}` if it stays); the next `spfs run` starts a new one"),
        ),
        Probe::Unreachable(err) => fail(
            name,
            format!("cannot connect to {}: {err}", socket.display()),
            "check the runtime dir's permissions",
        ),
    }
}

fn check_last_failure(settings: &Settings) -> Check {
    let name = "last start";
    let log_dir = &settings.paths.log_dir;
    let last = reader::last_event(
        log_dir,
        crate::telemetry::Program::Launcher.prefix(),
        &["launcher.start_failed", "launcher.ensure"],
    );
    match last {
        None => pass(name, "no start recorded in the launcher log"),
        Some(line) if line["event"] == "launcher.ensure" => pass(
            name,
            format!("succeeded at {} ({})", line["timestamp"].as_str().unwrap_or("?"), line["outcome"].as_str().unwrap_or("?")),
        ),
        Some(line) => fail(
            name,
            format!(
                "failed at {}: reason {}: {}",
                line["timestamp"].as_str().unwrap_or("?"),
                line["reason"].as_str().unwrap_or("?"),
                line["error"].as_str().unwrap_or("?").replace('\n', " ")
            ),
            "the reason's row in docs/troubleshooting.md; `spfs service logs --launcher` has the phases",
        ),
    }
}
