//! Stopping the service: ask it over the socket (`Shutdown`), or with SIGTERM
//! when it does not answer, and wait until it is gone: its pidfile lock is
//! free (its last act), or, when its pidfile was deleted, the process is gone.
//!
//! A service with active runtimes is not stopped unless forced: stopping it
//! takes `/spfs` away from commands that are still running. A service that
//! does not answer (stopped, hung) cannot list its runtimes; it gets SIGTERM
//! (and SIGCONT) all the same, since that is the only way to get it back.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::probe::{probe_service, Probe};
use crate::client::ControlClient;
use crate::contract::pidfile;
use crate::error::{ActiveRuntime, Error, Result};
use crate::paths::Paths;
use crate::proto::{ShutdownRequest, StatusRequest};
use crate::telemetry::otel::traced;

/// How long to wait for the service to exit: drain, unmount, cleanup.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Returns the pid of the stopped service, or `None` if none was running.
/// Refuses ([`Error::RuntimesActive`]) while runtimes are active, unless `force`.
pub async fn stop_service(paths: &Paths, force: bool) -> Result<Option<i32>> {
    let pidfile = paths.pidfile();
    // A symlink or FIFO at the pidfile path is reported, not waited on.
    let held = pidfile::check_held(&pidfile)?;
    let mut pid = if held {
        pidfile::read_pid(&pidfile)
    } else {
        None
    };
    let mut asked = false;
    match probe_service(paths).await {
        Probe::Serving { channel, .. } | Probe::NotServing(channel) => {
            if let Ok(status) = ControlClient::new(channel.clone())
                .status(traced(StatusRequest {}))
                .await
            {
                let status = status.into_inner();
                pid = Some(status.pid as i32);
                if !force && !status.runtimes.is_empty() {
                    return Err(Error::RuntimesActive {
                        pid: status.pid as i32,
                        runtimes: status
                            .runtimes
                            .iter()
                            .map(|r| ActiveRuntime {
                                root_pid: r.root_pid,
                                env_spec: crate::telemetry::short(&r.env_spec),
                            })
                            .collect(),
                    });
                }
            }
            asked = ControlClient::new(channel)
                .shutdown(traced(ShutdownRequest {}))
                .await
                .is_ok();
        }
        Probe::Unanswering { pid: found } => pid = Some(found),
        _ => {}
    }
    let Some(pid) = pid else {
        return Ok(None);
    };
    if !asked {
        // Alive but not answering on the socket: SIGTERM runs the same
        // shutdown; SIGCONT lets a stopped service act on it.
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
    }
    tracing::info!(
        event = "launcher.stop_requested",
        service_pid = pid,
        via_rpc = asked,
        "asked the service to stop"
    );
    wait_until_gone(pid, paths).await?;
    Ok(Some(pid))
}

/// Waits until nobody holds the pidfile lock, or (no pidfile) the process is gone.
async fn wait_until_gone(pid: i32, paths: &Paths) -> Result<()> {
    let started = Instant::now();
    let pidfile = paths.pidfile();
    // Without a pidfile (its runtime dir was deleted), the process itself.
    let by_pidfile = pidfile::is_held(&pidfile);
    while pidfile::is_held(&pidfile) || (!by_pidfile && kill(Pid::from_raw(pid), None).is_ok()) {
        // The lock was ours to wait for while `pid` held it; a service that
        // took it after `pid` exited is another one, not ours to wait for.
        if by_pidfile
            && pidfile::read_pid(&pidfile) != Some(pid)
            && kill(Pid::from_raw(pid), None).is_err()
        {
            return Ok(());
        }
        if started.elapsed() > STOP_TIMEOUT {
            return Err(Error::StopTimeout {
                pid,
                waited: STOP_TIMEOUT,
                log: paths.service_log(),
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}
