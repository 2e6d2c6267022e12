//! The compiled, immutable configuration the request path reads: routes resolved to pools,
//! globs compiled, keys loaded, virtual keys hashed. Built once per (re)load by `compile.rs`.

use super::limits::{ModelInfo, TenantLimits};
use super::schema::{LogFormat, Policy, ProviderKind, RedisConf};
use super::Secret;
use crate::balance::{EndpointState, Selector};
use globset::GlobMatcher;
use http::HeaderName;
use pingora_http::RequestHeader;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// A tenant name as configured (a bounded set: safe as a metric label).
pub type TenantId = Arc<str>;

/// Upstream timeouts of a pool.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP (+TLS) connect.
    pub connect: Duration,
    /// Request sent -> response header.
    pub ttfb: Duration,
    /// Between two response body chunks.
    pub idle: Duration,
    /// An idle pooled upstream connection is kept this long for reuse.
    pub pool_idle: Duration,
}

/// One upstream endpoint: where to connect and with which key.
#[derive(Debug)]
pub struct Endpoint {
    /// `host:port`, the metric/log label and the connect address.
    pub addr: String,
    /// Host name for SNI and the `Host` header.
    pub host: String,
    /// TLS (https) or not.
    pub tls: bool,
    /// Path prefix prepended to the client's path (`""` or `/anthropic`), no trailing slash.
    pub base_path: String,
    /// Keys, tried in order (see [`crate::balance::keys`]). Empty only when the snapshot was
    /// compiled without secrets (`sluice validate`).
    pub keys: Vec<Secret>,
    /// Weight for the `weighted` policy.
    pub weight: u32,
    /// Breaker, key rotation, in-flight count, cooldown: shared with every other snapshot that
    /// has this endpoint (same pool name and URL; keys by value), see
    /// [`crate::balance::Registry`].
    pub state: EndpointState,
}

/// `pools[].health_check`, compiled.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// Path to GET.
    pub path: String,
    /// Interval.
    pub interval: Duration,
    /// Timeout of one check.
    pub timeout: Duration,
}

/// `routes[].failover`, compiled.
#[derive(Debug, Clone)]
pub struct Failover {
    /// Statuses that move on.
    pub retry_on_status: Vec<u16>,
    /// Move on after a connect error.
    pub retry_on_connect_error: bool,
    /// Move on after a connect / TTFB timeout.
    pub retry_on_timeout: bool,
    /// Most attempts.
    pub max_attempts: u32,
    /// Deadline for all attempts.
    pub deadline: Duration,
    /// Streamed inspected requests: most time from sending an attempt to its first content
    /// event (commit on content).
    pub first_token: Duration,
    /// Same-endpoint retries on transient failures.
    pub retry: Retry,
    /// Native error codes / types that move a 4xx answer on.
    pub retry_on_error_codes: Vec<String>,
    /// Message substrings, lower-cased, that move a 4xx answer on.
    pub retry_on_error_messages: Vec<String>,
    /// Most bytes of a 4xx body read to match its error.
    pub max_error_body_bytes: usize,
}

impl Failover {
    /// Whether a 4xx body's native error must be read at all (some code or message is listed).
    pub fn reads_error_bodies(&self) -> bool {
        !self.retry_on_error_codes.is_empty() || !self.retry_on_error_messages.is_empty()
    }
}

/// `routes[].failover.retry`, compiled.
#[derive(Debug, Clone)]
pub struct Retry {
    /// Most retries of one endpoint per request.
    pub max_retries: u32,
    /// Statuses retried on the same endpoint.
    pub on_status: Vec<u16>,
    /// Retry after a reset before the response header.
    pub on_reset: bool,
    /// Retry after a connect / TTFB timeout.
    pub on_timeout: bool,
    /// Backoff base.
    pub backoff: Duration,
    /// Backoff cap.
    pub max_backoff: Duration,
}

