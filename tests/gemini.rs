//! Gemini through the sluice binary, against the in-process mock upstream: the pool's key in
//! `x-goog-api-key` (client credentials and a `?key=` never forwarded), the model read from
//! and mapped in the path (`model_map` never touches the body), usage from `usageMetadata`
//! (thinking tokens counted as output), a stream without its finishing chunk answered with the
//! native error chunk, and sluice's own errors in Gemini's shape.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{client, Behavior, Config, Mock, Pool, Route, Sluice, Tenant};

const KEY_ENV: (&str, &str) = ("SLUICE_TEST_KEY", "AIza-real-upstream-key");
const VK: &str = "sk-app-virtual-key";
const ALIAS: &str = "gemini-alias";
const MODEL: &str = "gemini-2.5-flash";

fn start(mock: &Mock) -> Sluice {
    let cfg = Config::new()
        .pool(
            Pool::new("gemini", "gemini", &mock.url())
                .yaml(&format!("model_map: {{{ALIAS}: {MODEL}}}")),
        )
        .route(Route::prefix("gemini", "/v1beta", &["gemini"]))
        .tenant(Tenant::new("team-a").virtual_key(VK))
        .to_yaml();
    Sluice::start(&cfg, &[KEY_ENV])
}

fn fixture(path: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{path}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn body() -> serde_json::Value {
    serde_json::json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                       "generationConfig": {"maxOutputTokens": 32}})
}

#[tokio::test]
async fn key_injected_query_key_stripped_and_model_mapped_in_the_path_only() {
    let mock = Mock::start().await;
    mock.set(Behavior::Canned {
        content_type: "application/json".to_owned(),
        body: fixture("gemini/sdk_unary_thoughts.json"),
    });
    let s = start(&mock);
    for (query, header) in [
        (format!("?key={VK}&x=1"), None),
        ("?x=1".to_owned(), Some(("x-goog-api-key", VK))),
        (
            "?x=1".to_owned(),
            Some(("authorization", "Bearer sk-app-virtual-key")),
        ),
    ] {
        let mut req = client()
            .post(format!(
                "{}/v1beta/models/{ALIAS}:generateContent{query}",
                s.proxy
            ))
            .json(&body());
        if let Some((name, value)) = header {
            req = req.header(name, value);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{query} {header:?}");
        let got: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(got["usageMetadata"]["thoughtsTokenCount"], 30);
    }
    let seen = mock.requests();
    assert_eq!(seen.len(), 3);
    for r in &seen {
        assert_eq!(
            r.path,
            format!("/v1beta/models/{MODEL}:generateContent?x=1")
        );
        assert_eq!(r.header("x-goog-api-key"), Some(KEY_ENV.1));
        assert_eq!(r.header("authorization"), None);
        assert_eq!(r.json(), body(), "the body is forwarded as sent");
    }
    // Usage of sdk_unary_thoughts.json: prompt 120 + 10 tool-use, output 50 + 30 thoughts,
    // each request under the model the client named.
    let labels = |kind| [("tenant", "team-a"), ("kind", kind), ("source", "exact")];
    for (kind, per_call) in [
        ("prompt", 130.0),
        ("completion", 80.0),
        ("cached", 40.0),
        ("reasoning", 30.0),
    ] {
        let want = 3.0 * per_call;
        let got = s
            .wait_metric("sluice_tokens_total", &labels(kind), |v| v >= want)
            .await;
        assert_eq!(got, want, "{kind}");
    }
}

#[tokio::test]
async fn a_stream_is_counted_and_one_without_its_finishing_chunk_gets_the_error_chunk() {
    let mock = Mock::start().await;
    let s = start(&mock);
    let url = format!(
        "{}/v1beta/models/{MODEL}:streamGenerateContent?alt=sse",
        s.proxy
    );
    let whole = fixture("gemini/sdk_stream_parts.sse").replace('\n', "\r\n");
    for (stream, complete) in [
        (whole.clone(), true),
        (fixture("gemini/sdk_stream_no_finish.sse"), false),
    ] {
        mock.set(Behavior::Canned {
            content_type: "text/event-stream".to_owned(),
            body: stream.clone(),
        });
        let resp = client()
            .post(&url)
            .header("x-goog-api-key", VK)
            .json(&body())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        if complete {
            assert_eq!(text, stream);
        } else {
            let error = text.strip_prefix(stream.as_str()).unwrap();
            assert!(error.starts_with("data: {\"error\":{"), "{error}");
            let v: serde_json::Value =
                serde_json::from_str(error.trim().strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(v["error"]["code"], 502);
            assert_eq!(v["error"]["status"], "INTERNAL");
        }
    }
    let completion = s
        .wait_metric(
            "sluice_tokens_total",
            &[("kind", "completion"), ("source", "exact")],
            |v| v >= 500.0,
        )
        .await;
    assert_eq!(completion, 500.0, "the whole stream's last usageMetadata");
}

#[tokio::test]
async fn passed_through_methods_get_the_key_and_the_mapped_model() {
    let mock = Mock::start().await;
    mock.set(Behavior::Canned {
        content_type: "application/json".to_owned(),
        body: r#"{"totalTokens":3}"#.to_owned(),
    });
    let s = start(&mock);
    let resp = client()
        .post(format!(
            "{}/v1beta/models/{ALIAS}:countTokens?key={VK}",
            s.proxy
        ))
        .json(&body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = mock.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, format!("/v1beta/models/{MODEL}:countTokens"));
    assert_eq!(seen[0].header("x-goog-api-key"), Some(KEY_ENV.1));
}

#[tokio::test]
async fn sluice_errors_are_in_geminis_shape() {
    let mock = Mock::start().await;
    let s = start(&mock);
    let resp = client()
        .post(format!("{}/v1beta/models/{MODEL}:generateContent", s.proxy))
        .header("x-goog-api-key", "not-a-virtual-key")
        .json(&body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], 401);
    assert_eq!(v["error"]["status"], "UNAUTHENTICATED");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("sluice: "));
    // A model the upstream URL cannot carry.
    let resp = client()
        .post(format!("{}/v1beta/models/a%2Fb:generateContent", s.proxy))
        .header("x-goog-api-key", VK)
        .json(&body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["status"], "INVALID_ARGUMENT");
    assert!(mock.requests().is_empty());
}
