//! sluice's own answers: a [`SluiceError`] written in the route's native error shape (OpenAI
//! or Anthropic JSON) with the request id header the SDK reads.

use super::ctx::RequestCtx;
use crate::error::SluiceError;
use crate::metrics;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// Write `err` as the whole response (when nothing was sent yet) and record it in `ctx`.
/// After a response header went out (a passthrough answer cut mid-body), nothing is written
/// and the status recorded stays the one the client got: its access line says that status
/// and the error.
pub async fn send_error(session: &mut Session, ctx: &mut RequestCtx, err: SluiceError) {
    metrics::ERRORS.with_label_values(&[err.label()]).inc();
    if session.response_written().is_none() {
        let status = err.status();
        ctx.delivered.status = status;
        let body = err.body(ctx.caller.style);
        if let Ok(header) = error_header(status, body.len(), ctx, Some(err.headers())) {
            let sent = session.write_response_header(Box::new(header), false).await;
            if sent.is_err() || session.write_response_body(Some(body), true).await.is_err() {
                ctx.delivered.client_disconnected = true;
            }
        }
    }
    ctx.delivered.error = Some(err);
}

fn error_header(
    status: u16,
    len: usize,
    ctx: &RequestCtx,
    err_headers: Option<Vec<(&'static str, String)>>,
) -> pingora_error::Result<ResponseHeader> {
    let mut h = ResponseHeader::build(status, Some(5))?;
    h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    h.insert_header(http::header::CONTENT_LENGTH, len)?;
    h.insert_header(
        ctx.caller.style.request_id_header(),
        ctx.request_id.as_str(),
    )?;
    h.insert_header("x-sluice-request-id", ctx.request_id.as_str())?;
    if let Some((name, value)) = ctx.caller.style.error_type_header(status) {
        h.insert_header(name, value)?;
    }
    if let Some(outcome) = ctx.cache {
        h.insert_header(super::cache::HEADER, outcome.as_str())?;
    }
    if let Some(err) = &err_headers {
        for (name, value) in err {
            h.insert_header(*name, value.as_str())?;
        }
    }
    Ok(h)
}

/// `x-ratelimit-*` on a response of an admitted request whose tenant has rate limits, like
/// OpenAI's (limit, remaining, reset per requests and tokens).
pub fn rate_limit_headers(h: &mut ResponseHeader, ctx: &RequestCtx) -> pingora_error::Result<()> {
    match &ctx.admission {
        Some(adm) => adm.headers.write_to(h),
        None => Ok(()),
    }
}

/// [`rate_limit_headers`] into a `HeaderMap` built without Pingora's case map (the relay's).
pub fn rate_limit_headers_map(headers: &mut http::HeaderMap, ctx: &RequestCtx) {
    if let Some(adm) = &ctx.admission {
        adm.headers.write_to_map(headers);
    }
}
