//! Logs and, when asked for, OpenTelemetry traces: every binary's `tracing` spans sent over
//! OTLP/HTTP to a collector, and the W3C trace context carried on the requests between them (the
//! edge's delta deliveries), so that one trace shows a batch from the edge into the aggregator.
//!
//! Traces are off unless `--otlp-endpoint` is given: then nothing is exported, no span is made
//! per request and no `traceparent` header is sent. The OpenTelemetry SDK reads its standard
//! variables besides (`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_SCHEDULE_DELAY`, ...).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Where a collector takes traces over OTLP/HTTP, under its address (the OTLP specification's
/// path).
pub const OTLP_TRACES_PATH: &str = "/v1/traces";
/// How long one export to the collector may take, in ms; past it that batch of spans is dropped
/// (traces are sampled evidence, never counts).
pub const OTLP_EXPORT_TIMEOUT_MS: u64 = 10_000;

/// Whether spans are exported: the binaries make their per-request spans only then.
static TRACES_ON: AtomicBool = AtomicBool::new(false);

/// The flags every binary shares for its traces.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TelemetryArgs {
    /// Send traces over OTLP/HTTP (protobuf) to this collector, e.g. `http://otel-collector:4318`
    /// (spans go to its `/v1/traces`). Off if absent.
    #[arg(long, env = "HITCOUNT_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("--otlp-endpoint {0:?} is not an http:// or https:// address")]
    Endpoint(String),
    #[error("cannot set up the OTLP exporter")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("a log subscriber was installed before")]
    Subscriber(#[from] tracing_subscriber::util::TryInitError),
}

/// Exports what is still queued when dropped: keep it until the process ends.
#[derive(Debug)]
#[must_use = "dropping it stops the traces"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "the last spans could not be exported");
        }
    }
}

/// Logs to stderr at `RUST_LOG` (default `info`), in colour only on a terminal, so that every
/// binary's logs read and filter alike; with an OTLP endpoint, also exports the spans of
/// hitcount's own code at `info` and above (not the libraries', whatever `RUST_LOG` says) as
/// the service `service_name`.
pub fn init_tracing(
    service_name: &'static str,
    args: &TelemetryArgs,
) -> Result<Telemetry, TelemetryError> {
    use std::io::IsTerminal;
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        );
    let Some(endpoint) = &args.otlp_endpoint else {
        tracing_subscriber::registry().with(logs).try_init()?;
        return Ok(Telemetry { provider: None });
    };
    let provider = tracer_provider(service_name, endpoint)?;
    let traces = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service_name))
        .with_filter(tracing_subscriber::filter::filter_fn(|metadata| {
            metadata.target().starts_with("hitcount") && *metadata.level() <= tracing::Level::INFO
        }));
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()?;
    TRACES_ON.store(true, Ordering::Relaxed);
    tracing::info!(endpoint, "exporting traces over OTLP");
    Ok(Telemetry {
        provider: Some(provider),
    })
}

fn tracer_provider(
    service_name: &'static str,
    endpoint: &str,
) -> Result<SdkTracerProvider, TelemetryError> {
    let base = endpoint.trim_end_matches('/');
    let uri: http::Uri = base
        .parse()
        .map_err(|_| TelemetryError::Endpoint(endpoint.to_owned()))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(TelemetryError::Endpoint(endpoint.to_owned()));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{base}{OTLP_TRACES_PATH}"))
        .with_timeout(Duration::from_millis(OTLP_EXPORT_TIMEOUT_MS))
        .build()?;
    let resource = Resource::builder()
        .with_service_name(service_name)
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Whether spans are exported (`--otlp-endpoint` was given).
pub fn traces_on() -> bool {
    TRACES_ON.load(Ordering::Relaxed)
}

/// Adds the current span's W3C trace context (`traceparent`) to an outgoing request's headers;
/// nothing when traces are off.
pub fn inject_trace_context(headers: &mut http::HeaderMap) {
    let context = tracing::Span::current().context();
    TraceContextPropagator::new()
        .inject_context(&context, &mut opentelemetry_http::HeaderInjector(headers));
}

/// Makes `span` a child of the trace an incoming request's `traceparent` names, if it names one.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    let parent =
        TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
    // Fails only when the span is disabled (traces off): then there is nothing to link.
    let _ = span.set_parent(parent);
}
