//! The warm path: when the service is already up (the usual case), the
//! launcher connects and sends its `Mount` at once, without a health Check
//! first: one round trip instead of two.
//!
//! The probe's guarantees stay:
//!
//! - **SERVING only**: the service answers `Mount` with UNAVAILABLE until it
//!   is SERVING, and again once shutdown has begun (`service/guard.rs`,
//!   `service/api.rs`); the launcher then takes the start path
//!   (`ensure_service_running`, then `Mount`), which waits for SERVING.
//! - **No hang**: a `Mount` unanswered within the probe's deadline is followed
//!   by a health Check on the same connection; unless that says SERVING within
//!   its own deadline (a big stack takes long to mount), the `Mount` is dropped
//!   (the service cancels it) and the start path names the stopped service.
//! - **Version check**: the `Mount` carries the launcher's version
//!   (`spfs-launcher-version`) and every answer the service's
//!   (`spfs-service-version`). A service of another version refuses it
//!   (FAILED_PRECONDITION) and is left to the start path, which restarts or
//!   keeps it as before; a service older than that check mounts anyway, and
//!   its `Mount` is taken back (`Unmount`) first, so nothing differs from a
//!   launcher that checked before mounting.
//! - **Clear errors**: no socket, a refused connect, an answer without our
//!   version header (something else on the socket) all go the start path,
//!   whose probe names what is there. A refusal from our service (a bad ref,
//!   say) is the command's error, as before; a connection that broke while a
//!   service died (a dead FUSE mount is left) is handed back as such, so the
//!   caller reports it instead of starting a service into a crash loop.
//!
//! When it succeeds it logs what the start path logs for a running service:
//! `launcher.probe` (attempt 1, `serving`, `via` `mount`), `launcher.ensure`
//! (`already_running`), then `launcher.mount` (or `launcher.mount_failed`).
//! Its trace spans are `warm_path` and, when the `Mount` is slow, `check`.

use std::time::Instant;

use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tracing::Instrument;

use super::probe::{check_with_version, PROBE_TIMEOUT};
use crate::client::{self, ControlClient};
use crate::contract::{LAUNCHER_VERSION_HEADER, VERSION_HEADER};
use crate::proto::{MountRequest, UnmountRequest};
use crate::settings::Settings;
use crate::telemetry::metrics::{attr, metrics};
use crate::tracking::env_spec;

