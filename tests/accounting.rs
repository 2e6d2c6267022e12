//! Integration tests for the bounds on response accounting: an SSE line far over
//! `accounting.max_sse_event_bytes` streams through with bounded memory and estimated tokens,
//! and usage beyond `accounting.max_usage_tokens` is estimated instead of billed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;
use support::{
    proc_status_kib, reset_peak_rss, Behavior, Config, Mock, Pool, Route, Sluice, Tenant,
};

const KEY_ENV: (&str, &str) = ("SLUICE_TEST_KEY", "sk-real-upstream-key");
const VK: &str = "sk-accounting-virtual-key";

/// An openai pool and an anthropic pool on `mock`; tenant `t` (virtual key `VK`) with a
/// token limit and a daily budget, and a price for every model.
fn config(mock: &Mock, extra: &str) -> String {
    Config::new()
        .pool(Pool::openai("p", &mock.url()))
        .pool(Pool::anthropic("anth", &mock.url()))
        .route(Route::prefix("messages", "/v1/messages", &["anth"]))
        .route(Route::prefix("main", "/v1", &["p"]))
        .tenant(
            Tenant::new("t")
                .virtual_key(VK)
                .limits("{tokens_per_minute: 1000000, budget: {usd_per_day: 1.0}}"),
        )
        .yaml("models: [{match: \"*\", price: {input_per_1m: 10.0, output_per_1m: 30.0}}]")
        .yaml(extra)
        .to_yaml()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

fn chat(s: &Sluice, body: serde_json::Value) -> reqwest::RequestBuilder {
    client()
        .post(format!("{}/v1/chat/completions", s.proxy))
        .bearer_auth(VK)
        .json(&body)
}

/// Streams one request whose upstream sends a `line_bytes` SSE line; checks that the client
/// gets a first MiB of the line while the mock is held at `pause_at`, and the whole body in
/// the end. Returns the bytes of the big line the client received.
async fn stream_huge_line(s: &Sluice, mock: &Mock, body: serde_json::Value, line_bytes: usize) {
    let pause_at = 8 << 20;
    mock.set(Behavior::HugeSseLine {
        line_bytes,
        pause_at,
    });
    let mut resp = chat(s, body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut xs = 0usize;
    let mut released = false;
    let mut tail = Vec::new();
    // Bounded: the mock waits at `pause_at` for the gate, so without incremental delivery
    // this loop times out instead of hanging.
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), resp.chunk())
        .await
        .expect("no bytes for 60 s: the line is being held")
        .unwrap()
    {
        xs += chunk.iter().filter(|&&b| b == b'x').count();
        if !released && xs >= 1 << 20 {
            // A first MiB of the line arrived while the upstream is still in the middle of
            // it (held at `pause_at`, far from its end).
            assert!(xs <= pause_at, "{xs} bytes of the line before the gate");
            mock.gate.notify_one();
            released = true;
        }
        tail.extend_from_slice(&chunk);
        let keep = tail.len().saturating_sub(256);
        tail.drain(..keep);
    }
    assert!(released, "the client never got 1 MiB of the line");
    assert_eq!(xs, line_bytes, "every byte of the line arrived");
    let tail = String::from_utf8_lossy(&tail);
    assert!(tail.ends_with("data: [DONE]\n\n"), "{tail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_sse_line_streams_through_in_bounded_memory_with_estimated_tokens() {
    let mock = Mock::start().await;
    // One worker thread: every stream is relayed on the same thread, so the baseline and the
    // measured runs draw on the same allocator arena (with two, a run served by the thread the
    // baseline did not warm shows the arena's first use, not the line, as growth).
    let s = Sluice::start(&config(&mock, "server: {threads: 1}"), &[KEY_ENV]);
    let pid = s.pid();
    let cap_kib = 4 * 1024; // the default accounting.max_sse_event_bytes
    let hidden = serde_json::json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let asked = serde_json::json!({"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true}, "messages": []});
    // Baseline: the peak RSS over one 64 MiB line in each mode (the same code paths, so the
    // tokenizer tables and what the allocator keeps for reuse are in it).
    reset_peak_rss(pid);
    stream_huge_line(&s, &mock, hidden.clone(), 64 << 20).await;
    stream_huge_line(&s, &mock, asked.clone(), 64 << 20).await;
    let estimated = [
        ("tenant", "t"),
        ("kind", "completion"),
        ("source", "estimated"),
    ];
    let mut requests = 2.0;
    // Their tokens are estimated after the response (tokenizer tables built on first need, a
    // blocking thread's caches): the baseline is read once both are logged, or that work
    // would land in the growth measured below.
    s.wait_metric("sluice_requests_total", &[("route", "main")], |v| {
        v >= requests
    })
    .await;
    let baseline = proc_status_kib(pid, "VmHWM");

    for (mode, body) in [("hide", hidden), ("as asked", asked)] {
        // Every request so far logged, so the next estimate is this mode's own.
        let logged = s
            .wait_metric("sluice_requests_total", &[("route", "main")], |v| {
                v >= requests
            })
            .await;
        assert_eq!(logged, requests);
        let before = s.metric("sluice_tokens_total", &estimated).await;
        let oversized = s
            .metric("sluice_sse_oversized_events_total", &[("route", "main")])
            .await;
        // The smaller growth of at most two runs: a buffer that grows with the line would
        // show in both; the allocator's own noise (a new arena on another thread) rarely does.
        let mut growth = u64::MAX;
        for run in 0..2 {
            reset_peak_rss(pid);
            stream_huge_line(&s, &mock, body.clone(), 200 << 20).await;
            requests += 1.0;
            let peak = proc_status_kib(pid, "VmHWM");
            growth = growth.min(peak.saturating_sub(baseline));
            eprintln!(
                "{mode} run {run}: baseline peak {baseline} KiB, peak over a 200 MiB line {peak} KiB, growth {} KiB (cap {cap_kib} KiB)",
                peak.saturating_sub(baseline)
            );
            if growth < 2 * cap_kib {
                break;
            }
        }
        assert!(
            growth < 2 * cap_kib,
            "{mode}: RSS grew by {growth} KiB for a 200 MiB line (cap {cap_kib} KiB)"
        );
        // The oversized event is counted, and the request's tokens were estimated.
        let counted = s
            .metric("sluice_sse_oversized_events_total", &[("route", "main")])
            .await;
        assert!(counted > oversized, "{mode}: oversized event not counted");
        let after = s
            .wait_metric("sluice_tokens_total", &estimated, |v| v > before)
            .await;
        assert!(after > before, "{mode}: completion tokens not estimated");
    }
    let log = s.wait_log("forwarded unparsed").await;
    assert!(log.contains("forwarded unparsed"), "{log}");
}

/// u64::MAX in every usage field, on the three paths usage is read from.
fn u64_max_replies() -> Vec<(&'static str, &'static str, Behavior)> {
    let max = u64::MAX;
    let chat_sse = format!(
        "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"hello there\"}}}}],\"usage\":null}}\n\n\
data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":{max},\"completion_tokens\":{max},\"total_tokens\":{max}}}}}\n\n\
data: [DONE]\n\n"
    );
    let anthropic_sse = format!(
        "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"usage\":{{\"input_tokens\":{max},\"cache_read_input_tokens\":{max},\"output_tokens\":1}}}}}}\n\n\
event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"hello there\"}}}}\n\n\
event: message_delta\ndata: {{\"type\":\"message_delta\",\"usage\":{{\"output_tokens\":{max}}}}}\n\n\
event: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n"
    );
    let chat_json = format!(
        "{{\"id\":\"c\",\"object\":\"chat.completion\",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":\"hello there\"}}}}],\"usage\":{{\"prompt_tokens\":{max},\"completion_tokens\":{max},\"total_tokens\":{max}}}}}"
    );
    let sse = |body: String| Behavior::Canned {
        content_type: "text/event-stream".to_owned(),
        body,
    };
    vec![
        ("main", "/v1/chat/completions", sse(chat_sse)),
        ("messages", "/v1/messages", sse(anthropic_sse)),
        (
            "main",
            "/v1/chat/completions",
            Behavior::Canned {
                content_type: "application/json".to_owned(),
                body: chat_json,
            },
        ),
    ]
}

#[tokio::test]
async fn u64_max_usage_is_estimated_never_billed_and_never_wraps_a_counter() {
    let mock = Mock::start().await;
    let s = Sluice::start(&config(&mock, ""), &[KEY_ENV]);
    for (i, (route, path, reply)) in u64_max_replies().into_iter().enumerate() {
        let stream = i < 2;
        mock.set(reply);
        let implausible = s
            .metric("sluice_usage_implausible_total", &[("route", route)])
            .await;
        let resp = client()
            .post(format!("{}{path}", s.proxy))
            .bearer_auth(VK)
            .header("anthropic-version", "2023-06-01")
            .json(&serde_json::json!({"model": "gpt-4o", "stream": stream, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "case {i}");
        let body = resp.text().await.unwrap();
        assert!(body.contains("hello there"), "case {i}: {body}");
        let counted = s
            .wait_metric("sluice_usage_implausible_total", &[("route", route)], |v| {
                v > implausible
            })
            .await;
        assert_eq!(counted, implausible + 1.0, "case {i}");
    }
    // Once the three requests are logged: nothing was billed as exact, the estimates are
    // small, no counter wrapped.
    for (route, n) in [("main", 2.0), ("messages", 1.0)] {
        let done = s
            .wait_metric("sluice_requests_total", &[("route", route)], |v| v >= n)
            .await;
        assert_eq!(done, n);
    }
    let exact = s
        .metric(
            "sluice_tokens_total",
            &[("tenant", "t"), ("source", "exact")],
        )
        .await;
    assert_eq!(exact, 0.0);
    let estimated = s
        .metric(
            "sluice_tokens_total",
            &[("tenant", "t"), ("source", "estimated")],
        )
        .await;
    assert!(estimated > 0.0 && estimated < 1e4, "estimated {estimated}");
    let settled = s
        .wait_metric("sluice_tokens_settled_total", &[("tenant", "t")], |v| {
            v > 0.0
        })
        .await;
    assert!(settled > 0.0 && settled < 1e4, "settled {settled}");
    let spend = s.metric("sluice_spend_usd_total", &[("tenant", "t")]).await;
    assert!(spend < 0.01, "spend {spend} USD");
    let log = s.wait_log("over the plausibility bound").await;
    assert!(log.contains("over the plausibility bound"), "{log}");

    // The tenant is not refused afterwards, and plausible usage is exact again.
    mock.set(Behavior::Normal);
    let resp = chat(&s, serde_json::json!({"model": "gpt-4o", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let exact = s
        .wait_metric(
            "sluice_tokens_total",
            &[("tenant", "t"), ("source", "exact")],
            |v| v > 0.0,
        )
        .await;
    assert!(exact > 0.0);
    let remaining = s
        .metric(
            "sluice_budget_remaining_usd",
            &[("tenant", "t"), ("period", "day")],
        )
        .await;
    assert!(remaining > 0.99, "budget left {remaining}");
}

#[tokio::test]
async fn the_accounting_bounds_are_configurable() {
    let mock = Mock::start().await;
    // A plausibility bound of 100 tokens: the mock's 17 + 500 completion tokens is over it.
    let s = Sluice::start(
        &config(
            &mock,
            "accounting: {max_usage_tokens: 100, max_sse_event_bytes: 65536, max_json_body_bytes: 64}\n",
        ),
        &[KEY_ENV],
    );
    let resp = chat(
        &s,
        serde_json::json!({"model": "gpt-4o", "stream": true, "max_tokens": 500, "messages": []}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap();
    let n = s
        .wait_metric(
            "sluice_usage_implausible_total",
            &[("route", "main")],
            |v| v > 0.0,
        )
        .await;
    assert_eq!(n, 1.0);
    // A JSON body over 64 bytes is relayed whole, its tokens estimated (once the stream
    // above is logged, so its own estimate is not taken for this one's).
    let logged = s
        .wait_metric("sluice_requests_total", &[("route", "main")], |v| v >= 1.0)
        .await;
    assert_eq!(logged, 1.0);
    let est = [("tenant", "t"), ("kind", "prompt"), ("source", "estimated")];
    let before = s.metric("sluice_tokens_total", &est).await;
    let resp = chat(&s, serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hello world"}]}))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        body["usage"]["completion_tokens"], 1,
        "relayed whole: {body}"
    );
    let after = s
        .wait_metric("sluice_tokens_total", &est, |v| v > before)
        .await;
    assert!(after > before, "not estimated");
    // A 9 MiB line is over the 64 KiB event cap.
    stream_huge_line(
        &s,
        &mock,
        serde_json::json!({"model": "gpt-4o", "stream": true, "messages": []}),
        9 << 20,
    )
    .await;
    let n = s
        .wait_metric(
            "sluice_sse_oversized_events_total",
            &[("route", "main")],
            |v| v > 0.0,
        )
        .await;
    assert_eq!(n, 1.0);
}
