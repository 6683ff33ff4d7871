//! Where things live: the runtime dir (socket, locks, pidfile), the log dir,
//! the mountpoint and the scratch dir (editable runtimes' changes), with
//! their platform defaults and environment overrides; where spfs's own
//! configuration is read from; and the safety check every process runs
//! before it trusts the runtime dir.

use std::ffi::OsString;
use std::fs::DirBuilder;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::platform;
use crate::storage::config::{ConfigError, Sources, SpfsConfig};

/// Longest unix socket path this platform accepts: `sun_path` less its NUL
/// (macOS: 104 - 1 = 103 bytes; Linux: 108 - 1 = 107).
pub fn max_socket_path() -> usize {
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_path.len() - 1
}

/// File names in the log dir; `docs/logging.md` describes them.
pub const LAUNCHER_LOG_PREFIX: &str = "spfs";
pub const SERVICE_LOG_PREFIX: &str = "spfs-fuse-macos";

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
                Err(Error::Config(format!(
                    "{name}={} is not an absolute path; set it to an absolute path or unset it",
                    path.display()
                )))
            }
        };
        let pick = |name: &str, default: fn() -> std::io::Result<PathBuf>| match var(name) {
            Some(value) => absolute(name, value),
            // The one way a default fails: no home directory to put it in.
            None => default().map_err(|err| {
                Error::Config(format!(
                    "{err}; set HOME, or set {name} (and SPFS_STORAGE_ROOT) to absolute paths"
                ))
            }),
        };
        Ok(Paths {
            runtime_dir: pick("SPFS_RUNTIME_DIR", platform::default_runtime_dir)?,
            log_dir: pick("SPFS_LOG_DIR", platform::default_log_dir)?,
            mountpoint: pick("SPFS_MOUNTPOINT", || Ok(PathBuf::from("/spfs")))?,
            scratch_dir: pick("SPFS_SCRATCH_DIR", platform::default_scratch_dir)?,
        })
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
        self.log_dir.join(format!("{SERVICE_LOG_PREFIX}.log"))
    }

    /// Symlink to the launcher's current JSON log file.
    pub fn launcher_log(&self) -> PathBuf {
        self.log_dir.join(format!("{LAUNCHER_LOG_PREFIX}.log"))
    }

    /// The service's stdout and stderr (panics, messages before logging starts).
    pub fn service_stderr(&self) -> PathBuf {
        self.log_dir.join(format!("{SERVICE_LOG_PREFIX}.stderr"))
    }

    /// Creates the runtime dir (mode 0700) if needed and refuses one that another
    /// user owns, that is writable by group or others, or that is not a directory.
    pub fn ensure_runtime_dir(&self) -> Result<()> {
        let dir = &self.runtime_dir;
        if let Err(err) = DirBuilder::new().recursive(true).mode(0o700).create(dir) {
            return Err(Error::io(
                format!("cannot create runtime dir {}", dir.display()),
                err,
            ));
        }
        check_runtime_dir(dir)?;
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
        return Err(Error::Config(format!(
            "socket path {} is {len} bytes, longer than the {max} a unix socket allows here; set SPFS_RUNTIME_DIR to a shorter directory",
            socket.display(),
        )));
    }
    Ok(())
}

/// The ownership and mode rules, separate so `spfs doctor`-style checks can reuse them.
pub fn check_runtime_dir(dir: &Path) -> Result<()> {
    check_private_dir(
        dir,
        "runtime dir",
        ("SPFS_RUNTIME_DIR", "$HOME/.spfs-run"),
        |problem, fix| Error::UnsafeRuntimeDir {
            path: dir.to_owned(),
            problem,
            fix,
        },
    )
}

/// Creates the log dir (mode 0700) if needed and applies the runtime dir's
/// rules to it: our lines must not go where another user can redirect them.
pub fn ensure_log_dir(dir: &Path) -> Result<()> {
    if let Err(err) = DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        return Err(Error::io(
            format!("cannot create log dir {}", dir.display()),
            err,
        ));
    }
    check_private_dir(
        dir,
        "log dir",
        ("SPFS_LOG_DIR", "$HOME/.spfs-logs"),
        |problem, fix| Error::UnsafeLogDir {
            path: dir.to_owned(),
            problem,
            fix,
        },
    )
}

/// A directory that is ours alone: not a symlink, a directory, owned by us,
/// not writable by group or others. `setting` is the variable that moves it
/// and a safe value to suggest; `unsafe_dir(problem, fix)` makes the error.
fn check_private_dir(
    dir: &Path,
    what: &str,
    (variable, fallback): (&str, &str),
    unsafe_dir: impl Fn(String, String) -> Error,
) -> Result<()> {
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|err| Error::io(format!("cannot inspect {what} {}", dir.display()), err))?;
    if meta.file_type().is_symlink() {
        return Err(unsafe_dir(
            "it is a symlink".into(),
            format!(
                "remove the symlink {} or set {variable} to a real directory you own",
                dir.display()
            ),
        ));
    }
    if !meta.is_dir() {
        return Err(unsafe_dir(
            "it is not a directory".into(),
            format!("remove {} or set {variable} elsewhere", dir.display()),
        ));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(unsafe_dir(
            format!(
                "it is owned by uid {}, not by you (uid {me}): another user created it first",
                meta.uid()
            ),
            format!(
                "have that user or an admin remove it (`sudo rm -r {}`); until then, `export {variable}={fallback}` (any directory of your own)",
                dir.display(),
            ),
        ));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(unsafe_dir(
            format!("its mode is {mode:o}, writable by group or others"),
            format!("chmod 700 {}", dir.display()),
        ));
    }
    Ok(())
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
