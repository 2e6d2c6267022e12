//! One lane of failover: candidates taken one after another from the request's [`Plan`], each
//! tried (and retried on the same endpoint after a jittered backoff when the rules say so)
//! until an answer is served, the client leaves, or nothing is left. A request runs one lane;
//! a hedged one runs more, side by side ([`super::hedge`]).

use super::plan::{Candidate, Plan};
use super::rules::{decide, decide_error, Next};
use super::{body_prefix, observe, record, usable, Served, Tally};
use crate::balance::breaker::Outcome;
use crate::metrics;
use crate::otel::AttemptSpan;
use crate::provider::NativeError;
use crate::proxy::attempt::{Attempt, Outgoing, Target};
use crate::proxy::commit::{self, Hold};
use crate::proxy::ctx::{RequestCtx, UpstreamLog};
use crate::proxy::downstream::Downstream;
use bytes::Bytes;

/// How a lane ended.
// Returned once per lane and moved at once: boxing the attempt would cost more than the move.
#[allow(clippy::large_enum_variant)]
pub(super) enum LaneEnd {
    /// An answer to relay (a streamed one carrying content).
    Served(Served),
    /// The client left.
    ClientGone,
    /// No answer: every candidate it took failed, or the rules said stop; what it learned
    /// is in its [`Lane`]'s tally.
    Failed,
}

/// What one lane records: its attempts, the attempt in flight, what it learned.
#[derive(Default)]
pub(super) struct Lane {
    /// Its attempts, in order, and the endpoint of the last one.
    pub log: UpstreamLog,
    /// The attempt in flight, until recorded: a lane dropped mid-attempt (a lost hedge, a
    /// client gone) is recorded from it.
    pub in_flight: Option<InFlight>,
    /// What it learned for the final answer when no candidate served.
    pub tally: Tally,
    /// A hedged lane (started because the lanes before it delivered no content in time).
    pub hedge: bool,
}

/// Run candidates from `plan` until one is served (see the module doc).
pub(super) async fn run<D: Downstream>(
    down: &mut D,
    ctx: &RequestCtx,
    plan: &Plan<'_>,
    lane: &mut Lane,
) -> LaneEnd {
    while let Some(c) = plan.next_candidate() {
        match candidate(down, ctx, plan, lane, c).await {
            Some(end) => return end,
            None => continue,
        }
    }
    LaneEnd::Failed
}

