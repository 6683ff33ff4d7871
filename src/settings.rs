//! Settings read once from the environment: the paths, the start deadline and
//! where the service binary is.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::paths::Paths;

pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Settings {
    pub paths: Paths,
    /// Total deadline for `ensure_service_running` (`SPFS_SERVICE_START_TIMEOUT`).
    pub start_timeout: Duration,
    /// Explicit service binary (`SPFS_FUSE_SERVICE_BIN`); else beside `spfs`, then PATH.
    pub service_bin: Option<PathBuf>,
    /// Passed to a service this launcher starts (`SPFS_SERVICE_IDLE_TIMEOUT`); off by default.
    pub idle_timeout: Option<Duration>,
}

impl Settings {
    pub fn from_env() -> Result<Settings> {
        let start_timeout = match std::env::var("SPFS_SERVICE_START_TIMEOUT") {
            Ok(text) if !text.trim().is_empty() => {
                parse_duration(&text).map_err(|problem| {
                    Error::Settings(format!(
                        "SPFS_SERVICE_START_TIMEOUT={text:?} is not a duration ({problem}); use seconds such as 10 or 2.5, or 500ms"
                    ))
                })?
            }
            _ => DEFAULT_START_TIMEOUT,
        };
        let idle_timeout = match std::env::var("SPFS_SERVICE_IDLE_TIMEOUT") {
            Ok(text) if !text.trim().is_empty() => Some(parse_duration(&text).map_err(|problem| {
                Error::Settings(format!(
                    "SPFS_SERVICE_IDLE_TIMEOUT={text:?} is not a duration ({problem}); use seconds such as 600, or 500ms, or unset it to keep the service running"
                ))
            })?),
            _ => None,
        };
        let service_bin = std::env::var_os("SPFS_FUSE_SERVICE_BIN")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        Ok(Settings {
            paths: Paths::from_env()?,
            start_timeout,
            service_bin,
            idle_timeout,
        })
    }
}

/// Parses `10`, `2.5`, `10s`, `500ms` into a positive duration.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{number:?} is not a number"))?;
    let seconds = value * scale;
    if !seconds.is_finite() || seconds <= 0.0 || seconds > 86_400.0 {
        return Err("it must be more than 0 and at most a day".into());
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2.5s"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("NaN").is_err());
    }
}
