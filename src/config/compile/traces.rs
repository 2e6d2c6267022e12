//! `tracing` -> [`Settings`]: the OTLP endpoint and the export bounds checked.

use super::Errors;
use crate::config::schema::TracingConf;
use crate::otel::Settings;
use http::Uri;
use std::time::Duration;

/// The trace export settings, `None` when `tracing.otlp_endpoint` is absent (tracing off).
/// Errors: an endpoint that is not an absolute `http`/`https` URL, a ratio outside 0..=1, a zero
/// or inconsistent bound, an empty service name.
pub(super) fn compile_tracing(t: &TracingConf, errs: &mut Errors) -> Option<Settings> {
    if !(0.0..=1.0).contains(&t.sample_ratio) {
        errs.push("tracing.sample_ratio", "must be between 0.0 and 1.0");
    }
    if t.queue_spans == 0 || t.batch_spans == 0 {
        errs.push(
            "tracing",
            "queue_spans and batch_spans must be greater than 0",
        );
    }
    if t.batch_spans > t.queue_spans {
        errs.push("tracing.batch_spans", "must not exceed tracing.queue_spans");
    }
    if t.export_delay_ms == 0 || t.export_timeout_ms == 0 {
        errs.push(
            "tracing",
            "export_delay_ms and export_timeout_ms must be greater than 0",
        );
    }
    if t.service_name.trim().is_empty() {
        errs.push("tracing.service_name", "must not be empty");
    }
    let endpoint = t.otlp_endpoint.as_ref()?;
    let ok = endpoint
        .parse::<Uri>()
        .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some());
    if !ok {
        errs.push(
            "tracing.otlp_endpoint",
            format!("must be an http:// or https:// URL, got {endpoint:?}"),
        );
        return None;
    }
    Some(Settings {
        endpoint: endpoint.clone(),
        sample_ratio: t.sample_ratio,
        queue_spans: t.queue_spans,
        batch_spans: t.batch_spans,
        export_delay: Duration::from_millis(t.export_delay_ms),
        export_timeout: Duration::from_millis(t.export_timeout_ms),
        service_name: t.service_name.clone(),
    })
}
