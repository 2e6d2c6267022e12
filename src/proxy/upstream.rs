//! Pipeline stage 3 (upstream_peer, upstream_request_filter): where a request goes and what
//! the upstream sees: the client's credentials stripped, the pool endpoint's key injected in
//! the provider's style, the path mapped, `Host` set. Runs in subrequests (inspected requests)
//! and in the parent for passthrough requests.

use super::ctx::{AttemptSpec, Phase, RequestCtx};
use crate::config::{Endpoint, Pool};
use crate::provider::{provider, CLIENT_CREDENTIAL_HEADERS};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, OkOrErr, OrErr, Result};
use pingora_http::RequestHeader;
use pingora_proxy::Session;
use std::sync::Arc;
use std::time::Duration;

/// How long a pooled upstream connection may sit idle before it is closed.
const POOLED_CONNECTION_IDLE: Duration = Duration::from_secs(60);

/// In a subrequest's request_filter: take the attempt spec the parent passed, and make the
/// subrequest's copy of the client header describe the body the parent feeds it (the
/// subrequest re-parses the parent's original header bytes: in pingora-proxy 0.9.1,
/// `subrequest::create_session` starts the child from the parent's raw HTTP/1 header).
pub fn begin_attempt(session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
    let spec = session
        .subrequest_ctx
        .as_ref()
        .and_then(|c| c.user_ctx())
        .and_then(|u| u.downcast_ref::<Arc<AttemptSpec>>())
        .cloned()
        .or_err(
            ErrorType::InternalError,
            "subrequest without an attempt spec",
        )?;
    ctx.phase = Phase::Attempt;
    ctx.request_id.clone_from(&spec.request_id);
    let req = session.req_header_mut();
    req.set_uri(spec.uri.clone());
    req.insert_header(http::header::CONTENT_LENGTH, spec.body_len)?;
    req.remove_header(&http::header::TRANSFER_ENCODING);
    req.remove_header(&http::header::EXPECT);
    ctx.attempt = Some(spec);
    Ok(())
}

/// The (pool, endpoint index, key index, model) this hook serves.
fn target(ctx: &RequestCtx) -> Option<(&Arc<Pool>, usize, usize, Option<&str>)> {
    match (&ctx.attempt, ctx.phase) {
        (Some(spec), Phase::Attempt) => {
            Some((&spec.pool, spec.endpoint, spec.key, spec.model.as_deref()))
        }
        (_, Phase::Passthrough) => ctx.pool.as_ref().map(|p| (p, ctx.endpoint, ctx.key, None)),
        _ => None,
    }
}

fn endpoint(pool: &Pool, idx: usize) -> Result<&Endpoint> {
    pool.endpoints
        .get(idx)
        .or_err(ErrorType::InternalError, "endpoint index out of range")
}

/// upstream_peer: the endpoint's address (resolved asynchronously: Pingora's `HttpPeer::new`
/// would resolve blocking and panic on failure) with the pool's timeouts.
pub async fn peer(ctx: &RequestCtx) -> Result<Box<HttpPeer>> {
    let (pool, idx, _, _) = target(ctx).or_err(ErrorType::InternalError, "no upstream chosen")?;
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
    // The parent enforces TTFB and idle separately; this is the backstop for both.
    peer.options.read_timeout = Some(t.ttfb.max(t.idle));
    peer.options.write_timeout = Some(t.idle);
    peer.options.idle_timeout = Some(POOLED_CONNECTION_IDLE);
    Ok(Box::new(peer))
}

/// upstream_request_filter: credentials, path, host, encoding.
pub fn rewrite_request(req: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
    let (pool, idx, key, model) =
        target(ctx).or_err(ErrorType::InternalError, "no upstream chosen")?;
    let ep = endpoint(pool, idx)?;
    let p = provider(pool.provider);
    if model.is_some_and(|m| !p.accepts_model(m)) {
        // Unreachable: the parent refuses such a model before spawning the attempt. Kept so
        // that a body value can never be spliced into a URL unchecked.
        return Error::e_explain(ErrorType::InternalError, "model not valid in upstream URL");
    }
    for h in CLIENT_CREDENTIAL_HEADERS {
        req.remove_header(h);
    }
    let key = ep
        .keys
        .get(key)
        .or_err(ErrorType::InternalError, "endpoint has no such key")?;
    p.set_auth(req, key.expose())?;
    let pq = req
        .uri
        .path_and_query()
        .map_or_else(|| req.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let path = p.upstream_path(&ep.base_path, &pq, model, pool.api_version.as_deref());
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
    if ctx.phase == Phase::Attempt {
        // Usage is parsed from the bytes: ask for an identity-encoded response.
        req.remove_header(&http::header::ACCEPT_ENCODING);
        if let Some(spec) = &ctx.attempt {
            // Connected; the request goes out now: the parent's TTFB clock starts.
            spec.sent_ms.store(
                crate::balance::now_ms(),
                std::sync::atomic::Ordering::Release,
            );
        }
    }
    Ok(())
}
