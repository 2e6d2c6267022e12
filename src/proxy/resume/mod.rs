//! Pipeline stage 5, its one detour (inspected streams, routes with
//! `failover.resume_on_cut`): when a stream that already delivered content to the client is
//! cut (the upstream resets, errors, ends without its final event, or stalls past the pool's
//! `idle_ms`), the relay hands the cut here. The request is sent again to the next candidate
//! whose pool declares a `prefill`, with the answer delivered so far as an assistant prefill,
//! and the continuation is spliced into the client's stream so that it reads as one
//! uninterrupted stream (same ids, indices and event shapes, no text twice or missing).
//!
//! What is resumed: OpenAI chat/completions (one choice) and Anthropic messages whose
//! delivered output is plain text only (no tool call, reasoning/thinking, refusal or audio).
//! Anything else keeps the relay's answer to a cut: the native error event of the cut.
//!
//! Per API, one file each: the [`Tracker`] of what the client has seen, the prefill body, and
//! the splicer that rewrites the continuation's events (`openai_chat`, `anthropic_messages`).
//! A continuation goes through a hold of its own: its events that carry no content are held
//! until its first content event, so a continuation that fails before it leaves no trace and
//! the next candidate is tried. When no candidate is left, or every continuation failed, the
//! relay ends the stream with the native error of the original cut, never the prefill's.

mod anthropic_messages;
mod continuation;
mod openai_chat;

use super::attempt::{Outgoing, Target};
use super::ctx::{Leg, RequestCtx};
use crate::config::schema::Prefill;
use crate::config::{Pool, Route};
use crate::error::SluiceError;
use crate::metrics;
use crate::provider::provider;
use crate::proxy::downstream::Downstream;
use crate::usage::{estimate, ApiKind, Usage};
use bytes::Bytes;
use continuation::{continuation, LegEnd};
use std::sync::Arc;

/// Most bytes of delivered text a tracker keeps (and a prefill carries): 4 MiB, as the
/// accountant's text cap. Past it the stream is no longer resumable.
const MAX_TRACKED_TEXT_BYTES: usize = 4 * 1024 * 1024;

/// One SSE event of bytes that hold whole events only: its `event:` name (empty when none)
/// and its `data:` lines joined with `\n` (WHATWG HTML "Server-sent events", event stream
/// interpretation). Comments and blocks without `data:` are skipped.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Ev {
    pub(crate) name: String,
    pub(crate) data: String,
}

/// The events in `bytes`, which hold whole events only (what the accountant forwards).
pub(crate) fn events(bytes: &[u8]) -> Vec<Ev> {
    let mut text = String::from_utf8_lossy(bytes);
    if text.contains('\r') {
        text = text.replace("\r\n", "\n").replace('\r', "\n").into();
    }
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut ev = Ev::default();
        let mut has_data = false;
        for line in block.lines() {
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => value.clone_into(&mut ev.name),
                "data" => {
                    if has_data {
                        ev.data.push('\n');
                    }
                    ev.data.push_str(value);
                    has_data = true;
                }
                _ => {}
            }
        }
        if has_data {
            out.push(ev);
        }
    }
    out
}

/// What the client has seen of a stream, per API: its delivered text and whether it can be
/// continued elsewhere.
pub(crate) enum Tracker {
    /// OpenAI chat/completions.
    Chat(openai_chat::Tracker),
    /// Anthropic messages.
    Messages(anthropic_messages::Tracker),
}

impl Tracker {
    /// A tracker for a successful streamed response of `ctx`'s request when its route resumes
    /// cut streams and its API is one that can be resumed; `None` otherwise (nothing is
    /// tracked, the relay's cost is nil).
    pub(crate) fn for_request(ctx: &RequestCtx, success_sse: bool) -> Option<Tracker> {
        let route = ctx.snapshot.as_ref()?.routes.get(ctx.caller.route?)?;
        if !success_sse || route.max_resumes == 0 {
            return None;
        }
        // A cut leg's tokens are counted before its continuation is sent: the tokenizer's
        // tables must not be built on that path (once per process, tens of MB).
        if let Some(model) = ctx.model() {
            estimate::load_in_background(model);
        }
        match ctx.caller.api? {
            ApiKind::OpenAiChat => Some(Tracker::Chat(openai_chat::Tracker::default())),
            ApiKind::AnthropicMessages => {
                Some(Tracker::Messages(anthropic_messages::Tracker::default()))
            }
            _ => None,
        }
    }

