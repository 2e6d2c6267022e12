//! Hedging through the real proxy (`routes[].hedge`): a primary that delivers no content by
//! `after_ms` is raced by the next candidate; the first to deliver content is served, the
//! other's connection is closed at once, and the lost attempt is recorded and costed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};
use support::{Behavior, Config, CutEnd, Mock, Pool, Route, Sluice, Tenant};

const KEY_ENV: (&str, &str) = ("SLUICE_TEST_KEY", "sk-real-upstream-key");
const VK: &str = "sk-hedge-virtual-key";
const AFTER_MS: u64 = 300;

/// A role-only chunk: no content, so it never commits a stream.
const ROLE_ONLY: &str = "data: {\"id\":\"PRIMARY-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n";

fn config(primary: &Mock, fallback: &Mock) -> String {
    let breaker = "{breaker: {consecutive_failures: 1000000}}";
    Config::new()
        .pool(Pool::openai("primary", &primary.url()).yaml(breaker))
        .pool(Pool::openai("fallback", &fallback.url()).yaml(breaker))
        .route(
            Route::prefix("chat", "/v1", &["primary", "fallback"]).yaml(&format!(
                "{{failover: {{first_token_ms: 20000}}, hedge: {{after_ms: {AFTER_MS}}}}}"
            )),
        )
        .tenant(Tenant::new("t").virtual_key(VK))
        .to_yaml()
}

fn chat() -> serde_json::Value {
    serde_json::json!({"model": "gpt-4o-mini", "stream": true,
        "messages": [{"role": "user", "content": "hi"}]})
}

/// POST a streamed chat to `base`: (status, time to the first body bytes carrying "Hello",
/// when the first content arrived, the whole body).
async fn stream(base: &str, auth: &str) -> (u16, Duration, Instant, String) {
    let start = Instant::now();
    let mut resp = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(auth)
        .json(&chat())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let mut body = String::new();
    let mut first = None;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        body.push_str(&String::from_utf8_lossy(&chunk));
        if first.is_none() && body.contains("Hello") {
            first = Some(Instant::now());
        }
    }
    let first = first.unwrap_or_else(Instant::now);
    (status, first - start, first, body)
}

#[tokio::test]
async fn a_stalled_primary_is_raced_and_the_fallback_wins_after_after_ms() {
    let (primary, fallback) = (Mock::start().await, Mock::start().await);
    // The primary answers 200, its SSE header and a role-only chunk, then nothing.
    primary.set(Behavior::CutAt {
        body: ROLE_ONLY.as_bytes().to_vec(),
        end: CutEnd::Stall,
    });
    let s = Sluice::start(&config(&primary, &fallback), &[KEY_ENV]);
    // The fallback's own TTFT, called directly (warm).
    let _ = stream(&fallback.url(), "sk-direct").await;
    let (_, direct, _, _) = stream(&fallback.url(), "sk-direct").await;
    let fallback_before = fallback.requests().len();

    let (status, ttft, first_at, body) = stream(&s.proxy, VK).await;
    assert_eq!(status, 200);
    assert!(
        !body.contains("PRIMARY"),
        "a primary byte reached the client: {body}"
    );
    assert!(
        body.contains("Hello") && body.ends_with("data: [DONE]\n\n"),
        "{body}"
    );
    assert_eq!(primary.requests().len(), 1);
    assert_eq!(fallback.requests().len() - fallback_before, 1);
    let after = Duration::from_millis(AFTER_MS);
    println!("hedged TTFT {ttft:?} (after_ms {after:?} + fallback direct {direct:?})");
    assert!(
        ttft >= after,
        "served before the hedge could start: {ttft:?}"
    );
    // A coarse bound (a debug build on a shared machine): the fallback's first content is
    // served as it arrives, not at some later deadline.
    assert!(
        ttft < after + direct + Duration::from_millis(250),
        "{ttft:?} vs {after:?} + {direct:?}"
    );
    // The primary's connection is closed when the fallback wins, not at its deadline.
    let Some(closed) = primary.wait_closed(Duration::from_secs(5)).await else {
        panic!("primary never closed");
    };
    let gap = closed.saturating_duration_since(first_at);
    println!("primary closed {gap:?} after the first content reached the client");
    assert!(gap < Duration::from_millis(100), "{gap:?}");

    assert_eq!(
        s.metric("sluice_hedges_total", &[("route", "chat")]).await,
        1.0
    );
    assert_eq!(
        s.metric("sluice_hedge_wins_total", &[("lane", "hedge")])
            .await,
        1.0
    );
    assert!(
        s.metric("sluice_hedge_cost_tokens_total", &[("pool", "primary")])
            .await
            > 0.0
    );
    let log = s.wait_log(":hedge_lost").await;
    assert!(log.contains(":hedge_lost"), "{log}");
}

