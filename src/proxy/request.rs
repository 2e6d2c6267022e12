//! The parent's request_filter, in pipeline order: snapshot, path, tenant, inspection, route,
//! then either failover and the relay (inspected) or Pingora's own proxy path (passthrough).

use super::ctx::{InspectedRequest, Passthrough, RequestCtx};
use super::{cache, coalesce, failover, identify, inspect, limit, path, relay, reuse};
use crate::cache::Store;
use crate::config::Snapshot;
use crate::error::SluiceError;
use crate::limits::Limiter;
use crate::provider::{provider, ErrorStyle};
use crate::usage::ApiKind;
use pingora_proxy::Session;
use std::sync::Arc;

/// What Pingora should do after request_filter.
pub enum Flow {
    /// The response was written (attempts relayed it).
    Done,
    /// Continue on Pingora's proxy path (upstream_peer etc.) with `ctx.passthrough` set.
    Passthrough,
}

/// Run the parent's request stages. Errors are answered natively by the caller.
pub async fn handle(
    limiter: &Arc<Limiter>,
    store: &Arc<Store>,
    snapshot: Arc<Snapshot>,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<Flow, SluiceError> {
    ctx.snapshot = Some(snapshot.clone());
    let req = session.req_header();
    ctx.caller.style = ErrorStyle::guess(req);
    // Everything below (route, API kind, inspection, the upstream) reads the normalized path.
    path::normalize_request(session.req_header_mut())?;
    let req = session.req_header();
    ctx.caller.style = ErrorStyle::guess(req);
    ctx.caller.tenant = Some(identify::tenant(req, &snapshot.tenants)?);
    let path = req.uri.path().to_owned();
    ctx.caller.api = ApiKind::from_path(&path);

    if inspect::should_inspect(req, &snapshot) {
        let body = inspect::read_body(session, snapshot.max_body_bytes).await?;
        let (mut fields, body) = inspect::inspect(ctx.caller.api, body)?;
        inspect::from_path(&mut fields, &path, ctx.caller.api, &body);
        ctx.inspected = Some(InspectedRequest { fields, body });
        select_route(&snapshot, session, ctx, &path)?;
        let route = ctx.caller.route.and_then(|i| snapshot.routes.get(i));
        if let Some(route) = route {
            ctx.reuse = reuse::of_request(route, session.req_header(), ctx);
        }
        let recorder = match cache::lookup(store, ctx).await {
            cache::Lookup::Hit(entry) => {
                // No tokens, no budget: only the request limits, when the route says so.
                if cache::hits_count_toward_limits(ctx) {
                    limit::admit_requests(limiter, &snapshot, ctx).await?;
                }
                ctx.delivered = cache::serve(session, ctx, &entry).await;
                return Ok(Flow::Done);
            }
            cache::Lookup::Upstream(recorder) => recorder,
        };
        if let Some(r) = ctx.reuse.filter(|_| route.is_some_and(|r| r.coalesce)) {
            // Stages 3 to 5 shared with identical requests in flight (`coalesce`); the
            // leader's answer is stored like any other.
            coalesce::serve(limiter, &snapshot, session, ctx, r.key, recorder).await?;
            return Ok(Flow::Done);
        }
        limit::admit(limiter, &snapshot, ctx).await?;
        match failover::run(session, ctx).await? {
            failover::Ended::Served(served) => {
                ctx.delivered = relay::relay(session, ctx, served, recorder).await;
            }
            failover::Ended::ClientGone => ctx.delivered.client_disconnected = true,
        }
        return Ok(Flow::Done);
    }

    select_route(&snapshot, session, ctx, &path)?;
    let route = ctx
        .caller
        .route
        .and_then(|i| snapshot.routes.get(i))
        .ok_or(SluiceError::Internal)?;
    // A streamed-through body cannot be replayed: one attempt, on the first usable endpoint.
    let (pool, ep, (key, pass)) = route
        .pools
        .iter()
        .find_map(|p| {
            p.order().into_iter().find_map(|i| {
                // The same checks as an inspected request's attempts (cooldown, breaker, key);
                // no model: only model-independent key state applies.
                let key = failover::usable(p, i, None, &mut None).ok()?;
                Some((p.clone(), i, key))
            })
        })
        .ok_or(SluiceError::NoUpstreamAvailable {
            retry_after: None,
            rate_limited: false,
        })?;
    cache::passthrough(route, ctx);
    limit::admit(limiter, &snapshot, ctx).await?;
    ctx.upstream.last = Some((pool, ep));
    ctx.passthrough = Some(Passthrough {
        key,
        breaker_pass: Some(pass),
    });
    Ok(Flow::Passthrough)
}

fn select_route(
    snapshot: &Snapshot,
    session: &Session,
    ctx: &mut RequestCtx,
    path: &str,
) -> Result<(), SluiceError> {
    let req = session.req_header();
    let idx = snapshot
        .routes
        .iter()
        .position(|r| r.matches(path, ctx.model(), req))
        .ok_or_else(|| SluiceError::NoRoute(format!("{} {path}", req.method)))?;
    ctx.caller.route = Some(idx);
    if let Some(pool) = snapshot.routes[idx].pools.first() {
        ctx.caller.style = provider(pool.provider).error_style();
    }
    Ok(())
}
