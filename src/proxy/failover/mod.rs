//! Pipeline stage 4 (inspected requests): failover. Runs [`Attempt`]s over the route's
//! candidates (pools in order, each pool's endpoints in its policy's order, each endpoint's
//! usable keys) until one answers with a status that is not retryable, and hands that
//! attempt to the relay. Failover happens only before any response byte reached the client;
//! a streamed answer is first held by [`super::commit`] until its first content event, and
//! failover goes on until then.
//!
//! The decision after each attempt is [`decide`] / [`decide_error`] in `rules` (outcome × the
//! route's rules: serve, another key, the same endpoint again after a jittered backoff, the
//! next candidate, or stop); the endpoint
//! bookkeeping an answer implies (breaker outcome, a key disabled after 401/403, a key and
//! model cooling down after 429, an endpoint cooling down after a 503/529 `retry-after`) is
//! [`observe`]. Endpoint state lives in [`crate::balance`]'s registry, outside the config
//! snapshot.

mod rules;

use super::attempt::{Attempt, Outgoing, Target};
use super::commit::{self, Hold};
use super::ctx::{AttemptRecord, RequestCtx};
use super::downstream::Downstream;
use crate::balance::breaker::{Outcome, Pass};
use crate::balance::now_ms;
use crate::config::Pool;
use crate::error::SluiceError;
use crate::metrics;
use crate::provider::provider;
use crate::provider::NativeError;
use bytes::{Bytes, BytesMut};
use pingora_http::ResponseHeader;
use rules::{decide, decide_error, Next};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// The attempt whose response the client gets.
pub struct Served {
    /// The attempt, its body not read yet.
    pub attempt: Attempt,
    /// Its response header.
    pub header: Box<ResponseHeader>,
    /// Body bytes already read from the attempt (a 4xx body's prefix read to match its
    /// error), to send before the rest.
    pub prefix: Bytes,
    /// A streamed answer held until its first content ([`super::commit`]): the events
    /// already read, to write right after the header. `None`: nothing read yet.
    pub opening: Option<super::commit::Opening>,
}

/// How failover ended.
// Returned once per request and moved once into the relay: an allocation to box the attempt
// would cost more than the move.
#[allow(clippy::large_enum_variant)]
pub enum Ended {
    /// An upstream answer to relay.
    Served(Served),
    /// The client left while waiting: nobody to answer.
    ClientGone,
}

/// What an answer teaches about its endpoint, recorded in the endpoint's state: the breaker
/// outcome; after 401/403 the key disabled (returns another usable key, if any); after 429
/// the key cooling down for this model (`retry-after`, default 1 s); after 503/529 with a
/// `retry-after` the endpoint cooling down. Returns `(other key, cooldown end in ms since the
/// epoch)`. `held`: a streamed answer whose breaker outcome commit on content records.
fn observe(
    target: &Target,
    model: Option<&str>,
    header: &ResponseHeader,
    held: bool,
) -> (Option<usize>, Option<u64>) {
    let Some(ep) = target.endpoint() else {
        return (None, None);
    };
    let status = header.status.as_u16();
    let now = now_ms();
    if !held {
        ep.state.breaker.record(Outcome::of_status(status));
    }
    let wait = retry_after_ms(header);
    let label = |reason| {
        metrics::KEY_COOLDOWNS
            .with_label_values(&[&*target.pool.name, ep.addr.as_str(), reason])
            .inc();
    };
    match status {
        401 | 403 => {
            ep.state.keys.disable(target.key);
            label("unauthorized");
            (ep.state.keys.pick(now, model).ok(), None)
        }
        429 => {
            let until = now + wait.unwrap_or(1_000);
            ep.state.keys.cool_down(target.key, model, until);
            label("rate_limited");
            (None, Some(until))
        }
        503 | 529 => {
            let until = wait.map(|w| now + w);
            if let Some(u) = until {
                ep.state.cooldown_until_ms.fetch_max(u, Ordering::AcqRel);
            }
            (None, until)
        }
        _ => (None, None),
    }
}

