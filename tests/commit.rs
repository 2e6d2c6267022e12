//! Commit on content through the real proxy: a primary that answers 200 and its SSE header
//! and then stalls, resets, ends or sends an error event before any output fails over to the
//! fallback, and the client receives only the fallback's stream; an error the route does not
//! fail over on is served as the upstream sent it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{Behavior, Config, CutEnd, Mock, Pool, Route, Sluice, Tenant};

const KEY_ENV: (&str, &str) = ("SLUICE_TEST_KEY", "sk-real-upstream-key");
const VK: &str = "sk-commit-virtual-key";
/// Marks every byte the primary sends.
const MARK: &str = "PRIMARY";

fn config(primary: &Mock, fallback: &Mock) -> String {
    let breaker = "{breaker: {consecutive_failures: 1000000}}";
    let failover = "{failover: {first_token_ms: 300}}";
    Config::new()
        .pool(Pool::openai("primary", &primary.url()).yaml(breaker))
        .pool(Pool::openai("fallback", &fallback.url()))
        .pool(Pool::anthropic("primary-anth", &primary.url()).yaml(breaker))
        .pool(Pool::anthropic("fallback-anth", &fallback.url()))
        .route(
            Route::prefix(
                "messages",
                "/v1/messages",
                &["primary-anth", "fallback-anth"],
            )
            .yaml(failover),
        )
        .route(Route::prefix("chat", "/v1", &["primary", "fallback"]).yaml(failover))
        .tenant(Tenant::new("t").virtual_key(VK))
        .to_yaml()
}

