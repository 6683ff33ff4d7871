//! Starting the service, in steps (each failure has a `reason` the launcher
//! shows): [`preflight`] (runtime dir, settings, pidfile lock
//! `already_running`, FUSE available `fuse_unavailable`, mountpoint ready
//! and owned `mountpoint`, mount options allowed `mount_options`), [`bind`]
//! the socket (`bind`), [`mount_in_background`], [`serve`] the API with
//! health NOT_SERVING, [`await_mount`] (`mount_failed`; macFUSE mounts
//! asynchronously), then [`set_serving`].
//!
//! Each step hands back what must be undone as a guard (the pidfile, the
//! socket, the server task, the FUSE mount), so a step that fails undoes
//! the ones before it by dropping them, in reverse order, and nothing is
//! undone by hand.

use std::sync::Arc;
use std::time::Instant;

use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tracing::Instrument;

use super::api::{Api, Identity};
use super::build::BuildLimits;
use super::guard::{GuardLayer, GuardState};
use super::lifecycle::Lifecycle;
use super::pidfile::PidFile;
use super::shutdown::Shutdown;
use super::socket::{ControlSocket, Incoming};
use super::table::RuntimeTable;
use crate::contract::pidfile::PidFileError;
use crate::contract::StartReason;
use crate::paths::Paths;
use crate::platform;
use crate::proto::vfs_service_server::VfsServiceServer;
use crate::proto::VFS_SERVICE_NAME;
use crate::telemetry::ms_since;
use crate::vfs::linger::Linger;
use crate::vfs::{self, FuseMount, MountpointState, Router};

/// Why startup failed: a stable `reason` and a message that says what to do.
#[derive(Debug)]
pub struct StartupError {
    pub reason: StartReason,
    pub message: String,
}

fn fail(reason: StartReason, message: impl Into<String>) -> StartupError {
    StartupError {
        reason,
        message: message.into(),
    }
}

/// What the checks before anything is started found.
pub struct Preflight {
    pub pidfile: PidFile,
    pub limits: BuildLimits,
    pub linger: Linger,
    pub allow_other: bool,
}

/// The checks before anything is started, and the pidfile lock: only one
/// service per runtime dir.
pub fn preflight(paths: &Paths) -> Result<Preflight, StartupError> {
    paths
        .ensure_runtime_dir()
        .map_err(|e| fail(StartReason::UnsafeRuntimeDir, e.with_fix()))?;
    let limits = BuildLimits::from_env().map_err(|m| fail(StartReason::Settings, m))?;
    let linger = Linger::from_env().map_err(|m| fail(StartReason::Settings, m))?;
    let pidfile = PidFile::acquire(&paths.pidfile()).map_err(|err| match err {
        PidFileError::AlreadyRunning(_) => fail(
            StartReason::AlreadyRunning,
            format!("{err}; stop it with `spfs service stop`"),
        ),
        PidFileError::NotAFile { .. } => fail(StartReason::Pidfile, err.to_string()),
        PidFileError::Io { .. } => fail(StartReason::RuntimeDir, err.to_string()),
    })?;
    platform::check_fuse_available().map_err(|missing| {
        let message = crate::telemetry::with_fix(&missing.problem, Some(&missing.fix));
        fail(StartReason::FuseUnavailable, message)
    })?;
    // One fd per watched process of every runtime: take what the system allows.
    if let Err(err) = platform::raise_fd_limit() {
        tracing::warn!(
            event = "service.fd_limit",
            error = %err,
            "cannot raise the open-file limit; runtimes with many processes may run short"
        );
    }
    prepare_mountpoint(paths)?;
    let allow_other = vfs::choose_allow_other(
        std::env::var("SPFS_ALLOW_OTHER").ok().as_deref(),
        platform::ALLOW_OTHER_BY_DEFAULT,
        platform::allow_other_permitted(),
    )
    .map_err(|e| fail(StartReason::MountOptions, e.with_fix()))?;
    Ok(Preflight {
        pidfile,
        limits,
        linger,
        allow_other,
    })
}

fn prepare_mountpoint(paths: &Paths) -> Result<(), StartupError> {
    let mountpoint = &paths.mountpoint;
    let prepared = vfs::prepare_mountpoint(mountpoint)
        .map_err(|e| fail(StartReason::Mountpoint, e.with_fix()))?;
    match prepared {
        MountpointState::CleanedStaleMount => tracing::warn!(
            event = "service.stale_mount_cleaned",
            mountpoint = %mountpoint.display(),
            "detached a dead FUSE mount left by a killed service"
        ),
        MountpointState::Created => tracing::info!(
            event = "service.mountpoint_created",
            mountpoint = %mountpoint.display(),
            "created the mountpoint"
        ),
        MountpointState::Ready => {}
    }
    Ok(())
}

