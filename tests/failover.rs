//! Failover between endpoints and pools before the first byte, native errors after it,
//! circuit breakers and key rotation, with in-process mock upstreams.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;
use support::{free_port, Behavior, Config, Mock, Pool, Route, Sluice};

const KEYS: [(&str, &str); 2] = [("KEY_A", "sk-primary-1"), ("KEY_B", "sk-primary-2")];

/// Route /v1 -> [primary, fallback]; `primary_url` may be a dead port; `primary_extra` is
/// YAML merged into the primary pool.
fn config_of(primary_url: &str, fallback: &Mock, primary_extra: &str) -> Config {
    Config::new()
        .pool(
            Pool::openai("primary", primary_url)
                .key_envs(&["KEY_A", "KEY_B"])
                .yaml("timeouts: {connect_ms: 500, ttfb_ms: 500, idle_ms: 2000}")
                .yaml(primary_extra),
        )
        .pool(Pool::openai("fallback", &fallback.url()).key_envs(&["KEY_A"]))
        .route(Route::prefix("main", "/v1", &["primary", "fallback"]))
}

/// [`config_of`] as YAML.
fn config(primary_url: &str, fallback: &Mock, primary_extra: &str) -> String {
    config_of(primary_url, fallback, primary_extra).to_yaml()
}