impl Retry {
    /// The wait before retry number `n` (0-based): uniform in `[0, min(max_backoff, backoff ×
    /// 2^n)]` ("full jitter", AWS Architecture Blog, "Exponential Backoff And Jitter").
    pub fn backoff_for(&self, n: u32) -> Duration {
        let ceiling = self
            .backoff
            .saturating_mul(1u32 << n.min(20))
            .min(self.max_backoff);
        let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(fastrand::u64(0..=ms))
    }
}

/// A pool of endpoints of one provider.
#[derive(Debug)]
pub struct Pool {
    /// Configured name (metric label).
    pub name: Arc<str>,
    /// Provider kind.
    pub provider: ProviderKind,
    /// At least one endpoint.
    pub endpoints: Vec<Endpoint>,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Azure `api-version`.
    pub api_version: Option<String>,
    /// Selection policy.
    pub policy: Policy,
    /// Model renames.
    pub model_map: HashMap<String, String>,
    /// Active health check.
    pub health_check: Option<HealthCheck>,
    /// How its upstream continues a partial answer (`resume_on_cut`).
    pub prefill: super::schema::Prefill,
    /// AWS region of SigV4 signing (Bedrock).
    pub region: Option<String>,
    selector: Selector,
}

impl Pool {
    pub(crate) fn new(
        name: Arc<str>,
        provider: ProviderKind,
        endpoints: Vec<Endpoint>,
        timeouts: Timeouts,
        api_version: Option<String>,
    ) -> Self {
        Self {
            name,
            provider,
            endpoints,
            timeouts,
            api_version,
            policy: Policy::RoundRobin,
            model_map: HashMap::new(),
            health_check: None,
            prefill: super::schema::Prefill::None,
            region: None,
            selector: Selector::default(),
        }
    }

    /// Endpoint indices in the order to try them under the pool's policy.
    pub fn order(&self) -> Vec<usize> {
        let in_flight: Vec<u64> = self
            .endpoints
            .iter()
            .map(|e| e.state.in_flight.load(Ordering::Relaxed))
            .collect();
        let weight: Vec<u32> = self.endpoints.iter().map(|e| e.weight).collect();
        self.selector.order(self.policy, &in_flight, &weight)
    }

    /// The model name this pool's upstream knows `model` by.
    pub fn upstream_model<'a>(&'a self, model: &'a str) -> &'a str {
        self.model_map.get(model).map_or(model, String::as_str)
    }
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    /// Configured name (metric label).
    pub name: Arc<str>,
    /// Path prefix, matched on segment boundaries.
    pub path_prefix: String,
    /// Model glob, if any.
    pub model: Option<GlobMatcher>,
    /// Required header (name, exact value), if any.
    pub header: Option<(HeaderName, String)>,
    /// Pools in order of preference; never empty.
    pub pools: Vec<Arc<Pool>>,
    /// Failover rules.
    pub failover: Failover,
    /// Most continuations of a cut stream (`failover.resume_on_cut`); 0: never resumed.
    pub max_resumes: u32,
    /// Exact-match response cache (`cache`), if on.
    pub cache: Option<super::cache::RouteCache>,
    /// Identical requests in flight share one upstream attempt (`coalesce`).
    pub coalesce: bool,
    /// Race a slow first attempt (`hedge`), if on.
    pub hedge: Option<super::cache::Hedge>,
}

impl Route {
    /// Whether this route takes a request with `path`, body `model` (None when the body was not
    /// inspected or names no model) and `req` headers.
    pub fn matches(&self, path: &str, model: Option<&str>, req: &RequestHeader) -> bool {
        if !prefix_matches(&self.path_prefix, path) {
            return false;
        }
        if let Some(glob) = &self.model {
            match model {
                Some(m) if glob.is_match(m) => {}
                _ => return false,
            }
        }
        if let Some((name, value)) = &self.header {
            match req.headers.get(name) {
                Some(v) if v.as_bytes() == value.as_bytes() => {}
                _ => return false,
            }
        }
        true
    }

