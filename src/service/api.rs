//! The `spfs.vfs.v1.VfsService` handlers: thin over the runtimes table, plus
//! the service's identity for `Status` and the trigger for `Shutdown`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use super::guard::Caller;
use super::runtimes::{self, checked_pid, RuntimeError, RuntimeTable, ScratchFor};
use super::shutdown::Shutdown;
use super::views::{self, Built};
use crate::platform;
use crate::proto::vfs_service_server::VfsService;
use crate::proto::{
    ChangeStackRequest, EditRequest, Editability, GetRuntimeRequest, MountRequest, MountResponse,
    RemoveRuntimeRequest, RemoveRuntimeResponse, ResetRequest, RuntimeResponse, ShutdownRequest,
    ShutdownResponse, StatusRequest, StatusResponse, UnmountRequest, UnmountResponse,
};
use crate::runtime::{EndReason, RuntimeState};
use crate::tracking::env_spec::SpecError;
use crate::vfs::overlay::Overlay;
use crate::vfs::Shown;

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
    pub runtimes: Arc<RuntimeTable>,
    /// What one Mount may cost (SPFS_MOUNT_TIMEOUT, SPFS_MOUNT_MAX_ENTRIES).
    pub build_limits: views::BuildLimits,
    /// Once triggered, new mounts are refused, and a mount that finishes
    /// after it is undone, so no command runs on a service that is going away.
    pub shutdown: Shutdown,
}

/// What a `Mount` that meets shutdown gets: UNAVAILABLE, which the launcher
/// retries with a new service.
fn shutting_down() -> Status {
    Status::unavailable("the service is shutting down; retry to start a new one")
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
            | RuntimeError::NoChanges(_) => Status::failed_precondition(err.to_string()),
            RuntimeError::NotAMember { .. } => Status::permission_denied(err.to_string()),
            RuntimeError::Scratch { .. } => Status::internal(err.to_string()),
            RuntimeError::NotAnAncestor { .. }
            | RuntimeError::OtherUser { .. }
            | RuntimeError::UnknownCaller => Status::permission_denied(err.to_string()),
            // Listed one by one: a new variant must choose its code here.
            RuntimeError::BadPid(_)
            | RuntimeError::NoSuchProcess(_)
            | RuntimeError::SpecTooLong(_)
            | RuntimeError::Spec(_)
            | RuntimeError::BadName(_)
            | RuntimeError::RelativeRepository(_) => Status::invalid_argument(err.to_string()),
        }
    }
}

/// A runtime may only be given to the caller's own process tree: the root pid
/// must be the caller or an ancestor, and (unless the caller is root) run as
/// the caller's user.
fn authorize(caller: Option<Caller>, root: i32) -> Result<(), RuntimeError> {
    let caller = caller.ok_or(RuntimeError::UnknownCaller)?;
    let caller_pid = caller.pid.ok_or(RuntimeError::UnknownCaller)?;
    if !platform::is_same_or_ancestor(root, caller_pid) {
        return Err(RuntimeError::NotAnAncestor {
            root,
            caller: caller_pid,
        });
    }
    if caller.uid != 0 {
        let owner = platform::process_uid(root).map_err(|_| RuntimeError::NoSuchProcess(root))?;
        if owner != caller.uid {
            return Err(RuntimeError::OtherUser {
                root,
                owner,
                caller: caller.uid,
            });
        }
    }
    Ok(())
}

/// Sets its flag when dropped.
#[derive(Default)]
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// What one `Mount` asks for, checked.
struct MountAsk {
    pid: i32,
    name: String,
    env_spec: String,
    repositories: Vec<std::path::PathBuf>,
    editable: bool,
    durable: bool,
    rerun: bool,
}

impl Api {
    /// Resolves and builds `spec` in `repositories` off the async workers,
    /// within the mount limits.
    async fn build(
        &self,
        spec: String,
        repositories: Vec<std::path::PathBuf>,
    ) -> Result<Built, RuntimeError> {
        let router = std::sync::Arc::clone(self.runtimes.router());
        // Dropped when this request is (the client went away) or finishes:
        // either way the build need not go on.
        let cancel = CancelOnDrop::default();
        let budget = self.build_limits.budget(Arc::clone(&cancel.0));
        let shown_spec = crate::tracking::env_spec::shorten(&spec);
        let build = tokio::task::spawn_blocking(move || {
            views::build_view(&router, &repositories, spec, &budget)
        });
        // The build checks its deadline itself; this bounds what it cannot
        // check (a read hung on a dead filesystem).
        let grace = std::time::Duration::from_millis(500);
        let built = tokio::time::timeout(self.build_limits.timeout + grace, build)
            .await
            .map_err(|_| RuntimeError::Timeout {
                spec: shown_spec,
                seconds: self.build_limits.timeout.as_secs_f64(),
            })?
            .map_err(|e| RuntimeError::Internal(e.to_string()))??;
        drop(cancel);
        Ok(built)
    }

