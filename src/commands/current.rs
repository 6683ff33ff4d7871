//! The runtime a command runs in: its name (`SPFS_RUNTIME`), the service
//! that holds it (never started here: with no service there is no runtime),
//! and its facts (`GetRuntime`; the service checks that the caller is one
//! of its processes). Also the other control calls on one runtime that
//! `spfs commit`, `edit`, `reset`, `diff` and `runtime` share.

use tonic::transport::Channel;

use crate::client::ControlClient;
use crate::error::{Error, Result};
use crate::launcher::probe::{probe, Probe};
use crate::proto::{
    ChangeStackRequest, EditRequest, Editability, GetRuntimeRequest, RemoveRuntimeRequest,
    ResetRequest, Runtime,
};
use crate::runtime::RuntimeInfo;
use crate::runtime::Scratch;
use crate::settings::Settings;
use crate::storage::proxy::ProxyRepository;
use crate::telemetry::otel::traced;

/// What a command inside a runtime tells the user to do when there is none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hint {
    /// Any command that needs the runtime.
    Run,
    /// `spfs commit`, which can also commit a directory.
    Commit,
}

/// The name of the runtime this process runs in, from `value` (the value
/// of `SPFS_RUNTIME`), or the error spfs gives outside a runtime.
pub fn runtime_name(value: Option<String>, hint: Hint) -> Result<String> {
    match value.filter(|v| !v.is_empty()) {
        Some(name) => Ok(name),
        None => {
            let hint = match hint {
                Hint::Run => "run this inside a runtime: `spfs run -e REF -- CMD` or `spfs shell -e REF`",
                Hint::Commit => "run this inside an editable runtime (`spfs shell -e REF`), or commit a directory with `spfs commit --path DIR`",
            };
            Err(Error::NoRuntime {
                why: format!("{} is not set", crate::contract::RUNTIME_VAR),
                hint: hint.into(),
            })
        }
    }
}

/// [`runtime_name`] from this process's environment.
pub fn active_name(hint: Hint) -> Result<String> {
    runtime_name(std::env::var(crate::contract::RUNTIME_VAR).ok(), hint)
}

/// A channel to the running service; never starts one.
pub async fn connect(settings: &Settings, name: &str) -> Result<Channel> {
    let socket = settings.paths.socket();
    match probe(&socket).await {
        Probe::Serving { channel, .. } | Probe::NotServing(channel) => Ok(channel),
        Probe::Absent { .. } => Err(Error::NoRuntime {
            why: format!(
                "{}={name:?}, but no spfs service is running on {} (it stopped, and the runtime with it)",
                crate::contract::RUNTIME_VAR,
                socket.display()
            ),
            hint: "start a new runtime with `spfs run` or `spfs shell`".into(),
        }),
        refused => Err(refused.refusal(&settings.paths)),
    }
}

/// A control call's failure, worded for the user: a service too old for
/// the call says so.
pub fn rpc_error(what: &str, call: &'static str, status: tonic::Status) -> Error {
    if status.code() == tonic::Code::Unimplemented {
        Error::ServiceTooOld {
            what: what.to_owned(),
            call,
        }
    } else {
        Error::rpc(what.to_owned(), status)
    }
}

pub async fn get_runtime(channel: &Channel, name: &str) -> Result<RuntimeInfo> {
    let response = ControlClient::new(channel.clone())
        .get_runtime(traced(GetRuntimeRequest { name: name.into() }))
        .await
        .map_err(|s| rpc_error(&format!("cannot read runtime {name}"), "GetRuntime", s))?;
    answered(response.into_inner().runtime, name)
}

pub async fn edit(channel: &Channel, name: &str, editable: bool) -> Result<RuntimeInfo> {
    edit_keeping(channel, name, editable, false).await
}

/// [`edit`], also making the runtime durable when `keep_runtime`.
pub async fn edit_keeping(
    channel: &Channel,
    name: &str,
    editable: bool,
    keep_runtime: bool,
) -> Result<RuntimeInfo> {
    let what = if editable {
        format!("cannot make runtime {name} editable")
    } else {
        format!("cannot make runtime {name} read-only")
    };
    let response = ControlClient::new(channel.clone())
        .edit(traced(EditRequest {
            name: name.into(),
            editable,
            only_if_editable: false,
            keep_runtime,
        }))
        .await
        .map_err(|s| rpc_error(&what, "Edit", s))?;
    answered(response.into_inner().runtime, name)
}