/// Bookkeeping of one failover run, for the final answer when no candidate served.
#[derive(Default)]
struct Tally {
    attempts: u32,
    last_err: Option<SluiceError>,
    held: Option<(Served, Arc<Pool>, usize)>,
    earliest: Option<u64>,
    /// An endpoint was skipped or failed because of upstream 429s / for another reason.
    rate_limited: bool,
    other_unavailable: bool,
    /// A pool whose URL cannot carry the model (Azure deployment names): skipped without a
    /// connection, answered when no other pool could serve.
    invalid_model: Option<SluiceError>,
    /// The pool and reason of the previous failed attempt (failover metric).
    previous: Option<(Arc<str>, String)>,
}

impl Tally {
    fn cooldown(&mut self, until: u64) {
        self.earliest = Some(self.earliest.map_or(until, |e| e.min(until)));
    }
}

/// Run the route's candidates until one answers with a status that is not retryable.
///
/// Skipped without a connection attempt: endpoints whose breaker is open, cooling down after a
/// `retry-after`, or without a usable key. Bounded by the route's `max_attempts` and
/// `deadline`. When every candidate failed, the last upstream answer is served as-is if there
/// was one; otherwise the last error (or [`SluiceError::NoUpstreamAvailable`] with the
/// earliest cooldown) is returned for the caller to answer natively.
pub async fn run<D: Downstream>(
    session: &mut D,
    ctx: &mut RequestCtx,
) -> Result<Ended, SluiceError> {
    let (Some(snapshot), Some(route_idx)) = (ctx.snapshot.clone(), ctx.caller.route) else {
        return Err(SluiceError::Internal);
    };
    let Some(route) = snapshot.routes.get(route_idx) else {
        return Err(SluiceError::Internal);
    };
    let rules = &route.failover;
    let deadline = tokio::time::Instant::now() + rules.deadline;
    let body = ctx.body().cloned().unwrap_or_default();
    let base = super::attempt::forwarded_header(session.req_header())
        .map_err(|_| SluiceError::Internal)?;
    let mut t = Tally::default();
    let served = 'pools: {
        for pool in &route.pools {
            let model = ctx.model().map(|m| pool.upstream_model(m).to_owned());
            if model
                .as_deref()
                .is_some_and(|m| !provider(pool.provider).accepts_model(m))
            {
                t.invalid_model = Some(SluiceError::InvalidModel(pool.name.to_string()));
                continue;
            }
            let pool_body = match (ctx.model(), &model) {
                (Some(asked), Some(renamed)) if asked != renamed => {
                    super::inspect::with_model(&body, renamed)?
                }
                _ => body.clone(),
            };
            let out = Outgoing {
                base: &base,
                model: model.as_deref(),
                body: pool_body,
            };
            for ep_idx in pool.order() {
                let ep = &pool.endpoints[ep_idx];
                // `_pass` holds a half-open breaker's probe slot until this endpoint is done.
                let (mut key, mut _pass) =
                    match usable(pool, ep_idx, model.as_deref(), &mut t.earliest) {
                        Ok(k) => k,
                        Err(keys_cooling) => {
                            t.rate_limited |= keys_cooling;
                            t.other_unavailable |= !keys_cooling;
                            if ep.keys.is_empty() {
                                t.last_err =
                                    Some(SluiceError::NoUpstreamKey(pool.name.to_string()));
                            }
                            continue;
                        }
                    };
                // Retries of this endpoint so far (`retry`), each after a backoff.
                let mut retries = 0u32;
                loop {
                    if t.attempts >= rules.max_attempts || tokio::time::Instant::now() >= deadline {
                        break 'pools None;
                    }
                    t.attempts += 1;
                    if let Some((from, reason)) = t.previous.take() {
                        metrics::FAILOVERS
                            .with_label_values(&[&route.name, &from, &pool.name, reason.as_str()])
                            .inc();
                    }
                    ctx.upstream.last = Some((pool.clone(), ep_idx));
                    let target = Target {
                        pool: pool.clone(),
                        endpoint: ep_idx,
                        key,
                    };
                    let sent_at = tokio::time::Instant::now();
                    // Commit on content: a streamed call's first-token deadline bounds the
                    // wait for the header too.
                    let attempt_deadline = if ctx.fields().stream {
                        deadline.min(sent_at + rules.first_token)
                    } else {
                        deadline
                    };
                    let started = tokio::select! {
                        r = Attempt::start(target.clone(), &out, attempt_deadline) => r,
                        () = session.gone() => {
                            record(ctx, &target, 0, "client_gone");
                            observe_attempts(&route.name, t.attempts);
                            return Ok(Ended::ClientGone);
                        }
                    };
                    // Another try of this endpoint must fit in the attempt budget.
                    let retry_left =
                        retries < rules.retry.max_retries && t.attempts < rules.max_attempts;
                    let (next, reason) = match started {
                        Ok((mut attempt, header)) => {
                            let status = header.status.as_u16();
                            let held = commit::applies(ctx, &header);
                            let (other_key, cooldown) =
                                observe(&target, model.as_deref(), &header, held);
                            if let Some(until) = cooldown {
                                t.cooldown(until);
                            }
                            t.rate_limited |= status == 429;
                            let (prefix, error) = if (400..500).contains(&status)
                                && !matches!(status, 401 | 403 | 429)
                                && rules.reads_error_bodies()
                            {
                                let limit = rules.max_error_body_bytes;
                                let prefix = tokio::select! {
                                    p = body_prefix(&mut attempt, limit, deadline) => p,
                                    () = session.gone() => {
                                        record(ctx, &target, status, "client_gone");
                                        observe_attempts(&route.name, t.attempts);
                                        return Ok(Ended::ClientGone);
                                    }
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
                                    record(ctx, &target, status, "key_disabled");
                                    key = k;
                                    continue;
                                }
                                Next::Serve | Next::Stop => {
                                    // --- commit on content (see `commit`): a streamed answer
                                    // is served once it carries output; until then it fails
                                    // over like an answer without a header.
                                    let served = if held {
                                        let hold = commit::hold(
                                            session, ctx, rules, answer, sent_at, deadline,
                                        );
                                        match hold.await {
                                            Hold::Committed(s, outcome) => {
                                                ep.state.breaker.record(outcome);
                                                s
                                            }
                                            Hold::ClientGone => {
                                                record(ctx, &target, status, "client_gone");
                                                observe_attempts(&route.name, t.attempts);
                                                return Ok(Ended::ClientGone);
                                            }
                                            Hold::Failed(f) => {
                                                ep.state.breaker.record(f.breaker);
                                                record(ctx, &target, status, f.outcome);
                                                t.held = Some((f.served, pool.clone(), ep_idx));
                                                if !f.move_on {
                                                    break 'pools None;
                                                }
                                                t.previous =
                                                    Some((pool.name.clone(), f.outcome.to_owned()));
                                                break;
                                            }
                                        }
                                    } else {
                                        answer
                                    };
                                    // --- end of commit on content.
                                    record(ctx, &target, status, "ok");
                                    break 'pools Some(served);
                                }
                                // Kept: returned as is if nothing does better.
                                Next::HoldAndMoveOn | Next::RetrySame => {
                                    let outcome = if next == Next::RetrySame {
                                        "retry"
                                    } else {
                                        "failover"
                                    };
                                    record(ctx, &target, status, outcome);
                                    t.held = Some((answer, pool.clone(), ep_idx));
                                }
                            }
                            (next, status.to_string())
                        }
                        Err(err) => {
                            t.other_unavailable = true;
                            // Only what the upstream did counts: an attempt sluice could not
                            // even send (a header it could not build) is neutral.
                            ep.state.breaker.record(Outcome::of_error(&err));
                            let next = decide_error(rules, &err, retry_left);
                            let outcome = if next == Next::RetrySame {
                                "retry"
                            } else {
                                err.label()
                            };
                            record(ctx, &target, 0, outcome);
                            let reason = err.label().to_owned();
                            t.last_err = Some(err);
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
                            let until = (tokio::time::Instant::now() + wait).min(deadline);
                            tokio::select! {
                                () = tokio::time::sleep_until(until) => {}
                                () = session.gone() => {
                                    observe_attempts(&route.name, t.attempts);
                                    return Ok(Ended::ClientGone);
                                }
                            }
                            // The endpoint may have become unusable meanwhile (breaker open,
                            // cooling down after a `retry-after`): then the next candidate.
                            match usable(pool, ep_idx, model.as_deref(), &mut t.earliest) {
                                Ok((k, pass)) => {
                                    key = k;
                                    _pass = pass;
                                }
                                Err(_) => {
                                    t.previous = Some((pool.name.clone(), reason));
                                    break;
                                }
                            }
                        }
                        Next::Stop => break 'pools None,
                        _ => {
                            t.previous = Some((pool.name.clone(), reason));
                            break;
                        }
                    }
                }
            }
        }
        None
    };
    observe_attempts(&route.name, t.attempts);
    if let Some(served) = served {
        return Ok(Ended::Served(served));
    }
    if let Some((held, pool, endpoint)) = t.held {
        // Every candidate failed: the last upstream answer goes back as-is.
        ctx.upstream.last = Some((pool, endpoint));
        return Ok(Ended::Served(held));
    }
    let retry_after = t
        .earliest
        .map(|until| Duration::from_millis(until.saturating_sub(now_ms())));
    Err(match (t.last_err, t.invalid_model) {
        (Some(e), _) => e,
        (None, Some(e)) if !t.rate_limited && !t.other_unavailable => e,
        (None, _) => SluiceError::NoUpstreamAvailable {
            retry_after,
            rate_limited: t.rate_limited && !t.other_unavailable,
        },
    })
}

