//! [`ConfigFile`] -> [`Snapshot`]: semantic validation (references, URLs, globs, names) with
//! every error collected and path-qualified, then compilation into the runtime form.

use super::limits::{compile_limits, compile_models};
use super::parse::ConfigFile;
use super::schema::{EndpointConf, PoolConf, ProviderKind, StoreKind};
use super::snapshot::HealthCheck;
use super::snapshot::{Accounting, Endpoint, Pool, Route, Snapshot, Timeouts};
use super::{ConfigError, ConfigErrors, Secret};
use crate::balance::{registry, EndpointId, Registry};
use globset::Glob;
use http::{HeaderName, Uri};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Largest L4 buffer a client connection may be given (`server.client_*_buffer_bytes`): 1 MiB,
/// 16 times Pingora's default, so a typo cannot make every connection cost megabytes.
const MAX_CLIENT_BUFFER_BYTES: u64 = 1 << 20;

/// Whether compilation reads secrets (env vars, key files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    /// Read every key; a missing one is an error (`sluice run`).
    Load,
    /// Check the structure only (`sluice validate`, where Secrets are not mounted).
    Skip,
}

/// Validate and compile. Errors: every problem found, in document order, path-qualified.
///
/// Endpoint health (breakers, cooldowns, disabled keys) comes from the process's
/// [`Registry`]: endpoints and keys unchanged since the config in force keep theirs.
pub fn compile(file: &ConfigFile, secrets: Secrets) -> Result<Snapshot, ConfigErrors> {
    compile_with(file, secrets, registry())
}

