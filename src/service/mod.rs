//! The per-user background service (`spfs-fuse-macos service`): it owns the
//! FUSE mount and serves the control API and `grpc.health.v1` on the unix
//! socket.
//!
//! Startup, in order (each failure has a `reason` the launcher shows):
//! runtime dir check, pidfile lock (`already_running`), FUSE available
//! (`fuse_unavailable`), mountpoint ready and owned (`mountpoint`), mount
//! options allowed (`mount_options`), socket bound with health NOT_SERVING
//! (`bind`), FUSE mounted and shown in the kernel's mount table
//! (`mount_failed`; macFUSE mounts asynchronously), then SERVING and the
//! readiness line. While it runs, the runtime dir, pidfile and socket are
//! checked every half second and put back if deleted (`service.socket_restored`);
//! if the runtime dir's parent is gone too (logout), it shuts down
//! (`runtime_dir_lost`). Shutdown reverses startup: NOT_SERVING at once, new
//! mounts refused, requests drained (bounded), FUSE unmounted, socket and
//! pidfile removed.

mod api;
mod build;
mod error;
mod guard;
mod lifecycle;
mod pidfile;
pub mod readiness;
mod shutdown;
mod socket;
mod table;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::contract::pidfile::PidFileError;
use crate::contract::StartReason;
use crate::paths::Paths;
use crate::platform;
use crate::proto::vfs_service_server::VfsServiceServer;
use crate::proto::VFS_SERVICE_NAME;
use crate::telemetry::metrics::metrics;
use crate::vfs::Router;
use crate::vfs::{self, FuseMount, MountpointState};
use api::{Api, Identity};
use guard::{GuardLayer, GuardState};
use pidfile::PidFile;
use readiness::ReadyNotifier;
use shutdown::Shutdown;
use socket::ControlSocket;
use table::RuntimeTable;

/// The version this service reports: `contract::VERSION`, unless
/// `SPFS_TEST_SERVICE_VERSION` is set. That variable exists so tests can stand
/// up a service of "another version" and exercise upgrade handling.
pub fn reported_version() -> &'static str {
    static REPORTED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    REPORTED.get_or_init(|| {
        std::env::var("SPFS_TEST_SERVICE_VERSION")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| crate::contract::VERSION.to_owned())
    })
}

/// How long in-flight requests (and health Watch streams) get once shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

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

/// A started service, holding everything that must be undone at shutdown.
struct Started {
    /// Taken (`None`) by the last step of shutdown.
    pidfile: Arc<std::sync::Mutex<Option<PidFile>>>,
    socket: Arc<ControlSocket>,
    guard: Arc<GuardState>,
    health: HealthReporter,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    fuse: FuseMount,
    shutdown: Shutdown,
    runtimes: Arc<RuntimeTable>,
}

/// Runs the service until it is told to stop. Reports readiness on `notifier`.
pub async fn run(
    paths: Paths,
    idle_timeout: Option<Duration>,
    notifier: Option<ReadyNotifier>,
) -> ExitCode {
    let started_at = Instant::now();
    tracing::info!(
        event = "service.starting",
        version = reported_version(),
        mountpoint = %paths.mountpoint.display(),
        socket = %paths.socket().display(),
        "starting"
    );
    // Joins the trace of the launcher that spawned us (TRACEPARENT), if any.
    let startup_span = tracing::info_span!("service.startup");
    if let Some(parent) = crate::telemetry::otel::context_from_env() {
        let _ = startup_span.set_parent(parent);
    }
    let started = match start(&paths, started_at)
        .instrument(startup_span.clone())
        .await
    {
        Ok(started) => started,
        Err(err) => {
            tracing::error!(
                event = "service.start_failed",
                reason = err.reason.as_str(),
                error = err.message.as_str(),
                elapsed_ms = ms_since(started_at),
                "startup failed"
            );
            eprintln!("spfs-fuse-macos: {}", err.message);
            if let Some(notifier) = notifier {
                notifier.failed(err.reason, &err.message);
            }
            return ExitCode::FAILURE;
        }
    };
    let startup_ms = ms_since(started_at);
    startup_span.in_scope(|| {
        tracing::info!(event = "service.ready", startup_ms, "serving");
    });
    drop(startup_span);
    metrics().startup_duration.record(startup_ms, &[]);
    metrics().health.record(1, &[]);
    match notifier {
        Some(notifier) => notifier.ready(),
        None => eprintln!(
            "spfs-fuse-macos: serving {} on {} (pid {})",
            paths.mountpoint.display(),
            paths.socket().display(),
            std::process::id()
        ),
    }
    if let Some(timeout) = idle_timeout {
        watch_idle(timeout, &started);
    }
    watch_runtime_dir(paths.clone(), &started);
    stop(started).await;
    ExitCode::SUCCESS
}

