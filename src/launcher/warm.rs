//! The warm path: when the service is already up (the usual case), the
//! launcher sends its health Check and its `Mount` together on one new
//! connection, instead of one after the other: one round trip fewer.
//!
//! The probe's guarantees stay:
//!
//! - **SERVING only**: the service refuses `Mount` until it is SERVING
//!   (`service/guard.rs`), and the Check's answer is waited for before the
//!   `Mount` counts; NOT_SERVING, no answer within the probe's deadline, or
//!   anything else drops the `Mount` (the service cancels it) and the launcher
//!   takes the start path (`ensure_service_running`, then `Mount`).
//! - **Version check**: a SERVING service of another version is left to the
//!   start path, which restarts or keeps it as before; a `Mount` it already
//!   made is taken back first (`Unmount`), so nothing differs from a launcher
//!   that checked before mounting.
//! - **Clear errors**: every failure to connect or to be understood goes the
//!   start path, whose probe names what is on the socket.
//!
//! When it succeeds it logs what the start path logs for a running service:
//! `launcher.probe` (attempt 1, `serving`, the Check's time), `launcher.ensure`
//! (`already_running`), and the caller logs `launcher.mount`. Its trace spans
//! are `warm_path` and `check` (the start path's `ensure_service_running`
//! follows when it falls back).

use std::future::Future;
use std::time::Instant;

use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tracing::Instrument;

use super::probe::{check_with_version, PROBE_TIMEOUT};
use crate::client::{self, ControlClient};
use crate::config::Config;
use crate::proto::UnmountRequest;
use crate::telemetry::metrics::{attr, metrics};

/// Connects, then runs the health Check and `mount(channel)` concurrently.
///
/// `Some(result)`: a SERVING service of our version answered the Check, and
/// `result` is its answer to the `Mount`, to be handled as any `Mount`'s.
/// `None`: take the start path (nothing was mounted, or it was taken back).
pub async fn mount_first<F, Fut>(
    config: &Config,
    root_pid: i64,
    mount: F,
) -> Option<Result<(), tonic::Status>>
where
    F: FnOnce(Channel) -> Fut,
    Fut: Future<Output = Result<(), tonic::Status>>,
{
    let started = Instant::now();
    // The socket is only trusted inside a directory that is ours alone; the
    // start path reports what is wrong with it.
    config.paths.ensure_runtime_dir().ok()?;
    let span = tracing::info_span!("warm_path");
    let socket = config.paths.socket();
    let channel = tokio::time::timeout(PROBE_TIMEOUT, client::connect(&socket))
        .instrument(span.clone())
        .await
        .ok()?
        .ok()?;

    let mount = mount(channel.clone());
    tokio::pin!(mount);
    let check = tokio::time::timeout(PROBE_TIMEOUT, check_with_version(&channel))
        .instrument(tracing::info_span!(parent: &span, "check"));
    tokio::pin!(check);
    // The Check is answered first in practice; the Mount goes on meanwhile.
    let mut mounted = None;
    let checked = tokio::select! {
        biased;
        checked = &mut check => checked,
        result = &mut mount => {
            mounted = Some(result);
            check.await
        }
    };
    let probe_ms = ms_since(started);
    let version = match checked {
        Ok(Ok((ServingStatus::Serving, version))) => version,
        // Not SERVING, no answer, or not our service: the Mount is dropped
        // unanswered (the service refuses or cancels it).
        _ => return None,
    };
    if version.as_deref() != Some(crate::service::VERSION) {
        // Another version: the start path decides (restart or keep); take
        // back a Mount it already made, so that decision sees no runtime of ours.
        let result = match mounted {
            Some(result) => result,
            None => mount.await,
        };
        if result.is_ok() {
            let _ = ControlClient::new(channel.clone())
                .unmount(UnmountRequest { root_pid })
                .await;
        }
        return None;
    }
    {
        let _in_span = span.enter();
        tracing::info!(
            event = "launcher.probe",
            attempt = 1,
            result = "serving",
            elapsed_ms = probe_ms,
            "probed the service"
        );
        metrics()
            .ensure_duration
            .record(probe_ms, &attr("outcome", "already_running"));
        tracing::info!(
            event = "launcher.ensure",
            outcome = "already_running",
            elapsed_ms = probe_ms,
            probe_ms,
            lock_wait_ms = 0.0,
            spawn_ms = 0.0,
            readiness_wait_ms = 0.0,
            confirm_ms = 0.0,
            "service is serving"
        );
    }
    Some(match mounted {
        Some(result) => result,
        None => mount.await,
    })
}

fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}
