//! The L4 buffers in front of each client connection (`server.client_read_buffer_bytes`,
//! `server.client_write_buffer_bytes`) against the sluice binary on 127.0.0.1: a 1 MiB body
//! and a stream pass whole through tiny and unbuffered sizes, and the sidecar-sized default
//! makes a kept-alive connection that sent a large body cheaper than Pingora's 64 KiB read
//! buffer does (that buffer fills with the body's first bytes and stays for the connection).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;
use support::{proc_status_kib, Mock, Sluice};

/// One openai pool on `mock` behind a catch-all route, with `server` settings.
fn config(mock: &Mock, server: &str) -> String {
    format!(
        r#"server: {{{server}}}
pools:
  - name: p
    provider: openai
    endpoints: [{{url: "{}", keys: [{{env: SLUICE_TEST_KEY}}]}}]
routes:
  - {{name: all, match: {{path_prefix: /}}, pools: [p]}}
"#,
        mock.url()
    )
}

const KEY: (&str, &str) = ("SLUICE_TEST_KEY", "sk-client-buffers-test-key");

/// A client with one connection of its own (kept alive while the client lives).
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .pool_max_idle_per_host(1)
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_large_body_and_a_stream_pass_through_tiny_and_unbuffered_client_buffers() {
    let mock = Mock::start().await;
    for (read, write) in [(16, 1), (0, 0)] {
        let s = Sluice::start(
            &config(
                &mock,
                &format!("client_read_buffer_bytes: {read}, client_write_buffer_bytes: {write}"),
            ),
            &[KEY],
        );
        let url = format!("{}/v1/chat/completions", s.proxy);
        // 1 MiB of prompt, with multi-byte characters so a split inside one would show.
        let content = "añ日🎉".repeat((1 << 20) / 10);
        let resp = client()
            .post(&url)
            .json(&serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": content}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "read {read} write {write}\n{}", s.log());
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(body["usage"]["prompt_tokens"].is_u64(), "{body}");
        let got = mock.requests().pop().unwrap().json();
        assert_eq!(
            got["messages"][0]["content"].as_str(),
            Some(content.as_str()),
            "the upstream got the prompt whole (read {read} write {write})"
        );
        let text = client()
            .post(&url)
            .json(&serde_json::json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(text.starts_with("data: "), "{text}");
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    }
}

/// RSS (bytes) one idle kept-alive connection adds to sluice run with `server` settings:
/// `CONNS` connections, each after one 100 KB chat request, held open at once.
async fn idle_connection_cost(mock: &Mock, server: &str) -> u64 {
    const CONNS: u64 = 500;
    let s = Sluice::start(
        &config(
            mock,
            &format!("keepalive_idle_timeout_ms: 60000, max_client_connections: 4096, {server}"),
        ),
        &[KEY],
    );
    let url = format!("{}/v1/chat/completions", s.proxy);
    let body = serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x".repeat(100_000)}]});
    let post = |c: reqwest::Client| {
        let (url, body) = (url.clone(), body.clone());
        async move {
            let resp = c.post(url).json(&body).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.bytes().await.unwrap();
            c
        }
    };
    // Warm up (first-request allocations, the upstream pool) before the baseline.
    for _ in 0..20 {
        post(client()).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = proc_status_kib(s.pid(), "VmRSS");
    let mut held = Vec::new();
    for _ in 0..CONNS / 100 {
        held.extend(futures_util::future::join_all((0..100).map(|_| post(client()))).await);
    }
    assert_eq!(
        s.metric("sluice_client_connections", &[]).await,
        CONNS as f64,
        "every connection is held open"
    );
    let open = proc_status_kib(s.pid(), "VmRSS");
    drop(held);
    open.saturating_sub(before) * 1024 / CONNS
}

#[tokio::test]
async fn the_default_read_buffer_makes_a_kept_alive_connection_cheaper_than_pingoras_64_kib() {
    let mock = Mock::start().await;
    let pingora = idle_connection_cost(&mock, "client_read_buffer_bytes: 65536").await;
    let default = idle_connection_cost(&mock, "").await;
    eprintln!(
        "idle kept-alive connection after a 100 KB request: {default} B (default 8 KiB read buffer), {pingora} B (64 KiB)"
    );
    // The 56 KiB the smaller buffer leaves untouched, less noise between the two processes.
    assert!(
        default + 32 * 1024 < pingora,
        "default {default} B per connection, 64 KiB read buffer {pingora} B"
    );
}
