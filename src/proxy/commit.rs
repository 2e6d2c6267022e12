//! Pipeline stage 4b (inspected streamed requests): commit on content. Between failover's
//! choice of an answer and the relay, a streamed answer (2xx `text/event-stream`) is held:
//! its response header and the events that carry no output (OpenAI chat role-only deltas,
//! Responses `response.created` / `response.in_progress`, Anthropic `message_start` / `ping`,
//! SSE comments; see [`SseAccountant::content_seen`]) wait until the first event that carries
//! output. Until then nothing reached the client, so an upstream that fails, stalls past the
//! route's `failover.first_token_ms`, or ends before any output fails over exactly like one
//! that never answered: the client sees one clean stream from the candidate that delivered.
//!
//! No time-to-first-token cost: the held events and the first content event go out together,
//! the moment the content event arrives (the relay writes them right after the header).
//! Held bytes are bounded by `accounting.max_sse_event_bytes`: past it the stream commits
//! rather than grow.

use super::attempt::Attempt;
use super::ctx::RequestCtx;
use super::failover::Served;
use crate::balance::breaker::Outcome;
use crate::config::Failover;
use crate::error::{SluiceError, TimeoutPhase};
use crate::metrics;
use crate::proxy::downstream::Downstream;
use crate::usage::SseAccountant;
use bytes::{Bytes, BytesMut};
use pingora_http::ResponseHeader;
use std::time::Duration;
use tokio::time::Instant;

/// What a held stream already produced, handed to the relay with its attempt.
pub struct Opening {
    /// The accountant that framed the held events (the relay goes on with it).
    pub acc: Box<SseAccountant>,
    /// The events to write right after the header (whole events; in hide mode without the
    /// usage chunk), up to and including the first content event.
    pub held: Bytes,
    /// Time from the response header to the commit (or to the failure).
    pub held_for: Duration,
    /// Set when the held stream failed: the relay writes the held events and ends there
    /// instead of reading on.
    pub end: Option<End>,
    /// The bytes read during the hold exactly as the upstream sent them, kept on routes with
    /// a response cache (the cache stores the stream as received, usage chunk included).
    pub raw: Option<Bytes>,
}

/// How a stream whose hold failed ends, when it is what the client gets.
pub enum End {
    /// The upstream's own error event is the last held event: end after it.
    Sent,
    /// Append sluice's native error event for this failure.
    Failed(SluiceError),
}

/// What the hold came to.
// Returned once per attempt and moved at once: boxing would cost an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Hold {
    /// Serve it: content (or the stream's end, or an error the route does not fail over on,
    /// or the cap) arrived. With the breaker outcome to record.
    Committed(Served, Outcome),
    /// No content came: fail over (when `move_on`) as before a header.
    Failed(Failed),
    /// The client left while the stream was held: the attempt was dropped.
    ClientGone,
}

/// A hold that ended before any content.
pub struct Failed {
    /// The answer as far as it went (header, held events, how it ends): what the client gets
    /// if no other candidate serves.
    pub served: Served,
    /// Attempt outcome for the log line and reason for the failover metric:
    /// `error_before_content`, `cut_before_content`, `no_content_timeout`.
    pub outcome: &'static str,
    /// Whether the route's rules move on to the next candidate.
    pub move_on: bool,
    /// The breaker outcome to record.
    pub breaker: Outcome,
}

/// Whether the answer `header` to the request in `ctx` is held: an inspected streamed
/// request of an API sluice accounts, answered 2xx `text/event-stream` (or an AWS event stream). Non-streamed calls
/// and passthrough are never held.
pub fn applies(ctx: &RequestCtx, header: &ResponseHeader) -> bool {
    ctx.fields().stream
        && ctx.caller.api.is_some()
        && header.status.is_success()
        && header
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(crate::usage::is_stream_content_type)
}

