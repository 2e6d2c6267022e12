//! Pipeline stage 2c (inspected requests on a route with `cache`, after `reuse`, before
//! `limit`): the response cache's decision, `hit` / `miss` / `bypass`, and the answer of a
//! hit, written without any upstream attempt.
//!
//! - Cacheable: the client asked for determinism (`temperature: 0` or a `seed`), or opted in
//!   (`x-sluice-cache: on`), or the route caches `when: always`. Otherwise: `bypass`, nothing
//!   stored.
//! - `cache-control: no-cache` (or `x-sluice-cache: off`): `bypass` the lookup; the fresh
//!   answer still replaces the entry unless the client also said `no-store` (`off` does).
//! - A hit is answered in the form the client asked (the stream flag is part of the key): the
//!   stored JSON, or the stored stream replayed as whole events; with a fresh response id and
//!   creation time ([`crate::cache::replay`]), and the usage chunk shown or hidden by the same
//!   rule as a live stream (hidden when sluice added `stream_options.include_usage`).
//! - `cache-control: max-age=N` from the client: a stored answer more than `N` seconds old is
//!   not used (`miss`; the fresh answer replaces it). A hit says its age in `age` (seconds
//!   since the answer was stored, RFC 9111 section 5.1).
//! - A miss's answer is recorded to be stored unless the memory tier is full and the key
//!   never missed before ([`Store::admits`]: a one-off request is not kept once the tier is
//!   full; its second miss is).
//! - A hit spends no tokens and no budget: it is looked up before token/budget admission, and
//!   counts only against the tenant's request limits (`hits_count_toward_limits`).

use super::ctx::{Delivered, RequestCtx};
use super::downstream::Downstream;
use crate::cache::record::Recorder;
use crate::cache::{replay, Entry, Outcome, Store};
use crate::config::cache::CacheWhen;
use crate::limits::budget;
use crate::metrics;
use crate::usage::ApiKind;
use bytes::Bytes;
use pingora_http::ResponseHeader;
use std::sync::Arc;
use std::time::SystemTime;

/// The response header (and client request header) naming the cache outcome.
pub const HEADER: http::HeaderName = http::HeaderName::from_static("x-sluice-cache");

/// What the cache stage decided.
pub enum Lookup {
    /// Answer from this entry.
    Hit(Arc<Entry>),
    /// Ask the upstream; the recorder (when the answer may be stored) goes to the relay.
    Upstream(Option<Recorder>),
}

/// Decide for `ctx`'s request (its route's `cache`, its `reuse` key and intent) and look it
/// up in `store`. Sets `ctx.cache` and counts `sluice_cache_requests_total`. Routes without
/// `cache` get `Upstream(None)` and no outcome.
pub async fn lookup(store: &Arc<Store>, ctx: &mut RequestCtx) -> Lookup {
    let Some(snapshot) = ctx.snapshot.clone() else {
        return Lookup::Upstream(None);
    };
    let Some(route) = ctx.caller.route.and_then(|i| snapshot.routes.get(i)) else {
        return Lookup::Upstream(None);
    };
    let Some(conf) = route.cache.as_ref() else {
        return Lookup::Upstream(None);
    };
    let (mut outcome, look, keep) = match (&ctx.reuse, ctx.caller.api) {
        (Some(r), Some(_)) => {
            let i = r.intent;
            let cacheable = i.deterministic || i.opted_in || conf.when == CacheWhen::Always;
            if !cacheable || i.no_cache {
                (Outcome::Bypass, false, cacheable && !i.no_store)
            } else {
                (Outcome::Miss, true, !i.no_store)
            }
        }
        _ => (Outcome::Bypass, false, false),
    };
    let mut found = None;
    // The key missed outright (no entry at all, not even one too old for `max-age`): only
    // then may a full tier's doorkeeper turn the answer away.
    let mut unknown = false;
    if let (true, Some(r)) = (look, &ctx.reuse) {
        let held = store.get(&r.key, conf.store).await;
        unknown = held.is_none();
        found = held.filter(|e| young_enough(e, r.intent.max_age_s, SystemTime::now()));
        if found.is_some() {
            outcome = Outcome::Hit;
        }
    }
    ctx.cache = Some(outcome);
    metrics::CACHE_REQUESTS
        .with_label_values(&[&route.name, outcome.as_str()])
        .inc();
    if let Some(entry) = found {
        return Lookup::Hit(entry);
    }
    let recorder = match (keep, &ctx.reuse, ctx.caller.api) {
        (true, Some(r), Some(api)) if !unknown || store.admits(&r.key, conf.store) => {
            Some(Recorder::new(
                store.clone(),
                r.key,
                conf.ttl,
                conf.store,
                route.name.clone(),
                api,
                snapshot.accounting,
            ))
        }
        _ => None,
    };
    Lookup::Upstream(recorder)
}

/// Whether `entry` may answer a client that takes nothing older than `max_age_s` seconds
/// (`cache-control: max-age`, RFC 9111 section 5.2.1.1: a stored response whose age is
/// greater than that is not used; its age is counted in whole seconds, as the `age` header
/// says it). No `max-age`: any live entry.
fn young_enough(entry: &Entry, max_age_s: Option<u64>, now: SystemTime) -> bool {
    max_age_s.is_none_or(|max| entry.age(now).as_secs() <= max)
}

