//! Integration tests: the sluice binary between a reqwest client and an in-process mock
//! upstream (127.0.0.1, ports picked by binding port 0).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};
use support::{client, free_port, Config, Mock, Pool, Route, Sluice, Tenant};

const KEY_ENV: (&str, &str) = ("SLUICE_TEST_KEY", "sk-real-upstream-key");
const VK: &str = "sk-app-virtual-key";

/// Two pools (a, b) on two mocks; `big-*` models go to a, everything else under /v1 to b;
/// `first` adds a pool and a route matched before all others.
fn config(a: &Mock, b: &Mock, first: Option<(Pool, Route)>) -> String {
    let mut cfg = Config::new().yaml("server: {max_body_bytes: 33554432}");
    let mut routes = Vec::new();
    if let Some((pool, route)) = first {
        cfg = cfg.pool(pool);
        routes.push(route);
    }
    cfg = cfg
        .pool(Pool::openai("a", &a.url()))
        .pool(Pool::openai("b", &b.url()))
        .pool(Pool::anthropic("anth", &format!("{}/anthropic", b.url())))
        .pool(
            Pool::openai("dead", &format!("http://127.0.0.1:{}", free_port()))
                .yaml("timeouts: {connect_ms: 1000}"),
        );
    routes.extend([
        Route::prefix("dead", "/dead", &["dead"]),
        Route::prefix("messages", "/v1/messages", &["anth"]),
        Route::prefix("big", "/v1", &["a"]).model("big-*"),
        Route::prefix("rest", "/v1", &["b"]),
    ]);
    routes
        .into_iter()
        .fold(cfg, Config::route)
        .tenant(Tenant::new("team-a").virtual_key(VK))
        .to_yaml()
}

async fn setup() -> (Mock, Mock, Sluice) {
    let a = Mock::start().await;
    let b = Mock::start().await;
    let s = Sluice::start(&config(&a, &b, None), &[KEY_ENV]);
    (a, b, s)
}

#[tokio::test]
async fn injects_the_pool_key_and_never_forwards_the_client_key() {
    let (_a, b, s) = setup().await;
    for (header, value) in [
        ("authorization", format!("Bearer {VK}")),
        ("x-api-key", VK.to_owned()),
    ] {
        let resp = client()
            .post(format!("{}/v1/chat/completions", s.proxy))
            .header(header, &value)
            .header("x-custom-passthrough", "kept")
            .json(&serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let reqs = b.requests();
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        assert_eq!(
            r.header("authorization"),
            Some("Bearer sk-real-upstream-key")
        );
        assert_eq!(r.header("x-api-key"), None);
        assert_eq!(r.header("x-custom-passthrough"), Some("kept"));
        for (_, v) in &r.headers {
            assert!(!v.contains(VK), "client key leaked upstream: {v}");
        }
    }
}

#[tokio::test]
async fn unknown_paths_and_uploads_pass_through_untouched() {
    let (_a, b, s) = setup().await;
    let c = client();
    let r: serde_json::Value = c
        .get(format!("{}/v1/models?limit=2", s.proxy))
        .bearer_auth(VK)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["echo_path"], "/v1/models?limit=2");
    assert_eq!(r["echo_method"], "GET");
    // A multipart upload is not inspected (not JSON) but still reaches the upstream whole.
    let payload = vec![b'x'; 300_000];
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part(
            "file",
            reqwest::multipart::Part::bytes(payload).file_name("a.jsonl"),
        );
    let resp = c
        .post(format!("{}/v1/files", s.proxy))
        .bearer_auth(VK)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(r["echo_path"], "/v1/files");
    assert!(r["echo_body_len"].as_u64().unwrap() > 300_000);
    let reqs = b.requests();
    assert_eq!(reqs.len(), 2);
    assert!(reqs[1]
        .header("content-type")
        .unwrap()
        .starts_with("multipart/form-data"));
    assert_eq!(
        reqs[1].header("authorization"),
        Some("Bearer sk-real-upstream-key")
    );
}

fn big_body(model: &str, bytes: usize) -> Vec<u8> {
    let filler = "lorem ipsum ".repeat(bytes / 12 + 1);
    let v = serde_json::json!({"model": model, "messages": [{"role": "user", "content": &filler[..bytes]}]});
    serde_json::to_vec(&v).unwrap()
}

#[tokio::test]
async fn large_bodies_are_routed_by_model_and_forwarded_whole() {
    let (a, b, s) = setup().await;
    for (size, model) in [
        (1usize << 20, "big-1"),
        (5 << 20, "big-5"),
        (5 << 20, "gpt-4o"),
    ] {
        let body = big_body(model, size);
        let resp = client()
            .post(format!("{}/v1/chat/completions", s.proxy))
            .bearer_auth(VK)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{size} {model}");
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["echo_body_len"].as_u64().unwrap() as usize, body.len());
        let target = if model.starts_with("big-") { &a } else { &b };
        let last = target.requests().pop().unwrap();
        assert_eq!(last.body, body, "body forwarded byte for byte");
        assert_eq!(
            last.header("content-length").unwrap(),
            body.len().to_string()
        );
    }
    assert_eq!(a.requests().len(), 2);
    assert_eq!(b.requests().len(), 1);
}

#[tokio::test]
async fn body_over_the_cap_gets_a_native_413() {
    let (_a, b, s) = setup().await;
    let body = big_body("gpt-4o", 33 << 20);
    let resp = client()
        .post(format!("{}/v1/chat/completions", s.proxy))
        .bearer_auth(VK)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert!(resp.headers().contains_key("x-request-id"));
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "request_too_large");
    assert_eq!(b.requests().len(), 0);
}

