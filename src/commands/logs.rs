//! `spfs service logs [-f] [-n N] [--json] [--launcher]`: the service's (or the
//! launcher's) JSON log as readable lines, or raw with `--json`; `-f` keeps
//! following across daily rotation.

use std::process::ExitCode;

use super::runner::{self, Out};
use crate::error::{Error, Result};
use crate::settings::Settings;
use crate::telemetry::reader;
use crate::telemetry::Program;

pub struct LogsOptions {
    pub follow: bool,
    pub lines: usize,
    pub json: bool,
    pub launcher: bool,
}

pub fn logs(options: LogsOptions) -> ExitCode {
    runner::run("spfs service logs", || show_logs(&options))
}

fn show_logs(options: &LogsOptions) -> Result<ExitCode> {
    let settings = Settings::from_env()?;
    let paths = &settings.paths;
    let (prefix, link) = if options.launcher {
        (Program::Launcher.prefix(), paths.launcher_log())
    } else {
        (Program::Service.prefix(), paths.service_log())
    };
    let mut out = Out::new();
    let mut show = |line: &str| -> Result<()> {
        if options.json {
            out.line(line)
        } else {
            out.line(reader::readable(line))
        }
    };
    let lines = reader::last_lines(&paths.log_dir, prefix, options.lines).map_err(|e| {
        Error::io(
            format!("cannot read logs in {}", paths.log_dir.display()),
            e,
        )
    })?;
    if lines.is_empty() && !options.follow {
        eprintln!(
            "no log lines yet in {} (the log starts with the first run)",
            link.display()
        );
    }
    for line in &lines {
        show(line)?;
    }
    if options.follow {
        out.flush()?;
        reader::follow(&link, |line| {
            // Keep the stdout error as it is, so a closed pipe ends us quietly.
            let shown = if options.json {
                out.line(line)
            } else {
                out.line(reader::readable(line))
            };
            shown.and_then(|()| out.flush()).map_err(|err| match err {
                Error::Io { source, .. } => source,
                other => std::io::Error::other(other.to_string()),
            })
        })
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => Error::io("cannot write to stdout", e),
            _ => Error::io(format!("following {}", link.display()), e),
        })?;
    }
    out.finish()?;
    Ok(ExitCode::SUCCESS)
}
