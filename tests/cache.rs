//! The response cache through the real proxy, against the mock upstream (which counts the
//! requests it gets): hit / miss / bypass and the client's switches, streamed hits (fresh id,
//! the usage chunk shown or hidden as on a live stream), what is never stored (errors, cut
//! streams, error events, `cache-control: no-store` from the upstream, entries over
//! `cache.max_entry_bytes`), TTL expiry, tenant vs route scope, the limits rule (a hit counts
//! against request limits, never against tokens or budget), the admin listener's purge
//! endpoints, and the memory bound under a flood of distinct large responses (RSS measured).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::{proc_status_kib, Behavior, Config, CutEnd, Mock, Pool, Route, Sluice, Tenant};

const KEY_ENV: (&str, &str) = ("SLUICE_TEST_KEY", "sk-real-upstream-key");
const VK_A: &str = "sk-cache-tenant-a";
const VK_B: &str = "sk-cache-tenant-b";

/// Route `chat` (`/v1`, scope tenant, with `cache_yaml`), route `shared` (`/v1` with header
/// `x-route: shared`, scope route) on one openai pool; tenants `a` and `b` (with `limits_a`), a price for every model.
fn config(mock: &Mock, cache_yaml: &str, limits_a: &str, top: &str) -> String {
    Config::new()
        .pool(Pool::openai("p", &mock.url()))
        .route(
            Route::prefix("shared", "/v1", &["p"])
                .header("x-route", "shared")
                .yaml("{cache: {scope: route}}"),
        )
        .route(Route::prefix("chat", "/v1", &["p"]).yaml(&format!("{{cache: {cache_yaml}}}")))
        .tenant(Tenant::new("a").virtual_key(VK_A).limits(limits_a))
        .tenant(Tenant::new("b").virtual_key(VK_B))
        .yaml("models: [{match: \"*\", price: {input_per_1m: 1000.0, output_per_1m: 1000.0}}]")
        .yaml(top)
        .to_yaml()
}

fn chat(temperature: f64, content: &str) -> Value {
    json!({"model": "gpt-4o-mini", "temperature": temperature,
        "messages": [{"role": "user", "content": content}]})
}

struct Answer {
    status: u16,
    cache: String,
    /// The `age` header, when there is one.
    age: Option<u64>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_default()
    }
}

async fn post(s: &Sluice, path: &str, vk: &str, body: &Value, headers: &[(&str, &str)]) -> Answer {
    let mut req = reqwest::Client::new()
        .post(format!("{}{path}", s.proxy))
        .timeout(Duration::from_secs(30))
        .bearer_auth(vk)
        .json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    Answer {
        status: resp.status().as_u16(),
        cache: resp
            .headers()
            .get("x-sluice-cache")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default(),
        age: resp
            .headers()
            .get("age")
            .map(|v| v.to_str().unwrap().parse().unwrap()),
        body: resp.text().await.unwrap(),
    }
}

async fn chat_a(s: &Sluice, body: &Value, headers: &[(&str, &str)]) -> Answer {
    post(s, "/v1/chat/completions", VK_A, body, headers).await
}