/// A commit's freeze: the runtime read-only, refused when something froze
/// it first (another commit), so this one never thaws what is not its own.
pub async fn freeze(channel: &Channel, name: &str) -> Result<RuntimeInfo> {
    let response = ControlClient::new(channel.clone())
        .edit(traced(EditRequest {
            name: name.into(),
            editable: false,
            only_if_editable: true,
            keep_runtime: false,
        }))
        .await
        .map_err(|s| rpc_error(&format!("cannot commit runtime {name}"), "Edit", s))?;
    answered(response.into_inner().runtime, name)
}

pub async fn reset(channel: &Channel, name: &str, paths: Vec<String>) -> Result<RuntimeInfo> {
    let response = ControlClient::new(channel.clone())
        .reset(traced(ResetRequest {
            name: name.into(),
            paths,
        }))
        .await
        .map_err(|s| rpc_error(&format!("cannot reset runtime {name}"), "Reset", s))?;
    answered(response.into_inner().runtime, name)
}

/// What `ChangeStack` is asked to do.
pub struct StackChange<'a> {
    pub env_spec: &'a str,
    /// Refuse unless the stack is still this (empty: no check).
    pub expected_stack: &'a str,
    pub drop_changes: bool,
    pub editable: Editability,
}

pub async fn change_stack(
    channel: &Channel,
    name: &str,
    change: StackChange<'_>,
) -> Result<RuntimeInfo> {
    let response = ControlClient::new(channel.clone())
        .change_stack(traced(ChangeStackRequest {
            name: name.into(),
            env_spec: change.env_spec.into(),
            expected_stack: change.expected_stack.into(),
            drop_changes: change.drop_changes,
            editable: change.editable as i32,
        }))
        .await
        .map_err(|s| {
            rpc_error(
                &format!("cannot change the stack of runtime {name}"),
                "ChangeStack",
                s,
            )
        })?;
    answered(response.into_inner().runtime, name)
}

pub async fn remove_runtime(channel: &Channel, name: &str) -> Result<()> {
    ControlClient::new(channel.clone())
        .remove_runtime(traced(RemoveRuntimeRequest { name: name.into() }))
        .await
        .map_err(|s| rpc_error(&format!("cannot remove runtime {name}"), "RemoveRuntime", s))?;
    Ok(())
}

/// The runtime a reply carried; a reply without one is the service's error.
fn answered(runtime: Option<Runtime>, name: &str) -> Result<RuntimeInfo> {
    runtime
        .map(crate::client::runtime_info)
        .ok_or_else(|| Error::Protocol(format!("it sent no runtime for {name}")))
}

/// The runtime's stack as the env spec `ChangeStack` expects (`A+B`).
pub fn stack_spec(runtime: &RuntimeInfo) -> String {
    runtime.state.stack.join("+")
}

/// The repositories a runtime reads its layers from, local first (the
/// configured ones if the service named none).
pub fn runtime_repositories(runtime: &RuntimeInfo) -> Result<ProxyRepository> {
    let roots = &runtime.state.repositories;
    if roots.is_empty() {
        super::repo::readable(None)
    } else {
        Ok(ProxyRepository::open(roots)?)
    }
}

/// The runtime's changes on disk; none for a runtime never made editable.
pub fn open_scratch(runtime: &RuntimeInfo) -> Result<Option<Scratch>> {
    let Some(dir) = &runtime.scratch_dir else {
        return Ok(None);
    };
    // Never made: the runtime has changed nothing yet.
    Scratch::open_to_read(dir).map(Some).map_err(|e| {
        Error::io(
            format!("cannot read the runtime's changes in {}", dir.display()),
            e,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_runtime_the_error_says_what_to_do() {
        assert_eq!(
            runtime_name(Some("rt-1".into()), Hint::Run).unwrap(),
            "rt-1"
        );
        for value in [None, Some(String::new())] {
            let err = runtime_name(value, Hint::Commit).unwrap_err().with_fix();
            assert!(err.starts_with("no active runtime"), "{err}");
            assert!(err.contains("--path"), "{err}");
        }
        let err = runtime_name(None, Hint::Run).unwrap_err().with_fix();
        assert!(err.contains("spfs run"), "{err}");
    }

    #[test]
    fn an_old_service_is_named_as_the_cause() {
        let err = rpc_error("cannot x", "Edit", tonic::Status::unimplemented("no"));
        assert!(err.with_fix().contains("does not offer Edit"), "{err}");
        assert!(err.with_fix().contains("spfs service stop"), "{err}");
        let err = rpc_error("cannot x", "Edit", tonic::Status::not_found("no runtime y"));
        assert_eq!(err.to_string(), "cannot x: no runtime y");
    }
}