    /// Reads the whole events just forwarded to the client.
    pub(crate) fn observe(&mut self, forwarded: &[u8]) {
        let given_up = match self {
            Tracker::Chat(t) => t.given_up(),
            Tracker::Messages(t) => t.given_up(),
        };
        if forwarded.is_empty() || given_up {
            return;
        }
        for ev in events(forwarded) {
            match self {
                Tracker::Chat(t) => t.on_event(&ev),
                Tracker::Messages(t) => t.on_event(&ev),
            }
        }
    }

    /// Whether a continuation can be spliced after what the client has: some text delivered,
    /// plain text only, the answer not finished.
    pub(crate) fn resumable(&self) -> bool {
        match self {
            Tracker::Chat(t) => t.resumable(),
            Tracker::Messages(t) => t.resumable(),
        }
    }

    /// The text the client has received so far.
    pub(crate) fn text(&self) -> &str {
        match self {
            Tracker::Chat(t) => t.text(),
            Tracker::Messages(t) => t.text(),
        }
    }
}

/// Whether the relay's failure `err` is a cut of the upstream's stream (as opposed to
/// sluice ending it: a budget cut-off, a shutdown).
pub(crate) fn is_cut(err: &SluiceError) -> bool {
    matches!(
        err,
        SluiceError::UpstreamTruncated(_)
            | SluiceError::UpstreamTimeout { .. }
            | SluiceError::UpstreamFailed(_)
            | SluiceError::UpstreamUnreachable(_)
    )
}

/// The cut the relay hands over.
pub(crate) struct Cut<'a> {
    /// Where the cut stream came from.
    pub(crate) target: &'a Target,
    /// The failure (reported to the client when no continuation succeeds).
    pub(crate) error: &'a SluiceError,
    /// Usage the cut leg's upstream reported before the cut (Anthropic `message_start`).
    pub(crate) reported: Option<Usage>,
    /// The client did not ask for usage chunks (OpenAI `stream_options.include_usage` was
    /// added by sluice): the continuation's usage chunk is hidden too.
    pub(crate) hide_usage: bool,
    /// `accounting.max_sse_event_bytes`.
    pub(crate) max_event_bytes: usize,
}

/// How a resume ended.
pub(crate) struct Resumed {
    /// The client got the rest of the answer and the stream's normal end.
    pub(crate) spliced: bool,
    /// The client left meanwhile.
    pub(crate) client_gone: bool,
    /// Every leg, the cut one first (log line).
    pub(crate) legs: Vec<Leg>,
    /// Continuations that delivered content to the client.
    pub(crate) resumes: u32,
    /// Tokens of every leg, summed (what the upstreams billed, estimated for cut legs).
    pub(crate) usage: Usage,
}

