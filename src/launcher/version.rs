//! A running service of another version (after an upgrade): replaced when
//! no runtime uses it, else kept, and the user told once how to switch.

use tonic::transport::Channel;

use super::stop::stop_service;
use crate::error::{Error, Result};
use crate::settings::Settings;
use crate::telemetry::otel::traced;

/// After an upgrade the running service may be another version. Without active
/// runtimes it is stopped (true: start a new one); with runtimes it is kept
/// and the user is told, once, how to switch when convenient.
pub(super) async fn replace_other_version(
    settings: &Settings,
    channel: &Channel,
    service_version: Option<&str>,
) -> Result<bool> {
    let ours = crate::contract::VERSION;
    if service_version == Some(ours) {
        return Ok(false);
    }
    let service_version = service_version.unwrap_or("unknown");
    let status = crate::client::ControlClient::new(channel.clone())
        .status(traced(crate::proto::StatusRequest {}))
        .await
        .map_err(|s| Error::rpc("Status of the running service failed", s))?
        .into_inner();
    if status.runtimes.is_empty() {
        tracing::info!(
            event = "launcher.version_restart",
            service_version,
            launcher_version = ours,
            service_pid = status.pid,
            "restarting a service of another version (no active runtimes)"
        );
        stop_service(&settings.paths, true).await?;
        return Ok(true);
    }
    tracing::warn!(
        event = "launcher.version_mismatch",
        service_version,
        launcher_version = ours,
        active_runtimes = status.runtimes.len(),
        "keeping a service of another version while it has active runtimes"
    );
    eprintln!(
        "spfs: warning: the running service is version {service_version} and this spfs is {ours}; it has {} active runtime(s), so it keeps running. Run `spfs service stop` when convenient to switch.",
        status.runtimes.len()
    );
    Ok(false)
}
