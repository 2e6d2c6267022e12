//! The per-request context (Pingora's `CTX`), in parts, each filled in by the one stage that
//! owns it and read by the stages after it:
//!
//! | part          | filled by                         | what                               |
//! |---------------|-----------------------------------|------------------------------------|
//! | `caller`      | `request` (path, identify, route) | tenant, route, API, error style    |
//! | `inspected`   | `inspect`                         | body fields and the body as sent   |
//! | `reuse`       | `reuse`                           | cache / coalescing key and intent  |
//! | `cache`       | `cache`                           | hit / miss / bypass                |
//! | `admission`   | `limit`                           | the hold on the tenant's limits    |
//! | `upstream`    | `failover` / passthrough          | attempts made, the serving endpoint|
//! | `delivered`   | `relay` / `respond` / `logging`   | what the client got                |
//! | `passthrough` | `request` (passthrough only)      | endpoint, key, breaker pass        |
//!
//! Whether a request is inspected or passed through is which part is set, not a mode flag.

use crate::balance::breaker::Pass;
use crate::config::{Pool, Snapshot, TenantId};
use crate::error::SluiceError;
use crate::limits::Admission;
use crate::provider::ErrorStyle;
use crate::usage::{ApiKind, Usage};
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the body inspection learned (OpenAI / Anthropic request JSON fields).
#[derive(Debug, Default, Clone)]
pub struct Inspected {
    /// `model`.
    pub model: Option<String>,
    /// `stream: true`.
    pub stream: bool,
    /// `max_tokens`, else `max_completion_tokens` / `max_output_tokens`.
    pub max_tokens: Option<u64>,
    /// sluice added `stream_options.include_usage` (the client did not ask for usage chunks).
    pub injected_include_usage: bool,
}

/// An inspected request: its fields and the body as forwarded (possibly rewritten), held once
/// and shared by every attempt.
#[derive(Debug, Clone)]
pub struct InspectedRequest {
    /// Body fields.
    pub fields: Inspected,
    /// The body as sent upstream.
    pub body: Bytes,
}

/// Who is calling and where the request goes (stage `request`: path, identify, route).
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// Native error style for this request.
    pub style: ErrorStyle,
    /// Tenant, once identified.
    pub tenant: Option<TenantId>,
    /// API family of the path, if it is one sluice accounts.
    pub api: Option<ApiKind>,
    /// Index of the matched route in the snapshot's `routes`.
    pub route: Option<usize>,
}

/// One upstream attempt, as recorded for the log line.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// Pool name.
    pub pool: Arc<str>,
    /// Endpoint `host:port`.
    pub endpoint: String,
    /// Upstream status, 0 when none was received.
    pub status: u16,
    /// What happened: `ok`, `failover`, `key_disabled`, an error label.
    pub outcome: &'static str,
}

/// One leg of a stream resumed after a cut (`failover.resume_on_cut`), for the log line: the
/// cut leg first, then each continuation tried.
#[derive(Debug, Clone)]
pub struct Leg {
    /// Pool name.
    pub pool: Arc<str>,
    /// Endpoint `host:port`.
    pub endpoint: String,
    /// Upstream status, 0 when none was received.
    pub status: u16,
    /// `ok`, the cut's error label, or why the continuation failed.
    pub outcome: &'static str,
    /// Prompt tokens billed by its upstream (estimated for a cut leg that reported none).
    pub prompt_tokens: u64,
    /// Completion tokens it delivered (estimated for a cut leg).
    pub completion_tokens: u64,
}

/// The upstream side of the request (stage `failover`, or the passthrough choice).
#[derive(Debug, Default)]
pub struct UpstreamLog {
    /// Attempts made, in order.
    pub attempts: Vec<AttemptRecord>,
    /// The pool and endpoint index of the last attempt (the one that served, if any).
    pub last: Option<(Arc<Pool>, usize)>,
    /// The served attempt's trace span (tracing on), ended with the request.
    pub served_span: Option<crate::otel::AttemptSpan>,
}

impl UpstreamLog {
    /// The last attempt's pool.
    pub fn pool(&self) -> Option<&Arc<Pool>> {
        self.last.as_ref().map(|(p, _)| p)
    }

    /// The last attempt's endpoint `host:port`.
    pub fn endpoint_addr(&self) -> Option<&str> {
        let (pool, i) = self.last.as_ref()?;
        pool.endpoints.get(*i).map(|e| e.addr.as_str())
    }
}

