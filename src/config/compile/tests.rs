use super::*;
use crate::config::parse;

fn errors(yaml: &str) -> Vec<String> {
    match compile(&parse(yaml).unwrap(), Secrets::Skip) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

const POOL: &str = "pools:\n  - name: oa\n    provider: openai\n    endpoints:\n      - url: http://127.0.0.1:9\n        keys: [{env: K}]\n";

#[test]
fn every_error_is_listed_with_its_path() {
    let yaml = format!(
        "{POOL}  - name: az\n    provider: azure_openai\n    endpoints:\n      - url: ftp://x\n        keys: []\nroutes:\n  - name: r\n    match: {{path_prefix: v1, model: '[x'}}\n    pools: [oa, azure]\nlisteners: {{proxy: 'nope', admin: '127.0.0.1:1'}}\n"
    );
    let errs = errors(&yaml);
    let expected = [
        "listeners.proxy: \"nope\" is not an ip:port address",
        "pools[1].api_version: required for provider azure_openai",
        "pools[1].endpoints[0].url: \"ftp://x\": scheme must be http or https",
        "routes[0].match.path_prefix: must start with '/'",
        "routes[0].pools[1]: unknown pool \"azure\"",
    ];
    for e in expected {
        assert!(errs.iter().any(|x| x == e), "missing {e:?} in {errs:#?}");
    }
    assert!(errs
        .iter()
        .any(|x| x.starts_with("routes[0].match.model: invalid glob")));
}

#[test]
fn valid_config_compiles_and_routes() {
    let yaml = format!(
        "{POOL}routes:\n  - name: gpt\n    match: {{path_prefix: /v1, model: 'gpt-*'}}\n    pools: [oa]\n  - name: rest\n    match: {{path_prefix: /v1}}\n    pools: [oa]\n"
    );
    let snap = compile(&parse(&yaml).unwrap(), Secrets::Skip).unwrap();
    let req = pingora_http::RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
    assert_eq!(
        &*snap
            .route("/v1/chat/completions", Some("gpt-4o"), &req)
            .unwrap()
            .name,
        "gpt"
    );
    assert_eq!(
        &*snap
            .route("/v1/chat/completions", Some("o3"), &req)
            .unwrap()
            .name,
        "rest"
    );
    assert!(snap.route("/v2/x", None, &req).is_none());
    assert!(snap.path_needs_model("/v1/chat/completions"));
    assert_eq!(snap.pools["oa"].endpoints[0].addr, "127.0.0.1:9");
    // No tenants configured: an implicit default tenant.
    assert_eq!(snap.tenants.default.as_deref(), Some("default"));
}

#[test]
fn missing_secret_is_an_error_only_when_loading() {
    let yaml = POOL.replace("env: K", "env: SLUICE_TEST_SURELY_UNSET_VAR");
    let file = parse(&yaml).unwrap();
    assert!(compile(&file, Secrets::Skip).is_ok());
    let errs = compile(&file, Secrets::Load).unwrap_err().to_string();
    assert_eq!(
        errs,
        "pools[0].endpoints[0].keys[0]: environment variable SLUICE_TEST_SURELY_UNSET_VAR is not set"
    );
}

#[test]
fn virtual_keys_hash_and_identify() {
    let hash = hex::encode(Sha256::digest(b"vk-1"));
    let yaml = format!("{POOL}tenants:\n  list:\n    - name: a\n      virtual_keys: [{{sha256: {hash}}}]\n    - name: b\n      virtual_keys: [{{sha256: zz}}]\n");
    assert_eq!(
        errors(&yaml),
        vec!["tenants.list[1].virtual_keys[0]: sha256 must be 64 hex characters"]
    );
    let ok = format!(
        "{POOL}tenants:\n  list:\n    - name: a\n      virtual_keys: [{{sha256: {hash}}}]\n"
    );
    let snap = compile(&parse(&ok).unwrap(), Secrets::Skip).unwrap();
    assert_eq!(snap.tenants.by_virtual_key("vk-1").map(|t| &**t), Some("a"));
    assert!(snap.tenants.by_virtual_key("vk-2").is_none());
    assert!(snap.tenants.default.is_none());
}

/// Found by `config::props::arbitrary_numbers_never_panic`: the endpoints' breakers were built
/// before `failure_ratio` was checked, and failsafe panics on a ratio outside [0, 1].
#[test]
fn an_out_of_range_failure_ratio_is_an_error_not_a_panic() {
    for ratio in ["-5.0e297", "1.5", ".nan"] {
        let yaml = format!("{POOL}    breaker: {{failure_ratio: {ratio}}}\n");
        let errs = errors(&yaml);
        assert!(
            errs.iter()
                .any(|e| e == "pools[0].breaker.failure_ratio: must be in (0, 1]"),
            "{ratio}: {errs:?}"
        );
    }
}

#[test]
fn accounting_bounds_default_and_are_validated() {
    let snap = compile(&parse(POOL).unwrap(), Secrets::Skip).unwrap();
    assert_eq!(snap.accounting, Accounting::default());
    assert_eq!(snap.accounting.max_sse_event_bytes, 4 << 20);
    assert_eq!(snap.accounting.max_json_body_bytes, 16 << 20);
    assert_eq!(snap.accounting.max_usage_tokens, 100_000_000);
    let yaml = format!("{POOL}accounting: {{max_sse_event_bytes: 1024, max_usage_tokens: 5}}\n");
    let snap = compile(&parse(&yaml).unwrap(), Secrets::Skip).unwrap();
    assert_eq!(snap.accounting.max_sse_event_bytes, 1024);
    assert_eq!(snap.accounting.max_usage_tokens, 5);
    let yaml = format!("{POOL}accounting: {{max_sse_event_bytes: 0, max_json_body_bytes: 0}}\n");
    let errs = errors(&yaml);
    assert!(errs.contains(&"accounting.max_sse_event_bytes: must be greater than 0".to_owned()));
    assert!(errs.contains(&"accounting.max_json_body_bytes: must be greater than 0".to_owned()));
    assert!(parse(&format!("{POOL}accounting: {{max_sse_event_byte: 1}}\n")).is_err());
}
