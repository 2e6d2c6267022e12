//! The spans sluice exports: one per client request (kind SERVER, a child of the app's span
//! when its `traceparent` names one) and one per upstream attempt (kind CLIENT, a child of the
//! request's), with the OpenTelemetry GenAI and HTTP attributes
//! (<https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/>,
//! <https://opentelemetry.io/docs/specs/semconv/http/http-spans/>) and sluice's own under
//! `sluice.`. Never a prompt, a completion, a header value or a key: only names from the config,
//! the model, counts, statuses and labels.

use super::{attrs, propagate};
use crate::config::{Endpoint, Pool};
use crate::proxy::ctx::RequestCtx;
use crate::usage::{ApiKind, Usage};
use http::HeaderValue;
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_semantic_conventions::attribute as semconv;
use pingora_http::RequestHeader;
use std::time::{Instant, SystemTime};

/// Longest `url.path` recorded, in bytes (a longer path is cut at a character boundary).
const MAX_PATH_BYTES: usize = 256;

/// The request's span (kind SERVER), open from the request's start to its log line.
#[derive(Debug)]
pub struct RequestSpan {
    /// A context holding the span: attempts start as its children.
    cx: Context,
}

/// What the request span records at the end (stage `account`).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestEnd {
    /// Status sent to the client (0: none).
    pub status: u16,
    /// Settled tokens (exact or estimated), when the request settles any.
    pub usage: Option<Usage>,
}

impl RequestSpan {
    /// The span of a request that arrived at `started`, continuing the client's
    /// `traceparent`; `None` when tracing is off (then nothing is allocated).
    pub fn start(req: &RequestHeader, started: Instant) -> Option<Self> {
        let tracer = super::tracer()?;
        let parent = propagate::extract(req);
        let start = SystemTime::now()
            .checked_sub(started.elapsed())
            .unwrap_or_else(SystemTime::now);
        let path = req.uri.path();
        let path = &path[..floor_char_boundary(path, MAX_PATH_BYTES)];
        let span = tracer
            .span_builder(req.method.as_str().to_owned())
            .with_kind(SpanKind::Server)
            .with_start_time(start)
            .with_attributes([
                KeyValue::new(semconv::HTTP_REQUEST_METHOD, req.method.as_str().to_owned()),
                KeyValue::new(semconv::URL_PATH, path.to_owned()),
            ])
            .start_with_context(tracer, &parent);
        Some(Self {
            cx: parent.with_span(span),
        })
    }

    /// A child span for an attempt on endpoint `ep` of `pool`, for `model` as that upstream
    /// knows it; its `traceparent` goes upstream.
    pub fn attempt(
        &self,
        pool: &Pool,
        ep: Option<&Endpoint>,
        model: Option<&str>,
        api: Option<ApiKind>,
    ) -> Option<AttemptSpan> {
        let tracer = super::tracer()?;
        let op = api.map_or("http", attrs::operation);
        let name = match model {
            Some(m) => format!("{op} {m}"),
            None => op.to_owned(),
        };
        let mut kv = vec![
            KeyValue::new(
                attrs::GEN_AI_PROVIDER_NAME,
                attrs::provider_name(pool.provider),
            ),
            KeyValue::new("sluice.pool", pool.name.to_string()),
        ];
        if api.is_some() {
            kv.push(KeyValue::new(attrs::GEN_AI_OPERATION_NAME, op));
        }
        if let Some(m) = model {
            kv.push(KeyValue::new(attrs::GEN_AI_REQUEST_MODEL, m.to_owned()));
        }
        if let Some(ep) = ep {
            kv.push(KeyValue::new("sluice.endpoint", ep.addr.clone()));
            let (host, port) = split_addr(&ep.addr);
            kv.push(KeyValue::new(semconv::SERVER_ADDRESS, host.to_owned()));
            if let Some(port) = port {
                kv.push(KeyValue::new(semconv::SERVER_PORT, i64::from(port)));
            }
        }
        let span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_attributes(kv)
            .start_with_context(tracer, &self.cx);
        let header = HeaderValue::from_str(&propagate::traceparent(span.span_context())).ok()?;
        Some(AttemptSpan {
            span: Box::new(span),
            header,
        })
    }

