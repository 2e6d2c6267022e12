//! Everything sluice itself can answer with instead of the upstream, in one enum mapped
//! exhaustively to an HTTP status, a provider-native error body and a metric label.

use crate::limits::budget::Period;
use crate::limits::Rejection;
use crate::provider::ErrorStyle;
use bytes::Bytes;
use std::time::Duration;
use thiserror::Error;

/// Which upstream timeout expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// Connecting (TCP + TLS).
    Connect,
    /// Waiting for the response header.
    FirstByte,
    /// Waiting for the next body chunk.
    Idle,
    /// Waiting for a stream's first event carrying output (commit on content).
    FirstToken,
}

impl TimeoutPhase {
    fn as_str(self) -> &'static str {
        match self {
            TimeoutPhase::Connect => "connect",
            TimeoutPhase::FirstByte => "time-to-first-byte",
            TimeoutPhase::Idle => "idle",
            TimeoutPhase::FirstToken => "time-to-first-token",
        }
    }
}

/// A request sluice answers itself. `Clone`: a coalesced call's error goes to every client
/// that shared it.
#[derive(Debug, Clone, Error)]
pub enum SluiceError {
    /// No route matched the request's path/model/headers.
    #[error("no route for {0}")]
    NoRoute(String),
    /// The client's key is not a known virtual key.
    #[error("invalid API key")]
    UnknownVirtualKey,
    /// The tenant header names no configured tenant, or the request is unidentified and there
    /// is no default tenant.
    #[error("unknown or missing tenant")]
    UnknownTenant,
    /// The request body exceeds `server.max_body_bytes`.
    #[error("request body exceeds the limit of {0} bytes")]
    BodyTooLarge(usize),
    /// The body of an inspected JSON API is not JSON.
    #[error("request body is not valid JSON: {0}")]
    BadJson(String),
    /// The client closed the connection while sending its request.
    #[error("client closed the connection")]
    ClientGone,
    /// The endpoint has no key loaded (only possible with a misconfigured deployment).
    #[error("no upstream key configured for pool {0}")]
    NoUpstreamKey(String),
    /// Connecting to the upstream failed.
    #[error("upstream {0} is unreachable")]
    UpstreamUnreachable(String),
    /// An upstream timeout expired.
    #[error("upstream {upstream} timed out ({})", phase.as_str())]
    UpstreamTimeout {
        /// Endpoint `host:port`.
        upstream: String,
        /// Which timeout.
        phase: TimeoutPhase,
    },
    /// The upstream failed after connecting (reset, protocol error).
    #[error("upstream {0} failed")]
    UpstreamFailed(String),
    /// Every endpoint of the route is unavailable (breakers open, cooling down after a
    /// `retry-after`, no usable key); `retry_after` is the earliest cooldown end, if known.
    #[error("no upstream available")]
    NoUpstreamAvailable {
        /// When the earliest endpoint or key is usable again.
        retry_after: Option<Duration>,
        /// Every candidate was cooling down after upstream 429s: answered as a 429 (the SDK's
        /// RateLimitError) rather than a 503.
        rate_limited: bool,
    },
    /// A tenant limit refused the request (requests, tokens or concurrency).
    #[error("{}", rejection_message(.0))]
    RateLimited(Rejection),
    /// Shared limits cannot be checked (Redis unreachable) and the tenant's policy is `closed`.
    #[error("the shared limit store is unavailable")]
    LimitStoreUnavailable,
    /// A tenant budget is spent (the SDK is told not to retry).
    #[error("budget exceeded")]
    BudgetExceeded(Period),
    /// A streamed response ended without its API's final event (`[DONE]`, `message_stop`,
    /// `response.completed`): the client is told instead of seeing a silent cut.
    #[error("upstream {0} ended the stream before its final event")]
    UpstreamTruncated(String),
    /// The drain deadline after SIGTERM passed while the response was still open.
    #[error("sluice is shutting down")]
    ShuttingDown,
    /// A bug or resource problem inside sluice.
    #[error("internal error")]
    Internal,
    /// The client's request body framing is invalid (RFC 9112 §7.1: a chunk size that is not
    /// hex, too long, or a chunk not ended by CRLF; a bad trailer section): the rest of the
    /// connection cannot be parsed, so it is answered and closed.
    #[error("invalid request body framing")]
    BadRequestFraming,
    /// A known virtual key came with a tenant header naming another tenant.
    #[error("the tenant header names another tenant than the API key's")]
    TenantMismatch,
    /// The tenant header names a tenant that may not be selected by header
    /// (`tenants.list[].allow_header` is off): only its virtual keys reach it.
    #[error("this tenant cannot be selected by header; send one of its API keys")]
    TenantHeaderNotAllowed,
    /// The request path cannot be normalized (a `..` above the root, an encoded slash next to
    /// a dot-segment, control bytes...: see `proxy::path`); the reason is a fixed string.
    #[error("invalid request path: {0}")]
    InvalidPath(&'static str),
    /// The body's model (after the pool's `model_map`) cannot be placed in the upstream URL
    /// of pool `.0` (Azure OpenAI deployment names: letters, digits, `-`, `_`, `.`).
    #[error("model is not a valid deployment name for pool {0} (allowed: letters, digits, '-', '_', '.'; at most 64)")]
    InvalidModel(String),
    /// The proxy listener already holds `server.max_client_connections` client connections:
    /// the new one is answered (before its request is read) and closed.
    #[error("too many client connections (limit {0}), retry shortly")]
    TooManyConnections(usize),
    /// A follower of a coalesced call read so slowly that it fell more than `.0` bytes
    /// (`cache.max_flight_bytes`) behind the shared call for longer than
    /// `cache.max_flight_lag_ms`: it was cut so that the call goes on for its other clients.
    #[error("this client fell more than {0} bytes behind the shared upstream call and was cut; retry the request")]
    FellBehind(usize),
}

impl SluiceError {
    /// HTTP status sent to the client.
    pub fn status(&self) -> u16 {
        match self {
            SluiceError::NoRoute(_) => 404,
            SluiceError::UnknownVirtualKey | SluiceError::UnknownTenant => 401,
            SluiceError::BodyTooLarge(_) => 413,
            SluiceError::TenantMismatch | SluiceError::TenantHeaderNotAllowed => 403,
            SluiceError::BadJson(_)
            | SluiceError::ClientGone
            | SluiceError::BadRequestFraming
            | SluiceError::InvalidPath(_)
            | SluiceError::InvalidModel(_) => 400,
            SluiceError::NoUpstreamKey(_) | SluiceError::Internal => 500,
            SluiceError::UpstreamUnreachable(_)
            | SluiceError::UpstreamFailed(_)
            | SluiceError::UpstreamTruncated(_) => 502,
            SluiceError::UpstreamTimeout { .. } => 504,
            SluiceError::RateLimited(_) | SluiceError::BudgetExceeded(_) => 429,
            SluiceError::NoUpstreamAvailable {
                rate_limited: true, ..
            } => 429,
            SluiceError::NoUpstreamAvailable { .. }
            | SluiceError::LimitStoreUnavailable
            | SluiceError::ShuttingDown => 503,
            SluiceError::TooManyConnections(_) | SluiceError::FellBehind(_) => 503,
        }
    }

