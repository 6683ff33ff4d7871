//! Stopping the service: ask it over the socket (`Shutdown`), or with SIGTERM
//! when it does not answer, and wait until its pidfile lock is free, which is
//! when the process has exited and cleaned up.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::probe::{probe, Probe};
use crate::client::ControlClient;
use crate::error::{Error, Result};
use crate::paths::Paths;
use crate::proto::{ShutdownRequest, StatusRequest};
use crate::service::pidfile;
use crate::telemetry::otel::traced;

/// How long to wait for the service to exit: drain, unmount, cleanup.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Returns the pid of the stopped service, or `None` if none was running.
pub async fn stop_service(paths: &Paths) -> Result<Option<i32>> {
    let pidfile = paths.pidfile();
    let pid_in_file = pidfile::read_pid(&pidfile).filter(|_| pidfile::is_held(&pidfile));
    let mut asked = false;
    let mut pid = pid_in_file;
    if let Probe::Serving(channel, _) | Probe::NotServing(channel) = probe(&paths.socket()).await {
        if let Ok(status) = ControlClient::new(channel.clone())
            .status(traced(StatusRequest {}))
            .await
        {
            pid = Some(status.into_inner().pid as i32);
        }
        asked = ControlClient::new(channel)
            .shutdown(traced(ShutdownRequest {}))
            .await
            .is_ok();
    }
    let Some(pid) = pid else {
        return Ok(None);
    };
    if !asked {
        // Alive but not answering on the socket: SIGTERM runs the same shutdown.
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    tracing::info!(
        event = "launcher.stop_requested",
        service_pid = pid,
        via_rpc = asked,
        "asked the service to stop"
    );
    wait_until_gone(&pidfile, pid, paths).await?;
    Ok(Some(pid))
}

/// Waits until nobody holds the pidfile lock.
async fn wait_until_gone(pidfile: &Path, pid: i32, paths: &Paths) -> Result<()> {
    let started = Instant::now();
    while pidfile::is_held(pidfile) {
        if started.elapsed() > STOP_TIMEOUT {
            return Err(Error::Config(format!(
                "the service (pid {pid}) did not stop within {}s; see {} and end it with `kill -9 {pid}`",
                STOP_TIMEOUT.as_secs(),
                paths.service_log().display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}
