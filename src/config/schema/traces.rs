//! `tracing`: OpenTelemetry trace export (off unless `otlp_endpoint` is set). Serde types only;
//! compiled into [`crate::otel::Settings`] by `compile/traces.rs`.

use serde::Deserialize;

/// `tracing`: one span per request and one per upstream attempt, exported over OTLP
/// HTTP/protobuf (<https://opentelemetry.io/docs/specs/otlp/#otlphttp>). Fixed at start: a
/// reload that changes this section takes effect at the next restart.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConf {
    /// OTLP/HTTP traces URL, e.g. `http://127.0.0.1:4318/v1/traces` (the collector's path
    /// included; plain `http://` only: the exporter has no TLS stack). Absent: tracing is off
    /// and no span is ever built.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// Share of new traces sampled, 0.0 to 1.0 (trace-id ratio). A request continuing an app's
    /// `traceparent` follows the app's sampled flag (parent-based). Default 1.0.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// Finished spans waiting for export, at most; past it a span is dropped and counted in
    /// `sluice_trace_spans_dropped_total{reason="queue_full"}`. Default 2,048.
    #[serde(default = "default_queue_spans")]
    pub queue_spans: usize,
    /// Most spans per export request. Default 512 (at most `queue_spans`).
    #[serde(default = "default_batch_spans")]
    pub batch_spans: usize,
    /// Longest wait (ms) before a partial batch is exported. Default 5,000 (the OpenTelemetry
    /// SDKs' `OTEL_BSP_SCHEDULE_DELAY`).
    #[serde(default = "default_export_delay_ms")]
    pub export_delay_ms: u64,
    /// Deadline (ms) of one export request; a batch that fails or times out is dropped and
    /// counted (`reason="export_failed"`). Default 10,000 (OTLP's default timeout).
    #[serde(default = "default_export_timeout_ms")]
    pub export_timeout_ms: u64,
    /// The `service.name` resource attribute. Default `sluice`.
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

impl Default for TracingConf {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            sample_ratio: default_sample_ratio(),
            queue_spans: default_queue_spans(),
            batch_spans: default_batch_spans(),
            export_delay_ms: default_export_delay_ms(),
            export_timeout_ms: default_export_timeout_ms(),
            service_name: default_service_name(),
        }
    }
}

fn default_sample_ratio() -> f64 {
    1.0
}
fn default_queue_spans() -> usize {
    2_048
}
fn default_batch_spans() -> usize {
    512
}
fn default_export_delay_ms() -> u64 {
    5_000
}
fn default_export_timeout_ms() -> u64 {
    10_000
}
fn default_service_name() -> String {
    "sluice".to_owned()
}
