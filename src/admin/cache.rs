//! The response cache's purge endpoints on the admin listener, served when `cache.admin_purge`
//! is on (404 otherwise):
//!
//! - `DELETE /cache/entries/{input_hash}`: remove one entry, named by the `input_hash` of an
//!   access log line (64 hex digits, the entry's key), from this process's memory tier and from
//!   the Redis tier (`DEL`). 200 with `{"input_hash", "memory", "redis"}`: `memory` is
//!   `removed` or `absent`; `redis` is `removed`, `absent`, `off` (no Redis tier) or `failed`
//!   (Redis failed or timed out: the entry may still be there, and a replica may find it).
//!   400 for a hash that is not 64 hex digits.
//! - `DELETE /cache/entries`: empty this process's memory tier. 200 with
//!   `{"memory_entries_removed": n}`. The Redis tier is left as it is: it is shared by every
//!   replica, and its entries expire with their TTL (or are removed one by one as above).
//!
//! Another method on these paths: 405 with `Allow: DELETE`. Each replica has its own memory
//! tier: an entry another replica holds in memory is served there until its TTL or a purge
//! on that replica's admin listener. An answer being recorded at the time of a purge is
//! stored when it completes.

use super::reply;
use crate::cache::{Key, Store};
use http::{Method, Response};

/// Path of the purge endpoints; an entry's path adds `/{input_hash}`.
pub const ENTRIES_PATH: &str = "/cache/entries";

/// Serve `method` on `path` (under [`ENTRIES_PATH`]) against `store`; `None` when `path` is
/// not one of the purge endpoints.
pub async fn serve(store: &Store, method: &Method, path: &str) -> Option<Response<Vec<u8>>> {
    let rest = path.strip_prefix(ENTRIES_PATH)?;
    // `/cache/entries/` with nothing after it is a missing hash (400), never a purge of all.
    let hash = match rest {
        "" => None,
        _ => Some(rest.strip_prefix('/')?),
    };
    if method != Method::DELETE {
        let mut resp = reply(
            405,
            "text/plain",
            b"method not allowed: use DELETE\n".to_vec(),
        );
        resp.headers_mut().insert(
            http::header::ALLOW,
            http::HeaderValue::from_static("DELETE"),
        );
        return Some(resp);
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
        "cache purge: entry"
    );
    let body = serde_json::json!({
        "input_hash": hex,
        "memory": memory,
        "redis": purged.redis.as_str(),
    });
    Some(reply(
        200,
        "application/json",
        body.to_string().into_bytes(),
    ))
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
            admin_purge: true,
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
        };
        store.put(key, entry, Duration::from_secs(60), CacheStoreKind::Memory);
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
        let resp = serve(&s, &Method::DELETE, &path).await.unwrap();
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
        let again = serve(&s, &Method::DELETE, &path).await.unwrap();
        assert_eq!(json(&again)["memory"], "absent");
    }

    #[tokio::test]
    async fn the_memory_tier_is_emptied_whole() {
        let s = store();
        for i in 0..5u8 {
            put(&s, Key([i; 32]));
        }
        let resp = serve(&s, &Method::DELETE, ENTRIES_PATH).await.unwrap();
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
            let resp = serve(&s, &Method::DELETE, &format!("{ENTRIES_PATH}/{bad}"))
                .await
                .unwrap();
            assert_eq!(resp.status(), 400, "{bad}");
        }
        let get = serve(&s, &Method::GET, ENTRIES_PATH).await.unwrap();
        assert_eq!(get.status(), 405);
        assert_eq!(get.headers()[http::header::ALLOW], "DELETE");
        assert!(serve(&s, &Method::DELETE, "/cache/entriesx")
            .await
            .is_none());
        assert!(serve(&s, &Method::DELETE, "/metrics").await.is_none());
        assert_eq!(s.entries(), 1, "nothing was purged");
    }
}
