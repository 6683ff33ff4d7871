//! The shutdown trigger: SIGTERM, SIGINT, SIGHUP and the `Shutdown` RPC all
//! end up here; the first reason wins.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

#[derive(Clone)]
pub struct Shutdown {
    reason: watch::Sender<Option<&'static str>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            reason: watch::channel(None).0,
        }
    }
}

impl Shutdown {
    pub fn trigger(&self, reason: &'static str) {
        self.reason.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason);
                true
            } else {
                false
            }
        });
    }

    /// Whether shutdown has begun (for handlers that must refuse new work).
    pub fn is_triggered(&self) -> bool {
        self.reason.borrow().is_some()
    }

    /// Resolves with the reason once shutdown is triggered.
    pub async fn triggered(&self) -> &'static str {
        let mut rx = self.reason.subscribe();
        let reason = match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.unwrap_or("unknown"),
            Err(_) => "unknown",
        };
        reason
    }

    /// Turns the stop signals into triggers. Needs a tokio runtime.
    pub fn listen_for_signals(&self) -> std::io::Result<()> {
        for (kind, name) in [
            (SignalKind::terminate(), "SIGTERM"),
            (SignalKind::interrupt(), "SIGINT"),
            (SignalKind::hangup(), "SIGHUP"),
        ] {
            let mut stream = signal(kind)?;
            let shutdown = self.clone();
            tokio::spawn(async move {
                if stream.recv().await.is_some() {
                    shutdown.trigger(name);
                }
            });
        }
        Ok(())
    }
}