/// A request on a caching route that sluice does not inspect (passthrough: not JSON, or not an
/// API call) is never cached: `bypass`.
pub fn passthrough(route: &crate::config::Route, ctx: &mut RequestCtx) {
    if route.cache.is_some() {
        ctx.cache = Some(Outcome::Bypass);
        metrics::CACHE_REQUESTS
            .with_label_values(&[&route.name, Outcome::Bypass.as_str()])
            .inc();
    }
}

/// Whether a hit on `ctx`'s route counts against the tenant's request limits.
pub fn hits_count_toward_limits(ctx: &RequestCtx) -> bool {
    ctx.snapshot
        .as_ref()
        .zip(ctx.caller.route)
        .and_then(|(s, i)| {
            s.routes
                .get(i)?
                .cache
                .as_ref()
                .map(|c| c.hits_count_toward_limits)
        })
        .unwrap_or(true)
}

/// Answer `ctx`'s request from `entry`. Never fails: returns what the client got. Counts the
/// tokens and USD the hit saved (`sluice_cache_saved_*`).
pub async fn serve<D: Downstream>(session: &mut D, ctx: &RequestCtx, entry: &Entry) -> Delivered {
    let mut d = Delivered {
        status: 200,
        ..Delivered::default()
    };
    let body = replay_body(ctx, entry);
    let mut parts = http::Response::new(()).into_parts().0;
    parts.version = http::Version::HTTP_11;
    let h = &mut parts.headers;
    if let Ok(v) = http::HeaderValue::from_str(&entry.content_type) {
        h.insert(http::header::CONTENT_TYPE, v);
    }
    h.insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from(body.len()),
    );
    if let Ok(id) = http::HeaderValue::from_str(&ctx.request_id) {
        h.insert(
            http::HeaderName::from_static("x-sluice-request-id"),
            id.clone(),
        );
        h.insert(
            http::HeaderName::from_static(ctx.caller.style.request_id_header()),
            id,
        );
    }
    h.insert(HEADER, http::HeaderValue::from_static("hit"));
    // A cache MUST send `age` with a stored response it serves (RFC 9111 sections 4 and 5.1).
    h.insert(
        http::header::AGE,
        http::HeaderValue::from(entry.age(SystemTime::now()).as_secs()),
    );
    super::respond::rate_limit_headers_map(h, ctx);
    let header = Box::new(ResponseHeader::from(parts));
    if session.write_header(header).await.is_err() {
        d.client_disconnected = true;
        return d;
    }
    d.ttft = Some(ctx.start.elapsed());
    // The upstream call is saved whether or not the client reads the answer to its end; and
    // counted before the body goes out, so a client that reads the metrics once it has the
    // answer sees the hit counted.
    count_saved(ctx, entry);
    if session.write_body(body, true).await.is_err() {
        d.client_disconnected = true;
        return d;
    }
    d.completed = true;
    d
}

/// The entry's body made fresh (see [`replay::for_client`]).
fn replay_body(ctx: &RequestCtx, entry: &Entry) -> Bytes {
    let api = ctx.caller.api.unwrap_or(ApiKind::OpenAiChat);
    let max = ctx
        .snapshot
        .as_ref()
        .map_or(usize::MAX, |s| s.accounting.max_sse_event_bytes);
    replay::for_client(entry, api, ctx.fields().injected_include_usage, max)
}

/// `sluice_cache_saved_tokens_total` and `sluice_cache_saved_usd_total` for one hit.
fn count_saved(ctx: &RequestCtx, entry: &Entry) {
    let route = ctx.route_name();
    let u = &entry.usage;
    for (kind, n) in [
        ("prompt", u.prompt_tokens),
        ("completion", u.completion_tokens),
    ] {
        metrics::CACHE_SAVED_TOKENS
            .with_label_values(&[route, kind])
            .inc_by(n);
    }
    let price = ctx
        .snapshot
        .as_ref()
        .zip(ctx.model())
        .and_then(|(s, m)| s.model_info(m)?.price);
    if let Some(price) = price {
        let anthropic = ctx.caller.api == Some(ApiKind::AnthropicMessages);
        metrics::CACHE_SAVED_USD
            .with_label_values(&[route])
            .inc_by(budget::cost_usd(u, &price, anthropic));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn max_age_counts_whole_seconds_of_age() {
        let entry = Entry {
            sse: false,
            content_type: "application/json".to_owned(),
            body: Bytes::from_static(b"{}"),
            id: None,
            usage: Default::default(),
            stored_at_ms: 10_000,
        };
        let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
        assert!(young_enough(&entry, None, at(1_000_000)));
        // 0.9 s old is age 0: what `max-age=0` takes.
        assert!(young_enough(&entry, Some(0), at(10_900)));
        assert!(!young_enough(&entry, Some(0), at(11_000)));
        assert!(young_enough(&entry, Some(5), at(15_999)));
        assert!(!young_enough(&entry, Some(5), at(16_000)));
    }
}
