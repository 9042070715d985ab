//! Logging and tracing set-up: structured `tracing` output as text or JSON on stderr (stdout is
//! left to commands' own output), filtered by `RUST_LOG` (default `info`); and, when a collector
//! is configured, every span (each request, RPC, provider call and database call) exported over
//! OTLP/HTTP (protobuf).
//!
//! The OpenTelemetry conventions apply: the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SDK_DISABLED`, `OTEL_TRACES_EXPORTER=none`, `OTEL_BSP_*`) win,
//! and authgate's `otlp_endpoint` is only the fallback; a caller's W3C `traceparent` /
//! `tracestate` (HTTP headers, gRPC metadata) becomes the parent of the request's span, and the
//! provider calls carry the context on; request spans are named and attributed per the semantic
//! conventions (`rpc.*` for gRPC, `http.*` / `url.path` for HTTP, `db.*` for the store); JSON log
//! lines inside a traced span carry `trace_id` and `span_id`. Without a collector none of this
//! costs anything on the request path.
//!
//! Secrets never reach a log line or a span: they are held in `Secret` and every instrumented
//! function skips its arguments.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::{propagation::TextMapPropagator as _, trace::TraceContextExt as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*};

use crate::config::LogFormat;

/// Keeps the OTLP exporter alive; dropping it flushes the spans not yet sent.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Set once spans are exported: only then do request spans carry the semantic-convention
/// attributes and the caller's trace context (their cost stays off the path otherwise).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (an OpenTelemetry layer is installed).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Where spans go: `None` (not exported), the OTLP variables' choice (`Some(None)`), or
/// authgate's `otlp_endpoint` as a `/v1/traces` URL.
fn export_target(otlp_endpoint: Option<&str>) -> Option<Option<String>> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim() == "none");
    if disabled {
        return None;
    }
    if var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
        || var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
    {
        return Some(None);
    }
    let endpoint = otlp_endpoint?.trim_end_matches('/');
    Some(Some(if endpoint.ends_with("/v1/traces") {
        endpoint.to_string()
    } else {
        format!("{endpoint}/v1/traces")
    }))
}

/// Installs the global subscriber. Spans are exported when an `OTEL_EXPORTER_OTLP_*ENDPOINT`
/// variable is set, else to `otlp_endpoint` (the collector's base URL, e.g.
/// `http://otel-collector:4318`; spans go to `<endpoint>/v1/traces`).
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> Result<Telemetry, String> {
    // One filter for both outputs: what is logged is what is traced.
    let filter = || {
        EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,h2=warn,hyper=warn,tower=warn"))
    };
    let fmt_layer = match format {
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .map_event_format(WithTraceIds)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => fmt::layer().with_writer(std::io::stderr).boxed(),
    };
    let (otel_layer, provider) = match export_target(otlp_endpoint) {
        None => (None, None),
        Some(url) => {
            let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_http();
            if let Some(url) = url {
                exporter = exporter.with_endpoint(url);
            }
            let exporter =
                exporter.build().map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
            // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES are read by the default resource
            // detectors; "authgate" only when neither names the service.
            let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.trim().is_empty())
                || std::env::var("OTEL_RESOURCE_ATTRIBUTES")
                    .is_ok_and(|v| v.split(',').any(|kv| kv.trim().starts_with("service.name=")));
            let mut resource = Resource::builder();
            if !named {
                resource = resource.with_service_name("authgate");
            }
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource.build())
                .build();
            let tracer = provider.tracer("authgate");
            let layer = tracing_opentelemetry::layer().with_tracer(tracer);
            EXPORTING.store(true, Ordering::Relaxed);
            (Some(layer), Some(provider))
        }
    };
    tracing_subscriber::registry()
        .with(filter())
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()
        .map_err(|e| format!("cannot install the log subscriber: {e}"))?;
    Ok(Telemetry { provider })
}

/// Makes the caller's W3C trace context (`traceparent`, `tracestate`) the parent of `span`.
/// Only while exporting; a malformed header is ignored (a new trace starts).
pub fn adopt_remote_parent(span: &tracing::Span, headers: &http::HeaderMap) {
    if !exporting() || !headers.contains_key("traceparent") {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Adds the current span's W3C trace context to `headers` of a call authgate makes (the
/// provider's endpoints), so the provider's traces join the caller's.
pub fn inject_current(headers: &mut http::HeaderMap) {
    if !exporting() {
        return;
    }
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new()
            .inject_context(&cx, &mut opentelemetry_http::HeaderInjector(headers));
    }
}

/// The JSON log format with the trace and span ids of the span an event happens in, when that
/// span is traced: `{"trace_id":"…","span_id":"…",…}`.
struct WithTraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let ids = ctx.lookup_current().and_then(|span| {
            let extensions = span.extensions();
            let data = extensions.get::<tracing_opentelemetry::OtelData>()?;
            Some((data.trace_id()?, data.span_id()?))
        });
        let Some((trace_id, span_id)) =
            ids.filter(|(t, _)| *t != opentelemetry::trace::TraceId::INVALID)
        else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => {
                write!(writer, "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}")
            }
            None => writer.write_str(&line),
        }
    }
}