async fn start(paths: &Paths, started_at: Instant) -> Result<Started, StartupError> {
    paths
        .ensure_runtime_dir()
        .map_err(|e| fail(StartReason::UnsafeRuntimeDir, e.to_string()))?;
    let build_limits =
        build::BuildLimits::from_env().map_err(|m| fail(StartReason::Settings, m))?;
    let linger =
        crate::vfs::linger::Linger::from_env().map_err(|m| fail(StartReason::Settings, m))?;
    let pidfile = PidFile::acquire(&paths.pidfile()).map_err(|err| match err {
        PidFileError::AlreadyRunning(_) => fail(
            StartReason::AlreadyRunning,
            format!("{err}; stop it with `spfs service stop`"),
        ),
        PidFileError::NotAFile { .. } => fail(StartReason::Pidfile, err.to_string()),
        PidFileError::Io { .. } => fail(StartReason::RuntimeDir, err.to_string()),
    })?;

    platform::check_fuse_available().map_err(|m| fail(StartReason::FuseUnavailable, m))?;
    // One fd per watched process of every runtime: take what the system allows.
    if let Err(err) = platform::raise_fd_limit() {
        tracing::warn!(
            event = "service.fd_limit",
            error = %err,
            "cannot raise the open-file limit; runtimes with many processes may run short"
        );
    }
    match vfs::prepare_mountpoint(&paths.mountpoint)
        .map_err(|m| fail(StartReason::Mountpoint, m))?
    {
        MountpointState::CleanedStaleMount => tracing::warn!(
            event = "service.stale_mount_cleaned",
            mountpoint = %paths.mountpoint.display(),
            "detached a dead FUSE mount left by a killed service"
        ),
        MountpointState::Created => tracing::info!(
            event = "service.mountpoint_created",
            mountpoint = %paths.mountpoint.display(),
            "created the mountpoint"
        ),
        MountpointState::Ready => {}
    }
    let allow_other = vfs::choose_allow_other(
        std::env::var("SPFS_ALLOW_OTHER").ok().as_deref(),
        platform::ALLOW_OTHER_BY_DEFAULT,
        platform::allow_other_permitted(),
    )
    .map_err(|m| fail(StartReason::MountOptions, m))?;

    // The FUSE mount (most of a start) runs on a blocking thread while the
    // socket is bound and the API set up; it is awaited before SERVING.
    let router = Arc::new(Router::default());
    let mounting = {
        let mountpoint = paths.mountpoint.clone();
        let router = Arc::clone(&router);
        let span = tracing::info_span!("fuse_mount");
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let mounted =
                span.in_scope(|| vfs::mount(&mountpoint, vfs::SpfsFs::new(router), allow_other));
            (mounted, ms_since(started))
        })
    };

    // We hold the pidfile, so any socket file here is left from a dead service.
    let socket = paths.socket();
    let bind_span = tracing::info_span!("bind").entered();
    let bound = ControlSocket::bind(&socket);
    drop(bind_span);
    let (control_socket, incoming) = match bound {
        Ok(bound) => bound,
        Err(e) => {
            // Unmounted again (dropped) before the error is reported.
            let _ = mounting.await;
            return Err(fail(
                StartReason::Bind,
                format!("cannot listen on {}: {e}", socket.display()),
            ));
        }
    };
    let control_socket = Arc::new(control_socket);

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health
        .set_service_status(VFS_SERVICE_NAME, ServingStatus::NotServing)
        .await;

    let shutdown = Shutdown::default();
    if let Err(e) = shutdown.listen_for_signals() {
        let _ = mounting.await;
        control_socket.remove();
        return Err(fail(
            StartReason::Signals,
            format!("cannot install signal handlers: {e}"),
        ));
    }
    let runtimes = RuntimeTable::new(Arc::clone(&router), paths.scratch_dir.clone());
    runtimes.start();
    router.start_lingering(linger);
    let api = Api {
        identity: Identity {
            pid: std::process::id().into(),
            version: reported_version().into(),
            start_time_unix: crate::telemetry::unix_now(),
            mountpoint: paths.mountpoint.display().to_string(),
            socket: socket.display().to_string(),
            log_file: paths.service_log().display().to_string(),
        },
        lifecycle: Arc::new(lifecycle::Lifecycle {
            table: Arc::clone(&runtimes),
            limits: build_limits,
        }),
        shutdown: shutdown.clone(),
    };
    let guard = GuardState::new();
    let server_stop = shutdown.clone();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(GuardLayer(Arc::clone(&guard)))
            .add_service(health_service)
            .add_service(VfsServiceServer::new(api))
            .serve_with_incoming_shutdown(incoming, async move {
                server_stop.triggered().await;
            }),
    );
    tracing::info!(
        event = "service.listening",
        socket = %socket.display(),
        elapsed_ms = ms_since(started_at),
        "answering health checks (NOT_SERVING until mounted)"
    );

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
    });
    let fuse = match fuse {
        Ok(fuse) => fuse,
        Err(err) => {
            shutdown.trigger("startup_failed");
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, server).await;
            control_socket.remove();
            pidfile.remove();
            return Err(err);
        }
    };
    tracing::info!(
        event = "service.fuse_mounted",
        mountpoint = %paths.mountpoint.display(),
        elapsed_ms = mount_ms,
        "FUSE filesystem mounted"
    );

    async {
        guard.set_serving(true);
        health.set_service_status("", ServingStatus::Serving).await;
        health
            .set_service_status(VFS_SERVICE_NAME, ServingStatus::Serving)
            .await;
    }
    .instrument(tracing::info_span!("serving"))
    .await;
    Ok(Started {
        pidfile: Arc::new(std::sync::Mutex::new(Some(pidfile))),
        socket: control_socket,
        guard,
        health,
        server,
        fuse,
        shutdown,
        runtimes,
    })
}

