//! Who is calling (README "Who is calling"): every row of the key / tenant header table, over
//! raw HTTP against the built binary. A served request is attributed to the expected tenant
//! (its tokens are counted under it); a refused one gets its native status and code, and the
//! mock upstream receives nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;
use support::{Config, Mock, Pool, Route, Sluice, Tenant};

const KEY_ENV: (&str, &str) = ("SLUICE_TEST_KEY", "sk-real-upstream-key");
const KEY_A: &str = "sk-vk-team-a";
const KEY_B: &str = "sk-vk-team-b";
const UNKNOWN: &str = "sk-not-a-virtual-key";
const HEADER: &str = "x-sluice-tenant";

/// Tenants: `team-a` / `team-b` with one virtual key each, `batch` selectable by header,
/// `plain` without keys nor header; `tenants_extra` (indented 2) adds `default`,
/// `reject_unknown_keys`...
fn config(mock: &Mock, tenants_extra: &str) -> String {
    Config::new()
        .pool(Pool::openai("p", &mock.url()))
        .route(Route::prefix("main", "/v1", &["p"]))
        .yaml_at(&["tenants"], &format!("header: {HEADER}"))
        .yaml_at(&["tenants"], tenants_extra)
        .tenant(Tenant::new("shared"))
        .tenant(Tenant::new("team-a").virtual_key(KEY_A))
        .tenant(Tenant::new("team-b").virtual_key(KEY_B))
        .tenant(Tenant::new("batch").allow_header())
        .tenant(Tenant::new("plain"))
        .to_yaml()
}

struct Case<'a> {
    key: Option<&'a str>,
    header: Option<&'a str>,
}

fn case<'a>(key: Option<&'a str>, header: Option<&'a str>) -> Case<'a> {
    Case { key, header }
}

async fn send(s: &Sluice, c: &Case<'_>) -> (u16, serde_json::Value) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut req = client
        .post(format!("{}/v1/chat/completions", s.proxy))
        .json(&serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}));
    if let Some(k) = c.key {
        req = req.bearer_auth(k);
    }
    if let Some(h) = c.header {
        req = req.header(HEADER, h);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

/// The request is served (200, forwarded once) and its tokens are counted under `tenant`.
async fn served(s: &Sluice, mock: &Mock, c: Case<'_>, tenant: &str) {
    let labels = [("tenant", tenant), ("source", "exact")];
    let before = s.metric("sluice_tokens_total", &labels).await;
    let forwarded = mock.requests().len();
    let (status, body) = send(s, &c).await;
    assert_eq!(status, 200, "key {:?} header {:?}: {body}", c.key, c.header);
    assert_eq!(mock.requests().len(), forwarded + 1);
    let after = s
        .wait_metric("sluice_tokens_total", &labels, |v| v > before)
        .await;
    assert!(
        after > before,
        "key {:?} header {:?}: not counted under {tenant}",
        c.key,
        c.header
    );
}

/// The request is refused with `status` and OpenAI `error.code` `code`, and nothing reaches
/// the upstream.
async fn refused(s: &Sluice, mock: &Mock, c: Case<'_>, status: u16, code: &str) {
    let forwarded = mock.requests().len();
    let (got, body) = send(s, &c).await;
    assert_eq!(got, status, "key {:?} header {:?}: {body}", c.key, c.header);
    assert_eq!(
        body["error"]["code"], code,
        "key {:?} header {:?}",
        c.key, c.header
    );
    assert_eq!(
        mock.requests().len(),
        forwarded,
        "a refused request reached the upstream"
    );
}

#[tokio::test]
async fn rejecting_unknown_keys_with_a_default_tenant() {
    let mock = Mock::start().await;
    let s = Sluice::start(
        &config(&mock, "  default: shared\n  reject_unknown_keys: true\n"),
        &[KEY_ENV],
    );
    // A known key: its tenant; the header may only repeat it.
    served(&s, &mock, case(Some(KEY_A), None), "team-a").await;
    served(&s, &mock, case(Some(KEY_A), Some("team-a")), "team-a").await;
    for other in ["team-b", "batch", "plain", "shared", "nobody"] {
        refused(
            &s,
            &mock,
            case(Some(KEY_A), Some(other)),
            403,
            "tenant_mismatch",
        )
        .await;
    }
    // An unknown key is a 401 whatever the header says.
    for header in [
        None,
        Some("team-a"),
        Some("batch"),
        Some("shared"),
        Some("nobody"),
    ] {
        refused(
            &s,
            &mock,
            case(Some(UNKNOWN), header),
            401,
            "invalid_api_key",
        )
        .await;
    }
    // No key: the default tenant, or a tenant that allows the header.
    served(&s, &mock, case(None, None), "shared").await;
    served(&s, &mock, case(None, Some("batch")), "batch").await;
    for not_allowed in ["team-a", "team-b", "plain", "shared"] {
        refused(
            &s,
            &mock,
            case(None, Some(not_allowed)),
            403,
            "tenant_header_not_allowed",
        )
        .await;
    }
    refused(&s, &mock, case(None, Some("nobody")), 401, "unknown_tenant").await;
}

#[tokio::test]
async fn without_a_default_tenant_an_anonymous_request_is_refused() {
    let mock = Mock::start().await;
    let s = Sluice::start(&config(&mock, ""), &[KEY_ENV]);
    refused(&s, &mock, case(None, None), 401, "unknown_tenant").await;
    refused(&s, &mock, case(Some(UNKNOWN), None), 401, "invalid_api_key").await;
    refused(
        &s,
        &mock,
        case(Some(UNKNOWN), Some("batch")),
        401,
        "invalid_api_key",
    )
    .await;
    served(&s, &mock, case(Some(KEY_B), None), "team-b").await;
    served(&s, &mock, case(None, Some("batch")), "batch").await;
}

#[tokio::test]
async fn allowing_unknown_keys_makes_them_identify_nothing() {
    let mock = Mock::start().await;
    let s = Sluice::start(&config(&mock, "  reject_unknown_keys: false\n"), &[KEY_ENV]);
    // Without a default tenant, an unknown key alone identifies nobody.
    refused(&s, &mock, case(Some(UNKNOWN), None), 401, "invalid_api_key").await;
    refused(&s, &mock, case(None, None), 401, "unknown_tenant").await;
    // It is as if no key were sent: the header rules apply.
    served(&s, &mock, case(Some(UNKNOWN), Some("batch")), "batch").await;
    refused(
        &s,
        &mock,
        case(Some(UNKNOWN), Some("team-a")),
        403,
        "tenant_header_not_allowed",
    )
    .await;
    refused(
        &s,
        &mock,
        case(Some(UNKNOWN), Some("nobody")),
        401,
        "unknown_tenant",
    )
    .await;
    // Known keys still authenticate, and still refuse another tenant's name.
    served(&s, &mock, case(Some(KEY_B), Some("team-b")), "team-b").await;
    refused(
        &s,
        &mock,
        case(Some(KEY_B), Some("batch")),
        403,
        "tenant_mismatch",
    )
    .await;
}

#[tokio::test]
async fn unknown_keys_fall_to_the_default_tenant_when_allowed() {
    let mock = Mock::start().await;
    let s = Sluice::start(
        &config(&mock, "  default: shared\n  reject_unknown_keys: false\n"),
        &[KEY_ENV],
    );
    served(&s, &mock, case(Some(UNKNOWN), None), "shared").await;
    served(&s, &mock, case(None, None), "shared").await;
    refused(
        &s,
        &mock,
        case(None, Some("plain")),
        403,
        "tenant_header_not_allowed",
    )
    .await;
}