/// Up to `limit` bytes of `attempt`'s body (fewer when it ends first, fails, or the deadline
/// passes): the prefix of a 4xx body whose native error the rules match on.
async fn body_prefix(attempt: &mut Attempt, limit: usize, deadline: tokio::time::Instant) -> Bytes {
    let mut buf = BytesMut::new();
    let read = async {
        while buf.len() < limit {
            match attempt.chunk().await {
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout_at(deadline, read).await;
    buf.freeze()
}

fn observe_attempts(route: &str, attempts: u32) {
    metrics::ATTEMPTS
        .with_label_values(&[route])
        .observe(f64::from(attempts));
}

/// A usable key of endpoint `idx` for a request for `model` (as the pool's upstream knows it;
/// `None` when the request names none) if the endpoint may be tried now (not cooling down,
/// breaker admitting the call), with the breaker's pass to hold until the attempt's outcome is
/// recorded; records why not otherwise and updates the earliest cooldown. `Err(true)`: its
/// keys are all cooling down after 429s; `Err(false)`: unavailable for another reason.
pub(super) fn usable(
    pool: &Pool,
    idx: usize,
    model: Option<&str>,
    earliest: &mut Option<u64>,
) -> Result<(usize, Pass), bool> {
    let ep = &pool.endpoints[idx];
    let now = now_ms();
    let until = ep.state.cooldown_until_ms.load(Ordering::Acquire);
    let skip = |reason: &str| {
        metrics::ENDPOINT_SKIPS
            .with_label_values(&[&*pool.name, ep.addr.as_str(), reason])
            .inc();
    };
    if until > now {
        *earliest = Some(earliest.map_or(until, |e| e.min(until)));
        skip("cooling_down");
        return Err(false);
    }
    let pass = match ep.state.breaker.admit() {
        Ok(pass) => pass,
        Err(why) => {
            skip(why.label());
            return Err(false);
        }
    };
    // Without a usable key the pass (and a probe slot it holds) is dropped unused.
    match ep.state.keys.pick(now, model) {
        Ok(k) => Ok((k, pass)),
        Err(until) => {
            if let Some(u) = until {
                *earliest = Some(earliest.map_or(u, |e| e.min(u)));
            }
            skip("no_usable_key");
            Err(until.is_some())
        }
    }
}

/// The upstream's `retry-after-ms`, else `retry-after` in seconds (HTTP dates are not
/// honoured: sluice then uses its default cooldown).
pub fn retry_after_ms(h: &ResponseHeader) -> Option<u64> {
    let get = |n: &str| {
        h.headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        return (ms.is_finite() && ms >= 0.0).then_some(ms as u64);
    }
    get("retry-after")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| (s * 1000.0) as u64)
}

fn record(ctx: &mut RequestCtx, target: &Target, status: u16, outcome: &'static str) {
    ctx.upstream.attempts.push(AttemptRecord {
        pool: target.pool.name.clone(),
        endpoint: target.addr().to_owned(),
        status,
        outcome,
    });
}
