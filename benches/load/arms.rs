//! The arms under test ([`Arm`]: direct, bare Pingora, nginx, sluice, LiteLLM), their
//! configs, and the smoke test each must pass before it is measured. The sluice arm's config
//! is [`sluice_config`]: every policy on.
use crate::client::{chat_request, Client, MODEL};
use crate::support::config::{Config, Pool, Route};
use crate::support::http::find;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// What an arm is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Direct,
    Bare,
    Nginx,
    Sluice,
    Litellm,
}

/// One arm: where to send requests, its process (none for direct), the bearer it takes,
/// sluice's admin listener, and whether its config has the `plain` route
/// ([`sluice_variant_config`]).
pub struct Arm {
    pub name: String,
    pub kind: Kind,
    pub addr: SocketAddr,
    pub pid: Option<u32>,
    pub auth: String,
    pub admin: Option<SocketAddr>,
    pub plain_route: bool,
}

/// The virtual key clients send (sluice maps it to tenant `bench`; the others ignore it).
pub const VIRTUAL_KEY: &str = "sk-bench-virtual-key-0001";
/// The provider key sluice injects (the upstream counts requests that carry it).
pub const UPSTREAM_KEY: &str = "sk-bench-upstream-key";
/// LiteLLM's master key, the bearer its clients send.
pub const LITELLM_MASTER: &str = "sk-bench-litellm-9f2c71d4e8a3";

/// The sluice arm's config: listeners on `proxy` / `admin`, one OpenAI pool to the bench
/// upstream on `upstream` with its key from env `BENCH_UPSTREAM_KEY`, and [`SLUICE_POLICIES`].
pub fn sluice_config(proxy: u16, admin: u16, upstream: u16) -> String {
    config_with(proxy, admin, upstream, "{}", false)
}

/// The header line that sends a request of a config variant's arm to its `plain` route
/// ([`sluice_variant_config`]).
pub const PLAIN_ROUTE_HEADER: &str = "x-bench-route: plain";

/// The header line a variant's own requests carry in the paired CPU phase: the same name and
/// a value of the same length as [`PLAIN_ROUTE_HEADER`]'s, which the `plain` route does not
/// take. The two requests then differ in one header value only. (Without it the plain
/// request had one header more, and the request header map of the variant's request, one
/// entry short of its growth point, grew when sluice added the upstream `authorization`:
/// about 1,200 instructions per request that only the variant paid, callgrind, 2026-12-01.)
pub const VARIANT_ROUTE_HEADER: &str = "x-bench-route: other";

/// [`sluice_config`] with the YAML mapping `route` merged into its route; with `plain`, a route
/// named `plain` before it, the same but for `route` and taking only requests with
/// [`PLAIN_ROUTE_HEADER`].
fn config_with(proxy: u16, admin: u16, upstream: u16, route: &str, plain: bool) -> String {
    let mut cfg = Config::new()
        // The hold phase opens ~10,000 streams: above the default client connection cap.
        .yaml("server: {threads: 1, log_format: json, drain_timeout_seconds: 1, max_client_connections: 12000}")
        .pool(
            Pool::openai("local", &format!("http://127.0.0.1:{upstream}"))
                .key_envs(&["BENCH_UPSTREAM_KEY"]),
        );
    if plain {
        let (name, value) = PLAIN_ROUTE_HEADER.split_once(": ").unwrap_or_default();
        cfg = cfg.route(Route::prefix("plain", "/v1", &["local"]).header(name, value));
    }
    let cfg = cfg
        .route(Route::prefix("chat", "/v1", &["local"]).yaml(route))
        .yaml(SLUICE_POLICIES);
    format!(
        "# sluice bench config: every policy on, limits far above the load so nothing is rejected.\n{}",
        cfg.with_listeners(&format!("127.0.0.1:{proxy}"), &format!("127.0.0.1:{admin}"))
    )
}

/// A config variant of the sluice arm (`--sluice-variants`): the same config with one more feature
/// on the route, and before it a `plain` route without it for requests that carry
/// [`PLAIN_ROUTE_HEADER`], so that the feature's cost is measured against the same route without it
/// in the same process (`measure::route_pair_cpu`). `reuse`: the exact-match response cache (`when:
/// always`, so every request is looked up and every answer stored) and request coalescing; the
/// harness's requests are all distinct, so every lookup misses and nothing coalesces: what the two
/// cost a route when they do not help (once the 32 MiB tier is full, its doorkeeper records none
/// of these one-off answers); `reuse-keepall`: the same keeping every answer
/// (`cache.admission_keys: 0`); `cache` and `coalesce`: each alone; `cache-full`: the cache
/// alone in a 1 MiB memory tier (full from the start); `cache-nostore` and `cache-noretain`: the
/// cache's lookup alone, and its lookup, recording and check without keeping anything; `same`: no feature
/// at all (the control: its paired ratio against `plain` is the measurement's own noise).
/// `None` for an unknown variant.
pub fn sluice_variant_config(
    variant: &str,
    proxy: u16,
    admin: u16,
    upstream: u16,
) -> Option<String> {
    let route = match variant {
        "reuse" | "reuse-keepall" => "{cache: {when: always, ttl_ms: 60000}, coalesce: true}",
        // Each alone, to tell their costs apart.
        "cache" | "cache-full" | "cache-nostore" | "cache-noretain" => {
            "{cache: {when: always, ttl_ms: 60000}}"
        }
        "coalesce" => "{coalesce: true}",
        // The control: the same route twice, so its paired ratio is the method's own noise.
        "same" => "{}",
        _ => return None,
    };
    let cfg = config_with(proxy, admin, upstream, route, true);
    // `cache-full`: a 1 MiB memory tier, full after a few thousand misses: the cost of a
    // miss once the cache evicts (steady state), not while it grows.
    Some(match variant {
        "cache-full" => format!("{cfg}\ncache: {{max_bytes: 1048576, max_entry_bytes: 65536}}\n"),
        // The miss's parts apart: `cache-nostore` looks up and records nothing (every answer
        // is over a 1-byte `max_entry_bytes`); `cache-noretain` also checks and offers every
        // answer to a tier too small to keep it (weight over a 600-byte bound).
        "cache-nostore" => format!("{cfg}\ncache: {{max_bytes: 33554432, max_entry_bytes: 1}}\n"),
        // (Without the doorkeeper, which would turn these one-off answers away unrecorded once
        // the tier is full.)
        "cache-noretain" => {
            format!("{cfg}\ncache: {{max_bytes: 600, max_entry_bytes: 600, admission_keys: 0}}\n")
        }
        // `reuse` keeping every answer (no doorkeeper: `admission_keys: 0`), as before
        // 2026-12-02: each miss once the tier is full records, keeps and evicts.
        "reuse-keepall" => format!("{cfg}\ncache: {{admission_keys: 0}}\n"),
        _ => cfg,
    })
}