#[tokio::test]
async fn hits_misses_bypasses_and_the_clients_switches() {
    let mock = Mock::start().await;
    let s = Sluice::start(&config(&mock, "{}", "{}", ""), &[KEY_ENV]);
    let upstream = || mock.requests().len();

    // Deterministic: a miss, then a hit with the same content and no upstream call.
    let first = chat_a(&s, &chat(0.0, "one"), &[]).await;
    assert_eq!((first.status, first.cache.as_str()), (200, "miss"));
    let second = chat_a(&s, &chat(0.0, "one"), &[]).await;
    assert_eq!(
        (second.status, second.cache.as_str()),
        (200, "hit"),
        "{}",
        second.body
    );
    assert_eq!(upstream(), 1);
    let (a, b) = (first.json(), second.json());
    assert_eq!(a["choices"], b["choices"]);
    assert_eq!(a["usage"], b["usage"]);
    assert_ne!(a["id"], b["id"], "a hit gets a fresh id");
    // Key order and whitespace do not matter; a `seed` is deterministic too.
    let reordered: Value =
        serde_json::from_str(r#"{"messages":[{"content":"one","role":"user"}],  "temperature":0.0,"model":"gpt-4o-mini"}"#)
            .unwrap();
    assert_eq!(chat_a(&s, &reordered, &[]).await.cache, "hit");

    // Not deterministic: bypassed, never stored.
    for _ in 0..2 {
        assert_eq!(chat_a(&s, &chat(0.7, "two"), &[]).await.cache, "bypass");
    }
    assert_eq!(upstream(), 3);
    // The opt-in header makes it cacheable.
    let on = [("x-sluice-cache", "on")];
    assert_eq!(chat_a(&s, &chat(0.7, "three"), &on).await.cache, "miss");
    assert_eq!(chat_a(&s, &chat(0.7, "three"), &on).await.cache, "hit");
    assert_eq!(upstream(), 4);

    // `no-cache`: the lookup is bypassed, the fresh answer replaces the entry.
    let no_cache = [("cache-control", "no-cache")];
    assert_eq!(
        chat_a(&s, &chat(0.0, "one"), &no_cache).await.cache,
        "bypass"
    );
    assert_eq!(upstream(), 5);
    assert_eq!(chat_a(&s, &chat(0.0, "one"), &[]).await.cache, "hit");
    // `no-store`: answered, not stored.
    let no_store = [("cache-control", "no-store")];
    assert_eq!(
        chat_a(&s, &chat(0.0, "four"), &no_store).await.cache,
        "miss"
    );
    assert_eq!(
        chat_a(&s, &chat(0.0, "four"), &no_store).await.cache,
        "miss"
    );
    assert_eq!(upstream(), 7);
    // `x-sluice-cache: off`: neither looked up nor stored.
    let off = [("x-sluice-cache", "off")];
    assert_eq!(chat_a(&s, &chat(0.0, "one"), &off).await.cache, "bypass");
    assert_eq!(chat_a(&s, &chat(0.0, "five"), &off).await.cache, "bypass");
    assert_eq!(chat_a(&s, &chat(0.0, "five"), &[]).await.cache, "miss");
    assert_eq!(upstream(), 10);

    // A request sluice passes through (not an API call it inspects) is a bypass too.
    let models = reqwest::Client::new()
        .get(format!("{}/v1/models", s.proxy))
        .bearer_auth(VK_A)
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 200);
    assert_eq!(models.headers()["x-sluice-cache"], "bypass");
    assert_eq!(upstream(), 11);

    // Metrics: outcomes, stores, and what the hits saved (the mock reports usage).
    let hits = s
        .wait_metric("sluice_cache_requests_total", &[("outcome", "hit")], |v| {
            v >= 4.0
        })
        .await;
    assert_eq!(hits, 4.0);
    assert_eq!(
        s.metric("sluice_cache_requests_total", &[("outcome", "bypass")])
            .await,
        6.0
    );
    assert_eq!(
        s.metric("sluice_cache_stored_total", &[("route", "chat")])
            .await,
        4.0
    );
    let saved = s
        .metric("sluice_cache_saved_tokens_total", &[("kind", "completion")])
        .await;
    assert_eq!(saved, 4.0, "each hit saved the mock's 1 completion token");
    assert!(s.metric("sluice_cache_saved_usd_total", &[]).await > 0.0);
    assert!(s.metric("sluice_cache_bytes", &[]).await > 0.0);
    // Tokens settled are the upstream's only: 10 chat answers of 1 completion token.
    let tokens = s
        .wait_metric("sluice_tokens_total", &[("kind", "completion")], |v| {
            v >= 10.0
        })
        .await;
    assert_eq!(tokens, 10.0, "a hit adds no upstream tokens");
    // The log line carries the outcome and the input hash.
    let log = s.wait_log("cache=\"hit\"").await;
    assert!(log.contains("cache=\"hit\""), "{log}");
    assert_eq!(s.input_hash().await.len(), 64, "{log}");
}

