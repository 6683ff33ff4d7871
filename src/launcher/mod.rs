//! The launcher: `ensure_service_running` makes sure the per-user service is
//! up and SERVING, starting it if needed, and returns a channel to it. Every
//! command that needs the service calls it; read this file top to bottom for
//! the cold-start path.
//!
//! 1. **probe**: `grpc.health.v1/Check` on the socket. SERVING: done.
//! 2. **lock_wait**: take the spawn lock, so racing launchers start one service.
//! 3. **probe** again under the lock: another launcher may have started it.
//!    A stale socket (nobody listening) is removed only here, under the lock.
//! 4. **spawn** the service detached, with a readiness pipe.
//! 5. **readiness_wait**: the service writes one line when SERVING, or an
//!    error; if it dies first we learn at once, with its exit status.
//! 6. **confirm** with a health Check, release the lock, return. For a
//!    `Mount` ([`ensure_service_to_mount`]) the confirm is the connect alone:
//!    the `Mount` that follows is refused (UNAVAILABLE) by a service that is
//!    not SERVING, and `spfs run` then starts one again, so a Check would
//!    only add a round trip to every cold start.
//!
//! All of it runs under one deadline (`SPFS_SERVICE_START_TIMEOUT`, default
//! 10 s). Each phase is logged with its `elapsed_ms`, and `launcher.ensure`
//! sums them up, so the launcher log alone shows where a slow start spent time.

mod lock;
pub mod probe;
pub mod spawn;
mod stop;
pub mod warm;

pub use stop::stop_service;

use std::time::{Duration, Instant};

use tokio::time::timeout_at;
use tonic::transport::Channel;
use tracing::Instrument;

use crate::contract::StartReason;
use crate::error::{Error, Result};
use crate::settings::Settings;
use crate::telemetry::metrics::{attr, metrics};
use crate::telemetry::otel::traced;
use lock::SpawnLock;
use probe::{probe, Probe};
use spawn::Outcome;

/// How `ensure_service_running` found the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnsureOutcome {
    /// It was already SERVING at the first probe.
    AlreadyRunning,
    /// This launcher spawned it.
    Started,
    /// Another launcher started it while this one waited for the lock.
    StartedByOther,
}

impl EnsureOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            EnsureOutcome::AlreadyRunning => "already_running",
            EnsureOutcome::Started => "started",
            EnsureOutcome::StartedByOther => "started_by_other",
        }
    }
}

/// A SERVING service and the channel the probe opened to it.
#[derive(Debug)]
pub struct Running {
    pub channel: Channel,
    pub outcome: EnsureOutcome,
}

/// Milliseconds spent in each phase, for `launcher.ensure`.
#[derive(Default)]
struct Phases {
    probe: f64,
    lock_wait: f64,
    spawn: f64,
    readiness_wait: f64,
    confirm: f64,
}

fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

/// How a service this launcher started is confirmed before it is handed on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Confirm {
    /// A health Check says SERVING.
    Check,
    /// A connection is open; the caller's own call confirms it (`Mount`,
    /// which a service that is not SERVING refuses with UNAVAILABLE).
    Connect,
}

/// Makes sure the service is SERVING; starts it if not. See the module docs.
pub async fn ensure_service_running(settings: &Settings) -> Result<Running> {
    ensure_logged(settings, Confirm::Check).await
}

/// As [`ensure_service_running`], for a caller whose next call is `Mount`:
/// a service it starts is confirmed by that `Mount`, not by a Check first.
/// The caller must start again when the `Mount` answers UNAVAILABLE.
pub async fn ensure_service_to_mount(settings: &Settings) -> Result<Running> {
    ensure_logged(settings, Confirm::Connect).await
}