/// Connects and mounts `request`.
///
/// `Some(result)`: our service, of our version, answered the `Mount` (or the
/// connection broke while it died); handle `result` as any `Mount`'s answer.
/// `None`: take the start path (nothing is mounted: it was refused, never
/// sent, dropped unanswered, or taken back).
pub async fn mount_first(
    settings: &Settings,
    request: &MountRequest,
) -> Option<Result<(), tonic::Status>> {
    let started = Instant::now();
    // The socket is only trusted inside a directory that is ours alone; the
    // start path reports what is wrong with it.
    settings.paths.ensure_runtime_dir().ok()?;
    let span = tracing::info_span!("warm_path");
    let socket = settings.paths.socket();
    let channel = tokio::time::timeout(PROBE_TIMEOUT, client::connect(&socket))
        .instrument(span.clone())
        .await
        .ok()?
        .ok()?;
    let connect_ms = ms_since(started);

    let mount_started = Instant::now();
    let answer = call_mount(&channel, request)
        .instrument(span.clone())
        .await?;
    let mount_ms = ms_since(mount_started);
    let metadata = match &answer {
        Ok(metadata) => metadata,
        Err(status) => status.metadata(),
    };
    let version = metadata
        .get(VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let ours = version.as_deref() == Some(crate::contract::VERSION);
    match (&answer, version.as_deref()) {
        (Ok(_), Some(crate::contract::VERSION)) => {}
        (Ok(_), _) => {
            // Another version: the start path decides (restart or keep);
            // take the runtime back, so that decision sees none of ours.
            let _ = ControlClient::new(channel)
                .unmount(UnmountRequest {
                    root_pid: request.root_pid,
                })
                .instrument(span)
                .await;
            return None;
        }
        // Not SERVING (yet, or any more): the start path waits for one that is.
        (Err(status), _) if status.code() == tonic::Code::Unavailable => return None,
        // Our service refused the Mount: that is the answer.
        (Err(_), Some(crate::contract::VERSION)) => {}
        // The connection broke: a service that died leaves a dead FUSE mount,
        // which the caller reports; anything else is the start path's to name.
        (Err(status), None) if is_transport_failure(status) && dead_mount(settings) => {}
        (Err(_), _) => return None,
    }

    let _in_span = span.enter();
    if ours {
        log_running(connect_ms);
    }
    Some(log_mount(request, answer.map(drop), mount_ms))
}

/// Logs the answer to `request` (`launcher.mount`, or `launcher.mount_failed`),
/// on the warm path and the start path alike, and hands it back.
pub fn log_mount(
    request: &MountRequest,
    answer: Result<(), tonic::Status>,
    elapsed_ms: f64,
) -> Result<(), tonic::Status> {
    let (pid, reference) = (request.root_pid, request.env_spec.as_str());
    match &answer {
        Ok(()) => tracing::info!(
            event = "launcher.mount",
            root_pid = pid,
            env_spec = env_spec::shorten(reference),
            elapsed_ms,
            "the service mounted the environment"
        ),
        Err(status) => tracing::error!(
            event = "launcher.mount_failed",
            root_pid = pid,
            env_spec = env_spec::shorten(reference),
            error = status.message(),
            elapsed_ms,
            "the service refused the mount"
        ),
    }
    answer
}

/// What the start path logs when its first probe finds the service running.
fn log_running(connect_ms: f64) {
    tracing::info!(
        event = "launcher.probe",
        attempt = 1,
        result = "serving",
        via = "mount",
        elapsed_ms = connect_ms,
        "probed the service"
    );
    metrics()
        .ensure_duration
        .record(connect_ms, &attr("outcome", "already_running"));
    tracing::info!(
        event = "launcher.ensure",
        outcome = "already_running",
        elapsed_ms = connect_ms,
        probe_ms = connect_ms,
        lock_wait_ms = 0.0,
        spawn_ms = 0.0,
        readiness_wait_ms = 0.0,
        confirm_ms = 0.0,
        "service is serving"
    );
}

/// The `Mount` call: its answer's metadata, or its error. `None` when it was
/// not answered within the probe's deadline and a health Check then found no
/// SERVING service (the call is dropped).
async fn call_mount(
    channel: &Channel,
    request: &MountRequest,
) -> Option<Result<MetadataMap, tonic::Status>> {
    let mut traced = crate::telemetry::otel::traced(request.clone());
    // A service of another version refuses it before recording anything.
    traced.metadata_mut().insert(
        LAUNCHER_VERSION_HEADER,
        tonic::metadata::MetadataValue::from_static(crate::contract::VERSION),
    );
    let call = async {
        ControlClient::new(channel.clone())
            .mount(traced)
            .await
            .map(|response| response.metadata().clone())
    };
    tokio::pin!(call);
    if let Ok(answer) = tokio::time::timeout(PROBE_TIMEOUT, &mut call).await {
        return Some(answer);
    }
    // Slow: a big stack, or a service that does not answer at all.
    let check = tokio::time::timeout(PROBE_TIMEOUT, check_with_version(channel))
        .instrument(tracing::info_span!("check"));
    tokio::pin!(check);
    tokio::select! {
        answer = &mut call => Some(answer),
        checked = &mut check => match checked {
            Ok(Ok((ServingStatus::Serving, _))) => Some(call.await),
            _ => None,
        },
    }
}

/// A status the client made from a broken connection, not one the service sent.
fn is_transport_failure(status: &tonic::Status) -> bool {
    use std::error::Error as _;
    status.source().is_some()
}

/// Whether a service died under its FUSE mount (ENOTCONN), as a killed one does.
fn dead_mount(settings: &Settings) -> bool {
    std::fs::metadata(&settings.paths.mountpoint)
        .is_err_and(|err| crate::platform::is_stale_mount_error(&err))
}

fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}
