//! One continuation leg of a resumed stream: the attempt to the next candidate, its events
//! held until its first content, then rewritten by its API's splicer and written to the client.

use super::{anthropic_messages, events, openai_chat, Ev, Splice, Step, Tracker};
use crate::balance::breaker::Outcome;
use crate::proxy::attempt::{Attempt, Outgoing, Target};
use crate::proxy::downstream::Downstream;
use crate::usage::{ApiKind, SseAccountant, Usage};
use bytes::Bytes;

/// How one continuation leg ended.
pub(super) enum LegEnd {
    /// Its stream ended normally; its upstream's usage if reported.
    Done(Option<Usage>),
    /// It failed before its first content event: nothing reached the client.
    Failed(&'static str),
    /// It was cut after content reached the client; the usage its upstream reported.
    Cut(&'static str, Option<Usage>),
    /// The client left.
    ClientGone,
}

/// A continuation's rewriter, per API.
enum Splicer {
    Chat(openai_chat::Splicer),
    Messages(anthropic_messages::Splicer),
}

impl Splicer {
    fn new(tracker: &Tracker, splice: Splice) -> Splicer {
        match tracker {
            Tracker::Chat(t) => Splicer::Chat(openai_chat::Splicer::new(t, splice)),
            Tracker::Messages(t) => Splicer::Messages(anthropic_messages::Splicer::new(t, splice)),
        }
    }

    fn splice(&mut self, ev: &Ev) -> Step {
        match self {
            Splicer::Chat(s) => s.splice(ev),
            Splicer::Messages(s) => s.splice(ev),
        }
    }
}

/// Run one continuation leg on `target`, writing its spliced events to the client once its
/// first content event arrived (the events before it are held, at most `max_event_bytes`).
pub(super) async fn continuation<D: Downstream>(
    session: &mut D,
    target: &Target,
    out: &Outgoing<'_>,
    deadline: tokio::time::Instant,
    tracker: &mut Tracker,
    splice: Splice,
    status: &mut u16,
) -> LegEnd {
    let ep = target.endpoint();
    let started = tokio::select! {
        r = Attempt::start(target.clone(), out, deadline) => r,
        () = session.gone() => return LegEnd::ClientGone,
        () = crate::drain::deadline() => return LegEnd::Failed("shutting_down"),
    };
    let (mut attempt, header) = match started {
        Ok(a) => a,
        Err(e) => {
            if let Some(ep) = ep {
                ep.state.breaker.record(Outcome::of_error(&e));
            }
            return LegEnd::Failed(e.label());
        }
    };
    *status = header.status.as_u16();
    if let Some(ep) = ep {
        ep.state.breaker.record(Outcome::of_status(*status));
    }
    let is_sse = header
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !header.status.is_success() || !is_sse {
        return LegEnd::Failed("rejected");
    }
    let api = match tracker {
        Tracker::Chat(_) => ApiKind::OpenAiChat,
        Tracker::Messages(_) => ApiKind::AnthropicMessages,
    };
    let max_held = splice.max_event_bytes;
    let mut acc = SseAccountant::new(api, false, splice.max_event_bytes);
    let mut splicer = Splicer::new(tracker, splice);
    let mut held: Vec<u8> = Vec::new();
    let mut committed = false;
    let mut cut: Option<&'static str> = None;
    let mut ended = false;
    while cut.is_none() && !ended {
        let chunk = tokio::select! {
            c = attempt.chunk() => c,
            () = session.gone() => return LegEnd::ClientGone,
            () = crate::drain::deadline() => {
                // The relay's own drain deadline: end the stream while Pingora still runs.
                return if committed {
                    LegEnd::Cut("shutting_down", acc.usage())
                } else {
                    LegEnd::Failed("shutting_down")
                };
            }
        };
        let whole = match chunk {
            Ok(Some(data)) => acc.push(&data),
            Ok(None) => {
                ended = true;
                acc.finish()
            }
            Err(e) => {
                cut = Some(e.label());
                acc.finish()
            }
        };
        if acc.oversized_events() > 0 {
            // Forwarded unparsed, not whole: cannot be rewritten.
            cut = Some("oversized_event");
            break;
        }
        for ev in events(&whole) {
            let (bytes, content) = match splicer.splice(&ev) {
                Step::Skip => continue,
                Step::Failed => {
                    cut = Some("upstream_error_event");
                    break;
                }
                Step::Write { bytes, content } => (bytes, content),
            };
            if !committed && !content {
                if held.len() + bytes.len() > max_held {
                    // Never commit events without content: a continuation that sends more
                    // of them than the cap fails before the client sees any of it.
                    cut = Some("hold_overflow");
                    break;
                }
                held.extend_from_slice(&bytes);
                continue;
            }
            let mut write = std::mem::take(&mut held);
            write.extend_from_slice(&bytes);
            committed = true;
            tracker.observe(&write);
            if session.write_body(Bytes::from(write), false).await.is_err() {
                return LegEnd::ClientGone;
            }
        }
    }
    let done = ended && cut.is_none() && (acc.completed() || acc.ended_after_final_content(true));
    match (done, committed) {
        (true, true) => LegEnd::Done(acc.usage()),
        (false, true) => LegEnd::Cut(cut.unwrap_or("upstream_truncated"), acc.usage()),
        (_, false) => LegEnd::Failed(cut.unwrap_or("no_content")),
    }
}