/// Stops the service once it has had no runtime and no request for `timeout`.
fn watch_idle(timeout: Duration, started: &Started) {
    let guard = Arc::clone(&started.guard);
    let runtimes = Arc::clone(&started.runtimes);
    let shutdown = started.shutdown.clone();
    let tick = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(tick).await;
            if runtimes.len() == 0 && guard.idle_for() >= timeout {
                tracing::info!(
                    event = "service.idle",
                    idle_timeout_ms = timeout.as_millis() as u64,
                    "no runtime and no request for the idle timeout"
                );
                shutdown.trigger("idle");
                return;
            }
        }
    });
}

/// Waits for a stop request, then takes everything down in order.
async fn stop(started: Started) {
    let Started {
        pidfile,
        socket,
        guard,
        health,
        server,
        fuse,
        shutdown,
        runtimes,
    } = started;
    let reason = shutdown.triggered().await;
    let stop_started = Instant::now();
    metrics().health.record(0, &[]);
    guard.set_serving(false);
    health
        .set_service_status(VFS_SERVICE_NAME, ServingStatus::NotServing)
        .await;
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    tracing::info!(
        event = "service.shutdown",
        reason,
        active_runtimes = runtimes.len(),
        "shutting down"
    );
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, server).await.is_ok();
    let unmounted = tokio::task::spawn_blocking(move || fuse.unmount()).await;
    // Editable runtimes keep their changes as stopped runtimes.
    let ending = Arc::clone(&runtimes);
    let _ = tokio::task::spawn_blocking(move || ending.end_all()).await;
    let unmount_error = match unmounted {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(e) => Some(e.to_string()),
    };
    socket.remove();
    tracing::info!(
        event = "service.stopped",
        reason,
        drained,
        unmount_error = unmount_error.as_deref(),
        elapsed_ms = ms_since(stop_started),
        "stopped"
    );
    // Spans and metrics out before the pidfile goes: once it is free, anyone
    // may take this to mean the process has finished.
    crate::telemetry::flush();
    let held = pidfile.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(pidfile) = held {
        pidfile.remove();
    }
}