/// Continue the cut stream on the next candidates (see the module doc), writing the spliced
/// events to the client. Never fails: when nothing could be spliced, `spliced` is false and
/// the caller ends the stream with the native error of `cut.error`.
pub(crate) async fn resume<D: Downstream>(
    session: &mut D,
    ctx: &RequestCtx,
    tracker: &mut Tracker,
    cut: Cut<'_>,
) -> Resumed {
    let route = ctx
        .snapshot
        .as_ref()
        .zip(ctx.caller.route)
        .and_then(|(s, i)| s.routes.get(i));
    let (Some(route), Some(api)) = (route, ctx.caller.api) else {
        return no_resume(ctx, Vec::new(), Usage::default());
    };
    let body = ctx.body().cloned().unwrap_or_default();
    let first = leg_usage(ctx, api, tracker.text().to_owned(), &body, cut.reported).await;
    let mut legs = vec![leg(
        &cut.target.pool,
        cut.target.addr(),
        200,
        cut.error.label(),
        first,
    )];
    let mut prev = first;
    // The answer already has the tokens the client allowed (its finish reason was cut off):
    // a continuation could only go past the client's limit.
    if ctx
        .fields()
        .max_tokens
        .is_some_and(|m| first.completion_tokens >= m)
    {
        return no_resume(ctx, legs, prev);
    }
    let Ok(base) = super::attempt::forwarded_header(session.req_header()) else {
        return no_resume(ctx, legs, prev);
    };
    let deadline = tokio::time::Instant::now() + route.failover.deadline;
    let mut attempts = u32::try_from(ctx.upstream.attempts.len()).unwrap_or(u32::MAX);
    let mut resumes = 0;
    let mut tried = false;
    let mut earliest = None;
    for (pool, ep) in candidates(route, cut.target) {
        if resumes >= route.max_resumes
            || attempts >= route.failover.max_attempts
            || !tracker.resumable()
            || tokio::time::Instant::now() >= deadline
        {
            break;
        }
        let model = ctx.model().map(|m| pool.upstream_model(m).to_owned());
        if model
            .as_deref()
            .is_some_and(|m| !provider(pool.provider).accepts_model(m))
        {
            continue;
        }
        let Ok((key, _pass)) = super::failover::usable(&pool, ep, model.as_deref(), &mut earliest)
        else {
            continue;
        };
        let Some((prefill, trimmed)) = prefill_body(
            api,
            &body,
            model.as_deref(),
            tracker.text(),
            pool.prefill,
            prev.completion_tokens,
        ) else {
            break; // the request itself cannot carry a prefill (n > 1, no messages)
        };
        attempts += 1;
        tried = true;
        let target = Target {
            pool: pool.clone(),
            endpoint: ep,
            key,
        };
        let out = Outgoing {
            base: &base,
            model: model.as_deref(),
            body: prefill.clone(),
            // Continuations of a cut stream are not traced (the request's span counts them).
            traceparent: None,
        };
        let leg_start = tracker.text().len();
        let mut status = 0;
        let end = continuation(
            session,
            &target,
            &out,
            deadline,
            tracker,
            Splice {
                prev,
                trimmed,
                hide_usage: cut.hide_usage,
                max_event_bytes: cut.max_event_bytes,
            },
            &mut status,
        )
        .await;
        let text = tracker.text().get(leg_start..).unwrap_or("").to_owned();
        match end {
            LegEnd::Done(reported) => {
                let usage = match reported {
                    Some(u) => u,
                    None => leg_usage(ctx, api, text, &prefill, None).await,
                };
                legs.push(leg(&pool, target.addr(), status, "ok", usage));
                prev = add(prev, usage);
                resumes += 1;
                metrics::STREAM_RESUMES
                    .with_label_values(&[ctx.route_name(), "spliced"])
                    .inc();
                return Resumed {
                    spliced: true,
                    client_gone: false,
                    legs,
                    resumes,
                    usage: prev,
                };
            }
            LegEnd::Failed(why) => {
                legs.push(leg(&pool, target.addr(), status, why, Usage::default()))
            }
            LegEnd::Cut(why, reported) => {
                let usage = leg_usage(ctx, api, text, &prefill, reported).await;
                legs.push(leg(&pool, target.addr(), status, why, usage));
                prev = add(prev, usage);
                resumes += 1;
            }
            LegEnd::ClientGone => {
                // What this leg delivered before the client left is billed by its upstream:
                // estimated from its text and its prefilled prompt.
                let usage = if text.is_empty() {
                    Usage::default()
                } else {
                    leg_usage(ctx, api, text, &prefill, None).await
                };
                legs.push(leg(&pool, target.addr(), status, "client_gone", usage));
                prev = add(prev, usage);
                return Resumed {
                    spliced: false,
                    client_gone: true,
                    legs,
                    resumes,
                    usage: prev,
                };
            }
        }
    }
    if !tried {
        return no_resume(ctx, legs, prev);
    }
    metrics::STREAM_RESUMES
        .with_label_values(&[ctx.route_name(), "failed"])
        .inc();
    Resumed {
        spliced: false,
        client_gone: false,
        legs,
        resumes,
        usage: prev,
    }
}

/// No candidate could take the continuation.
fn no_resume(ctx: &RequestCtx, legs: Vec<Leg>, usage: Usage) -> Resumed {
    metrics::STREAM_RESUMES
        .with_label_values(&[ctx.route_name(), "no_candidate"])
        .inc();
    Resumed {
        spliced: false,
        client_gone: false,
        legs,
        resumes: 0,
        usage,
    }
}

fn leg(pool: &Pool, endpoint: &str, status: u16, outcome: &'static str, usage: Usage) -> Leg {
    Leg {
        pool: pool.name.clone(),
        endpoint: endpoint.to_owned(),
        status,
        outcome,
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
    }
}

fn add(a: Usage, b: Usage) -> Usage {
    Usage {
        prompt_tokens: a.prompt_tokens.saturating_add(b.prompt_tokens),
        completion_tokens: a.completion_tokens.saturating_add(b.completion_tokens),
        cached_tokens: a.cached_tokens.saturating_add(b.cached_tokens),
        cache_write_tokens: a.cache_write_tokens.saturating_add(b.cache_write_tokens),
        reasoning_tokens: a.reasoning_tokens.saturating_add(b.reasoning_tokens),
    }
}

