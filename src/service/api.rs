//! The `spfs.vfs.v1.VfsService` handlers: the gRPC edge of the service.
//! Each handler turns its request into a checked domain request, hands it
//! to the runtime lifecycle (`service::lifecycle`) or the table, and turns
//! the result into the reply: every proto type the service uses is
//! converted here, and every [`RuntimeError`] gets its gRPC code here.
//!
//! The rule for what may block (docs/architecture.md, "What may block"):
//! a handler runs on one of the two async workers every other request
//! needs, so it never blocks. The table's work (which reads `/proc`, may
//! wait 20 ms for a process caught mid-exec, fsyncs a durable runtime's
//! state, deletes scratch files) runs on the blocking pool (`lifecycle::blocking`);
//! so do builds, awaited with a deadline.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use super::error::RuntimeError;
use super::guard::Caller;
use super::lifecycle::{blocking, Attached, Lifecycle, MountAsk, StackChange};
use super::shutdown::Shutdown;
use crate::proto::vfs_service_server::VfsService;
use crate::proto::{
    ChangeStackRequest, EditRequest, Editability, GetRuntimeRequest, MountRequest, MountResponse,
    RemoveRuntimeRequest, RemoveRuntimeResponse, ResetRequest, RuntimeResponse, ShutdownRequest,
    ShutdownResponse, StartupScripts, StatusRequest, StatusResponse, UnmountRequest,
    UnmountResponse,
};
use crate::runtime::{EndReason, RuntimeInfo};
use crate::telemetry::{ms_since, short};
use crate::tracking::env_spec::{EnvSpec, SpecError};

/// What `Status` reports about the service itself.
#[derive(Clone, Debug)]
pub struct Identity {
    pub pid: i64,
    pub version: String,
    pub start_time_unix: i64,
    pub mountpoint: String,
    pub socket: String,
    pub log_file: String,
}

pub struct Api {
    pub identity: Identity,
    pub lifecycle: Arc<Lifecycle>,
    /// Once triggered, new mounts are refused, and a mount that finishes
    /// after it is undone, so no command runs on a service that is going away.
    pub shutdown: Shutdown,
}

impl From<RuntimeError> for Status {
    fn from(err: RuntimeError) -> Status {
        match err {
            RuntimeError::Internal(_) => Status::internal(err.to_string()),
            RuntimeError::NameTaken(_) => Status::already_exists(err.to_string()),
            RuntimeError::Timeout { .. } => Status::deadline_exceeded(err.to_string()),
            RuntimeError::Build { .. } | RuntimeError::Repository(_) => {
                Status::failed_precondition(err.to_string())
            }
            RuntimeError::Spec(SpecError::Unknown { .. }) | RuntimeError::NotFound(_) => {
                Status::not_found(err.to_string())
            }
            RuntimeError::NameStopped(_) => Status::already_exists(err.to_string()),
            RuntimeError::Running(_)
            | RuntimeError::StackChanged { .. }
            | RuntimeError::NoChanges(_)
            | RuntimeError::NotEditable(_) => Status::failed_precondition(err.to_string()),
            RuntimeError::NotAMember { .. } => Status::permission_denied(err.to_string()),
            RuntimeError::Scratch { .. } => Status::internal(err.to_string()),
            RuntimeError::UnsafeScratch { .. } => Status::failed_precondition(err.to_string()),
            RuntimeError::NotAnAncestor { .. }
            | RuntimeError::OtherUser { .. }
            | RuntimeError::UnknownCaller => Status::permission_denied(err.to_string()),
            // The launcher answers UNAVAILABLE by starting a new service.
            RuntimeError::ShuttingDown => Status::unavailable(err.to_string()),
            // Listed one by one: a new variant must choose its code here.
            RuntimeError::BadPid(_)
            | RuntimeError::NoSuchProcess(_)
            | RuntimeError::Spec(_)
            | RuntimeError::BadName(_)
            | RuntimeError::RelativeRepository(_) => Status::invalid_argument(err.to_string()),
        }
    }
}

