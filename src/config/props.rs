//! Property tests (proptest) of the config loader (`parse` + `compile`): arbitrary text,
//! YAML-shaped noise and well-formed configs with arbitrary values never panic; problems come
//! back as path-qualified errors.

use super::{load_text, Secrets};
use proptest::prelude::*;

/// Keys and values of the real schema, so that generated documents reach deep into it.
const KEYS: &[&str] = &[
    "listeners",
    "proxy",
    "admin",
    "server",
    "threads",
    "max_body_bytes",
    "drain_timeout_seconds",
    "pools",
    "name",
    "provider",
    "endpoints",
    "url",
    "keys",
    "env",
    "file",
    "weight",
    "timeouts",
    "connect_ms",
    "breaker",
    "failure_ratio",
    "health_check",
    "path",
    "routes",
    "match",
    "path_prefix",
    "model",
    "header",
    "value",
    "failover",
    "max_attempts",
    "tenants",
    "list",
    "virtual_keys",
    "sha256",
    "default",
    "limits",
    "tokens_per_minute",
    "input_token_weight",
    "budget",
    "usd_per_day",
    "models",
    "price",
    "input_per_1m",
    "store",
    "redis",
    "reload",
    "poll_interval_ms",
    "accounting",
    "max_sse_event_bytes",
    "max_usage_tokens",
    "debug",
    "profiling",
    "max_profile_seconds",
    "profile_frequency_hz",
];

const VALUES: &[&str] = &[
    "0",
    "1",
    "-1",
    "18446744073709551615",
    "18446744073709551616",
    "1e309",
    ".nan",
    "-.inf",
    "0.5",
    "~",
    "true",
    "''",
    "[",
    "{",
    "[]",
    "{}",
    "openai",
    "azure_openai",
    "anthropic",
    "redis",
    "http://127.0.0.1:9",
    "https://[::1]:99999/x",
    "ftp://x",
    "127.0.0.1:0",
    "/v1",
    "'[x'",
    "'gpt-*'",
    "\"\\u0000\"",
    "&a",
    "*a",
    "!!binary aGk=",
];

fn yamlish() -> impl Strategy<Value = String> {
    let line = (
        0usize..4,
        any::<bool>(),
        proptest::sample::select(KEYS),
        proptest::option::of(proptest::sample::select(VALUES)),
    )
        .prop_map(|(indent, item, key, value)| {
            let dash = if item { "- " } else { "" };
            let value = value.unwrap_or("");
            format!("{}{dash}{key}: {value}\n", "  ".repeat(indent))
        });
    proptest::collection::vec(line, 0..40).prop_map(|lines| lines.concat())
}

/// A config with every numeric knob drawn at random.
fn numbers() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(any::<u64>(), 12),
        proptest::collection::vec(any::<f64>(), 4),
    )
        .prop_map(|(n, f)| {
            format!(
                r#"server: {{threads: {}, max_body_bytes: {}, drain_timeout_seconds: {}}}
accounting: {{max_sse_event_bytes: {}, max_json_body_bytes: {}, max_usage_tokens: {}}}
reload: {{poll_interval_ms: {}}}
pools:
  - name: p
    provider: openai
    endpoints: [{{url: "http://127.0.0.1:9", weight: {}}}]
    timeouts: {{connect_ms: {}, ttfb_ms: {}, idle_ms: {}}}
    breaker: {{consecutive_failures: 3, failure_ratio: {:?}, open_ms: {}}}
routes:
  - {{name: r, match: {{path_prefix: /v1}}, pools: [p]}}
tenants:
  default: t
  list:
    - name: t
      limits:
        tokens_per_minute: {}
        input_token_weight: {:?}
        output_token_weight: {:?}
        budget: {{usd_per_day: {:?}}}
"#,
                n[0] % 1_000_000,
                n[1],
                n[2],
                n[3],
                n[4],
                n[5],
                n[6],
                n[7] % u64::from(u32::MAX),
                n[8],
                n[9],
                n[10],
                f[0],
                n[11],
                n[0],
                f[1],
                f[2],
                f[3]
            )
        })
}

fn check(text: &str) -> Result<(), TestCaseError> {
    if let Err(errors) = load_text(text, Secrets::Skip) {
        prop_assert!(!errors.0.is_empty());
        prop_assert!(errors.0.iter().all(|e| !e.message.is_empty()));
    }
    Ok(())
}

proptest! {
    #![proptest_config(crate::proptest_config())]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        check(&text)?;
    }

    #[test]
    fn yaml_shaped_noise_never_panics(text in yamlish()) {
        check(&text)?;
    }

    #[test]
    fn arbitrary_numbers_never_panic(text in numbers()) {
        check(&text)?;
    }
}
