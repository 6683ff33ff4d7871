//! How a command or an interactive shell enters a runtime: the runtime's
//! startup scripts (`etc/spfs/startup.d/*.sh`, or `*.csh` for csh users,
//! under the mountpoint: what spk packages set their environment with)
//! are sourced by the user's shell before the command runs or the prompt
//! shows, as spfs's `startup.sh` and `.cshrc` do.
//!
//! The shell is `$SHELL`'s family ([`Family`]): bash and POSIX sh, zsh
//! (the macOS default, which spfs replaces by bash: here it sources the
//! `.sh` scripts in sh emulation and keeps the user's `.zshrc`), and
//! csh/tcsh (the `.csh` scripts). A `spfs run` whose runtime has no
//! script for that family execs the command directly: no shell, no extra
//! process.
//!
//! The files the shells read are written once per mountpoint into the
//! user's private runtime dir ([`files`]); where spfs keeps them in a
//! per-runtime tmpfs, these do not depend on the runtime (the scripts are
//! found through the mountpoint, which shows each process its own).

mod files;

pub use files::dir as files_dir;

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What `spfs shell` prints on start unless `SPFS_SHELL_MESSAGE` is set
/// (even empty), as spfs does.
pub const DEFAULT_SHELL_MESSAGE: &str = "* You are now in a configured subshell *";

/// The kind of startup a shell gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// bash: `--init-file` for a shell (after the user's `~/.bashrc`).
    Bash,
    /// POSIX sh (dash, ksh, bash as `sh`): `$ENV` for a shell.
    Sh,
    /// zsh: `ZDOTDIR` for a shell; `.sh` scripts in sh emulation.
    Zsh,
    /// csh and tcsh: `HOME` for a shell, as spfs does; `.csh` scripts.
    Csh,
}

impl Family {
    /// The family of a shell by its file name; None for one we cannot
    /// start scripts in (fish, nu, ...).
    fn of(path: &Path) -> Option<Family> {
        let name = path.file_name()?.to_str()?;
        // a login shell's argv[0] may be `-zsh`; versioned names (`bash5`) too
        let name = name
            .trim_start_matches('-')
            .trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
        match name {
            "bash" => Some(Family::Bash),
            "sh" | "dash" | "ash" | "ksh" | "mksh" | "pdksh" | "yash" | "posh" => Some(Family::Sh),
            "zsh" => Some(Family::Zsh),
            "csh" | "tcsh" => Some(Family::Csh),
            _ => None,
        }
    }

    /// The script suffix this family sources.
    fn suffix(self) -> &'static str {
        match self {
            Family::Csh => ".csh",
            _ => ".sh",
        }
    }
}

/// The shell that runs the startup scripts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shell {
    pub path: PathBuf,
    pub family: Family,
}

impl Shell {
    /// `$SHELL` (looked up on `PATH` when not absolute). A shell of no
    /// family we know falls back to `bash` on `PATH`, as spfs does, then
    /// to `/bin/sh`; no `$SHELL` at all means `/bin/sh`.
    pub fn from_env() -> Shell {
        let fallback = || {
            find_on_path(OsStr::new("bash"))
                .map(|path| Shell {
                    path,
                    family: Family::Bash,
                })
                .unwrap_or_else(|| Shell {
                    path: "/bin/sh".into(),
                    family: Family::Sh,
                })
        };
        let Some(shell) = std::env::var_os("SHELL").filter(|s| !s.is_empty()) else {
            return Shell {
                path: "/bin/sh".into(),
                family: Family::Sh,
            };
        };
        let path = PathBuf::from(&shell);
        let path = match path.is_absolute() {
            true => Some(path),
            false => find_on_path(&shell),
        };
        match path.and_then(|path| Family::of(&path).map(|family| Shell { path, family })) {
            Some(shell) => shell,
            None => fallback(),
        }
    }
}

fn find_on_path(name: &OsStr) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The runtime's `startup.d` as the caller sees it.
pub fn startup_d(mountpoint: &Path) -> PathBuf {
    crate::contract::STARTUP_DIR
        .iter()
        .fold(mountpoint.to_owned(), |path, name| path.join(name))
}

/// Whether the runtime has a startup script `family` sources: among
/// `names` when the service said what `startup.d` holds (no lookup), else
/// as the caller sees the directory. An unreadable `startup.d` counts as
/// having some: the shell then meets the same error and says so.
pub fn has_scripts(mountpoint: &Path, family: Family, names: Option<&[String]>) -> bool {
    let sourced = |name: &str| name.ends_with(family.suffix());
    if let Some(names) = names {
        return names.iter().any(|name| sourced(name));
    }
    let entries = match std::fs::read_dir(startup_d(mountpoint)) {
        Ok(entries) => entries,
        Err(err) => {
            return !matches!(
                err.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            )
        }
    };
    entries
        .flatten()
        .any(|entry| entry.file_name().to_str().is_some_and(sourced))
}

