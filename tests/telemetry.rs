//! OpenTelemetry as a collector sees it: an OTLP/gRPC receiver inside the test
//! (the opentelemetry-proto crate's tonic server) gets one trace for a cold
//! `spfs run` across launcher and service, and the documented metrics; with no
//! OTEL_* variable nothing is exported; a dead collector does not hold a command.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;

#[derive(Clone, Debug)]
struct SpanSeen {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
}

#[derive(Default)]
struct Received {
    spans: Mutex<Vec<SpanSeen>>,
    metrics: Mutex<HashSet<(String, String)>>,
}

#[derive(Clone)]
struct Collector(Arc<Received>);

fn service_name(resource: Option<&opentelemetry_proto::tonic::resource::v1::Resource>) -> String {
    resource
        .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
        .and_then(|a| a.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            AnyValue::StringValue(s) => s.clone(),
            other => format!("{other:?}"),
        })
        .unwrap_or_default()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = service_name(resource_spans.resource.as_ref());
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(SpanSeen {
                        service: service.clone(),
                        name: span.name,
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        parent: span.parent_span_id,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut metrics = self.0.metrics.lock().unwrap();
        for resource_metrics in request.into_inner().resource_metrics {
            let service = service_name(resource_metrics.resource.as_ref());
            for scope in resource_metrics.scope_metrics {
                for metric in scope.metrics {
                    metrics.insert((service.clone(), metric.name));
                }
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// A collector on an ephemeral loopback port, served by its own runtime.
fn start_collector() -> (Arc<Received>, SocketAddr, tokio::runtime::Runtime) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let received = Arc::new(Received::default());
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let collector = Collector(Arc::clone(&received));
    runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .add_service(MetricsServiceServer::new(collector))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (received, addr, runtime)
}

fn otel_env(cmd: &mut std::process::Command, endpoint: &str) {
    cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_EXPORTER_OTLP_TIMEOUT", "2000")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "200");
}

#[test]
fn one_trace_spans_launcher_and_service_and_the_metrics_arrive() {
    let (received, addr, _collector) = start_collector();
    let endpoint = format!("http://{addr}");
    let env = TestEnv::new();
    let mut cmd = env.spfs(&["run", "base", "--", "true"]);
    otel_env(&mut cmd, &endpoint);
    run_ok(&mut cmd);
    // A failed start, for the failure counter.
    let mut failing = env.spfs(&["run", "-", "--", "true"]);
    otel_env(&mut failing, &endpoint);
    failing.env("SPFS_RUNTIME_DIR", env.root.path().join("other-run"));
    failing.env("SPFS_FUSE_SERVICE_BIN", "/nonexistent/spfs-fuse-macos");
    assert!(!failing.output().unwrap().status.success());

    let wanted_metrics = [
        ("spfs", "spfs.launcher.ensure.duration"),
        ("spfs", "spfs.launcher.spawns"),
        ("spfs", "spfs.launcher.start_failures"),
        ("spfs-fuse-macos", "spfs.service.startup.duration"),
        ("spfs-fuse-macos", "spfs.service.active_runtimes"),
        ("spfs-fuse-macos", "spfs.service.mount.duration"),
        ("spfs-fuse-macos", "spfs.service.health"),
    ];
    let complete = env.wait_for(Duration::from_secs(10), || {
        let spans = received.spans.lock().unwrap();
        let metrics = received.metrics.lock().unwrap();
        spans.iter().any(|s| s.name == "service.startup")
            && spans
                .iter()
                .any(|s| s.name == "rpc" && s.service == "spfs-fuse-macos")
            && wanted_metrics
                .iter()
                .all(|(svc, name)| metrics.contains(&(svc.to_string(), name.to_string())))
    });
    let spans = received.spans.lock().unwrap().clone();
    let metrics = received.metrics.lock().unwrap().clone();
    assert!(complete, "spans: {spans:#?}\nmetrics: {metrics:?}");

    let by_id: HashMap<Vec<u8>, &SpanSeen> = spans.iter().map(|s| (s.span_id.clone(), s)).collect();
    let ensure = spans
        .iter()
        .find(|s| s.name == "ensure_service_running" && s.service == "spfs")
        .expect("launcher ensure span");
    for phase in ["probe", "lock_wait", "spawn", "readiness_wait", "confirm"] {
        let span = spans
            .iter()
            .find(|s| s.name == phase && s.trace_id == ensure.trace_id)
            .unwrap_or_else(|| panic!("no {phase} span in the trace: {spans:#?}"));
        assert_eq!(span.parent, ensure.span_id, "{phase} is a child of ensure");
    }
    let startup = spans.iter().find(|s| s.name == "service.startup").unwrap();
    assert_eq!(startup.service, "spfs-fuse-macos");
    assert_eq!(
        startup.trace_id, ensure.trace_id,
        "the service's startup is in the launcher's trace"
    );
    let parent = by_id
        .get(&startup.parent)
        .expect("startup's parent was exported");
    assert!(
        ["spawn", "ensure_service_running"].contains(&parent.name.as_str()),
        "{parent:?}"
    );
    for child in ["bind", "fuse_mount", "serving"] {
        let span = spans
            .iter()
            .find(|s| s.name == child)
            .unwrap_or_else(|| panic!("no {child}"));
        assert_eq!(
            span.parent, startup.span_id,
            "{child} under service.startup"
        );
    }
    // The Mount call's handler span joins the launcher's trace too.
    assert!(
        spans.iter().any(|s| s.name == "rpc"
            && s.service == "spfs-fuse-macos"
            && s.trace_id == ensure.trace_id),
        "{spans:#?}"
    );

    // Log lines carry the ids, so a line can be found from the trace and back.
    let trace_hex: String = ensure.trace_id.iter().map(|b| format!("{b:02x}")).collect();
    let logged = env
        .log_lines("spfs")
        .into_iter()
        .chain(env.log_lines("spfs-fuse-macos"));
    let ready = logged
        .filter(|l| l["event"] == "service.ready" || l["event"] == "launcher.spawn")
        .collect::<Vec<_>>();
    assert_eq!(ready.len(), 2, "{ready:?}");
    for line in ready {
        assert_eq!(line["trace_id"], trace_hex.as_str(), "{line}");
        assert!(
            line["span_id"].as_str().is_some_and(|s| s.len() == 16),
            "{line}"
        );
    }
}

#[test]
fn a_dead_collector_does_not_hold_the_command_or_change_its_status() {
    // A port with nobody listening: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = TestEnv::new();
    let mut cmd = env.spfs(&["run", "-", "--", "sh", "-c", "echo ran; exit 5"]);
    otel_env(&mut cmd, &format!("http://127.0.0.1:{port}"));
    cmd.env("OTEL_EXPORTER_OTLP_TIMEOUT", "1000");
    let started = Instant::now();
    let output = cmd.output().unwrap();
    let elapsed = started.elapsed();
    assert_eq!(output.status.code(), Some(5));
    assert_eq!(stdout(&output), "ran\n");
    assert!(
        elapsed < Duration::from_millis(1000 + 2000),
        "took {elapsed:?}"
    );
    // OpenTelemetry's own complaints about the dead collector stay out of our logs.
    let lines = env
        .log_lines("spfs")
        .into_iter()
        .chain(env.log_lines("spfs-fuse-macos"));
    for line in lines {
        let event = line["event"].as_str().unwrap();
        assert!(
            event.starts_with("launcher.") || event.starts_with("service."),
            "{line}"
        );
    }
}

#[test]
fn otel_sdk_disabled_turns_export_off_even_with_an_endpoint() {
    let (received, addr, _collector) = start_collector();
    let env = TestEnv::new();
    let mut cmd = env.spfs(&["run", "base", "--", "true"]);
    otel_env(&mut cmd, &format!("http://{addr}"));
    cmd.env("OTEL_SDK_DISABLED", "true");
    run_ok(&mut cmd);
    run_ok(&mut env.spfs(&["service", "stop"]));
    std::thread::sleep(Duration::from_millis(500));
    assert!(received.spans.lock().unwrap().is_empty());
    assert!(received.metrics.lock().unwrap().is_empty());
}

#[test]
fn without_otel_variables_nothing_is_exported() {
    // Listen on the OTLP default port: nothing may connect.
    let Ok(listener) = std::net::TcpListener::bind("127.0.0.1:4317") else {
        eprintln!("skipped: port 4317 is in use here");
        return;
    };
    listener.set_nonblocking(true).unwrap();
    let env = TestEnv::new();
    run_ok(&mut env.spfs(&["run", "base", "--", "true"]));
    run_ok(&mut env.spfs(&["service", "stop"]));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        listener.accept().is_err(),
        "something connected to the default OTLP endpoint"
    );
    // And no log line claims a trace.
    let lines = env
        .log_lines("spfs")
        .into_iter()
        .chain(env.log_lines("spfs-fuse-macos"));
    assert!(lines.into_iter().all(|l| l.get("trace_id").is_none()));
}
