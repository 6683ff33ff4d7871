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
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub use files::{current_file_name, open_private, DailyLog, KEEP_DAYS, LOG_DIR_SETTING};

/// Our events at info; libraries only when something is wrong. fuser reports
/// every request the filesystem does not implement at warn, so only its errors.
pub const DEFAULT_FILTER: &str =
    "info,fuser=error,h2=warn,hyper=warn,tower=warn,opentelemetry=off,opentelemetry_sdk=off,opentelemetry_otlp=off";

/// Which program is logging; picks the file name prefix (`docs/logging.md`
/// describes the files).
#[derive(Debug, Clone, Copy)]
pub enum Program {
    Launcher,
    Service,
}

impl Program {
    pub fn prefix(self) -> &'static str {
        match self {
            Program::Launcher => "spfs",
            Program::Service => "spfs-fuse-macos",
        }
    }
}

/// The exporters started by [`init`], flushed by [`flush`].
static OTEL: std::sync::Mutex<Option<otel::Otel>> = std::sync::Mutex::new(None);

/// Installs the global subscriber writing JSON lines into `log_dir`, and, when
/// an OTLP endpoint is configured, the OpenTelemetry exporters (see [`otel`]).
///
/// Level filter: `SPFS_LOG` (a list of `level` and `target=level`, as
/// tracing's `Targets` reads it), default [`DEFAULT_FILTER`]. Not an
/// `EnvFilter`: its span and field filters need the `regex` crate, whose
/// Unicode tables cost every start of `spfs` about 30 page faults (5,700
/// relocations) for a feature the logs do not use.
///
/// If the log dir cannot be used (unsafe, read-only, a symlink planted at
/// the file), says so once on stderr and writes the JSON lines to stderr
/// instead: a broken log dir must not stop the user's command nor the
/// service. The launcher's stderr is the user's terminal, so it shows only
/// warnings and errors there unless `SPFS_LOG` asks for more; the service's
/// stderr is its `.stderr` file (or nothing), so it keeps the usual level.
pub fn init(program: Program, log_dir: &Path) {
    let configured = std::env::var("SPFS_LOG")
        .ok()
        .and_then(|text| text.parse::<Targets>().ok());
    let (file, filter) = match DailyLog::open(log_dir, program.prefix()) {
        Ok(writer) => (
            Some(writer),
            configured.unwrap_or_else(|| targets(DEFAULT_FILTER)),
        ),
        Err(err) => {
            eprintln!(
                "spfs: warning: not writing log files: {err}\n  logging to stderr instead; fix the log dir or set SPFS_LOG_DIR to a directory of your own"
            );
            let fallback = match program {
                Program::Launcher => "warn,fuser=error,h2=error,hyper=error,tower=error,opentelemetry=off,opentelemetry_sdk=off,opentelemetry_otlp=off",
                Program::Service => DEFAULT_FILTER,
            };
            (None, configured.unwrap_or_else(|| targets(fallback)))
        }
    };
    let to_stderr = file.is_none();
    let json = file.map(|writer| {
        tracing_subscriber::fmt::layer()
            .event_format(json::JsonLines)
            .with_writer(writer)
    });
    let stderr = to_stderr.then(|| {
        tracing_subscriber::fmt::layer()
            .event_format(json::JsonLines)
            .with_writer(std::io::stderr)
    });
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
        .with(stderr)
        .with(tracing_layer)
        .try_init();
}

/// The filter `directives` name (ours are all valid; one that is not shows
/// everything at `info`).
fn targets(directives: &str) -> Targets {
    directives
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO))
}

/// Milliseconds since `start`, as the `elapsed_ms` fields carry them.
pub fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

/// Seconds since the Unix epoch, now (0 on a clock set before it).
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `text` cut to one screen (200 bytes, then `...`), for messages and log
/// fields: an error about a 60,000-byte ref stays readable.
pub fn short(text: &str) -> String {
    const MAX: usize = 200;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// `message`, then its fix on a line of its own, as users see errors (and
/// the log records them).
pub fn with_fix(message: &str, fix: Option<&str>) -> String {
    match fix {
        None => message.to_owned(),
        Some(fix) if message.ends_with(['.', ':']) => format!("{message}\n  fix: {fix}"),
        Some(fix) => format!("{message}.\n  fix: {fix}"),
    }
}

/// Flushes and stops the exporters, bounded by the export timeout. Call it
/// before `exec` and before exiting; a no-op when OpenTelemetry is off.
pub fn flush() {
    let exporters = OTEL.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(exporters) = exporters {
        exporters.shutdown();
    }
}