/// A runtime as the control API reports it.
fn runtime_proto(info: RuntimeInfo) -> crate::proto::Runtime {
    let RuntimeInfo {
        state,
        root_pid,
        since_unix,
        scratch_dir,
    } = info;
    crate::proto::Runtime {
        root_pid: root_pid.map_or(0, i64::from),
        env_spec: state.env_spec,
        since_unix,
        name: state.name,
        editable: state.editable,
        durable: state.durable,
        running: root_pid.is_some(),
        scratch_dir: scratch_dir
            .map(|dir| dir.display().to_string())
            .unwrap_or_default(),
        stack: state.stack,
        command: state.command,
        created_unix: state.created_unix,
        repositories: state
            .repositories
            .iter()
            .map(|r| r.display().to_string())
            .collect(),
    }
}

/// A pid from the wire: positive and within `pid_t`.
fn checked_pid(pid: i64) -> Result<i32, RuntimeError> {
    match i32::try_from(pid) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(RuntimeError::BadPid(pid)),
    }
}

/// The calling process, which the runtime RPCs act for.
fn caller_pid(caller: Option<Caller>) -> Result<i32, RuntimeError> {
    caller
        .and_then(|c| c.pid)
        .ok_or(RuntimeError::UnknownCaller)
}

fn caller_of<T>(request: &Request<T>) -> Option<Caller> {
    request.extensions().get::<Caller>().copied()
}

