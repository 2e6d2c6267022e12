//! No secret at any log level: a request mix with sluice at `RUST_LOG=trace` (Pingora's own
//! debug/trace lines included), then the whole stderr log is searched for every provider key,
//! every virtual key and the secret-looking query values used.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{free_port, sha256_hex, Mock, Sluice};

const OPENAI_KEY_OLD: &str = "sk-prov-openai-OLD-1234567";
const OPENAI_KEY_NEW: &str = "sk-prov-openai-NEW-7654321";
const ANTHROPIC_KEY: &str = "sk-ant-prov-abcdefgh-42";
const VK_A: &str = "sk-vk-team-a-secret-111";
const VK_B: &str = "sk-vk-team-b-secret-222";
const UNKNOWN_KEY: &str = "sk-unknown-client-333";
const QUERY_SECRET: &str = "qsecret-passthrough-444";
const DEAD_QUERY_SECRET: &str = "qsecret-dead-555";

#[tokio::test]
async fn a_request_mix_at_trace_level_logs_no_secret() {
    let mock = Mock::start().await;
    let dir = Sluice::temp_dir();
    let key_file = dir.join("openai-key");
    std::fs::write(&key_file, format!("{OPENAI_KEY_OLD}\n")).unwrap();
    let (proxy, admin) = Sluice::listeners();
    let config = format!(
        r#"{listeners}pools:
  - name: oai
    provider: openai
    endpoints: [{{url: "{mock}", keys: [{{file: "{key_file}"}}]}}]
  - name: anth
    provider: anthropic
    endpoints: [{{url: "{mock}/anthropic", keys: [{{env: SLUICE_TEST_ANTHROPIC_KEY}}]}}]
  - name: dead
    provider: openai
    endpoints: [{{url: "http://127.0.0.1:{dead}", keys: [{{file: "{key_file}"}}]}}]
    timeouts: {{connect_ms: 1000}}
routes:
  - {{name: dead, match: {{path_prefix: /dead}}, pools: [dead]}}
  - {{name: messages, match: {{path_prefix: /v1/messages}}, pools: [anth]}}
  - {{name: rest, match: {{path_prefix: /v1}}, pools: [oai]}}
tenants:
  list:
    - name: team-a
      virtual_keys: [{{sha256: {vk_a}}}]
    - name: team-b
      virtual_keys: [{{sha256: {vk_b}}}]
"#,
        listeners = Sluice::listeners_yaml(&proxy, &admin),
        mock = mock.url(),
        key_file = key_file.display(),
        dead = free_port(),
        vk_a = sha256_hex(VK_A),
        vk_b = sha256_hex(VK_B),
    );
    let path = dir.join("sluice.yaml");
    std::fs::write(&path, config).unwrap();
    let s = Sluice::start_file(
        dir,
        &path,
        &proxy,
        &admin,
        &[
            ("RUST_LOG", "trace"),
            ("SLUICE_TEST_ANTHROPIC_KEY", ANTHROPIC_KEY),
        ],
    );
    let c = reqwest::Client::new();
    let chat = |stream: bool| {
        c.post(format!("{}/v1/chat/completions", s.proxy))
            .bearer_auth(VK_A)
            .json(&serde_json::json!({
                "model": "gpt-4o-mini", "stream": stream,
                "messages": [{"role": "user", "content": "hi"}]
            }))
    };
    // Inspected chat, non-streamed and streamed.
    assert_eq!(chat(false).send().await.unwrap().status(), 200);
    let streamed = chat(true).send().await.unwrap();
    assert_eq!(streamed.status(), 200);
    assert!(streamed.text().await.unwrap().contains("data:"));
    // Anthropic Messages with x-api-key.
    let resp = c
        .post(format!("{}/v1/messages", s.proxy))
        .header("x-api-key", VK_B)
        .header("anthropic-version", "2023-06-01")
        .json(&serde_json::json!({
            "model": "claude-3-5-haiku", "max_tokens": 16,
            "messages": [{"role": "user", "content": "hi"}]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Passthrough GET with a secret-looking query value.
    let resp = c
        .get(format!("{}/v1/models?api_key={QUERY_SECRET}", s.proxy))
        .bearer_auth(VK_A)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // A failed passthrough to a dead upstream (Pingora's error line names the request).
    let resp = c
        .get(format!(
            "{}/dead/v1/models?token={DEAD_QUERY_SECRET}",
            s.proxy
        ))
        .bearer_auth(VK_A)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    // An unknown key: 401.
    let resp = c
        .post(format!("{}/v1/chat/completions", s.proxy))
        .bearer_auth(UNKNOWN_KEY)
        .json(&serde_json::json!({"model": "m"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // Key rotation: the file changes, SIGHUP reloads, the new key is used.
    std::fs::write(&key_file, format!("{OPENAI_KEY_NEW}\n")).unwrap();
    s.signal("HUP");
    s.wait_metric(
        "sluice_config_reload_total",
        &[("result", "success")],
        |v| v >= 1.0,
    )
    .await;
    assert_eq!(chat(false).send().await.unwrap().status(), 200);
    assert_eq!(chat(true).send().await.unwrap().status(), 200);

    let auth: Vec<String> = mock
        .requests()
        .iter()
        .filter_map(|r| r.header("authorization").map(str::to_owned))
        .collect();
    assert!(
        auth.contains(&format!("Bearer {OPENAI_KEY_OLD}")),
        "{auth:?}"
    );
    assert!(
        auth.contains(&format!("Bearer {OPENAI_KEY_NEW}")),
        "{auth:?}"
    );
    // Let the last requests' log lines land.
    s.wait_metric("sluice_requests_total", &[], |v| v >= 8.0)
        .await;
    let log = s.log();
    // The log is really at trace level, Pingora's own header dumps included.
    assert!(
        log.contains("Sending header to upstream"),
        "not a trace log"
    );
    assert!(log.contains("[redacted]"));
    for secret in [
        OPENAI_KEY_OLD,
        OPENAI_KEY_NEW,
        ANTHROPIC_KEY,
        VK_A,
        VK_B,
        UNKNOWN_KEY,
        QUERY_SECRET,
        DEAD_QUERY_SECRET,
    ] {
        let hits = log.matches(secret).count();
        assert_eq!(hits, 0, "{secret} appears {hits} times in the log");
    }
}
