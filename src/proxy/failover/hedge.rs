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
            () = down.gone() => break Raced::ClientGone,
        }
    };
    // Dropping the lanes still running cancels their attempts (closing their connections).
    drop(running);
    let winner = match &result {
        Raced::Won(i, _) => Some(*i),
        _ => None,
    };
    let outcome = if matches!(result, Raced::ClientGone) {
        "client_gone"
    } else {
        "hedge_lost"
    };
    for (i, lane) in lanes.iter_mut().enumerate() {
        let Some((target, status)) = lane.in_flight.take() else {
            continue;
        };
        super::record(&mut lane.log, &target, status, outcome);
        if winner.is_some_and(|w| w != i) {
            hedge_cost(ctx, &target.pool.name);
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

/// Count the prompt a lost hedge's upstream may bill (its attempt delivered no content).
fn hedge_cost(ctx: &RequestCtx, pool: &str) {
    let route = ctx.route_name();
    let (Some(api), Some(body)) = (ctx.caller.api, ctx.body()) else {
        return;
    };
    let model = ctx.model().unwrap_or("");
    let prompt = crate::proxy::limit::prompt_estimate(api, model, body);
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
