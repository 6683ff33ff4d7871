//! What the launcher and the service must agree on, in one place both sides
//! import. It imports nothing of this crate, so nothing it holds can pull
//! either side into the other: the version and the headers that carry it,
//! the readiness pipe (its fd variable and its line format, [`ready`]),
//! the reasons a start fails ([`StartReason`]), the longest env spec either
//! side accepts, the runtime-name rules, the variable that names a process's
//! runtime, and the read side of the service's pidfile ([`pidfile`]).

pub mod pidfile;
pub mod ready;

use std::time::{SystemTime, UNIX_EPOCH};

pub use ready::{ReadyLine, StartReason, READY_FD_VAR};

/// This build's version; launcher and service compare it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Header carrying the service's version on every response.
pub const VERSION_HEADER: &str = "spfs-service-version";

/// Header of a launcher's warm-path `Mount`: the launcher's version. A
/// service of another version refuses the `Mount` before recording anything.
pub const LAUNCHER_VERSION_HEADER: &str = "spfs-launcher-version";

/// The service binary's file name, looked for beside `spfs` and on PATH.
pub const SERVICE_BIN_NAME: &str = "spfs-fuse-macos";

/// The environment variable that names a process's runtime (as spfs sets it).
pub const RUNTIME_VAR: &str = "SPFS_RUNTIME";

/// Where a runtime's startup scripts are, below the mountpoint, by
/// component (spfs's `/spfs/etc/spfs/startup.d`): the service says what is
/// there in its `Mount` answer, the launcher sources them.
pub const STARTUP_DIR: [&str; 3] = ["etc", "spfs", "startup.d"];

/// Longest env spec accepted, by the launcher before it starts a service
/// and by the service before it parses one; far beyond any real stack.
pub const MAX_ENV_SPEC_BYTES: usize = 64 * 1024;

/// Longest runtime name.
pub const MAX_NAME_BYTES: usize = 200;

/// [`check_name`]'s rules, as messages state them.
pub const NAME_RULES: &str = "use 1 to 200 letters, digits, '-', '_' or '.', not starting with '.'";

/// A runtime name that breaks [`check_name`]'s rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadName;

/// A runtime name as `SPFS_RUNTIME` carries it and the scratch dir names a
/// directory after it: 1 to [`MAX_NAME_BYTES`] letters, digits, `-`, `_`,
/// `.`, not starting with `.`: so never `.` or `..` (the scratch dir
/// itself, or the directory above it) nor a hidden name.
pub fn check_name(name: &str) -> Result<(), BadName> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= MAX_NAME_BYTES
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(BadName)
    }
}

/// A fresh runtime name for root process `pid`: the pid and the time in
/// nanoseconds, unique on this machine.
pub fn generated_name(pid: i32) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("spfs-{pid}-{nanos:x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_as_stated_name_the_limit() {
        assert!(NAME_RULES.contains(&MAX_NAME_BYTES.to_string()));
    }

    #[test]
    fn generated_names_pass_the_name_rules_and_others_are_checked() {
        let name = generated_name(i32::MAX);
        assert_eq!(check_name(&name), Ok(()), "{name}");
        assert_ne!(name, generated_name(i32::MAX));
        for good in ["a", "build-1.2_x", &"n".repeat(MAX_NAME_BYTES)] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            "é",
            &"n".repeat(MAX_NAME_BYTES + 1),
        ] {
            assert_eq!(check_name(bad), Err(BadName), "{bad}");
        }
    }
}