async fn ensure_logged(settings: &Settings, confirm: Confirm) -> Result<Running> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::from_std(started + settings.start_timeout);
    let mut phases = Phases::default();
    let span = tracing::info_span!("ensure_service_running");
    let result = ensure(settings, deadline, &mut phases, confirm)
        .instrument(span.clone())
        .await;
    let _in_span = span.enter();
    let elapsed_ms = ms_since(started);
    let metrics = metrics();
    match &result {
        Ok(running) => {
            let outcome = running.outcome.as_str();
            metrics
                .ensure_duration
                .record(elapsed_ms, &attr("outcome", outcome));
            tracing::info!(
                event = "launcher.ensure",
                outcome,
                elapsed_ms,
                probe_ms = phases.probe,
                lock_wait_ms = phases.lock_wait,
                spawn_ms = phases.spawn,
                readiness_wait_ms = phases.readiness_wait,
                confirm_ms = phases.confirm,
                "service is serving"
            );
        }
        Err(err) => {
            metrics
                .ensure_duration
                .record(elapsed_ms, &attr("outcome", "failed"));
            metrics.start_failures.add(1, &attr("reason", err.reason()));
            tracing::error!(
                event = "launcher.start_failed",
                reason = err.reason(),
                error = %err,
                elapsed_ms,
                probe_ms = phases.probe,
                lock_wait_ms = phases.lock_wait,
                spawn_ms = phases.spawn,
                readiness_wait_ms = phases.readiness_wait,
                confirm_ms = phases.confirm,
                socket = %settings.paths.socket().display(),
                "could not get a serving service"
            );
        }
    }
    result
}

