//! Logging: JSON lines to a daily file per program, as `docs/logging.md` lays
//! out. The launcher and the service both write synchronously, one `write` per
//! line, so a process that `exec`s or is killed right after an event has
//! already put it on disk.
//!
//! Events are `tracing` events with an `event` field naming them, for example
//! `tracing::info!(event = "launcher.spawn", pid, "spawned the service")`.

mod files;
mod json;
pub mod reader;

use std::path::Path;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

pub use files::{current_file_name, DailyLog, KEEP_DAYS};

/// Our events at info; libraries only when something is wrong. fuser reports
/// every request the filesystem does not implement at warn, so only its errors.
pub const DEFAULT_FILTER: &str = "info,fuser=error,h2=warn,hyper=warn,tower=warn";

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

/// Installs the global subscriber writing JSON lines into `log_dir`.
///
/// Level filter: `SPFS_LOG` (an `EnvFilter` directive), default [`DEFAULT_FILTER`].
/// If the log dir cannot be used, says so once on stderr and logs nowhere:
/// a broken log dir must not stop the user's command.
pub fn init(program: Program, log_dir: &Path) {
    let filter =
        EnvFilter::try_from_env("SPFS_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    match DailyLog::open(log_dir, program.prefix()) {
        Ok(writer) => {
            let layer = tracing_subscriber::fmt::layer()
                .event_format(json::JsonLines)
                .with_writer(writer);
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(layer)
                .try_init();
        }
        Err(err) => {
            eprintln!(
                "spfs: warning: not logging, cannot open log dir {}: {err}; set SPFS_LOG_DIR to a writable directory",
                log_dir.display()
            );
        }
    }
}