/// One pool `only` on `url` (key `KEY_A`) with `extra` YAML, routed from /v1.
fn only_config(url: &str, extra: &str) -> String {
    Config::new()
        .pool(Pool::openai("only", url).key_envs(&["KEY_A"]).yaml(extra))
        .route(Route::prefix("main", "/v1", &["only"]))
        .to_yaml()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn chat(s: &Sluice, stream: bool, pad: usize) -> reqwest::RequestBuilder {
    let content = "x".repeat(pad.max(2));
    client()
        .post(format!("{}/v1/chat/completions", s.proxy))
        .json(&serde_json::json!({"model": "gpt-4o", "stream": stream, "messages": [{"role": "user", "content": content}]}))
}

/// Non-stream, stream and a 2 MiB body all get the fallback's 200, counted once each.
async fn assert_fails_over(s: &Sluice, primary: Option<&Mock>, fallback: &Mock) {
    for (stream, pad) in [(false, 2), (true, 2), (false, 2 << 20)] {
        let before = s
            .metric("sluice_requests_total", &[("route", "main")])
            .await;
        let resp = chat(s, stream, pad).send().await.unwrap();
        assert_eq!(resp.status(), 200, "stream={stream} pad={pad}\n{}", s.log());
        let text = resp.text().await.unwrap();
        if stream {
            assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
            assert!(!text.contains("usage"), "hidden usage chunk leaked: {text}");
        }
        let last = fallback.requests().pop().unwrap();
        assert!(last.body.len() > pad, "fallback got the whole body");
        let after = s
            .wait_metric("sluice_requests_total", &[("route", "main")], |v| {
                v > before
            })
            .await;
        assert_eq!(after - before, 1.0, "one request counted once");
    }
    if let Some(p) = primary {
        // The 2 MiB body reached the primary whole before it failed, if it was tried.
        if let Some(big) = p.requests().iter().find(|r| r.body.len() > 2 << 20) {
            assert_eq!(big.body, fallback.requests().pop().unwrap().body);
        }
    }
    // Exact tokens of the one streamed answer, counted once (17 prompt from the mock).
    let prompt = s
        .metric(
            "sluice_tokens_total",
            &[("kind", "prompt"), ("source", "exact")],
        )
        .await;
    assert!(prompt >= 17.0);
}

#[tokio::test]
async fn primary_503_fails_over() {
    let (a, b) = (Mock::start().await, Mock::start().await);
    a.set(Behavior::Status(503, None));
    let s = Sluice::start(&config(&a.url(), &b, ""), &KEYS);
    assert_fails_over(&s, Some(&a), &b).await;
    assert_eq!(
        a.requests().len(),
        3,
        "each request tried the primary first"
    );
    assert!(
        s.metric(
            "sluice_failovers_total",
            &[
                ("from_pool", "primary"),
                ("to_pool", "fallback"),
                ("reason", "503")
            ]
        )
        .await
            >= 3.0
    );
    let log = s.wait_log("primary/").await;
    assert!(
        log.contains("primary/"),
        "attempts listed in the log line\n{log}"
    );
}

#[tokio::test]
async fn a_reset_before_the_header_is_retried_on_the_same_endpoint_then_moved_on() {
    let (a, b) = (Mock::start().await, Mock::start().await);
    let s = Sluice::start(&config(&a.url(), &b, ""), &KEYS);
    // One reset, then healthy: the same endpoint serves on the second try.
    a.set(Behavior::ResetBeforeHeader(1));
    let resp = chat(&s, true, 2).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    assert_eq!(a.requests().len(), 2, "the primary was tried twice");
    assert!(b.requests().is_empty(), "the fallback was not needed");
    // Resets on every try: one retry (the default), then the fallback.
    a.set(Behavior::ResetBeforeHeader(100));
    let resp = chat(&s, false, 2).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // 1 + max_retries tries of the primary; the first may go out on the connection pooled by
    // the first request, and a reused connection failing before any byte is tried once more
    // on a fresh one (as Pingora does) without counting as a retry.
    let tries = a.requests().len() - 2;
    assert!((2..=3).contains(&tries), "{tries} tries of the primary");
    assert_eq!(b.requests().len(), 1);
    let retries = s
        .metric(
            "sluice_upstream_retries_total",
            &[("pool", "primary"), ("reason", "upstream_failed")],
        )
        .await;
    assert_eq!(retries, 2.0, "{}", s.log());
}

#[tokio::test]
async fn primary_429_cools_the_key_down_for_its_retry_after() {
    let (a, b) = (Mock::start().await, Mock::start().await);
    a.set(Behavior::Status(429, Some(30)));
    let s = Sluice::start(&config(&a.url(), &b, ""), &KEYS);
    assert_fails_over(&s, Some(&a), &b).await;
    // Both keys got a 429 once and are cooling down for 30 s: later requests skip the primary.
    let keys: Vec<String> = a
        .requests()
        .iter()
        .map(|r| r.header("authorization").unwrap().to_owned())
        .collect();
    assert_eq!(keys, vec!["Bearer sk-primary-1", "Bearer sk-primary-2"]);
    assert_eq!(
        s.metric(
            "sluice_key_cooldowns_total",
            &[("pool", "primary"), ("reason", "rate_limited")]
        )
        .await,
        2.0
    );
}

#[tokio::test]
async fn connection_refused_fails_over() {
    let b = Mock::start().await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let s = Sluice::start(&config(&dead, &b, ""), &KEYS);
    assert_fails_over(&s, None, &b).await;
}

#[tokio::test]
async fn stall_past_the_ttfb_timeout_fails_over() {
    let (a, b) = (Mock::start().await, Mock::start().await);
    a.set(Behavior::Stall);
    let s = Sluice::start(&config(&a.url(), &b, ""), &KEYS);
    assert_fails_over(&s, Some(&a), &b).await;
    assert!(
        s.metric("sluice_failovers_total", &[("reason", "upstream_timeout")])
            .await
            >= 3.0
    );
}

#[tokio::test]
async fn a_stream_cut_after_three_chunks_ends_with_a_native_error_and_nothing_from_the_fallback() {
    let (a, b) = (Mock::start().await, Mock::start().await);
    a.set(Behavior::CutAfterThree);
    let s = Sluice::start(&config(&a.url(), &b, ""), &KEYS);
    let resp = chat(&s, true, 2).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 4, "{text}");
    for (i, e) in events[..3].iter().enumerate() {
        assert!(e.contains(&format!("part{i}")), "{e}");
    }
    let err: serde_json::Value =
        serde_json::from_str(events[3].trim_start_matches("data: ")).unwrap();
    assert_eq!(err["error"]["code"], "upstream_error");
    assert!(b.requests().is_empty(), "nothing from the fallback");
    // The delivered tokens are counted (estimated: the stream never completed).
    let est = s
        .wait_metric(
            "sluice_tokens_total",
            &[("kind", "completion"), ("source", "estimated")],
            |v| v > 0.0,
        )
        .await;
    assert!(est >= 3.0);
}

