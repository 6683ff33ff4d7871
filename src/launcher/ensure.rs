//! The cold path, as a small driver ([`drive`]) over explicit steps
//! ([`Steps`]): look once without the lock; take the spawn lock; then probe
//! under the lock, and spawn and confirm when nobody serves, until a
//! service is SERVING or the path fails. Each step says what comes next
//! ([`Next`]). The real steps ([`RealSteps`]) talk to the socket and start
//! processes, under one deadline, and time each phase; the unit tests
//! script them.

use std::time::Duration;

use tokio::time::timeout_at;
use tonic::transport::Channel;
use tracing::Instrument;

use super::lock::SpawnLock;
use super::phases::{log_probe, Phase, Phases};
use super::probe::{self, Probe};
use super::spawn::{self, Outcome};
use super::EnsureOutcome;
use crate::contract::StartReason;
use crate::error::{Error, Result};
use crate::settings::Settings;
use crate::telemetry::metrics::metrics;

/// A SERVING service and the channel the probe opened to it.
#[derive(Debug)]
pub struct Ensured<C = Channel> {
    pub channel: C,
    pub outcome: EnsureOutcome,
}

/// What the cold path does next.
pub enum Next<C> {
    /// A SERVING service: done.
    Serving(Ensured<C>),
    /// Nobody serves: start one.
    Spawn,
    /// Our service (this pid, when known) is alive without answering, or an
    /// old one is still exiting: wait for it to answer or go, then probe
    /// again; a pid waited for once already is named as the error.
    WaitFor(Option<i32>, &'static str),
    /// Probe again.
    Retry(&'static str),
    Fail(Error),
}

/// What a spawned service said on its readiness pipe, as far as the
/// driver cares.
pub enum Spawned {
    /// It is SERVING.
    Ready,
    /// An old instance still holds the pidfile while it exits (its pid,
    /// when found).
    OldServiceExiting { holder: Option<i32> },
}

/// The steps of a cold start.
#[allow(async_fn_in_trait)]
pub trait Steps {
    type Channel;
    /// Probe number `attempt` (1: before the lock).
    async fn probe(&mut self, attempt: u32) -> Probe<Self::Channel>;
    /// A service of another version answered: true when it was stopped (no
    /// runtime uses it), so ours must start.
    async fn replace_other_version(
        &mut self,
        channel: &Self::Channel,
        version: Option<&str>,
    ) -> Result<bool>;
    /// Takes the spawn lock, waiting for another launcher that holds it.
    async fn lock(&mut self) -> Result<()>;
    /// A service answered NOT_SERVING: waits until it is SERVING or gone
    /// (an error when the deadline passes first).
    async fn wait_serving(&mut self, channel: Self::Channel) -> Result<()>;
    /// Waits (bounded) for a live service that does not answer to answer or go.
    async fn wait_for_holder(&mut self);
    /// Removes a socket nobody listens on (only ever under the lock).
    fn remove_stale_socket(&mut self) -> Result<()>;
    /// Starts a service and waits for its readiness line.
    async fn spawn(&mut self) -> Result<Spawned>;
    /// Confirms a service this launcher started.
    async fn confirm(&mut self) -> Result<Probe<Self::Channel>>;
    /// The error for a probe that refuses the socket (foreign, unreachable,
    /// or our service alive without answering).
    fn refusal(&self, probe: Probe<Self::Channel>) -> Error;
    /// The error for a service that stopped right after it was ready, every
    /// time it was started.
    fn stopped_after_ready(&self, found: &'static str, attempts: u32) -> Error;
}

/// Probes under the lock before the driver gives up on a service that keeps
/// stopping right after it said it was ready.
pub const MAX_ATTEMPTS: u32 = 6;

/// Runs the cold path to a SERVING service, or its error.
pub async fn drive<S: Steps>(steps: &mut S) -> Result<Ensured<S::Channel>> {
    if let Some(found) = first_look(steps).await? {
        return Ok(found);
    }
    steps.lock().await?;
    let mut attempt = 2;
    let mut waited_for = None;
    loop {
        let next = match probe_under_lock(steps, attempt).await {
            Next::Spawn => spawn_and_confirm(steps, attempt).await,
            next => next,
        };
        let reason = match next {
            Next::Serving(found) => return Ok(found),
            Next::Fail(err) => return Err(err),
            Next::Spawn => unreachable!("spawn_and_confirm never asks to spawn"),
            Next::Retry(reason) => reason,
            Next::WaitFor(Some(pid), _) if waited_for == Some(pid) => {
                return Err(steps.refusal(Probe::Unanswering { pid }))
            }
            Next::WaitFor(holder, reason) => {
                waited_for = holder;
                steps.wait_for_holder().await;
                reason
            }
        };
        retry(&mut attempt, reason);
    }
}

/// The probe before the lock: a SERVING service of our version is the
/// usual answer. Anything that may be waited out is left to the lock.
async fn first_look<S: Steps>(steps: &mut S) -> Result<Option<Ensured<S::Channel>>> {
    match steps.probe(1).await {
        Probe::Serving { channel, version } => {
            match steps
                .replace_other_version(&channel, version.as_deref())
                .await?
            {
                false => Ok(Some(Ensured {
                    channel,
                    outcome: EnsureOutcome::AlreadyRunning,
                })),
                // Stopped: start ours, like any cold start.
                true => Ok(None),
            }
        }
        Probe::NotServing(_) | Probe::Absent { .. } | Probe::Unanswering { .. } => Ok(None),
        refused @ (Probe::Foreign(_) | Probe::Unreachable(_)) => Err(steps.refusal(refused)),
    }
}

/// Under the lock: who is there now.
async fn probe_under_lock<S: Steps>(steps: &mut S, attempt: u32) -> Next<S::Channel> {
    match steps.probe(attempt).await {
        Probe::Serving { channel, .. } => Next::Serving(Ensured {
            channel,
            outcome: EnsureOutcome::StartedByOther,
        }),
        // Started by hand and still coming up, or shutting down.
        Probe::NotServing(channel) => match steps.wait_serving(channel).await {
            Ok(()) => Next::Retry("service was not serving"),
            Err(err) => Next::Fail(err),
        },
        refused @ (Probe::Foreign(_) | Probe::Unreachable(_)) => Next::Fail(steps.refusal(refused)),
        // Our service is alive without answering: exiting (socket gone,
        // pidfile not yet), restoring a deleted socket, or stopped. Never
        // spawn over it: a new one could only fail with already_running.
        Probe::Unanswering { pid } => {
            Next::WaitFor(Some(pid), "the running service did not answer")
        }
        Probe::Absent { stale_socket } => match stale_socket {
            // Safe only here: we hold the lock and nobody answered the connect.
            true => match steps.remove_stale_socket() {
                Ok(()) => Next::Spawn,
                Err(err) => Next::Fail(err),
            },
            false => Next::Spawn,
        },
    }
}

/// Starts a service and confirms it.
async fn spawn_and_confirm<S: Steps>(steps: &mut S, attempt: u32) -> Next<S::Channel> {
    match steps.spawn().await {
        Ok(Spawned::Ready) => {}
        // An old instance still holds the pidfile while it exits: wait for
        // it to go (or answer), then try again, once.
        Ok(Spawned::OldServiceExiting { holder }) => {
            return Next::WaitFor(holder, "an old service was still exiting")
        }
        Err(err) => return Next::Fail(err),
    }
    match steps.confirm().await {
        Ok(Probe::Serving { channel, .. }) => Next::Serving(Ensured {
            channel,
            outcome: EnsureOutcome::Started,
        }),
        // It stopped again at once (a tiny idle timeout, a `service stop`):
        // start another, a bounded number of times.
        Ok(other) if attempt < MAX_ATTEMPTS => {
            tracing::debug!(found = other.name(), "stopped right after it was ready");
            Next::Retry("the service stopped right after it was ready")
        }
        Ok(other) => Next::Fail(steps.stopped_after_ready(other.name(), attempt)),
        Err(err) => Next::Fail(err),
    }
}

fn retry(attempt: &mut u32, reason: &str) {
    tracing::info!(
        event = "launcher.retry",
        attempt = *attempt,
        reason,
        "probing again"
    );
    *attempt += 1;
}

/// How a service this launcher started is confirmed before it is handed on.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Confirm {
    /// A health Check says SERVING.
    Check,
    /// A connection is open; the caller's own call confirms it (`Mount`,
    /// which a service that is not SERVING refuses with UNAVAILABLE).
    Connect,
}

/// Longest wait for a live service that does not answer to answer or exit:
/// a shutdown takes at most its 2 s drain plus the unmount, and a deleted
/// socket is put back within half a second.
const HOLDER_WAIT: Duration = Duration::from_secs(4);

/// The steps as they really run: on this user's socket and processes,
/// under one deadline (`SPFS_SERVICE_START_TIMEOUT`), each phase timed.
pub struct RealSteps<'a> {
    pub settings: &'a Settings,
    pub deadline: tokio::time::Instant,
    pub confirm: Confirm,
    pub phases: Phases,
    lock: Option<SpawnLock>,
}

impl<'a> RealSteps<'a> {
    pub fn new(settings: &'a Settings, deadline: tokio::time::Instant, confirm: Confirm) -> Self {
        RealSteps {
            settings,
            deadline,
            confirm,
            phases: Phases::default(),
            lock: None,
        }
    }