/// `spfs run`'s command, after the startup scripts: the shell sources
/// them, then execs the command (same pid, same arguments, byte for byte:
/// they go by [`files::COMMAND_VAR`]). No user rc file is read for a
/// command (see docs/runtimes.md).
pub fn command(
    runtime_dir: &Path,
    mountpoint: &Path,
    shell: &Shell,
    program: &OsStr,
    args: &[OsString],
) -> io::Result<Command> {
    let files = files::ensure(runtime_dir, mountpoint)?;
    let mut command = Command::new(&shell.path);
    match shell.family {
        Family::Bash | Family::Sh => command.arg(files.join(files::SH)),
        Family::Zsh => command.arg("-f").arg(files.join(files::ZSH)),
        Family::Csh => command.arg("-f").arg(files.join(files::CSHRC)),
    };
    let words: Vec<&OsStr> = std::iter::once(program)
        .chain(args.iter().map(|a| a.as_os_str()))
        .collect();
    command.env(files::COMMAND_VAR, sh_quote_all(&words));
    for original in ORIGINALS {
        command.env_remove(original);
    }
    Ok(command)
}

/// What a shell's startup puts back (see [`interactive`]).
const ORIGINALS: [&str; 3] = [
    "SPFS_ORIGINAL_ENV",
    "SPFS_ORIGINAL_ZDOTDIR",
    "SPFS_ORIGINAL_HOME",
];

/// `spfs shell`'s interactive shell: the user's rc files, then the
/// startup scripts, then `SPFS_SHELL_MESSAGE` on stderr.
pub fn interactive(runtime_dir: &Path, mountpoint: &Path, shell: &Shell) -> io::Result<Command> {
    let files = files::ensure(runtime_dir, mountpoint)?;
    let mut command = Command::new(&shell.path);
    command.env_remove(files::COMMAND_VAR);
    if std::env::var_os("SPFS_SHELL_MESSAGE").is_none() {
        command.env("SPFS_SHELL_MESSAGE", DEFAULT_SHELL_MESSAGE);
    }
    match shell.family {
        Family::Bash => {
            command.arg("--init-file").arg(files.join(files::BASHRC));
        }
        Family::Sh => {
            keep_original(&mut command, "ENV", "SPFS_ORIGINAL_ENV");
            command.env("ENV", files.join(files::SHRC));
        }
        Family::Zsh => {
            keep_original(&mut command, "ZDOTDIR", "SPFS_ORIGINAL_ZDOTDIR");
            command.env("ZDOTDIR", &files);
        }
        Family::Csh => {
            keep_original(&mut command, "HOME", "SPFS_ORIGINAL_HOME");
            command.env("HOME", &files);
        }
    }
    Ok(command)
}

/// Passes `var`'s value on as `original` (the startup file puts it back),
/// so the shell can be pointed at ours.
fn keep_original(command: &mut Command, var: &str, original: &str) {
    match std::env::var_os(var) {
        Some(value) => command.env(original, value),
        None => command.env_remove(original),
    };
}

/// Words quoted for `/bin/sh`'s `eval "set -- ..."`: each in single
/// quotes, a quote inside as `'\\''`; any bytes but NUL (which no argument
/// holds) pass.
fn sh_quote_all(words: &[&OsStr]) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut quoted = Vec::new();
    for word in words {
        if !quoted.is_empty() {
            quoted.push(b' ');
        }
        quoted.push(b'\'');
        for &byte in word.as_bytes() {
            match byte {
                b'\'' => quoted.extend_from_slice(b"'\\''"),
                _ => quoted.push(byte),
            }
        }
        quoted.push(b'\'');
    }
    OsString::from_vec(quoted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shells_are_known_by_their_file_names() {
        let of = |p: &str| Family::of(Path::new(p));
        assert_eq!(of("/bin/bash"), Some(Family::Bash));
        assert_eq!(of("/opt/homebrew/bin/bash5"), Some(Family::Bash));
        assert_eq!(of("/bin/zsh"), Some(Family::Zsh));
        assert_eq!(of("-zsh"), Some(Family::Zsh));
        assert_eq!(of("/bin/sh"), Some(Family::Sh));
        assert_eq!(of("/usr/bin/dash"), Some(Family::Sh));
        assert_eq!(of("/bin/tcsh"), Some(Family::Csh));
        assert_eq!(of("/bin/csh"), Some(Family::Csh));
        assert_eq!(of("/usr/bin/fish"), None);
    }

    #[test]
    fn words_are_quoted_for_sh_whatever_they_hold() {
        let words: Vec<&OsStr> = ["a b", "", "$HOME", "it's", "\"q\""]
            .iter()
            .map(OsStr::new)
            .collect();
        assert_eq!(sh_quote_all(&words), r#"'a b' '' '$HOME' 'it'\''s' '"q"'"#);
    }
}
