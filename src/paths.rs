//! Where things live: the runtime dir (socket, locks, pidfile), the log dir,
//! the mountpoint and the scratch dir (editable runtimes' changes), with
//! their platform defaults and environment overrides; where spfs's own
//! configuration is read from; and the safety check every process runs
//! before it trusts the runtime dir.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::platform;
use crate::private_dir::{self, DirError};
use crate::storage::config::{ConfigError, Sources, SpfsConfig};
use crate::telemetry::Program;

/// Longest unix socket path this platform accepts: `sun_path` less its NUL
/// (macOS: 104 - 1 = 103 bytes; Linux: 108 - 1 = 107).
pub fn max_socket_path() -> usize {
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_path.len() - 1
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub runtime_dir: PathBuf,
    pub log_dir: PathBuf,
    pub mountpoint: PathBuf,
    /// Editable runtimes' changes, one directory per runtime name
    /// (`SPFS_SCRATCH_DIR`; default in the user's cache dir).
    pub scratch_dir: PathBuf,
}

impl Paths {
    /// Defaults for this user and platform, each overridden by its `SPFS_*` variable.
    pub fn from_env() -> Result<Paths> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let absolute = |name: &str, value: OsString| -> Result<PathBuf> {
            let path = PathBuf::from(value);
            if path.is_absolute() {
                Ok(path)
            } else {
                Err(Error::Settings(format!(
                    "{name}={} is not an absolute path; set it to an absolute path or unset it",
                    path.display()
                )))
            }
        };
        let pick = |name: &str, default: fn() -> std::io::Result<PathBuf>| match var(name) {
            Some(value) => absolute(name, value),
            // The one way a default fails: no home directory to put it in.
            None => default().map_err(|err| {
                Error::Settings(format!(
                    "{err}; set HOME, or set {name} (and SPFS_STORAGE_ROOT) to absolute paths"
                ))
            }),
        };
        Ok(Paths {
            runtime_dir: pick(Self::ENV_VARS[0], platform::default_runtime_dir)?,
            log_dir: pick(Self::ENV_VARS[1], platform::default_log_dir)?,
            mountpoint: pick(Self::ENV_VARS[2], || Ok(PathBuf::from("/spfs")))?,
            scratch_dir: pick("SPFS_SCRATCH_DIR", platform::default_scratch_dir)?,
        })
    }

    /// The variables that carry these paths to the service.
    pub const ENV_VARS: [&'static str; 3] = ["SPFS_RUNTIME_DIR", "SPFS_LOG_DIR", "SPFS_MOUNTPOINT"];

    /// These paths as the service's environment: it must agree with the
    /// launcher on every one, whatever its own defaults.
    pub fn to_env(&self) -> [(&'static str, &Path); 3] {
        let [runtime_dir, log_dir, mountpoint] = Self::ENV_VARS;
        [
            (runtime_dir, &self.runtime_dir),
            (log_dir, &self.log_dir),
            (mountpoint, &self.mountpoint),
        ]
    }

    pub fn socket(&self) -> PathBuf {
        self.runtime_dir.join("vfs.sock")
    }

    /// Held by the launcher that is starting the service, so racers start exactly one.
    pub fn spawn_lock(&self) -> PathBuf {
        self.runtime_dir.join("spawn.lock")
    }

    /// Locked by the running service for its whole life; holds its pid.
    pub fn pidfile(&self) -> PathBuf {
        self.runtime_dir.join("service.pid")
    }

    /// Symlink to the service's current JSON log file.
    pub fn service_log(&self) -> PathBuf {
        self.log_dir
            .join(format!("{}.log", Program::Service.prefix()))
    }

    /// Symlink to the launcher's current JSON log file.
    pub fn launcher_log(&self) -> PathBuf {
        self.log_dir
            .join(format!("{}.log", Program::Launcher.prefix()))
    }

    /// The service's stdout and stderr (panics, messages before logging starts).
    pub fn service_stderr(&self) -> PathBuf {
        self.log_dir
            .join(format!("{}.stderr", Program::Service.prefix()))
    }

    /// Creates the runtime dir (mode 0700) if needed and refuses one that another
    /// user owns, that is writable by group or others, or that is not a directory.
    pub fn ensure_runtime_dir(&self) -> Result<()> {
        let dir = &self.runtime_dir;
        private_dir::ensure(dir, "runtime dir", RUNTIME_DIR_SETTING)
            .map_err(|err| runtime_dir_error(dir, err))?;
        check_socket_path(&self.socket())
    }
}

/// Where spfs's own configuration comes from on this machine, as spfs reads
/// it: `/etc/spfs`, the user's `<config dir>/spfs/spfs`, this process's
/// environment; and spfs's default local repository, for a configuration
/// that names none.
pub fn spfs_config_sources() -> Sources {
    let mut file_stems = vec![PathBuf::from("/etc/spfs")];
    if let Ok(dir) = platform::user_config_dir() {
        file_stems.push(dir.join("spfs").join("spfs"));
    }
    Sources {
        file_stems,
        env: std::env::vars().collect(),
        default_root: platform::default_repository_root().ok(),
    }
}

/// spfs's configuration as spfs reads it on this machine.
pub fn load_spfs_config() -> std::result::Result<SpfsConfig, ConfigError> {
    SpfsConfig::load_from(&spfs_config_sources())
}

/// A unix socket path must fit `sun_path`; a longer one fails with a clear error.
pub fn check_socket_path(socket: &Path) -> Result<()> {
    let len = socket.as_os_str().len();
    let max = max_socket_path();
    if len > max {
        return Err(Error::Settings(format!(
            "socket path {} is {len} bytes, longer than the {max} a unix socket allows here; set SPFS_RUNTIME_DIR to a shorter directory",
            socket.display(),
        )));
    }
    Ok(())
}

/// The ownership and mode rules, separate so `spfs doctor`-style checks can reuse them.
pub fn check_runtime_dir(dir: &Path) -> Result<()> {
    private_dir::check(dir, "runtime dir", RUNTIME_DIR_SETTING)
        .map_err(|err| runtime_dir_error(dir, err))
}

/// The variable that moves the scratch dir, and a safe value to suggest.
pub const SCRATCH_DIR_SETTING: (&str, &str) = ("SPFS_SCRATCH_DIR", "$HOME/.spfs-scratch");

/// The variable that moves the runtime dir, and a safe value to suggest.
const RUNTIME_DIR_SETTING: (&str, &str) = ("SPFS_RUNTIME_DIR", "$HOME/.spfs-run");

fn runtime_dir_error(dir: &Path, err: DirError) -> Error {
    match err {
        DirError::Unsafe { problem, fix } => Error::UnsafeRuntimeDir {
            path: dir.to_owned(),
            problem,
            fix,
        },
        DirError::Io { context, source } => Error::io(context, source),
    }
}

/// Creates the log dir (mode 0700) if needed and applies the runtime dir's
/// rules to it: our lines must not go where another user can redirect them.
pub fn ensure_log_dir(dir: &Path) -> std::result::Result<(), DirError> {
    private_dir::ensure(dir, "log dir", crate::telemetry::LOG_DIR_SETTING)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_path_limit_is_sun_path_less_its_nul() {
        let expected = if cfg!(target_os = "macos") { 103 } else { 107 };
        assert_eq!(max_socket_path(), expected);
        let fits = PathBuf::from(format!("/{}", "a".repeat(expected - 1)));
        assert!(check_socket_path(&fits).is_ok());
        let too_long = PathBuf::from(format!("/{}", "a".repeat(expected)));
        let err = check_socket_path(&too_long).unwrap_err().to_string();
        assert!(err.contains("SPFS_RUNTIME_DIR"), "{err}");
    }
}
