//! The client's response header of an inspected request, built from the served attempt's
//! (for the relay, and for each follower of a coalesced call).

use crate::proxy::ctx::RequestCtx;
use pingora_http::ResponseHeader;

/// sluice's request id on every response.
const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-sluice-request-id");

/// Hop-by-hop response headers (RFC 9110 section 7.6.1), never relayed: the client
/// connection's own are set by Pingora.
const HOP_BY_HOP: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "trailer",
];

/// Whether the upstream answers with an event stream (its `content-type`).
pub(in crate::proxy) fn is_sse(up: &ResponseHeader) -> bool {
    up.headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(crate::usage::is_stream_content_type)
}

/// One client's response header: `parts` ([`downstream_parts`] of the upstream's header) with
/// the client's own headers: the cache outcome (`x-sluice-cache`), its request id and its
/// tenant's `x-ratelimit-*` values.
pub(in crate::proxy) fn client_header(
    mut parts: http::response::Parts,
    ctx: &RequestCtx,
) -> Box<ResponseHeader> {
    if let Some(outcome) = ctx.cache {
        parts.headers.insert(
            crate::proxy::cache::HEADER,
            http::HeaderValue::from_static(outcome.as_str()),
        );
    }
    if let Ok(id) = http::HeaderValue::from_str(&ctx.request_id) {
        parts.headers.insert(REQUEST_ID, id);
    }
    crate::proxy::respond::rate_limit_headers_map(&mut parts.headers, ctx);
    Box::new(ResponseHeader::from(parts))
}

/// The client's response header (as `http` parts) from the upstream's: its headers minus
/// hop-by-hop ones (and `content-length` for a stream, which may change length: a hidden usage
/// chunk, a partial event dropped, an error event appended), HTTP/1.1, and a body that has neither
/// `content-length` nor `transfer-encoding` (close-delimited, an HTTP/2 upstream, or a stream)
/// sent chunked so the client connection can be kept alive, as Pingora's own proxy path does.
/// 204 and 304 carry no body. Built without a case map (header names go out lower-case, which
/// HTTP allows: RFC 9110 section 5.1), so sluice's own headers are inserted straight into the
/// map instead of through Pingora's name parse and case map on every response.
pub(in crate::proxy) fn downstream_parts(
    up: &ResponseHeader,
    is_sse: bool,
) -> http::response::Parts {
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = up.status;
    parts.version = http::Version::HTTP_11;
    let headers = &mut parts.headers;
    headers.reserve(up.headers.len() + 8);
    for (name, value) in &up.headers {
        if HOP_BY_HOP.contains(&name.as_str()) || (is_sse && name == http::header::CONTENT_LENGTH) {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    let no_body = matches!(up.status.as_u16(), 204 | 304);
    let framed = headers.contains_key(http::header::CONTENT_LENGTH)
        || headers.contains_key(http::header::TRANSFER_ENCODING);
    if !no_body && !framed {
        headers.insert(
            http::header::TRANSFER_ENCODING,
            http::HeaderValue::from_static("chunked"),
        );
    }
    parts
}