    fn timeout(&self, phase: &'static str) -> Error {
        let paths = &self.settings.paths;
        Error::StartTimeout {
            phase,
            waited: self.settings.start_timeout,
            socket: paths.socket(),
            log: paths.service_log(),
        }
    }

    /// Starts the service; the readiness line it (or its nanny) wrote.
    async fn spawn_service(&mut self) -> Result<Outcome> {
        let settings = self.settings;
        let binary = super::find_service_binary(settings)?;
        // Inside the span, so the service's startup span can join this trace.
        let started = std::time::Instant::now();
        let starting = tracing::info_span!("spawn").in_scope(|| spawn::spawn(&binary, settings))?;
        metrics().spawns.add(1, &[]);
        let spawn_ms = self
            .phases
            .add(Phase::Spawn, crate::telemetry::ms_since(started));
        tracing::info!(
            event = "launcher.spawn",
            binary = %binary.display(),
            mountpoint = %settings.paths.mountpoint.display(),
            elapsed_ms = spawn_ms,
            "spawned the service"
        );
        let deadline = self.deadline;
        let waited = self
            .phases
            .time(
                Phase::ReadinessWait,
                timeout_at(deadline, starting.wait())
                    .instrument(tracing::info_span!("readiness_wait")),
            )
            .await;
        waited.map_err(|_| self.timeout("readiness_wait"))
    }
}

impl Steps for RealSteps<'_> {
    type Channel = Channel;