#[tokio::test]
async fn breaker_skips_a_dead_endpoint_without_connecting_then_a_probe_closes_it() {
    let (a, b) = (Mock::start().await, Mock::start().await);
    a.set(Behavior::Status(503, None));
    let breaker = "    breaker: {consecutive_failures: 3, open_ms: 6000}\n";
    let s = Sluice::start(&config(&a.url(), &b, breaker), &KEYS);
    for _ in 0..3 {
        assert_eq!(chat(&s, false, 2).send().await.unwrap().status(), 200);
    }
    let opened = std::time::Instant::now();
    assert_eq!(
        s.metric("sluice_breaker_state", &[("pool", "primary")])
            .await,
        2.0,
        "open"
    );
    let (conns, reqs) = (a.connections(), a.requests().len());
    for _ in 0..100 {
        assert_eq!(chat(&s, false, 2).send().await.unwrap().status(), 200);
    }
    assert_eq!(
        a.connections(),
        conns,
        "no connection attempt to the open endpoint"
    );
    assert_eq!(a.requests().len(), reqs);
    assert!(
        s.metric(
            "sluice_endpoint_skips_total",
            &[("pool", "primary"), ("reason", "breaker_open")]
        )
        .await
            >= 100.0
    );
    // The endpoint recovers; after open_ms a half-open probe goes through and closes it.
    a.set(Behavior::Normal);
    assert!(
        opened.elapsed() < Duration::from_millis(6000),
        "100 requests outlasted open_ms"
    );
    tokio::time::sleep(Duration::from_millis(6100).saturating_sub(opened.elapsed())).await;
    assert_eq!(chat(&s, false, 2).send().await.unwrap().status(), 200);
    assert_eq!(
        a.requests().len(),
        reqs + 1,
        "the probe reached the primary"
    );
    assert_eq!(
        s.metric("sluice_breaker_state", &[("pool", "primary")])
            .await,
        0.0,
        "closed"
    );
    let b_before = b.requests().len();
    assert_eq!(chat(&s, false, 2).send().await.unwrap().status(), 200);
    assert_eq!(b.requests().len(), b_before, "traffic back on the primary");
}

#[tokio::test]
async fn a_rejected_key_is_disabled_and_the_next_key_serves() {
    let (a, b) = (Mock::start().await, Mock::start().await);
    a.set(Behavior::RejectKey("sk-primary-1".into()));
    let s = Sluice::start(&config(&a.url(), &b, ""), &KEYS);
    for _ in 0..3 {
        assert_eq!(chat(&s, false, 2).send().await.unwrap().status(), 200);
    }
    let keys: Vec<String> = a
        .requests()
        .iter()
        .map(|r| r.header("authorization").unwrap().to_owned())
        .collect();
    assert_eq!(
        keys,
        vec![
            "Bearer sk-primary-1",
            "Bearer sk-primary-2",
            "Bearer sk-primary-2",
            "Bearer sk-primary-2"
        ]
    );
    assert!(b.requests().is_empty());
    assert_eq!(
        s.metric("sluice_key_cooldowns_total", &[("reason", "unauthorized")])
            .await,
        1.0
    );
}

#[tokio::test]
async fn when_every_pool_fails_the_last_answer_is_returned_as_is() {
    let (a, b) = (Mock::start().await, Mock::start().await);
    a.set(Behavior::Status(503, None));
    b.set(Behavior::Status(529, None));
    let s = Sluice::start(&config(&a.url(), &b, ""), &KEYS);
    let resp = chat(&s, false, 2).send().await.unwrap();
    assert_eq!(resp.status(), 529);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["message"], "mock 529");
    // Both dead and nothing to answer: a native 503 whose retry-after is the earliest cooldown.
    a.set(Behavior::Status(503, Some(7)));
    b.set(Behavior::Status(503, Some(9)));
    let resp = chat(&s, false, 2).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let resp = chat(&s, false, 2).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let ra: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((5..=7).contains(&ra), "retry-after {ra}");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "no_upstream_available");
}

#[tokio::test]
async fn active_health_checks_open_and_close_the_breaker_without_traffic() {
    let (a, b) = (Mock::start().await, Mock::start().await);
    a.set(Behavior::Status(503, None));
    let extra = "    breaker: {consecutive_failures: 2, open_ms: 300}\n    health_check: {path: /v1/models, interval_ms: 100, timeout_ms: 500}\n";
    let s = Sluice::start(&config(&a.url(), &b, extra), &KEYS);
    let open = s
        .wait_metric("sluice_breaker_state", &[("pool", "primary")], |v| v == 2.0)
        .await;
    assert_eq!(open, 2.0, "health checks alone opened the breaker");
    let checks = a.requests();
    assert!(
        checks.len() >= 2
            && checks
                .iter()
                .all(|r| r.path == "/v1/models" && r.method == "GET")
    );
    assert_eq!(
        checks[0].header("authorization"),
        Some("Bearer sk-primary-1")
    );
    a.set(Behavior::Normal);
    let closed = s
        .wait_metric("sluice_breaker_state", &[("pool", "primary")], |v| v == 0.0)
        .await;
    assert_eq!(closed, 0.0, "a passing check closed it");
    assert!(b.requests().is_empty(), "no client traffic was involved");
}