/// A `MountRequest`, checked: a valid pid, a ref that parses, absolute
/// repositories.
fn mount_ask(request: MountRequest) -> Result<MountAsk, RuntimeError> {
    let repositories = request
        .repositories
        .into_iter()
        .map(|root| match std::path::Path::new(&root).is_absolute() {
            true => Ok(PathBuf::from(root)),
            false => Err(RuntimeError::RelativeRepository(root)),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(MountAsk {
        pid: checked_pid(request.root_pid)?,
        name: Some(request.name).filter(|n| !n.is_empty()),
        env_spec: match request.rerun {
            // Not used: the stack comes from the stopped runtime.
            true => EnvSpec::empty(),
            false => EnvSpec::parse(&request.env_spec)?,
        },
        repositories,
        editable: request.editable,
        durable: request.durable,
        rerun: request.rerun,
        command: request.command,
    })
}

/// A `ChangeStackRequest`, checked.
fn stack_change(request: ChangeStackRequest) -> Result<StackChange, RuntimeError> {
    Ok(StackChange {
        env_spec: EnvSpec::parse(&request.env_spec)?,
        editable: match Editability::try_from(request.editable) {
            Ok(Editability::Editable) => Some(true),
            Ok(Editability::ReadOnly) => Some(false),
            _ => None,
        },
        name: request.name,
        expected_stack: request.expected_stack,
        drop_changes: request.drop_changes,
    })
}

/// Logs a runtime RPC's outcome (its own event, or
/// `service.request_refused`) and turns it into the reply.
fn answer(
    request: &'static str,
    name: &str,
    started: Instant,
    result: Result<RuntimeInfo, RuntimeError>,
) -> Result<Response<RuntimeResponse>, Status> {
    let elapsed_ms = ms_since(started);
    match result {
        Ok(runtime) => {
            let (runtime_name, editable) = (runtime.name(), runtime.state.editable);
            let running = runtime.is_running();
            // One literal per event, so docs/logging.md is checked against them.
            match request {
                "service.edit" => tracing::info!(
                    event = "service.edit",
                    runtime = runtime_name,
                    editable,
                    running,
                    elapsed_ms,
                    "runtime request done"
                ),
                "service.reset" => tracing::info!(
                    event = "service.reset",
                    runtime = runtime_name,
                    editable,
                    running,
                    elapsed_ms,
                    "runtime request done"
                ),
                _ => tracing::info!(
                    event = "service.change_stack",
                    runtime = runtime_name,
                    editable,
                    running,
                    elapsed_ms,
                    "runtime request done"
                ),
            }
            Ok(Response::new(RuntimeResponse {
                runtime: Some(runtime_proto(runtime)),
            }))
        }
        Err(err) => {
            tracing::warn!(
                event = "service.request_refused",
                request,
                runtime = short(name),
                error = %err,
                elapsed_ms,
                "refused a runtime request"
            );
            Err(err.into())
        }
    }
}

impl Api {
    /// A `Mount` whose runtime was attached while shutdown began: the mount
    /// is about to go, so the runtime ends and the command must not run.
    async fn undo_after_shutdown(&self, attached: &Attached) {
        if let Some(pid) = attached.runtime.root_pid {
            let lifecycle = Arc::clone(&self.lifecycle);
            let _ = blocking(move || Ok(lifecycle.unmount(pid, EndReason::Shutdown))).await;
        }
    }

    fn log_mount(&self, attached: &Attached, elapsed_ms: f64) {
        let Attached {
            runtime,
            built,
            shown,
        } = attached;
        tracing::info!(
            event = "service.mount",
            root_pid = runtime.root_pid.unwrap_or(0),
            runtime = runtime.name(),
            env_spec = short(&runtime.state.env_spec),
            editable = runtime.state.editable,
            durable = runtime.state.durable,
            view_id = shown.id(),
            view_shared = built.shared,
            nodes = built.view.len() as u64,
            unreadable = built.view.unreadable,
            active_runtimes = self.lifecycle.table.len(),
            elapsed_ms,
            "runtime started"
        );
    }
}

#[tonic::async_trait]
impl VfsService for Api {
    async fn mount(
        &self,
        request: Request<MountRequest>,
    ) -> Result<Response<MountResponse>, Status> {
        let started = Instant::now();
        if self.shutdown.is_triggered() {
            return Err(RuntimeError::ShuttingDown.into());
        }
        let caller = caller_of(&request);
        let request = request.into_inner();
        let root_pid = request.root_pid;
        let result = match mount_ask(request) {
            Ok(ask) => self.lifecycle.mount(caller, ask).await,
            Err(err) => Err(err),
        };
        let result = match (result, self.shutdown.is_triggered()) {
            (Ok(attached), true) => {
                self.undo_after_shutdown(&attached).await;
                Err(RuntimeError::ShuttingDown)
            }
            (result, _) => result,
        };
        let elapsed_ms = ms_since(started);
        let outcome = if result.is_ok() { "ok" } else { "refused" };
        crate::telemetry::metrics::metrics().mount_duration.record(
            elapsed_ms,
            &crate::telemetry::metrics::attr("result", outcome),
        );
        match result {
            Ok(attached) => {
                self.log_mount(&attached, elapsed_ms);
                let names = attached.shown.names_in(&crate::contract::STARTUP_DIR);
                Ok(Response::new(MountResponse {
                    runtime: Some(runtime_proto(attached.runtime)),
                    startup_scripts: Some(StartupScripts {
                        known: names.is_some(),
                        names: names
                            .unwrap_or_default()
                            .into_iter()
                            .map(|n| n.to_string_lossy().into_owned())
                            .collect(),
                    }),
                }))
            }
            Err(err) => {
                tracing::warn!(
                    event = "service.mount_refused",
                    root_pid,
                    error = %err,
                    "refused a mount"
                );
                Err(err.into())
            }
        }
    }

    async fn unmount(
        &self,
        request: Request<UnmountRequest>,
    ) -> Result<Response<UnmountResponse>, Status> {
        let pid = checked_pid(request.into_inner().root_pid)?;
        let lifecycle = Arc::clone(&self.lifecycle);
        match blocking(move || Ok(lifecycle.unmount(pid, EndReason::Request))).await? {
            Some(_) => Ok(Response::new(UnmountResponse {})),
            None => Err(Status::not_found(format!("no runtime has root_pid {pid}"))),
        }
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        // Reads /proc (and may wait 20 ms for a process caught mid-exec).
        let table = Arc::clone(&self.lifecycle.table);
        let (running, stopped) = blocking(move || {
            table.settle_all();
            Ok((table.list(), table.list_stopped()))
        })
        .await?;
        let id = &self.identity;
        Ok(Response::new(StatusResponse {
            pid: id.pid,
            version: id.version.clone(),
            start_time_unix: id.start_time_unix,
            mountpoint: id.mountpoint.clone(),
            socket: id.socket.clone(),
            log_file: id.log_file.clone(),
            runtimes: running.into_iter().map(runtime_proto).collect(),
            stopped: stopped.into_iter().map(runtime_proto).collect(),
        }))
    }

    async fn shutdown(
        &self,
        _: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        self.shutdown.trigger("rpc");
        Ok(Response::new(ShutdownResponse {}))
    }

    async fn get_runtime(
        &self,
        request: Request<GetRuntimeRequest>,
    ) -> Result<Response<RuntimeResponse>, Status> {
        let name = request.into_inner().name;
        let runtime = self.lifecycle.table.get(&name)?;
        Ok(Response::new(RuntimeResponse {
            runtime: Some(runtime_proto(runtime)),
        }))
    }

    async fn edit(
        &self,
        request: Request<EditRequest>,
    ) -> Result<Response<RuntimeResponse>, Status> {
        let started = Instant::now();
        let caller = caller_of(&request);
        let EditRequest {
            name,
            editable,
            only_if_editable,
            keep_runtime,
        } = request.into_inner();
        let lifecycle = Arc::clone(&self.lifecycle);
        let asked = name.clone();
        let edit = crate::service::lifecycle::Edit {
            editable,
            only_if_editable,
            durable: keep_runtime && editable,
        };
        let result = blocking(move || lifecycle.edit(&asked, caller_pid(caller)?, edit)).await;
        answer("service.edit", &name, started, result)
    }

    async fn reset(
        &self,
        request: Request<ResetRequest>,
    ) -> Result<Response<RuntimeResponse>, Status> {
        let started = Instant::now();
        let caller = caller_of(&request);
        let ResetRequest { name, paths } = request.into_inner();
        let paths = paths
            .iter()
            .map(|p| {
                crate::runtime::changes::mount_relative(
                    p,
                    std::path::Path::new(&self.identity.mountpoint),
                )
                .map_err(Status::invalid_argument)
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let lifecycle = Arc::clone(&self.lifecycle);
        let asked = name.clone();
        let result = blocking(move || lifecycle.reset(&asked, caller_pid(caller)?, &paths)).await;
        answer("service.reset", &name, started, result)
    }

    async fn change_stack(
        &self,
        request: Request<ChangeStackRequest>,
    ) -> Result<Response<RuntimeResponse>, Status> {
        let started = Instant::now();
        if self.shutdown.is_triggered() {
            return Err(RuntimeError::ShuttingDown.into());
        }
        let caller = caller_of(&request);
        let request = request.into_inner();
        let name = request.name.clone();
        let result = match (caller_pid(caller), stack_change(request)) {
            (Ok(pid), Ok(change)) => self.lifecycle.change_stack(pid, change).await,
            (Err(err), _) | (_, Err(err)) => Err(err),
        };
        answer("service.change_stack", &name, started, result)
    }

    async fn remove_runtime(
        &self,
        request: Request<RemoveRuntimeRequest>,
    ) -> Result<Response<RemoveRuntimeResponse>, Status> {
        let name = request.into_inner().name;
        let table = Arc::clone(&self.lifecycle.table);
        blocking(move || table.remove_stopped(&name)).await?;
        Ok(Response::new(RemoveRuntimeResponse {}))
    }
}
