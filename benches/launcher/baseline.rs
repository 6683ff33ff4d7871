//! The launcher as `shared/seed/service-auto-start-plan.md` describes it, for
//! comparison only: "is it running" is a bare connect (100 ms timeout), start
//! is a detached spawn with output to /dev/null, readiness is polling that
//! connect at 50 ms doubling to 500 ms, and racers each spawn and retry (no
//! lock). Adapted only in transport: it connects to our unix socket instead of
//! TCP port 37738, and starts the same service binary.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::UnixStream;

const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_RETRIES: u32 = 5;

async fn service_is_running(socket: &Path) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_millis(100), UnixStream::connect(socket)).await,
        Ok(Ok(_))
    )
}

fn start_service_background(binary: &Path, mountpoint: &Path) -> std::io::Result<()> {
    let mut cmd = Command::new(binary);
    cmd.arg("service")
        .arg(mountpoint)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    // Dropped without waiting: the plan lets the process run on detached.
    cmd.spawn().map(drop)
}

async fn wait_for_service_ready(socket: &Path, timeout: Duration) -> Result<(), String> {
    let start = Instant::now();
    let mut backoff = Duration::from_millis(50);
    while start.elapsed() < timeout {
        if service_is_running(socket).await {
            return Ok(());
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
    Err(format!(
        "service did not start within {}s",
        timeout.as_secs()
    ))
}

/// `ensure_service_running` of the plan (task 3a.4).
pub async fn ensure_service_running(
    binary: &Path,
    socket: &Path,
    mountpoint: &Path,
) -> Result<(), String> {
    for attempt in 0..MAX_RETRIES {
        if service_is_running(socket).await {
            return Ok(());
        }
        match start_service_background(binary, mountpoint) {
            Ok(()) => match wait_for_service_ready(socket, STARTUP_TIMEOUT).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < MAX_RETRIES - 1 => {
                    let _ = e;
                }
                Err(e) => return Err(e),
            },
            Err(e) if attempt < MAX_RETRIES - 1 => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100 * (1 << attempt))).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("could not start or connect to the service after multiple attempts".into())
}
