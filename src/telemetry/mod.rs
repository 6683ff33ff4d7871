//! Logging: JSON lines to a daily file per program, as `docs/logging.md` lays
//! out. The launcher and the service both write synchronously, one `write` per
//! line, so a process that `exec`s or is killed right after an event has
//! already put it on disk.
//!
//! Events are `tracing` events with an `event` field naming them, for example
//! `tracing::info!(event = "launcher.spawn", pid, "spawned the service")`.

mod files;
mod json;
pub mod metrics;
pub mod otel;
pub mod reader;

use std::path::Path;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

pub use files::{current_file_name, DailyLog, KEEP_DAYS};

/// Our events at info; libraries only when something is wrong. fuser reports
/// every request the filesystem does not implement at warn, so only its errors.
pub const DEFAULT_FILTER: &str =
    "info,fuser=error,h2=warn,hyper=warn,tower=warn,opentelemetry=off,opentelemetry_sdk=off,opentelemetry_otlp=off";

/// Which program is logging; picks the file name prefix.
#[derive(Debug, Clone, Copy)]
pub enum Program {
    Launcher,
    Service,
}

impl Program {
    pub fn prefix(self) -> &'static str {
        match self {
            Program::Launcher => crate::paths::LAUNCHER_LOG_PREFIX,
            Program::Service => crate::paths::SERVICE_LOG_PREFIX,
        }
    }
}

/// The exporters started by [`init`], flushed by [`flush`].
static OTEL: std::sync::Mutex<Option<otel::Otel>> = std::sync::Mutex::new(None);

/// Installs the global subscriber writing JSON lines into `log_dir`, and, when
/// an OTLP endpoint is configured, the OpenTelemetry exporters (see [`otel`]).
///
/// Level filter: `SPFS_LOG` (an `EnvFilter` directive), default [`DEFAULT_FILTER`].
/// If the log dir cannot be used, says so once on stderr and logs nowhere:
/// a broken log dir must not stop the user's command.
pub fn init(program: Program, log_dir: &Path) {
    let filter =
        EnvFilter::try_from_env("SPFS_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let json = match DailyLog::open(log_dir, program.prefix()) {
        Ok(writer) => Some(
            tracing_subscriber::fmt::layer()
                .event_format(json::JsonLines)
                .with_writer(writer),
        ),
        Err(err) => {
            eprintln!(
                "spfs: warning: not logging, cannot open log dir {}: {err}; set SPFS_LOG_DIR to a writable directory",
                log_dir.display()
            );
            None
        }
    };
    let tracing_layer = if otel::enabled() {
        match otel::start(program) {
            Ok((exporters, tracer)) => {
                *OTEL.lock().unwrap_or_else(|p| p.into_inner()) = Some(exporters);
                Some(tracing_opentelemetry::layer().with_tracer(tracer))
            }
            Err(err) => {
                eprintln!("spfs: warning: OpenTelemetry is configured but could not start: {err}");
                None
            }
        }
    } else {
        None
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(json)
        .with(tracing_layer)
        .try_init();
}

/// Flushes and stops the exporters, bounded by the export timeout. Call it
/// before `exec` and before exiting; a no-op when OpenTelemetry is off.
pub fn flush() {
    let exporters = OTEL.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(exporters) = exporters {
        exporters.shutdown();
    }
}
