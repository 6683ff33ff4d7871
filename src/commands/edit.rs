//! The commands that work on the changes of the runtime they run in:
//! `spfs edit [--off]`, `spfs reset [PATHS]...`, `spfs diff`, and our own
//! `spfs runtime change-stack REF` (spk-style builds: another stack, the
//! same edits). Each asks the service, which checks that the caller is a
//! process of that runtime.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use super::block_on;
use super::current::{self, Hint};
use super::runner::{self, Out};
use crate::error::{Error, Result};
use crate::proto::Editability;
use crate::runtime::changes::{self, Change, ChangeKind};
use crate::settings::Settings;
use crate::tracking::env_spec::EnvSpec;

/// `spfs edit [--off]`: make the runtime editable, or read-only keeping
/// its changes. As in spfs, making an editable runtime editable is an error.
pub fn edit(off: bool, keep_runtime: bool) -> ExitCode {
    runner::run("spfs edit", || {
        let name = current::active_name(Hint::Run)?;
        let settings = Settings::from_env()?;
        block_on(async {
            let channel = current::connect(&settings, &name).await?;
            if off {
                current::edit(&channel, &name, false).await?;
                eprintln!("edit mode disabled");
            } else {
                let runtime = current::get_runtime(&channel, &name).await?;
                let keep = keep_runtime && !runtime.state.durable;
                if runtime.state.editable && !keep {
                    return Err(Error::Usage(format!("runtime {name} is already editable")));
                }
                current::edit_keeping(&channel, &name, true, keep_runtime).await?;
                if !runtime.state.editable {
                    eprintln!("edit mode enabled");
                }
                if keep {
                    eprintln!("runtime {name} is durable: it is kept, with its changes, after its processes exit (`spfs run --rerun {name}`)");
                }
            }
            Ok(ExitCode::SUCCESS)
        })
    })
}