async fn ensure(
    settings: &Settings,
    deadline: tokio::time::Instant,
    phases: &mut Phases,
    confirm: Confirm,
) -> Result<Running> {
    let paths = &settings.paths;
    let socket = paths.socket();
    let timeout = |phase: &'static str| Error::StartTimeout {
        phase,
        waited: settings.start_timeout,
        socket: socket.clone(),
        log: paths.service_log(),
    };

    // The socket is only trusted inside a directory that is ours alone.
    paths.ensure_runtime_dir()?;

    // 1. probe
    let first = logged_probe(settings, 1, phases).await;
    match first {
        Probe::Serving { channel, version } => {
            if !replace_other_version(settings, &channel, version.as_deref()).await? {
                return Ok(Running {
                    channel,
                    outcome: EnsureOutcome::AlreadyRunning,
                });
            }
            // Stopped: start ours below, like any cold start.
        }
        // Unanswering: under the lock, give it a moment to answer or go.
        Probe::NotServing(_) | Probe::Absent { .. } | Probe::Unanswering { .. } => {}
        refused @ (Probe::Foreign(_) | Probe::Unreachable(_)) => return Err(refused.refusal(paths)),
    }

    // 2. lock_wait
    let lock_started = Instant::now();
    let lock_path = paths.spawn_lock();
    let free = tracing::info_span!("lock_wait").in_scope(|| SpawnLock::try_acquire(&lock_path))?;
    let _lock = match free {
        Some(free) => free,
        // Another launcher is starting it: wait on a blocking thread.
        None => {
            let lock = tokio::task::spawn_blocking(move || SpawnLock::acquire(&lock_path));
            match timeout_at(deadline, lock)
                .instrument(tracing::info_span!("lock_wait"))
                .await
            {
                Ok(joined) => {
                    joined.map_err(|e| Error::io("spawn lock", std::io::Error::other(e)))??
                }
                Err(_) => return Err(timeout("lock_wait")),
            }
        }
    };
    phases.lock_wait = ms_since(lock_started);
    tracing::info!(
        event = "launcher.lock_acquired",
        elapsed_ms = phases.lock_wait,
        "holding the spawn lock"
    );

    // 3. probe under the lock; loop only while an old service is going away.
    let mut attempt = 2;
    // The live service we already waited for, once, to answer or exit.
    let mut waited_for: Option<i32> = None;
    loop {
        match logged_probe(settings, attempt, phases).await {
            Probe::Serving { channel, .. } => {
                return Ok(Running {
                    channel,
                    outcome: EnsureOutcome::StartedByOther,
                })
            }
            Probe::NotServing(channel) => {
                // Started by hand and still coming up, or shutting down.
                let wait_started = Instant::now();
                match timeout_at(deadline, probe::wait_serving(&channel)).await {
                    Err(_) => {
                        return Err(Error::NotServing {
                            socket,
                            waited: settings.start_timeout,
                            log: paths.service_log(),
                        })
                    }
                    Ok(became_serving) => {
                        phases.readiness_wait += ms_since(wait_started);
                        if !matches!(became_serving, Ok(true)) {
                            // It went away; give it a moment to release its socket.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        retry(&mut attempt, "service was not serving");
                        continue;
                    }
                }
            }
            refused @ (Probe::Foreign(_) | Probe::Unreachable(_)) => {
                return Err(refused.refusal(paths))
            }
            // Our service is alive without answering: exiting (socket gone,
            // pidfile not yet), restoring a deleted socket, or stopped. Never
            // spawn over it: a new one could only fail with already_running.
            Probe::Unanswering { pid } => {
                if waited_for == Some(pid) {
                    return Err(Probe::Unanswering { pid }.refusal(paths));
                }
                waited_for = Some(pid);
                wait_for_holder(paths, deadline, phases).await;
                retry(&mut attempt, "the running service did not answer");
                continue;
            }
            Probe::Absent { stale_socket } => {
                if stale_socket {
                    // Safe only here: we hold the lock and nobody answered the connect.
                    match std::fs::remove_file(&socket) {
                        Ok(()) => tracing::info!(
                            event = "launcher.stale_socket_removed",
                            socket = %socket.display(),
                            "removed a socket nobody was listening on"
                        ),
                        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                        Err(err) => {
                            return Err(Error::io(
                                format!("cannot remove stale socket {}", socket.display()),
                                err,
                            ))
                        }
                    }
                }
            }
        }

        // 4. spawn
        let spawn_started = Instant::now();
        let binary = spawn::find_service_binary(settings)?;
        // Inside the span, so the service's startup span can join this trace.
        let starting = tracing::info_span!("spawn").in_scope(|| spawn::spawn(&binary, settings))?;
        metrics().spawns.add(1, &[]);
        phases.spawn += ms_since(spawn_started);
        tracing::info!(
            event = "launcher.spawn",
            binary = %binary.display(),
            mountpoint = %paths.mountpoint.display(),
            elapsed_ms = phases.spawn,
            "spawned the service"
        );

        // 5. readiness_wait
        let wait_started = Instant::now();
        let outcome = match timeout_at(deadline, starting.wait())
            .instrument(tracing::info_span!("readiness_wait"))
            .await
        {
            Ok(outcome) => outcome,
            Err(_) => return Err(timeout("readiness_wait")),
        };
        phases.readiness_wait += ms_since(wait_started);
        match outcome {
            Outcome::Ready { pid } => tracing::info!(
                event = "launcher.ready",
                service_pid = pid,
                elapsed_ms = phases.readiness_wait,
                "the service reported SERVING"
            ),
            // An old instance still holds the pidfile while it exits: wait
            // for it to go (or answer), then try again, once.
            Outcome::Failed(Error::ServiceFailed {
                reason: StartReason::AlreadyRunning,
                ..
            }) => match probe::locate_service(paths) {
                Some(pid) if waited_for == Some(pid) => {
                    return Err(Probe::Unanswering { pid }.refusal(paths))
                }
                holder => {
                    waited_for = holder;
                    wait_for_holder(paths, deadline, phases).await;
                    retry(&mut attempt, "an old service was still exiting");
                    continue;
                }
            },
            Outcome::Failed(err) => return Err(err),
        }

        // 6. confirm
        let confirm_started = Instant::now();
        let confirmed = timeout_at(deadline, confirm_started_service(&socket, confirm))
            .instrument(tracing::info_span!("confirm"))
            .await;
        phases.confirm = ms_since(confirm_started);
        match confirmed {
            Ok(Probe::Serving { channel, .. }) => {
                return Ok(Running {
                    channel,
                    outcome: EnsureOutcome::Started,
                })
            }
            // It stopped again at once (a tiny idle timeout, a `service stop`):
            // start another, a bounded number of times.
            Ok(other) if attempt < MAX_ATTEMPTS => {
                tracing::debug!(found = other.name(), "stopped right after it was ready");
                retry(&mut attempt, "the service stopped right after it was ready");
                continue;
            }
            Ok(other) => {
                return Err(Error::StoppedAfterReady {
                    found: other.name(),
                    attempts: attempt,
                    log: paths.service_log(),
                })
            }
            Err(_) => return Err(timeout("confirm")),
        }
    }
}