async fn post(s: &Sluice, path: &str, body: serde_json::Value) -> (u16, String) {
    let resp = reqwest::Client::new()
        .post(format!("{}{path}", s.proxy))
        .bearer_auth(VK)
        .json(&body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

fn chat() -> serde_json::Value {
    serde_json::json!({"model": "gpt-4o-mini", "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "hi"}]})
}

const ROLE_ONLY: &str = "data: {\"id\":\"PRIMARY-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n";

#[tokio::test]
async fn a_primary_that_fails_before_content_fails_over_to_the_fallback() {
    let (primary, fallback) = (Mock::start().await, Mock::start().await);
    let s = Sluice::start(&config(&primary, &fallback), &[KEY_ENV]);
    for (end, reason) in [
        (CutEnd::Stall, "no_content_timeout"),
        (CutEnd::Reset, "cut_before_content"),
        (CutEnd::Eof, "cut_before_content"),
    ] {
        primary.set(Behavior::CutAt {
            body: ROLE_ONLY.as_bytes().to_vec(),
            end,
        });
        let before = s
            .metric("sluice_failovers_total", &[("reason", reason)])
            .await;
        let fallback_before = fallback.requests().len();
        let (status, body) = post(&s, "/v1/chat/completions", chat()).await;
        assert_eq!(status, 200, "{end:?}");
        assert!(
            !body.contains(MARK),
            "{end:?}: a primary byte reached the client: {body}"
        );
        assert!(
            body.contains("Hello from") || body.contains("\"Hello\""),
            "{end:?}: {body}"
        );
        assert!(body.ends_with("data: [DONE]\n\n"), "{end:?}: {body}");
        assert_eq!(fallback.requests().len(), fallback_before + 1, "{end:?}");
        let after = s
            .wait_metric("sluice_failovers_total", &[("reason", reason)], |v| {
                v > before
            })
            .await;
        assert_eq!(after, before + 1.0, "{end:?}");
    }
    assert_eq!(primary.requests().len(), 3);
    assert_eq!(
        s.metric("sluice_stream_commits_total", &[("on", "content")])
            .await,
        3.0
    );
}

fn anthropic_stream(error_type: &str) -> String {
    format!(
        "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_{MARK}\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"usage\":{{\"input_tokens\":5,\"output_tokens\":1}}}}}}\n\n\
         event: ping\ndata: {{\"type\":\"ping\"}}\n\n\
         event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"{error_type}\",\"message\":\"{MARK} {error_type}\"}}}}\n\n"
    )
}

const FALLBACK_MESSAGE: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_fb\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

fn message() -> serde_json::Value {
    serde_json::json!({"model": "claude-sonnet-4-6", "max_tokens": 16, "stream": true,
        "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn an_error_event_before_content_fails_over_only_when_its_status_would() {
    let (primary, fallback) = (Mock::start().await, Mock::start().await);
    let s = Sluice::start(&config(&primary, &fallback), &[KEY_ENV]);

    fallback.set(Behavior::Canned {
        content_type: "text/event-stream".into(),
        body: FALLBACK_MESSAGE.into(),
    });
    // overloaded_error stands for 529, which the route fails over on.
    primary.set(Behavior::Canned {
        content_type: "text/event-stream".into(),
        body: anthropic_stream("overloaded_error"),
    });
    let (status, body) = post(&s, "/v1/messages", message()).await;
    assert_eq!(status, 200);
    assert!(!body.contains(MARK), "{body}");
    assert_eq!(body, FALLBACK_MESSAGE);
    assert_eq!(fallback.requests().len(), 1);

    // invalid_request_error stands for 400: served as the upstream sent it.
    primary.set(Behavior::Canned {
        content_type: "text/event-stream".into(),
        body: anthropic_stream("invalid_request_error"),
    });
    let (status, body) = post(&s, "/v1/messages", message()).await;
    assert_eq!(status, 200);
    assert_eq!(body, anthropic_stream("invalid_request_error"));
    assert_eq!(fallback.requests().len(), 1, "no second upstream request");
    assert_eq!(primary.requests().len(), 2);
    assert_eq!(
        s.wait_metric("sluice_stream_commits_total", &[("on", "error")], |v| v
            >= 1.0)
            .await,
        1.0
    );
}

#[tokio::test]
async fn the_first_token_deadline_also_bounds_the_wait_for_the_header() {
    let (primary, fallback) = (Mock::start().await, Mock::start().await);
    let s = Sluice::start(&config(&primary, &fallback), &[KEY_ENV]);
    primary.set(Behavior::Stall);
    let start = std::time::Instant::now();
    let (status, body) = post(&s, "/v1/chat/completions", chat()).await;
    let took = start.elapsed();
    assert_eq!(status, 200);
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    assert_eq!(fallback.requests().len(), 1);
    // first_token_ms is 300; the pool's ttfb_ms is the default 120 s.
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn a_client_that_leaves_during_the_hold_closes_the_upstream_at_once() {
    let (primary, fallback) = (Mock::start().await, Mock::start().await);
    // The primary sends its header and a role-only chunk, then nothing; the first-token
    // deadline is far away, so only the client leaving can end the hold.
    primary.set(Behavior::CutAt {
        body: ROLE_ONLY.as_bytes().to_vec(),
        end: CutEnd::Stall,
    });
    let yaml = Config::new()
        .pool(Pool::openai("primary", &primary.url()))
        .pool(Pool::openai("fallback", &fallback.url()))
        .route(
            Route::prefix("chat", "/v1", &["primary", "fallback"])
                .yaml("{failover: {first_token_ms: 20000}}"),
        )
        .tenant(Tenant::new("t").virtual_key(VK))
        .to_yaml();
    let s = Sluice::start(&yaml, &[KEY_ENV]);
    let request = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.proxy))
        .bearer_auth(VK)
        .json(&chat())
        .send();
    // The response header is held too: the client waits, then gives up.
    let gave_up = tokio::time::timeout(std::time::Duration::from_millis(500), request).await;
    assert!(
        gave_up.is_err(),
        "nothing reached the client during the hold"
    );
    let left = std::time::Instant::now();
    let Some(closed) = primary.wait_closed(std::time::Duration::from_secs(5)).await else {
        panic!(
            "upstream not closed
{}",
            s.log()
        );
    };
    let after = closed.saturating_duration_since(left);
    assert!(
        after < std::time::Duration::from_millis(100),
        "upstream closed {after:?} after the client left"
    );
    assert!(
        fallback.requests().is_empty(),
        "no failover for a client that left"
    );
    let entry = s.wait_log(":200:client_gone").await;
    assert!(entry.contains(":200:client_gone"), "{entry}");
}

#[tokio::test]
async fn a_held_primary_past_its_deadline_is_closed_before_the_next_candidate_answers() {
    let (primary, fallback) = (Mock::start().await, Mock::start().await);
    primary.set(Behavior::CutAt {
        body: ROLE_ONLY.as_bytes().to_vec(),
        end: CutEnd::Stall,
    });
    // The fallback never answers: it is given up at its own first-token deadline, 300 ms
    // after the primary's.
    fallback.set(Behavior::Stall);
    let yaml = Config::new()
        .pool(Pool::openai("primary", &primary.url()))
        .pool(Pool::openai("fallback", &fallback.url()))
        .route(
            Route::prefix("chat", "/v1", &["primary", "fallback"])
                .yaml("{failover: {first_token_ms: 300}}"),
        )
        .tenant(Tenant::new("t").virtual_key(VK))
        .to_yaml();
    let s = Sluice::start(&yaml, &[KEY_ENV]);
    let sent = std::time::Instant::now();
    let (status, body) = post(&s, "/v1/chat/completions", chat()).await;
    let answered = sent.elapsed();
    // Nothing served: the primary's answer as far as it went, ending in a native error.
    assert_eq!(status, 200);
    assert!(body.contains("\"error\""), "{body}");
    assert!(
        answered >= std::time::Duration::from_millis(550),
        "{answered:?}"
    );
    let closed = primary
        .slow_closed_at
        .lock()
        .unwrap()
        .expect("primary closed");
    let after = closed.saturating_duration_since(sent);
    assert!(
        after < std::time::Duration::from_millis(500),
        "the stalled primary was closed {after:?} after the request, not at its deadline"
    );
}
