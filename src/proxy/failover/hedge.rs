//! Hedging (`routes[].hedge`): when the lanes running have delivered no content `after_ms`
//! after failover started (and again every `after_ms`, up to `max` times), another lane starts
//! on the next candidate no lane took. The first lane whose answer is served (a streamed answer
//! once it carries content: [`crate::proxy::commit`]; a plain one at its header) wins; the
//! others are dropped at once, which closes their upstream connections, and their attempts are
//! recorded as `hedge_lost`. A lane that fails leaves the others running; when every lane
//! failed, the request ends as an unhedged one would (the last held answer, or the error).
//!
//! Cost: a lost attempt delivered no content, so what its upstream may bill is the prompt;
//! it is counted (estimated from the request body, as admission estimates it) in
//! `sluice_hedge_cost_tokens_total` and, for priced models, `sluice_hedge_cost_usd_total`.

use super::lane::{self, Lane, LaneEnd};
use super::plan::Plan;
use crate::config::cache::Hedge;
use crate::metrics;
use crate::proxy::ctx::RequestCtx;
use crate::proxy::downstream::Downstream;
use futures_util::stream::{FuturesUnordered, StreamExt};
use pingora_http::{RequestHeader, ResponseHeader};

/// How a race ended: the winning lane's index and answer, or why there was none.
pub(super) enum Raced {
    /// Lane `.0` was served.
    Won(usize, Box<super::Served>),
    /// The client left.
    ClientGone,
    /// Every lane failed.
    Failed,
}

/// A lane's view of the client: the race watches the real client, so a lane never sees it
/// leave (the race drops every lane when it does) and never writes to it.
struct Detached<'a>(&'a RequestHeader);

impl Downstream for Detached<'_> {
    fn req_header(&self) -> &RequestHeader {
        self.0
    }
    async fn write_header(&mut self, _: Box<ResponseHeader>) -> pingora_error::Result<()> {
        Err(pingora_error::Error::new_str(
            "a hedged lane does not write",
        ))
    }
    async fn write_body(&mut self, _: bytes::Bytes, _: bool) -> pingora_error::Result<()> {
        Err(pingora_error::Error::new_str(
            "a hedged lane does not write",
        ))
    }
    async fn gone(&mut self) {
        std::future::pending::<()>().await;
    }
    fn close_after(&mut self) {}
}

/// Race lanes over `plan`'s candidates (see the module doc); `lanes` has `hedge.max + 1`
/// entries, filled in order as lanes start.
pub(super) async fn race<D: Downstream>(
    down: &mut D,
    ctx: &RequestCtx,
    plan: &Plan<'_>,
    hedge: Hedge,
    lanes: &mut [Lane],
) -> Raced {
    let route = &plan.route.name;
    let mut running = FuturesUnordered::new();
    let mut slots = lanes.iter_mut().enumerate();
    if let Some((i, lane)) = slots.next() {
        running.push(run_lane(i, ctx, plan, lane));
    }
    let mut next_hedge = tokio::time::Instant::now() + hedge.after;
    let mut hedges = 0u32;
    let result = loop {
        tokio::select! {
            // A lane that delivered and the client leaving are seen before the timer: a hedge
            // never starts in the wake-up that served the request.
            biased;
            () = down.gone() => break Raced::ClientGone,
            ended = running.next() => match ended {
                Some((i, LaneEnd::Served(s))) => break Raced::Won(i, Box::new(s)),
                Some((_, LaneEnd::ClientGone | LaneEnd::Failed)) => {
                    if running.is_empty() {
                        break Raced::Failed;
                    }
                }
                None => break Raced::Failed,
            },
            () = tokio::time::sleep_until(next_hedge), if hedges < hedge.max => {
                hedges += 1;
                next_hedge += hedge.after;
                if plan.has_candidates() && plan.attempt_left() {
                    if let Some((i, lane)) = slots.next() {
                        metrics::HEDGES.with_label_values(&[route]).inc();
                        running.push(run_lane(i, ctx, plan, lane));
                    }
                }
            }
        }
    };
    // Dropping the lanes still running cancels their attempts (closing their connections).
    drop(running);
    let winner = match &result {
        Raced::Won(i, _) => Some(*i),
        _ => None,
    };
    if let (Some(w), true) = (winner, hedges > 0) {
        let lane = if w == 0 { "first" } else { "hedge" };
        metrics::HEDGE_WINS.with_label_values(&[route, lane]).inc();
    }
    let outcome = if matches!(result, Raced::ClientGone) {
        "client_gone"
    } else {
        "hedge_lost"
    };
    let mut prompt = None;
    for (i, lane) in lanes.iter_mut().enumerate() {
        let Some(mut f) = lane.in_flight.take() else {
            continue;
        };
        super::record(&mut lane.log, &f.target, f.status, outcome);
        if let Some(span) = f.span.take() {
            span.end(f.status, outcome);
        }
        if winner.is_none_or(|w| w == i) {
            continue;
        }
        // Beaten after `after_ms` without content: a failure for its breaker (else an
        // endpoint that always stalls would never be skipped, and every request would pay
        // `after_ms` and a second prompt). One beaten sooner is neutral.
        if f.sent_at.elapsed() >= hedge.after && (f.status == 0 || (200..300).contains(&f.status)) {
            if let Some(ep) = f.target.endpoint() {
                ep.state
                    .breaker
                    .record(crate::balance::breaker::Outcome::Failure);
            }
        }
        // What its upstream may bill: the prompt of a request it received and was answering
        // (before its header, or a 2xx without content yet); an error answer bills nothing.
        if f.status == 0 || (200..300).contains(&f.status) {
            let tokens = *prompt.get_or_insert_with(|| prompt_tokens(ctx));
            hedge_cost(ctx, &f.target.pool.name, tokens);
        }
    }
    result
}

/// Lane `i` of the race, detached from the client.
async fn run_lane(
    i: usize,
    ctx: &RequestCtx,
    plan: &Plan<'_>,
    lane: &mut Lane,
) -> (usize, LaneEnd) {
    let mut detached = Detached(&plan.base);
    (i, lane::run(&mut detached, ctx, plan, lane).await)
}

/// The request's prompt tokens, estimated as admission estimates them (0 when not inspected).
fn prompt_tokens(ctx: &RequestCtx) -> u64 {
    match (ctx.caller.api, ctx.body()) {
        (Some(api), Some(body)) => {
            crate::proxy::limit::prompt_estimate(api, ctx.model().unwrap_or(""), body)
        }
        _ => 0,
    }
}

/// Count `prompt` tokens a lost hedge's upstream may bill (its attempt delivered no content).
fn hedge_cost(ctx: &RequestCtx, pool: &str, prompt: u64) {
    let route = ctx.route_name();
    let model = ctx.model().unwrap_or("");
    metrics::HEDGE_COST_TOKENS
        .with_label_values(&[route, pool])
        .inc_by(prompt);
    let price = ctx
        .snapshot
        .as_ref()
        .and_then(|s| s.model_info(model))
        .and_then(|m| m.price);
    if let Some(price) = price {
        metrics::HEDGE_COST_USD
            .with_label_values(&[route, pool])
            .inc_by(prompt as f64 * price.input * 1e-6);
    }
}