    /// Low-cardinality label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            SluiceError::NoRoute(_) => "no_route",
            SluiceError::UnknownVirtualKey => "invalid_api_key",
            SluiceError::UnknownTenant => "unknown_tenant",
            SluiceError::BodyTooLarge(_) => "body_too_large",
            SluiceError::BadJson(_) => "bad_json",
            SluiceError::ClientGone => "client_gone",
            SluiceError::NoUpstreamKey(_) => "no_upstream_key",
            SluiceError::UpstreamUnreachable(_) => "upstream_unreachable",
            SluiceError::UpstreamTimeout { .. } => "upstream_timeout",
            SluiceError::UpstreamFailed(_) => "upstream_failed",
            SluiceError::UpstreamTruncated(_) => "upstream_truncated",
            SluiceError::Internal => "internal",
            SluiceError::RateLimited(_) => "rate_limited",
            SluiceError::BudgetExceeded(_) => "budget_exceeded",
            SluiceError::NoUpstreamAvailable { .. } => "no_upstream_available",
            SluiceError::LimitStoreUnavailable => "limit_store_unavailable",
            SluiceError::ShuttingDown => "shutting_down",
            SluiceError::BadRequestFraming => "bad_request_framing",
            SluiceError::TenantMismatch => "tenant_mismatch",
            SluiceError::TenantHeaderNotAllowed => "tenant_header_not_allowed",
            SluiceError::InvalidPath(_) => "invalid_path",
            SluiceError::InvalidModel(_) => "invalid_model",
            SluiceError::TooManyConnections(_) => "too_many_connections",
            SluiceError::FellBehind(_) => "fell_behind",
        }
    }

    /// Native error body in `style` (OpenAI API reference, "Error codes": `error.type`/`error.code`;
    /// Anthropic API reference, "Errors": `error.type`).
    pub fn body(&self, style: ErrorStyle) -> Bytes {
        let (openai_type, anthropic_type, code) = match self {
            SluiceError::NoRoute(_) => ("invalid_request_error", "not_found_error", "no_route"),
            SluiceError::UnknownVirtualKey => (
                "invalid_request_error",
                "authentication_error",
                "invalid_api_key",
            ),
            SluiceError::UnknownTenant => (
                "invalid_request_error",
                "authentication_error",
                "unknown_tenant",
            ),
            SluiceError::BodyTooLarge(_) => (
                "invalid_request_error",
                "request_too_large",
                "request_too_large",
            ),
            SluiceError::BadJson(_) => (
                "invalid_request_error",
                "invalid_request_error",
                "invalid_json",
            ),
            SluiceError::ClientGone => (
                "invalid_request_error",
                "invalid_request_error",
                "client_gone",
            ),
            SluiceError::NoUpstreamKey(_) | SluiceError::Internal => {
                ("server_error", "api_error", "internal_error")
            }
            SluiceError::UpstreamUnreachable(_) | SluiceError::UpstreamFailed(_) => {
                ("server_error", "api_error", "upstream_error")
            }
            SluiceError::UpstreamTimeout { .. } => {
                ("server_error", "api_error", "upstream_timeout")
            }
            SluiceError::RateLimited(Rejection::Tokens { .. }) => {
                ("tokens", "rate_limit_error", "rate_limit_exceeded")
            }
            SluiceError::RateLimited(_) => ("requests", "rate_limit_error", "rate_limit_exceeded"),
            SluiceError::BudgetExceeded(_) => (
                "insufficient_quota",
                "rate_limit_error",
                "insufficient_quota",
            ),
            SluiceError::NoUpstreamAvailable {
                rate_limited: true, ..
            } => ("requests", "rate_limit_error", "rate_limit_exceeded"),
            SluiceError::NoUpstreamAvailable { .. } => {
                ("server_error", "overloaded_error", "no_upstream_available")
            }
            SluiceError::LimitStoreUnavailable => (
                "server_error",
                "overloaded_error",
                "limit_store_unavailable",
            ),
            SluiceError::UpstreamTruncated(_) => {
                ("server_error", "api_error", "upstream_truncated")
            }
            SluiceError::ShuttingDown => ("server_error", "overloaded_error", "shutting_down"),
            SluiceError::BadRequestFraming => (
                "invalid_request_error",
                "invalid_request_error",
                "bad_request_framing",
            ),
            SluiceError::TenantMismatch => (
                "invalid_request_error",
                "permission_error",
                "tenant_mismatch",
            ),
            SluiceError::TenantHeaderNotAllowed => (
                "invalid_request_error",
                "permission_error",
                "tenant_header_not_allowed",
            ),
            SluiceError::InvalidPath(_) => (
                "invalid_request_error",
                "invalid_request_error",
                "invalid_path",
            ),
            SluiceError::InvalidModel(_) => (
                "invalid_request_error",
                "invalid_request_error",
                "invalid_model",
            ),
            SluiceError::TooManyConnections(_) => {
                ("server_error", "overloaded_error", "too_many_connections")
            }
            SluiceError::FellBehind(_) => ("server_error", "api_error", "fell_behind"),
        };
        let message = format!("sluice: {self}");
        match style {
            ErrorStyle::OpenAi => style.body(openai_type, Some(code), &message),
            ErrorStyle::Anthropic => style.body(anthropic_type, None, &message),
            ErrorStyle::Ollama => style.body(anthropic_type, None, &message),
            // The type travels in `x-amzn-errortype` (ErrorStyle::error_type_header).
            ErrorStyle::Bedrock => style.body("", None, &message),
            ErrorStyle::Gemini => style.body(
                crate::provider::gemini_status_name(self.status()),
                Some(&self.status().to_string()),
                &message,
            ),
        }
    }
}

