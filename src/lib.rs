//! sluice: a sidecar reverse proxy for LLM API traffic on Pingora. Apps keep their official
//! OpenAI / Anthropic SDKs and point their base URL at sluice, which injects the real provider
//! keys, identifies tenants, counts every token (streamed included) and exports what it saw.
//!
//! Module map, in the order a request meets it: [`proxy`] (the pipeline, one module per
//! stage), [`provider`] (one file per provider), [`usage`] (SSE/JSON token accounting),
//! [`metrics`], [`admin`]; [`config`] compiles the YAML into the snapshot the pipeline reads;
//! [`server`] wires it into Pingora, behind [`listener`]'s bounds on client connections.

pub mod access_log;
pub mod admin;
pub mod balance;
pub mod cache;
pub mod config;
pub mod drain;
pub mod error;
pub mod health;
pub mod inject;
pub mod limits;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod otel;
pub mod provider;
pub mod proxy;
pub mod redis_link;
pub mod reload;
pub mod server;
pub mod usage;

/// Settings shared by the property tests (proptest): a bounded case count (256, or
/// `PROPTEST_CASES`) so `make test` stays fast, and no regression files: every failure found
/// becomes a named `#[test]` next to the property instead.
#[cfg(test)]
pub(crate) fn proptest_config() -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256),
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}
