//! The probe: is a healthy service on the socket? A `grpc.health.v1/Check`
//! for the control API under a short deadline; a bare connect proves nothing.
//! [`probe_service`] also asks whether our own service is alive when nobody
//! (or nothing sensible) answers: its pidfile, else (Linux) the process
//! serving the mountpoint, so a stopped or socketless service is named by its
//! pid instead of being called absent or foreign.

use std::io;
use std::path::Path;
use std::time::Duration;

use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::HealthCheckRequest;

use crate::client::{self, HealthClient};
use crate::contract::VERSION_HEADER;
use crate::error::Error;
use crate::paths::Paths;
use crate::proto::VFS_SERVICE_NAME;

/// Deadline for one probe (connect plus Check). A healthy service answers in
/// well under a millisecond; this only bounds how long a hung peer can stall us.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// What a probe found. `C` is the channel a service answered on (a test
/// of the cold path's driver scripts probes with something else).
#[derive(Debug)]
pub enum Probe<C = Channel> {
    /// Answered SERVING; the channel is ready for control calls. The service's
    /// version comes from the `spfs-service-version` response header.
    Serving { channel: C, version: Option<String> },
    /// A service is there but still starting or already stopping.
    NotServing(C),
    /// Nobody is listening; `stale_socket` when a socket file is left behind.
    Absent { stale_socket: bool },
    /// Something accepts connections but does not answer as our service does.
    Foreign(String),
    /// The connect failed for another reason (for example permissions).
    Unreachable(io::Error),
    /// Our service is alive (`pid`, from its pidfile or the process serving
    /// the mountpoint) but does not answer on the socket: stopped, hung,
    /// shutting down, or its socket was deleted.
    Unanswering { pid: i32 },
}

impl<C> Probe<C> {
    /// Short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Probe::Serving { .. } => "serving",
            Probe::NotServing(_) => "not_serving",
            Probe::Absent {
                stale_socket: false,
            } => "absent",
            Probe::Absent { stale_socket: true } => "stale_socket",
            Probe::Foreign(_) => "foreign",
            Probe::Unreachable(_) => "unreachable",
            Probe::Unanswering { .. } => "unanswering",
        }
    }

    /// The error to report for a socket that must not be used: something
    /// foreign on it, or no way to connect. Other results are not errors and
    /// only reach here by mistake; they are reported as unexpected.
    pub fn refusal(self, paths: &Paths) -> Error {
        let socket = &paths.socket();
        match self {
            Probe::Unanswering { pid } => Error::ServiceNotAnswering {
                pid,
                socket: socket.clone(),
                log: paths.service_log(),
            },
            Probe::Foreign(detail) => Error::ForeignListener {
                socket: socket.to_owned(),
                detail,
            },
            Probe::Unreachable(err) => {
                Error::io(format!("cannot connect to {}", socket.display()), err)
            }
            other => Error::UnexpectedProbe {
                found: other.name(),
                socket: socket.clone(),
            },
        }
    }
}

/// Probes the socket; when nobody answers, or something we do not recognise
/// does, looks for our own live service and names it.
pub async fn probe_service(paths: &Paths) -> Probe {
    match probe(&paths.socket()).await {
        found @ (Probe::Absent { .. } | Probe::Foreign(_)) => match locate_service(paths) {
            Some(pid) => Probe::Unanswering { pid },
            None => found,
        },
        found => found,
    }
}

/// The pid of our live service: the holder of the pidfile, else the process
/// serving the mountpoint (when the runtime dir was deleted under it). The
/// process table is only searched when a FUSE mount of ours is there, so a
/// cold start does not pay for it.
pub fn locate_service(paths: &Paths) -> Option<i32> {
    crate::contract::pidfile::holder(&paths.pidfile()).or_else(|| {
        let me = nix::unistd::geteuid().as_raw();
        (crate::platform::fuse_mount_owner(&paths.mountpoint) == Some(me))
            .then(|| crate::platform::find_service_process(&paths.mountpoint))
            .flatten()
    })
}

/// A connection the peer dropped says little: a service killed a moment ago
/// (its listener still queued our connect) looks like this. Probe once more.
const VANISHED_RETRY: Duration = Duration::from_millis(20);

pub async fn probe(socket: &Path) -> Probe {
    match probe_once(socket).await {
        Err(_vanished) => {
            tokio::time::sleep(VANISHED_RETRY).await;
            probe_once(socket).await.unwrap_or_else(|detail| {
                Probe::Foreign(format!(
                    "it accepted and then dropped the connection twice: {detail}"
                ))
            })
        }
        Ok(probe) => probe,
    }
}

/// One probe; `Err` when the peer dropped the connection without an answer.
async fn probe_once(socket: &Path) -> Result<Probe, String> {
    match tokio::time::timeout(PROBE_TIMEOUT, probe_inner(socket)).await {
        Ok(probe) => probe,
        Err(_) => Ok(Probe::Foreign(format!(
            "no answer within {} ms",
            PROBE_TIMEOUT.as_millis()
        ))),
    }
}

async fn probe_inner(socket: &Path) -> Result<Probe, String> {
    let channel = match client::connect(socket).await {
        Ok(channel) => channel,
        Err(err) => {
            return Ok(match err.raw_os_error() {
                Some(libc::ENOENT) => Probe::Absent {
                    stale_socket: false,
                },
                Some(libc::ECONNREFUSED) => Probe::Absent { stale_socket: true },
                // Connected, then the HTTP/2 setup failed: the peer went away.
                None => return Err(err.to_string()),
                _ => Probe::Unreachable(err),
            });
        }
    };
    Ok(match check_with_version(&channel).await {
        Ok((ServingStatus::Serving, version)) => Probe::Serving { channel, version },
        Ok(_) => Probe::NotServing(channel),
        Err(status) if status.code() == tonic::Code::NotFound => Probe::Foreign(format!(
            "it speaks grpc.health.v1 but does not serve {VFS_SERVICE_NAME}"
        )),
        // Transport failures: the connection went away before any answer.
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Unknown
            ) =>
        {
            return Err(format!("{:?}: {}", status.code(), status.message()))
        }
        Err(status) => Probe::Foreign(format!(
            "Check failed: {:?}: {}",
            status.code(),
            status.message()
        )),
    })
}

/// One health Check of the control API on an open channel, and the version
/// header the service sends with every response.
pub(crate) async fn check_with_version(
    channel: &Channel,
) -> Result<(ServingStatus, Option<String>), tonic::Status> {
    let response = HealthClient::new(channel.clone())
        .check(crate::telemetry::otel::traced(HealthCheckRequest {
            service: VFS_SERVICE_NAME.into(),
        }))
        .await?;
    let version = response
        .metadata()
        .get(VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let status =
        ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown);
    Ok((status, version))
}

/// Waits, on the health `Watch` stream, until the service is SERVING.
/// `Ok(false)` when the stream ends first (the service went away).
pub async fn wait_serving(channel: &Channel) -> Result<bool, tonic::Status> {
    let mut stream = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: VFS_SERVICE_NAME.into(),
        })
        .await?
        .into_inner();
    loop {
        match stream.message().await {
            Ok(Some(update)) if update.status == ServingStatus::Serving as i32 => return Ok(true),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return Ok(false),
        }
    }
}
