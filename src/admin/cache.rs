//! The response cache's purge endpoints on the admin listener, served when `cache.admin_purge`
//! is on (404 otherwise):
//!
//! - `DELETE /cache/entries/{input_hash}`: remove one entry, named by the `input_hash` of an
//!   access log line (64 hex digits, the entry's key), from this process's memory tier, from
//!   the Redis tier (`DEL`) and, through the Redis tier's purge channel
//!   ([`crate::cache::purge_channel`]), from the memory tier of every replica subscribed to it.
//!   200 with `{"input_hash", "memory", "redis"}`, plus `"replicas_told": n` when Redis
//!   answered (the subscribers that got the purge, this process included): `memory` is
//!   `removed` or `absent`; `redis` is `removed`, `absent`, `off` (no Redis tier) or `failed`
//!   (Redis failed or timed out: the entry may still be there, and a replica may find it).
//!   400 for a hash that is not 64 hex digits.
//! - `DELETE /cache/entries`: empty this process's memory tier. 200 with
//!   `{"memory_entries_removed": n}`. The Redis tier is left as it is: it is shared by every
//!   replica, and its entries expire with their TTL (or are removed one by one as above).
//!
//! With `cache.admin_purge_token`, both ask for `Authorization: Bearer <token>` (RFC 6750
//! section 2.1): without it, or with another token, 401 with `WWW-Authenticate: Bearer` (section
//! 3), and nothing is purged. The token is compared by its SHA-256, never kept.
//!
//! Another method on these paths: 405 with `Allow: DELETE`. Each replica has its own memory
//! tier: without a Redis tier (or for a replica not subscribed at the time), an entry another
//! replica holds in memory is served there until its TTL or a purge on that replica's admin
//! listener. An answer being recorded at the time of a purge is stored when it completes.

use super::reply;
use crate::cache::{Key, Store};
use http::{Method, Response};
use pingora_http::RequestHeader;
use sha2::{Digest, Sha256};

/// Path of the purge endpoints; an entry's path adds `/{input_hash}`.
pub const ENTRIES_PATH: &str = "/cache/entries";

/// Serve `req` against `store` when its path is one of the purge endpoints (under
/// [`ENTRIES_PATH`]); `None` otherwise. `token`: the SHA-256 of the bearer token asked for
/// (`cache.admin_purge_token`), if any.
pub async fn serve(
    store: &Store,
    req: &RequestHeader,
    token: Option<&[u8; 32]>,
) -> Option<Response<Vec<u8>>> {
    let (method, path) = (&req.method, req.uri.path());
    let rest = path.strip_prefix(ENTRIES_PATH)?;
    // `/cache/entries/` with nothing after it is a missing hash (400), never a purge of all.
    let hash = match rest {
        "" => None,
        _ => Some(rest.strip_prefix('/')?),
    };
    if let Some(want) = token {
        let presented = req
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| bearer(v.as_bytes()));
        if presented.is_none_or(|t| Sha256::digest(t).as_slice() != want.as_slice()) {
            return Some(refusal(
                401,
                "a valid bearer token is required\n",
                http::header::WWW_AUTHENTICATE,
                "Bearer",
            ));
        }
    }
    if method != Method::DELETE {
        return Some(refusal(
            405,
            "method not allowed: use DELETE\n",
            http::header::ALLOW,
            "DELETE",
        ));
    }
    let Some(hash) = hash else {
        let removed = store.purge_memory();
        tracing::info!(
            memory_entries_removed = removed,
            "cache purge: memory tier emptied"
        );
        let body = serde_json::json!({ "memory_entries_removed": removed });
        return Some(reply(
            200,
            "application/json",
            body.to_string().into_bytes(),
        ));
    };
    let Some(key) = (hash.len() == 64).then(|| Key::from_hex(hash)).flatten() else {
        return Some(reply(
            400,
            "text/plain",
            b"input_hash: expected 64 hex digits (the access log's input_hash)\n".to_vec(),
        ));
    };
    let purged = store.purge(&key).await;
    let memory = if purged.memory { "removed" } else { "absent" };
    let hex = key.hex();
    tracing::info!(
        input_hash = %hex,
        memory,
        redis = purged.redis.as_str(),
        replicas_told = purged.replicas_told,
        "cache purge: entry"
    );
    let mut body = serde_json::json!({
        "input_hash": hex,
        "memory": memory,
        "redis": purged.redis.as_str(),
    });
    if let Some(told) = purged.replicas_told {
        body["replicas_told"] = told.into();
    }
    Some(reply(
        200,
        "application/json",
        body.to_string().into_bytes(),
    ))
}

/// A plain-text refusal with `status`, `text` and the header that says what to do instead.
fn refusal(
    status: u16,
    text: &str,
    name: http::HeaderName,
    value: &'static str,
) -> Response<Vec<u8>> {
    let mut resp = reply(status, "text/plain", text.as_bytes().to_vec());
    resp.headers_mut()
        .insert(name, http::HeaderValue::from_static(value));
    resp
}

