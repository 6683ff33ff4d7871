//! What the launcher logs of getting a serving service: the time spent in
//! each phase ([`Phases::time`]), each probe (`launcher.probe`), and the
//! outcome (`launcher.ensure` or `launcher.start_failed`, [`Phases::log`]),
//! with the metrics that go with them. The warm path and the start path
//! both log through here, so the fields cannot drift apart.

use std::future::Future;
use std::time::Instant;

use super::probe::Probe;
use super::EnsureOutcome;
use crate::error::Error;
use crate::paths::Paths;
use crate::telemetry::metrics::{attr, metrics};
use crate::telemetry::ms_since;

/// One phase of a start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Probe,
    LockWait,
    Spawn,
    ReadinessWait,
    Confirm,
}

/// Milliseconds spent in each phase, for `launcher.ensure`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Phases {
    pub probe: f64,
    pub lock_wait: f64,
    pub spawn: f64,
    pub readiness_wait: f64,
    pub confirm: f64,
}

impl Phases {
    fn slot(&mut self, phase: Phase) -> &mut f64 {
        match phase {
            Phase::Probe => &mut self.probe,
            Phase::LockWait => &mut self.lock_wait,
            Phase::Spawn => &mut self.spawn,
            Phase::ReadinessWait => &mut self.readiness_wait,
            Phase::Confirm => &mut self.confirm,
        }
    }

    /// Adds `ms` to `phase`; returns the phase's total.
    pub fn add(&mut self, phase: Phase, ms: f64) -> f64 {
        let slot = self.slot(phase);
        *slot += ms;
        *slot
    }

    /// Runs `work`, adding its time to `phase`.
    pub async fn time<F: Future>(&mut self, phase: Phase, work: F) -> F::Output {
        let started = Instant::now();
        let output = work.await;
        self.add(phase, ms_since(started));
        output
    }

    /// Logs how getting a serving service ended (`launcher.ensure`, or
    /// `launcher.start_failed` with the reason), and records its metrics.
    pub fn log(&self, result: Result<EnsureOutcome, &Error>, elapsed_ms: f64, paths: &Paths) {
        let metrics = metrics();
        match result {
            Ok(outcome) => {
                let outcome = outcome.as_str();
                metrics
                    .ensure_duration
                    .record(elapsed_ms, &attr("outcome", outcome));
                tracing::info!(
                    event = "launcher.ensure",
                    outcome,
                    elapsed_ms,
                    probe_ms = self.probe,
                    lock_wait_ms = self.lock_wait,
                    spawn_ms = self.spawn,
                    readiness_wait_ms = self.readiness_wait,
                    confirm_ms = self.confirm,
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
                    error = %err.with_fix(),
                    elapsed_ms,
                    probe_ms = self.probe,
                    lock_wait_ms = self.lock_wait,
                    spawn_ms = self.spawn,
                    readiness_wait_ms = self.readiness_wait,
                    confirm_ms = self.confirm,
                    socket = %paths.socket().display(),
                    "could not get a serving service"
                );
            }
        }
    }
}

/// Logs one probe (`launcher.probe`); `via` names the warm path's `Mount`.
pub fn log_probe<C>(attempt: u32, probe: &Probe<C>, via: Option<&str>, elapsed_ms: f64) {
    match via {
        Some(via) => tracing::info!(
            event = "launcher.probe",
            attempt,
            result = probe.name(),
            via,
            elapsed_ms,
            "probed the service"
        ),
        None => tracing::info!(
            event = "launcher.probe",
            attempt,
            result = probe.name(),
            elapsed_ms,
            "probed the service"
        ),
    }
}
