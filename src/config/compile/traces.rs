//! `tracing` -> [`Settings`]: the OTLP endpoint and the export bounds checked.

use super::Errors;
use crate::config::schema::TracingConf;
use crate::otel::Settings;
use http::Uri;
use std::time::Duration;

/// The trace export settings, `None` when `tracing.otlp_endpoint` is absent (tracing off).
/// Errors: an endpoint that is not an absolute `http://` URL (the exporter is built without a
/// TLS stack: reqwest's rustls feature would add aws-lc-rs to the binary; a sidecar exports to
/// a node-local or in-cluster collector), a ratio outside 0..=1, a zero or inconsistent bound,
/// an empty service name.
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
        .is_ok_and(|u| u.scheme_str() == Some("http") && u.authority().is_some());
    if !ok {
        errs.push(
            "tracing.otlp_endpoint",
            format!(
                "must be an http:// URL (no TLS: export to a local collector), got {endpoint:?}"
            ),
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

#[cfg(test)]
mod tests {
    use super::super::{compile, Secrets};
    use crate::config::parse;

    const BASE: &str = "pools:\n  - name: oa\n    provider: openai\n    endpoints:\n      - url: http://127.0.0.1:9\n        keys: [{env: K}]\nroutes:\n  - name: r\n    match: {path_prefix: /v1}\n    pools: [oa]\n";

    fn compiled(tracing: &str) -> Result<Option<crate::otel::Settings>, Vec<String>> {
        let yaml = format!("{BASE}tracing: {tracing}\n");
        compile(
            &parse(&yaml).map_err(|e| vec![e.to_string()])?,
            Secrets::Skip,
        )
        .map(|s| s.tracing)
        .map_err(|e| e.0.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn tracing_is_off_without_an_endpoint_and_defaults_are_sidecar_sized() {
        assert_eq!(compiled("{}"), Ok(None));
        let s = compiled("{otlp_endpoint: 'http://127.0.0.1:4318/v1/traces'}")
            .ok()
            .flatten()
            .unwrap();
        assert_eq!(s.endpoint, "http://127.0.0.1:4318/v1/traces");
        assert_eq!((s.queue_spans, s.batch_spans), (2048, 512));
        assert_eq!(s.export_timeout.as_millis(), 10_000);
        assert_eq!((s.sample_ratio, s.service_name.as_str()), (1.0, "sluice"));
    }

    #[test]
    fn bad_tracing_settings_are_listed_with_their_path() {
        let errs = compiled(
            "{otlp_endpoint: 'udp://x:1', sample_ratio: 1.5, queue_spans: 10, batch_spans: 20}",
        )
        .unwrap_err();
        for want in [
            "tracing.sample_ratio: must be between 0.0 and 1.0",
            "tracing.batch_spans: must not exceed tracing.queue_spans",
            "tracing.otlp_endpoint: must be an http:// URL (no TLS: export to a local collector), got \"udp://x:1\"",
        ] {
            assert!(
                errs.iter().any(|e| e == want),
                "missing {want:?} in {errs:#?}"
            );
        }
        let tls = compiled("{otlp_endpoint: 'https://collector:4318/v1/traces'}").unwrap_err();
        assert!(tls[0].starts_with("tracing.otlp_endpoint: must be an http:// URL"));
        let typo = compiled("{otlp_endpont: 'http://x:1'}").unwrap_err();
        assert!(typo.iter().any(|e| e.contains("otlp_endpont")), "{typo:?}");
    }
}
