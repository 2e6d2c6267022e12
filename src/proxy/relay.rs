//! Pipeline stage 5 (inspected requests): relay the chosen attempt's response to the client
//! chunk by chunk as it arrives, accounting usage on the way (SSE or JSON), hiding the usage
//! chunk sluice asked for, and closing the upstream at once when the client leaves or the
//! upstream stalls past the idle timeout. Streams are forwarded as whole events, so one that
//! ends abnormally ends on an event boundary followed by the API's native error event. A
//! stream held by `commit` arrives with its accountant and held events, written right after
//! the header.

use super::commit::End;
use super::ctx::{Delivered, RequestCtx};
use super::downstream::Downstream;
use super::failover::Served;
use crate::cache::record::Recorder;
use crate::error::SluiceError;
use crate::limits::budget::Period;
use crate::metrics;
use crate::usage::{ApiKind, JsonAccountant, SseAccountant, Usage};
use bytes::{Bytes, BytesMut};

mod header;
pub(in crate::proxy) use header::{client_header, downstream_parts, is_sse};

enum Accounting {
    Sse(Box<SseAccountant>),
    Json(Box<JsonAccountant>),
    Off,
}

impl Accounting {
    /// The stream's final event (`[DONE]`, `message_stop`, `response.completed`) went by: the
    /// client has the whole answer.
    fn final_event_seen(&self) -> bool {
        matches!(self, Accounting::Sse(a) if a.completed())
    }

    fn push(&mut self, chunk: &Bytes) -> Bytes {
        match self {
            Accounting::Sse(a) => a.push(chunk),
            Accounting::Json(a) => {
                a.push(chunk);
                chunk.clone()
            }
            Accounting::Off => chunk.clone(),
        }
    }
}

/// Decrements `sluice_streams_in_flight` when the relay ends, however it ends.
struct StreamGauge;
impl StreamGauge {
    fn start() -> Self {
        metrics::STREAMS_IN_FLIGHT.inc();
        StreamGauge
    }
}
impl Drop for StreamGauge {
    fn drop(&mut self) {
        metrics::STREAMS_IN_FLIGHT.dec();
    }
}

/// Budget cut-off of one stream: the USD left when it was admitted, and its price.
struct CutOff {
    left_usd: f64,
    prompt_usd: f64,
    output_per_token_usd: f64,
    period: Period,
}

impl CutOff {
    /// Set when the tenant's budget has `cut_off_streams` and the model has a price.
    fn for_request(ctx: &RequestCtx) -> Option<CutOff> {
        let adm = ctx.admission.as_ref()?;
        let budget = adm.limits().budget.filter(|b| b.cut_off_streams)?;
        let left_usd = adm.budget_left?;
        let model = ctx.model()?;
        let price = ctx.snapshot.as_ref()?.model_info(model)?.price?;
        let prompt = ctx
            .body()
            .zip(ctx.caller.api)
            .map_or(0, |(b, api)| super::limit::prompt_estimate(api, model, b));
        Some(CutOff {
            left_usd,
            prompt_usd: prompt as f64 * price.input * 1e-6,
            output_per_token_usd: price.output * 1e-6,
            period: if budget.usd_per_day.is_some() {
                Period::Day
            } else {
                Period::Month
            },
        })
    }

    /// Whether `output_bytes` of generated text (about 4 bytes per token) would overspend.
    fn exceeded(&self, output_bytes: usize) -> bool {
        let tokens = output_bytes.div_ceil(4) as f64;
        self.prompt_usd + tokens * self.output_per_token_usd > self.left_usd
    }
}

enum Event {
    Chunk(Result<Option<Bytes>, SluiceError>),
    ClientGone,
    DrainDeadline,
}

/// Most bytes of a stream's head kept to read the model that answered from its first events
/// (tracing on only; [`crate::usage::response_model::of_stream`]).
const RESPONSE_MODEL_HEAD_BYTES: usize = 16 * 1024;

