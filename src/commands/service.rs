//! `spfs service start|stop|status` and `spfs-fuse-macos service [--stop]`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::{client_runtime, launcher_setup, report};
use crate::client::ControlClient;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::launcher::probe::{probe, Probe};
use crate::launcher::{ensure_service_running, EnsureOutcome};
use crate::paths::Paths;
use crate::proto::{StatusRequest, StatusResponse};
use crate::service::readiness::ReadyNotifier;
use crate::telemetry::{self, Program};

/// Exit status of `status` when no service runs (as LSB init scripts use).
const EXIT_NOT_RUNNING: u8 = 3;

/// `spfs-fuse-macos service [MOUNTPOINT]`: run the service in this process.
pub fn serve(
    mountpoint: Option<PathBuf>,
    idle_timeout: Option<std::time::Duration>,
    notifier: Option<ReadyNotifier>,
) -> ExitCode {
    let fail = |message: String| {
        eprintln!("spfs-fuse-macos: {message}");
        ExitCode::FAILURE
    };
    let mut paths = match Paths::from_env() {
        Ok(paths) => paths,
        Err(err) => {
            if let Some(n) = notifier {
                n.failed(err.reason(), &err.to_string());
            }
            return fail(err.to_string());
        }
    };
    if let Some(mountpoint) = mountpoint {
        paths.mountpoint = std::path::absolute(&mountpoint).unwrap_or(mountpoint);
    }
    telemetry::init(Program::Service, &paths.log_dir);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Blocking threads (view builds, FUSE mount) are needed in bursts only.
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(format!("cannot start the async runtime: {err}")),
    };
    runtime.block_on(crate::service::run(paths, idle_timeout, notifier))
}

/// `spfs service start`
pub fn start() -> ExitCode {
    let tool = "spfs service start";
    let config = match launcher_setup(tool) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let result = client_runtime().block_on(async {
        let running = ensure_service_running(&config).await?;
        let status = fetch_status(&running.channel).await?;
        Ok::<_, Error>((running.outcome, status))
    });
    match result {
        Ok((outcome, status)) => {
            let how = match outcome {
                EnsureOutcome::Started => "started",
                EnsureOutcome::AlreadyRunning | EnsureOutcome::StartedByOther => "already running",
            };
            println!(
                "spfs service: {how} (pid {}, mountpoint {})",
                status.pid, status.mountpoint
            );
            ExitCode::SUCCESS
        }
        Err(err) => report(tool, &err),
    }
}

/// `spfs service status [--json]`; exit 3 when not running.
pub fn status(as_json: bool) -> ExitCode {
    let tool = "spfs service status";
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => return report(tool, &err),
    };
    let socket = config.paths.socket();
    let result = client_runtime().block_on(async {
        match probe(&socket).await {
            Probe::Serving(channel, _) => Ok(Some((true, fetch_status(&channel).await?))),
            Probe::NotServing(channel) => Ok(Some((false, fetch_status(&channel).await?))),
            Probe::Absent { .. } => Ok(None),
            refused => Err(refused.refusal(&socket)),
        }
    });
    match result {
        Err(err) => report(tool, &err),
        Ok(None) => {
            if as_json {
                println!(
                    "{}",
                    json!({"running": false, "socket": socket.display().to_string()})
                );
            } else {
                println!("spfs service: not running (socket {})", socket.display());
            }
            ExitCode::from(EXIT_NOT_RUNNING)
        }
        Ok(Some((serving, status))) => {
            if as_json {
                println!("{}", status_json(serving, &status));
            } else {
                print_status(serving, &status);
            }
            ExitCode::SUCCESS
        }
    }
}

fn status_json(serving: bool, s: &StatusResponse) -> serde_json::Value {
    let runtimes: Vec<_> = s
        .runtimes
        .iter()
        .map(
            |r| json!({"name": r.name, "root_pid": r.root_pid, "env_spec": r.env_spec, "since_unix": r.since_unix}),
        )
        .collect();
    json!({
        "running": true,
        "serving": serving,
        "pid": s.pid,
        "version": s.version,
        "start_time_unix": s.start_time_unix,
        "mountpoint": s.mountpoint,
        "socket": s.socket,
        "log_file": s.log_file,
        "runtimes": runtimes,
    })
}

fn print_status(serving: bool, s: &StatusResponse) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let state = if serving {
        "running"
    } else {
        "running, NOT_SERVING"
    };
    println!(
        "spfs service: {state} (pid {}, version {}, up {}s)",
        s.pid,
        s.version,
        (now - s.start_time_unix).max(0)
    );
    println!("  mountpoint: {}", s.mountpoint);
    println!("  socket:     {}", s.socket);
    println!("  log:        {}", s.log_file);
    println!("  runtimes:   {}", s.runtimes.len());
    for r in &s.runtimes {
        println!(
            "    pid {:<8} {:<30} for {}s",
            r.root_pid,
            if r.env_spec.is_empty() {
                "-"
            } else {
                &r.env_spec
            },
            (now - r.since_unix).max(0)
        );
    }
}

async fn fetch_status(channel: &tonic::transport::Channel) -> Result<StatusResponse> {
    ControlClient::new(channel.clone())
        .status(crate::telemetry::otel::traced(StatusRequest {}))
        .await
        .map(|r| r.into_inner())
        .map_err(|s| Error::rpc("Status failed", s))
}

/// `spfs service stop` and `spfs-fuse-macos service --stop`: ask the service
/// to stop and return once it has gone.
pub fn stop(tool: &str) -> ExitCode {
    let config = match launcher_setup(tool) {
        Ok(config) => config,
        Err(code) => return code,
    };
    match client_runtime().block_on(crate::launcher::stop_service(&config.paths)) {
        Ok(Some(pid)) => {
            println!("stopped the spfs service (pid {pid})");
            ExitCode::SUCCESS
        }
        Ok(None) => {
            println!("no spfs service was running");
            ExitCode::SUCCESS
        }
        Err(err) => report(tool, &err),
    }
}
