//! The metrics of trace export ([`crate::otel`]). Registered with the rest by [`super::init`].

use once_cell::sync::Lazy;
use prometheus::{register_int_counter, register_int_counter_vec, IntCounter, IntCounterVec};

/// `sluice_trace_spans_dropped_total{reason}`: finished spans that never reached the OTLP
/// collector: `queue_full` (the export queue, `tracing.queue_spans`, was full),
/// `export_failed` (the export request failed or timed out, the collector down included),
/// `shutdown` (the export thread was gone).
pub static TRACE_SPANS_DROPPED: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_trace_spans_dropped_total",
        "Trace spans dropped before reaching the OTLP collector, by reason (queue_full, export_failed, shutdown)",
        &["reason"]
    ))
});

/// `sluice_trace_spans_exported_total`: spans the OTLP collector accepted.
pub static TRACE_SPANS_EXPORTED: Lazy<IntCounter> = Lazy::new(|| {
    metric!(register_int_counter!(
        "sluice_trace_spans_exported_total",
        "Trace spans the OTLP collector accepted"
    ))
});

pub(super) fn init() {
    Lazy::force(&TRACE_SPANS_DROPPED);
    Lazy::force(&TRACE_SPANS_EXPORTED);
    for reason in ["queue_full", "export_failed", "shutdown"] {
        TRACE_SPANS_DROPPED.with_label_values(&[reason]);
    }
}