    async fn probe(&mut self, attempt: u32) -> Probe {
        let paths = &self.settings.paths;
        let started = std::time::Instant::now();
        let found = probe::probe_service(paths)
            .instrument(tracing::info_span!("probe", attempt))
            .await;
        let elapsed_ms = crate::telemetry::ms_since(started);
        self.phases.add(Phase::Probe, elapsed_ms);
        log_probe(attempt, &found, None, elapsed_ms);
        found
    }

    async fn replace_other_version(
        &mut self,
        channel: &Channel,
        version: Option<&str>,
    ) -> Result<bool> {
        super::version::replace_other_version(self.settings, channel, version).await
    }

    async fn lock(&mut self) -> Result<()> {
        let started = std::time::Instant::now();
        let lock_path = self.settings.paths.spawn_lock();
        let free =
            tracing::info_span!("lock_wait").in_scope(|| SpawnLock::try_acquire(&lock_path))?;
        let lock = match free {
            Some(free) => free,
            // Another launcher is starting it: wait on a blocking thread.
            None => {
                let lock = tokio::task::spawn_blocking(move || SpawnLock::acquire(&lock_path));
                match timeout_at(self.deadline, lock)
                    .instrument(tracing::info_span!("lock_wait"))
                    .await
                {
                    Ok(joined) => {
                        joined.map_err(|e| Error::io("spawn lock", std::io::Error::other(e)))??
                    }
                    Err(_) => return Err(self.timeout("lock_wait")),
                }
            }
        };
        self.lock = Some(lock);
        let elapsed_ms = self
            .phases
            .add(Phase::LockWait, crate::telemetry::ms_since(started));
        tracing::info!(
            event = "launcher.lock_acquired",
            elapsed_ms,
            "holding the spawn lock"
        );
        Ok(())
    }