impl SluiceError {
    /// Whether the upstream caused this (connect failure, timeout, reset, invalid or cut
    /// response): only these count against an endpoint's circuit breaker. Errors of the client
    /// or of sluice itself never do.
    pub fn is_upstream_fault(&self) -> bool {
        matches!(
            self,
            SluiceError::UpstreamUnreachable(_)
                | SluiceError::UpstreamTimeout { .. }
                | SluiceError::UpstreamFailed(_)
                | SluiceError::UpstreamTruncated(_)
        )
    }
}

fn rejection_message(r: &Rejection) -> String {
    match r {
        Rejection::Requests { limit, retry_after } => format!(
            "rate limit reached for requests: limit {limit}, retry in {:.3}s",
            retry_after.as_secs_f64()
        ),
        Rejection::Tokens { limit, remaining, retry_after } => format!(
            "rate limit reached for tokens: limit {limit} per minute, {remaining} left, window resets in {:.3}s",
            retry_after.as_secs_f64()
        ),
        Rejection::Concurrency { limit } => {
            format!("too many concurrent requests: limit {limit}")
        }
        Rejection::Budget { period } => format!("{} budget exceeded", period.as_str()),
        Rejection::StoreUnavailable => "the shared limit store is unavailable".to_owned(),
    }
}

