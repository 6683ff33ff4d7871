//! OpenTelemetry: traces and metrics over OTLP/gRPC, off unless configured.
//!
//! On when `OTEL_EXPORTER_OTLP_ENDPOINT` (or its `_TRACES_`/`_METRICS_`
//! variant) is set and `OTEL_SDK_DISABLED` is not `true`. The exporters read
//! the standard variables themselves (endpoint, headers, timeout); the
//! resource takes `OTEL_SERVICE_NAME` (default: the program's name) and
//! `OTEL_RESOURCE_ATTRIBUTES`. When off, nothing is built: no thread, no
//! connection. The exporters run on a one-thread tokio runtime of their own, so
//! they work whatever the program's runtime is doing, and `shutdown` flushes
//! within the export timeout and never longer.
//!
//! Trace context crosses processes as W3C `traceparent`/`tracestate`: in the
//! `TRACEPARENT`/`TRACESTATE` environment of a spawned service, and in the
//! metadata of every gRPC call.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::Context;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::Program;

/// The OTLP default when `OTEL_EXPORTER_OTLP_TIMEOUT` is not set.
const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

fn set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

/// Whether the user configured an OTLP endpoint and did not disable the SDK.
pub fn enabled() -> bool {
    let disabled =
        std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"));
    !disabled
        && [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        ]
        .iter()
        .any(|v| set(v))
}

/// `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds), the bound on every flush.
pub fn export_timeout() -> Duration {
    std::env::var("OTEL_EXPORTER_OTLP_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_EXPORT_TIMEOUT)
}

/// The live providers; `shutdown` flushes them.
pub struct Otel {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
    runtime: tokio::runtime::Runtime,
}

/// Builds the providers, installs the global meter provider and propagator,
/// and returns a tracer for the `tracing` layer.
pub fn start(program: Program) -> Result<(Otel, opentelemetry_sdk::trace::Tracer), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otel-export")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the exporter runtime: {e}"))?;
    let _entered = runtime.enter();
    let mut resource = Resource::builder();
    if !set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name(program.prefix());
    }
    let resource = resource
        .with_attributes([opentelemetry::KeyValue::new(
            "service.version",
            crate::contract::VERSION,
        )])
        .build();
    let traces_wanted =
        set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    let metrics_wanted =
        set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT");
    let tracer = if traces_wanted {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| format!("cannot build the OTLP span exporter: {e}"))?;
        Some(
            SdkTracerProvider::builder()
                .with_resource(resource.clone())
                .with_batch_exporter(exporter)
                .build(),
        )
    } else {
        None
    };
    let meter = if metrics_wanted {
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| format!("cannot build the OTLP metric exporter: {e}"))?;
        let provider = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_periodic_exporter(exporter)
            .build();
        opentelemetry::global::set_meter_provider(provider.clone());
        Some(provider)
    } else {
        None
    };
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let sdk_tracer = match &tracer {
        Some(provider) => provider.tracer(program.prefix()),
        // Spans still get ids (for log lines) but go nowhere.
        None => SdkTracerProvider::builder()
            .build()
            .tracer(program.prefix()),
    };
    drop(_entered);
    Ok((
        Otel {
            tracer,
            meter,
            runtime,
        },
        sdk_tracer,
    ))
}

impl Otel {
    /// Flushes and stops the exporters, waiting at most the export timeout
    /// (plus a little): an unreachable collector never holds a command longer.
    pub fn shutdown(self) {
        let Otel {
            tracer,
            meter,
            runtime,
        } = self;
        let limit = export_timeout() + Duration::from_millis(200);
        let (done, wait) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            if let Some(tracer) = tracer {
                let _ = tracer.shutdown_with_timeout(export_timeout());
            }
            if let Some(meter) = meter {
                let _ = meter.shutdown_with_timeout(export_timeout());
            }
            let _ = done.send(());
        });
        if wait.recv_timeout(limit).is_err() {
            eprintln!(
                "spfs: warning: telemetry export did not finish within {} ms; some spans or metrics were dropped",
                limit.as_millis()
            );
        }
        runtime.shutdown_background();
    }
}

struct MapCarrier<'a>(&'a mut HashMap<String, String>);

impl Injector for MapCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

/// The current span's context as W3C headers (`traceparent`, `tracestate`);
/// empty when tracing is off or there is no span.
pub fn current_trace_headers() -> HashMap<String, String> {
    let mut headers = HashMap::new();
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut MapCarrier(&mut headers));
    headers
}

struct EnvCarrier(HashMap<String, String>);

impl Extractor for EnvCarrier {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The parent context a launcher passed in `TRACEPARENT`/`TRACESTATE`.
pub fn context_from_env() -> Option<Context> {
    let parent = std::env::var("TRACEPARENT").ok()?;
    let mut map = HashMap::from([("traceparent".to_owned(), parent)]);
    if let Ok(state) = std::env::var("TRACESTATE") {
        map.insert("tracestate".to_owned(), state);
    }
    Some(TraceContextPropagator::new().extract(&EnvCarrier(map)))
}

/// The parent context in a request's headers.
pub fn context_from_headers(headers: &tonic::codegen::http::HeaderMap) -> Context {
    let map = ["traceparent", "tracestate"]
        .iter()
        .filter_map(|k| Some(((*k).to_owned(), headers.get(*k)?.to_str().ok()?.to_owned())))
        .collect();
    TraceContextPropagator::new().extract(&EnvCarrier(map))
}

/// A request carrying the current trace context in its metadata.
pub fn traced<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for (key, value) in current_trace_headers() {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            request.metadata_mut().insert(key, value);
        }
    }
    request
}

/// The current span's trace and span ids, when tracing is on.
pub fn current_ids() -> Option<(String, String)> {
    use opentelemetry::trace::TraceContextExt;
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}