/// Tokens of a leg cut after delivering `text` for the request `body`: the prompt as its
/// upstream reported it (Anthropic `message_start`), else estimated from the body; the
/// completion estimated from the text (never less than reported). Counted on the counting
/// thread ([`crate::usage::counter`]).
async fn leg_usage(
    ctx: &RequestCtx,
    api: ApiKind,
    text: String,
    body: &Bytes,
    reported: Option<Usage>,
) -> Usage {
    let model = ctx.model().unwrap_or_default().to_owned();
    let reported = reported.unwrap_or_default();
    let body = (reported.prompt_tokens == 0).then(|| body.clone());
    let work = move || {
        let prompt = body.map_or(0, |b| {
            serde_json::from_slice::<serde_json::Value>(&b)
                .map_or(0, |v| estimate::estimate_prompt_tokens(api, &model, &v))
        });
        (prompt, estimate::count_tokens(&model, &text))
    };
    let (prompt, completion) = crate::usage::counter::run(work).await.unwrap_or_default();
    Usage {
        prompt_tokens: reported.prompt_tokens.max(prompt),
        completion_tokens: reported.completion_tokens.max(completion),
        ..reported
    }
}

/// The candidates after the cut one, in the route's order: the other endpoints of its pool,
/// then the later pools' endpoints, leaving out pools without a `prefill`.
fn candidates(route: &Route, cut: &Target) -> Vec<(Arc<Pool>, usize)> {
    let start = route
        .pools
        .iter()
        .position(|p| Arc::ptr_eq(p, &cut.pool))
        .unwrap_or(0);
    let mut out = Vec::new();
    for pool in route.pools.iter().skip(start) {
        if pool.prefill == Prefill::None {
            continue;
        }
        for ep in pool.order() {
            if !(Arc::ptr_eq(pool, &cut.pool) && ep == cut.endpoint) {
                out.push((pool.clone(), ep));
            }
        }
    }
    out
}

/// The request body for a continuation: see the per-API `prefill_body`. Also returns the
/// whitespace trimmed off the end of the prefill, to drop from the continuation's start.
fn prefill_body(
    api: ApiKind,
    body: &[u8],
    model: Option<&str>,
    text: &str,
    mode: Prefill,
    delivered_tokens: u64,
) -> Option<(Bytes, String)> {
    match api {
        ApiKind::OpenAiChat => openai_chat::prefill_body(body, model, text, mode, delivered_tokens)
            .map(|b| (b, String::new())),
        ApiKind::AnthropicMessages => {
            anthropic_messages::prefill_body(body, model, text, mode, delivered_tokens)
        }
        _ => None,
    }
}

/// What a splicer needs to know of the legs before its own.
#[derive(Debug, Clone, Default)]
pub(crate) struct Splice {
    /// Tokens of the legs before (added to the continuation's usage the client sees).
    pub(crate) prev: Usage,
    /// Whitespace trimmed off the prefill's end, dropped from the continuation's start.
    pub(crate) trimmed: String,
    /// Hide the usage chunk (and `"usage":null` members), as the relay does.
    pub(crate) hide_usage: bool,
    /// Most bytes of events held before the continuation's first content.
    pub(crate) max_event_bytes: usize,
}

/// One continuation event, rewritten.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Not for the client (the continuation's own start, a role-only chunk).
    Skip,
    /// These bytes for the client; `content`: the event carries output (or the end).
    Write { bytes: Bytes, content: bool },
    /// An error event: the continuation failed.
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_whole_event_bytes() {
        let evs = events(b"event: a\r\ndata: {\"x\":1}\r\n\r\n: comment\n\ndata: 1\ndata: 2\n\n");
        assert_eq!(
            evs,
            vec![
                Ev {
                    name: "a".into(),
                    data: "{\"x\":1}".into()
                },
                Ev {
                    name: String::new(),
                    data: "1\n2".into()
                }
            ]
        );
    }

    #[test]
    fn only_upstream_cuts_are_resumed() {
        assert!(is_cut(&SluiceError::UpstreamTruncated("a:1".into())));
        assert!(is_cut(&SluiceError::UpstreamFailed("a:1".into())));
        assert!(!is_cut(&SluiceError::ShuttingDown));
    }
}