/// Step 6: a health Check, or (for a `Mount` to follow) just a connection.
async fn confirm_started_service(socket: &std::path::Path, confirm: Confirm) -> Probe {
    match confirm {
        Confirm::Check => probe(socket).await,
        Confirm::Connect => match crate::client::connect(socket).await {
            Ok(channel) => Probe::Serving {
                channel,
                version: None,
            },
            Err(_) => probe(socket).await,
        },
    }
}

/// After an upgrade the running service may be another version. Without active
/// runtimes it is stopped (true: start a new one); with runtimes it is kept
/// and the user is told, once, how to switch when convenient.
async fn replace_other_version(
    settings: &Settings,
    channel: &Channel,
    service_version: Option<&str>,
) -> Result<bool> {
    let ours = crate::contract::VERSION;
    if service_version == Some(ours) {
        return Ok(false);
    }
    let service_version = service_version.unwrap_or("unknown");
    let status = crate::client::ControlClient::new(channel.clone())
        .status(traced(crate::proto::StatusRequest {}))
        .await
        .map_err(|s| Error::rpc("Status of the running service failed", s))?
        .into_inner();
    if status.runtimes.is_empty() {
        tracing::info!(
            event = "launcher.version_restart",
            service_version,
            launcher_version = ours,
            service_pid = status.pid,
            "restarting a service of another version (no active runtimes)"
        );
        stop_service(&settings.paths, true).await?;
        return Ok(true);
    }
    tracing::warn!(
        event = "launcher.version_mismatch",
        service_version,
        launcher_version = ours,
        active_runtimes = status.runtimes.len(),
        "keeping a service of another version while it has active runtimes"
    );
    eprintln!(
        "spfs: warning: the running service is version {service_version} and this spfs is {ours}; it has {} active runtime(s), so it keeps running. Run `spfs service stop` when convenient to switch.",
        status.runtimes.len()
    );
    Ok(false)
}

/// Probes under the lock before `ensure` gives up on a service that keeps
/// stopping right after it said it was ready.
const MAX_ATTEMPTS: u32 = 6;

fn retry(attempt: &mut u32, reason: &str) {
    tracing::info!(
        event = "launcher.retry",
        attempt = *attempt,
        reason,
        "probing again"
    );
    *attempt += 1;
}

/// Longest wait for a live service that does not answer to answer or exit:
/// a shutdown takes at most its 2 s drain plus the unmount, and a deleted
/// socket is put back within half a second.
const HOLDER_WAIT: Duration = Duration::from_secs(4);

/// Waits (bounded by [`HOLDER_WAIT`] and the deadline) until the service
/// that holds the pidfile answers on the socket or is gone.
async fn wait_for_holder(
    paths: &crate::paths::Paths,
    deadline: tokio::time::Instant,
    phases: &mut Phases,
) {
    let started = Instant::now();
    let until = deadline.min(tokio::time::Instant::now() + HOLDER_WAIT);
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(25)).await;
        if !matches!(
            timeout_at(until, probe::probe_service(paths)).await,
            Ok(Probe::Unanswering { .. }) | Err(_)
        ) {
            break;
        }
    }
    phases.readiness_wait += ms_since(started);
}

async fn logged_probe(settings: &Settings, attempt: u32, phases: &mut Phases) -> Probe {
    let started = Instant::now();
    let result = probe::probe_service(&settings.paths)
        .instrument(tracing::info_span!("probe", attempt))
        .await;
    let elapsed_ms = ms_since(started);
    phases.probe += elapsed_ms;
    tracing::info!(
        event = "launcher.probe",
        attempt,
        result = result.name(),
        elapsed_ms,
        "probed the service"
    );
    result
}
