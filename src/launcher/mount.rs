//! `spfs run`'s `Mount`, and every retry of it.
//!
//! **The warm path** first: when the service is already up (the usual
//! case), connect and send the `Mount` at once, without a health Check
//! first: one round trip instead of two. The probe's guarantees stay:
//!
//! - **SERVING only**: the service answers `Mount` with UNAVAILABLE until it
//!   is SERVING, and again once shutdown has begun (`service/guard.rs`,
//!   `service/api.rs`); the launcher then takes the start path, which
//!   waits for SERVING.
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
//!   say) is the command's error; a connection that broke while a service
//!   died (a dead FUSE mount is left) is reported as such instead of
//!   starting a service into a crash loop.
//!
//! When it succeeds it logs what the start path logs for a running service:
//! `launcher.probe` (attempt 1, `serving`, `via` `mount`), `launcher.ensure`
//! (`already_running`), then `launcher.mount` (or `launcher.mount_failed`).
//! Its trace spans are `warm_path` and, when the `Mount` is slow, `check`.
//!
//! **The start path** otherwise: `ensure_service_to_mount`, then the
//! `Mount`. A service may stop (idle timeout, `spfs service stop`) between
//! the two; then the `Mount` meets UNAVAILABLE or a connection that broke
//! while it stopped cleanly, and is tried again on a fresh service, at most
//! [`MOUNT_ATTEMPTS`] times ([`after`] decides).

use std::time::Instant;

use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tracing::Instrument;

use super::phases::{log_probe, Phases};
use super::probe::{check_with_version, Probe, PROBE_TIMEOUT};
use super::{ensure_service_running, ensure_service_to_mount, EnsureOutcome};
use crate::client::{self, ControlClient};
use crate::contract::{LAUNCHER_VERSION_HEADER, VERSION, VERSION_HEADER};
use crate::error::{Error, Result};
use crate::proto::{MountRequest, MountResponse, UnmountRequest};
use crate::settings::Settings;
use crate::telemetry::{ms_since, short};

/// How often a `Mount` that met a stopping service is tried, each time on a
/// service started or confirmed afresh.
pub const MOUNT_ATTEMPTS: u32 = 5;

/// A `Mount`'s answer: the service recorded the runtime, or why not.
type Answer = std::result::Result<MountResponse, tonic::Status>;

/// Mounts `request` on this user's service, starting the service if needed;
/// the service's answer.
pub async fn mount(settings: &Settings, request: &MountRequest) -> Result<MountResponse> {
    let mut answer = warm(settings, request).await;
    let mut attempt = 1;
    loop {
        let answer = match answer.take() {
            Some(answer) => answer,
            None => start_and_mount(settings, request, attempt).await?,
        };
        match after(answer, attempt, || service_died(settings)) {
            After::Mounted(response) => return Ok(response),
            After::Retry(reason) => {
                tracing::info!(
                    event = "launcher.retry",
                    attempt,
                    reason,
                    "starting the service again"
                );
                attempt += 1;
            }
            After::Lost(status) => {
                return Err(Error::ServiceLost {
                    during: "Mount",
                    detail: status.message().to_owned(),
                    log: settings.paths.service_log(),
                })
            }
            After::Refused(status) => {
                return Err(Error::rpc(
                    format!("cannot mount {:?}", short(&request.env_spec)),
                    status,
                ))
            }
        }
    }
}