    /// End the span with what the request became (`ctx` after the relay, `end` from the
    /// account stage).
    pub fn finish(self, ctx: &RequestCtx, end: RequestEnd) {
        let span = self.cx.span();
        let api = ctx.caller.api;
        let op = api.map(attrs::operation);
        let name = match (op, ctx.model()) {
            (Some(op), Some(m)) => format!("{op} {m}"),
            (Some(op), None) => op.to_owned(),
            (None, _) => format!("{} {}", span_method(ctx), ctx.route_name()),
        };
        span.update_name(name);
        let mut kv = vec![
            KeyValue::new("sluice.request_id", ctx.request_id.clone()),
            KeyValue::new("sluice.route", ctx.route_name().to_owned()),
            KeyValue::new("sluice.pool", ctx.pool_name().to_owned()),
            KeyValue::new("sluice.attempts", ctx.upstream.attempts.len() as i64),
            KeyValue::new("sluice.stream", ctx.fields().stream),
        ];
        if let Some(t) = ctx.caller.tenant.as_deref() {
            kv.push(KeyValue::new("sluice.tenant", t.to_owned()));
        }
        if let Some(ep) = ctx.upstream.endpoint_addr() {
            kv.push(KeyValue::new("sluice.endpoint", ep.to_owned()));
        }
        if let Some(pool) = ctx.upstream.pool() {
            kv.push(KeyValue::new(
                attrs::GEN_AI_PROVIDER_NAME,
                attrs::provider_name(pool.provider),
            ));
        }
        if let Some(op) = op {
            kv.push(KeyValue::new(attrs::GEN_AI_OPERATION_NAME, op));
        }
        if let Some(m) = ctx.model() {
            kv.push(KeyValue::new(attrs::GEN_AI_REQUEST_MODEL, m.to_owned()));
        }
        if let Some(u) = end.usage {
            kv.extend(usage_attrs(&u));
        }
        if let Some(m) = &ctx.delivered.response_model {
            kv.push(KeyValue::new(attrs::GEN_AI_RESPONSE_MODEL, m.clone()));
        }
        if let Some(c) = ctx.cache {
            kv.push(KeyValue::new("sluice.cache", c.as_str()));
        }
        if ctx.delivered.coalesced.is_some() {
            kv.push(KeyValue::new("sluice.coalesced", true));
        }
        if ctx.delivered.resumes > 0 {
            kv.push(KeyValue::new(
                "sluice.resumes",
                i64::from(ctx.delivered.resumes),
            ));
        }
        if ctx.delivered.client_disconnected {
            kv.push(KeyValue::new("sluice.client_disconnected", true));
        }
        if end.status > 0 {
            kv.push(KeyValue::new(
                semconv::HTTP_RESPONSE_STATUS_CODE,
                i64::from(end.status),
            ));
        }
        if let Some(ttft) = ctx.delivered.ttft {
            kv.push(KeyValue::new("sluice.ttft_ms", ttft.as_millis() as i64));
            let at = SystemTime::now()
                .checked_sub(ctx.start.elapsed())
                .map(|s| s + ttft);
            if let Some(at) = at {
                span.add_event_with_timestamp("gen_ai.first_token", at, vec![]);
            }
        }
        // OTel HTTP server spans: an error is a 5xx, or an answer sluice had to cut short.
        let error = match &ctx.delivered.error {
            Some(e) => Some(e.label().to_owned()),
            None if end.status >= 500 => Some(end.status.to_string()),
            None => None,
        };
        if let Some(e) = error {
            if end.status >= 500 || (200..300).contains(&end.status) {
                span.set_status(Status::error(e.clone()));
            }
            kv.push(KeyValue::new(semconv::ERROR_TYPE, e));
        }
        span.set_attributes(kv);
        span.end();
    }
}