/// What the client got (stages `relay`, `respond`, `logging`).
#[derive(Debug, Default)]
pub struct Delivered {
    /// Status sent to the client (0 = none).
    pub status: u16,
    /// Error sluice answered or ended the response with.
    pub error: Option<SluiceError>,
    /// Exact usage from the upstream.
    pub usage: Option<Usage>,
    /// The response reached its normal end (stream terminal event, or whole JSON body).
    pub completed: bool,
    /// Part of the response went by uninspected (an SSE event over
    /// `accounting.max_sse_event_bytes`): the tokens are settled as estimated even when the
    /// upstream reported usage.
    pub usage_incomplete: bool,
    /// Completion text delivered, when usage must be estimated.
    pub output_text: Option<String>,
    /// Time to first token (first body byte sent to the client), from the request's start.
    pub ttft: Option<Duration>,
    /// The client left before the end of the response.
    pub client_disconnected: bool,
    /// Streamed inspected requests: how long the header and the no-content events were held
    /// before the first content event (commit on content).
    pub held: Option<Duration>,
    /// Legs of a stream resumed after a cut (empty when none was cut or resumed).
    pub legs: Vec<Leg>,
    /// Continuations spliced into the client's stream.
    pub resumes: u32,
    /// A follower of a coalesced call: the leader's request id (the follower is charged no
    /// upstream tokens).
    pub coalesced: Option<Arc<str>>,
    /// A stream whose accountant saw the whole answer: its final event, no error event, no
    /// malformed or oversized event, and (OpenAI chat/completions, Anthropic) every choice's
    /// finish reason and the usage report after the last content. What the response cache
    /// stores a stream on ([`crate::cache::record`]), without parsing it a second time.
    pub stream_whole: bool,
    /// The client's response went out short after its header (a plain body cut by the
    /// upstream, a coalesced client cut for lagging): the transfer is broken off, without
    /// the end of its framing (HTTP/1.1 `0\r\n\r\n` chunk, RFC 9112 section 7.1; an HTTP/2
    /// stream is reset), so the client sees it fail, never a truncated body framed as whole.
    pub cut_short: bool,
    /// The model the answer names (tracing on only: the trace's `gen_ai.response.model`,
    /// [`crate::usage::response_model`]).
    pub response_model: Option<String>,
}

/// A passthrough request's upstream (stage `request`): served on Pingora's proxy path.
#[derive(Debug)]
pub struct Passthrough {
    /// Key index on the endpoint in `upstream.last`.
    pub key: usize,
    /// The endpoint's breaker pass (a half-open breaker's probe slot), held until the outcome
    /// is recorded; dropped unused if the request ends before.
    pub breaker_pass: Option<Pass>,
}

/// The per-request context (Pingora's `CTX`): see the module docs for who fills what.
pub struct RequestCtx {
    /// Request id (UUID v4, simple form), echoed in `x-request-id`/`request-id` on sluice's
    /// own errors and in `x-sluice-request-id` on every response.
    pub request_id: String,
    /// When the request arrived.
    pub start: Instant,
    /// The config snapshot this request started with (kept for its whole life).
    pub snapshot: Option<Arc<Snapshot>>,
    /// Who is calling, which route.
    pub caller: Caller,
    /// Set for inspected requests.
    pub inspected: Option<InspectedRequest>,
    /// The request's cache / coalescing key, on routes with either.
    pub reuse: Option<super::reuse::Reuse>,
    /// The request's hold on its tenant's limits (reservations, concurrency permit); settled
    /// by the log stage, released if dropped.
    pub admission: Option<Admission>,
    /// Attempts and the serving endpoint.
    pub upstream: UpstreamLog,
    /// What the client got.
    pub delivered: Delivered,
    /// Set for passthrough requests.
    pub passthrough: Option<Passthrough>,
    /// Counts this request in flight.
    pub active: Option<super::ActiveGuard>,
    /// The response cache's outcome, on routes with `cache`.
    pub cache: Option<crate::cache::Outcome>,
    /// The request's trace span (tracing on), ended by the log stage.
    pub trace: Option<crate::otel::RequestSpan>,
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self {
            request_id: uuid::Uuid::new_v4().simple().to_string(),
            start: Instant::now(),
            snapshot: None,
            caller: Caller::default(),
            inspected: None,
            reuse: None,
            admission: None,
            upstream: UpstreamLog::default(),
            delivered: Delivered::default(),
            passthrough: None,
            active: None,
            cache: None,
            trace: None,
        }
    }
}

impl RequestCtx {
    /// Matched route's name, `none` before routing (metric label).
    pub fn route_name(&self) -> &str {
        match (&self.snapshot, self.caller.route) {
            (Some(s), Some(i)) => s.routes.get(i).map_or("none", |r| &r.name),
            _ => "none",
        }
    }

    /// Serving pool's name, `none` before an attempt (metric label).
    pub fn pool_name(&self) -> &str {
        self.upstream.pool().map_or("none", |p| &p.name)
    }

    /// The inspected body fields (defaults for a passthrough request).
    pub fn fields(&self) -> &Inspected {
        static NONE: Inspected = Inspected {
            model: None,
            stream: false,
            max_tokens: None,
            injected_include_usage: false,
        };
        self.inspected.as_ref().map_or(&NONE, |i| &i.fields)
    }

    /// The request's model, when inspected and named.
    pub fn model(&self) -> Option<&str> {
        self.fields().model.as_deref()
    }

    /// The inspected body, if any.
    pub fn body(&self) -> Option<&Bytes> {
        self.inspected.as_ref().map(|i| &i.body)
    }
}