    async fn wait_serving(&mut self, channel: Channel) -> Result<()> {
        let deadline = self.deadline;
        let waited = self
            .phases
            .time(
                Phase::ReadinessWait,
                timeout_at(deadline, probe::wait_serving(&channel)),
            )
            .await;
        match waited {
            Err(_) => Err(Error::NotServing {
                socket: self.settings.paths.socket(),
                waited: self.settings.start_timeout,
                log: self.settings.paths.service_log(),
            }),
            Ok(Ok(true)) => Ok(()),
            // It went away; give it a moment to release its socket.
            Ok(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok(())
            }
        }
    }

    async fn wait_for_holder(&mut self) {
        let paths = &self.settings.paths;
        let until = self.deadline.min(tokio::time::Instant::now() + HOLDER_WAIT);
        let wait = async {
            while tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(25)).await;
                if !matches!(
                    timeout_at(until, probe::probe_service(paths)).await,
                    Ok(Probe::Unanswering { .. }) | Err(_)
                ) {
                    break;
                }
            }
        };
        self.phases.time(Phase::ReadinessWait, wait).await;
    }

    fn remove_stale_socket(&mut self) -> Result<()> {
        let socket = self.settings.paths.socket();
        match std::fs::remove_file(&socket) {
            Ok(()) => {
                tracing::info!(
                    event = "launcher.stale_socket_removed",
                    socket = %socket.display(),
                    "removed a socket nobody was listening on"
                );
                Ok(())
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(Error::io(
                format!("cannot remove stale socket {}", socket.display()),
                err,
            )),
        }
    }

    async fn spawn(&mut self) -> Result<Spawned> {
        match self.spawn_service().await? {
            Outcome::Ready { pid } => {
                tracing::info!(
                    event = "launcher.ready",
                    service_pid = pid,
                    elapsed_ms = self.phases.readiness_wait,
                    "the service reported SERVING"
                );
                Ok(Spawned::Ready)
            }
            Outcome::Failed(Error::ServiceFailed {
                reason: StartReason::AlreadyRunning,
                ..
            }) => Ok(Spawned::OldServiceExiting {
                holder: probe::locate_service(&self.settings.paths),
            }),
            Outcome::Failed(err) => Err(err),
        }
    }

    async fn confirm(&mut self) -> Result<Probe> {
        let (socket, confirm, deadline) =
            (self.settings.paths.socket(), self.confirm, self.deadline);
        let confirming = async move {
            match confirm {
                Confirm::Check => probe::probe(&socket).await,
                Confirm::Connect => match crate::client::connect(&socket).await {
                    Ok(channel) => Probe::Serving {
                        channel,
                        version: None,
                    },
                    Err(_) => probe::probe(&socket).await,
                },
            }
        };
        let confirmed = self
            .phases
            .time(
                Phase::Confirm,
                timeout_at(deadline, confirming).instrument(tracing::info_span!("confirm")),
            )
            .await;
        confirmed.map_err(|_| self.timeout("confirm"))
    }

    fn refusal(&self, probe: Probe) -> Error {
        probe.refusal(&self.settings.paths)
    }

    fn stopped_after_ready(&self, found: &'static str, attempts: u32) -> Error {
        Error::StoppedAfterReady {
            found,
            attempts,
            log: self.settings.paths.service_log(),
        }
    }
}

#[cfg(test)]
mod tests;