#[tokio::test]
async fn a_primary_with_content_in_time_is_never_hedged() {
    let (primary, fallback) = (Mock::start().await, Mock::start().await);
    let s = Sluice::start(&config(&primary, &fallback), &[KEY_ENV]);
    let (status, _, _, body) = stream(&s.proxy, VK).await;
    assert_eq!(status, 200);
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    assert_eq!(primary.requests().len(), 1);
    assert_eq!(fallback.requests().len(), 0, "a hedge was started");
    assert_eq!(s.metric("sluice_hedges_total", &[]).await, 0.0);
}

#[tokio::test]
async fn a_slow_primary_that_delivers_first_wins_and_the_hedge_is_closed() {
    let (primary, fallback) = (Mock::start().await, Mock::start().await);
    // The primary answers after 700 ms; the hedge (started at 300 ms) answers its header and
    // then stalls without content.
    primary.set(Behavior::Delay(Duration::from_millis(700)));
    fallback.set(Behavior::CutAt {
        body: ROLE_ONLY.as_bytes().to_vec(),
        end: CutEnd::Stall,
    });
    let s = Sluice::start(&config(&primary, &fallback), &[KEY_ENV]);
    let (status, _, first_at, body) = stream(&s.proxy, VK).await;
    assert_eq!(status, 200);
    assert!(!body.contains("PRIMARY-1"), "{body}");
    assert!(body.contains("Hello"), "{body}");
    assert_eq!(fallback.requests().len(), 1, "the hedge was not started");
    let Some(closed) = fallback.wait_closed(Duration::from_secs(5)).await else {
        panic!("hedge never closed");
    };
    assert!(closed.saturating_duration_since(first_at) < Duration::from_millis(100));
    assert_eq!(
        s.metric("sluice_hedge_wins_total", &[("lane", "first")])
            .await,
        1.0
    );
    assert!(
        s.metric("sluice_hedge_cost_tokens_total", &[("pool", "fallback")])
            .await
            > 0.0
    );
}

#[tokio::test]
async fn when_every_lane_fails_the_request_fails_over_as_without_hedging() {
    let (primary, fallback) = (Mock::start().await, Mock::start().await);
    primary.set(Behavior::Status(503, None));
    fallback.set(Behavior::Status(503, None));
    let s = Sluice::start(&config(&primary, &fallback), &[KEY_ENV]);
    let (status, _, _, body) = stream(&s.proxy, VK).await;
    // The last upstream answer goes back as it was, as without hedging.
    assert_eq!(status, 503, "{body}");
    assert!(!primary.requests().is_empty() && !fallback.requests().is_empty());
    // Both failed at once: no lane ever waited `after_ms`, so no hedge started.
    assert_eq!(s.metric("sluice_hedges_total", &[]).await, 0.0);
}