/// How often the runtime dir, pidfile and socket are checked.
const RUNTIME_DIR_CHECK: Duration = Duration::from_millis(500);

/// Puts back the runtime dir, pidfile and socket when they are deleted
/// (tmp cleaners, `rm -rf`), so the tools find this service again; shuts down
/// when they cannot be put back (the runtime dir's parent is gone: logout).
fn watch_runtime_dir(paths: Paths, started: &Started) {
    let pidfile = Arc::clone(&started.pidfile);
    let socket = Arc::clone(&started.socket);
    let shutdown = started.shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(RUNTIME_DIR_CHECK).await;
            if shutdown.is_triggered() {
                return;
            }
            let pidfile_intact = match &*pidfile.lock().unwrap_or_else(|p| p.into_inner()) {
                Some(held) => held.is_intact(),
                None => return,
            };
            let socket_intact = socket.is_intact();
            if pidfile_intact && socket_intact {
                continue;
            }
            match restore(&paths, &pidfile, &socket, pidfile_intact) {
                // Another service took the new pidfile in the meantime (a
                // launcher that could not find us): it cannot mount over us
                // and leaves; restore after it.
                Err(crate::error::Error::PidFile(PidFileError::AlreadyRunning(_))) => continue,
                Ok(()) => tracing::warn!(
                    event = "service.socket_restored",
                    socket = %paths.socket().display(),
                    pidfile_restored = !pidfile_intact,
                    socket_restored = !socket_intact,
                    "the socket or pidfile was deleted; put them back"
                ),
                Err(error) => {
                    tracing::error!(
                        event = "service.runtime_dir_lost",
                        runtime_dir = %paths.runtime_dir.display(),
                        error = %error,
                        "the runtime dir was deleted and cannot be restored; shutting down"
                    );
                    shutdown.trigger("runtime_dir_lost");
                    return;
                }
            }
        }
    });
}

fn restore(
    paths: &Paths,
    pidfile: &std::sync::Mutex<Option<PidFile>>,
    socket: &ControlSocket,
    pidfile_intact: bool,
) -> crate::error::Result<()> {
    // Recreating a missing parent (`$XDG_RUNTIME_DIR` after logout) is not ours to do.
    if let Some(parent) = paths.runtime_dir.parent() {
        if !parent.is_dir() {
            return Err(crate::error::Error::RuntimeDirParentGone {
                parent: parent.to_owned(),
            });
        }
    }
    paths.ensure_runtime_dir()?;
    if !pidfile_intact {
        let fresh = PidFile::acquire(&paths.pidfile())?;
        // The old lock (on the deleted file) goes with the old handle.
        *pidfile.lock().unwrap_or_else(|p| p.into_inner()) = Some(fresh);
    }
    if !socket.is_intact() {
        socket.rebind().map_err(|e| {
            crate::error::Error::io(format!("cannot bind {}", paths.socket().display()), e)
        })?;
    }
    Ok(())
}

fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}