/// A complete OpenAI chat stream: content, a finish reason, the usage chunk, `[DONE]`.
const STREAM: &str = "data: {\"id\":\"chatcmpl-up1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hello\"},\"finish_reason\":null}],\"usage\":null}\n\n\
data: {\"id\":\"chatcmpl-up1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" cached world\"},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n\
data: {\"id\":\"chatcmpl-up1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3,\"total_tokens\":12}}\n\n\
data: [DONE]\n\n";

fn streamed(include_usage: bool) -> Value {
    let mut v = json!({"model": "gpt-4o-mini", "temperature": 0, "stream": true,
        "messages": [{"role": "user", "content": "stream me"}]});
    if include_usage {
        v["stream_options"] = json!({"include_usage": true});
    }
    v
}

/// Text of a chat stream's content deltas.
fn stream_text(body: &str) -> String {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test]
async fn streamed_hits_replay_the_stream_with_a_fresh_id_and_the_usage_rule() {
    let mock = Mock::start().await;
    mock.set(Behavior::Canned {
        content_type: "text/event-stream".into(),
        body: STREAM.into(),
    });
    let s = Sluice::start(&config(&mock, "{}", "{}", ""), &[KEY_ENV]);
    // The client did not ask for usage: sluice adds include_usage and hides the chunk.
    let miss = chat_a(&s, &streamed(false), &[]).await;
    assert_eq!((miss.status, miss.cache.as_str()), (200, "miss"));
    let hit = chat_a(&s, &streamed(false), &[]).await;
    assert_eq!(
        (hit.status, hit.cache.as_str()),
        (200, "hit"),
        "{}",
        hit.body
    );
    assert_eq!(mock.requests().len(), 1);
    assert_eq!(stream_text(&hit.body), "Hello cached world");
    assert_eq!(stream_text(&hit.body), stream_text(&miss.body));
    assert!(
        !hit.body.contains("\"usage\""),
        "usage hidden as live: {}",
        hit.body
    );
    assert!(hit.body.ends_with("data: [DONE]\n\n"), "{}", hit.body);
    assert!(!hit.body.contains("chatcmpl-up1") && hit.body.contains("chatcmpl-"));
    assert!(!hit.body.contains("1700000000"), "fresh created");
    // One id for every chunk of the replayed stream.
    let ids: std::collections::HashSet<String> = hit
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .map(|v| v["id"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    // The same request asking for usage shares the entry (stream_options is not in the key)
    // and gets the usage chunk.
    let with_usage = chat_a(&s, &streamed(true), &[]).await;
    assert_eq!(with_usage.cache, "hit");
    assert!(
        with_usage.body.contains("\"completion_tokens\":3"),
        "{}",
        with_usage.body
    );
    // A plain request is another key: the stream flag is part of it.
    let mut plain = streamed(false);
    plain["stream"] = json!(false);
    mock.set(Behavior::Normal);
    assert_eq!(chat_a(&s, &plain, &[]).await.cache, "miss");
    assert_eq!(mock.requests().len(), 2);
}

#[tokio::test]
async fn errors_cut_streams_error_events_and_upstream_no_store_are_never_stored() {
    let mock = Mock::start().await;
    let s = Sluice::start(&config(&mock, "{}", "{}", ""), &[KEY_ENV]);
    let twice = |body: Value| {
        let s = &s;
        async move {
            let a = chat_a(s, &body, &[]).await;
            let b = chat_a(s, &body, &[]).await;
            (a, b)
        }
    };
    let mut sent = 0;
    // An upstream error.
    mock.set(Behavior::Status(400, None));
    let (a, b) = twice(chat(0.0, "error")).await;
    assert_eq!(
        (a.status, a.cache.as_str(), b.cache.as_str()),
        (400, "miss", "miss")
    );
    sent += 2;
    assert_eq!(mock.requests().len(), sent);
    // A stream cut after content (clean EOF without the final event).
    let cut_at = STREAM.find("data: {\"id\":\"chatcmpl-up1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[],").unwrap();
    mock.set(Behavior::CutAt {
        body: STREAM.as_bytes()[..cut_at].to_vec(),
        end: CutEnd::Reset,
    });
    let (a, b) = twice(streamed(false)).await;
    assert_eq!(
        (a.cache.as_str(), b.cache.as_str()),
        ("miss", "miss"),
        "{}",
        a.body
    );
    sent += 2;
    assert_eq!(mock.requests().len(), sent);
    // A stream that ends with an error event.
    let with_error = format!(
        "{}data: {{\"error\":{{\"message\":\"overloaded\",\"type\":\"server_error\"}}}}\n\ndata: [DONE]\n\n",
        &STREAM[..cut_at]
    );
    mock.set(Behavior::Canned {
        content_type: "text/event-stream".into(),
        body: with_error,
    });
    let (a, b) = twice(streamed(true)).await;
    assert_eq!((a.cache.as_str(), b.cache.as_str()), ("miss", "miss"));
    sent += 2;
    assert_eq!(mock.requests().len(), sent);
    // A 200 the upstream marks `no-store` (or `private`).
    let ok = r#"{"id":"c9","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"x"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
    for cc in [
        "cache-control: no-store",
        "cache-control: private, max-age=60",
    ] {
        mock.set(Behavior::CannedWithHeader {
            content_type: "application/json".into(),
            header: cc.into(),
            body: ok.into(),
        });
        let (a, b) = twice(chat(0.0, cc)).await;
        assert_eq!(
            (a.status, a.cache.as_str(), b.cache.as_str()),
            (200, "miss", "miss")
        );
        sent += 2;
        assert_eq!(mock.requests().len(), sent);
    }
    // The same body without the header is stored.
    mock.set(Behavior::Canned {
        content_type: "application/json".into(),
        body: ok.into(),
    });
    let (a, b) = twice(chat(0.0, "storable")).await;
    assert_eq!((a.cache.as_str(), b.cache.as_str()), ("miss", "hit"));
    assert_eq!(s.metric("sluice_cache_stored_total", &[]).await, 1.0);
}

/// The purge token of the admin purge test (env `SLUICE_PURGE_TOKEN`).
const PURGE_TOKEN: &str = "purge-token-not-a-key";

/// `DELETE` on the admin listener's `path` with [`PURGE_TOKEN`] as the bearer token: status and
/// JSON body.
async fn admin_delete(s: &Sluice, path: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .delete(format!("{}{path}", s.admin))
        .bearer_auth(PURGE_TOKEN)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

#[tokio::test]
async fn the_admin_listener_purges_one_entry_by_input_hash_or_the_whole_memory_tier() {
    let mock = Mock::start().await;
    let log_env = (
        "RUST_LOG",
        "warn,sluice::access=info,sluice::reload=info,sluice::admin=info",
    );
    let token_env = ("SLUICE_PURGE_TOKEN", PURGE_TOKEN);
    let s = Sluice::start(
        &config(&mock, "{}", "{}", ""),
        &[KEY_ENV, log_env, token_env],
    );
    let (purge_me, keep_me) = (chat(0.0, "purge me"), chat(0.0, "keep me"));
    assert_eq!(chat_a(&s, &purge_me, &[]).await.cache, "miss");
    let hash = s.input_hash().await;
    assert_eq!(hash.len(), 64, "{}", s.log());
    assert_eq!(chat_a(&s, &keep_me, &[]).await.cache, "miss");
    // Off by default: the endpoints are not there.
    let entry = format!("/cache/entries/{hash}");
    assert_eq!(admin_delete(&s, &entry).await.0, 404);
    assert_eq!(chat_a(&s, &purge_me, &[]).await.cache, "hit");

    // On by a reload, behind a bearer token: without it, 401 and nothing purged.
    let on = config(
        &mock,
        "{}",
        "{}",
        "cache: {admin_purge: true, admin_purge_token: {env: SLUICE_PURGE_TOKEN}}",
    );
    s.reload(&on).await;
    let anonymous = reqwest::Client::new()
        .delete(format!("{}{entry}", s.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    assert_eq!(chat_a(&s, &purge_me, &[]).await.cache, "hit");
    // With it: the entry goes, the other stays.
    let (status, body) = admin_delete(&s, &entry).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["input_hash"], hash.as_str());
    assert_eq!(
        (body["memory"].as_str(), body["redis"].as_str()),
        (Some("removed"), Some("off"))
    );
    assert_eq!(
        s.metric("sluice_cache_purged_entries_total", &[("tier", "memory")])
            .await,
        1.0
    );
    let upstream_before = mock.requests().len();
    assert_eq!(
        chat_a(&s, &purge_me, &[]).await.cache,
        "miss",
        "purged: asked again"
    );
    assert_eq!(mock.requests().len(), upstream_before + 1);
    assert_eq!(
        chat_a(&s, &purge_me, &[]).await.cache,
        "hit",
        "and stored again"
    );
    assert_eq!(
        chat_a(&s, &keep_me, &[]).await.cache,
        "hit",
        "the other entry stayed"
    );
    // A hash that is not one: 400, nothing purged.
    assert_eq!(admin_delete(&s, "/cache/entries/nothex").await.0, 400);
    assert_eq!(admin_delete(&s, "/cache/entries/").await.0, 400);

    // The whole memory tier.
    let (status, body) = admin_delete(&s, "/cache/entries").await;
    assert_eq!(
        (status, body["memory_entries_removed"].as_u64()),
        (200, Some(2)),
        "{body}"
    );
    assert_eq!(s.metric("sluice_cache_entries", &[]).await, 0.0);
    assert_eq!(chat_a(&s, &purge_me, &[]).await.cache, "miss");
    assert_eq!(chat_a(&s, &keep_me, &[]).await.cache, "miss");
    // The purge is in the log, without anything secret.
    let log = s.wait_log("cache purge: memory tier emptied").await;
    assert!(log.contains("cache purge: entry"), "{log}");
    for secret in [KEY_ENV.1, VK_A, PURGE_TOKEN] {
        assert!(!log.contains(secret), "{log}");
    }
}

#[tokio::test]
async fn entries_expire_and_scope_decides_who_shares_them() {
    let mock = Mock::start().await;
    let s = Sluice::start(&config(&mock, "{ttl_ms: 400}", "{}", ""), &[KEY_ENV]);
    let body = chat(0.0, "ttl");
    assert_eq!(chat_a(&s, &body, &[]).await.cache, "miss");
    assert_eq!(chat_a(&s, &body, &[]).await.cache, "hit");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        chat_a(&s, &body, &[]).await.cache,
        "miss",
        "expired after ttl_ms"
    );
    // Tenant scope: another tenant's identical request is its own miss.
    let b = post(&s, "/v1/chat/completions", VK_B, &body, &[]).await;
    assert_eq!(b.cache, "miss");
    assert_eq!(mock.requests().len(), 3);
    // Route scope: tenants share entries.
    let shared = [("x-route", "shared")];
    let a = post(&s, "/v1/chat/completions", VK_A, &body, &shared).await;
    let b = post(&s, "/v1/chat/completions", VK_B, &body, &shared).await;
    assert_eq!((a.cache.as_str(), b.cache.as_str()), ("miss", "hit"));
    assert_eq!(mock.requests().len(), 4);
}

#[tokio::test]
async fn a_hit_says_its_age_and_a_clients_max_age_refuses_older_answers() {
    let mock = Mock::start().await;
    let s = Sluice::start(&config(&mock, "{}", "{}", ""), &[KEY_ENV]);
    let body = chat(0.0, "age");
    let miss = chat_a(&s, &body, &[]).await;
    assert_eq!((miss.cache.as_str(), miss.age), ("miss", None));
    let hit = chat_a(&s, &body, &[]).await;
    assert_eq!((hit.cache.as_str(), hit.age), ("hit", Some(0)));
    // Whole seconds since the answer was stored.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let hit = chat_a(&s, &body, &[("cache-control", "max-age=60")]).await;
    assert_eq!(hit.cache, "hit");
    // 1 s, or 2 on a machine that took most of a second over the requests.
    assert!(matches!(hit.age, Some(1 | 2)), "{:?}", hit.age);
    assert_eq!(mock.requests().len(), 1);
    // Older than the client takes: a miss, and the fresh answer replaces the entry.
    let fresh = chat_a(&s, &body, &[("cache-control", "max-age=0")]).await;
    assert_eq!(
        (fresh.status, fresh.cache.as_str(), fresh.age),
        (200, "miss", None)
    );
    assert_eq!(mock.requests().len(), 2);
    let hit = chat_a(&s, &body, &[("cache-control", "max-age=0")]).await;
    assert_eq!(
        (hit.cache.as_str(), hit.age),
        ("hit", Some(0)),
        "the replaced entry"
    );
    assert_eq!(mock.requests().len(), 2);
    let misses = s
        .metric(
            "sluice_cache_requests_total",
            &[("route", "chat"), ("outcome", "miss")],
        )
        .await;
    assert_eq!(misses, 2.0);
}

#[tokio::test]
async fn responses_over_max_entry_bytes_are_served_not_stored() {
    let mock = Mock::start().await;
    let top = "cache: {max_bytes: 1048576, max_entry_bytes: 100}";
    let s = Sluice::start(&config(&mock, "{}", "{}", top), &[KEY_ENV]);
    // The mock's JSON answer is about 250 bytes.
    for _ in 0..2 {
        let a = chat_a(&s, &chat(0.0, "big"), &[]).await;
        assert_eq!((a.status, a.cache.as_str()), (200, "miss"));
        assert!(a.body.len() > 100);
    }
    assert_eq!(mock.requests().len(), 2);
    assert_eq!(s.metric("sluice_cache_stored_total", &[]).await, 0.0);
}

#[tokio::test]
async fn hits_count_against_request_limits_but_never_tokens_or_budget() {
    let mock = Mock::start().await;
    // Tenant a: 4 requests a minute and a budget one upstream answer uses up (the price is
    // 1,000 USD per million tokens; the mock bills ~35 prompt tokens).
    let limits = "{requests_per_minute: 4, budget: {usd_per_day: 0.001}}";
    let s = Sluice::start(&config(&mock, "{}", limits, ""), &[KEY_ENV]);
    let body = chat(0.0, "limits");
    assert_eq!(chat_a(&s, &body, &[]).await.cache, "miss");
    s.wait_metric("sluice_spend_usd_total", &[("tenant", "a")], |v| v > 0.001)
        .await;
    // The budget is spent: a new request is refused, a hit is still served.
    let refused = chat_a(&s, &chat(0.0, "new"), &[]).await;
    assert_ne!(refused.status, 200, "{}", refused.body);
    let hit = chat_a(&s, &body, &[]).await;
    assert_eq!(
        (hit.status, hit.cache.as_str()),
        (200, "hit"),
        "{}",
        hit.body
    );
    // Requests per minute count hits: 4 admitted (miss, hit, hit, hit), the 5th refused.
    assert_eq!(chat_a(&s, &body, &[]).await.status, 200);
    assert_eq!(chat_a(&s, &body, &[]).await.status, 200);
    let over = chat_a(&s, &body, &[]).await;
    assert_eq!(over.status, 429, "{}", over.body);
    assert_eq!(mock.requests().len(), 1);

    // With hits_count_toward_limits: false, hits are not counted.
    let mock = Mock::start().await;
    let cache = "{hits_count_toward_limits: false}";
    let s = Sluice::start(
        &config(&mock, cache, "{requests_per_minute: 2}", ""),
        &[KEY_ENV],
    );
    for i in 0..5 {
        let a = chat_a(&s, &body, &[]).await;
        assert_eq!(a.status, 200, "request {i}: {}", a.body);
    }
    assert_eq!(mock.requests().len(), 1);
}

/// 200 distinct 200 KiB answers into a memory tier of 8 MiB that keeps them all
/// (`admission_keys: 0`): the weighted size stays within
/// the bound and the process's RSS grows by no more than the bound plus a margin (allocator
/// and connection buffers).
#[tokio::test]
async fn the_memory_bound_holds_under_a_flood_of_distinct_large_responses() {
    const MAX_BYTES: u64 = 8 << 20;
    const MARGIN_KIB: u64 = 16 << 10;
    let mock = Mock::start().await;
    let text = "x".repeat(200 << 10);
    let big = json!({"id": "c-big", "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 51200, "total_tokens": 51205}})
    .to_string();
    mock.set(Behavior::Canned {
        content_type: "application/json".into(),
        body: big,
    });
    // Every answer kept (no doorkeeper): the worst case for memory.
    let top = format!("cache: {{max_bytes: {MAX_BYTES}, admission_keys: 0}}");
    let s = Sluice::start(&config(&mock, "{}", "{}", &top), &[KEY_ENV]);
    // Warm up (connections, buffers, allocator arenas) before the baseline.
    for i in 0..5 {
        chat_a(&s, &chat(0.0, &format!("warm {i}")), &[]).await;
    }
    let before = proc_status_kib(s.pid(), "VmRSS");
    let mut peak = before;
    for i in 0..200 {
        let a = chat_a(&s, &chat(0.0, &format!("flood {i}")), &[]).await;
        assert_eq!(a.status, 200);
        if i % 20 == 19 {
            peak = peak.max(proc_status_kib(s.pid(), "VmRSS"));
            let bytes = s.metric("sluice_cache_bytes", &[]).await;
            assert!(
                bytes <= MAX_BYTES as f64,
                "weighted size {bytes} over the bound"
            );
        }
    }
    let after = proc_status_kib(s.pid(), "VmRSS");
    peak = peak.max(after);
    let stored = s.metric("sluice_cache_stored_total", &[]).await;
    let entries = s.metric("sluice_cache_entries", &[]).await;
    let bytes = s.metric("sluice_cache_bytes", &[]).await;
    println!(
        "RSS before {before} KiB, after {after} KiB, peak {peak} KiB; stored {stored}, \
         entries {entries}, weighted bytes {bytes}"
    );
    assert!(stored >= 200.0, "every answer was stored (then evicted)");
    assert!(
        entries <= (MAX_BYTES / (200 << 10)) as f64 + 1.0,
        "{entries} entries"
    );
    assert!(
        peak.saturating_sub(before) <= (MAX_BYTES >> 10) + MARGIN_KIB,
        "RSS grew {} KiB (bound {} KiB + margin {MARGIN_KIB} KiB)",
        peak - before,
        MAX_BYTES >> 10
    );
}

/// Once the memory tier is full, the answer to a request that never missed before is not kept
/// (it would only evict another); the same request's second miss is kept and its third
/// request is a hit. Counted by `sluice_cache_admission_skipped_total`.
#[tokio::test]
async fn a_full_memory_tier_keeps_only_answers_asked_for_again() {
    let mock = Mock::start().await;
    let text = "y".repeat(16 << 10);
    mock.set(Behavior::Canned {
        content_type: "application/json".into(),
        body: json!({"id": "c-16k", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 4096, "total_tokens": 4101}})
        .to_string(),
    });
    let top = "cache: {max_bytes: 262144, max_entry_bytes: 65536}";
    let s = Sluice::start(&config(&mock, "{}", "{}", top), &[KEY_ENV]);
    // Before the tier is full every answer is kept: the first of a request's is a hit later.
    let early = chat(0.0, "early");
    assert_eq!(chat_a(&s, &early, &[]).await.cache, "miss");
    assert_eq!(chat_a(&s, &early, &[]).await.cache, "hit");
    for i in 0..40 {
        let a = chat_a(&s, &chat(0.0, &format!("fill {i}")), &[]).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    // Whether the tier is full is read with its gauges, at most 100 ms late: one more answer.
    tokio::time::sleep(Duration::from_millis(150)).await;
    chat_a(&s, &chat(0.0, "fill last"), &[]).await;
    let skipped = s.metric("sluice_cache_admission_skipped_total", &[]).await;
    assert!(
        skipped > 0.0,
        "the fill's last one-off answers were turned away"
    );

    let again = chat(0.0, "asked again");
    let calls = mock.requests().len();
    let outcomes: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            let a = chat_a(&s, &again, &[]).await;
            assert_eq!(a.status, 200, "{}", a.body);
            v.push(a.cache);
        }
        v
    };
    assert_eq!(outcomes, ["miss", "miss", "hit"]);
    assert_eq!(mock.requests().len(), calls + 2, "the hit made no call");
    assert_eq!(
        s.metric("sluice_cache_admission_skipped_total", &[]).await,
        skipped + 1.0,
        "only the first of the two misses was turned away"
    );
    assert!(s.metric("sluice_cache_bytes", &[]).await <= 262_144.0);
}