#[tokio::test]
async fn every_endpoint_cooling_after_429s_answers_a_native_429_not_a_503() {
    let (a, b) = (Mock::start().await, Mock::start().await);
    a.set(Behavior::Status(429, Some(30)));
    b.set(Behavior::Status(429, Some(20)));
    let s = Sluice::start(&config(&a.url(), &b, ""), &KEYS);
    // The first two requests meet the 429s themselves (primary has two keys): the last
    // upstream answer comes back as-is.
    for _ in 0..2 {
        let resp = chat(&s, false, 2).send().await.unwrap();
        assert_eq!(resp.status(), 429);
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["message"], "mock 429");
    }
    // Now every key cools down: sluice answers for them, as a rate limit with the earliest end.
    let resp = chat(&s, false, 2).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    let ra: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((18..=20).contains(&ra), "retry-after {ra}");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
}

#[tokio::test]
async fn a_lone_pool_past_its_timeouts_answers_native_504s() {
    let a = Mock::start().await;
    let cfg = only_config(
        &a.url(),
        "timeouts: {connect_ms: 500, ttfb_ms: 400, idle_ms: 300}",
    );
    let s = Sluice::start(&cfg, &KEYS);
    // Time to first byte: nothing answers.
    a.set(Behavior::Stall);
    let resp = chat(&s, false, 2).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_timeout");
    // The log line is written just after the response.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !s.log().contains("error=\"upstream_timeout\"") {
        assert!(
            std::time::Instant::now() < deadline,
            "the log line names the timeout:\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Route /v1 -> [primary, fallback] with the primary's TTFB timeout at `ttfb_ms` and its
/// `breaker` settings.
fn breaker_config(primary: &Mock, fallback: &Mock, ttfb_ms: u64, breaker: &str) -> Config {
    config_of(
        &primary.url(),
        fallback,
        &format!("{{breaker: {breaker}, timeouts: {{ttfb_ms: {ttfb_ms}}}}}"),
    )
}

/// `cfg` with one more route, /v2 -> [fallback]: a change unrelated to the primary pool.
fn with_extra_route(cfg: &Config) -> String {
    cfg.clone()
        .route(Route::prefix("extra", "/v2", &["fallback"]))
        .to_yaml()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_calls_against_a_half_open_breaker_send_one_probe() {
    let (a, b) = (Mock::start().await, Mock::start().await);
    a.set(Behavior::Status(503, None));
    let cfg = breaker_config(&a, &b, 3_000, "{consecutive_failures: 1, open_ms: 300}");
    let s = Sluice::start(&cfg.to_yaml(), &KEYS);
    assert_eq!(chat(&s, false, 2).send().await.unwrap().status(), 200);
    assert_eq!(
        s.metric("sluice_breaker_state", &[("pool", "primary")])
            .await,
        2.0,
        "open after one 503"
    );
    // The endpoint now stalls; once open_ms is over, ten calls arrive together.
    a.set(Behavior::Stall);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (reqs, conns) = (a.requests().len(), a.connections());
    let calls = (0..10).map(|_| {
        let req = chat(&s, false, 2);
        tokio::spawn(async move {
            let t0 = std::time::Instant::now();
            let status = req.send().await.unwrap().status();
            (status, t0.elapsed())
        })
    });
    let mut results = Vec::new();
    for c in calls.collect::<Vec<_>>() {
        results.push(c.await.unwrap());
    }
    assert!(results.iter().all(|(st, _)| *st == 200), "{results:?}");
    assert_eq!(a.requests().len(), reqs + 1, "exactly one probe reached it");
    assert!(
        a.connections() <= conns + 1,
        "at most one connection (the probe may reuse a pooled one)"
    );
    let mut times: Vec<Duration> = results.iter().map(|(_, t)| *t).collect();
    times.sort();
    assert!(
        times[8] < Duration::from_millis(1_500),
        "nine did not wait for the stall: {times:?}"
    );
    assert!(
        times[9] >= Duration::from_millis(2_900),
        "the probe waited out the TTFB timeout: {times:?}"
    );
    assert_eq!(
        s.metric(
            "sluice_endpoint_skips_total",
            &[("pool", "primary"), ("reason", "half_open_probe_in_flight")]
        )
        .await,
        9.0
    );
    assert_eq!(
        s.metric("sluice_breaker_state", &[("pool", "primary")])
            .await,
        2.0,
        "the failed probe reopened it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_fallback_the_callers_behind_a_half_open_probe_get_a_native_503_at_once() {
    let a = Mock::start().await;
    a.set(Behavior::Status(503, None));
    let cfg = only_config(
        &a.url(),
        "{timeouts: {connect_ms: 500, ttfb_ms: 3000, idle_ms: 2000}, breaker: {consecutive_failures: 1, open_ms: 300}}",
    );
    let s = Sluice::start(&cfg, &KEYS);
    assert_eq!(chat(&s, false, 2).send().await.unwrap().status(), 503);
    a.set(Behavior::Stall);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let reqs = a.requests().len();
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let req = chat(&s, false, 2);
            tokio::spawn(async move {
                let t0 = std::time::Instant::now();
                let resp = req.send().await.unwrap();
                let status = resp.status().as_u16();
                let v: serde_json::Value = resp.json().await.unwrap();
                (status, v["error"]["code"].clone(), t0.elapsed())
            })
        })
        .collect();
    let mut results = Vec::new();
    for c in calls {
        results.push(c.await.unwrap());
    }
    results.sort_by_key(|r| r.2);
    assert_eq!(a.requests().len(), reqs + 1, "exactly one probe reached it");
    for (status, code, took) in &results[..9] {
        assert_eq!(*status, 503, "{results:?}");
        assert_eq!(code, "no_upstream_available");
        assert!(*took < Duration::from_millis(1_500), "{results:?}");
    }
    let (status, code, _) = &results[9];
    assert_eq!((*status, code.as_str()), (504, Some("upstream_timeout")));
}

#[tokio::test]
async fn a_breaker_open_before_a_reload_is_still_open_after_it() {
    let (a, b) = (Mock::start().await, Mock::start().await);
    a.set(Behavior::Status(503, None));
    let cfg = breaker_config(&a, &b, 500, "{consecutive_failures: 2, open_ms: 600000}");
    let s = Sluice::start(&cfg.to_yaml(), &KEYS);
    for _ in 0..2 {
        assert_eq!(chat(&s, false, 2).send().await.unwrap().status(), 200);
    }
    assert_eq!(
        s.metric("sluice_breaker_state", &[("pool", "primary")])
            .await,
        2.0
    );
    let conns = a.connections();
    // An unrelated change: one more route.
    s.reload(&with_extra_route(&cfg)).await;
    for _ in 0..20 {
        assert_eq!(chat(&s, false, 2).send().await.unwrap().status(), 200);
    }
    assert_eq!(a.connections(), conns, "no connection to the open endpoint");
    assert_eq!(
        s.metric("sluice_breaker_state", &[("pool", "primary")])
            .await,
        2.0,
        "still open"
    );
}

#[tokio::test]
async fn a_key_disabled_by_a_401_stays_disabled_across_a_reload() {
    let (a, b) = (Mock::start().await, Mock::start().await);
    a.set(Behavior::RejectKey("sk-primary-1".into()));
    let cfg = config_of(&a.url(), &b, "");
    let s = Sluice::start(&cfg.to_yaml(), &KEYS);
    assert_eq!(chat(&s, false, 2).send().await.unwrap().status(), 200);
    s.reload(&with_extra_route(&cfg)).await;
    for _ in 0..3 {
        assert_eq!(chat(&s, false, 2).send().await.unwrap().status(), 200);
    }
    let keys: Vec<String> = a
        .requests()
        .iter()
        .map(|r| r.header("authorization").unwrap().to_owned())
        .collect();
    assert_eq!(
        keys,
        vec![
            "Bearer sk-primary-1",
            "Bearer sk-primary-2",
            "Bearer sk-primary-2",
            "Bearer sk-primary-2",
            "Bearer sk-primary-2"
        ],
        "the rejected key is not tried again after the reload"
    );
    assert!(b.requests().is_empty());
}

#[tokio::test]
async fn a_429_for_one_model_does_not_hold_back_another_on_the_same_key() {
    let a = Mock::start().await;
    a.set(Behavior::StatusForModel("gpt-4o".into(), 429, Some(30)));
    let cfg = only_config(&a.url(), "");
    let s = Sluice::start(&cfg, &KEYS);
    let send = |model: &str| {
        client()
            .post(format!("{}/v1/chat/completions", s.proxy))
            .json(&serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    let first = send("gpt-4o").await.unwrap();
    assert_eq!(first.status(), 429);
    let v: serde_json::Value = first.json().await.unwrap();
    assert_eq!(
        v["error"]["message"], "mock 429",
        "the upstream's own answer"
    );
    // gpt-4o's key is cooling down: sluice answers without asking the upstream.
    let second = send("gpt-4o").await.unwrap();
    assert_eq!(second.status(), 429);
    let v: serde_json::Value = second.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert_eq!(a.requests().len(), 1);
    // Another model on the same key reaches the upstream.
    for _ in 0..3 {
        let other = send("gpt-4o-mini").await.unwrap();
        assert_eq!(other.status(), 200);
    }
    let models: Vec<String> = a
        .requests()
        .iter()
        .map(|r| r.json()["model"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        models,
        vec!["gpt-4o", "gpt-4o-mini", "gpt-4o-mini", "gpt-4o-mini"]
    );
}

/// 1 MiB, 5 MiB and 32 MiB (the default cap) bodies reach the failing primary and then the
/// fallback byte-identical to what the client sent: every attempt sends the one held buffer.
#[tokio::test]
async fn bodies_up_to_the_cap_fail_over_byte_identical() {
    let (a, b) = (Mock::start().await, Mock::start().await);
    a.set(Behavior::Status(503, None));
    let s = Sluice::start(&config(&a.url(), &b, ""), &KEYS);
    for size in [1usize << 20, 5 << 20, 32 << 20] {
        // A JSON body of exactly `size` bytes whose content varies byte by byte.
        let head = br#"{"model":"gpt-4o","messages":[{"role":"user","content":""#;
        let tail = br#""}]}"#;
        let mut body = head.to_vec();
        let fill = size - head.len() - tail.len();
        body.extend((0..fill).map(|i| b'a' + (i % 26) as u8));
        body.extend_from_slice(tail);
        assert_eq!(body.len(), size);
        let resp = client()
            .post(format!("{}/v1/chat/completions", s.proxy))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "size {size}\n{}", s.log());
        let primary = a.requests().pop().expect("the primary was tried");
        let fallback = b.requests().pop().expect("the fallback served");
        assert!(
            primary.body == body,
            "primary got a different {size}-byte body"
        );
        assert!(
            fallback.body == body,
            "fallback got a different {size}-byte body"
        );
    }
}

#[tokio::test]
async fn a_client_that_leaves_while_a_4xx_body_is_read_closes_the_upstream_at_once() {
    let (a, b) = (Mock::start().await, Mock::start().await);
    // The rules read 4xx bodies (an error code is listed); this one stalls mid-body.
    a.set(Behavior::StallInErrorBody(400));
    let yaml = Config::new()
        .pool(Pool::openai("primary", &a.url()).key_envs(&["KEY_A"]))
        .pool(Pool::openai("fallback", &b.url()).key_envs(&["KEY_A"]))
        .route(
            Route::prefix("main", "/v1", &["primary", "fallback"])
                .yaml("{failover: {retry_on_error_codes: [context_length_exceeded]}}"),
        )
        .to_yaml();
    let s = Sluice::start(&yaml, &KEYS);
    let gave_up = tokio::time::timeout(Duration::from_millis(400), chat(&s, false, 2).send()).await;
    assert!(
        gave_up.is_err(),
        "nothing was answered while the body was read"
    );
    let left = std::time::Instant::now();
    let deadline = left + Duration::from_secs(5);
    let closed = loop {
        if let Some(at) = *a.slow_closed_at.lock().unwrap() {
            break at;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "upstream not closed\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let after = closed.saturating_duration_since(left);
    assert!(
        after < Duration::from_millis(100),
        "closed {after:?} after the client left"
    );
    assert!(b.requests().is_empty());
}
