//! What the client does, or what sluice refuses itself, never counts against an upstream:
//! aborted passthrough requests and requests sluice refuses before sending leave every
//! circuit breaker closed, while real upstream failures still open it. Invalid request body
//! framing is a native 400 with `connection: close`, forwarded nowhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};
use support::{Behavior, Config, Mock, Pool, Route, Sluice};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY_ENV: (&str, &str) = ("SLUICE_TEST_KEY", "sk-real-upstream-key");

/// Pool `p` (openai) and pool `az` (Azure OpenAI, chosen by `x-pool: azure`), both on `mock`,
/// breakers opening after 5 consecutive failures; `p_extra` (YAML) is merged into `p`.
fn config(mock: &Mock, p_extra: &str) -> String {
    let breaker = "breaker: {consecutive_failures: 5, open_ms: 60000}";
    Config::new()
        .pool(Pool::openai("p", &mock.url()).yaml(breaker).yaml(p_extra))
        .pool(Pool::azure("az", &mock.url()).yaml(breaker))
        .route(Route::prefix("azure", "/v1", &["az"]).header("x-pool", "azure"))
        .route(Route::prefix("main", "/v1", &["p"]))
        .to_yaml()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn breaker(s: &Sluice, pool: &str) -> f64 {
    s.metric("sluice_breaker_state", &[("pool", pool)]).await
}

/// Poll `cond` every 10 ms for at most 10 s; panics with `what` if it never holds.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn aborted_and_refused_requests_leave_breakers_closed_and_upstream_failures_open_them() {
    let mock = Mock::start().await;
    let s = Sluice::start(&config(&mock, ""), &[KEY_ENV]);
    let proxy = s.proxy.trim_start_matches("http://").to_owned();

    // Fifty passthrough requests whose client leaves while the upstream is silent.
    mock.set(Behavior::Stall);
    for i in 0..50 {
        let mut sock = TcpStream::connect(&proxy).await.unwrap();
        sock.write_all(b"GET /v1/models HTTP/1.1\r\nhost: sluice\r\n\r\n")
            .await
            .unwrap();
        until(
            "the upstream to get the request (not skipped by an open breaker)",
            || mock.requests().len() > i,
        )
        .await;
        drop(sock);
    }
    // The breaker hears of a request in its log stage, just before its log line.
    until("the 50 access log lines", || {
        s.log().matches("request_id=").count() >= 50
    })
    .await;
    assert_eq!(
        s.log().matches("client_disconnected=true").count(),
        50,
        "each logged as a client that left"
    );
    assert_eq!(breaker(&s, "p").await, 0.0, "aborted clients do not count");

    // Fifty requests sluice refuses before sending: a model that cannot be an Azure
    // deployment in a URL.
    let forwarded = mock.requests().len();
    for _ in 0..50 {
        let resp = client()
            .post(format!("{}/v1/chat/completions", s.proxy))
            .header("x-pool", "azure")
            .json(&serde_json::json!({"model": "bad model", "messages": []}))
            .send()
            .await
            .unwrap();
        assert_ne!(resp.status(), 200);
    }
    assert_eq!(
        mock.requests().len(),
        forwarded,
        "nothing was sent upstream"
    );
    assert_eq!(breaker(&s, "p").await, 0.0, "p stays closed");
    assert_eq!(breaker(&s, "az").await, 0.0, "az stays closed");

    // Both pools still serve.
    mock.set(Behavior::Normal);
    let resp = client()
        .get(format!("{}/v1/models", s.proxy))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client()
        .post(format!("{}/v1/chat/completions", s.proxy))
        .header("x-pool", "azure")
        .json(&serde_json::json!({"model": "gpt-4o", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Five real upstream failures open p's breaker: the sixth request is not sent.
    mock.set(Behavior::Status(503, None));
    for _ in 0..5 {
        let resp = client()
            .get(format!("{}/v1/models", s.proxy))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 503);
    }
    let open = s
        .wait_metric("sluice_breaker_state", &[("pool", "p")], |v| v == 2.0)
        .await;
    assert_eq!(open, 2.0, "five upstream 503s open the breaker");
    let before = mock.requests().len();
    let resp = client()
        .get(format!("{}/v1/models", s.proxy))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "no_upstream_available");
    assert_eq!(mock.requests().len(), before);
}

#[tokio::test]
async fn a_health_check_answered_with_a_4xx_shows_the_endpoint_up() {
    let mock = Mock::start().await;
    mock.set(Behavior::RejectKey("sk-real-upstream-key".into()));
    let hc = "    health_check: {path: /v1/models, interval_ms: 100, timeout_ms: 500}\n";
    let s = Sluice::start(&config(&mock, hc), &[KEY_ENV]);
    until("six health checks", || mock.requests().len() >= 6).await;
    assert_eq!(breaker(&s, "p").await, 0.0, "401s are answers, not outages");
    // A failure status from the same checks does open it.
    mock.set(Behavior::Status(503, None));
    let open = s
        .wait_metric("sluice_breaker_state", &[("pool", "p")], |v| v == 2.0)
        .await;
    assert_eq!(open, 2.0);
}

/// Write `request` on a fresh connection and read until the peer closes it (at most 5 s).
/// Returns what was read and whether the connection was closed.
async fn exchange(proxy: &str, request: &[u8]) -> (String, bool) {
    let mut sock = TcpStream::connect(proxy).await.unwrap();
    sock.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into(), false),
        }
    }
}

