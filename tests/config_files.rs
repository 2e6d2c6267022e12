//! Every config we ship or show validates: `conf/*.yaml`, every ```yaml block in README.md,
//! every shape of the tests' config builder, and `sluice validate` exits 1 listing every
//! error with its path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;
use support::{Config, Pool, Route, Tenant};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_file_in_conf_validates() {
    let mut n = 0;
    for entry in std::fs::read_dir(root().join("conf")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            if let Err(e) = sluice::config::validate_file(&path) {
                panic!("{}:\n{e}", path.display());
            }
            n += 1;
        }
    }
    assert!(n >= 1, "no config in conf/");
}

#[test]
fn every_readme_yaml_example_validates() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```yaml") => current = Some(String::new()),
            (Some(_), l) if l.starts_with("```") => blocks.push(current.take().unwrap()),
            (Some(buf), _) => {
                buf.push_str(line);
                buf.push('\n');
            }
            _ => {}
        }
    }
    assert!(!blocks.is_empty(), "README has no yaml example");
    for (i, yaml) in blocks.iter().enumerate() {
        let file = sluice::config::parse(yaml)
            .unwrap_or_else(|e| panic!("README yaml block {i}:\n{e}\n{yaml}"));
        if let Err(e) = sluice::config::compile(&file, sluice::config::Secrets::Skip) {
            panic!("README yaml block {i}:\n{e}\n{yaml}");
        }
    }
}

#[test]
fn validate_command_lists_every_error_and_exits_1() {
    let bin = env!("CARGO_BIN_EXE_sluice");
    let ok = Command::new(bin)
        .args(["validate"])
        .arg(root().join("conf/sluice.yaml"))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let dir = std::env::temp_dir().join(format!("sluice-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "pools:\n  - name: p\n    provider: openai\n    endpoints: [{url: 'http://127.0.0.1:1', keys: [{env: K}]}]\n    colour: red\nroutes:\n  - name: r\n    match: {path_prefix: /v1}\n    pools: [azure]\n  - name: r2\n    match: {path_prefix: v1}\n    pools: []\n",
    )
    .unwrap();
    let out = Command::new(bin)
        .arg("validate")
        .arg(&bad)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "pools[0]: unknown field `colour`",
        "routes[1].match.path_prefix: must start with '/'",
        "routes[1].pools: must name at least one pool",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

/// The shared config builder (`tests/support/config.rs`) emits configs the schema accepts,
/// every method used, and merges fragments key by key.
#[test]
fn every_shape_of_the_test_config_builder_validates() {
    let cfg = Config::new()
        .yaml("server: {max_body_bytes: 1048576}")
        .pool(
            Pool::openai("p", "http://127.0.0.1:9")
                .key_envs(&["KEY_A", "KEY_B"])
                .endpoint("http://127.0.0.1:10")
                .yaml("timeouts: {connect_ms: 500, ttfb_ms: 500}")
                .yaml("{timeouts: {ttfb_ms: 900}, breaker: {consecutive_failures: 3}}"),
        )
        .pool(Pool::anthropic("anth", "http://127.0.0.1:9"))
        .pool(Pool::azure("az", "http://127.0.0.1:9"))
        .route(Route::prefix("azure", "/v1", &["az"]).header("x-pool", "azure"))
        .route(Route::prefix("big", "/v1", &["p", "az"]).model("big-*"))
        .route(Route::prefix("messages", "/v1/messages", &["anth"]))
        .yaml_at(&["tenants"], "header: x-tenant")
        .tenant(
            Tenant::new("a")
                .virtual_key("sk-a")
                .limits("requests_per_minute: 10"),
        )
        .tenant(
            Tenant::new("b")
                .allow_header()
                .limits("{budget: {usd_per_day: 1.0}}"),
        )
        .yaml("");
    let yaml = cfg.to_yaml();
    let file = sluice::config::parse(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    if let Err(e) = sluice::config::compile(&file, sluice::config::Secrets::Skip) {
        panic!("{e}\n{yaml}");
    }
    let tree: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
    let timeouts = &tree["pools"][0]["timeouts"];
    assert_eq!(
        timeouts["connect_ms"].as_u64(),
        Some(500),
        "kept by the merge"
    );
    assert_eq!(
        timeouts["ttfb_ms"].as_u64(),
        Some(900),
        "replaced by the merge"
    );
    assert_eq!(
        tree["tenants"]["list"][0]["virtual_keys"][0]["sha256"].as_str(),
        Some(support::sha256_hex("sk-a").as_str())
    );
    let with = cfg.with_listeners("127.0.0.1:1", "127.0.0.1:2");
    sluice::config::parse(&with).unwrap_or_else(|e| panic!("{e}\n{with}"));
}