/// An upstream attempt's span (kind CLIENT).
#[derive(Debug)]
pub struct AttemptSpan {
    /// Boxed: an SDK span is a few hundred bytes, and `Option<AttemptSpan>` sits in every
    /// request's context and attempt, tracing on or off.
    span: Box<opentelemetry_sdk::trace::Span>,
    /// Its `traceparent`, sent upstream.
    header: HeaderValue,
}

impl AttemptSpan {
    /// The `traceparent` header value naming this span.
    pub fn traceparent(&self) -> HeaderValue {
        self.header.clone()
    }

    /// Mark an attempt of a hedged lane (`sluice.hedge`).
    pub fn mark_hedge(&mut self) {
        self.span.set_attribute(KeyValue::new("sluice.hedge", true));
    }

    /// End an attempt that was not served: its upstream status (0 when none) and outcome
    /// (`failover`, `retry`, `key_disabled`, `hedge_lost`, an error label...).
    pub fn end(mut self, status: u16, outcome: &str) {
        self.set_status(status, outcome);
        self.span.end();
    }

    /// End the served attempt once its answer was relayed: its settled tokens, the model the
    /// answer names (`model`), and the error that cut the answer short, if any.
    pub fn end_served(
        mut self,
        status: u16,
        usage: Option<Usage>,
        model: Option<&str>,
        error: Option<&str>,
    ) {
        if let Some(u) = usage {
            self.span.set_attributes(usage_attrs(&u));
        }
        if let Some(m) = model {
            self.span
                .set_attribute(KeyValue::new(attrs::GEN_AI_RESPONSE_MODEL, m.to_owned()));
        }
        match error {
            Some(e) => self.set_status(status, e),
            None => self.set_status(status, "ok"),
        }
        self.span.end();
    }

    fn set_status(&mut self, status: u16, outcome: &str) {
        self.span
            .set_attribute(KeyValue::new("sluice.outcome", outcome.to_owned()));
        if status > 0 {
            self.span.set_attribute(KeyValue::new(
                semconv::HTTP_RESPONSE_STATUS_CODE,
                i64::from(status),
            ));
        }
        // OTel HTTP client spans: any status >= 400 or a failure without one is an error.
        let error = if outcome != "ok" && status == 0 {
            Some(outcome.to_owned())
        } else if status >= 400 {
            Some(status.to_string())
        } else if outcome != "ok" {
            Some(outcome.to_owned())
        } else {
            None
        };
        if let Some(e) = error {
            self.span
                .set_attribute(KeyValue::new(semconv::ERROR_TYPE, e.clone()));
            self.span.set_status(Status::error(e));
        }
    }
}

fn usage_attrs(u: &Usage) -> [KeyValue; 2] {
    [
        KeyValue::new(attrs::GEN_AI_USAGE_INPUT_TOKENS, u.prompt_tokens as i64),
        KeyValue::new(
            attrs::GEN_AI_USAGE_OUTPUT_TOKENS,
            u.completion_tokens as i64,
        ),
    ]
}

fn span_method(ctx: &RequestCtx) -> &'static str {
    if ctx.inspected.is_some() {
        "POST"
    } else {
        "HTTP"
    }
}

/// `host:port` split for `server.address` / `server.port` (IPv6 literals in brackets).
fn split_addr(addr: &str) -> (&str, Option<u16>) {
    match addr.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => match p.parse() {
            Ok(port) => (h.trim_start_matches('[').trim_end_matches(']'), Some(port)),
            Err(_) => (addr, None),
        },
        _ => (addr, None),
    }
}

/// The largest index `<= max` at a character boundary of `s`.
fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_into_host_and_port() {
        assert_eq!(
            split_addr("api.openai.com:443"),
            ("api.openai.com", Some(443))
        );
        assert_eq!(split_addr("[::1]:8080"), ("::1", Some(8080)));
        assert_eq!(split_addr("localhost"), ("localhost", None));
    }

    #[test]
    fn long_paths_are_cut_at_a_character_boundary() {
        let s = "é".repeat(200);
        let i = floor_char_boundary(&s, MAX_PATH_BYTES);
        assert!(i <= MAX_PATH_BYTES && s.is_char_boundary(i) && i > 0);
        assert_eq!(floor_char_boundary("abc", 10), 3);
    }
}
