//! The failover decision after each attempt (pure: unit-tested here): what an upstream's
//! answer (its status, and the native error read from a 4xx body) or its failure without an
//! answer means under the route's rules: serve it, try another key, retry the same endpoint
//! after a backoff, keep it and move on to the next candidate, or stop.

use crate::config::Failover;
use crate::error::SluiceError;
use crate::provider::NativeError;

/// What failover does after an attempt's answer ([`decide`]) or failure ([`decide_error`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// Relay this answer.
    Serve,
    /// Try the same endpoint with this other key (the key was refused).
    OtherKey(usize),
    /// Try the same endpoint again after a backoff (a transient failure).
    RetrySame,
    /// Keep this answer (returned as-is if nothing does better) and move on.
    HoldAndMoveOn,
    /// Give up (a failure the rules do not move on from).
    Stop,
}

/// The decision after an answer with `status` (and the native error read from its body, for a
/// 4xx when the rules list error codes): another key of the same endpoint after a 401/403
/// when one is usable; a content filter is served, never retried; the same endpoint again for
/// a status in `retry.on_status` while `retry_left`; the next candidate for a status in
/// `retry_on_status` or an error listed in `retry_on_error_codes` / `_messages`; else serve.
pub(super) fn decide(
    rules: &Failover,
    status: u16,
    other_key: Option<usize>,
    retry_left: bool,
    error: Option<&NativeError>,
) -> Next {
    match (status, other_key) {
        (401 | 403, Some(k)) => Next::OtherKey(k),
        _ if error.is_some_and(NativeError::is_content_filter) => Next::Serve,
        _ if retry_left && rules.retry.on_status.contains(&status) => Next::RetrySame,
        _ if rules.retry_on_status.contains(&status) => Next::HoldAndMoveOn,
        _ if error.is_some_and(|e| {
            e.matches(&rules.retry_on_error_codes, &rules.retry_on_error_messages)
        }) =>
        {
            Next::HoldAndMoveOn
        }
        _ => Next::Serve,
    }
}