    /// Whether the route needs the body's model to decide.
    pub fn needs_model(&self) -> bool {
        self.model.is_some()
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    let path = path.split('?').next().unwrap_or(path);
    if prefix == "/" {
        return true;
    }
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Tenant identification tables.
#[derive(Debug, Default)]
pub struct Tenants {
    /// SHA-256 of a virtual key -> tenant.
    pub by_key_sha256: HashMap<[u8; 32], TenantId>,
    /// Every configured tenant by name.
    pub by_name: HashMap<String, TenantId>,
    /// Tenants the tenant header may select (`allow_header: true`), by name.
    pub by_header: HashMap<String, TenantId>,
    /// Header naming the tenant.
    pub header: Option<HeaderName>,
    /// Tenant for unidentified requests.
    pub default: Option<TenantId>,
    /// Reject keys that are not virtual keys (only meaningful when some are configured).
    pub reject_unknown_keys: bool,
}

impl Tenants {
    /// The tenant owning virtual key `key`, if any.
    pub fn by_virtual_key(&self, key: &str) -> Option<&TenantId> {
        if self.by_key_sha256.is_empty() {
            return None;
        }
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.by_key_sha256.get(&digest)
    }
}

/// The whole compiled configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// Proxy listener `host:port`.
    pub proxy_addr: String,
    /// Admin listener `host:port`.
    pub admin_addr: String,
    /// Admin connections served at once (`server.admin_max_connections`).
    pub admin_max_connections: usize,
    /// Longest an admin connection is kept (`server.admin_connection_timeout_ms`).
    pub admin_connection_timeout: Duration,
    /// Pingora worker threads.
    pub threads: usize,
    /// Request body cap on inspected routes, bytes.
    pub max_body_bytes: usize,
    /// Log format.
    pub log_format: LogFormat,
    /// Drain deadline after SIGTERM.
    pub drain_timeout: Duration,
    /// Watch the config directory.
    pub reload_watch: bool,
    /// Checksum poll interval.
    pub reload_poll: Duration,
    /// SHA-256 of the config text this snapshot was compiled from (hex), when known.
    pub source_sha256: String,
    /// Key files the config reads (provider and virtual keys): watched and checksummed by the
    /// reloader, so a rotated Secret is picked up like a config change.
    pub key_files: Vec<String>,
    /// Routes in match order.
    pub routes: Vec<Route>,
    /// Pools by name.
    pub pools: HashMap<String, Arc<Pool>>,
    /// Tenants.
    pub tenants: Tenants,
    /// Limits of tenants by name (explicit or the default).
    pub limits: HashMap<String, Arc<TenantLimits>>,
    /// Limits of tenants not listed with their own (e.g. the default tenant).
    pub default_limits: Option<Arc<TenantLimits>>,
    /// Output ceiling when neither request nor model sets one.
    pub default_max_output_tokens: u64,
    /// Model table (first matching glob wins).
    pub models: Vec<ModelInfo>,
    /// Shared limit store (`limits.store: redis`), if any.
    pub redis: Option<RedisConf>,
    /// Bounds of response accounting (`accounting`).
    pub accounting: Accounting,
    /// The admin listener's profiling endpoints (`debug`), reloadable.
    pub profiling: Profiling,
    /// The response store (`cache`), fixed at start.
    pub cache: super::cache::CacheSettings,
    /// Bounds on client connections (`server.header_timeout_ms`, ...), fixed at start.
    pub connections: ConnectionLimits,
    /// L4 buffer sizes of each client connection, fixed at start.
    pub client_buffers: ClientBuffers,
    /// Trace export (`tracing`), `None` when off; fixed at start.
    pub tracing: Option<crate::otel::Settings>,
}

/// Sizes (bytes) of the L4 read and write buffers Pingora puts in front of each client
/// connection's socket (`server.client_read_buffer_bytes`, `server.client_write_buffer_bytes`;
/// pingora-core's `L4BufferSettings`). 0 means unbuffered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientBuffers {
    /// Read buffer, bytes.
    pub read_bytes: usize,
    /// Write buffer, bytes.
    pub write_bytes: usize,
}

