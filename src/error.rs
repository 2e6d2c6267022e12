//! Everything sluice itself can answer with instead of the upstream, in one enum mapped
//! exhaustively to an HTTP status, a provider-native error body and a metric label.

use crate::provider::ErrorStyle;
use bytes::Bytes;
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
}

impl TimeoutPhase {
    fn as_str(self) -> &'static str {
        match self {
            TimeoutPhase::Connect => "connect",
            TimeoutPhase::FirstByte => "time-to-first-byte",
            TimeoutPhase::Idle => "idle",
        }
    }
}

/// A request sluice answers itself.
#[derive(Debug, Error)]
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
    /// A bug or resource problem inside sluice.
    #[error("internal error")]
    Internal,
}

impl SluiceError {
    /// HTTP status sent to the client.
    pub fn status(&self) -> u16 {
        match self {
            SluiceError::NoRoute(_) => 404,
            SluiceError::UnknownVirtualKey | SluiceError::UnknownTenant => 401,
            SluiceError::BodyTooLarge(_) => 413,
            SluiceError::BadJson(_) | SluiceError::ClientGone => 400,
            SluiceError::NoUpstreamKey(_) | SluiceError::Internal => 500,
            SluiceError::UpstreamUnreachable(_) | SluiceError::UpstreamFailed(_) => 502,
            SluiceError::UpstreamTimeout { .. } => 504,
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
            SluiceError::Internal => "internal",
        }
    }

    /// Native error body in `style` (FACTS.md §1: OpenAI `error.type`/`error.code`, Anthropic
    /// `error.type`).
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
        };
        let message = format!("sluice: {self}");
        match style {
            ErrorStyle::OpenAi => style.body(openai_type, Some(code), &message),
            ErrorStyle::Anthropic => style.body(anthropic_type, None, &message),
        }
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
            SluiceError::Internal,
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
        }
        assert_eq!(SluiceError::BodyTooLarge(1).status(), 413);
        let a: serde_json::Value =
            serde_json::from_slice(&SluiceError::BodyTooLarge(1).body(ErrorStyle::Anthropic))
                .unwrap();
        assert_eq!(a["error"]["type"], "request_too_large");
    }
}
