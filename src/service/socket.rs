//! The control socket: bound once at startup, accepted on by a task that
//! feeds the gRPC server, and bound again when the socket file (or the whole
//! runtime dir with it) is deleted while the service runs, so that the tools
//! keep finding the service that holds the mountpoint.
//!
//! The server reads connections from a channel rather than from the listener
//! itself; rebinding only swaps the task that accepts.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// The connections the server serves.
pub type Incoming = ReceiverStream<io::Result<UnixStream>>;

pub struct ControlSocket {
    path: PathBuf,
    /// Device and inode of the socket file we bound.
    bound: Mutex<(u64, u64)>,
    acceptor: Mutex<tokio::task::JoinHandle<()>>,
    connections: mpsc::Sender<io::Result<UnixStream>>,
}

impl ControlSocket {
    /// Binds `path` (mode 0600; a file left there is removed first) and
    /// starts accepting. Needs a tokio runtime.
    pub fn bind(path: &Path) -> io::Result<(ControlSocket, Incoming)> {
        let (connections, receiver) = mpsc::channel(64);
        let (listener, id) = listen(path)?;
        let acceptor = tokio::spawn(accept(listener, connections.clone()));
        Ok((
            ControlSocket {
                path: path.to_owned(),
                bound: Mutex::new(id),
                acceptor: Mutex::new(acceptor),
                connections,
            },
            ReceiverStream::new(receiver),
        ))
    }

    /// Whether the path still names the socket we listen on.
    pub fn is_intact(&self) -> bool {
        let bound = *self.bound.lock().unwrap_or_else(|p| p.into_inner());
        file_id(&self.path).is_ok_and(|id| id == bound)
    }

    /// Binds the path again and accepts there from now on.
    pub fn rebind(&self) -> io::Result<()> {
        let (listener, id) = listen(&self.path)?;
        let acceptor = tokio::spawn(accept(listener, self.connections.clone()));
        let old = std::mem::replace(
            &mut *self.acceptor.lock().unwrap_or_else(|p| p.into_inner()),
            acceptor,
        );
        old.abort();
        *self.bound.lock().unwrap_or_else(|p| p.into_inner()) = id;
        Ok(())
    }

    /// Stops accepting and deletes the socket file if it is still ours.
    pub fn remove(&self) {
        self.acceptor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .abort();
        if self.is_intact() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for ControlSocket {
    /// A start that failed after the bind, or the end of a shutdown.
    fn drop(&mut self) {
        self.remove();
    }
}

fn file_id(path: &Path) -> io::Result<(u64, u64)> {
    let meta = std::fs::symlink_metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

fn listen(path: &Path) -> io::Result<(UnixListener, (u64, u64))> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok((listener, file_id(path)?))
}

/// Hands every accepted connection to the server. An accept error (out of
/// fds) is waited out rather than ending the server.
async fn accept(listener: UnixListener, connections: mpsc::Sender<io::Result<UnixStream>>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                if connections.send(Ok(stream)).await.is_err() {
                    return;
                }
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn a_deleted_socket_is_noticed_and_bound_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vfs.sock");
        let (socket, mut incoming) = ControlSocket::bind(&path).unwrap();
        assert!(socket.is_intact());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        std::fs::remove_file(&path).unwrap();
        assert!(!socket.is_intact());
        socket.rebind().unwrap();
        assert!(socket.is_intact());
        let _client = UnixStream::connect(&path).await.unwrap();
        let accepted = tokio::time::timeout(Duration::from_secs(5), incoming.next()).await;
        assert!(matches!(accepted, Ok(Some(Ok(_)))));

        // Replaced by someone else's file: not ours, so not removed.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "other").unwrap();
        assert!(!socket.is_intact());
        socket.remove();
        assert!(path.exists());
    }
}
