//! The typed per-request context: everything a request learns on its way through the
//! pipeline (tenant, route, model, attempts, tokens, timings).

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

/// One upstream attempt, as recorded for the log line.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// Pool name.
    pub pool: Arc<str>,
    /// Endpoint `host:port`.
    pub endpoint: String,
    /// Upstream status, 0 when none was received.
    pub status: u16,
    /// What happened: `ok`, `status`, an error label.
    pub outcome: &'static str,
}

/// Where the request stands in the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    /// Arrived, nothing decided yet.
    #[default]
    New,
    /// Streams straight through Pingora's normal proxy path (not inspected).
    Passthrough,
    /// Body inspected; answered by failover and the relay.
    Inspected,
}

/// The per-request context (Pingora's `CTX`).
pub struct RequestCtx {
    /// Request id (UUID v4), echoed in `x-request-id`/`request-id` on sluice's own errors and
    /// in `x-sluice-request-id` on every response.
    pub request_id: String,
    /// When the request arrived.
    pub start: Instant,
    /// The config snapshot this request started with (kept for its whole life).
    pub snapshot: Option<Arc<Snapshot>>,
    /// Pipeline phase.
    pub phase: Phase,
    /// Tenant, once identified.
    pub tenant: Option<TenantId>,
    /// Index of the matched route in `snapshot.routes`.
    pub route: Option<usize>,
    /// Native error style for this request.
    pub style: ErrorStyle,
    /// API family of the path, if it is one sluice accounts.
    pub api: Option<ApiKind>,
    /// Body fields.
    pub inspected: Inspected,
    /// The request body as forwarded (possibly rewritten), held once and shared by attempts.
    pub body: Option<Bytes>,
    /// Estimated prompt tokens (when usage must be estimated).
    pub prompt_estimate: Option<u64>,
    /// Pool and endpoint serving the request (last attempt).
    pub pool: Option<Arc<Pool>>,
    /// Endpoint index in `pool`.
    pub endpoint: usize,
    /// Key index on the endpoint (passthrough requests).
    pub key: usize,
    /// Attempts made.
    pub attempts: Vec<AttemptRecord>,
    /// Status sent to the client (0 = none).
    pub status: u16,
    /// Error sluice answered or ended the response with.
    pub error: Option<SluiceError>,
    /// Exact usage from the upstream.
    pub usage: Option<Usage>,
    /// The response reached its normal end (stream terminal event, or whole JSON body).
    pub stream_completed: bool,
    /// Part of the response went by uninspected (an SSE event over
    /// `accounting.max_sse_event_bytes`): the tokens are settled as estimated even when the
    /// upstream reported usage.
    pub usage_incomplete: bool,
    /// Completion text delivered, when usage must be estimated.
    pub output_text: Option<String>,
    /// Time to first token (first body byte sent to the client).
    pub ttft: Option<Duration>,
    /// The client left before the end of the response.
    pub client_disconnected: bool,
    /// The request's hold on its tenant's limits (reservations, concurrency permit); settled
    /// by the log stage, released if dropped.
    pub admission: Option<Admission>,
    /// Counts this request in flight (client requests only).
    pub active: Option<super::ActiveGuard>,
    /// Passthrough: the serving endpoint's breaker pass (a half-open breaker's probe slot),
    /// held until the outcome is recorded; dropped unused if the request ends before.
    pub breaker_pass: Option<Pass>,
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self {
            request_id: uuid::Uuid::new_v4().simple().to_string(),
            start: Instant::now(),
            snapshot: None,
            phase: Phase::New,
            tenant: None,
            route: None,
            style: ErrorStyle::OpenAi,
            api: None,
            inspected: Inspected::default(),
            body: None,
            prompt_estimate: None,
            pool: None,
            endpoint: 0,
            key: 0,
            attempts: Vec::new(),
            status: 0,
            error: None,
            usage: None,
            stream_completed: false,
            usage_incomplete: false,
            output_text: None,
            ttft: None,
            client_disconnected: false,
            admission: None,
            active: None,
            breaker_pass: None,
        }
    }
}

impl RequestCtx {
    /// Matched route's name, `none` before routing (metric label).
    pub fn route_name(&self) -> &str {
        match (&self.snapshot, self.route) {
            (Some(s), Some(i)) => s.routes.get(i).map_or("none", |r| &r.name),
            _ => "none",
        }
    }

    /// Serving pool's name, `none` before an attempt (metric label).
    pub fn pool_name(&self) -> &str {
        self.pool.as_ref().map_or("none", |p| &p.name)
    }
}
