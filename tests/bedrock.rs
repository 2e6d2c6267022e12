//! Integration tests of the Bedrock provider against the built binary: the client's SigV4
//! signature is replaced by one made with the pool's credentials (model mapped into the path),
//! an AWS event stream answer is relayed byte for byte and its `metadata` usage counted
//! exactly, and sluice's own refusals carry `x-amzn-errortype`. (The signature itself is
//! checked with botocore's signer in tests/e2e/test_bedrock.py.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::config::KEY_ENV_NAME;
use support::{Behavior, Config, Mock, Pool, Route, Sluice, Tenant};

const VK: &str = "sk-bedrock-virtual-key";
const POOL_AKID: &str = "AKIAPOOLEXAMPLE";
const CLIENT_DATE: &str = "20200101T000000Z";

fn fixture() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/bedrock/converse_stream.bin"
    ))
    .unwrap()
}

fn config(mock: &Mock) -> String {
    Config::new()
        .pool(
            Pool::new("b", "bedrock", &mock.url()).yaml(
                "{region: us-west-2, model_map: {m1: 'arn:aws:bedrock:us-west-2:123456789012:inference-profile/us.m1'}}",
            ),
        )
        .route(Route::prefix("bedrock", "/model", &["b"]))
        .tenant(Tenant::new("t").virtual_key(VK))
        .to_yaml()
}

/// A request signed as boto3 would with placeholder credentials whose access key id is `key`.
fn signed(s: &Sluice, key: &str, path: &str) -> reqwest::RequestBuilder {
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential={key}/20200101/us-west-2/bedrock/aws4_request, SignedHeaders=host;x-amz-date, Signature=00ff"
    );
    reqwest::Client::new()
        .post(format!("{}{path}", s.proxy))
        .header("authorization", auth)
        .header("x-amz-date", CLIENT_DATE)
        .header("x-amz-security-token", "client-session-token")
        .header("content-type", "application/json")
        .body(r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#)
}

#[tokio::test]
async fn resigned_with_the_pool_credentials_and_the_stream_counted_exactly() {
    let mock = Mock::start().await;
    let stream = fixture();
    mock.set(Behavior::CannedBytes {
        content_type: "application/vnd.amazon.eventstream".into(),
        body: stream.clone(),
    });
    let secret = format!("{POOL_AKID}:pool-secret-value");
    let s = Sluice::start(&config(&mock), &[(KEY_ENV_NAME, secret.as_str())]);
    let resp = signed(&s, VK, "/model/m1/converse-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "application/vnd.amazon.eventstream"
    );
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &stream[..]);

    let sent = mock.requests().pop().unwrap();
    assert_eq!(
        sent.path,
        "/model/arn%3Aaws%3Abedrock%3Aus-west-2%3A123456789012%3Ainference-profile%2Fus.m1/converse-stream"
    );
    let auth = sent.header("authorization").unwrap();
    assert!(
        auth.starts_with(&format!("AWS4-HMAC-SHA256 Credential={POOL_AKID}/")),
        "{auth}"
    );
    assert!(auth.contains("/us-west-2/bedrock/aws4_request"), "{auth}");
    assert!(!auth.contains("pool-secret-value"));
    assert_ne!(sent.header("x-amz-date"), Some(CLIENT_DATE));
    assert_eq!(sent.header("x-amz-security-token"), None);
    assert!(sent.headers.iter().all(|(_, v)| !v.contains(VK)));

    let exact = |kind| [("kind", kind), ("source", "exact"), ("model", "m1")];
    let prompt = s
        .wait_metric("sluice_tokens_total", &exact("prompt"), |v| v >= 37.0)
        .await;
    let completion = s.metric("sluice_tokens_total", &exact("completion")).await;
    assert_eq!((prompt, completion), (37.0, 19.0));
}

#[tokio::test]
async fn refusals_carry_the_aws_error_type() {
    let mock = Mock::start().await;
    let s = Sluice::start(&config(&mock), &[(KEY_ENV_NAME, "AKID:secret")]);
    let resp = signed(&s, "sk-not-a-tenant", "/model/m1/converse")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["x-amzn-errortype"],
        "UnrecognizedClientException"
    );
    assert!(resp.headers().contains_key("x-amzn-requestid"));
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().starts_with("sluice: "));
    assert!(mock.requests().is_empty());
}