/// [`compile`] with endpoint health from `registry`.
pub(crate) fn compile_with(
    file: &ConfigFile,
    secrets: Secrets,
    registry: &Arc<Registry>,
) -> Result<Snapshot, ConfigErrors> {
    let mut errs = Errors::default();

    let proxy: Option<SocketAddr> = errs.addr("listeners.proxy", &file.listeners.proxy);
    let admin: Option<SocketAddr> = errs.addr("listeners.admin", &file.listeners.admin);
    if proxy.is_some() && proxy == admin {
        errs.push("listeners.admin", "must differ from listeners.proxy");
    }
    if file.server.threads == 0 {
        errs.push("server.threads", "must be at least 1");
    }
    if file.reload.poll_interval_ms < 100 {
        errs.push("reload.poll_interval_ms", "must be at least 100");
    }
    if file.server.max_body_bytes == 0 {
        errs.push("server.max_body_bytes", "must be greater than 0");
    }
    if file.server.header_timeout_ms == 0 {
        errs.push("server.header_timeout_ms", "must be greater than 0");
    }
    if file.server.keepalive_idle_timeout_ms == 0 {
        errs.push("server.keepalive_idle_timeout_ms", "must be greater than 0");
    }
    if file.server.admin_max_connections == 0 {
        errs.push("server.admin_max_connections", "must be at least 1");
    }
    if file.server.admin_connection_timeout_ms == 0 {
        errs.push(
            "server.admin_connection_timeout_ms",
            "must be greater than 0",
        );
    }
    if file.server.client_write_timeout_ms == 0 {
        errs.push("server.client_write_timeout_ms", "must be greater than 0");
    }
    if file.server.max_client_connections == 0 {
        errs.push("server.max_client_connections", "must be at least 1");
    }
    for (name, value) in [
        (
            "client_read_buffer_bytes",
            file.server.client_read_buffer_bytes,
        ),
        (
            "client_write_buffer_bytes",
            file.server.client_write_buffer_bytes,
        ),
    ] {
        if value > MAX_CLIENT_BUFFER_BYTES {
            errs.push(
                format!("server.{name}"),
                "must be at most 1048576 (1 MiB per connection)",
            );
        }
    }
    let acc = &file.accounting;
    for (name, value) in [
        ("max_sse_event_bytes", acc.max_sse_event_bytes),
        ("max_json_body_bytes", acc.max_json_body_bytes),
        ("max_usage_tokens", acc.max_usage_tokens),
    ] {
        if value == 0 {
            errs.push(format!("accounting.{name}"), "must be greater than 0");
        }
    }

    let mut pools: HashMap<String, Arc<Pool>> = HashMap::new();
    for (i, p) in file.pools.iter().enumerate() {
        let path = format!("pools[{i}]");
        if p.name.is_empty() {
            errs.push(format!("{path}.name"), "must not be empty");
        } else if pools.contains_key(&p.name) {
            errs.push(
                format!("{path}.name"),
                format!("duplicate pool name {:?}", p.name),
            );
        }
        if let Some(pool) = compile_pool(&path, p, secrets, registry, &mut errs) {
            pools.insert(p.name.clone(), Arc::new(pool));
        }
    }

    let mut routes = Vec::new();
    let mut route_names = HashSet::new();
    for (i, r) in file.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        if r.name.is_empty() {
            errs.push(format!("{path}.name"), "must not be empty");
        } else if !route_names.insert(r.name.as_str()) {
            errs.push(
                format!("{path}.name"),
                format!("duplicate route name {:?}", r.name),
            );
        }
        let m = &r.matcher;
        if !m.path_prefix.starts_with('/') {
            errs.push(format!("{path}.match.path_prefix"), "must start with '/'");
        } else if !is_normal_path(&m.path_prefix) {
            // Requests are matched on their normalized path: this prefix would never match.
            errs.push(
                format!("{path}.match.path_prefix"),
                "must be a normalized path (no '.', '..' or empty segments, no encoded dots)",
            );
        }
        let model = m.model.as_ref().and_then(|g| match Glob::new(g) {
            Ok(glob) => Some(glob.compile_matcher()),
            Err(e) => {
                errs.push(format!("{path}.match.model"), format!("invalid glob: {e}"));
                None
            }
        });
        let header = m.header.as_ref().and_then(|h| {
            match HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes()) {
                Ok(name) => Some((name, h.value.clone())),
                Err(_) => {
                    errs.push(format!("{path}.match.header.name"), "invalid header name");
                    None
                }
            }
        });
        if r.pools.is_empty() {
            errs.push(format!("{path}.pools"), "must name at least one pool");
        }
        let mut resolved = Vec::new();
        for (j, name) in r.pools.iter().enumerate() {
            match pools.get(name) {
                Some(p) => resolved.push(p.clone()),
                // The pool had errors of its own, already reported.
                None if file.pools.iter().any(|p| &p.name == name)
                    || file.broken_pools.contains(name) => {}
                None => errs.push(
                    format!("{path}.pools[{j}]"),
                    format!("unknown pool {name:?}"),
                ),
            }
        }
        if !resolved.is_empty() && resolved.len() == r.pools.len() {
            let (failover, max_resumes) =
                failover::compile_failover(&path, &r.failover, &resolved, &mut errs);
            let route_cache = r
                .cache
                .as_ref()
                .map(|c| cache::compile_route_cache(&path, c, &mut errs));
            let hedge = r
                .hedge
                .as_ref()
                .map(|h| cache::compile_hedge(&path, h, &mut errs));
            routes.push(Route {
                name: Arc::from(r.name.as_str()),
                path_prefix: m.path_prefix.clone(),
                model,
                header,
                pools: resolved,
                failover,
                max_resumes,
                cache: route_cache,
                coalesce: r.coalesce,
                hedge,
            });
        }
    }

    let tenants = compile_tenants(file, secrets, &mut errs);
    let mut limits = HashMap::new();
    for (i, t) in file.tenants.list.iter().enumerate() {
        if let Some(l) = &t.limits {
            let path = format!("tenants.list[{i}].limits");
            limits.insert(
                t.name.clone(),
                Arc::new(compile_limits(&path, l, &mut errs.0)),
            );
        }
    }
    let default_limits = file
        .limits
        .default
        .as_ref()
        .map(|l| Arc::new(compile_limits("limits.default", l, &mut errs.0)));
    if file.limits.default_max_output_tokens == 0 {
        errs.push("limits.default_max_output_tokens", "must be at least 1");
    }
    let models = compile_models(&file.models, &mut errs.0);
    let redis = match (file.limits.store, &file.limits.redis) {
        (StoreKind::Local, _) => None,
        (StoreKind::Redis, None) => {
            errs.push("limits.redis", "required with store: redis");
            None
        }
        (StoreKind::Redis, Some(r)) => {
            if !["redis://", "rediss://", "redis+unix://"]
                .iter()
                .any(|p| r.url.starts_with(p))
            {
                errs.push(
                    "limits.redis.url",
                    "must be a redis:// (or rediss:// for TLS) URL",
                );
            }
            if r.timeout_ms == 0 || r.expected_replicas == 0 || r.lease_ms == 0 {
                errs.push(
                    "limits.redis",
                    "timeout_ms, expected_replicas and lease_ms must be at least 1",
                );
            }
            Some(r.clone())
        }
    };

    let cache = cache::compile_settings(
        &file.cache,
        file.limits.redis.as_ref(),
        file.routes
            .iter()
            .any(|r| cache::uses_redis(r.cache.as_ref())),
        secrets,
        &mut errs,
    );

    let profiling = debug::compile_debug(
        &file.debug,
        file.server.admin_connection_timeout_ms,
        &mut errs,
    );
    let tracing = traces::compile_tracing(&file.tracing, &mut errs);

    if !errs.0.is_empty() {
        return Err(ConfigErrors(errs.0));
    }
    let (Some(proxy), Some(admin)) = (proxy, admin) else {
        return Err(ConfigErrors::one("listeners", "invalid address"));
    };
    // Valid: breakers shared with the config in force take this one's settings.
    for p in &file.pools {
        for ep in pools.get(&p.name).iter().flat_map(|pool| &pool.endpoints) {
            ep.state.breaker.configure(&p.breaker);
        }
    }
    Ok(Snapshot {
        proxy_addr: proxy.to_string(),
        admin_addr: admin.to_string(),
        admin_max_connections: file.server.admin_max_connections,
        admin_connection_timeout: Duration::from_millis(file.server.admin_connection_timeout_ms),
        threads: file.server.threads,
        max_body_bytes: usize::try_from(file.server.max_body_bytes).unwrap_or(usize::MAX),
        log_format: file.server.log_format,
        drain_timeout: Duration::from_secs(file.server.drain_timeout_seconds),
        reload_watch: file.reload.watch,
        reload_poll: Duration::from_millis(file.reload.poll_interval_ms),
        source_sha256: String::new(),
        key_files: key_files(file),
        routes,
        pools,
        tenants,
        limits,
        default_limits,
        default_max_output_tokens: file.limits.default_max_output_tokens,
        models,
        redis,
        connections: super::snapshot::ConnectionLimits {
            header_timeout: Duration::from_millis(file.server.header_timeout_ms),
            keepalive_idle_timeout: Duration::from_millis(file.server.keepalive_idle_timeout_ms),
            max_connections: file.server.max_client_connections,
            write_timeout: Duration::from_millis(file.server.client_write_timeout_ms),
        },
        client_buffers: super::snapshot::ClientBuffers {
            read_bytes: usize::try_from(file.server.client_read_buffer_bytes).unwrap_or(usize::MAX),
            write_bytes: usize::try_from(file.server.client_write_buffer_bytes)
                .unwrap_or(usize::MAX),
        },
        cache,
        accounting: Accounting {
            max_sse_event_bytes: usize::try_from(acc.max_sse_event_bytes).unwrap_or(usize::MAX),
            max_json_body_bytes: usize::try_from(acc.max_json_body_bytes).unwrap_or(usize::MAX),
            max_usage_tokens: acc.max_usage_tokens,
        },
        profiling,
        tracing,
    })
}

