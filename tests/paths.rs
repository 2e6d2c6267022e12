//! Integration tests: request paths are normalized before routing (dot-segments, encoded dots,
//! merged slashes) or refused with a native 400, and body values never reach an upstream URL
//! raw (Azure deployment names). Requests are written on raw sockets: HTTP client libraries
//! normalize paths themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{raw_http, Config, Mock, Pool, RawResponse, Route, Sluice};

const KEY_ENV: (&str, &str) = ("SLUICE_TEST_KEY", "sk-real-upstream-key");

/// `chat` (mock a) serves `/v2/chat/completions`, `/v1` and `/anthropic`; `files` (mock b)
/// serves `/v2/files`; `az` (mock c, Azure OpenAI) serves `/v1` requests with `x-pool: azure`,
/// and is the first pool (before `chat`) for `x-pool: mixed`.
fn config(a: &Mock, b: &Mock, c: &Mock) -> String {
    Config::new()
        .pool(Pool::openai("chat", &a.url()))
        .pool(Pool::openai("files", &b.url()))
        .pool(Pool::anthropic("anth", &a.url()))
        .pool(Pool::azure("az", &c.url()))
        .route(Route::prefix("azure", "/v1", &["az"]).header("x-pool", "azure"))
        .route(Route::prefix("mixed", "/v1", &["az", "chat"]).header("x-pool", "mixed"))
        .route(Route::prefix("chat", "/v2/chat/completions", &["chat"]))
        .route(Route::prefix("files", "/v2/files", &["files"]))
        .route(Route::prefix("anthropic", "/anthropic", &["anth"]))
        .route(Route::prefix("v1", "/v1", &["chat"]))
        .to_yaml()
}

async fn setup() -> (Mock, Mock, Mock, Sluice) {
    let (a, b, c) = (
        Mock::start().await,
        Mock::start().await,
        Mock::start().await,
    );
    let s = Sluice::start(&config(&a, &b, &c), &[KEY_ENV]);
    (a, b, c, s)
}

/// A request with `target` written as is; `body` makes it a JSON POST.
async fn send(s: &Sluice, method: &str, target: &str, headers: &str, body: &str) -> RawResponse {
    let req = format!(
        "{method} {target} HTTP/1.1\r\nhost: sluice\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{headers}\r\n{body}",
        body.len()
    );
    raw_http(&s.proxy, req.as_bytes()).await
}

fn paths(m: &Mock) -> Vec<String> {
    m.requests().into_iter().map(|r| r.path).collect()
}

const CHAT: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;

#[tokio::test]
async fn dot_segments_and_encoded_dots_are_routed_on_the_normalized_path() {
    let (a, b, _c, s) = setup().await;
    // Each of these would have matched the /v2/chat/completions route if routed verbatim.
    let targets = [
        "/v2/chat/completions/../../files",
        "/v2/chat/completions/%2e%2e/%2e%2e/files",
        "/v2/chat/completions/%2E%2e/%2e%2E/files",
        "/v2/chat/completions/.%2E/%2e./files",
        "/v2/chat/completions/./../.././files",
        "//v2//files",
        // Absolute-form (its authority must match `Host` for Pingora to take it).
        "http://sluice/v2/chat/completions/../../files",
    ];
    for t in targets {
        let r = send(&s, "GET", t, "", "").await;
        assert_eq!(r.status, 200, "{t}: {:?}", r);
        assert_eq!(r.json()["echo_path"], "/v2/files", "{t}");
    }
    assert!(a.requests().is_empty(), "chat pool got {:?}", paths(&a));
    assert_eq!(paths(&b), vec!["/v2/files"; targets.len()]);

    // The query string is kept as sent, dots and encoded slashes included.
    let r = send(
        &s,
        "GET",
        "/v2/chat/completions/x/./../y?a=../b&c=%2e%2e%2F",
        "",
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(paths(&a), vec!["/v2/chat/completions/y?a=../b&c=%2e%2e%2F"]);

    // A streamed-through POST (passthrough) is normalized too, body intact.
    let r = send(
        &s,
        "POST",
        "/v2/chat/completions/%2e%2e/%2e%2e/files",
        "",
        "{\"purpose\":\"x\"}",
    )
    .await;
    assert_eq!(r.status, 200);
    let last = b.requests().pop().unwrap();
    assert_eq!(
        (last.path.as_str(), last.body.as_slice()),
        ("/v2/files", &b"{\"purpose\":\"x\"}"[..])
    );
}

#[tokio::test]
async fn inspected_attempts_send_the_normalized_path_upstream() {
    let (a, b, _c, s) = setup().await;
    // Routed as /v1/chat/completions (inspected, performed by an attempt subrequest, which
    // re-reads the client's original header: it must still send the normalized path).
    let r = send(
        &s,
        "POST",
        "/v2/chat/completions/../../../v1/x/%2e%2e/chat/completions",
        "",
        CHAT,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["object"], "chat.completion");
    let got = a.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, "/v1/chat/completions");
    assert_eq!(got[0].json()["model"], "gpt-4o");
    assert!(b.requests().is_empty());

    // Encoded unreserved characters cannot hide an API from inspection and accounting.
    let exact = [("source", "exact"), ("model", "gpt-4o")];
    let before = s
        .wait_metric("sluice_tokens_total", &exact, |v| v > 0.0)
        .await;
    assert!(before > 0.0);
    let r = send(&s, "POST", "/v1/%63hat/%63ompletions", "", CHAT).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(a.requests()[1].path, "/v1/chat/completions");
    let after = s
        .wait_metric("sluice_tokens_total", &exact, |v| v > before)
        .await;
    assert_eq!(
        after,
        2.0 * before,
        "the second call's usage is counted the same way"
    );
}