/// Most bytes read after the client has its whole response to let the upstream connection go
/// back to the pool (more: the connection is closed instead).
const REUSE_DRAIN_BYTES: usize = 64 * 1024;

/// Relay the served attempt's response to the client. Never fails: returns what the client
/// got (status, usage, completion, the error the response ended with, whether the client
/// left) for the log stage. `recorder` (a cache miss whose answer may be stored) sees the
/// header, every chunk as received, and the outcome.
pub async fn relay<D: Downstream>(
    session: &mut D,
    ctx: &RequestCtx,
    served: Served,
    recorder: Option<Recorder>,
) -> Delivered {
    let mut d = Delivered::default();
    let Served {
        mut attempt,
        header: upstream_header,
        opening,
        prefix,
    } = served;
    // Body bytes failover already read (a 4xx body's prefix): relayed first, as the first
    // chunk.
    let mut first = (!prefix.is_empty()).then_some(prefix);
    // A stream held until its first content (`commit`): its accountant goes on, its held
    // events go out right after the header, and a hold that failed ends there.
    let (opening_acc, held, end, opening_raw) = match opening {
        Some(o) => {
            d.held = Some(o.held_for);
            (Some(o.acc), o.held, o.end, o.raw)
        }
        None => (None, Bytes::new(), None, None),
    };
    let endpoint = attempt.target().addr().to_owned();
    let status = upstream_header.status.as_u16();
    d.status = status;
    let is_sse = is_sse(&upstream_header);
    let success = upstream_header.status.is_success();
    let hide = is_sse && ctx.fields().injected_include_usage;
    // When the client has every byte of a sized response it may send its next request at
    // once: from then on the downstream must not be read (see `complete` below).
    let content_length = upstream_header
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|_| !is_sse);
    // A held stream whose raw opening was not kept cannot be recorded whole.
    let raw_lost = opening_acc.is_some() && opening_raw.is_none();
    let mut rec = recorder
        .filter(|_| !raw_lost)
        .and_then(|r| r.begin(&upstream_header, opening_raw.as_deref()));
    let parts = downstream_parts(&upstream_header, is_sse);
    // Bedrock InvokeModel reports its usage in the response header, not the body.
    let header_usage = (ctx.caller.api == Some(crate::usage::ApiKind::BedrockInvoke))
        .then(|| {
            crate::usage::invoke_header_usage(|name| {
                upstream_header.headers.get(name)?.to_str().ok()
            })
        })
        .flatten();
    // The client's header is built from it: a coalesced flight keeps it for its followers
    // to build theirs; otherwise it is dropped.
    session.keep_upstream_header(upstream_header);
    let header = client_header(parts, ctx);
    if session.write_header(header).await.is_err() {
        d.client_disconnected = true;
        return d;
    }
    let bounds = ctx
        .snapshot
        .as_ref()
        .map(|s| s.accounting)
        .unwrap_or_default();
    let mut acc = match ctx.caller.api {
        _ if opening_acc.is_some() => match opening_acc {
            Some(a) => Accounting::Sse(a),
            None => Accounting::Off,
        },
        Some(api) if success && is_sse => Accounting::Sse(Box::new(SseAccountant::new(
            api,
            hide,
            bounds.max_sse_event_bytes,
        ))),
        Some(api) if success => Accounting::Json(Box::new(
            JsonAccountant::new(api, bounds.max_json_body_bytes).with_header_usage(header_usage),
        )),
        _ => Accounting::Off,
    };
    let _gauge = is_sse.then(StreamGauge::start);
    let cutoff = if is_sse {
        CutOff::for_request(ctx)
    } else {
        None
    };
    // What the client has seen, when a cut may be resumed (`failover.resume_on_cut`).
    let mut tracker = super::resume::Tracker::for_request(ctx, success && is_sse);
    let mut failure: Option<SluiceError> = None;
    // The upstream's last bytes, written together with the end of the response.
    let mut last = Bytes::new();
    let mut written = 0usize;
    let mut complete = false;
    // The stream's final event was written to the client / the client closed after that.
    let (mut final_written, mut closed_after_end) = (false, false);
    let drain_deadline = crate::drain::deadline();
    tokio::pin!(drain_deadline);
    let mut read_on = end.is_none();
    // A stream's first bytes, for the trace's `gen_ai.response.model` (tracing on only).
    let mut head = (ctx.trace.is_some() && is_sse).then(Vec::new);
    if let Some(h) = head.as_mut() {
        h.extend_from_slice(&held[..held.len().min(RESPONSE_MODEL_HEAD_BYTES)]);
    }
    if let Some(End::Failed(e)) = end {
        failure = Some(e);
    }
    if !held.is_empty() {
        if let Some(t) = tracker.as_mut() {
            t.observe(&held);
        }
        let over_budget = match (&cutoff, &acc) {
            (Some(c), Accounting::Sse(a))
                if !a.completed() && c.exceeded(a.output_text().len()) =>
            {
                Some(c.period)
            }
            _ => None,
        };
        if let Some(period) = over_budget {
            // The held events already overspend: they go out with the error event, as a
            // chunk read later would.
            failure = Some(SluiceError::BudgetExceeded(period));
            last = held;
            read_on = false;
        } else {
            // The held events and the first content event, in one write: no added TTFT.
            d.ttft = Some(ctx.start.elapsed());
            written += held.len();
            if session.write_body(held, false).await.is_err() {
                d.client_disconnected = true;
                read_on = false;
            } else {
                final_written = acc.final_event_seen();
            }
        }
    }
    loop {
        if !read_on {
            break;
        }
        let event = if let Some(prefix) = first.take() {
            Event::Chunk(Ok(Some(prefix)))
        } else {
            tokio::select! {
            chunk = attempt.chunk() => Event::Chunk(chunk),
            () = session.gone() => Event::ClientGone,
            () = &mut drain_deadline => Event::DrainDeadline,
            }
        };
        match event {
            Event::Chunk(Ok(Some(data))) => {
                if let Some(r) = rec.as_mut() {
                    r.push(&data);
                }
                if let Some(h) = head.as_mut() {
                    let room = RESPONSE_MODEL_HEAD_BYTES.saturating_sub(h.len());
                    h.extend_from_slice(&data[..data.len().min(room)]);
                }
                let out = if data.is_empty() {
                    Bytes::new()
                } else {
                    acc.push(&data)
                };
                if let Some(t) = tracker.as_mut() {
                    t.observe(&out);
                }
                if matches!(&acc, Accounting::Sse(a) if a.broken()) {
                    // A corrupt AWS event stream message: the whole events before it go out,
                    // then the native error; nothing after it can be framed.
                    failure = Some(SluiceError::UpstreamFailed(endpoint.clone()));
                    last = out;
                    break;
                }
                if let (Some(c), Accounting::Sse(a)) = (&cutoff, &acc) {
                    // An answer whose final event came in this chunk is whole: nothing left
                    // to stop, it is delivered and charged (the overrun is counted).
                    if !a.completed() && c.exceeded(a.output_text().len()) {
                        failure = Some(SluiceError::BudgetExceeded(c.period));
                        // These events are counted (and charged): the client gets them, then
                        // the error event, with no gap in the stream.
                        last = out;
                        break;
                    }
                }
                if d.ttft.is_none() && !out.is_empty() {
                    d.ttft = Some(ctx.start.elapsed());
                }
                written += out.len();
                if content_length.is_some_and(|n| written >= n) {
                    last = out;
                    complete = true;
                    break;
                }
                if !out.is_empty() {
                    if session.write_body(out, false).await.is_err() {
                        d.client_disconnected = !final_written;
                        closed_after_end = final_written;
                        break;
                    }
                    final_written = acc.final_event_seen();
                }
            }
            Event::Chunk(Ok(None)) => {
                complete = true;
                break;
            }
            Event::Chunk(Err(e)) => {
                failure = Some(e);
                break;
            }
            Event::DrainDeadline => {
                failure = Some(SluiceError::ShuttingDown);
                break;
            }
            Event::ClientGone if final_written => {
                // The client has the final event and closed before the body's end (the openai
                // SDK closes right after `data: [DONE]`): a completed request, not a disconnect.
                closed_after_end = true;
                break;
            }
            Event::ClientGone => {
                tracing::debug!(request_id = %ctx.request_id, "client left mid-response");
                d.client_disconnected = true;
                break;
            }
        }
    }
    // Not complete: the client left or the upstream failed; dropping the attempt here closes
    // the upstream connection now.
    let cut_target = tracker.as_ref().map(|_| attempt.target().clone());
    let attempt_left = complete.then_some(attempt);

    let mut tail = BytesMut::new();
    tail.extend_from_slice(&last);
    match &mut acc {
        Accounting::Sse(a) => {
            let end = a.finish();
            if let Some(t) = tracker.as_mut() {
                t.observe(&end);
            }
            tail.extend_from_slice(&end);
            d.completed = a.completed();
            if complete && failure.is_none() && !a.completed() && !a.saw_error() {
                // A clean end of body without the terminal event: complete if the whole answer
                // came (inspected streaming chat requests always ask for include_usage).
                if a.ended_after_final_content(ctx.fields().stream) {
                    d.completed = true;
                } else {
                    failure = Some(SluiceError::UpstreamTruncated(endpoint.clone()));
                }
            }
            let oversized = a.oversized_events();
            if oversized > 0 {
                d.usage_incomplete = true;
                metrics::SSE_OVERSIZED_EVENTS
                    .with_label_values(&[ctx.route_name()])
                    .inc_by(oversized);
                tracing::warn!(
                    request_id = %ctx.request_id,
                    route = ctx.route_name(),
                    oversized,
                    max_sse_event_bytes = bounds.max_sse_event_bytes,
                    "SSE events over the accounting cap were forwarded unparsed; tokens estimated"
                );
            }
            d.usage = plausible(ctx, a.usage(), bounds.max_usage_tokens);
            d.output_text = Some(a.output_text().to_owned());
            let finished = match ctx.caller.api {
                Some(ApiKind::OpenAiResponses) => true,
                _ => a.ended_after_final_content(true),
            };
            // A Gemini stream has no terminal event: its last chunk (`finished`) is it.
            let terminal = a.completed() || ctx.caller.api == Some(ApiKind::GeminiGenerateContent);
            d.stream_whole = terminal
                && !a.saw_error()
                && finished
                && a.malformed_events() == 0
                && oversized == 0;
        }
        Accounting::Json(a) => {
            d.usage = plausible(ctx, a.finish(), bounds.max_usage_tokens);
            if let (true, Some(api)) = (ctx.trace.is_some(), ctx.caller.api) {
                d.response_model = crate::usage::response_model::of_body(api, a.body());
            }
            d.completed = failure.is_none() && !d.client_disconnected;
            if d.usage.is_none() {
                d.output_text = Some(a.output_text());
            }
        }
        Accounting::Off => {}
    }
    if let (Some(h), Some(api)) = (head, ctx.caller.api) {
        d.response_model = crate::usage::response_model::of_stream(api, &h);
    }
    if let (Some(err), Some(t), Some(target), Accounting::Sse(a)) =
        (&failure, tracker.as_mut(), &cut_target, &acc)
    {
        // Not resumed: a tenant whose budget cuts streams off (a continuation would bill
        // the prompt again, past what admission allowed), or a drain in progress.
        if super::resume::is_cut(err)
            && !d.client_disconnected
            && t.resumable()
            && cutoff.is_none()
            && crate::drain::current() == crate::drain::Stage::Serving
        {
            // The client gets every whole event of the cut leg, then the continuation.
            let sent = std::mem::take(&mut tail).freeze();
            let cut = super::resume::Cut {
                target,
                error: err,
                reported: a.usage(),
                hide_usage: hide,
                max_event_bytes: bounds.max_sse_event_bytes,
            };
            let r = if session.write_body(sent, false).await.is_err() {
                None
            } else {
                // Boxed: only a cut stream runs it, and inline its state (about 12 KB, most
                // of it the continuation's connect) would make every request's future, which
                // is moved once per request, that much larger.
                Some(Box::pin(super::resume::resume(session, ctx, t, cut)).await)
            };
            d.client_disconnected = r.as_ref().is_none_or(|r| r.client_gone);
            if let Some(r) = r {
                if r.spliced {
                    failure = None;
                    d.completed = true;
                }
                if r.legs.len() > 1 {
                    // A continuation ran: every leg counted, spliced or not (a cut leg is
                    // estimated), the sum settled as is.
                    d.usage = plausible(ctx, Some(r.usage), bounds.max_usage_tokens);
                    d.usage_incomplete = true;
                    d.output_text = None;
                }
                d.legs = r.legs;
                d.resumes = r.resumes;
            }
        }
    }
    if let Some(err) = &failure {
        if is_sse {
            // A native in-stream error event: the SDK raises instead of silently stopping.
            tail.extend_from_slice(&error_event(ctx, &acc, err));
        } else {
            // A non-streamed body cut short: no event can say so; the transfer is broken off
            // (see `Delivered::cut_short`) so the client sees it.
            session.close_after();
            d.cut_short = true;
        }
    }
    if let Some(err) = failure {
        d.error = Some(err);
    }
    if let Some(r) = rec {
        r.finish(&d);
    }
    if closed_after_end {
        session.close_after();
        return d;
    }
    if d.client_disconnected {
        metrics::CLIENT_DISCONNECTS
            .with_label_values(&[ctx.route_name()])
            .inc();
        session.close_after();
        return d;
    }
    if d.error.is_some() && !is_sse {
        return d;
    }
    let tail = tail.freeze();
    if session.write_body(tail, true).await.is_err() && !final_written {
        d.client_disconnected = true;
    }
    if let Some(attempt) = attempt_left {
        // The client has its whole response; read the upstream's end so the connection goes
        // back to the pool, off the request's path (its accounting and its tenant's
        // concurrency permit need not wait for an upstream slow to end its body), within the
        // pool's idle timeout in all.
        let idle = attempt.target().pool.timeouts.idle;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(idle, attempt.finish(REUSE_DRAIN_BYTES)).await;
        });
    }
    d
}