async fn sse_lines(resp: reqwest::Response) -> Vec<String> {
    let text = resp.text().await.unwrap();
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn include_usage_is_added_and_its_chunk_hidden_from_a_client_that_did_not_ask() {
    let (_a, b, s) = setup().await;
    let labels = [
        ("tenant", "team-a"),
        ("model", "gpt-4o"),
        ("source", "exact"),
    ];
    let prompt_before = s
        .metric(
            "sluice_tokens_total",
            &[labels[0], labels[1], labels[2], ("kind", "prompt")],
        )
        .await;
    let resp = client()
        .post(format!("{}/v1/chat/completions", s.proxy))
        .bearer_auth(VK)
        .json(&serde_json::json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let events = sse_lines(resp).await;
    // What the client asked for: the 4 content chunks and [DONE], no usage anywhere.
    assert_eq!(events.len(), 5, "{events:#?}");
    assert!(events.iter().all(|e| !e.contains("usage")), "{events:#?}");
    assert_eq!(events[4], "data: [DONE]");
    // The upstream was asked for usage.
    let up = b.requests().pop().unwrap().json();
    assert_eq!(up["stream_options"]["include_usage"], true);
    // ...and sluice counted it exactly.
    let prompt = s
        .wait_metric(
            "sluice_tokens_total",
            &[labels[0], labels[1], labels[2], ("kind", "prompt")],
            |v| v > prompt_before,
        )
        .await;
    let completion = s
        .metric(
            "sluice_tokens_total",
            &[labels[0], labels[1], labels[2], ("kind", "completion")],
        )
        .await;
    assert_eq!(prompt - prompt_before, 17.0);
    assert_eq!(completion, 4.0);

    // A client that asked gets the usage chunk as sent.
    let resp = client()
        .post(format!("{}/v1/chat/completions", s.proxy))
        .bearer_auth(VK)
        .json(&serde_json::json!({"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true}, "messages": []}))
        .send()
        .await
        .unwrap();
    let events = sse_lines(resp).await;
    assert_eq!(events.len(), 6);
    assert!(events[4].contains(r#""usage":{"prompt_tokens":17"#));
    assert!(events[0].contains(r#""usage":null"#));
}

#[tokio::test]
async fn client_disconnect_closes_the_upstream_connection_at_once() {
    let a = Mock::start().await;
    let b = Mock::start().await;
    let slow = (
        Pool::openai("slowpool", &a.url()),
        Route::prefix("slow", "/v1/slow", &["slowpool"]),
    );
    let cfg = config(&a, &b, Some(slow));
    let s = Sluice::start(&cfg, &[KEY_ENV]);
    let mut resp = client()
        .post(format!("{}/v1/slow/chat/completions", s.proxy))
        .bearer_auth(VK)
        .json(&serde_json::json!({"model": "gpt-4o", "stream": true, "messages": []}))
        .send()
        .await
        .unwrap();
    // Read a few chunks, then leave.
    for _ in 0..3 {
        assert!(resp.chunk().await.unwrap().is_some());
    }
    assert!(
        a.slow_closed_at.lock().unwrap().is_none(),
        "upstream still streaming"
    );
    let left = Instant::now();
    drop(resp);
    let deadline = Instant::now() + Duration::from_secs(5);
    let closed = loop {
        if let Some(t) = *a.slow_closed_at.lock().unwrap() {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "upstream connection never closed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let gap = closed.saturating_duration_since(left);
    assert!(
        gap < Duration::from_millis(100),
        "upstream closed {gap:?} after the client left\n{}",
        s.log()
    );
    // Tokens delivered so far are counted (estimated: the stream never finished).
    let est_labels = [
        ("tenant", "team-a"),
        ("kind", "completion"),
        ("source", "estimated"),
    ];
    let est = s
        .wait_metric("sluice_tokens_total", &est_labels, |v| v > 0.0)
        .await;
    assert_eq!(
        s.metric("sluice_client_disconnects_total", &[("route", "slow")])
            .await,
        1.0
    );
    assert!(est >= 3.0, "estimated completion tokens {est}");
}

#[tokio::test]
async fn native_errors_for_unknown_key_no_route_and_dead_upstream() {
    let (_a, _b, s) = setup().await;
    let c = client();
    // Unknown virtual key, OpenAI shape.
    let resp = c
        .post(format!("{}/v1/chat/completions", s.proxy))
        .bearer_auth("sk-wrong")
        .json(&serde_json::json!({"model": "m"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");
    // Unknown virtual key on the Messages API, Anthropic shape + request-id.
    let resp = c
        .post(format!("{}/v1/messages", s.proxy))
        .header("x-api-key", "sk-wrong")
        .header("anthropic-version", "2023-06-01")
        .json(&serde_json::json!({"model": "claude"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().contains_key("request-id"));
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "authentication_error");
    // No route.
    let resp = c
        .get(format!("{}/v2/models", s.proxy))
        .bearer_auth(VK)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "no_route");
    // Dead upstream: inspected and passthrough paths both answer a native 502 promptly.
    for (method, path) in [
        ("POST", "/dead/v1/chat/completions"),
        ("GET", "/dead/v1/models"),
    ] {
        let req = c
            .request(method.parse().unwrap(), format!("{}{path}", s.proxy))
            .bearer_auth(VK);
        let req = if method == "POST" {
            req.json(&serde_json::json!({"model": "m"}))
        } else {
            req
        };
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 502, "{path}");
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "upstream_error", "{path}");
    }
    // Bad JSON on an inspected path.
    let resp = c
        .post(format!("{}/v1/chat/completions", s.proxy))
        .bearer_auth(VK)
        .header("content-type", "application/json")
        .body("{\"model\":")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(
        s.metric("sluice_errors_total", &[("reason", "upstream_unreachable")])
            .await
            >= 2.0
    );
}