/// The decision after an attempt that got no answer: the same endpoint again after a reset
/// before the header (`retry.on_reset`) or a timeout (`retry.on_timeout`) while `retry_left`;
/// else the next candidate if the rules move on from that kind (`retry_on_timeout`,
/// `retry_on_connect_error`), else stop.
pub(super) fn decide_error(rules: &Failover, err: &SluiceError, retry_left: bool) -> Next {
    let (same, move_on) = match err {
        SluiceError::UpstreamTimeout { .. } => (rules.retry.on_timeout, rules.retry_on_timeout),
        SluiceError::UpstreamFailed(_) => (rules.retry.on_reset, rules.retry_on_connect_error),
        _ => (false, rules.retry_on_connect_error),
    };
    if same && retry_left {
        Next::RetrySame
    } else if move_on {
        Next::HoldAndMoveOn
    } else {
        Next::Stop
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Retry;
    use std::time::Duration;

    fn rules(statuses: &[u16]) -> Failover {
        Failover {
            retry_on_status: statuses.to_vec(),
            retry_on_connect_error: true,
            retry_on_timeout: true,
            max_attempts: 3,
            deadline: Duration::from_secs(1),
            retry: Retry {
                max_retries: 1,
                on_status: vec![500, 502],
                on_reset: true,
                on_timeout: false,
                backoff: Duration::from_millis(100),
                max_backoff: Duration::from_millis(2_000),
            },
            retry_on_error_codes: vec!["context_length_exceeded".into()],
            retry_on_error_messages: vec!["prompt is too long".into()],
            max_error_body_bytes: 16 * 1024,
            first_token: Duration::from_secs(1),
        }
    }

    fn error(raw: &str) -> NativeError {
        NativeError::parse(raw.as_bytes()).unwrap()
    }

    #[test]
    fn decisions_follow_the_status_and_the_rules() {
        let r = rules(&[429, 500, 503]);
        assert_eq!(decide(&r, 200, None, true, None), Next::Serve);
        assert_eq!(decide(&r, 400, None, true, None), Next::Serve);
        assert_eq!(decide(&r, 503, None, true, None), Next::HoldAndMoveOn);
        assert_eq!(decide(&r, 429, None, true, None), Next::HoldAndMoveOn);
        // A refused key: another key of the same endpoint first, else per the rules.
        assert_eq!(decide(&r, 401, Some(1), true, None), Next::OtherKey(1));
        assert_eq!(decide(&r, 401, None, true, None), Next::Serve);
        assert_eq!(
            decide(&rules(&[401]), 401, None, true, None),
            Next::HoldAndMoveOn
        );
    }

    #[test]
    fn transient_statuses_retry_the_same_endpoint_while_retries_are_left() {
        let r = rules(&[429, 500, 503]);
        assert_eq!(decide(&r, 500, None, true, None), Next::RetrySame);
        assert_eq!(decide(&r, 500, None, false, None), Next::HoldAndMoveOn);
        // 502 is retried on the same endpoint but not moved on from (not in retry_on_status).
        assert_eq!(decide(&r, 502, None, true, None), Next::RetrySame);
        assert_eq!(decide(&r, 502, None, false, None), Next::Serve);
        // 503 is not transient by default: straight to the next candidate.
        assert_eq!(decide(&r, 503, None, true, None), Next::HoldAndMoveOn);
    }

    #[test]
    fn listed_native_errors_move_on_and_content_filters_never_do() {
        let r = rules(&[429, 500, 503]);
        let too_long = error(
            r#"{"error":{"message":"max context","type":"invalid_request_error","code":"context_length_exceeded"}}"#,
        );
        assert_eq!(
            decide(&r, 400, None, true, Some(&too_long)),
            Next::HoldAndMoveOn
        );
        let anthropic = error(
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"Prompt is too long: 210000 tokens"}}"#,
        );
        assert_eq!(
            decide(&r, 400, None, true, Some(&anthropic)),
            Next::HoldAndMoveOn
        );
        let other = error(r#"{"error":{"message":"bad","type":"invalid_request_error"}}"#);
        assert_eq!(decide(&r, 400, None, true, Some(&other)), Next::Serve);
        let filtered = error(
            r#"{"error":{"message":"filtered","code":"content_filter","innererror":{"code":"ResponsibleAIPolicyViolation"}}}"#,
        );
        assert_eq!(decide(&r, 400, None, true, Some(&filtered)), Next::Serve);
        // Even with a retryable status, a content filter is served as is.
        assert_eq!(decide(&r, 500, None, true, Some(&filtered)), Next::Serve);
    }

    #[test]
    fn failures_without_an_answer_retry_move_on_or_stop_per_kind() {
        let mut r = rules(&[]);
        let reset = SluiceError::UpstreamFailed("u".into());
        let timeout = SluiceError::UpstreamTimeout {
            upstream: "u".into(),
            phase: crate::error::TimeoutPhase::FirstByte,
        };
        let refused = SluiceError::UpstreamUnreachable("u".into());
        assert_eq!(decide_error(&r, &reset, true), Next::RetrySame);
        assert_eq!(decide_error(&r, &reset, false), Next::HoldAndMoveOn);
        assert_eq!(decide_error(&r, &timeout, true), Next::HoldAndMoveOn);
        assert_eq!(decide_error(&r, &refused, true), Next::HoldAndMoveOn);
        r.retry.on_timeout = true;
        assert_eq!(decide_error(&r, &timeout, true), Next::RetrySame);
        r.retry_on_timeout = false;
        assert_eq!(decide_error(&r, &timeout, false), Next::Stop);
        r.retry_on_connect_error = false;
        assert_eq!(decide_error(&r, &refused, true), Next::Stop);
    }

    #[test]
    fn backoff_is_jittered_under_its_exponential_ceiling() {
        let r = rules(&[]).retry;
        let mut seen = std::collections::HashSet::new();
        for n in 0..8u32 {
            let ceiling = (100u64 << n).min(2_000);
            for _ in 0..200 {
                let ms = u64::try_from(r.backoff_for(n).as_millis()).unwrap();
                assert!(ms <= ceiling, "retry {n}: {ms} ms over {ceiling}");
                seen.insert(ms);
            }
        }
        // Jittered: not one fixed wait.
        assert!(seen.len() > 50, "{} distinct waits", seen.len());
        assert!(r.backoff_for(40) <= r.max_backoff);
    }
}