    async fn attach_runtime(
        &self,
        caller: Option<Caller>,
        request: MountRequest,
    ) -> Result<(crate::proto::Runtime, Built, Shown), RuntimeError> {
        let pid = checked_pid(request.root_pid)?;
        authorize(caller, pid)?;
        // A script's Mount may name no runtime: give it one of its own.
        let name = match request.name.is_empty() {
            true => crate::contract::generated_name(pid),
            false => request.name,
        };
        runtimes::check_name(&name)?;
        let repositories = request
            .repositories
            .into_iter()
            .map(|root| match std::path::Path::new(&root).is_absolute() {
                true => Ok(std::path::PathBuf::from(root)),
                false => Err(RuntimeError::RelativeRepository(root)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let ask = MountAsk {
            pid,
            name,
            env_spec: request.env_spec,
            repositories,
            editable: request.editable,
            durable: request.durable,
            rerun: request.rerun,
        };
        if !ask.rerun {
            return self.attach_new(ask).await;
        }
        // Re-entering a stopped runtime: its stack and changes come from disk.
        let (saved, scratch) = self.runtimes.take_stopped(&ask.name)?;
        let result = self.attach_saved(&ask, saved.clone(), scratch).await;
        if result.is_err() {
            self.runtimes.put_back(saved);
        }
        result
    }

    async fn attach_new(
        &self,
        ask: MountAsk,
    ) -> Result<(crate::proto::Runtime, Built, Shown), RuntimeError> {
        let built = self
            .build(ask.env_spec.clone(), ask.repositories.clone())
            .await?;
        let state = RuntimeState {
            name: ask.name.clone(),
            env_spec: ask.env_spec,
            stack: built.stack.clone(),
            repositories: ask.repositories,
            editable: ask.editable,
            durable: ask.durable,
            created_unix: runtimes::now_unix(),
        };
        if !ask.editable {
            let shown = Shown::View(Arc::clone(&built.view));
            let runtime = self.runtimes.attach(ask.pid, state, shown.clone(), None)?;
            return Ok((runtime, built, shown));
        }
        let scratch = self
            .runtimes
            .new_scratch(&ask.name, ScratchFor::Mount(ask.pid))?;
        let mounted = self.attach_with_scratch(ask.pid, state, &built, Arc::clone(&scratch));
        if mounted.is_err() {
            if let Ok(scratch) = Arc::try_unwrap(scratch) {
                let _ = scratch.destroy();
            }
        }
        mounted.map(|(runtime, shown)| (runtime, built, shown))
    }

    async fn attach_saved(
        &self,
        ask: &MountAsk,
        mut state: RuntimeState,
        scratch: Arc<crate::runtime::Scratch>,
    ) -> Result<(crate::proto::Runtime, Built, Shown), RuntimeError> {
        let built = self
            .build(state.stack_spec(), state.repositories.clone())
            .await?;
        state.editable |= ask.editable;
        state.durable |= ask.durable;
        let (runtime, shown) = self.attach_with_scratch(ask.pid, state, &built, scratch)?;
        Ok((runtime, built, shown))
    }

    fn attach_with_scratch(
        &self,
        pid: i32,
        state: RuntimeState,
        built: &Built,
        scratch: Arc<crate::runtime::Scratch>,
    ) -> Result<(crate::proto::Runtime, Shown), RuntimeError> {
        scratch
            .write_state(&state)
            .map_err(|e| RuntimeError::Scratch {
                what: format!("cannot save runtime {:?}", state.name),
                error: e,
            })?;
        let overlay = Overlay::new(
            self.runtimes.router().next_view_id(),
            Arc::clone(&built.view),
            Arc::clone(&scratch),
            state.editable,
        )
        .map_err(|e| RuntimeError::Scratch {
            what: "cannot read the runtime's changes".into(),
            error: e,
        })?;
        let shown = Shown::Overlay(Arc::new(overlay));
        let runtime = self
            .runtimes
            .attach(pid, state, shown.clone(), Some(scratch))?;
        Ok((runtime, shown))
    }

    /// `ChangeStack`: builds the new stack, then swaps it in.
    async fn change_runtime_stack(
        &self,
        caller: Option<Caller>,
        request: ChangeStackRequest,
    ) -> Result<crate::proto::Runtime, RuntimeError> {
        let pid = caller_pid(caller)?;
        let member = self.runtimes.member(&request.name, pid)?;
        let current = member.state.stack.join("+");
        if !request.expected_stack.is_empty() && request.expected_stack != current {
            return Err(RuntimeError::StackChanged {
                name: request.name,
                expected: crate::tracking::env_spec::shorten(&request.expected_stack),
                actual: crate::tracking::env_spec::shorten(&current),
            });
        }
        let built = self
            .build(request.env_spec.clone(), member.state.repositories.clone())
            .await?;
        let editable = match Editability::try_from(request.editable) {
            Ok(Editability::Editable) => true,
            Ok(Editability::ReadOnly) => false,
            _ => member.state.editable,
        };
        let mut state = member.state.clone();
        state.env_spec = request.env_spec;
        state.stack = built.stack.clone();
        state.editable = editable;
        // No write may land in the old overlay from here on.
        if let Shown::Overlay(overlay) = &member.shown {
            overlay.set_editable(false);
        }
        let changed = self.swap_stack(&member, state, built, request.drop_changes);
        // Failed: the runtime goes on as it was, not silently read-only.
        if let (Err(_), Shown::Overlay(overlay)) = (&changed, &member.shown) {
            overlay.set_editable(member.state.editable);
        }
        let runtime = changed?;
        tracing::info!(
            event = "service.stack_changed",
            runtime = runtime.name.as_str(),
            env_spec = crate::tracking::env_spec::shorten(&runtime.env_spec),
            drop_changes = request.drop_changes,
            editable,
            "runtime shows another stack"
        );
        Ok(runtime)
    }

    /// The second half of `ChangeStack`, once the old overlay takes no
    /// more writes: drops the changes if asked, and shows the new stack.
    fn swap_stack(
        &self,
        member: &crate::service::runtimes::RuntimeMember,
        state: crate::runtime::state::RuntimeState,
        built: Built,
        drop_changes: bool,
    ) -> Result<crate::proto::Runtime, RuntimeError> {
        let editable = state.editable;
        let scratch = match (&member.scratch, editable) {
            (Some(scratch), _) => Some(Arc::clone(scratch)),
            (None, true) => Some(
                self.runtimes
                    .new_scratch(&state.name, ScratchFor::Runtime(member.id))?,
            ),
            (None, false) => None,
        };
        if let (Some(scratch), true) = (&scratch, drop_changes) {
            scratch.reset(&[]).map_err(|e| RuntimeError::Scratch {
                what: "cannot drop the changes".into(),
                error: e,
            })?;
        }
        let shown = match &scratch {
            Some(scratch) => Shown::Overlay(Arc::new(
                Overlay::new(
                    self.runtimes.router().next_view_id(),
                    Arc::clone(&built.view),
                    Arc::clone(scratch),
                    editable,
                )
                .map_err(|e| RuntimeError::Scratch {
                    what: "cannot read the runtime's changes".into(),
                    error: e,
                })?,
            )),
            None => Shown::View(Arc::clone(&built.view)),
        };
        self.runtimes.update(member, state, shown, scratch)
    }
}

/// The calling process, which the new RPCs act for.
fn caller_pid(caller: Option<Caller>) -> Result<i32, RuntimeError> {
    caller
        .and_then(|c| c.pid)
        .ok_or(RuntimeError::UnknownCaller)
}

/// Logs a runtime RPC's outcome (its own event, or
/// `service.request_refused`) and turns it into the reply.
fn answer(
    request: &'static str,
    name: &str,
    started: Instant,
    result: Result<crate::proto::Runtime, RuntimeError>,
) -> Result<Response<RuntimeResponse>, Status> {
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok(runtime) => {
            let (runtime_name, editable) = (runtime.name.as_str(), runtime.editable);
            let running = runtime.running;
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
                runtime: Some(runtime),
            }))
        }
        Err(err) => {
            tracing::warn!(
                event = "service.request_refused",
                request,
                runtime = crate::tracking::env_spec::shorten(name),
                error = %err,
                elapsed_ms,
                "refused a runtime request"
            );
            Err(err.into())
        }
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
            return Err(shutting_down());
        }
        let caller = request.extensions().get::<Caller>().copied();
        let request = request.into_inner();
        let root_pid = request.root_pid;
        let result = self.attach_runtime(caller, request).await;
        if self.shutdown.is_triggered() {
            // Shutdown began while the view was built: the mount is about to
            // go, so the command must not run on it.
            if let Ok((runtime, _, _)) = &result {
                if let Ok(pid) = i32::try_from(runtime.root_pid) {
                    self.runtimes.remove(pid, EndReason::Shutdown);
                }
            }
            tracing::warn!(
                event = "service.mount_refused",
                root_pid,
                error = "the service is shutting down",
                "refused a mount"
            );
            return Err(shutting_down());
        }
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        let outcome = if result.is_ok() { "ok" } else { "refused" };
        crate::telemetry::metrics::metrics().mount_duration.record(
            elapsed_ms,
            &crate::telemetry::metrics::attr("result", outcome),
        );
        match result {
            Ok((runtime, built, shown)) => {
                tracing::info!(
                    event = "service.mount",
                    root_pid = runtime.root_pid,
                    runtime = runtime.name.as_str(),
                    env_spec = crate::tracking::env_spec::shorten(&runtime.env_spec),
                    editable = runtime.editable,
                    durable = runtime.durable,
                    view_id = shown.id(),
                    view_shared = built.shared,
                    nodes = built.view.len() as u64,
                    unreadable = built.view.unreadable,
                    active_runtimes = self.runtimes.len(),
                    elapsed_ms,
                    "runtime started"
                );
                Ok(Response::new(MountResponse {
                    runtime: Some(runtime),
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
        match self.runtimes.remove(pid, EndReason::Request) {
            Some(_) => Ok(Response::new(UnmountResponse {})),
            None => Err(Status::not_found(format!("no runtime has root_pid {pid}"))),
        }
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        // Reads /proc (and may wait 20 ms for a process caught mid-exec).
        let runtimes = Arc::clone(&self.runtimes);
        let _ = tokio::task::spawn_blocking(move || runtimes.settle_all()).await;
        let id = &self.identity;
        Ok(Response::new(StatusResponse {
            pid: id.pid,
            version: id.version.clone(),
            start_time_unix: id.start_time_unix,
            mountpoint: id.mountpoint.clone(),
            socket: id.socket.clone(),
            log_file: id.log_file.clone(),
            runtimes: self.runtimes.list(),
            stopped: self.runtimes.list_stopped(),
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
        let runtime = self.runtimes.get(&name)?;
        Ok(Response::new(RuntimeResponse {
            runtime: Some(runtime),
        }))
    }

    async fn edit(
        &self,
        request: Request<EditRequest>,
    ) -> Result<Response<RuntimeResponse>, Status> {
        let started = Instant::now();
        let caller = request.extensions().get::<Caller>().copied();
        let EditRequest { name, editable } = request.into_inner();
        let runtimes = Arc::clone(&self.runtimes);
        let asked = name.clone();
        let result = tokio::task::spawn_blocking(move || {
            runtimes.edit(&asked, caller_pid(caller)?, editable)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        answer("service.edit", &name, started, result)
    }

    async fn reset(
        &self,
        request: Request<ResetRequest>,
    ) -> Result<Response<RuntimeResponse>, Status> {
        let started = Instant::now();
        let caller = request.extensions().get::<Caller>().copied();
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
        let runtimes = Arc::clone(&self.runtimes);
        let asked = name.clone();
        let result = tokio::task::spawn_blocking(move || {
            runtimes.reset(&asked, caller_pid(caller)?, &paths)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        answer("service.reset", &name, started, result)
    }

    async fn change_stack(
        &self,
        request: Request<ChangeStackRequest>,
    ) -> Result<Response<RuntimeResponse>, Status> {
        let started = Instant::now();
        if self.shutdown.is_triggered() {
            return Err(shutting_down());
        }
        let caller = request.extensions().get::<Caller>().copied();
        let request = request.into_inner();
        let name = request.name.clone();
        let result = self.change_runtime_stack(caller, request).await;
        answer("service.change_stack", &name, started, result)
    }

    async fn remove_runtime(
        &self,
        request: Request<RemoveRuntimeRequest>,
    ) -> Result<Response<RemoveRuntimeResponse>, Status> {
        let name = request.into_inner().name;
        let runtimes = Arc::clone(&self.runtimes);
        tokio::task::spawn_blocking(move || runtimes.remove_stopped(&name))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(RemoveRuntimeResponse {}))
    }
}