/// Try one candidate (with its same-endpoint retries). `None`: move on to the next one.
async fn candidate<D: Downstream>(
    down: &mut D,
    ctx: &RequestCtx,
    plan: &Plan<'_>,
    lane: &mut Lane,
    c: Candidate,
) -> Option<LaneEnd> {
    let (rules, route) = (plan.rules, plan.route);
    let Candidate {
        pool,
        endpoint: ep_idx,
        request,
        seq,
    } = c;
    let model = request.model.as_deref();
    let mut out = Outgoing {
        base: &plan.base,
        model,
        body: request.body.clone(),
        traceparent: None,
    };
    let ep = &pool.endpoints[ep_idx];
    // `_pass` holds a half-open breaker's probe slot until this endpoint is done.
    let (mut key, mut _pass) = match usable(&pool, ep_idx, model, &mut lane.tally.earliest) {
        Ok(k) => k,
        Err(keys_cooling) => {
            lane.tally.rate_limited |= keys_cooling;
            lane.tally.other_unavailable |= !keys_cooling;
            if ep.keys.is_empty() {
                plan.failed(crate::error::SluiceError::NoUpstreamKey(
                    pool.name.to_string(),
                ));
            }
            return None;
        }
    };
    // Retries of this endpoint so far (`retry`), each after a backoff.
    let mut retries = 0u32;
    loop {
        if !plan.take_attempt() {
            return Some(LaneEnd::Failed);
        }
        if let Some((from, reason)) = lane.tally.previous.take() {
            metrics::FAILOVERS
                .with_label_values(&[&route.name, &from, &pool.name, reason.as_str()])
                .inc();
        }
        lane.log.last = Some((pool.clone(), ep_idx));
        plan.attempting(&pool, ep_idx);
        let target = Target {
            pool: pool.clone(),
            endpoint: ep_idx,
            key,
        };
        let sent_at = tokio::time::Instant::now();
        let mut span = ctx
            .trace
            .as_ref()
            .and_then(|t| t.attempt(&pool, Some(ep), model, ctx.caller.api));
        if let Some(s) = span.as_mut().filter(|_| lane.hedge) {
            s.mark_hedge();
        }
        out.traceparent = span.as_ref().map(AttemptSpan::traceparent);
        lane.in_flight = Some(InFlight {
            target: target.clone(),
            status: 0,
            sent_at,
            span,
        });
        // Commit on content: a streamed call's first-token deadline bounds the wait for the
        // header too.
        let attempt_deadline = if ctx.fields().stream {
            plan.deadline.min(sent_at + rules.first_token)
        } else {
            plan.deadline
        };
        let started = tokio::select! {
            r = Attempt::start(target.clone(), &out, attempt_deadline) => r,
            () = down.gone() => {
                return Some(client_gone(lane, 0));
            }
        };
        // Another try of this endpoint must fit in the attempt budget.
        let retry_left = retries < rules.retry.max_retries && plan.attempt_left();
        let (next, reason) = match started {
            Ok((mut attempt, header)) => {
                let status = header.status.as_u16();
                if let Some(f) = lane.in_flight.as_mut() {
                    f.status = status;
                }
                let held = commit::applies(ctx, &header);
                let (other_key, cooldown) = observe(&target, model, &header, held);
                if let Some(until) = cooldown {
                    lane.tally.cooldown(until);
                }
                lane.tally.rate_limited |= status == 429;
                let (prefix, error) = if (400..500).contains(&status)
                    && !matches!(status, 401 | 403 | 429)
                    && rules.reads_error_bodies()
                {
                    let limit = rules.max_error_body_bytes;
                    let prefix = tokio::select! {
                        p = body_prefix(&mut attempt, limit, plan.deadline) => p,
                        () = down.gone() => return Some(client_gone(lane, status)),
                    };
                    let error = NativeError::parse(&prefix);
                    (prefix, error)
                } else {
                    (Bytes::new(), None)
                };
                let next = decide(rules, status, other_key, retry_left, error.as_ref());
                let answer = Served {
                    attempt,
                    header,
                    prefix,
                    opening: None,
                };
                match next {
                    Next::OtherKey(k) => {
                        settle(lane, status, "key_disabled");
                        key = k;
                        continue;
                    }
                    // Racing lanes (`hedge`): an error answer is kept, not served, while
                    // another lane may still deliver; no lane takes another candidate.
                    Next::Serve | Next::Stop
                        if plan.hedged && !held && !(200..300).contains(&status) =>
                    {
                        settle(lane, status, "held");
                        plan.hold(answer, pool.clone(), ep_idx, seq);
                        plan.stop();
                        return Some(LaneEnd::Failed);
                    }
                    Next::Serve | Next::Stop => {
                        // --- commit on content (see `commit`): a streamed answer is served
                        // once it carries output; until then it fails over like an answer
                        // without a header.
                        let served = if held {
                            let hold =
                                commit::hold(down, ctx, rules, answer, sent_at, plan.deadline);
                            match hold.await {
                                Hold::Committed(s, outcome) => {
                                    ep.state.breaker.record(outcome);
                                    s
                                }
                                Hold::ClientGone => return Some(client_gone(lane, status)),
                                Hold::Failed(f) => {
                                    ep.state.breaker.record(f.breaker);
                                    settle(lane, status, f.outcome);
                                    plan.hold(f.served, pool.clone(), ep_idx, seq);
                                    if !f.move_on {
                                        plan.stop();
                                        return Some(LaneEnd::Failed);
                                    }
                                    lane.tally.previous =
                                        Some((pool.name.clone(), f.outcome.to_owned()));
                                    return None;
                                }
                            }
                        } else {
                            answer
                        };
                        // --- end of commit on content.
                        settle(lane, status, "ok");
                        return Some(LaneEnd::Served(served));
                    }
                    // Kept: returned as is if nothing does better.
                    Next::HoldAndMoveOn | Next::RetrySame => {
                        let outcome = if next == Next::RetrySame {
                            "retry"
                        } else {
                            "failover"
                        };
                        settle(lane, status, outcome);
                        plan.hold(answer, pool.clone(), ep_idx, seq);
                    }
                }
                (next, status.to_string())
            }
            Err(err) => {
                lane.tally.other_unavailable = true;
                // Only what the upstream did counts: an attempt sluice could not even send
                // (a header it could not build) is neutral.
                ep.state.breaker.record(Outcome::of_error(&err));
                let next = decide_error(rules, &err, retry_left);
                let outcome = if next == Next::RetrySame {
                    "retry"
                } else {
                    err.label()
                };
                let reason = err.label().to_owned();
                plan.failed(err);
                settle(lane, 0, outcome);
                (next, reason)
            }
        };
        match next {
            Next::RetrySame => {
                metrics::RETRIES
                    .with_label_values(&[&route.name, &pool.name, reason.as_str()])
                    .inc();
                let wait = rules.retry.backoff_for(retries);
                retries += 1;
                let until = (tokio::time::Instant::now() + wait).min(plan.deadline);
                tokio::select! {
                    () = tokio::time::sleep_until(until) => {}
                    () = down.gone() => return Some(LaneEnd::ClientGone),
                }
                // The endpoint may have become unusable meanwhile (breaker open, cooling down
                // after a `retry-after`): then the next candidate.
                match usable(&pool, ep_idx, model, &mut lane.tally.earliest) {
                    Ok((k, pass)) => {
                        key = k;
                        _pass = pass;
                    }
                    Err(_) => {
                        lane.tally.previous = Some((pool.name.clone(), reason));
                        return None;
                    }
                }
            }
            Next::Stop => {
                plan.stop();
                return Some(LaneEnd::Failed);
            }
            _ => {
                lane.tally.previous = Some((pool.name.clone(), reason));
                return None;
            }
        }
    }
}

/// An attempt in flight.
pub(super) struct InFlight {
    pub target: Target,
    /// Its status so far (0 before the header).
    pub status: u16,
    /// When its request was sent.
    pub sent_at: tokio::time::Instant,
    /// Its trace span (tracing on).
    pub span: Option<AttemptSpan>,
}

impl InFlight {
    /// Record this attempt in `log` with `status` and `outcome`; its span ends, or, for the
    /// served attempt (`ok`), is kept to end with the request.
    pub fn settle(self, log: &mut UpstreamLog, status: u16, outcome: &'static str) {
        record(log, &self.target, status, outcome);
        if let Some(span) = self.span {
            if outcome == "ok" {
                log.served_span = Some(span);
            } else {
                span.end(status, outcome);
            }
        }
    }
}

/// Record the attempt in flight with `status` and `outcome`.
fn settle(lane: &mut Lane, status: u16, outcome: &'static str) {
    if let Some(f) = lane.in_flight.take() {
        f.settle(&mut lane.log, status, outcome);
    }
}

/// The client left during the attempt in flight (status `status` so far).
fn client_gone(lane: &mut Lane, status: u16) -> LaneEnd {
    settle(lane, status, "client_gone");
    LaneEnd::ClientGone
}
