//! Connecting to the service over its unix socket, the typed clients used
//! by the launcher and the commands, and the client's side of the gRPC
//! edge: a runtime the control API reports, as the tools show it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::proto::vfs_service_client::VfsServiceClient;
use crate::runtime::{RuntimeInfo, RuntimeState};

pub type HealthClient = tonic_health::pb::health_client::HealthClient<Channel>;
pub type ControlClient = VfsServiceClient<Channel>;

/// Opens a gRPC channel on the socket.
///
/// The first unix connect happens here, so its `io::Error` (ENOENT: no socket,
/// ECONNREFUSED: stale socket) reaches the caller unchanged. Reconnects dial
/// the same path.
pub async fn connect(socket: &Path) -> io::Result<Channel> {
    let first = UnixStream::connect(socket).await?;
    let first = Arc::new(Mutex::new(Some(first)));
    let path: PathBuf = socket.to_owned();
    let connector = tower::service_fn(move |_: Uri| {
        let first = first.lock().map(|mut slot| slot.take()).unwrap_or(None);
        let path = path.clone();
        async move {
            let stream = match first {
                Some(stream) => stream,
                None => UnixStream::connect(&path).await?,
            };
            Ok::<_, io::Error>(TokioIo::new(stream))
        }
    });
    // The URI is required by the API but unused: the connector ignores it.
    Endpoint::from_static("http://spfs.invalid")
        .connect_with_connector(connector)
        .await
        .map_err(io::Error::other)
}

/// A runtime as the control API reports it, as the tools show it.
pub fn runtime_info(runtime: crate::proto::Runtime) -> RuntimeInfo {
    RuntimeInfo {
        root_pid: runtime
            .running
            .then(|| i32::try_from(runtime.root_pid).unwrap_or(0)),
        since_unix: runtime.since_unix,
        scratch_dir: Some(runtime.scratch_dir)
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from),
        state: RuntimeState {
            name: runtime.name,
            env_spec: runtime.env_spec,
            stack: runtime.stack,
            repositories: runtime
                .repositories
                .into_iter()
                .map(PathBuf::from)
                .collect(),
            editable: runtime.editable,
            durable: runtime.durable,
            created_unix: runtime.created_unix,
            command: runtime.command,
        },
    }
}
