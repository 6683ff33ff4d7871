//! `spfs runtime list|info|remove|prune`: the runtimes the service knows,
//! running and stopped (durable ones, and those a dead service left), by
//! name, as spfs's runtime commands name them. With no service running,
//! nothing runs, and the stopped runtimes are read from (and removed in)
//! the scratch dir directly, without starting one.

use std::process::ExitCode;

use super::runner::{self as repo, Out};
use super::{block_on, current};
use crate::client::ControlClient;
use crate::error::{Error, Result};
use crate::launcher::probe::{probe, Probe};
use crate::proto::{StatusRequest, UnmountRequest};
use crate::runtime::RuntimeInfo;
use crate::settings::Settings;

/// Every runtime, running then stopped, and a channel to their service
/// (if one runs; else the stopped ones come from the scratch dir).
async fn live(
    settings: &Settings,
) -> Result<(Vec<RuntimeInfo>, Option<tonic::transport::Channel>)> {
    let socket = settings.paths.socket();
    let channel = match probe(&socket).await {
        Probe::Serving { channel, .. } | Probe::NotServing(channel) => channel,
        Probe::Absent { .. } => {
            let scratch_dir = &settings.paths.scratch_dir;
            let stopped = crate::runtime::state::on_disk(scratch_dir)
                .into_values()
                .map(|state| RuntimeInfo::stopped(state, scratch_dir))
                .collect();
            return Ok((stopped, None));
        }
        refused => return Err(refused.refusal(&settings.paths)),
    };
    let status = ControlClient::new(channel.clone())
        .status(crate::telemetry::otel::traced(StatusRequest {}))
        .await
        .map_err(|s| Error::rpc("Status failed", s))?
        .into_inner();
    let all = status
        .runtimes
        .into_iter()
        .chain(status.stopped)
        .map(crate::client::runtime_info)
        .collect();
    Ok((all, Some(channel)))
}

/// The running service's pid, from its pidfile.
fn service_pid(settings: &Settings) -> Option<u32> {
    crate::contract::pidfile::read_pid(&settings.paths.pidfile())
        .and_then(|pid| u32::try_from(pid).ok())
}

/// Deletes stopped runtime `name`: through the service when one runs (it
/// owns the list), else in the scratch dir (no service: nothing runs).
async fn remove_stopped(
    settings: &Settings,
    channel: &Option<tonic::transport::Channel>,
    name: &str,
) -> Result<()> {
    match channel {
        Some(channel) => current::remove_runtime(channel, name).await,
        None => {
            let path = settings.paths.scratch_dir.join(name);
            let state = crate::runtime::RuntimeState::read(&path).ok();
            crate::runtime::scratch::remove_stopped(&path, name).map_err(|e| match e.kind() {
                std::io::ErrorKind::ResourceBusy => Error::Usage(e.to_string()),
                _ => Error::io(format!("cannot delete {}", path.display()), e),
            })?;
            // Its spfs records go with it (the service does this when it runs).
            let local = state.as_ref().and_then(|s| s.repositories.first());
            if let Some(repo) = local.and_then(|r| crate::storage::fs::FsRepository::open(r).ok()) {
                if let Err(err) = crate::runtime::record::remove(&repo, name) {
                    eprintln!("spfs runtime remove: warning: cannot remove the runtime's record in {}: {err}", repo.root().display());
                }
            }
            Ok(())
        }
    }
}

fn find<'a>(runtimes: &'a [RuntimeInfo], name: &str) -> Result<&'a RuntimeInfo> {
    runtimes.iter().find(|r| r.name() == name).ok_or_else(|| {
        Error::Usage(format!(
            "no runtime named {:?} (see `spfs runtime list`)",
            crate::telemetry::short(name)
        ))
    })
}

/// The word `spfs runtime list` shows for a runtime's state, as spfs
/// words it: `running` (it has processes), `saved` (stopped and kept,
/// durable), `stopped` (stopped, left behind by a service that died).
pub fn status_word(runtime: &RuntimeInfo) -> &'static str {
    match (runtime.is_running(), runtime.state.durable) {
        (true, _) => "running",
        (false, true) => "saved",
        (false, false) => "stopped",
    }
}

/// One line of `spfs runtime list`, as spfs prints it, then our `ref=`.
pub fn list_line(runtime: &RuntimeInfo) -> String {
    let pid = match runtime.root_pid {
        Some(pid) => pid.to_string(),
        None => "unknown".to_string(),
    };
    let state = &runtime.state;
    format!(
        "{:37}\trunning={}\tpid={pid:<7}\teditable={}\tdurable={}\tstatus={}\tref={}",
        state.name,
        runtime.is_running(),
        state.editable,
        state.durable,
        status_word(runtime),
        if state.env_spec.is_empty() {
            "-"
        } else {
            &state.env_spec
        }
    )
}

