//! The response cache's Redis tier across two sluice processes (replicas) sharing one
//! `redis-server` (Debian package, started on a picked port and stopped): an answer stored by
//! one is a hit on the other, with one upstream request in all; with Redis killed both keep
//! serving (what they hold in memory as hits, the rest upstream), no request failing or waiting
//! much past the tier's timeout; with Redis back, sharing resumes by itself; a purge on one
//! reaches the other's memory tier.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};
use support::{Behavior, Config, Mock, Pool, Redis, Route, Sluice, Tenant};

const KEY_ENV: (&str, &str) = ("SLUICE_TEST_KEY", "sk-real-upstream-key");
/// `cache.redis.timeout_ms` of the replicas.
const TIMEOUT_MS: u64 = 50;
const ENTRIES: &str = "sluice:cache:v1:*";

/// The replicas' config; `cache_extra`: more `cache` settings (`key: value, ` each).
fn config(mock: &Mock, redis_url: &str, cache_extra: &str) -> String {
    Config::new()
        .pool(Pool::openai("p", &mock.url()))
        .route(Route::prefix("main", "/v1", &["p"]).yaml("cache: {store: redis, ttl_ms: 60000}"))
        .yaml(&format!(
            "cache: {{{cache_extra}redis: {{url: \"{redis_url}\", timeout_ms: {TIMEOUT_MS}}}}}"
        ))
        .yaml("tenants: {default: t}")
        .tenant(Tenant::new("t"))
        .to_yaml()
}

/// Two replicas, each subscribed to the purge channel (a subscription empties the memory
/// tier: one made after the first answers would drop what a test expects kept).
async fn replicas(mock: &Mock, redis: &Redis) -> (Sluice, Sluice) {
    let conf = config(mock, &redis.url(), "");
    let (a, b) = (
        Sluice::start(&conf, &[KEY_ENV]),
        Sluice::start(&conf, &[KEY_ENV]),
    );
    for s in [&a, &b] {
        wait_subscribed(s).await;
    }
    (a, b)
}

/// Wait (10 s at most) until `s` listens on the purge channel.
async fn wait_subscribed(s: &Sluice) {
    let on = s
        .wait_metric("sluice_cache_purge_channel_subscribed", &[], |v| v == 1.0)
        .await;
    assert_eq!(on, 1.0, "not subscribed to the purge channel\n{}", s.log());
}

/// Entries `sluice` found in the Redis tier (`sluice_cache_redis_lookups_total{result="hit"}`).
async fn from_redis(sluice: &Sluice) -> f64 {
    sluice
        .metric("sluice_cache_redis_lookups_total", &[("result", "hit")])
        .await
}

/// A deterministic chat request (`temperature: 0`: cacheable by default).
fn chat(question: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": "gpt-4o",
        "temperature": 0,
        "stream": stream,
        "messages": [{"role": "user", "content": question}],
    })
}