/// `spfs reset [-e] [--ref REF | PATHS...]`: drop the runtime's changes
/// (all, or those at and below PATHS), or show REF instead of the stack
/// with no changes. `-e` (or an empty REF) makes the runtime editable.
pub fn reset(paths: &[String], edit: bool, reference: Option<&str>) -> ExitCode {
    runner::run("spfs reset", || {
        let name = current::active_name(Hint::Run)?;
        let settings = Settings::from_env()?;
        let relative = relative_paths(paths, &settings.paths.mountpoint)?;
        block_on(async {
            let channel = current::connect(&settings, &name).await?;
            match reference {
                Some(reference) => {
                    let spec = EnvSpec::parse(reference)?;
                    current::change_stack(
                        &channel,
                        &name,
                        current::StackChange {
                            env_spec: spec.as_str(),
                            expected_stack: "",
                            drop_changes: true,
                            editable: if edit || spec.is_empty() {
                                Editability::Editable
                            } else {
                                Editability::Keep
                            },
                        },
                    )
                    .await?;
                }
                None => {
                    current::reset(&channel, &name, relative).await?;
                    if edit {
                        let runtime = current::get_runtime(&channel, &name).await?;
                        if !runtime.state.editable {
                            current::edit(&channel, &name, true).await?;
                        }
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        })
    })
}

/// The paths given to `spfs reset`, relative to the mountpoint.
fn relative_paths(paths: &[String], mountpoint: &Path) -> Result<Vec<String>> {
    paths
        .iter()
        .map(|path| {
            changes::mount_relative(path, mountpoint)
                .map_err(Error::Usage)
                .and_then(|p| {
                    p.into_os_string().into_string().map_err(|p| {
                        Error::Usage(format!("{p:?} is not UTF-8, so no layer can hold it"))
                    })
                })
        })
        .collect()
}

/// `spfs diff [FROM [TO]]`, one line per changed path (`+` added, `~`
/// changed, `-` removed), "no changes" on stderr when there are none. With
/// no argument: the changes of the runtime we are in against its stack;
/// with FROM: what the runtime shows against FROM; with FROM and TO: TO
/// against FROM, both refs resolved in the configured repositories (no
/// runtime needed).
pub fn diff(from: Option<&str>, to: Option<&str>) -> ExitCode {
    runner::run("spfs diff", || {
        let settings = Settings::from_env()?;
        let found = match (from, to) {
            (Some(from), Some(to)) => {
                let repos = super::repo::readable(None)?;
                changes::diff_manifests(
                    &changes::spec_manifest(from, &repos)?,
                    &changes::spec_manifest(to, &repos)?,
                )
            }
            (from, _) => {
                let name = current::active_name(Hint::Run)?;
                let runtime = block_on(async {
                    let channel = current::connect(&settings, &name).await?;
                    current::get_runtime(&channel, &name).await
                })?;
                let repos = current::runtime_repositories(&runtime)?;
                let base = changes::base_manifest(&runtime.state.stack, &repos)?;
                let scratch = current::open_scratch(&runtime)?;
                match (from, scratch) {
                    (None, None) => Vec::new(),
                    (None, Some(scratch)) => changes::diff(&scratch, &base)?,
                    (Some(from), scratch) => {
                        let shown = match scratch {
                            Some(scratch) => changes::visible_manifest(&scratch, &base)?,
                            None => base,
                        };
                        changes::diff_manifests(&changes::spec_manifest(from, &repos)?, &shown)
                    }
                }
            }
        };
        if found.is_empty() {
            eprintln!("no changes");
            return Ok(ExitCode::SUCCESS);
        }
        let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        let mut out = Out::new();
        for change in &found {
            out.line(diff_line(change, &settings.paths.mountpoint, color))?;
        }
        out.finish()?;
        Ok(ExitCode::SUCCESS)
    })
}

/// One line of `spfs diff`, colored as spfs colors it on a terminal.
fn diff_line(change: &Change, mountpoint: &Path, color: bool) -> String {
    let text = change.format(mountpoint);
    if !color {
        return text;
    }
    let code = match change.kind {
        ChangeKind::Added => "32",
        ChangeKind::Removed => "31",
        ChangeKind::Changed => "94",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// `spfs runtime change-stack REF [--drop-changes]`: show REF (the whole
/// new stack, bottom to top) in the runtime we are in, keeping its changes
/// unless asked to drop them. Refused if the stack changed meanwhile.
pub fn change_stack(reference: &str, drop_changes: bool) -> ExitCode {
    runner::run("spfs runtime change-stack", || {
        let spec = EnvSpec::parse(reference)?;
        let name = current::active_name(Hint::Run)?;
        let settings = Settings::from_env()?;
        let changed = block_on(async {
            let channel = current::connect(&settings, &name).await?;
            let runtime = current::get_runtime(&channel, &name).await?;
            let expected = current::stack_spec(&runtime);
            current::change_stack(
                &channel,
                &name,
                current::StackChange {
                    env_spec: spec.as_str(),
                    expected_stack: &expected,
                    drop_changes,
                    editable: Editability::Keep,
                },
            )
            .await
        })?;
        eprintln!(
            "runtime {name} now shows {}{}",
            if changed.state.stack.is_empty() {
                "no layer".to_string()
            } else {
                changed.state.stack.join("+")
            },
            if drop_changes {
                ", without its changes"
            } else {
                ""
            }
        );
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::EntryKind;
    use crate::runtime::changes::EntryMeta;

    #[test]
    fn reset_paths_are_made_relative_to_the_mountpoint() {
        let mnt = Path::new("/spfs");
        let given = ["/spfs/bin/tool".to_string(), "lib".to_string()];
        assert_eq!(relative_paths(&given, mnt).unwrap(), ["bin/tool", "lib"]);
        let err = relative_paths(&["/etc".to_string()], mnt).unwrap_err();
        assert!(
            err.to_string().contains("not below the mountpoint"),
            "{err}"
        );
    }

    #[test]
    fn diff_lines_are_colored_only_on_request() {
        let meta = |mode| EntryMeta {
            kind: EntryKind::Blob,
            mode,
            size: 1,
        };
        let change = Change {
            kind: ChangeKind::Changed,
            path: "bin/tool".into(),
            before: Some(meta(0o100644)),
            after: Some(meta(0o100755)),
            content: false,
        };
        let mnt = Path::new("/spfs");
        assert_eq!(
            diff_line(&change, mnt, false),
            "~/spfs/bin/tool [mode {100644=>100755}]"
        );
        assert_eq!(
            diff_line(&change, mnt, true),
            "\x1b[94m~/spfs/bin/tool [mode {100644=>100755}]\x1b[0m"
        );
    }
}
