//! Logging and tracing set-up: structured `tracing` output as text or JSON on stderr (stdout is
//! left to commands' own output), filtered by `RUST_LOG` (default `info`); and, when
//! `otlp_endpoint` is configured, every span (each request, RPC, provider call and database call)
//! exported over OTLP/HTTP (protobuf) to a collector. Secrets never reach a log line or a span:
//! they are held in `Secret` and every instrumented function skips its arguments.

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

/// Installs the global subscriber. `otlp_endpoint` is the collector's base URL
/// (e.g. `http://otel-collector:4318`); spans go to `<endpoint>/v1/traces`.
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
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => fmt::layer().with_writer(std::io::stderr).boxed(),
    };
    let (otel_layer, provider) = match otlp_endpoint {
        None => (None, None),
        Some(endpoint) => {
            let endpoint = endpoint.trim_end_matches('/');
            let url = if endpoint.ends_with("/v1/traces") {
                endpoint.to_string()
            } else {
                format!("{endpoint}/v1/traces")
            };
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(url)
                .build()
                .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(Resource::builder().with_service_name("authgate").build())
                .build();
            let tracer = provider.tracer("authgate");
            let layer = tracing_opentelemetry::layer().with_tracer(tracer);
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