/// The token of an `Authorization: Bearer <token>` value (the scheme in any case, RFC 6750
/// section 2.1 and RFC 9110 section 11.1); `None` for another scheme or an empty token.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at_checked(7)?;
    let token = token.trim_ascii();
    (scheme.eq_ignore_ascii_case(b"bearer ") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Entry;
    use crate::config::cache::{CacheSettings, CacheStoreKind};
    use crate::usage::Usage;
    use bytes::Bytes;
    use serde_json::Value;
    use std::time::Duration;

    fn store() -> Store {
        Store::new(&CacheSettings {
            max_bytes: 1 << 20,
            max_entry_bytes: 1 << 16,
            max_flight_bytes: 1 << 16,
            max_flight_lag: std::time::Duration::from_secs(1),
            max_flights_total_bytes: 1 << 20,
            admission_keys: 65536,
            admin_purge: true,
            admin_purge_token_sha256: None,
            redis: None,
        })
    }

    fn put(store: &Store, key: Key) {
        let entry = Entry {
            sse: false,
            content_type: "application/json".to_owned(),
            body: Bytes::from_static(b"{\"id\":\"x\"}"),
            id: Some("x".to_owned()),
            usage: Usage::default(),
            stored_at_ms: 0,
        };
        store.put(key, entry, Duration::from_secs(60), CacheStoreKind::Memory);
    }

    fn req(method: Method, path: &str, authorization: Option<&str>) -> RequestHeader {
        let mut r = RequestHeader::build(method, path.as_bytes(), None).unwrap();
        if let Some(a) = authorization {
            r.insert_header(http::header::AUTHORIZATION, a).unwrap();
        }
        r
    }

    fn json(resp: &Response<Vec<u8>>) -> Value {
        serde_json::from_slice(resp.body()).unwrap_or_default()
    }

    #[tokio::test]
    async fn one_entry_is_purged_by_its_input_hash_and_only_that_one() {
        let s = store();
        let (a, b) = (Key([1; 32]), Key([2; 32]));
        put(&s, a);
        put(&s, b);
        // Upper-case hex names the same key.
        let path = format!("{ENTRIES_PATH}/{}", a.hex().to_uppercase());
        let resp = serve(&s, &req(Method::DELETE, &path, None), None)
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body = json(&resp);
        assert_eq!(body["input_hash"], a.hex());
        assert_eq!(
            (body["memory"].as_str(), body["redis"].as_str()),
            (Some("removed"), Some("off"))
        );
        assert!(s.get_memory(&a).is_none());
        assert!(s.get_memory(&b).is_some(), "another entry stays");
        // Again: nothing left to remove.
        let again = serve(&s, &req(Method::DELETE, &path, None), None)
            .await
            .unwrap();
        assert_eq!(json(&again)["memory"], "absent");
    }

    #[tokio::test]
    async fn the_memory_tier_is_emptied_whole() {
        let s = store();
        for i in 0..5u8 {
            put(&s, Key([i; 32]));
        }
        let resp = serve(&s, &req(Method::DELETE, ENTRIES_PATH, None), None)
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(json(&resp)["memory_entries_removed"], 5);
        assert_eq!(s.entries(), 0);
        assert_eq!(s.weighted_bytes(), 0);
    }

    #[tokio::test]
    async fn bad_hashes_other_methods_and_other_paths() {
        let s = store();
        put(&s, Key([7; 32]));
        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(66)] {
            let resp = serve(
                &s,
                &req(Method::DELETE, &format!("{ENTRIES_PATH}/{bad}"), None),
                None,
            )
            .await
            .unwrap();
            assert_eq!(resp.status(), 400, "{bad}");
        }
        let get = serve(&s, &req(Method::GET, ENTRIES_PATH, None), None)
            .await
            .unwrap();
        assert_eq!(get.status(), 405);
        assert_eq!(get.headers()[http::header::ALLOW], "DELETE");
        assert!(
            serve(&s, &req(Method::DELETE, "/cache/entriesx", None), None)
                .await
                .is_none()
        );
        assert!(serve(&s, &req(Method::DELETE, "/metrics", None), None)
            .await
            .is_none());
        assert_eq!(s.entries(), 1, "nothing was purged");
    }

    #[tokio::test]
    async fn with_a_token_only_its_bearer_purges() {
        let s = store();
        put(&s, Key([9; 32]));
        let token: [u8; 32] = Sha256::digest(b"purge-secret").into();
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Basic purge-secret"),
            Some("Bearer "),
        ] {
            let resp = serve(&s, &req(Method::DELETE, ENTRIES_PATH, auth), Some(&token))
                .await
                .unwrap();
            assert_eq!(resp.status(), 401, "{auth:?}");
            assert_eq!(resp.headers()[http::header::WWW_AUTHENTICATE], "Bearer");
            assert!(!String::from_utf8_lossy(resp.body()).contains("purge-secret"));
        }
        assert_eq!(s.entries(), 1, "nothing was purged");
        // The scheme in any case.
        let ok = req(Method::DELETE, ENTRIES_PATH, Some("bearer purge-secret"));
        let resp = serve(&s, &ok, Some(&token)).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(s.entries(), 0);
    }
}
