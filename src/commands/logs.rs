//! `spfs service logs [-f] [-n N] [--json] [--launcher]`: the service's (or the
//! launcher's) JSON log as readable lines, or raw with `--json`; `-f` keeps
//! following across daily rotation.

use std::process::ExitCode;

use super::report;
use crate::config::Config;
use crate::paths::{LAUNCHER_LOG_PREFIX, SERVICE_LOG_PREFIX};
use crate::telemetry::reader;

pub struct LogsOptions {
    pub follow: bool,
    pub lines: usize,
    pub json: bool,
    pub launcher: bool,
}

pub fn logs(options: LogsOptions) -> ExitCode {
    let tool = "spfs service logs";
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => return report(tool, &err),
    };
    let paths = &config.paths;
    let (prefix, link) = if options.launcher {
        (LAUNCHER_LOG_PREFIX, paths.launcher_log())
    } else {
        (SERVICE_LOG_PREFIX, paths.service_log())
    };
    let show = |line: &str| {
        if options.json {
            println!("{line}");
        } else {
            println!("{}", reader::readable(line));
        }
    };
    match reader::last_lines(&paths.log_dir, prefix, options.lines) {
        Ok(lines) if lines.is_empty() && !options.follow => {
            eprintln!(
                "no log lines yet in {} (the log starts with the first run)",
                link.display()
            );
        }
        Ok(lines) => lines.iter().for_each(|l| show(l)),
        Err(err) => {
            eprintln!(
                "{tool}: error: cannot read logs in {}: {err}",
                paths.log_dir.display()
            );
            return ExitCode::FAILURE;
        }
    }
    if options.follow {
        if let Err(err) = reader::follow(&link, show) {
            eprintln!("{tool}: error: following {}: {err}", link.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