/// Why the hold stopped reading.
enum Stop {
    Content(&'static str),
    /// An error event before content: the status its code stands for, and whether the
    /// route's rules move on from it.
    Error(u16, bool),
    Cut(SluiceError),
    Timeout(SluiceError),
}

/// Hold `served` (an answer [`applies`] accepts) until its first content event. `sent_at`:
/// when the attempt's request was sent; the first content must come by `sent_at +
/// rules.first_token` and before the failover `deadline` (each read is also bounded by the
/// pool's `idle_ms`). The client leaving during the hold ends it at once.
pub async fn hold<D: Downstream>(
    session: &mut D,
    ctx: &RequestCtx,
    rules: &Failover,
    served: Served,
    sent_at: Instant,
    deadline: Instant,
) -> Hold {
    let Served {
        mut attempt,
        header,
        ..
    } = served;
    let started = Instant::now();
    let Some(api) = ctx.caller.api else {
        return Hold::Committed(
            Served {
                attempt,
                header,
                prefix: Bytes::new(),
                opening: None,
            },
            Outcome::Success,
        );
    };
    let bounds = ctx
        .snapshot
        .as_ref()
        .map(|s| s.accounting)
        .unwrap_or_default();
    let hide = ctx.fields().injected_include_usage;
    let mut acc = Box::new(SseAccountant::new(api, hide, bounds.max_sse_event_bytes));
    let mut held = BytesMut::new();
    let mut raw = ctx.cache.is_some().then(BytesMut::new);
    let first_token_at = (sent_at + rules.first_token).min(deadline);
    let stop = loop {
        let chunk = tokio::select! {
            c = attempt.chunk() => c,
            () = tokio::time::sleep_until(first_token_at) => {
                break Stop::Timeout(timeout(&attempt));
            }
            () = session.gone() => return Hold::ClientGone,
        };
        match chunk {
            Ok(Some(data)) => {
                if let Some(r) = raw.as_mut() {
                    r.extend_from_slice(&data);
                }
                held.extend_from_slice(&acc.push(&data));
                if let Some(stop) = verdict(&acc, rules, held.len(), bounds.max_sse_event_bytes) {
                    break stop;
                }
            }
            Ok(None) => {
                held.extend_from_slice(&acc.finish());
                if let Some(stop) = verdict(&acc, rules, 0, usize::MAX) {
                    break stop;
                }
                break Stop::Cut(SluiceError::UpstreamTruncated(
                    attempt.target().addr().into(),
                ));
            }
            Err(e @ SluiceError::UpstreamTimeout { .. }) => break Stop::Timeout(e),
            Err(e) => break Stop::Cut(e),
        }
    };
    let route = ctx.route_name();
    let held_for = started.elapsed();
    if !matches!(stop, Stop::Content(_) | Stop::Error(_, false)) {
        // A failed hold is never read on: close the upstream connection now, so a stalled
        // upstream stops generating (and billing) while the next candidates are tried; its
        // header and held events stay, for the client if nothing does better.
        attempt.close();
    }
    let opening = |acc, held: BytesMut, end| Opening {
        acc,
        held: held.freeze(),
        held_for,
        end,
        raw: raw.map(BytesMut::freeze),
    };
    let served = |opening| Served {
        attempt,
        header,
        prefix: Bytes::new(),
        opening: Some(opening),
    };
    let commit = |on: &str| {
        metrics::STREAM_COMMITS
            .with_label_values(&[route, on])
            .inc();
        metrics::STREAM_HELD
            .with_label_values(&[route])
            .observe(held_for.as_secs_f64());
    };
    match stop {
        Stop::Content(on) => {
            commit(on);
            Hold::Committed(served(opening(acc, held, None)), Outcome::Success)
        }
        Stop::Error(status, false) => {
            commit("error");
            Hold::Committed(served(opening(acc, held, None)), Outcome::of_status(status))
        }
        Stop::Error(status, true) => Hold::Failed(Failed {
            served: served(opening(acc, held, Some(End::Sent))),
            outcome: "error_before_content",
            move_on: true,
            breaker: Outcome::of_status(status),
        }),
        Stop::Cut(err) => Hold::Failed(Failed {
            breaker: Outcome::of_error(&err),
            served: served(opening(acc, held, Some(End::Failed(err)))),
            outcome: "cut_before_content",
            move_on: rules.retry_on_connect_error,
        }),
        Stop::Timeout(err) => Hold::Failed(Failed {
            breaker: Outcome::of_error(&err),
            served: served(opening(acc, held, Some(End::Failed(err)))),
            outcome: "no_content_timeout",
            move_on: rules.retry_on_timeout,
        }),
    }
}

/// The first-token timeout of `attempt`.
fn timeout(attempt: &Attempt) -> SluiceError {
    SluiceError::UpstreamTimeout {
        upstream: attempt.target().addr().to_owned(),
        phase: TimeoutPhase::FirstToken,
    }
}

/// Whether what the accountant saw so far ends the hold: content commits; an error event
/// before content stops with the status its native code stands for; the stream's terminal
/// event commits (`final`, also when it came with the first content: the whole answer was
/// held); held bytes past `cap` commit (`cap`). `None`: keep holding.
fn verdict(acc: &SseAccountant, rules: &Failover, held: usize, cap: usize) -> Option<Stop> {
    if acc.content_seen() {
        // `final`: the whole answer came within the hold (a short answer in one read).
        Some(Stop::Content(if acc.completed() {
            "final"
        } else {
            "content"
        }))
    } else if acc.saw_error() || acc.error_code().is_some() {
        let code = acc.error_code();
        let status = error_status(code);
        Some(Stop::Error(status, moves_on(rules, status, code)))
    } else if acc.completed() {
        Some(Stop::Content("final"))
    } else if held.saturating_add(acc.held_bytes()) > cap {
        Some(Stop::Content("cap"))
    } else {
        None
    }
}

/// Whether an error event before content with native `code`, standing for `status`, moves on
/// to the next candidate: as an answer with that status would (`retry_on_status`), or when
/// `retry_on_error_codes` lists the code; a content filter never does.
fn moves_on(rules: &Failover, status: u16, code: Option<&str>) -> bool {
    if code.is_some_and(crate::provider::is_content_filter_code) {
        return false;
    }
    rules.retry_on_status.contains(&status)
        || code.is_some_and(|c| rules.retry_on_error_codes.iter().any(|x| x == c))
}

/// The HTTP status an in-stream error's native code or type stands for, so that an error
/// event before content is failed over exactly when the same error as a status would be.
/// Sources: Anthropic API reference, "Errors" (error types and their statuses); OpenAI API
/// reference, "Error codes" (`server_error`, `rate_limit_exceeded`, `insufficient_quota`,
/// `context_length_exceeded`...). A code not listed (or none) counts as a server error (500):
/// a stream that fails before any output with an unexplained error is the upstream's fault.
pub fn error_status(code: Option<&str>) -> u16 {
    match code.unwrap_or("") {
        "invalid_request_error"
        | "invalid_request"
        | "invalid_prompt"
        | "context_length_exceeded"
        | "content_filter"
        | "content_policy_violation"
        | "string_above_max_length"
        | "invalid_value" => 400,
        "authentication_error" | "invalid_api_key" => 401,
        "billing_error" => 402,
        "permission_error" => 403,
        "not_found_error" | "model_not_found" => 404,
        "request_too_large" => 413,
        "rate_limit_error" | "rate_limit_exceeded" | "insufficient_quota" => 429,
        "server_is_overloaded" | "slow_down" | "service_unavailable" => 503,
        "timeout_error" => 504,
        "overloaded_error" => 529,
        // Gemini's canonical code names (`UNAVAILABLE`, `RESOURCE_EXHAUSTED`...; Google API
        // error model); anything else is 500.
        other => crate::provider::gemini_code_status(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_error_codes_map_to_the_status_they_stand_for() {
        assert_eq!(error_status(Some("overloaded_error")), 529);
        assert_eq!(error_status(Some("api_error")), 500);
        assert_eq!(error_status(Some("rate_limit_error")), 429);
        assert_eq!(error_status(Some("invalid_request_error")), 400);
        assert_eq!(error_status(Some("server_error")), 500);
        assert_eq!(error_status(Some("rate_limit_exceeded")), 429);
        assert_eq!(error_status(Some("content_filter")), 400);
        assert_eq!(error_status(Some("something_new")), 500);
        assert_eq!(error_status(Some("UNAVAILABLE")), 503);
        assert_eq!(error_status(Some("RESOURCE_EXHAUSTED")), 429);
        assert_eq!(error_status(None), 500);
    }
}
