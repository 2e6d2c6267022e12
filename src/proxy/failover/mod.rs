//! Pipeline stage 4 (inspected requests): failover. Runs [`Attempt`]s over the route's
//! candidates (pools in order, each pool's endpoints in its policy's order, each endpoint's
//! usable keys) until one answers with a status that is not retryable, and hands that
//! attempt to the relay. Failover happens only before any response byte reached the client;
//! a streamed answer is first held by [`super::commit`] until its first content event, and
//! failover goes on until then.
//!
//! The decision after each attempt is `decide` / `decide_error` in `rules` (outcome × the
//! route's rules: serve, another key, the same endpoint again after a jittered backoff, the
//! next candidate, or stop); the endpoint
//! bookkeeping an answer implies (breaker outcome, a key disabled after 401/403, a key and
//! model cooling down after 429, an endpoint cooling down after a 503/529 `retry-after`) is
//! [`observe`]. Endpoint state lives in [`crate::balance`]'s registry, outside the config
//! snapshot.

mod hedge;
mod lane;
mod plan;
mod rules;

use super::attempt::{Attempt, Target};
use super::ctx::{AttemptRecord, RequestCtx, UpstreamLog};
use super::downstream::Downstream;
use crate::balance::breaker::{Outcome, Pass};
use crate::balance::now_ms;
use crate::config::Pool;
use crate::error::SluiceError;
use crate::metrics;
use bytes::{Bytes, BytesMut};
use hedge::Raced;
use lane::{Lane, LaneEnd};
use pingora_http::ResponseHeader;
use plan::Plan;
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

/// What one lane learned, for the final answer when no candidate served (the answer kept and
/// the last failure are the [`Plan`]'s, shared by the lanes).
#[derive(Default)]
pub(super) struct Tally {
    earliest: Option<u64>,
    /// An endpoint was skipped or failed because of upstream 429s / for another reason.
    rate_limited: bool,
    other_unavailable: bool,
    /// The pool and reason of the previous failed attempt (failover metric).
    previous: Option<(Arc<str>, String)>,
}

impl Tally {
    fn cooldown(&mut self, until: u64) {
        self.earliest = Some(self.earliest.map_or(until, |e| e.min(until)));
    }

    /// Fold `other` (another lane's) into this one.
    fn merge(&mut self, other: Tally) {
        if let Some(until) = other.earliest {
            self.cooldown(until);
        }
        self.rate_limited |= other.rate_limited;
        self.other_unavailable |= other.other_unavailable;
    }
}

/// Run the route's candidates until one answers with a status that is not retryable: one
/// lane ([`lane`]), or on a route with `hedge` lanes raced side by side ([`hedge`]).
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
    let base = super::attempt::forwarded_header(session.req_header())
        .map_err(|_| SluiceError::Internal)?;
    let body = ctx.body().cloned().unwrap_or_default();
    let plan = Plan::new(route, base, ctx.model(), body);
    let lanes_max = route.hedge.map_or(1, |h| h.max as usize + 1);
    let mut lanes: Vec<Lane> = (0..lanes_max)
        .map(|i| Lane {
            hedge: i > 0,
            ..Lane::default()
        })
        .collect();
    let ended = match route.hedge {
        None => match lane::run(session, ctx, &plan, &mut lanes[0]).await {
            LaneEnd::Served(s) => Raced::Won(0, Box::new(s)),
            LaneEnd::ClientGone => Raced::ClientGone,
            LaneEnd::Failed => Raced::Failed,
        },
        Some(h) => hedge::race(session, ctx, &plan, h, &mut lanes).await,
    };
    observe_attempts(&route.name, plan.attempts());
    // Every lane's attempts go to the log, the first lane's first.
    // The serving endpoint is the winner's; without one, the latest attempt's.
    if let Some(last) = plan.last() {
        ctx.upstream.last = Some(last);
    }
    let mut t = Tally::default();
    for (i, lane) in lanes.into_iter().enumerate() {
        ctx.upstream.attempts.extend(lane.log.attempts);
        let won = matches!(ended, Raced::Won(w, _) if w == i);
        if won && lane.log.last.is_some() {
            ctx.upstream.last = lane.log.last;
        }
        if won {
            ctx.upstream.served_span = lane.log.served_span;
        }
        t.merge(lane.tally);
    }
    match ended {
        Raced::Won(_, served) => return Ok(Ended::Served(*served)),
        Raced::ClientGone => return Ok(Ended::ClientGone),
        Raced::Failed => {}
    }
    if let Some(e) = plan.take_fatal() {
        return Err(e);
    }
    if let Some((held, pool, endpoint)) = plan.take_held() {
        // Every candidate failed: the last upstream answer goes back as-is.
        ctx.upstream.last = Some((pool, endpoint));
        return Ok(Ended::Served(held));
    }
    let retry_after = t
        .earliest
        .map(|until| Duration::from_millis(until.saturating_sub(now_ms())));
    Err(match (plan.take_last_err(), plan.take_invalid_model()) {
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

fn record(log: &mut UpstreamLog, target: &Target, status: u16, outcome: &'static str) {
    log.attempts.push(AttemptRecord {
        pool: target.pool.name.clone(),
        endpoint: target.addr().to_owned(),
        status,
        outcome,
    });
}