/// OpenAI's duration format for `x-ratelimit-reset-*` (`1s`, `6m0s`, `250ms`).
pub fn reset_format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = d.as_secs_f64();
        format!("{}s", (s * 1000.0).round() / 1000.0)
    } else {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

impl SluiceError {
    /// Extra response headers: `retry-after` (seconds) and `retry-after-ms` on rate limits
    /// (when the request would fit), `x-ratelimit-*` like OpenAI's, and `x-should-retry:
    /// false` on a spent budget (the official SDKs' retry logic honours `x-should-retry`: openai-python and
    /// anthropic-sdk-python `_base_client.py`, `_should_retry`).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            SluiceError::RateLimited(r) => {
                let (retry, kind, limit, remaining) = match r {
                    Rejection::Requests { limit, retry_after } => {
                        (*retry_after, "requests", *limit, 0)
                    }
                    Rejection::Tokens {
                        limit,
                        remaining,
                        retry_after,
                    } => (*retry_after, "tokens", *limit, *remaining),
                    Rejection::Concurrency { limit } => {
                        (Duration::from_secs(1), "requests", *limit, 0)
                    }
                    Rejection::Budget { .. } | Rejection::StoreUnavailable => {
                        (Duration::ZERO, "requests", 0, 0)
                    }
                };
                let retry = retry.max(Duration::from_millis(1));
                vec![
                    ("retry-after", retry.as_secs_f64().ceil().to_string()),
                    ("retry-after-ms", retry.as_millis().to_string()),
                    (limit_header(kind), limit.to_string()),
                    (remaining_header(kind), remaining.to_string()),
                    (reset_header(kind), reset_format(retry)),
                ]
            }
            SluiceError::BudgetExceeded(_) => vec![("x-should-retry", "false".to_owned())],
            SluiceError::NoUpstreamAvailable {
                retry_after: Some(d),
                ..
            } => {
                let d = (*d).max(Duration::from_millis(1));
                vec![
                    ("retry-after", d.as_secs_f64().ceil().to_string()),
                    ("retry-after-ms", d.as_millis().to_string()),
                ]
            }
            _ => Vec::new(),
        }
    }
}

/// `x-ratelimit-limit-{requests,tokens}`.
pub fn limit_header(kind: &str) -> &'static str {
    if kind == "tokens" {
        "x-ratelimit-limit-tokens"
    } else {
        "x-ratelimit-limit-requests"
    }
}

/// `x-ratelimit-remaining-{requests,tokens}`.
pub fn remaining_header(kind: &str) -> &'static str {
    if kind == "tokens" {
        "x-ratelimit-remaining-tokens"
    } else {
        "x-ratelimit-remaining-requests"
    }
}

