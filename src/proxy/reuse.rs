//! Pipeline stage 2b (inspected requests on a route with `cache` or `coalesce`): the request's
//! [`Key`] and the client's cache [`Intent`], read once for the cache and coalescing stages.

use super::ctx::RequestCtx;
use crate::cache::canonical;
use crate::cache::key::{self, Intent, Key, Scope};
use crate::config::cache::CacheScope;
use crate::config::Route;
use pingora_http::RequestHeader;

/// A request's identity for response reuse.
#[derive(Debug, Clone, Copy)]
pub struct Reuse {
    /// SHA-256 of the request in canonical form ([`crate::cache::key`]).
    pub key: Key,
    /// What the client asked of the cache.
    pub intent: Intent,
}

/// The request's [`Reuse`] when its route caches or coalesces and its body is JSON; `None`
/// otherwise (the request is then neither cached nor coalesced).
pub fn of_request(route: &Route, req: &RequestHeader, ctx: &RequestCtx) -> Option<Reuse> {
    if route.cache.is_none() && !route.coalesce {
        return None;
    }
    let body = canonical::of(ctx.body()?).ok()?;
    let tenant = match route.cache.as_ref().map_or(CacheScope::Tenant, |c| c.scope) {
        CacheScope::Tenant => Some(ctx.caller.tenant.as_deref().unwrap_or("")),
        CacheScope::Route => None,
    };
    let pq = req
        .uri
        .path_and_query()
        .map_or_else(|| req.uri.path(), |pq| pq.as_str());
    let key = key::compute(
        Scope {
            route: &route.name,
            tenant,
        },
        req.method.as_str(),
        pq,
        &req.headers,
        &body.text,
        ctx.fields().stream,
    );
    Some(Reuse {
        key,
        intent: Intent::of(&req.headers, body.deterministic),
    })
}