#[tokio::test]
async fn a_quick_error_from_the_hedge_does_not_beat_a_primary_that_delivers() {
    let (primary, fallback) = (Mock::start().await, Mock::start().await);
    // The primary answers after 700 ms; the hedge (at 300 ms) is refused at once with a 400
    // the rules serve: it is kept, and the primary's answer wins.
    primary.set(Behavior::Delay(Duration::from_millis(700)));
    fallback.set(Behavior::Status(400, None));
    let s = Sluice::start(&config(&primary, &fallback), &[KEY_ENV]);
    let (status, _, _, body) = stream(&s.proxy, VK).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("Hello") && body.ends_with("data: [DONE]\n\n"),
        "{body}"
    );
    assert_eq!(fallback.requests().len(), 1);
    let log = s.wait_log(":400:held").await;
    assert!(log.contains(":400:held"), "{log}");
    assert_eq!(
        s.metric("sluice_hedge_wins_total", &[("lane", "first")])
            .await,
        1.0
    );
    // An error answer bills nothing: no hedge cost for the fallback.
    assert_eq!(
        s.metric("sluice_hedge_cost_tokens_total", &[("pool", "fallback")])
            .await,
        0.0
    );
}

#[tokio::test]
async fn when_every_lane_fails_the_later_candidates_answer_is_served() {
    let (primary, fallback) = (Mock::start().await, Mock::start().await);
    // The primary stalls until its first-token deadline (1 s); the hedge's 503 came first.
    // As without hedging, the answer of the later candidate in the route's order is served.
    primary.set(Behavior::CutAt {
        body: ROLE_ONLY.as_bytes().to_vec(),
        end: CutEnd::Stall,
    });
    fallback.set(Behavior::Status(503, None));
    let yaml = config(&primary, &fallback).replace("first_token_ms: 20000", "first_token_ms: 1000");
    let s = Sluice::start(&yaml, &[KEY_ENV]);
    let (status, _, _, body) = stream(&s.proxy, VK).await;
    assert_eq!(status, 503, "{body}");
    assert!(!body.contains("PRIMARY"), "{body}");
    assert_eq!(s.metric("sluice_hedges_total", &[]).await, 1.0);
    assert_eq!(s.metric("sluice_hedge_wins_total", &[]).await, 0.0);
}

#[tokio::test]
async fn a_client_that_leaves_mid_race_closes_every_lane() {
    let (primary, fallback) = (Mock::start().await, Mock::start().await);
    for m in [&primary, &fallback] {
        m.set(Behavior::CutAt {
            body: ROLE_ONLY.as_bytes().to_vec(),
            end: CutEnd::Stall,
        });
    }
    let s = Sluice::start(&config(&primary, &fallback), &[KEY_ENV]);
    let request = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.proxy))
        .bearer_auth(VK)
        .json(&chat())
        .send();
    // Both lanes run (the hedge starts at 300 ms), nothing reaches the client; it gives up.
    let gave_up = tokio::time::timeout(Duration::from_millis(700), request).await;
    assert!(gave_up.is_err(), "the client got an answer");
    let left = Instant::now();
    for (name, m) in [("primary", &primary), ("fallback", &fallback)] {
        let Some(closed) = m.wait_closed(Duration::from_secs(5)).await else {
            panic!("{name} never closed");
        };
        let gap = closed.saturating_duration_since(left);
        assert!(gap < Duration::from_millis(100), "{name}: {gap:?}");
    }
    let log = s.wait_log(":client_gone").await;
    assert_eq!(log.matches(":client_gone").count(), 2, "{log}");
}

#[tokio::test]
async fn a_plain_call_is_hedged_at_its_response_header() {
    let (primary, fallback) = (Mock::start().await, Mock::start().await);
    primary.set(Behavior::Delay(Duration::from_millis(2000)));
    let s = Sluice::start(&config(&primary, &fallback), &[KEY_ENV]);
    let start = Instant::now();
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.proxy))
        .bearer_auth(VK)
        .json(&serde_json::json!({"model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    let took = start.elapsed();
    assert!(
        body["choices"][0]["message"]["content"].is_string(),
        "{body}"
    );
    assert!(took >= Duration::from_millis(AFTER_MS), "{took:?}");
    assert!(
        took < Duration::from_millis(1500),
        "waited for the primary: {took:?}"
    );
    // The primary's connection was closed when the fallback won.
    let closed = *primary.slow_closed_at.lock().unwrap();
    assert!(closed.is_some(), "the primary's connection is still open");
}