/// `x-ratelimit-reset-{requests,tokens}`.
pub fn reset_header(kind: &str) -> &'static str {
    if kind == "tokens" {
        "x-ratelimit-reset-tokens"
    } else {
        "x-ratelimit-reset-requests"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_maps_to_status_label_and_both_shapes() {
        let all = [
            SluiceError::NoRoute("POST /x".into()),
            SluiceError::UnknownVirtualKey,
            SluiceError::UnknownTenant,
            SluiceError::BodyTooLarge(10),
            SluiceError::BadJson("eof".into()),
            SluiceError::ClientGone,
            SluiceError::NoUpstreamKey("p".into()),
            SluiceError::UpstreamUnreachable("h:1".into()),
            SluiceError::UpstreamTimeout {
                upstream: "h:1".into(),
                phase: TimeoutPhase::Idle,
            },
            SluiceError::UpstreamFailed("h:1".into()),
            SluiceError::UpstreamTruncated("h:1".into()),
            SluiceError::ShuttingDown,
            SluiceError::Internal,
            SluiceError::RateLimited(Rejection::Concurrency { limit: 2 }),
            SluiceError::BudgetExceeded(Period::Day),
            SluiceError::NoUpstreamAvailable {
                retry_after: Some(Duration::from_secs(2)),
                rate_limited: false,
            },
            SluiceError::BadRequestFraming,
            SluiceError::TenantMismatch,
            SluiceError::TenantHeaderNotAllowed,
            SluiceError::InvalidPath("x"),
            SluiceError::InvalidModel("p".into()),
            SluiceError::TooManyConnections(8),
            SluiceError::FellBehind(1024),
        ];
        let mut labels = std::collections::HashSet::new();
        for e in &all {
            assert!((400..600).contains(&e.status()));
            assert!(labels.insert(e.label()), "duplicate label {}", e.label());
            let o: serde_json::Value = serde_json::from_slice(&e.body(ErrorStyle::OpenAi)).unwrap();
            assert!(o["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("sluice: "));
            let a: serde_json::Value =
                serde_json::from_slice(&e.body(ErrorStyle::Anthropic)).unwrap();
            assert_eq!(a["type"], "error");
            let l: serde_json::Value = serde_json::from_slice(&e.body(ErrorStyle::Ollama)).unwrap();
            assert!(l["error"].as_str().unwrap().starts_with("sluice: "));
            let b: serde_json::Value =
                serde_json::from_slice(&e.body(ErrorStyle::Bedrock)).unwrap();
            assert!(b["message"].as_str().unwrap().starts_with("sluice: "));
            let (header, kind) = ErrorStyle::Bedrock.error_type_header(e.status()).unwrap();
            assert_eq!(header, "x-amzn-errortype");
            assert!(kind.ends_with("Exception"), "{kind}");
            let g: serde_json::Value = serde_json::from_slice(&e.body(ErrorStyle::Gemini)).unwrap();
            assert_eq!(g["error"]["code"], e.status());
            assert!(g["error"]["status"].as_str().is_some_and(|s| !s.is_empty()));
        }
        let g: serde_json::Value = serde_json::from_slice(
            &SluiceError::BudgetExceeded(Period::Day).body(ErrorStyle::Gemini),
        )
        .unwrap();
        assert_eq!(g["error"]["status"], "RESOURCE_EXHAUSTED");
        let first_token = SluiceError::UpstreamTimeout {
            upstream: "h:1".into(),
            phase: TimeoutPhase::FirstToken,
        };
        assert_eq!(first_token.status(), 504);
        assert!(first_token.to_string().contains("time-to-first-token"));
        assert_eq!(SluiceError::BodyTooLarge(1).status(), 413);
        let a: serde_json::Value =
            serde_json::from_slice(&SluiceError::BodyTooLarge(1).body(ErrorStyle::Anthropic))
                .unwrap();
        assert_eq!(a["error"]["type"], "request_too_large");
        assert_eq!(SluiceError::BadRequestFraming.status(), 400);
        assert_eq!(SluiceError::TenantMismatch.status(), 403);
        let a: serde_json::Value = serde_json::from_slice(
            &SluiceError::TenantHeaderNotAllowed.body(ErrorStyle::Anthropic),
        )
        .unwrap();
        assert_eq!(a["error"]["type"], "permission_error");
        let upstream: Vec<_> = all.iter().filter(|e| e.is_upstream_fault()).collect();
        assert_eq!(upstream.len(), 4, "{upstream:?}");
        for e in [
            SluiceError::InvalidPath("x"),
            SluiceError::InvalidModel("p".into()),
        ] {
            assert_eq!(e.status(), 400);
            let o: serde_json::Value = serde_json::from_slice(&e.body(ErrorStyle::OpenAi)).unwrap();
            assert_eq!(o["error"]["type"], "invalid_request_error");
            assert_eq!(o["error"]["code"], e.label());
        }
    }
}