/// `spfs runtime list [-q]`: one line per runtime, running then stopped
/// (names only with `-q`).
pub fn runtime_list(quiet: bool) -> ExitCode {
    repo::run("spfs runtime list", || {
        let settings = Settings::from_env()?;
        let (runtimes, _) = block_on(live(&settings))?;
        let mut out = Out::new();
        for runtime in &runtimes {
            if quiet {
                out.line(runtime.name())?;
            } else {
                out.line(list_line(runtime))?;
            }
        }
        out.finish()?;
        Ok(ExitCode::SUCCESS)
    })
}

/// A runtime as `spfs runtime info` prints it: spfs's runtime JSON, the
/// record spfs's own tools read (`runtime::record`), with `monitor` the
/// service's pid.
pub fn info_record(
    runtime: &RuntimeInfo,
    paths: &crate::paths::Paths,
    service_pid: Option<u32>,
) -> crate::runtime::record::Record {
    let place = crate::runtime::record::Place {
        runtime_dir: paths.runtime_dir.clone(),
        mountpoint: paths.mountpoint.clone(),
        startup_files: crate::startup::files_dir(&paths.runtime_dir, &paths.mountpoint),
        monitor: service_pid,
    };
    crate::runtime::record::Record::of(runtime, &place)
}

/// `spfs runtime info [NAME]`: the runtime as JSON; NAME defaults to the
/// runtime this command runs in (`SPFS_RUNTIME`).
pub fn runtime_info(name: Option<&str>, get: &super::AnnotationAsk) -> ExitCode {
    repo::run("spfs runtime info", || {
        let name = match name {
            Some(name) => name.to_owned(),
            None => std::env::var(crate::contract::RUNTIME_VAR)
                .ok()
                .filter(|n| !n.is_empty())
                .ok_or_else(|| Error::NoRuntime {
                    why: format!("{} is not set", crate::contract::RUNTIME_VAR),
                    hint: "give a runtime NAME (see `spfs runtime list`)".into(),
                })?,
        };
        let settings = Settings::from_env()?;
        let (runtimes, channel) = block_on(live(&settings))?;
        let runtime = find(&runtimes, &name)?;
        let mut out = Out::new();
        if get.keys.is_empty() && !get.all {
            let service_pid = channel.is_some().then(|| service_pid(&settings)).flatten();
            let record = info_record(runtime, &settings.paths, service_pid);
            out.line(record.to_pretty_json())?;
        } else {
            let repos = current::runtime_repositories(runtime)?;
            super::inspect::print_annotations(&mut out, &repos, runtime, get)?;
        }
        out.finish()?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Why `spfs runtime remove` will not remove a runtime.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// Its processes still run (exit 1, as spfs for a live monitor).
    Running(String),
    /// Durable, and `--remove-durable` was not given (exit 2, as spfs).
    Durable(String),
}

fn check_removal(runtime: &RuntimeInfo, force: bool, remove_durable: bool) -> Option<Refusal> {
    let name = runtime.name();
    if runtime.is_running() && !force {
        return Some(Refusal::Running(format!(
            "won't remove {name} (pid {}): still running, and its processes would lose /spfs; use --force to end it now",
            runtime.root_pid.unwrap_or(0)
        )));
    }
    if runtime.state.durable && !remove_durable {
        return Some(Refusal::Durable(format!(
            "won't remove {name}: the runtime is durable (--keep-runtime) and its changes would be lost; use --remove-durable to remove it"
        )));
    }
    None
}

/// `spfs runtime remove NAME... [--force] [--remove-durable]`: deletes
/// stopped runtimes and their changes, and ends running ones now (only
/// with `--force`: their processes lose `/spfs`). Nothing is removed if
/// any NAME is refused.
pub fn runtime_remove(names: &[String], force: bool, remove_durable: bool) -> ExitCode {
    repo::run("spfs runtime remove", || {
        let settings = Settings::from_env()?;
        block_on(async {
            let (runtimes, channel) = live(&settings).await?;
            let targets = names
                .iter()
                .map(|name| find(&runtimes, name))
                .collect::<Result<Vec<_>>>()?;
            for runtime in &targets {
                match check_removal(runtime, force, remove_durable) {
                    None => {}
                    Some(Refusal::Running(why)) => return Err(Error::Usage(why)),
                    Some(Refusal::Durable(why)) => {
                        eprintln!("spfs runtime remove: error: {why}");
                        return Ok(ExitCode::from(2));
                    }
                }
            }
            for runtime in targets {
                if let (Some(pid), Some(channel)) = (runtime.root_pid, &channel) {
                    ControlClient::new(channel.clone())
                        .unmount(crate::telemetry::otel::traced(UnmountRequest {
                            root_pid: pid.into(),
                        }))
                        .await
                        .map_err(|s| Error::rpc(format!("cannot remove {}", runtime.name()), s))?;
                }
                // Ended, a durable runtime (or one the service keeps) is
                // stopped with its changes: those go too.
                if runtime.root_pid.is_none() || runtime.state.durable {
                    remove_stopped(&settings, &channel, runtime.name()).await?;
                }
                eprintln!("removed runtime {}", runtime.name());
            }
            Ok(ExitCode::SUCCESS)
        })
    })
}

/// The stopped runtimes `spfs runtime prune` removes: every one that is
/// not durable, and the durable ones too with `remove_durable`.
fn prunable(
    runtimes: &[RuntimeInfo],
    remove_durable: bool,
) -> (Vec<&RuntimeInfo>, Vec<&RuntimeInfo>) {
    runtimes
        .iter()
        .filter(|r| !r.is_running())
        .partition(|r| remove_durable || !r.state.durable)
}

/// `spfs runtime prune [--remove-durable]`: removes the stopped runtimes
/// and their changes (durable ones only with `--remove-durable`); running
/// runtimes are never touched. Prints `Pruned runtime NAME` for each, as
/// spfs does.
pub fn runtime_prune(remove_durable: bool) -> ExitCode {
    repo::run("spfs runtime prune", || {
        let settings = Settings::from_env()?;
        block_on(async {
            let (runtimes, channel) = live(&settings).await?;
            let (prune, kept) = prunable(&runtimes, remove_durable);
            for runtime in kept {
                eprintln!(
                    "Won't delete {}: the runtime is durable; use --remove-durable to remove durable runtimes",
                    runtime.name()
                );
            }
            let mut code = ExitCode::SUCCESS;
            for runtime in prune {
                match remove_stopped(&settings, &channel, runtime.name()).await {
                    Ok(()) => eprintln!("Pruned runtime {}", runtime.name()),
                    Err(err) => {
                        eprintln!("spfs runtime prune: error: {}", err.with_fix());
                        code = ExitCode::FAILURE;
                    }
                }
            }
            Ok(code)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(name: &str, running: bool, durable: bool) -> RuntimeInfo {
        RuntimeInfo {
            state: crate::runtime::RuntimeState {
                name: name.into(),
                env_spec: "base".into(),
                stack: Vec::new(),
                repositories: Vec::new(),
                editable: true,
                durable,
                created_unix: 0,
                command: Vec::new(),
            },
            root_pid: running.then_some(42),
            since_unix: 0,
            scratch_dir: None,
        }
    }

    #[test]
    fn list_lines_show_state_as_spfs_does() {
        let line = list_line(&runtime("rt-1", true, false));
        assert_eq!(
            line,
            format!(
                "{:37}\trunning=true\tpid=42     \teditable=true\tdurable=false\tstatus=running\tref=base",
                "rt-1"
            )
        );
        let saved = list_line(&runtime("rt-2", false, true));
        assert!(saved.contains("running=false\tpid=unknown\t"), "{saved}");
        assert!(saved.contains("status=saved"), "{saved}");
        assert_eq!(status_word(&runtime("x", false, false)), "stopped");
    }

    #[test]
    fn removal_refuses_running_and_durable_runtimes_unless_told() {
        let running = runtime("a", true, false);
        assert!(matches!(
            check_removal(&running, false, false),
            Some(Refusal::Running(_))
        ));
        assert_eq!(check_removal(&running, true, false), None);
        let saved = runtime("b", false, true);
        assert!(matches!(
            check_removal(&saved, true, false),
            Some(Refusal::Durable(_))
        ));
        // running and durable: --force ends it, --remove-durable is needed too
        let live_durable = runtime("d", true, true);
        assert!(matches!(
            check_removal(&live_durable, true, false),
            Some(Refusal::Durable(_))
        ));
        assert_eq!(check_removal(&live_durable, true, true), None);
        assert_eq!(check_removal(&saved, false, true), None);
        assert_eq!(
            check_removal(&runtime("c", false, false), false, false),
            None
        );
    }

    #[test]
    fn prune_takes_stopped_runtimes_and_durable_ones_only_when_told() {
        let all = [
            runtime("run", true, false),
            runtime("saved", false, true),
            runtime("left", false, false),
        ];
        let names =
            |list: Vec<&RuntimeInfo>| list.iter().map(|r| r.name().to_owned()).collect::<Vec<_>>();
        let (prune, kept) = prunable(&all, false);
        assert_eq!(
            (names(prune), names(kept)),
            (vec!["left".to_string()], vec!["saved".to_string()])
        );
        let (prune, kept) = prunable(&all, true);
        assert_eq!(names(prune), ["saved", "left"]);
        assert!(kept.is_empty());
    }
}
