//! The per-user background service (`spfs-fuse-macos service`): it owns the
//! FUSE mount and serves the control API and `grpc.health.v1` on the unix
//! socket. [`run`] is the one entry point: the binary (or a test hosting the
//! service in its own process) gives it the paths, the options and a
//! [`Shutdown`] of its own (the binary turns SIGTERM, SIGINT and SIGHUP
//! into it), and it returns when the service has stopped.
//!
//! Startup is `startup`'s, in steps that hand back guards. While it runs,
//! the runtime dir, pidfile and socket are checked every half second and
//! put back if deleted (`service.socket_restored`); if the runtime dir's
//! parent is gone too (logout), it shuts down (`runtime_dir_lost`).
//! Shutdown reverses startup: NOT_SERVING at once, new mounts refused,
//! requests drained (bounded), FUSE unmounted, socket and pidfile removed.
//!
//! The rooms: `api` (the gRPC edge), `lifecycle` (what is done to a
//! runtime), `table` (the runtimes), `build` (what a runtime shows),
//! `guard` (what every request passes), `error`, `startup`, `shutdown`,
//! `socket`, `pidfile`, `readiness`. What may block is written down in
//! `api` and `lifecycle`: async handlers never do.

mod api;
mod build;
mod error;
mod guard;
mod lifecycle;
mod pidfile;
pub mod readiness;
mod records;
mod shutdown;
mod socket;
mod startup;
mod table;

pub use shutdown::Shutdown;

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::contract::pidfile::PidFileError;
use crate::paths::Paths;
use crate::proto::VFS_SERVICE_NAME;
use crate::telemetry::metrics::metrics;
use crate::telemetry::ms_since;
use crate::vfs::{FuseMount, Router};
use guard::GuardState;
use pidfile::PidFile;
use readiness::ReadyNotifier;
use socket::ControlSocket;
use startup::{ServerTask, StartupError};
use table::RuntimeTable;

/// The version this service reports: `contract::VERSION`, unless
/// `SPFS_TEST_SERVICE_VERSION` is set. That variable exists so tests can stand
/// up a service of "another version" and exercise upgrade handling.
pub(crate) fn reported_version() -> &'static str {
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

/// How the service runs, beside its paths.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Stop after this long with no runtime and no request (`--idle-timeout`).
    pub idle_timeout: Option<Duration>,
}

/// A started service, holding everything that must be undone at shutdown
/// (the guards go in reverse order: the pidfile last).
struct Running {
    table: Arc<RuntimeTable>,
    guard: Arc<GuardState>,
    health: HealthReporter,
    server: ServerTask,
    fuse: FuseMount,
    socket: Arc<ControlSocket>,
    /// Taken (`None`) by the last step of shutdown.
    pidfile: Arc<Mutex<Option<PidFile>>>,
}

/// Runs the service until `shutdown` is triggered (or it stops by itself:
/// idle, logout). Reports readiness on `notifier`.
pub async fn run(
    paths: Paths,
    options: Options,
    shutdown: Shutdown,
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
    let running = match start(&paths, started_at, &shutdown)
        .instrument(startup_span.clone())
        .await
    {
        Ok(running) => running,
        Err(err) => {
            report_start_failure(&err, started_at, notifier);
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
    if let Some(timeout) = options.idle_timeout {
        watch_idle(timeout, &running, &shutdown);
    }
    watch_runtime_dir(paths.clone(), &running, &shutdown);
    stop(running, &shutdown).await;
    ExitCode::SUCCESS
}

fn report_start_failure(err: &StartupError, started_at: Instant, notifier: Option<ReadyNotifier>) {
    tracing::error!(
        event = "service.start_failed",
        reason = err.reason.as_str(),
        error = err.message.as_str(),
        elapsed_ms = ms_since(started_at),
        "startup failed"
    );
    eprintln!("spfs-fuse-macos: {}", err.message);
    if let Some(notifier) = notifier {
        notifier.failed(err.reason.clone(), &err.message);
    }
}

/// The startup steps, in order (`startup`). A step that fails drops the
/// guards of those before it.
async fn start(
    paths: &Paths,
    started_at: Instant,
    shutdown: &Shutdown,
) -> Result<Running, StartupError> {
    let preflight = startup::preflight(paths)?;
    let (socket, incoming) = startup::bind(paths)?;
    let router = Arc::new(Router::default());
    let mounting = startup::mount_in_background(paths, &router, preflight.allow_other);
    let served = startup::serve(paths, &router, &preflight, incoming, shutdown).await;
    tracing::info!(
        event = "service.listening",
        socket = %paths.socket().display(),
        elapsed_ms = ms_since(started_at),
        "answering health checks (NOT_SERVING until mounted)"
    );
    let fuse = startup::await_mount(mounting, paths).await?;
    startup::set_serving(&served).await;
    Ok(Running {
        table: served.table,
        guard: served.guard,
        health: served.health,
        server: served.server,
        fuse,
        socket,
        pidfile: Arc::new(Mutex::new(Some(preflight.pidfile))),
    })
}

/// Stops the service once it has had no runtime and no request for `timeout`.
fn watch_idle(timeout: Duration, running: &Running, shutdown: &Shutdown) {
    let guard = Arc::clone(&running.guard);
    let runtimes = Arc::clone(&running.table);
    let shutdown = shutdown.clone();
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
async fn stop(running: Running, shutdown: &Shutdown) {
    let Running {
        table: runtimes,
        guard,
        health,
        server,
        fuse,
        socket,
        pidfile,
    } = running;
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
    let drained = server.drain(DRAIN_TIMEOUT).await;
    let unmounted = tokio::task::spawn_blocking(move || fuse.unmount()).await;
    // Editable runtimes keep their changes as stopped runtimes.
    let ending = Arc::clone(&runtimes);
    let _ = tokio::task::spawn_blocking(move || {
        ending.end_all();
        // the records say they ended before the service goes
        ending.flush_records();
    })
    .await;
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
    let held = crate::sync::lock(&pidfile).take();
    drop(held);
}

/// How often the runtime dir, pidfile and socket are checked.
const RUNTIME_DIR_CHECK: Duration = Duration::from_millis(500);

/// Puts back the runtime dir, pidfile and socket when they are deleted
/// (tmp cleaners, `rm -rf`), so the tools find this service again; shuts down
/// when they cannot be put back (the runtime dir's parent is gone: logout).
fn watch_runtime_dir(paths: Paths, running: &Running, shutdown: &Shutdown) {
    let pidfile = Arc::clone(&running.pidfile);
    let socket = Arc::clone(&running.socket);
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(RUNTIME_DIR_CHECK).await;
            if shutdown.is_triggered() {
                return;
            }
            let pidfile_intact = match &*crate::sync::lock(&pidfile) {
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
    pidfile: &Mutex<Option<PidFile>>,
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
        *crate::sync::lock(pidfile) = Some(fresh);
    }
    if !socket.is_intact() {
        socket.rebind().map_err(|e| {
            crate::error::Error::io(format!("cannot bind {}", paths.socket().display()), e)
        })?;
    }
    Ok(())
}