/// Chunk sizes that are not hex, negative, or past 64 bits (RFC 9112 §7.1).
const BAD_CHUNK_SIZES: [&str; 3] = ["zz", "-1", "1234567890abcdef123456"];

fn assert_framing_400(what: &str, response: &str, closed: bool) {
    assert!(response.starts_with("HTTP/1.1 400"), "{what}: {response:?}");
    let lower = response.to_ascii_lowercase();
    assert!(
        lower.contains("\r\nconnection: close\r\n"),
        "{what}: {response:?}"
    );
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["error"]["code"], "bad_request_framing", "{what}");
    assert!(closed, "{what}: the connection was closed after the answer");
}

#[tokio::test]
async fn bad_chunked_framing_is_a_native_400_that_closes_the_connection() {
    let mock = Mock::start().await;
    let s = Sluice::start(&config(&mock, ""), &[KEY_ENV]);
    let proxy = s.proxy.trim_start_matches("http://").to_owned();
    for size in BAD_CHUNK_SIZES {
        // Inspected: the body is read before anything is sent upstream.
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: sluice\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{size}\r\n{{}}\r\n0\r\n\r\n"
        );
        let (resp, closed) = exchange(&proxy, req.as_bytes()).await;
        assert_framing_400(&format!("inspected, size {size}"), &resp, closed);
        assert!(
            mock.requests()
                .iter()
                .all(|r| r.path != "/v1/chat/completions"),
            "nothing reached the upstream"
        );
        // Passthrough: streamed to the upstream as it comes, the error found mid-body.
        let req = format!(
            "POST /v1/files HTTP/1.1\r\nhost: sluice\r\ncontent-type: multipart/form-data; boundary=x\r\ntransfer-encoding: chunked\r\n\r\n{size}\r\n--x\r\n0\r\n\r\n"
        );
        let (resp, closed) = exchange(&proxy, req.as_bytes()).await;
        assert_framing_400(&format!("passthrough, size {size}"), &resp, closed);
    }
    // A framing header Pingora cannot parse (RFC 9112 §6.3: an invalid or repeated, differing
    // content-length) is refused by Pingora before any sluice stage runs: a bare 400, closed.
    for cl in [
        "content-length: abc",
        "content-length: 5\r\ncontent-length: 6",
    ] {
        let req = format!("POST /v1/chat/completions HTTP/1.1\r\nhost: sluice\r\n{cl}\r\n\r\n{{}}");
        let (resp, closed) = exchange(&proxy, req.as_bytes()).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{cl}: {resp:?}");
        assert!(
            resp.to_ascii_lowercase()
                .contains("\r\nconnection: close\r\n")
                && closed,
            "{cl}: {resp:?}"
        );
    }
    assert!(
        mock.requests()
            .iter()
            .all(|r| r.path != "/v1/chat/completions"),
        "nothing reached the upstream"
    );
    let labelled = s
        .wait_metric(
            "sluice_errors_total",
            &[("reason", "bad_request_framing")],
            |v| v >= 6.0,
        )
        .await;
    assert_eq!(labelled, 6.0);
    assert_eq!(breaker(&s, "p").await, 0.0);
}

#[tokio::test]
async fn a_half_closed_client_taken_for_gone_never_gets_a_cut_stream_framed_as_whole() {
    let mock = Mock::start().await;
    // About 2 s of stream: the half-close comes long before its end.
    mock.set(Behavior::Paced {
        events: 100,
        gap_ms: 20,
        reset_after: None,
    });
    let s = Sluice::start(&config(&mock, ""), &[KEY_ENV]);
    let proxy = s.proxy.trim_start_matches("http://").to_owned();
    let body =
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: sluice\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut sock = TcpStream::connect(&proxy).await.unwrap();
    sock.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // The stream has started; then the client half-closes (it still reads). Pingora takes
    // that for a client that left, and sluice stops the call.
    while !String::from_utf8_lossy(&out).contains("tok1 ") {
        let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf))
            .await
            .expect("the stream starts")
            .unwrap();
        assert!(n > 0);
        out.extend_from_slice(&buf[..n]);
    }
    sock.shutdown().await.unwrap();
    let read = async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the connection ends");
    let got = String::from_utf8_lossy(&out);
    // Either the whole stream, or one the client sees broken: never a stream that stopped
    // mid-way and then ended its chunked framing as if whole.
    assert!(
        got.contains("data: [DONE]") || !got.ends_with("\r\n0\r\n\r\n"),
        "a cut stream framed as whole: {got}"
    );
}