/// The `tracing` variant of the sluice arm: the same config with trace export on, every
/// request sampled, spans batched to the OTLP/HTTP sink on `sink` (an in-process mock upstream
/// of the harness answering 200, started on a port bound to 0): what one request span and one
/// attempt span per request cost, exported.
pub fn tracing_variant_config(proxy: u16, admin: u16, upstream: u16, sink: u16) -> String {
    let cfg = config_with(proxy, admin, upstream, "{}", false);
    format!(
        "{cfg}\ntracing: {{otlp_endpoint: \"http://127.0.0.1:{sink}/v1/traces\", sample_ratio: 1.0}}\n"
    )
}

/// Every policy of the sluice arm: a model with a price and an output ceiling, the virtual
/// key (env `BENCH_VIRTUAL_KEY`) naming tenant `bench`, and every tenant limit and budget, set
/// far above the load so nothing is rejected.
pub const SLUICE_POLICIES: &str = r#"
models:
  - match: "gpt-4o-mini*"
    max_output_tokens: 16384
    price: {input_per_1m: 0.15, output_per_1m: 0.60, cached_input_per_1m: 0.075}
limits:
  default_max_output_tokens: 4096
tenants:
  header: x-sluice-tenant
  reject_unknown_keys: true
  list:
    - name: bench
      virtual_keys: [{env: BENCH_VIRTUAL_KEY}]
      limits:
        requests_per_second: 1000000000
        requests_per_minute: 1000000000
        tokens_per_minute: 1000000000000
        input_tokens_per_minute: 1000000000000
        output_tokens_per_minute: 1000000000000
        max_concurrent: 1000000
        budget: {usd_per_day: 1000000000, usd_per_month: 1000000000}
        models:
          - {model: "gpt-4o*", requests_per_minute: 1000000000, tokens_per_minute: 1000000000000, max_concurrent: 1000000}
"#;

/// nginx: one worker on `port`, `proxy_pass` to a keep-alive upstream on `upstream`, no
/// buffering; its files under `dir`.
pub fn nginx_config(dir: &Path, port: u16, upstream: u16) -> String {
    let d = dir.display();
    format!(
        r#"daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 19990; }}
http {{
    access_log off;
    client_body_temp_path {d}/nginx-body;
    proxy_temp_path {d}/nginx-proxy;
    fastcgi_temp_path {d}/nginx-fastcgi;
    uwsgi_temp_path {d}/nginx-uwsgi;
    scgi_temp_path {d}/nginx-scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    upstream llm {{
        server 127.0.0.1:{upstream};
        keepalive 256;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://llm;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 3600s;
        }}
    }}
}}
"#
    )
}

/// LiteLLM: the model routed to the bench upstream on `upstream` with the upstream key.
pub fn litellm_config(upstream: u16) -> String {
    format!(
        r#"model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_base: "http://127.0.0.1:{upstream}/v1"
      api_key: "{UPSTREAM_KEY}"
litellm_settings:
  drop_params: true
  telemetry: false
general_settings:
  master_key: "{LITELLM_MASTER}"
"#
    )
}

/// A request of each kind must succeed before an arm is measured.
pub async fn smoke(arm: &Arm) -> Result<(), String> {
    let to = Duration::from_secs(30);
    let mut c = Client::new(arm.addr, to);
    let r = c
        .send(&chat_request(arm.addr, &arm.auth, false, ""), true)
        .await
        .ok_or("non-stream request failed")?;
    if r.status != 200 || find(&r.body, b"\"usage\"").is_none() {
        return Err(format!(
            "non-stream: status {} body {}",
            r.status,
            String::from_utf8_lossy(&r.body)
                .chars()
                .take(300)
                .collect::<String>()
        ));
    }
    let r = c
        .send(&chat_request(arm.addr, &arm.auth, true, ""), true)
        .await
        .ok_or("stream request failed")?;
    if r.status != 200 || find(&r.body, b"data: [DONE]").is_none() {
        return Err(format!(
            "stream: status {} body {}",
            r.status,
            String::from_utf8_lossy(&r.body)
                .chars()
                .take(300)
                .collect::<String>()
        ));
    }
    Ok(())
}