/// Bounds on the proxy listener's client connections (see [`crate::listener`]).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Whole request header deadline (`server.header_timeout_ms`).
    pub header_timeout: Duration,
    /// Idle time allowed between two requests (`server.keepalive_idle_timeout_ms`).
    pub keepalive_idle_timeout: Duration,
    /// Most client connections open at once (`server.max_client_connections`).
    pub max_connections: usize,
    /// Longest a write to the client may make no progress (`server.client_write_timeout_ms`).
    pub write_timeout: Duration,
}

impl Snapshot {
    /// First route matching the request, see [`Route::matches`].
    pub fn route(&self, path: &str, model: Option<&str>, req: &RequestHeader) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(path, model, req))
    }

    /// Limits of `tenant`, `None` when it has none (no cost on the request path).
    pub fn tenant_limits(&self, tenant: &str) -> Option<&Arc<TenantLimits>> {
        self.limits.get(tenant).or(self.default_limits.as_ref())
    }

    /// Model table entry for `model`.
    pub fn model_info(&self, model: &str) -> Option<&ModelInfo> {
        self.models.iter().find(|m| m.glob.is_match(model))
    }

    /// Output ceiling reserved for a request: its own `max_tokens`, else the model's, else
    /// the default.
    pub fn output_ceiling(&self, model: Option<&str>, requested: Option<u64>) -> u64 {
        requested
            .or_else(|| model.and_then(|m| self.model_info(m)?.max_output_tokens))
            .unwrap_or(self.default_max_output_tokens)
    }

    /// Whether any route that could take `path` depends on the body's model.
    pub fn path_needs_model(&self, path: &str) -> bool {
        self.routes
            .iter()
            .any(|r| r.needs_model() && prefix_matches(&r.path_prefix, path))
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_matches;

    #[test]
    fn prefix_on_segment_boundaries() {
        assert!(prefix_matches("/v1", "/v1/chat/completions"));
        assert!(prefix_matches("/v1/", "/v1/chat/completions"));
        assert!(prefix_matches("/v1", "/v1"));
        assert!(prefix_matches("/v1", "/v1?x=1"));
        assert!(!prefix_matches("/v1", "/v10/models"));
        assert!(prefix_matches("/", "/anything"));
    }
}

/// `accounting`, compiled: how much of an upstream response sluice reads to count tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accounting {
    /// Largest SSE event parsed (bytes, as received); larger ones pass through unparsed.
    pub max_sse_event_bytes: usize,
    /// Largest JSON response body kept to read its usage (bytes).
    pub max_json_body_bytes: usize,
    /// Largest believable value of one usage field of one response (tokens).
    pub max_usage_tokens: u64,
}

impl Default for Accounting {
    fn default() -> Self {
        let conf = super::schema::AccountingConf::default();
        Accounting {
            max_sse_event_bytes: usize::try_from(conf.max_sse_event_bytes).unwrap_or(usize::MAX),
            max_json_body_bytes: usize::try_from(conf.max_json_body_bytes).unwrap_or(usize::MAX),
            max_usage_tokens: conf.max_usage_tokens,
        }
    }
}

/// The admin listener's profiling endpoints (`debug`): whether they are served and their bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profiling {
    /// `/debug/pprof/profile` and `/debug/allocator` answer (else 404).
    pub enabled: bool,
    /// Longest CPU profile a request may ask for (`debug.max_profile_seconds`).
    pub max_seconds: u64,
    /// CPU sampling frequency, Hz (`debug.profile_frequency_hz`, 1..=1000).
    pub frequency_hz: i32,
}

impl Profiling {
    /// Time (ms) a CPU profile request needs beyond its `seconds` to symbolize, encode and
    /// send the profile, within the admin listener's connection timeout: a 2 s profile of a
    /// debug build took 5.6 s more on a busy 2-core machine (symbolizing from DWARF); release
    /// builds read only their symbol table.
    pub const MARGIN_MS: u64 = 10_000;
}