/// Every `file:` key source in the config, deduplicated.
fn key_files(file: &ConfigFile) -> Vec<String> {
    let mut out: Vec<String> = file
        .pools
        .iter()
        .flat_map(|p| p.endpoints.iter())
        .flat_map(|e| e.keys.iter())
        .filter_map(|k| k.file.clone())
        .chain(
            file.tenants
                .list
                .iter()
                .flat_map(|t| t.virtual_keys.iter())
                .filter_map(|k| k.file.clone()),
        )
        .collect();
    out.sort();
    out.dedup();
    out
}

#[derive(Default)]
pub(super) struct Errors(Vec<ConfigError>);

impl Errors {
    pub(super) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn addr(&mut self, path: &str, value: &str) -> Option<SocketAddr> {
        match value.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.push(path, format!("{value:?} is not an ip:port address"));
                None
            }
        }
    }
}

fn compile_pool(
    path: &str,
    p: &PoolConf,
    secrets: Secrets,
    registry: &Arc<Registry>,
    errs: &mut Errors,
) -> Option<Pool> {
    let before = errs.0.len();
    if p.endpoints.is_empty() {
        errs.push(
            format!("{path}.endpoints"),
            "must list at least one endpoint",
        );
    }
    if p.provider == ProviderKind::AzureOpenAi && p.api_version.is_none() {
        errs.push(
            format!("{path}.api_version"),
            "required for provider azure_openai",
        );
    }
    match (p.provider == ProviderKind::Bedrock, p.region.as_deref()) {
        (true, None) => errs.push(format!("{path}.region"), "required for provider bedrock"),
        (true, Some(r))
            if r.is_empty() || !r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
        {
            errs.push(
                format!("{path}.region"),
                "must be an AWS region name such as us-east-1",
            )
        }
        (false, Some(_)) => errs.push(format!("{path}.region"), "only for provider bedrock"),
        _ => {}
    }
    let t = &p.timeouts;
    for (name, v) in [
        ("connect_ms", t.connect_ms),
        ("ttfb_ms", t.ttfb_ms),
        ("idle_ms", t.idle_ms),
        ("pool_idle_ms", t.pool_idle_ms),
    ] {
        if v == 0 {
            errs.push(format!("{path}.timeouts.{name}"), "must be greater than 0");
        }
    }
    let mut endpoints = Vec::new();
    for (j, e) in p.endpoints.iter().enumerate() {
        let ep_path = format!("{path}.endpoints[{j}]");
        if let Some(ep) = compile_endpoint(p, &ep_path, e, secrets, registry, errs) {
            endpoints.push(ep);
        }
    }
    let b = &p.breaker;
    if b.consecutive_failures == 0 {
        errs.push(
            format!("{path}.breaker.consecutive_failures"),
            "must be at least 1",
        );
    }
    if b.failure_ratio.is_some_and(|r| !(r > 0.0 && r <= 1.0)) {
        errs.push(format!("{path}.breaker.failure_ratio"), "must be in (0, 1]");
    }
    if p.max_cooldown_models_per_key == 0 {
        errs.push(
            format!("{path}.max_cooldown_models_per_key"),
            "must be at least 1",
        );
    }
    if b.open_ms == 0 || b.window_ms == 0 {
        errs.push(
            format!("{path}.breaker"),
            "open_ms and window_ms must be greater than 0",
        );
    }
    let health_check = p.health_check.as_ref().map(|h| {
        if !h.path.starts_with('/') {
            errs.push(format!("{path}.health_check.path"), "must start with '/'");
        } else if !is_normal_path(h.path.split('?').next().unwrap_or_default()) {
            errs.push(
                format!("{path}.health_check.path"),
                "must be a normalized path (no '.', '..' or empty segments, no encoded dots)",
            );
        }
        if h.interval_ms < 100 || h.timeout_ms == 0 {
            errs.push(
                format!("{path}.health_check"),
                "interval_ms must be at least 100 and timeout_ms greater than 0",
            );
        }
        HealthCheck {
            path: h.path.clone(),
            interval: Duration::from_millis(h.interval_ms),
            timeout: Duration::from_millis(h.timeout_ms),
        }
    });
    let prov = crate::provider::provider(p.provider);
    for (from, to) in &p.model_map {
        if !prov.accepts_model(to) {
            errs.push(
                format!("{path}.model_map.{from}"),
                format!("{to:?} is not a valid deployment name (letters, digits, '-', '_', '.'; at most 64)"),
            );
        }
    }
    if errs.0.len() != before {
        return None;
    }
    let mut pool = Pool::new(
        Arc::from(p.name.as_str()),
        p.provider,
        endpoints,
        Timeouts {
            connect: Duration::from_millis(t.connect_ms),
            ttfb: Duration::from_millis(t.ttfb_ms),
            idle: Duration::from_millis(t.idle_ms),
            pool_idle: Duration::from_millis(t.pool_idle_ms),
        },
        p.api_version.clone(),
    );
    pool.policy = p.policy;
    pool.model_map = p.model_map.clone().into_iter().collect();
    pool.health_check = health_check;
    pool.prefill = p.prefill;
    pool.region = p.region.clone();
    Some(pool)
}