/// The native in-stream error event for `err` in the request's API (see
/// [`crate::provider::stream_error_event`]), numbered after the last Responses event seen.
fn error_event(ctx: &RequestCtx, acc: &Accounting, err: &SluiceError) -> Bytes {
    let seq = match acc {
        Accounting::Sse(a) => a.next_sequence_number(),
        _ => 0,
    };
    crate::provider::stream_error_event(ctx.caller.api, ctx.caller.style, err, seq)
}

/// `usage` if every count is at most `max_tokens`; otherwise `None` (the request's tokens are
/// then estimated), with a warning (counts only) and `sluice_usage_implausible_total`.
fn plausible(ctx: &RequestCtx, usage: Option<Usage>, max_tokens: u64) -> Option<Usage> {
    let u = usage?;
    if u.largest() <= max_tokens {
        return Some(u);
    }
    metrics::USAGE_IMPLAUSIBLE
        .with_label_values(&[ctx.route_name()])
        .inc();
    tracing::warn!(
        request_id = %ctx.request_id,
        route = ctx.route_name(),
        prompt_tokens = u.prompt_tokens,
        completion_tokens = u.completion_tokens,
        cached_tokens = u.cached_tokens,
        cache_write_tokens = u.cache_write_tokens,
        reasoning_tokens = u.reasoning_tokens,
        max_usage_tokens = max_tokens,
        "upstream usage over the plausibility bound treated as malformed; tokens estimated"
    );
    None
}
