//! The `spfs.vfs.v1.VfsService` handlers: thin over the runtimes table, plus
//! the service's identity for `Status` and the trigger for `Shutdown`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use super::guard::Caller;
use super::runtimes::{self, checked_pid, MountError, Runtimes};
use super::shutdown::Shutdown;
use crate::platform;
use crate::proto::vfs_service_server::VfsService;
use crate::proto::{
    ChangeStackRequest, EditRequest, GetRuntimeRequest, MountRequest, MountResponse,
    RemoveRuntimeRequest, RemoveRuntimeResponse, ResetRequest, RuntimeResponse, ShutdownRequest,
    ShutdownResponse, StatusRequest, StatusResponse, UnmountRequest, UnmountResponse,
};
use crate::tracking::env_spec::SpecError;

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
    pub runtimes: Arc<Runtimes>,
    /// What one Mount may cost (SPFS_MOUNT_TIMEOUT, SPFS_MOUNT_MAX_ENTRIES).
    pub mount_limits: runtimes::MountLimits,
    /// Once triggered, new mounts are refused, and a mount that finishes
    /// after it is undone, so no command runs on a service that is going away.
    pub shutdown: Shutdown,
}

/// What a `Mount` that meets shutdown gets: UNAVAILABLE, which the launcher
/// retries with a new service.
fn shutting_down() -> Status {
    Status::unavailable("the service is shutting down; retry to start a new one")
}

impl From<MountError> for Status {
    fn from(err: MountError) -> Status {
        match err {
            MountError::Internal(_) => Status::internal(err.to_string()),
            MountError::NameTaken(_) => Status::already_exists(err.to_string()),
            MountError::Timeout { .. } => Status::deadline_exceeded(err.to_string()),
            MountError::Build { .. } | MountError::Repository(_) => {
                Status::failed_precondition(err.to_string())
            }
            MountError::Spec(SpecError::Unknown { .. }) => Status::not_found(err.to_string()),
            MountError::NotAnAncestor { .. }
            | MountError::OtherUser { .. }
            | MountError::UnknownCaller => Status::permission_denied(err.to_string()),
            // Listed one by one: a new variant must choose its code here.
            MountError::BadPid(_)
            | MountError::NoSuchProcess(_)
            | MountError::SpecTooLong(_)
            | MountError::Spec(_)
            | MountError::BadName(_)
            | MountError::RelativeRepository(_) => Status::invalid_argument(err.to_string()),
        }
    }
}

/// A runtime may only be given to the caller's own process tree: the root pid
/// must be the caller or an ancestor, and (unless the caller is root) run as
/// the caller's user.
fn authorize(caller: Option<Caller>, root: i32) -> Result<(), MountError> {
    let caller = caller.ok_or(MountError::UnknownCaller)?;
    let caller_pid = caller.pid.ok_or(MountError::UnknownCaller)?;
    if !platform::is_same_or_ancestor(root, caller_pid) {
        return Err(MountError::NotAnAncestor {
            root,
            caller: caller_pid,
        });
    }
    if caller.uid != 0 {
        let owner = platform::process_uid(root).map_err(|_| MountError::NoSuchProcess(root))?;
        if owner != caller.uid {
            return Err(MountError::OtherUser {
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

impl Api {
    async fn mount_runtime(
        &self,
        caller: Option<Caller>,
        root_pid: i64,
        env_spec: String,
        repositories: Vec<String>,
        name: String,
    ) -> Result<(crate::proto::Runtime, runtimes::Built), MountError> {
        let pid = checked_pid(root_pid)?;
        authorize(caller, pid)?;
        // A script's Mount may name no runtime: give it one of its own.
        let name = match name.is_empty() {
            true => runtimes::generated_name(pid),
            false => name,
        };
        runtimes::check_name(&name)?;
        let repositories = repositories
            .into_iter()
            .map(|root| match std::path::Path::new(&root).is_absolute() {
                true => Ok(std::path::PathBuf::from(root)),
                false => Err(MountError::RelativeRepository(root)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let router = std::sync::Arc::clone(self.runtimes.router());
        // Reading the layers is blocking I/O; keep it off the async workers.
        let spec = env_spec.clone();
        // Dropped when this request is (the client went away) or finishes:
        // either way the build need not go on.
        let cancel = CancelOnDrop::default();
        let budget = self.mount_limits.budget(Arc::clone(&cancel.0));
        let build = tokio::task::spawn_blocking(move || {
            runtimes::build_view(&router, &repositories, spec, &budget)
        });
        // The build checks its deadline itself; this bounds what it cannot
        // check (a read hung on a dead filesystem).
        let grace = std::time::Duration::from_millis(500);
        let built = tokio::time::timeout(self.mount_limits.timeout + grace, build)
            .await
            .map_err(|_| MountError::Timeout {
                spec: crate::tracking::env_spec::shorten(&env_spec),
                seconds: self.mount_limits.timeout.as_secs_f64(),
            })?
            .map_err(|e| MountError::Internal(e.to_string()))??;
        drop(cancel);
        let runtime = self
            .runtimes
            .mount(pid, name, env_spec, Arc::clone(&built.view))?;
        Ok((runtime, built))
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
        let MountRequest {
            root_pid,
            env_spec,
            repositories,
            name,
            editable: _,
            durable: _,
            rerun: _,
        } = request.into_inner();
        let result = self
            .mount_runtime(caller, root_pid, env_spec, repositories, name)
            .await;
        if self.shutdown.is_triggered() {
            // Shutdown began while the view was built: the mount is about to
            // go, so the command must not run on it.
            if let Ok((runtime, _)) = &result {
                if let Ok(pid) = i32::try_from(runtime.root_pid) {
                    self.runtimes.remove(pid, "shutdown");
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
            Ok((runtime, built)) => {
                tracing::info!(
                    event = "service.mount",
                    root_pid = runtime.root_pid,
                    runtime = runtime.name.as_str(),
                    env_spec = crate::tracking::env_spec::shorten(&runtime.env_spec),
                    view_id = built.view.id,
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
        match self.runtimes.remove(pid, "request") {
            Some(_) => Ok(Response::new(UnmountResponse {})),
            None => Err(Status::not_found(format!("no runtime has root_pid {pid}"))),
        }
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let id = &self.identity;
        Ok(Response::new(StatusResponse {
            pid: id.pid,
            version: id.version.clone(),
            start_time_unix: id.start_time_unix,
            mountpoint: id.mountpoint.clone(),
            socket: id.socket.clone(),
            log_file: id.log_file.clone(),
            runtimes: self.runtimes.list(),
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
        _: Request<GetRuntimeRequest>,
    ) -> Result<Response<RuntimeResponse>, Status> {
        Err(Status::unimplemented("GetRuntime"))
    }

    async fn edit(&self, _: Request<EditRequest>) -> Result<Response<RuntimeResponse>, Status> {
        Err(Status::unimplemented("Edit"))
    }

    async fn reset(&self, _: Request<ResetRequest>) -> Result<Response<RuntimeResponse>, Status> {
        Err(Status::unimplemented("Reset"))
    }

    async fn change_stack(
        &self,
        _: Request<ChangeStackRequest>,
    ) -> Result<Response<RuntimeResponse>, Status> {
        Err(Status::unimplemented("ChangeStack"))
    }

    async fn remove_runtime(
        &self,
        _: Request<RemoveRuntimeRequest>,
    ) -> Result<Response<RemoveRuntimeResponse>, Status> {
        Err(Status::unimplemented("RemoveRuntime"))
    }
}
