//! What every request passes through before its handler: the peer check
//! (only our own uid and root get in, by the socket's peer credentials:
//! `SO_PEERCRED` on Linux, `getpeereid`/`LOCAL_PEERPID` on macOS), the caller's
//! identity for handlers, the last-activity time for the idle timeout, and the
//! `spfs-service-version` header on every response, so a launcher learns the
//! version from its health probe, or from its `Mount` itself, without another
//! call; and the refusal of `Mount` until the service is SERVING (the
//! launcher's warm path sends its `Mount` with no health Check before it: see
//! `launcher/warm.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::server::UdsConnectInfo;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::contract::{LAUNCHER_VERSION_HEADER, VERSION_HEADER};

/// The one call refused until the service is SERVING.
const MOUNT_PATH: &str = "/spfs.vfs.v1.VfsService/Mount";

/// Who is calling, for handlers (`Mount` checks the root pid against it).
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub pid: Option<i32>,
}

/// Shared by all connections.
pub struct GuardState {
    owner: u32,
    started: Instant,
    /// Milliseconds since `started` of the latest request's start or end.
    last_request_ms: AtomicU64,
    /// Requests whose handler has not answered yet: while any runs (a long
    /// `Mount`), the service is busy, whatever the idle timeout.
    in_flight: AtomicU64,
    /// Health is SERVING: FUSE is mounted and shutdown has not begun.
    serving: AtomicBool,
}

impl GuardState {
    pub fn new() -> Arc<GuardState> {
        Arc::new(GuardState {
            owner: nix::unistd::geteuid().as_raw(),
            started: Instant::now(),
            last_request_ms: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            serving: AtomicBool::new(false),
        })
    }

    /// Follows the health status: `Mount` is answered only while SERVING.
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::SeqCst);
    }

    /// Why a `Mount` is not handled, if it is not: before FUSE is mounted a
    /// runtime could not be shown (UNAVAILABLE, which the launcher answers by
    /// waiting for SERVING on its start path); and a launcher's warm-path
    /// `Mount` that names another version than ours is left to the launcher's
    /// version rules (restart this service or keep it) before anything is
    /// recorded.
    fn mount_refusal(&self, headers: &http::HeaderMap) -> Option<tonic::Status> {
        if !self.serving.load(Ordering::SeqCst) {
            return Some(tonic::Status::unavailable(
                "the service is not serving yet (its FUSE mount is not up); retry",
            ));
        }
        let ours = super::reported_version();
        match headers.get(LAUNCHER_VERSION_HEADER).map(|v| v.to_str()) {
            Some(Ok(theirs)) if theirs == ours => None,
            None => None,
            Some(theirs) => Some(tonic::Status::failed_precondition(format!(
                "this service is version {ours} and the launcher {}: the launcher's start path decides whether to restart it",
                theirs.unwrap_or("(not text)")
            ))),
        }
    }

    /// Time since the last request ended (or since start); zero while a
    /// request is being handled.
    pub fn idle_for(&self) -> std::time::Duration {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return std::time::Duration::ZERO;
        }
        let last = std::time::Duration::from_millis(self.last_request_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    fn touch(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last_request_ms.fetch_max(now, Ordering::Relaxed);
    }

    fn allowed(&self, uid: u32) -> bool {
        uid == self.owner || uid == 0
    }

    /// Counts a request as in flight until the returned guard is dropped.
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.touch();
        InFlight(Arc::clone(self))
    }
}

/// One request being handled; dropping it (answered, failed or cancelled)
/// ends it and restarts the idle clock.
struct InFlight(Arc<GuardState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Clone)]
pub struct GuardLayer(pub Arc<GuardState>);

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            state: Arc::clone(&self.0),
        }
    }
}

#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    state: Arc<GuardState>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Guard<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let in_flight = self.state.begin();
        let cred = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred);
        let caller = cred.map(|c| Caller {
            uid: c.uid(),
            pid: c.pid(),
        });
        match caller {
            Some(caller) if self.state.allowed(caller.uid) => {
                request.extensions_mut().insert(caller);
            }
            _ => {
                tracing::warn!(
                    event = "service.denied",
                    uid = caller.map(|c| i64::from(c.uid)).unwrap_or(-1),
                    peer_pid = caller.and_then(|c| c.pid).unwrap_or(0),
                    path = request.uri().path(),
                    "refused a request from another user"
                );
                let status = tonic::Status::permission_denied(
                    "this spfs service belongs to another user; start your own with `spfs service start`",
                );
                return Box::pin(async move { Ok(with_version(status.into_http())) });
            }
        }
        if request.uri().path() == MOUNT_PATH {
            if let Some(status) = self.state.mount_refusal(request.headers()) {
                return Box::pin(async move {
                    drop(in_flight);
                    Ok(with_version(status.into_http()))
                });
            }
        }
        // The handler's span joins the caller's trace (traceparent metadata).
        let span = tracing::info_span!("rpc", rpc.method = request.uri().path());
        let _ = span.set_parent(crate::telemetry::otel::context_from_headers(
            request.headers(),
        ));
        // The ready inner service handles this call; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let call = span.in_scope(|| inner.call(request));
        Box::pin(
            async move {
                let response = call.await.map(with_version);
                drop(in_flight);
                response
            }
            .instrument(span),
        )
    }
}

fn with_version(mut response: http::Response<Body>) -> http::Response<Body> {
    if let Ok(version) = http::HeaderValue::from_str(super::reported_version()) {
        response.headers_mut().insert(VERSION_HEADER, version);
    }
    response
}
