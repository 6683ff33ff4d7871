//! The metrics we export (names in the `spfs.` namespace; their Prometheus
//! names are in `docs/observability.md`). Without a configured exporter these
//! are OpenTelemetry's no-op instruments and cost next to nothing.

use std::sync::OnceLock;

use opentelemetry::metrics::{Counter, Gauge, Histogram};
use opentelemetry::KeyValue;

pub struct Metrics {
    /// `ensure_service_running` duration, by `outcome` (or `failed`).
    pub ensure_duration: Histogram<f64>,
    /// Service processes the launcher spawned.
    pub spawns: Counter<u64>,
    /// Failed `ensure_service_running`, by `reason`.
    pub start_failures: Counter<u64>,
    /// Service process start to SERVING.
    pub startup_duration: Histogram<f64>,
    /// Runtimes the service holds now.
    pub active_runtimes: Gauge<u64>,
    /// `Mount` handling time, by `result` (`ok`, `refused`).
    pub mount_duration: Histogram<f64>,
    /// 1 while the service is SERVING, 0 while starting or stopping.
    pub health: Gauge<u64>,
}

/// The instruments; first call after `telemetry::init`, so they bind to its provider.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let meter = opentelemetry::global::meter("spfs");
        Metrics {
            ensure_duration: meter
                .f64_histogram("spfs.launcher.ensure.duration")
                .with_unit("ms")
                .with_description("Time for ensure_service_running, by outcome")
                .build(),
            spawns: meter
                .u64_counter("spfs.launcher.spawns")
                .with_description("Service processes spawned by launchers")
                .build(),
            start_failures: meter
                .u64_counter("spfs.launcher.start_failures")
                .with_description("Failed service starts, by reason")
                .build(),
            startup_duration: meter
                .f64_histogram("spfs.service.startup.duration")
                .with_unit("ms")
                .with_description("Service process start to SERVING")
                .build(),
            active_runtimes: meter
                .u64_gauge("spfs.service.active_runtimes")
                .with_description("RuntimeTable the service holds")
                .build(),
            mount_duration: meter
                .f64_histogram("spfs.service.mount.duration")
                .with_unit("ms")
                .with_description("Mount handling time, by result")
                .build(),
            health: meter
                .u64_gauge("spfs.service.health")
                .with_description("1 while SERVING, else 0")
                .build(),
        }
    })
}

pub fn attr(key: &'static str, value: impl Into<String>) -> [KeyValue; 1] {
    [KeyValue::new(key, value.into())]
}
