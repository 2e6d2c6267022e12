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
    let closed = loop {
        if let Some(t) = *primary.slow_closed_at.lock().unwrap() {
            break t;
        }
        assert!(
            first_at.elapsed() < Duration::from_secs(5),
            "primary never closed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
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
    let log = s.log();
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
    let closed = loop {
        if let Some(t) = *fallback.slow_closed_at.lock().unwrap() {
            break t;
        }
        assert!(
            first_at.elapsed() < Duration::from_secs(5),
            "hedge never closed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
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
    assert!(primary.requests().len() >= 1 && fallback.requests().len() >= 1);
    // Both failed at once: no lane ever waited `after_ms`, so no hedge started.
    assert_eq!(s.metric("sluice_hedges_total", &[]).await, 0.0);
}