fn compile_endpoint(
    pool: &PoolConf,
    path: &str,
    e: &EndpointConf,
    secrets: Secrets,
    registry: &Arc<Registry>,
    errs: &mut Errors,
) -> Option<Endpoint> {
    let url_path = format!("{path}.url");
    let uri: Uri = match e.url.parse() {
        Ok(u) => u,
        Err(err) => {
            errs.push(url_path, format!("invalid URL {:?}: {err}", e.url));
            return None;
        }
    };
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            errs.push(
                url_path,
                format!("{:?}: scheme must be http or https", e.url),
            );
            return None;
        }
    };
    let Some(host) = uri.host().map(str::to_owned) else {
        errs.push(url_path, format!("{:?}: missing host", e.url));
        return None;
    };
    if uri.query().is_some() {
        errs.push(
            url_path.clone(),
            format!("{:?}: must not have a query", e.url),
        );
    }
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let base_path = uri.path().trim_end_matches('/').to_owned();
    if e.keys.is_empty() {
        errs.push(
            format!("{path}.keys"),
            "must list at least one key (env or file)",
        );
    }
    for (k, src) in e.keys.iter().enumerate() {
        if src.env.is_some() == src.file.is_some() && secrets == Secrets::Skip {
            errs.push(format!("{path}.keys[{k}]"), "set exactly one of env, file");
        }
    }
    let mut keys = Vec::new();
    if secrets == Secrets::Load {
        for (k, src) in e.keys.iter().enumerate() {
            let kp = format!("{path}.keys[{k}]");
            let loaded = match (&src.env, &src.file) {
                (Some(name), None) => read_env(name),
                (None, Some(file)) => read_file(file),
                _ => Err("set exactly one of env, file".to_owned()),
            };
            match loaded {
                Ok(v) => keys.push(Secret::new(v)),
                Err(msg) => errs.push(kp, msg),
            }
        }
    }
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    if e.weight == 0 {
        errs.push(format!("{path}.weight"), "must be at least 1");
    }
    let id = EndpointId {
        pool: pool.name.clone(),
        url: e.url.trim_end_matches('/').to_owned(),
    };
    let values: Vec<&str> = keys.iter().map(Secret::expose).collect();
    let state = registry.endpoint(
        &id,
        &addr,
        &pool.breaker,
        &values,
        pool.max_cooldown_models_per_key,
    );
    Some(Endpoint {
        weight: e.weight,
        state,
        addr,
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        tls,
        base_path,
        keys,
    })
}

