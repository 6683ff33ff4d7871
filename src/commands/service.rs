//! `spfs service start|stop|status` and `spfs-fuse-macos service [--stop]`.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;

use super::runner::{self, Out};
use super::{block_on, launcher_settings};
use crate::client::ControlClient;
use crate::contract::StartReason;
use crate::error::{Error, Result};
use crate::launcher::probe::{probe_service, Probe};
use crate::launcher::{ensure_service_running, EnsureOutcome};
use crate::paths::Paths;
use crate::proto::{StatusRequest, StatusResponse};
use crate::service::readiness::ReadyNotifier;
use crate::service::Shutdown;
use crate::settings::Settings;
use crate::telemetry::{self, Program};

/// Exit status of `status` when no service runs (as LSB init scripts use).
const EXIT_NOT_RUNNING: u8 = 3;

/// `spfs-fuse-macos service [MOUNTPOINT]`: run the service in this process,
/// until SIGTERM, SIGINT or SIGHUP (or `Shutdown`, the idle timeout, a logout).
///
/// Call it before any thread starts: it takes the readiness pipe's fd from
/// the environment and clears the variable.
pub fn serve(mountpoint: Option<PathBuf>, idle_timeout: Option<std::time::Duration>) -> ExitCode {
    let notifier = ReadyNotifier::from_env();
    let fail = |notifier: Option<ReadyNotifier>, reason: StartReason, message: String| {
        eprintln!("spfs-fuse-macos: {message}");
        if let Some(notifier) = notifier {
            notifier.failed(reason, &message);
        }
        ExitCode::FAILURE
    };
    // Before any thread starts: one heap, so a freed view's memory can be
    // given back (see platform::one_malloc_arena).
    crate::platform::one_malloc_arena();
    let mut paths = match Paths::from_env() {
        Ok(paths) => paths,
        Err(err) => return fail(notifier, StartReason::Settings, err.with_fix()),
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
        Err(err) => {
            let message = format!("cannot start the async runtime: {err}");
            return fail(notifier, StartReason::StartupFailed, message);
        }
    };
    runtime.block_on(async {
        let shutdown = Shutdown::default();
        if let Err(err) = shutdown.listen_for_signals() {
            let message = format!("cannot install signal handlers: {err}");
            return fail(notifier, StartReason::Signals, message);
        }
        let options = crate::service::Options { idle_timeout };
        crate::service::run(paths, options, shutdown, notifier).await
    })
}

/// `spfs service start`
pub fn start() -> ExitCode {
    runner::run("spfs service start", || {
        let settings = launcher_settings()?;
        let (outcome, status) = block_on(async {
            let running = ensure_service_running(&settings).await?;
            let status = fetch_status(&running.channel).await?;
            Ok::<_, Error>((running.outcome, status))
        })?;
        let how = match outcome {
            EnsureOutcome::Started => "started",
            EnsureOutcome::AlreadyRunning | EnsureOutcome::StartedByOther => "already running",
        };
        let mut out = Out::new();
        out.line(format_args!(
            "spfs service: {how} (pid {}, mountpoint {})",
            status.pid, status.mountpoint
        ))?;
        out.finish()?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `spfs service status [--json]`; exit 3 when not running.
pub fn status(as_json: bool) -> ExitCode {
    runner::run("spfs service status", || {
        let settings = Settings::from_env()?;
        let paths = &settings.paths;
        let socket = paths.socket();
        let found = block_on(async {
            match probe_service(paths).await {
                Probe::Serving { channel, .. } => Ok(Some((true, fetch_status(&channel).await?))),
                Probe::NotServing(channel) => Ok(Some((false, fetch_status(&channel).await?))),
                Probe::Absent { .. } => Ok(None),
                refused => Err(refused.refusal(paths)),
            }
        })?;
        let mut out = Out::new();
        let code = match found {
            None => {
                if as_json {
                    out.line(json!({"running": false, "socket": socket.display().to_string()}))?;
                } else {
                    out.line(format_args!(
                        "spfs service: not running (socket {})",
                        socket.display()
                    ))?;
                }
                ExitCode::from(EXIT_NOT_RUNNING)
            }
            Some((serving, status)) => {
                if as_json {
                    out.line(status_json(serving, &status))?;
                } else {
                    print_status(&mut out, serving, &status)?;
                }
                ExitCode::SUCCESS
            }
        };
        out.finish()?;
        Ok(code)
    })
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

fn print_status(out: &mut Out, serving: bool, s: &StatusResponse) -> Result<()> {
    let now = crate::telemetry::unix_now();
    let state = if serving {
        "running"
    } else {
        "running, NOT_SERVING"
    };
    out.line(format_args!(
        "spfs service: {state} (pid {}, version {}, up {}s)",
        s.pid,
        s.version,
        (now - s.start_time_unix).max(0)
    ))?;
    out.line(format_args!("  mountpoint: {}", s.mountpoint))?;
    out.line(format_args!("  socket:     {}", s.socket))?;
    out.line(format_args!("  log:        {}", s.log_file))?;
    out.line(format_args!("  runtimes:   {}", s.runtimes.len()))?;
    for r in &s.runtimes {
        let spec = crate::telemetry::short(&r.env_spec);
        out.line(format_args!(
            "    pid {:<8} {:<30} for {}s",
            r.root_pid,
            if spec.is_empty() { "-" } else { &spec },
            (now - r.since_unix).max(0)
        ))?;
    }
    Ok(())
}

async fn fetch_status(channel: &tonic::transport::Channel) -> Result<StatusResponse> {
    ControlClient::new(channel.clone())
        .status(crate::telemetry::otel::traced(StatusRequest {}))
        .await
        .map(|r| r.into_inner())
        .map_err(|s| Error::rpc("Status failed", s))
}

/// `spfs service stop [--force]` and `spfs-fuse-macos service --stop [--force]`:
/// ask the service to stop and return once it has gone. Refuses while
/// runtimes are active, unless `force`.
pub fn stop(tool: &str, force: bool) -> ExitCode {
    runner::run(tool, || {
        let settings = launcher_settings()?;
        let stopped = block_on(crate::launcher::stop_service(&settings.paths, force))?;
        let mut out = Out::new();
        match stopped {
            Some(pid) => out.line(format_args!("stopped the spfs service (pid {pid})"))?,
            None => out.line("no spfs service was running")?,
        }
        out.finish()?;
        Ok(ExitCode::SUCCESS)
    })
}
