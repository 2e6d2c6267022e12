//! Integration tests of Ollama's native API through the built binary: an NDJSON stream (the
//! golden fixture, sent with a `content-length` as some servers do) is relayed as a stream,
//! byte for byte, and its `prompt_eval_count` / `eval_count` counted exactly for a body without
//! `stream` (Ollama's default is to stream); the pool key replaces the virtual key; sluice's
//! own errors (unknown virtual key, dead upstream) come in Ollama's `{"error":"..."}` shape.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{free_port, Behavior, Config, Mock, Pool, Route, Sluice, Tenant};

const KEY_ENV: (&str, &str) = ("SLUICE_TEST_KEY", "ollama-pool-key-41c2");
const VK: &str = "sk-ollama-virtual-key";

fn config(url: &str) -> String {
    Config::new()
        .pool(Pool::new("ollama", "ollama", url))
        .route(Route::prefix("ollama", "/api", &["ollama"]))
        .tenant(Tenant::new("t").virtual_key(VK))
        .yaml("server: {threads: 1}")
        .to_yaml()
}

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/ollama/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap()
}

async fn post(s: &Sluice, path: &str, key: &str, body: serde_json::Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}{path}", s.proxy))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ndjson_stream_is_relayed_whole_and_counted_exactly() {
    let mock = Mock::start().await;
    let stream = fixture("chat_stream.ndjson");
    mock.set(Behavior::Canned {
        content_type: "application/x-ndjson".into(),
        body: stream.clone(),
    });
    let s = Sluice::start(&config(&mock.url()), &[KEY_ENV]);
    let body =
        serde_json::json!({"model": "llama3.2", "messages": [{"role": "user", "content": "why?"}]});
    let resp = post(&s, "/api/chat", VK, body.clone()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/x-ndjson"
    );
    assert_eq!(resp.text().await.unwrap(), stream);

    let [seen] = &mock.requests()[..] else {
        panic!("{:?}", mock.requests())
    };
    assert_eq!(seen.path, "/api/chat");
    assert_eq!(
        seen.header("authorization"),
        Some("Bearer ollama-pool-key-41c2")
    );
    assert_eq!(seen.json(), body, "the body was forwarded unchanged");

    let exact = |kind| [("tenant", "t"), ("source", "exact"), ("kind", kind)];
    let prompt = s
        .wait_metric("sluice_tokens_total", &exact("prompt"), |v| v >= 26.0)
        .await;
    let completion = s.metric("sluice_tokens_total", &exact("completion")).await;
    assert_eq!((prompt, completion), (26.0, 282.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_errors_come_in_ollama_shape() {
    let mock = Mock::start().await;
    let s = Sluice::start(&config(&mock.url()), &[KEY_ENV]);
    let body = serde_json::json!({"model": "llama3.2", "prompt": "hi"});
    let resp = post(&s, "/api/generate", "sk-not-a-tenant", body.clone()).await;
    assert_eq!(resp.status(), 401);
    let err: serde_json::Value = resp.json().await.unwrap();
    let message = err["error"].as_str().unwrap();
    assert!(message.starts_with("sluice: "), "{err}");
    assert_eq!(err.as_object().unwrap().len(), 1, "{err}");
    assert!(mock.requests().is_empty());

    let dead = format!("http://127.0.0.1:{}", free_port());
    let s = Sluice::start(&config(&dead), &[KEY_ENV]);
    let resp = post(&s, "/api/generate", VK, body).await;
    assert_eq!(resp.status(), 502);
    let err: serde_json::Value = resp.json().await.unwrap();
    assert!(
        err["error"].as_str().unwrap().starts_with("sluice: "),
        "{err}"
    );
}