/// The SHA-256 of the secret `src` names (exactly one of `env`, `file`, `sha256`), for
/// comparing what a client presents without keeping the secret. `None` when there is none to
/// compare with: an error (pushed at `path`), or `secrets` is `Skip` for an `env` or `file`.
pub(super) fn secret_digest(
    src: &crate::config::schema::VirtualKeySource,
    path: &str,
    secrets: Secrets,
    errs: &mut Errors,
) -> Option<[u8; 32]> {
    use sha2::{Digest, Sha256};
    let loaded = match (&src.env, &src.file, &src.sha256) {
        (None, None, Some(hexed)) => {
            let mut d = [0u8; 32];
            if hex::decode_to_slice(hexed.trim(), &mut d).is_err() {
                errs.push(path, "sha256 must be 64 hex characters");
                return None;
            }
            return Some(d);
        }
        (Some(_), None, None) | (None, Some(_), None) if secrets == Secrets::Skip => return None,
        (Some(name), None, None) => read_env(name),
        (None, Some(f), None) => read_file(f),
        _ => {
            errs.push(path, "set exactly one of env, file, sha256");
            return None;
        }
    };
    match loaded {
        Ok(secret) => Some(Sha256::digest(secret.as_bytes()).into()),
        Err(msg) => {
            errs.push(path, msg);
            None
        }
    }
}

pub(super) fn read_env(name: &str) -> Result<String, String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_owned()),
        Ok(_) => Err(format!("environment variable {name} is empty")),
        Err(_) => Err(format!("environment variable {name} is not set")),
    }
}

pub(super) fn read_file(path: &str) -> Result<String, String> {
    match std::fs::read_to_string(path) {
        Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_owned()),
        Ok(_) => Err(format!("key file {path} is empty")),
        Err(e) => Err(format!("cannot read key file {path}: {}", e.kind())),
    }
}

#[cfg(test)]
mod tests;

mod cache;
mod debug;
mod failover;
mod tenants;
mod traces;
use tenants::compile_tenants;

/// Whether `path` is already in the form the proxy normalizes request paths to (a trailing
/// slash allowed).
fn is_normal_path(path: &str) -> bool {
    matches!(
        crate::proxy::path::normalize(path),
        Ok(std::borrow::Cow::Borrowed(_))
    )
}
