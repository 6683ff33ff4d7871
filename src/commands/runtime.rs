//! `spfs runtime list|info|remove`: the runtimes the service shows now, by
//! name, as spfs's runtime commands name them. With no service running there
//! is no runtime.

use std::process::ExitCode;

use serde_json::json;

use super::client_runtime;
use super::runner::{self as repo, Out};
use crate::client::ControlClient;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::launcher::probe::{probe, Probe};
use crate::proto::{Runtime, StatusRequest, UnmountRequest};

/// The live runtimes, and a channel to their service (if one runs).
async fn live(config: &Config) -> Result<(Vec<Runtime>, Option<tonic::transport::Channel>)> {
    let socket = config.paths.socket();
    let channel = match probe(&socket).await {
        Probe::Serving(channel, _) | Probe::NotServing(channel) => channel,
        Probe::Absent { .. } => return Ok((Vec::new(), None)),
        refused => return Err(refused.refusal(&config.paths)),
    };
    let status = ControlClient::new(channel.clone())
        .status(crate::telemetry::otel::traced(StatusRequest {}))
        .await
        .map_err(|s| Error::rpc("Status failed", s))?
        .into_inner();
    Ok((status.runtimes, Some(channel)))
}

fn find<'a>(runtimes: &'a [Runtime], name: &str) -> Result<&'a Runtime> {
    runtimes.iter().find(|r| r.name == name).ok_or_else(|| {
        Error::Config(format!(
            "no runtime named {:?} is running (see `spfs runtime list`)",
            crate::tracking::env_spec::shorten(name)
        ))
    })
}

/// `spfs runtime list [-q]`: one line per live runtime (names only with `-q`).
pub fn runtime_list(quiet: bool) -> ExitCode {
    repo::run("spfs runtime list", || {
        let config = Config::from_env()?;
        let (runtimes, _) = client_runtime().block_on(live(&config))?;
        let mut out = Out::new();
        for runtime in &runtimes {
            if quiet {
                out.line(&runtime.name)?;
            } else {
                out.line(format_args!(
                    "{:37}\trunning=true\tpid={:<7}\teditable=false\tdurable=false\tstatus=running\tref={}",
                    runtime.name, runtime.root_pid, runtime.env_spec
                ))?;
            }
        }
        out.finish()?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `spfs runtime info [NAME]`: the runtime as JSON; NAME defaults to the
/// runtime this command runs in (`SPFS_RUNTIME`).
pub fn runtime_info(name: Option<&str>) -> ExitCode {
    repo::run("spfs runtime info", || {
        let name = match name {
            Some(name) => name.to_owned(),
            None => std::env::var(crate::platform::RUNTIME_VAR)
                .ok()
                .filter(|n| !n.is_empty())
                .ok_or_else(|| {
                    Error::Config(
                        "no active runtime: give a runtime NAME (see `spfs runtime list`)".into(),
                    )
                })?,
        };
        let config = Config::from_env()?;
        let (runtimes, _) = client_runtime().block_on(live(&config))?;
        let runtime = find(&runtimes, &name)?;
        let info = json!({
            "name": runtime.name,
            "root_pid": runtime.root_pid,
            "env_spec": runtime.env_spec,
            "since_unix": runtime.since_unix,
            "editable": false,
            "durable": false,
            "status": "running",
        });
        let mut out = Out::new();
        out.line(serde_json::to_string_pretty(&info).unwrap_or_default())?;
        out.finish()?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `spfs runtime remove NAME... [--force]`: ends live runtimes now. A
/// running runtime is only ended with `--force` (its processes lose `/spfs`).
pub fn runtime_remove(names: &[String], force: bool) -> ExitCode {
    repo::run("spfs runtime remove", || {
        let config = Config::from_env()?;
        client_runtime().block_on(async {
            let (runtimes, channel) = live(&config).await?;
            let targets = names
                .iter()
                .map(|name| find(&runtimes, name))
                .collect::<Result<Vec<_>>>()?;
            if !force {
                let running: Vec<String> = targets
                    .iter()
                    .map(|r| format!("{} (pid {})", r.name, r.root_pid))
                    .collect();
                return Err(Error::Config(format!(
                    "won't remove {}: still running, and its processes would lose /spfs; use --force to end it now",
                    running.join(", ")
                )));
            }
            let Some(channel) = channel else {
                return Ok(ExitCode::SUCCESS);
            };
            for runtime in targets {
                ControlClient::new(channel.clone())
                    .unmount(crate::telemetry::otel::traced(UnmountRequest {
                        root_pid: runtime.root_pid,
                    }))
                    .await
                    .map_err(|s| Error::rpc(format!("cannot remove {}", runtime.name), s))?;
                eprintln!("removed runtime {}", runtime.name);
            }
            Ok(ExitCode::SUCCESS)
        })
    })
}
