use super::*;
use crate::config::parse;
use sha2::{Digest, Sha256};

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

#[test]
fn endpoint_health_survives_a_recompile_and_follows_key_values() {
    use crate::balance::{now_ms, Registry};
    let registry = Arc::new(Registry::default());
    let dir = std::env::temp_dir().join(format!("sluice-registry-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (k1, k2) = (dir.join("k1"), dir.join("k2"));
    std::fs::write(&k1, "sk-one").unwrap();
    std::fs::write(&k2, "sk-two").unwrap();
    let yaml = |extra: &str| {
        format!(
            "pools:\n  - name: kept\n    provider: openai\n    breaker: {{consecutive_failures: 1, open_ms: 600000}}\n    endpoints:\n      - url: http://127.0.0.1:9/\n        keys: [{{file: {}}}, {{file: {}}}]\n{extra}",
            k1.display(),
            k2.display()
        )
    };
    let gone = "  - name: gone\n    provider: openai\n    endpoints: [{url: http://127.0.0.1:10, keys: [{env: PATH}]}]\n";
    let build = |text: &str| compile_with(&parse(text).unwrap(), Secrets::Load, &registry).unwrap();
    let first = build(&yaml(gone));
    assert_eq!(registry.entries(), (2, 3));
    let ep = &first.pools["kept"].endpoints[0];
    ep.state.breaker.failure();
    ep.state.keys.disable(0);
    let until = now_ms() + 600_000;
    ep.state.keys.cool_down(1, Some("m"), until);

    // A reload that drops pool "gone" and adds a route.
    let second =
        build(&(yaml("") + "routes:\n  - {name: r, match: {path_prefix: /v1}, pools: [kept]}\n"));
    let ep = &second.pools["kept"].endpoints[0];
    assert!(ep.state.breaker.admit().is_err(), "still open");
    let now = now_ms();
    assert_eq!(
        ep.state.keys.pick(now, Some("m")),
        Err(Some(until)),
        "key 0 disabled, key 1 cooling for m"
    );
    assert_eq!(ep.state.keys.pick(now, Some("n")), Ok(1));
    let exported = |pool: &str| {
        prometheus::gather()
            .iter()
            .filter(|f| f.name() == "sluice_breaker_state")
            .flat_map(|f| f.get_metric())
            .any(|m| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == "pool" && l.value() == pool)
            })
    };
    assert!(exported("gone"));
    drop(first);
    assert!(
        !exported("gone"),
        "a removed endpoint's breaker is no longer exported"
    );
    assert!(exported("kept"));
    assert_eq!(
        registry.entries(),
        (1, 2),
        "the removed endpoint is forgotten"
    );

    // Key 0 rotated: a new value starts fresh; the breaker is the endpoint's, kept.
    std::fs::write(&k1, "sk-one-rotated").unwrap();
    let third = build(&yaml(""));
    let ep = &third.pools["kept"].endpoints[0];
    assert_eq!(ep.state.keys.pick(now, Some("m")), Ok(0));
    assert!(ep.state.breaker.admit().is_err());
    drop(second);
    assert_eq!(registry.entries(), (1, 2), "the old key 0 is forgotten");
    drop(third);
    assert_eq!(registry.entries(), (0, 0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn route_prefixes_health_paths_and_azure_model_map_are_checked() {
    let yaml = "pools:\n  - name: az\n    provider: azure_openai\n    api_version: '2024-10-21'\n    model_map: {gpt-4o: 'x/../../files?a=', ok: gpt-4o.mini_v2}\n    health_check: {path: /openai/../models}\n    endpoints:\n      - url: http://127.0.0.1:9\n        keys: [{env: K}]\nroutes:\n  - {name: a, match: {path_prefix: /v1/../v2}, pools: [az]}\n  - {name: b, match: {path_prefix: '/v1//x'}, pools: [az]}\n  - {name: c, match: {path_prefix: /v1/}, pools: [az]}\n";
    let errs = errors(yaml);
    for e in [
        "pools[0].model_map.gpt-4o: \"x/../../files?a=\" is not a valid deployment name",
        "pools[0].health_check.path: must be a normalized path",
        "routes[0].match.path_prefix: must be a normalized path",
        "routes[1].match.path_prefix: must be a normalized path",
    ] {
        assert!(
            errs.iter().any(|x| x.starts_with(e)),
            "missing {e:?} in {errs:#?}"
        );
    }
    assert_eq!(errs.len(), 4, "{errs:#?}");
}

#[test]
fn connection_bounds_default_and_reject_zero() {
    let snap = compile(&parse(POOL).unwrap(), Secrets::Skip).unwrap();
    assert_eq!(snap.connections.header_timeout, Duration::from_secs(10));
    assert_eq!(
        snap.connections.keepalive_idle_timeout,
        Duration::from_secs(75)
    );
    assert_eq!(snap.connections.max_connections, 2048);
    assert_eq!(snap.connections.write_timeout, Duration::from_secs(60));
    let yaml = format!(
        "{POOL}server: {{header_timeout_ms: 0, keepalive_idle_timeout_ms: 0, max_client_connections: 0, client_write_timeout_ms: 0}}\n"
    );
    assert_eq!(
        errors(&yaml),
        vec![
            "server.header_timeout_ms: must be greater than 0",
            "server.keepalive_idle_timeout_ms: must be greater than 0",
            "server.client_write_timeout_ms: must be greater than 0",
            "server.max_client_connections: must be at least 1",
        ]
    );
}

/// Found by `config::props::arbitrary_numbers_never_panic`: the endpoints' breakers were built
/// before `failure_ratio` was checked, and the breaker crate then in use panicked on a ratio outside [0, 1].
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

#[test]
fn client_buffers_default_take_zero_and_are_capped() {
    use crate::config::snapshot::ClientBuffers;
    let snap = compile(&parse(POOL).unwrap(), Secrets::Skip).unwrap();
    assert_eq!(
        snap.client_buffers,
        ClientBuffers {
            read_bytes: 8192,
            write_bytes: 1460
        }
    );
    let yaml = format!(
        "{POOL}server: {{client_read_buffer_bytes: 0, client_write_buffer_bytes: 16384}}\n"
    );
    let snap = compile(&parse(&yaml).unwrap(), Secrets::Skip).unwrap();
    assert_eq!(
        snap.client_buffers,
        ClientBuffers {
            read_bytes: 0,
            write_bytes: 16384
        }
    );
    let yaml = format!(
        "{POOL}server: {{client_read_buffer_bytes: 1048577, client_write_buffer_bytes: 4294967296}}\n"
    );
    assert_eq!(
        errors(&yaml),
        vec![
            "server.client_read_buffer_bytes: must be at most 1048576 (1 MiB per connection)",
            "server.client_write_buffer_bytes: must be at most 1048576 (1 MiB per connection)",
        ]
    );
}

#[test]
fn the_pooled_connection_idle_time_defaults_to_a_minute_and_is_per_pool() {
    let pool_idle = |yaml: &str| {
        let snap = compile(&parse(yaml).unwrap(), Secrets::Skip).unwrap();
        snap.pools["oa"].timeouts.pool_idle
    };
    assert_eq!(pool_idle(POOL), std::time::Duration::from_secs(60));
    let yaml = format!("{POOL}    timeouts: {{pool_idle_ms: 5000}}\n");
    assert_eq!(pool_idle(&yaml), std::time::Duration::from_secs(5));
    let yaml = format!("{POOL}    timeouts: {{pool_idle_ms: 0}}\n");
    assert_eq!(
        errors(&yaml),
        ["pools[0].timeouts.pool_idle_ms: must be greater than 0"]
    );
}

#[test]
fn retry_rules_default_compile_and_are_validated() {
    let route = |failover: &str| {
        format!("{POOL}routes:\n  - name: r\n    match: {{path_prefix: /v1}}\n    pools: [oa]\n    failover: {failover}\n")
    };
    let snap = compile(&parse(&route("{}")).unwrap(), Secrets::Skip).unwrap();
    let f = &snap.routes[0].failover;
    assert_eq!(f.retry.max_retries, 1);
    assert_eq!(f.retry.on_status, [500, 502]);
    assert!(f.retry.on_reset && !f.retry.on_timeout);
    assert_eq!(f.retry.backoff, std::time::Duration::from_millis(100));
    assert_eq!(f.retry.max_backoff, std::time::Duration::from_secs(2));
    assert!(!f.reads_error_bodies());
    assert_eq!(f.max_error_body_bytes, 16 * 1024);

    let yaml =
        route("{retry_on_error_messages: ['Prompt Is Too Long'], max_error_body_bytes: 512}");
    let snap = compile(&parse(&yaml).unwrap(), Secrets::Skip).unwrap();
    let f = &snap.routes[0].failover;
    assert!(f.reads_error_bodies());
    assert_eq!(f.retry_on_error_messages, ["prompt is too long"]);
    assert_eq!(f.max_error_body_bytes, 512);

    let yaml = route("{retry: {on_status: [404, 503]}, retry_on_error_codes: [context_length_exceeded, Content_Filter]}");
    assert_eq!(
        errors(&yaml),
        [
            "routes[0].failover.retry.on_status[0]: 404: only 408, 429 and 5xx can be retried",
            "routes[0].failover.retry_on_error_codes[1]: Content_Filter: a content-filter rejection is never retried",
        ]
    );
    let yaml = route("{retry_on_error_codes: [x], max_error_body_bytes: 0}");
    assert_eq!(
        errors(&yaml),
        ["routes[0].failover.max_error_body_bytes: must be greater than 0 when retry_on_error_codes is set"]
    );
}

#[test]
fn resume_on_cut_defaults_off_and_refuses_what_could_never_resume() {
    let route = |failover: &str| {
        format!("routes:\n  - name: r\n    match: {{path_prefix: /v1}}\n    pools: [oa]\n    failover: {failover}\n")
    };
    let compiled = |yaml: &str| compile(&parse(yaml).unwrap(), Secrets::Skip).unwrap();
    let off = compiled(&format!("{POOL}{}", route("{}")));
    assert_eq!(off.routes[0].max_resumes, 0);
    assert_eq!(
        off.pools["oa"].prefill,
        crate::config::schema::Prefill::None
    );
    let with_prefill = format!("{POOL}    prefill: continue_prompt\n");
    let on = compiled(&format!("{with_prefill}{}", route("{resume_on_cut: true}")));
    assert_eq!(on.routes[0].max_resumes, 1);
    assert_eq!(
        on.pools["oa"].prefill,
        crate::config::schema::Prefill::ContinuePrompt
    );
    assert_eq!(
        errors(&format!("{POOL}{}", route("{resume_on_cut: true}"))),
        ["routes[0].failover.resume_on_cut: no pool of this route accepts a prefill (set pools[].prefill)"]
    );
    assert_eq!(
        errors(&format!(
            "{with_prefill}{}",
            route("{resume_on_cut: true, max_resumes: 9, max_attempts: 1}")
        )),
        [
            "routes[0].failover.max_resumes: must be between 1 and 8",
            "routes[0].failover.resume_on_cut: needs max_attempts of at least 2 (the continuation is an attempt)"
        ]
    );
    let typo = format!("{POOL}    prefill: yes\n");
    assert!(parse(&typo).is_err() || !errors(&typo).is_empty());
}

#[test]
fn cache_coalesce_and_hedge_default_off_compile_and_are_validated() {
    let route = "routes:\n  - name: r\n    match: {path_prefix: /v1}\n    pools: [oa]\n";
    let snap = compile(&parse(&format!("{POOL}{route}")).unwrap(), Secrets::Skip).unwrap();
    let r = &snap.routes[0];
    assert!(r.cache.is_none() && !r.coalesce && r.hedge.is_none());
    assert_eq!(snap.cache.max_bytes, 32 << 20);
    assert_eq!(snap.cache.max_entry_bytes, 1 << 20);
    assert_eq!(snap.cache.max_flight_bytes, 1 << 20);
    assert_eq!(snap.cache.max_flights_total_bytes, 16 << 20);
    assert_eq!(snap.cache.admission_keys, 65536);
    assert!(snap.cache.redis.is_none());

    let on = format!(
        "{POOL}{route}    cache: {{ttl_ms: 1000, scope: route, when: always}}\n    coalesce: true\n    hedge: {{after_ms: 250}}\ncache: {{max_bytes: 4096, max_entry_bytes: 1024}}\n"
    );
    let snap = compile(&parse(&on).unwrap(), Secrets::Skip).unwrap();
    let r = &snap.routes[0];
    let c = r.cache.as_ref().unwrap();
    assert_eq!(c.ttl, Duration::from_millis(1000));
    assert_eq!(c.scope, crate::config::cache::CacheScope::Route);
    assert!(c.hits_count_toward_limits);
    assert!(r.coalesce);
    let h = r.hedge.unwrap();
    assert_eq!((h.after, h.max), (Duration::from_millis(250), 1));
    assert_eq!(snap.cache.max_bytes, 4096);

    // The Redis tier defaults to the limits' Redis.
    let shared = format!(
        "{POOL}{route}    cache: {{store: redis}}\nlimits:\n  store: redis\n  redis: {{url: 'redis://127.0.0.1:1', timeout_ms: 20}}\n"
    );
    let snap = compile(&parse(&shared).unwrap(), Secrets::Skip).unwrap();
    let redis = snap.cache.redis.as_ref().unwrap();
    assert_eq!(redis.url, "redis://127.0.0.1:1");
    assert_eq!(redis.timeout, Duration::from_millis(20));

    let bad = format!(
        "{POOL}{route}    cache: {{ttl_ms: 0, store: redis}}\n    hedge: {{after_ms: 0, max: 9}}\ncache: {{max_bytes: 10, max_entry_bytes: 20, max_flight_bytes: 0, max_flights_total_bytes: 0, admission_keys: 16777217, redis: {{url: 'http://x'}}}}\n"
    );
    let errs = errors(&bad);
    for e in [
        "routes[0].cache.ttl_ms: must be greater than 0",
        "routes[0].hedge.after_ms: must be greater than 0",
        "routes[0].hedge.max: must be between 1 and 4",
        "cache.max_entry_bytes: must be greater than 0 and at most cache.max_bytes",
        "cache.redis.url: must be a redis:// (or rediss:// for TLS) URL",
        "cache.max_flight_bytes: must be greater than 0",
        "cache.max_flights_total_bytes: must be greater than 0",
        "cache.admission_keys: must be at most 16777216",
    ] {
        assert!(errs.iter().any(|x| x == e), "missing {e:?} in {errs:#?}");
    }
    let no_redis = format!("{POOL}{route}    cache: {{store: redis}}\n");
    assert!(errors(&no_redis)
        .iter()
        .any(|e| e.starts_with("cache.redis: required")));
}

#[test]
fn the_cache_redis_tier_bounds_default_and_are_validated() {
    let route = "routes:\n  - name: r\n    match: {path_prefix: /v1}\n    pools: [oa]\n    cache: {store: redis}\n";
    // Defaults: values up to max_entry_bytes + 64 KiB, 8 MiB of writes in flight.
    let own = format!("{POOL}{route}cache: {{redis: {{url: 'redis://127.0.0.1:1/2'}}}}\n");
    let snap = compile(&parse(&own).unwrap(), Secrets::Skip).unwrap();
    let r = snap.cache.redis.as_ref().unwrap();
    assert_eq!(r.timeout, Duration::from_millis(50));
    assert_eq!(r.connect_timeout, Duration::from_millis(1000));
    assert_eq!(r.max_value_bytes, (1 << 20) + 64 * 1024);
    assert_eq!(r.max_pending_put_bytes, 8 << 20);
    // The default backlog always holds one largest value.
    let big = format!(
        "{POOL}{route}cache: {{max_bytes: 67108864, max_entry_bytes: 16777216, redis: {{url: 'redis://h:1'}}}}\n"
    );
    let snap = compile(&parse(&big).unwrap(), Secrets::Skip).unwrap();
    let r = snap.cache.redis.as_ref().unwrap();
    assert_eq!(r.max_pending_put_bytes, r.max_value_bytes);
    // Set explicitly: at least one largest entry; a URL the Redis client refuses.
    let bad = format!(
        "{POOL}{route}cache: {{max_entry_bytes: 4096, redis: {{url: 'redis://h:notaport', max_pending_put_bytes: 100}}}}\n"
    );
    let errs = errors(&bad);
    for e in [
        "cache.redis.max_pending_put_bytes: must be at least cache.max_entry_bytes",
        "cache.redis.url: not a valid Redis URL",
    ] {
        assert!(errs.iter().any(|x| x == e), "missing {e:?} in {errs:#?}");
    }
    // No route stores in Redis: no tier, even with cache.redis set.
    let memory = format!(
        "{POOL}routes:\n  - name: r\n    match: {{path_prefix: /v1}}\n    pools: [oa]\n    cache: {{}}\ncache: {{redis: {{url: 'redis://h:1'}}}}\n"
    );
    let snap = compile(&parse(&memory).unwrap(), Secrets::Skip).unwrap();
    assert!(snap.cache.redis.is_none());
}

#[test]
fn bedrock_pools_need_a_region_and_only_they_take_one() {
    let bedrock = |region: &str| {
        format!("pools:\n  - name: b\n    provider: bedrock\n{region}    endpoints:\n      - url: http://127.0.0.1:9\n        keys: [{{env: K}}]\n")
    };
    assert_eq!(
        errors(&bedrock("")),
        ["pools[0].region: required for provider bedrock"]
    );
    assert!(errors(&bedrock("    region: 'us east'\n"))[0].starts_with("pools[0].region: must be"));
    let snap = compile(
        &parse(&bedrock("    region: us-west-2\n")).unwrap(),
        Secrets::Skip,
    )
    .unwrap();
    assert_eq!(snap.pools["b"].region.as_deref(), Some("us-west-2"));
    let other = POOL.replace(
        "provider: openai\n",
        "provider: openai\n    region: us-west-2\n",
    );
    assert_eq!(
        errors(&other),
        ["pools[0].region: only for provider bedrock"]
    );
}

#[test]
fn the_purge_token_is_kept_as_its_digest_and_a_missing_one_is_an_error_when_loading() {
    let hexed = hex::encode(Sha256::digest(b"t0ken"));
    let yaml =
        format!("{POOL}cache: {{admin_purge: true, admin_purge_token: {{sha256: {hexed}}}}}\n");
    let snap = compile(&parse(&yaml).unwrap(), Secrets::Skip).unwrap();
    assert!(snap.cache.admin_purge);
    assert_eq!(
        snap.cache.admin_purge_token_sha256,
        Some(<[u8; 32]>::from(Sha256::digest(b"t0ken")))
    );
    let unset = format!(
        "{POOL}cache: {{admin_purge: true, admin_purge_token: {{env: SLUICE_TEST_SURELY_UNSET_VAR}}}}\n"
    );
    let file = parse(&unset).unwrap();
    assert!(compile(&file, Secrets::Skip).is_ok());
    let errs = compile(&file, Secrets::Load).unwrap_err().to_string();
    assert!(
        errs.contains(
            "cache.admin_purge_token: environment variable SLUICE_TEST_SURELY_UNSET_VAR is not set"
        ),
        "{errs}"
    );
    let both = format!("{POOL}cache: {{admin_purge_token: {{env: A, sha256: {hexed}}}}}\n");
    assert_eq!(
        errors(&both),
        ["cache.admin_purge_token: set exactly one of env, file, sha256"]
    );
}
