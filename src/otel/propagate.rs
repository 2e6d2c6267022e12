//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the app's `traceparent` /
//! `tracestate` read from the client's request (the SDK's `TraceContextPropagator`, which
//! rejects malformed values: the request then starts a new trace), and the `traceparent`
//! header sent upstream, naming the attempt's span.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::SpanContext;
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use pingora_http::RequestHeader;

/// The client's request headers as a propagation carrier.
struct Headers<'a>(&'a RequestHeader);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.headers.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.headers.keys().map(|k| k.as_str()).collect()
    }
}

/// The parent context the client's `traceparent` (and `tracestate`) name: a remote span
/// context, or an empty context (a new trace) when absent or malformed.
pub fn extract(req: &RequestHeader) -> Context {
    TraceContextPropagator::new().extract_with_context(&Context::new(), &Headers(req))
}

/// The `traceparent` value (version 00) naming `sc`: `00-{trace id}-{span id}-{flags}`, lower
/// case hex (W3C Trace Context section 3.2).
pub fn traceparent(sc: &SpanContext) -> String {
    format!(
        "00-{:032x}-{:016x}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
        for (k, v) in headers {
            r.insert_header(k.to_string(), *v).unwrap();
        }
        r
    }

    const APP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_continued_with_its_tracestate() {
        let cx = extract(&req(&[
            ("traceparent", APP),
            ("tracestate", "congo=t61rcWkgMzE"),
        ]));
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(traceparent(&sc), APP);
        assert_eq!(sc.trace_state().header(), "congo=t61rcWkgMzE");
    }

    #[test]
    fn malformed_or_absent_traceparents_start_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            let cx = extract(&req(&[("traceparent", bad)]));
            assert!(!cx.span().span_context().is_valid(), "{bad:?}");
        }
        assert!(!extract(&req(&[])).span().span_context().is_valid());
    }

    #[test]
    fn an_unsampled_parent_keeps_its_flag_upstream() {
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let cx = extract(&req(&[("traceparent", unsampled)]));
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && !sc.is_sampled());
        assert_eq!(traceparent(&sc), unsampled);
    }
}