/// Binds the control socket. We hold the pidfile, so any socket file there
/// is left from a dead service.
pub fn bind(paths: &Paths) -> Result<(Arc<ControlSocket>, Incoming), StartupError> {
    let socket = paths.socket();
    let _span = tracing::info_span!("bind").entered();
    let (bound, incoming) = ControlSocket::bind(&socket).map_err(|e| {
        fail(
            StartReason::Bind,
            format!("cannot listen on {}: {e}", socket.display()),
        )
    })?;
    Ok((Arc::new(bound), incoming))
}

/// The FUSE mount (most of a start) on a blocking thread, while the API is
/// set up; its time in milliseconds with it.
pub type Mounting = tokio::task::JoinHandle<(std::io::Result<FuseMount>, f64)>;

pub fn mount_in_background(paths: &Paths, router: &Arc<Router>, allow_other: bool) -> Mounting {
    let mountpoint = paths.mountpoint.clone();
    let router = Arc::clone(router);
    let span = tracing::info_span!("fuse_mount");
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mounted =
            span.in_scope(|| vfs::mount(&mountpoint, vfs::SpfsFs::new(router), allow_other));
        (mounted, ms_since(started))
    })
}

/// The gRPC server's task. Dropped before it was stopped (a start that
/// failed later), it is aborted; [`ServerTask::drain`] stops it gracefully.
pub struct ServerTask(Option<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>);

impl ServerTask {
    /// Waits (at most `timeout`) for the server to finish what is in
    /// flight once shutdown was triggered; whether it did.
    pub async fn drain(mut self, timeout: std::time::Duration) -> bool {
        match self.0.take() {
            Some(task) => tokio::time::timeout(timeout, task).await.is_ok(),
            None => true,
        }
    }
}

impl Drop for ServerTask {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// The API being served: health NOT_SERVING until [`set_serving`].
pub struct Served {
    pub guard: Arc<GuardState>,
    pub health: HealthReporter,
    pub server: ServerTask,
    pub table: Arc<RuntimeTable>,
}

/// Starts the runtime table and the gRPC server (health and control API) on
/// the socket, stopping when `shutdown` is triggered.
pub async fn serve(
    paths: &Paths,
    router: &Arc<Router>,
    preflight: &Preflight,
    incoming: Incoming,
    shutdown: &Shutdown,
) -> Served {
    let (health, health_service) = tonic_health::server::health_reporter();
    for service in ["", VFS_SERVICE_NAME] {
        health
            .set_service_status(service, ServingStatus::NotServing)
            .await;
    }
    let records = super::records::Records::start(&paths.runtime_dir, &paths.mountpoint);
    let table = RuntimeTable::new(Arc::clone(router), paths.scratch_dir.clone(), records);
    table.start();
    router.start_lingering(preflight.linger);
    let api = Api {
        identity: Identity {
            pid: std::process::id().into(),
            version: super::reported_version().into(),
            start_time_unix: crate::telemetry::unix_now(),
            mountpoint: paths.mountpoint.display().to_string(),
            socket: paths.socket().display().to_string(),
            log_file: paths.service_log().display().to_string(),
        },
        lifecycle: Arc::new(Lifecycle {
            table: Arc::clone(&table),
            limits: preflight.limits,
        }),
        shutdown: shutdown.clone(),
    };
    let guard = GuardState::new();
    let stop = shutdown.clone();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(GuardLayer(Arc::clone(&guard)))
            .add_service(health_service)
            .add_service(VfsServiceServer::new(api))
            .serve_with_incoming_shutdown(incoming, async move {
                stop.triggered().await;
            }),
    );
    Served {
        guard,
        health,
        server: ServerTask(Some(server)),
        table,
    }
}

/// Waits for the FUSE mount started by [`mount_in_background`].
pub async fn await_mount(mounting: Mounting, paths: &Paths) -> Result<FuseMount, StartupError> {
    let (fuse, mount_ms) = match mounting.await {
        Ok((mounted, ms)) => (mounted, ms),
        Err(e) => (
            Err(std::io::Error::other(format!("the mount task failed: {e}"))),
            0.0,
        ),
    };
    let fuse = fuse.map_err(|e| {
        fail(
            StartReason::MountFailed,
            format!("cannot mount FUSE at {}: {e}", paths.mountpoint.display()),
        )
    })?;
    tracing::info!(
        event = "service.fuse_mounted",
        mountpoint = %paths.mountpoint.display(),
        elapsed_ms = mount_ms,
        "FUSE filesystem mounted"
    );
    Ok(fuse)
}

/// Health SERVING, and `Mount` answered from now on.
pub async fn set_serving(served: &Served) {
    async {
        served.guard.set_serving(true);
        for service in ["", VFS_SERVICE_NAME] {
            served
                .health
                .set_service_status(service, ServingStatus::Serving)
                .await;
        }
    }
    .instrument(tracing::info_span!("serving"))
    .await;
}
