//! Passthrough requests (not inspected) on Pingora's own proxy path (upstream_peer,
//! upstream_request_filter): where the request goes and what the upstream sees: the client's
//! credentials stripped, the pool endpoint's key injected in the provider's style, the path
//! mapped, `Host` set. Inspected requests build theirs in [`super::attempt`].

use super::ctx::RequestCtx;
use crate::config::{Endpoint, Pool};
use crate::provider::{provider, CLIENT_CREDENTIAL_HEADERS};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, OkOrErr, OrErr, Result};
use pingora_http::RequestHeader;
use std::sync::Arc;

/// The passthrough target: pool, endpoint index, key index.
fn target(ctx: &RequestCtx) -> Option<(&Arc<Pool>, usize, usize)> {
    let key = ctx.passthrough.as_ref()?.key;
    let (pool, endpoint) = ctx.upstream.last.as_ref()?;
    Some((pool, *endpoint, key))
}

fn endpoint(pool: &Pool, idx: usize) -> Result<&Endpoint> {
    pool.endpoints
        .get(idx)
        .or_err(ErrorType::InternalError, "endpoint index out of range")
}

/// upstream_peer: the endpoint's address (resolved asynchronously: Pingora's `HttpPeer::new`
/// would resolve blocking and panic on failure) with the pool's timeouts.
pub async fn peer(ctx: &RequestCtx) -> Result<Box<HttpPeer>> {
    let (pool, idx, _) = target(ctx).or_err(ErrorType::InternalError, "no upstream chosen")?;
    let ep = endpoint(pool, idx)?;
    let addr = tokio::net::lookup_host(ep.addr.as_str())
        .await
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| {
            Error::explain(ErrorType::ConnectNoRoute, "upstream name did not resolve")
        })?;
    let mut peer = HttpPeer::new(addr, ep.tls, ep.host.clone());
    let t = pool.timeouts;
    peer.options.connection_timeout = Some(t.connect);
    peer.options.total_connection_timeout = Some(t.connect);
    // One read timeout covers the wait for the header and each body read.
    peer.options.read_timeout = Some(t.ttfb.max(t.idle));
    peer.options.write_timeout = Some(t.idle);
    peer.options.idle_timeout = Some(t.pool_idle);
    Ok(Box::new(peer))
}

/// upstream_request_filter: credentials, path, host, encoding; with tracing on, the
/// attempt's span started and its `traceparent` sent in place of the client's.
pub fn rewrite_request(req: &mut RequestHeader, ctx: &mut RequestCtx) -> Result<()> {
    let (pool, idx, key) = target(ctx).or_err(ErrorType::InternalError, "no upstream chosen")?;
    let ep = endpoint(pool, idx)?;
    let p = provider(pool.provider);
    for h in CLIENT_CREDENTIAL_HEADERS {
        req.remove_header(h);
    }
    let key = ep
        .keys
        .get(key)
        .or_err(ErrorType::InternalError, "endpoint has no such key")?;
    let pq = req
        .uri
        .path_and_query()
        .map_or_else(|| req.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    // A model in the path (Gemini `/models/{model}:{method}`) is mapped as an inspected
    // request's would be (`model_map`), when the mapped id may go in a URL.
    let model = crate::provider::gemini_path(req.uri.path())
        .map(|(m, _)| pool.upstream_model(m).to_owned())
        .filter(|m| p.accepts_model(m));
    let path = p.upstream_path(
        &ep.base_path,
        &pq,
        model.as_deref(),
        pool.api_version.as_deref(),
    );
    if path != pq {
        let uri = http::Uri::try_from(path).or_err(
            ErrorType::InternalError,
            "rewritten upstream path is invalid",
        )?;
        req.set_uri(uri);
    }
    let default_port = if ep.tls { ":443" } else { ":80" };
    let host = ep.addr.strip_suffix(default_port).unwrap_or(&ep.addr);
    req.insert_header(http::header::HOST, host)?;
    let span = ctx
        .trace
        .as_ref()
        .and_then(|t| t.attempt(pool, Some(ep), model.as_deref(), ctx.caller.api));
    if let Some(span) = &span {
        req.insert_header("traceparent", span.traceparent())?;
    }
    // A streamed-through body is not hashed: a signing provider signs `UNSIGNED-PAYLOAD`.
    p.authorize(req, key.expose(), None, pool.region.as_deref())?;
    if span.is_some() {
        ctx.upstream.served_span = span;
    }
    Ok(())
}