/// What to do after `Mount` attempt number `attempt` answered.
#[derive(Debug)]
enum After {
    Mounted(MountResponse),
    /// The service stopped between the probe and the `Mount`: again, on a
    /// fresh one.
    Retry(&'static str),
    /// The connection broke because the service died (or on the last
    /// attempt): the command is not run.
    Lost(tonic::Status),
    /// Our service refused the `Mount` (a bad ref, say).
    Refused(tonic::Status),
}

/// The one rule for a `Mount`'s answer. `died` tells whether the service
/// left a dead FUSE mount behind, asked only when a connection broke.
fn after(answer: Answer, attempt: u32, died: impl FnOnce() -> bool) -> After {
    let status = match answer {
        Ok(response) => return After::Mounted(response),
        Err(status) => status,
    };
    if status.code() == tonic::Code::Unavailable && attempt < MOUNT_ATTEMPTS {
        return After::Retry("the service stopped before Mount");
    }
    // The connection broke mid-call. A service that died (kill -9, a crash)
    // leaves a dead FUSE mount: say so, do not retry into a crash loop. One
    // that is stopping (idle timeout) unmounts cleanly, like an UNAVAILABLE.
    if is_transport_failure(&status) {
        return match attempt >= MOUNT_ATTEMPTS || died() {
            true => After::Lost(status),
            false => After::Retry("the connection broke during Mount while the service stopped"),
        };
    }
    After::Refused(status)
}

/// A status the client made from a broken connection rather than one the
/// service sent. UNAVAILABLE is left out: it is retried (connect refused).
fn is_transport_failure(status: &tonic::Status) -> bool {
    use std::error::Error as _;
    status.source().is_some() && status.code() != tonic::Code::Unavailable
}

/// Whether the service left a dead FUSE mount behind (ENOTCONN), as a killed
/// or crashed service does; a service that stops cleanly unmounts first.
fn service_died(settings: &Settings) -> bool {
    std::fs::metadata(&settings.paths.mountpoint)
        .is_err_and(|err| crate::platform::is_stale_mount_error(&err))
}

/// The start path: a service started or confirmed afresh, then the `Mount`.
async fn start_and_mount(
    settings: &Settings,
    request: &MountRequest,
    attempt: u32,
) -> Result<Answer> {
    // The last try confirms with a health Check, so a service that keeps
    // stopping as soon as it is ready is named as such.
    let ensured = match attempt < MOUNT_ATTEMPTS {
        true => ensure_service_to_mount(settings).await?,
        false => ensure_service_running(settings).await?,
    };
    let started = Instant::now();
    let response = ControlClient::new(ensured.channel)
        .mount(crate::telemetry::otel::traced(request.clone()))
        .await;
    Ok(log_mount(
        request,
        response.map(tonic::Response::into_inner),
        ms_since(started),
    ))
}

/// The warm path. `Some(answer)`: our service, of our version, answered the
/// `Mount` (or the connection broke while it died). `None`: take the start
/// path (nothing is mounted: it was refused, never sent, dropped
/// unanswered, or taken back).
async fn warm(settings: &Settings, request: &MountRequest) -> Option<Answer> {
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
        Ok((metadata, _)) => metadata,
        Err(status) => status.metadata(),
    };
    let version = metadata
        .get(VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let ours = version.as_deref() == Some(VERSION);
    match (&answer, ours) {
        (Ok(_), true) => {}
        (Ok(_), false) => {
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
        (Err(_), true) => {}
        // The connection broke: a service that died leaves a dead FUSE mount,
        // which the caller reports; anything else is the start path's to name.
        (Err(status), false)
            if version.is_none() && is_transport_failure(status) && service_died(settings) => {}
        (Err(_), false) => return None,
    }
    let _in_span = span.enter();
    if ours {
        log_running(connect_ms, settings);
    }
    Some(log_mount(
        request,
        answer.map(|(_, response)| response),
        mount_ms,
    ))
}

/// What the start path logs when its first probe finds the service running.
fn log_running(connect_ms: f64, settings: &Settings) {
    let serving: Probe<()> = Probe::Serving {
        channel: (),
        version: None,
    };
    log_probe(1, &serving, Some("mount"), connect_ms);
    let phases = Phases {
        probe: connect_ms,
        ..Phases::default()
    };
    phases.log(
        Ok(EnsureOutcome::AlreadyRunning),
        connect_ms,
        &settings.paths,
    );
}

/// Logs the answer to `request` (`launcher.mount`, or `launcher.mount_failed`),
/// on the warm path and the start path alike, and hands it back.
fn log_mount(request: &MountRequest, answer: Answer, elapsed_ms: f64) -> Answer {
    let (pid, env_spec) = (request.root_pid, short(&request.env_spec));
    match &answer {
        Ok(_) => tracing::info!(
            event = "launcher.mount",
            root_pid = pid,
            env_spec,
            elapsed_ms,
            "the service mounted the environment"
        ),
        Err(status) => tracing::error!(
            event = "launcher.mount_failed",
            root_pid = pid,
            env_spec,
            error = status.message(),
            elapsed_ms,
            "the service refused the mount"
        ),
    }
    answer
}

/// The `Mount` call: its answer's metadata, or its error. `None` when it was
/// not answered within the probe's deadline and a health Check then found no
/// SERVING service (the call is dropped).
async fn call_mount(
    channel: &Channel,
    request: &MountRequest,
) -> Option<std::result::Result<(MetadataMap, MountResponse), tonic::Status>> {
    let mut traced = crate::telemetry::otel::traced(request.clone());
    // A service of another version refuses it before recording anything.
    traced.metadata_mut().insert(
        LAUNCHER_VERSION_HEADER,
        tonic::metadata::MetadataValue::from_static(VERSION),
    );
    let call = async {
        ControlClient::new(channel.clone())
            .mount(traced)
            .await
            .map(|response| (response.metadata().clone(), response.into_inner()))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn broken() -> tonic::Status {
        tonic::Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )))
    }

    #[test]
    fn a_mount_is_retried_only_while_the_service_was_stopping() {
        let never = || panic!("asked whether the service died");
        let mounted = || Ok(MountResponse::default());
        assert!(matches!(after(mounted(), 1, never), After::Mounted(_)));
        // UNAVAILABLE: stopping between probe and Mount, until the last try.
        let unavailable = || Err(tonic::Status::unavailable("stopping"));
        assert!(matches!(after(unavailable(), 1, never), After::Retry(_)));
        assert!(matches!(
            after(unavailable(), MOUNT_ATTEMPTS, never),
            After::Refused(_)
        ));
        // A broken connection: retried while the service stopped cleanly,
        // named when it died or on the last try.
        assert!(is_transport_failure(&broken()));
        assert!(matches!(after(Err(broken()), 1, || false), After::Retry(_)));
        assert!(matches!(after(Err(broken()), 1, || true), After::Lost(_)));
        assert!(matches!(
            after(Err(broken()), MOUNT_ATTEMPTS, || false),
            After::Lost(_)
        ));
        // The service's own refusal is the answer.
        let refused = Err(tonic::Status::not_found("unknown reference"));
        assert!(matches!(after(refused, 1, never), After::Refused(_)));
    }
}