#[tokio::test]
async fn paths_that_climb_or_smuggle_separators_are_a_native_400_and_reach_no_upstream() {
    let (a, b, c, s) = setup().await;
    for t in [
        "/v2/chat/completions/../../../../etc/passwd",
        "/v2/chat/completions/%2e%2e/%2e%2e/%2e%2e/%2e%2e/x",
        "/v2/chat/completions/..%2F..%2Ffiles",
        "/v2/chat/completions/x%5C..%5C..%5Cfiles",
        "/v2/chat/completions/..;/..;/files",
        "/v2/chat/completions/a%00b",
        "/v2/chat/completions/a%0d%0aX-Injected:%201",
        "/v2/chat/completions/%zz",
    ] {
        for method in ["GET", "POST"] {
            let body = if method == "POST" { CHAT } else { "" };
            let r = send(&s, method, t, "", body).await;
            assert_eq!(r.status, 400, "{method} {t}: {r:?}");
            let v = r.json();
            assert_eq!(v["error"]["code"], "invalid_path", "{method} {t}: {v}");
            assert_eq!(v["error"]["type"], "invalid_request_error");
            assert!(r.header("x-request-id").is_some());
        }
    }
    // A raw backslash (read as `/` by some servers).
    let r = send(&s, "GET", "/v2/chat/completions/..\\..\\files", "", "").await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.json()["error"]["code"], "invalid_path");
    // The Anthropic shape on a Messages path.
    let r = send(
        &s,
        "POST",
        "/v1/messages/../../../x",
        "anthropic-version: 2023-06-01\r\n",
        "{}",
    )
    .await;
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(r.header("request-id").is_some());

    for m in [&a, &b, &c] {
        assert!(m.requests().is_empty(), "{:?}", paths(m));
        assert_eq!(m.connections(), 0);
    }
    let refused = s
        .metric("sluice_errors_total", &[("reason", "invalid_path")])
        .await;
    assert_eq!(refused, 18.0);
}

#[tokio::test]
async fn ordinary_paths_and_queries_go_upstream_byte_for_byte() {
    let (a, _b, _c, s) = setup().await;
    let cases = [
        ("POST", "/v1/chat/completions", CHAT),
        ("GET", "/v1/models?limit=2&after=a%2Fb&x=../y&e=%2e%2e", ""),
        ("GET", "/v1/models/meta-llama%2FLlama-3-8B", ""),
        ("GET", "/v1/models/ft:gpt-4o:org::abc123/", ""),
        ("GET", "/v1/files/file-abc.jsonl/content", ""),
        (
            "POST",
            "/anthropic/v1/messages?beta=true",
            r#"{"model":"claude-x","max_tokens":5,"messages":[]}"#,
        ),
    ];
    for (method, target, body) in cases {
        let r = send(&s, method, target, "", body).await;
        assert!(r.status == 200, "{method} {target}: {r:?}");
    }
    let want: Vec<&str> = cases.iter().map(|(_, t, _)| *t).collect();
    assert_eq!(paths(&a), want);
}

#[tokio::test]
async fn azure_model_names_that_would_change_the_url_are_refused_before_any_connection() {
    let (a, _b, c, s) = setup().await;
    for model in [
        "x/../../files?a=",
        "a#b",
        "a/b",
        "a?b",
        "..",
        ".",
        "a b",
        "a%2e",
        "a%2Fb",
        "gpt-4o\\..",
        "",
    ] {
        let body =
            serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
                .to_string();
        let r = send(
            &s,
            "POST",
            "/v1/chat/completions",
            "x-pool: azure\r\n",
            &body,
        )
        .await;
        assert_eq!(r.status, 400, "{model:?}: {r:?}");
        let v = r.json();
        assert_eq!(v["error"]["code"], "invalid_model", "{model:?}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    assert!(c.requests().is_empty(), "{:?}", paths(&c));
    assert_eq!(c.connections(), 0);

    // A pool that cannot carry the model is skipped, not failed: the next pool serves it.
    let body = r#"{"model":"org/model","messages":[{"role":"user","content":"hi"}]}"#;
    let r = send(
        &s,
        "POST",
        "/v1/chat/completions",
        "x-pool: mixed\r\n",
        body,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(paths(&a), vec!["/v1/chat/completions"]);
    assert_eq!(a.requests()[0].json()["model"], "org/model");
    assert_eq!(c.connections(), 0);

    // A valid deployment name (the refusals above opened no breaker) goes where Azure expects it, api-version intact.
    let body = r#"{"model":"gpt-4o.mini_v2","messages":[{"role":"user","content":"hi"}]}"#;
    let r = send(
        &s,
        "POST",
        "/v1/chat/completions",
        "x-pool: azure\r\n",
        body,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        paths(&c),
        vec!["/openai/deployments/gpt-4o.mini_v2/chat/completions?api-version=2024-10-21"]
    );
    assert_eq!(
        c.requests()[0].header("api-key"),
        Some("sk-real-upstream-key")
    );
}
