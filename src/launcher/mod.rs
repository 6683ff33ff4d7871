//! The launcher: gets the per-user service up and SERVING, starting it if
//! needed, and sends it `spfs run`'s `Mount`. Read it in this order:
//!
//! - `mount`: `spfs run`'s `Mount`. The warm path first (the service is
//!   up: connect and `Mount` at once, one round trip), else the start path
//!   (`ensure_service_to_mount`, then `Mount`), and every retry of a
//!   `Mount` in one place.
//! - `ensure`: the cold path as a driver over explicit steps, all under one
//!   deadline (`SPFS_SERVICE_START_TIMEOUT`, default 10 s):
//!   1. **probe**: `grpc.health.v1/Check` on the socket. SERVING: done.
//!   2. **lock_wait**: take the spawn lock, so racing launchers start one service.
//!   3. **probe** again under the lock: another launcher may have started it.
//!      A stale socket (nobody listening) is removed only here, under the lock.
//!   4. **spawn** the service detached, with a readiness pipe (`spawn`, `nanny`).
//!   5. **readiness_wait**: the service writes one line when SERVING, or an
//!      error; if it dies first we learn at once, with its exit status.
//!   6. **confirm** with a health Check, release the lock, return. For a
//!      `Mount` the confirm is the connect alone: the `Mount` that follows
//!      is refused (UNAVAILABLE) by a service that is not SERVING, and is
//!      then tried again on a new one, so a Check would only add a round
//!      trip to every cold start.
//! - `phases`: each phase is logged with its `elapsed_ms`, and
//!   `launcher.ensure` sums them up, so the launcher log alone shows where a
//!   slow start spent time.
//! - `probe`, `lock`, `version` (a service of another version), `stop`.

mod binary;
mod ensure;
mod lock;
mod mount;
mod nanny;
mod phases;
pub(crate) mod probe;
mod spawn;
mod stop;
mod version;

pub(crate) use binary::find_service_binary;
pub use ensure::Ensured;
pub(crate) use mount::mount;
pub(crate) use stop::stop_service;

use std::time::Instant;

use tracing::Instrument;

use crate::error::Result;
use crate::settings::Settings;
use crate::telemetry::ms_since;
use ensure::{Confirm, RealSteps};

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

/// Makes sure the service is SERVING; starts it if not. See the module docs.
pub async fn ensure_service_running(settings: &Settings) -> Result<Ensured> {
    ensure_logged(settings, Confirm::Check).await
}

/// As [`ensure_service_running`], for a caller whose next call is `Mount`:
/// a service it starts is confirmed by that `Mount`, not by a Check first.
/// The caller must start again when the `Mount` answers UNAVAILABLE.
pub(crate) async fn ensure_service_to_mount(settings: &Settings) -> Result<Ensured> {
    ensure_logged(settings, Confirm::Connect).await
}

async fn ensure_logged(settings: &Settings, confirm: Confirm) -> Result<Ensured> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::from_std(started + settings.start_timeout);
    let span = tracing::info_span!("ensure_service_running");
    let mut steps = RealSteps::new(settings, deadline, confirm);
    let result = async {
        // The socket is only trusted inside a directory that is ours alone.
        settings.paths.ensure_runtime_dir()?;
        ensure::drive(&mut steps).await
    }
    .instrument(span.clone())
    .await;
    let _in_span = span.enter();
    let outcome = result.as_ref().map(|found| found.outcome);
    steps
        .phases
        .log(outcome, ms_since(started), &settings.paths);
    result
}
