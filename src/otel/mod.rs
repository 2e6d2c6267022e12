//! OpenTelemetry traces (config `tracing`, off by default): one span per client request and
//! one per upstream attempt ([`span`]), the app's W3C `traceparent` continued and the
//! attempt's sent upstream ([`propagate`]), exported over OTLP HTTP/protobuf from a bounded
//! queue on a thread of its own, with every dropped span counted ([`export`]).
//!
//! Off (no `tracing.otlp_endpoint`), no tracer exists: [`RequestSpan::start`] returns `None`
//! and the request path builds no span, formats no header and allocates nothing for traces.
//! The exporter is set up once at start ([`init`]): the section is restart-only (the export
//! thread and its queue outlive any one config; a reload that changes it is logged).

pub mod attrs;
pub mod export;
pub mod propagate;
pub mod span;

pub use span::{AttemptSpan, RequestEnd, RequestSpan};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use std::sync::OnceLock;
use std::time::Duration;

/// Compiled `tracing` section: where and how spans are exported.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// OTLP/HTTP traces URL (`tracing.otlp_endpoint`), path included.
    pub endpoint: String,
    /// Share of new traces sampled (parent-based: an app's sampled flag wins).
    pub sample_ratio: f64,
    /// Finished spans queued at most.
    pub queue_spans: usize,
    /// Spans per export request at most.
    pub batch_spans: usize,
    /// Longest wait before a partial batch is exported.
    pub export_delay: Duration,
    /// Deadline of one export request.
    pub export_timeout: Duration,
    /// `service.name`.
    pub service_name: String,
}

/// The process's tracer provider (kept for [`flush`]) and tracer, set once by [`init`].
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// The tracer, `None` when tracing is off.
fn tracer() -> Option<&'static SdkTracer> {
    TRACER.get()
}

/// Whether spans are being built and exported.
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// Start exporting with `s`: the OTLP exporter (HTTP/protobuf, blocking client, built on the
/// calling thread: call before the async runtime starts), a parent-based ratio sampler, the
/// resource `service.name` / `service.version`. Errors: the exporter could not be built, or
/// tracing was already started.
pub fn init(s: &Settings) -> Result<(), String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(s.endpoint.clone())
        .with_timeout(s.export_timeout)
        .build()
        .map_err(|e| e.to_string())?;
    let processor = export::CountingProcessor::new(
        exporter,
        export::Bounds {
            queue_spans: s.queue_spans,
            batch_spans: s.batch_spans,
            export_delay: s.export_delay,
            // One export request's deadline, plus a margin for the batch before it.
            flush_timeout: s.export_timeout * 2,
        },
    );
    let resource = Resource::builder()
        .with_service_name(s.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new(
            opentelemetry_semantic_conventions::attribute::SERVICE_VERSION,
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            s.sample_ratio,
        ))))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("sluice");
    PROVIDER
        .set(provider)
        .map_err(|_| "tracing already started".to_owned())?;
    TRACER
        .set(tracer)
        .map_err(|_| "tracing already started".to_owned())
}

/// Export the spans still queued (at shutdown); waits at most twice the export timeout.
pub fn flush() {
    if let Some(p) = PROVIDER.get() {
        let _ = p.force_flush();
    }
}