/// Status, `x-sluice-cache` header, body and time taken of `body` sent to `sluice`.
async fn send(sluice: &Sluice, body: &serde_json::Value) -> (u16, String, String, Duration) {
    let (status, headers, text, took) = send_for_headers(sluice, body).await;
    let cache = headers
        .get("x-sluice-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (status, cache, text, took)
}

/// [`send`] with every response header.
async fn send_for_headers(
    sluice: &Sluice,
    body: &serde_json::Value,
) -> (u16, reqwest::header::HeaderMap, String, Duration) {
    let t0 = Instant::now();
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", sluice.proxy))
        .timeout(Duration::from_secs(20))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    (status, headers, text, t0.elapsed())
}

/// The assistant's answer in a JSON completion.
fn answer(json_body: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(json_body).unwrap();
    v["choices"][0]["message"]["content"].clone()
}

/// A complete OpenAI chat stream: content, a chunk with `finish_reason: stop`, the usage chunk
/// (sluice asks for it upstream), `[DONE]`.
fn complete_stream() -> String {
    let chunk = |delta: &str, finish: &str| {
        format!(
            "data: {{\"id\":\"c9\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
        )
    };
    [
        chunk(r#"{"role":"assistant","content":"Shared"}"#, "null"),
        chunk(r#"{"content":" answer"}"#, "null"),
        chunk("{}", r#""stop""#),
        "data: {\"id\":\"c9\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n".to_owned(),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat()
}

/// The concatenated `delta.content` of an SSE chat stream.
fn streamed_answer(sse: &str) -> String {
    sse.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

fn slowest(v: &[Duration]) -> Duration {
    v.iter().max().copied().unwrap_or_default()
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Wait (10 s at most) until Redis holds `n` cache entries; returns how many it holds.
async fn wait_entries(redis: &Redis, n: usize) -> usize {
    wait_entries_within(redis, n, Duration::from_secs(10)).await
}

/// [`wait_entries`], waiting `limit` at most.
async fn wait_entries_within(redis: &Redis, n: usize, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let got = redis.keys(ENTRIES).len();
        if got >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Replicas A and B whose admin listeners purge (`admin_purge: true`), both subscribed to the
/// purge channel; A answered `q` (a miss, stored in Redis) and B keeps it in memory (a hit
/// from Redis, then from memory): one upstream call. Returns them and the entry's hash.
async fn a_kept_answer(
    mock: &Mock,
    redis: &Redis,
    env: &[(&str, &str)],
    q: &serde_json::Value,
) -> (Sluice, Sluice, String) {
    let conf = config(mock, &redis.url(), "admin_purge: true, ");
    let (a, b) = (Sluice::start(&conf, env), Sluice::start(&conf, env));
    for s in [&a, &b] {
        wait_subscribed(s).await;
    }
    assert_eq!(send(&a, q).await.1, "miss");
    assert_eq!(wait_entries(redis, 1).await, 1);
    assert_eq!(send(&b, q).await.1, "hit");
    assert_eq!(send(&b, q).await.1, "hit");
    assert_eq!(mock.requests().len(), 1);
    let hash = a.input_hash().await;
    assert_eq!(hash.len(), 64, "{}", a.log());
    (a, b, hash)
}

/// `DELETE /cache/entries/{hash}` on `s`'s admin listener: its JSON answer (status 200).
async fn purge(s: &Sluice, hash: &str) -> serde_json::Value {
    let resp = reqwest::Client::new()
        .delete(format!("{}/cache/entries/{hash}", s.admin))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    resp.json().await.unwrap()
}

/// Entries `s` removed from its memory tier, once there is one (10 s at most).
async fn wait_forgotten(s: &Sluice) -> f64 {
    s.wait_metric(
        "sluice_cache_purged_entries_total",
        &[("tier", "memory")],
        |v| v >= 1.0,
    )
    .await
}

/// A purge on one replica's admin listener reaches the other replica's memory tier through
/// the Redis tier's purge channel: without it, B would serve its in-memory copy until the TTL.
#[tokio::test]
async fn a_purge_on_one_replica_reaches_the_memory_tier_of_the_other() {
    let redis = Redis::start();
    let mock = Mock::start().await;
    // The purge lines are logged at info under `sluice::admin`.
    let env = [
        KEY_ENV,
        ("RUST_LOG", "warn,sluice::access=info,sluice::admin=info"),
    ];
    let q = chat("a wrong answer to purge", false);
    let (a, b, hash) = a_kept_answer(&mock, &redis, &env, &q).await;

    let body = purge(&a, &hash).await;
    assert_eq!(body["memory"], "removed", "{body}");
    assert_eq!(body["redis"], "removed", "{body}");
    assert_eq!(body["replicas_told"], 2, "{body}");
    assert_eq!(
        wait_forgotten(&b).await,
        1.0,
        "B kept its copy\n{}",
        b.log()
    );
    let line = "cache purge from another replica";
    assert!(b.wait_log(line).await.contains(&hash), "{}", b.log());
    // B asks the upstream again, and stores the fresh answer.
    let (status, cache, _, _) = send(&b, &q).await;
    assert_eq!((status, cache.as_str()), (200, "miss"));
    assert_eq!(mock.requests().len(), 2, "B answered the purged entry");
    assert_eq!(wait_entries(&redis, 1).await, 1);
}

/// Pub/sub delivers at most once: a purge sent while B's subscription was down never reaches
/// B. So B empties its memory tier when it subscribes again, instead of serving the purged
/// answer from memory until its TTL.
#[tokio::test]
async fn a_replica_whose_purge_subscription_dropped_forgets_what_it_kept_in_memory() {
    let redis = Redis::start();
    let mock = Mock::start().await;
    let q = chat(
        "a wrong answer purged while a replica was not listening",
        false,
    );
    let (a, b, hash) = a_kept_answer(&mock, &redis, &[KEY_ENV], &q).await;

    // Every subscriber's connection dropped, then at once (within the replicas' 0.5 s pause
    // before subscribing again) the purge on A: B is not listening and misses it.
    let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_eq!(killed.trim(), "2", "subscribers killed: {killed}");
    let body = purge(&a, &hash).await;
    assert_eq!(body["redis"], "removed", "{body}");
    assert_eq!(body["replicas_told"], 0, "a replica heard it: {body}");
    assert!(b.metric("sluice_cache_purged_entries_total", &[]).await == 0.0);

    // B notices, subscribes again and empties its memory tier: the purged answer is gone.
    let lost = b
        .wait_metric(
            "sluice_cache_redis_errors_total",
            &[("op", "subscribe")],
            |v| v >= 1.0,
        )
        .await;
    assert!(
        lost >= 1.0,
        "B did not notice its lost subscription\n{}",
        b.log()
    );
    wait_subscribed(&b).await;
    assert_eq!(
        wait_forgotten(&b).await,
        1.0,
        "B kept its memory tier\n{}",
        b.log()
    );
    let log = b.log();
    assert!(log.contains("the memory tier was emptied"), "{log}");
    let (status, cache, _, _) = send(&b, &q).await;
    assert_eq!((status, cache.as_str()), (200, "miss"));
    assert_eq!(mock.requests().len(), 2, "B answered the purged entry");
}

#[tokio::test]
async fn an_answer_stored_by_one_replica_is_a_hit_on_the_other() {
    let redis = Redis::start();
    let mock = Mock::start().await;
    let (a, b) = replicas(&mock, &redis).await;

    // Plain JSON: answered by A upstream, stored in A's memory and in Redis.
    let q = chat("what is a sidecar?", false);
    let (status, cache, first, _) = send(&a, &q).await;
    assert_eq!((status, cache.as_str()), (200, "miss"), "{first}");
    assert_eq!(
        wait_entries(&redis, 1).await,
        1,
        "the answer never reached Redis"
    );
    // B never saw it: a hit from Redis, no upstream request, the same answer, as old as
    // A's answer (its `age` counts from when A stored it, not from B's lookup).
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (status, headers, second, _) = send_for_headers(&b, &q).await;
    assert_eq!(
        (status, headers["x-sluice-cache"].to_str().unwrap()),
        (200, "hit"),
        "{second}"
    );
    let age: u64 = headers["age"].to_str().unwrap().parse().unwrap();
    assert!((1..=3).contains(&age), "age {age}");
    assert_eq!(answer(&second), answer(&first));
    assert_eq!(mock.requests().len(), 1, "the hit went upstream");
    assert_eq!(from_redis(&b).await, 1.0);
    // B kept it in memory: the next hit does not ask Redis.
    let (_, cache, _, _) = send(&b, &q).await;
    assert_eq!(cache, "hit");
    assert_eq!(from_redis(&b).await, 1.0);

    // Streamed, the other way round: stored by B, a hit on A, a well-formed stream. (Only a
    // stream that ends with its finish reason is stored: the mock's default one has none.)
    mock.set(Behavior::Canned {
        content_type: "text/event-stream".to_owned(),
        body: complete_stream(),
    });
    let q = chat("and a replica?", true);
    let (status, cache, first, _) = send(&b, &q).await;
    assert_eq!((status, cache.as_str()), (200, "miss"), "{first}");
    assert_eq!(wait_entries(&redis, 2).await, 2, "{first}\n{}", b.log());
    let (status, cache, second, _) = send(&a, &q).await;
    assert_eq!((status, cache.as_str()), (200, "hit"), "{second}");
    assert!(!streamed_answer(&first).is_empty());
    assert_eq!(streamed_answer(&second), streamed_answer(&first));
    assert!(second.trim_end().ends_with("data: [DONE]"), "{second}");
    assert_eq!(mock.requests().len(), 2, "the streamed hit went upstream");
    assert_eq!(from_redis(&a).await, 1.0);
}

#[tokio::test]
async fn with_redis_killed_both_replicas_keep_serving_and_sharing_resumes_when_it_is_back() {
    let redis = Redis::start();
    let port = redis.addr().port();
    let mock = Mock::start().await;
    let (a, b) = replicas(&mock, &redis).await;

    // Warm: one answer shared (A stored it, B kept its Redis hit in memory).
    let warm = chat("warm", false);
    assert_eq!(send(&a, &warm).await.1, "miss");
    assert_eq!(wait_entries(&redis, 1).await, 1);
    assert_eq!(send(&b, &warm).await.1, "hit");
    // Misses with a healthy Redis, for comparison.
    let mut healthy = Vec::new();
    for i in 0..10 {
        let s = if i % 2 == 0 { &a } else { &b };
        let (status, cache, _, took) = send(s, &chat(&format!("healthy {i}"), false)).await;
        assert_eq!((status, cache.as_str()), (200, "miss"));
        healthy.push(took);
    }

    drop(redis);
    let upstream_before = mock.requests().len();
    // Distinct requests on both replicas: every one answered (upstream), none waiting much
    // past the tier's timeout.
    let mut killed = Vec::new();
    for i in 0..20 {
        let s = if i % 2 == 0 { &a } else { &b };
        let (status, cache, body, took) = send(s, &chat(&format!("killed {i}"), false)).await;
        assert_eq!((status, cache.as_str()), (200, "miss"), "{body}");
        killed.push(took);
    }
    assert_eq!(mock.requests().len(), upstream_before + 20);
    // What each replica holds in memory is still served.
    for s in [&a, &b] {
        let (status, cache, _, _) = send(s, &warm).await;
        assert_eq!((status, cache.as_str()), (200, "hit"));
    }
    assert_eq!(mock.requests().len(), upstream_before + 20);
    eprintln!(
        "misses: median / slowest with Redis healthy {:?} / {:?}, with Redis killed {:?} / {:?} (tier timeout {TIMEOUT_MS} ms)",
        median(&healthy),
        slowest(&healthy),
        median(&killed),
        slowest(&killed)
    );
    assert!(
        slowest(&killed) < slowest(&healthy) + Duration::from_millis(TIMEOUT_MS + 500),
        "a request waited on the dead Redis: {killed:?}"
    );
    let errors = a.metric("sluice_cache_redis_errors_total", &[]).await
        + b.metric("sluice_cache_redis_errors_total", &[]).await;
    assert!(errors > 0.0, "the outage was not counted");

    // Redis back (empty) on the same port: each tier reconnects by itself (after its fail-fast
    // pause); an answer stored by A is a hit on B again. Bounded: a fresh question per round
    // (a miss on B would keep it in B's memory), 100 rounds at most.
    let redis = Redis::start_on(port);
    let mut resumed = false;
    for n in 0..100 {
        let q = chat(&format!("back {n}"), false);
        let before = redis.keys(ENTRIES).len();
        assert_eq!(send(&a, &q).await.0, 200);
        if wait_entries_within(&redis, before + 1, Duration::from_millis(100)).await <= before {
            continue;
        }
        let upstream = mock.requests().len();
        let (status, cache, _, _) = send(&b, &q).await;
        assert_eq!(status, 200);
        if cache == "hit" {
            assert_eq!(mock.requests().len(), upstream, "B's hit went upstream");
            resumed = true;
            break;
        }
    }
    assert!(resumed, "sharing did not resume after Redis came back");
}

/// Redis replaced by a server that accepts connections and never answers (a hung Redis): the
/// worst case for the tier's timeout. Misses on both replicas, spread over 2 s (several
/// fail-fast pauses and reconnects): none fails, none waits much past `timeout_ms`.
#[tokio::test]
async fn a_silent_redis_adds_at_most_the_tier_timeout_to_a_request() {
    let redis = Redis::start();
    let port = redis.addr().port();
    let mock = Mock::start().await;
    let (a, b) = replicas(&mock, &redis).await;
    let mut healthy = Vec::new();
    for i in 0..10 {
        let s = if i % 2 == 0 { &a } else { &b };
        let (status, _, _, took) = send(s, &chat(&format!("healthy {i}"), false)).await;
        assert_eq!(status, 200);
        healthy.push(took);
    }
    assert_eq!(wait_entries(&redis, 10).await, 10);

    drop(redis);
    let hole = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = hole.accept().await {
            held.push(sock);
        }
    });
    let mut silent = Vec::new();
    for i in 0..40 {
        let s = if i % 2 == 0 { &a } else { &b };
        let (status, cache, body, took) = send(s, &chat(&format!("silent {i}"), false)).await;
        assert_eq!((status, cache.as_str()), (200, "miss"), "{body}");
        silent.push(took);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "misses: median / slowest with Redis healthy {:?} / {:?}, with Redis silent {:?} / {:?} (tier timeout {TIMEOUT_MS} ms)",
        median(&healthy),
        slowest(&healthy),
        median(&silent),
        slowest(&silent)
    );
    assert!(
        slowest(&silent) < slowest(&healthy) + Duration::from_millis(TIMEOUT_MS + 300),
        "a request waited on the silent Redis past the timeout: {silent:?}"
    );
    let errors = a.metric("sluice_cache_redis_errors_total", &[]).await
        + b.metric("sluice_cache_redis_errors_total", &[]).await;
    assert!(errors > 0.0, "the outage was not counted");
    holder.abort();
}
