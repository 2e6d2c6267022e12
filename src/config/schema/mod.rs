//! The YAML schema platform teams write (serde types only): parsed, then compiled into a
//! [`crate::config::Snapshot`] by `compile.rs`. Nothing on the hot path reads these types.
//!
//! Every struct denies unknown fields, so a typo in a ConfigMap fails validation instead of
//! silently disabling something. Names carry their units (`_ms`, `_bytes`).

use serde::Deserialize;

mod cache;
mod debug;
mod limits;
mod route;
mod traces;
pub use cache::*;
pub use debug::*;
pub use limits::*;
pub use route::*;
pub use traces::*;

/// `listeners`: where sluice accepts connections. Addresses are `host:port`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenersConf {
    /// The proxy listener apps point their SDK at. Default `127.0.0.1:8080` (loopback: a sidecar
    /// serves its own pod only).
    #[serde(default = "default_proxy_addr")]
    pub proxy: String,
    /// The admin listener serving `/metrics`, `/healthz` and `/readyz`. Default `127.0.0.1:9090`.
    #[serde(default = "default_admin_addr")]
    pub admin: String,
}

impl Default for ListenersConf {
    fn default() -> Self {
        Self {
            proxy: default_proxy_addr(),
            admin: default_admin_addr(),
        }
    }
}

fn default_proxy_addr() -> String {
    "127.0.0.1:8080".to_owned()
}
fn default_admin_addr() -> String {
    "127.0.0.1:9090".to_owned()
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable `key=value` lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `server`: process-wide settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConf {
    /// Pingora worker threads of the proxy service. Default 2.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Largest request body (bytes) accepted on inspected routes; larger gets a native 413.
    /// Default 32 MiB.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// `text` (default) or `json`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// After SIGTERM: seconds in-flight requests and streams may take to finish before the
    /// process closes them (new connections are refused at once, `/readyz` turns 503).
    /// Default 20, under Kubernetes' 30 s grace period. Not reloadable.
    #[serde(default = "default_drain")]
    pub drain_timeout_seconds: u64,
    /// Deadline (ms) for a client to send a whole request header, counted from the accept
    /// (first request) or from the first byte of a later request on a kept-alive connection;
    /// past it the connection is closed without a response (slowloris). Default 10,000.
    /// Not reloadable.
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// A kept-alive client connection with no request for this long (ms) is closed.
    /// Default 75,000 (above the 4-5 s idle expiry of the SDKs' HTTP pools). Not reloadable.
    #[serde(default = "default_keepalive_idle_timeout_ms")]
    pub keepalive_idle_timeout_ms: u64,
    /// Most client connections open at once; past it a new connection gets a 503 with
    /// `connection: close` and `retry-after: 1`. Default 2,048. Not reloadable.
    #[serde(default = "default_max_client_connections")]
    pub max_client_connections: usize,
    /// A write to a client that makes no progress for this long (ms) fails and closes the
    /// connection: a client that stops reading must not hold its connection slot (and its
    /// upstream call) forever. Default 60,000 (nginx's `send_timeout`). Not reloadable.
    #[serde(default = "default_client_write_timeout_ms")]
    pub client_write_timeout_ms: u64,
    /// Most admin-listener connections served at once; more wait in the kernel's backlog.
    /// Probes and scrapes need a handful. Default 64. Not reloadable.
    #[serde(default = "default_admin_max_connections")]
    pub admin_max_connections: usize,
    /// Longest an admin connection is kept (ms), keep-alive included: a client that trickles
    /// or stops reading cannot hold a slot the kubelet's probes need. Default 30,000. Not
    /// reloadable.
    #[serde(default = "default_admin_connection_timeout_ms")]
    pub admin_connection_timeout_ms: u64,
    /// Read buffer (bytes) Pingora puts in front of each client connection's socket (its L4
    /// buffer): reads of the request header and body go through it. An LLM request header is
    /// well under 4 KiB and bodies larger than the buffer are read in several calls, so a
    /// sidecar needs far less than Pingora's 64 KiB default. Default 8,192; 0 reads the socket
    /// unbuffered. Not reloadable.
    #[serde(default = "default_client_read_buffer_bytes")]
    pub client_read_buffer_bytes: u64,
    /// Write buffer (bytes) in front of each client connection's socket: small writes (a
    /// response header, a short SSE event) are gathered up to this size before a send.
    /// Default 1,460 (Pingora's, one Ethernet TCP segment); 0 writes unbuffered. Not reloadable.
    #[serde(default = "default_client_write_buffer_bytes")]
    pub client_write_buffer_bytes: u64,
}

fn default_header_timeout_ms() -> u64 {
    10_000
}
fn default_keepalive_idle_timeout_ms() -> u64 {
    75_000
}
fn default_max_client_connections() -> usize {
    2_048
}
fn default_client_write_timeout_ms() -> u64 {
    60_000
}
fn default_admin_max_connections() -> usize {
    64
}
fn default_admin_connection_timeout_ms() -> u64 {
    30_000
}
fn default_client_read_buffer_bytes() -> u64 {
    8 * 1024
}
fn default_client_write_buffer_bytes() -> u64 {
    1_460
}

fn default_drain() -> u64 {
    20
}

/// `reload`: how config changes are picked up (a ConfigMap's `..data` swap, an edit, SIGHUP).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadConf {
    /// Watch the config file's directory (inotify) and reload on change. Default true.
    #[serde(default = "default_true")]
    pub watch: bool,
    /// Fallback: re-read the file and compare its checksum this often (ms). Default 5,000.
    #[serde(default = "default_poll")]
    pub poll_interval_ms: u64,
}

impl Default for ReloadConf {
    fn default() -> Self {
        Self {
            watch: true,
            poll_interval_ms: default_poll(),
        }
    }
}

fn default_poll() -> u64 {
    5_000
}

impl Default for ServerConf {
    fn default() -> Self {
        Self {
            threads: default_threads(),
            max_body_bytes: default_max_body_bytes(),
            log_format: LogFormat::default(),
            drain_timeout_seconds: default_drain(),
            header_timeout_ms: default_header_timeout_ms(),
            keepalive_idle_timeout_ms: default_keepalive_idle_timeout_ms(),
            max_client_connections: default_max_client_connections(),
            client_write_timeout_ms: default_client_write_timeout_ms(),
            admin_max_connections: default_admin_max_connections(),
            admin_connection_timeout_ms: default_admin_connection_timeout_ms(),
            client_read_buffer_bytes: default_client_read_buffer_bytes(),
            client_write_buffer_bytes: default_client_write_buffer_bytes(),
        }
    }
}

fn default_threads() -> usize {
    2
}
fn default_max_body_bytes() -> u64 {
    32 * 1024 * 1024
}

/// Provider kind of a pool: decides the auth header, the path layout and the native error shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum ProviderKind {
    /// OpenAI (`Authorization: Bearer`).
    #[serde(rename = "openai")]
    OpenAi,
    /// Azure OpenAI (`api-key`, `/openai/deployments/{model}/...?api-version=`).
    #[serde(rename = "azure_openai")]
    AzureOpenAi,
    /// Anthropic (`x-api-key`).
    #[serde(rename = "anthropic")]
    Anthropic,
    /// Any OpenAI-compatible server (vLLM, llama.cpp, ...): `Authorization: Bearer`.
    #[serde(rename = "openai_compatible")]
    OpenAiCompatible,
    /// Ollama's native API (`/api/chat`, `/api/generate`, `/api/embed`, other `/api/*` passed
    /// through): the pool key, if any, as `Authorization: Bearer`; errors `{"error":".."}`.
    #[serde(rename = "ollama")]
    Ollama,
    /// AWS Bedrock Runtime: SigV4 with the pool's `region` (keys `ACCESS_KEY_ID:SECRET[:TOKEN]`)
    /// or a Bedrock API key as `Authorization: Bearer`; the model in the path.
    #[serde(rename = "bedrock")]
    Bedrock,
    /// Google Gemini API (`x-goog-api-key`; the model in the path,
    /// `/v1beta/models/{model}:{method}`).
    #[serde(rename = "gemini")]
    Gemini,
}

/// Where a provider key comes from: exactly one of `env` or `file`. The value itself is never
/// in the config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySource {
    /// Name of an environment variable holding the key.
    #[serde(default)]
    pub env: Option<String>,
    /// Path of a file holding the key (e.g. a Kubernetes Secret mount); surrounding whitespace
    /// is trimmed.
    #[serde(default)]
    pub file: Option<String>,
}

/// Where a virtual key (the key an app sends), or another secret a client presents (the
/// cache purge token), comes from: exactly one of `env`, `file` or `sha256`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualKeySource {
    /// Name of an environment variable holding the key.
    #[serde(default)]
    pub env: Option<String>,
    /// Path of a file holding the key.
    #[serde(default)]
    pub file: Option<String>,
    /// Lower-case hex SHA-256 of the key: the config then holds nothing secret.
    #[serde(default)]
    pub sha256: Option<String>,
}

/// Upstream timeouts of a pool, in milliseconds. Each expiry is a native 504.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConf {
    /// TCP (+TLS) connect. Default 5,000.
    #[serde(default = "default_connect_ms")]
    pub connect_ms: u64,
    /// From sending the request to the response header. Default 120,000.
    #[serde(default = "default_ttfb_ms")]
    pub ttfb_ms: u64,
    /// Between two chunks of the response body. Default 60,000.
    #[serde(default = "default_idle_ms")]
    pub idle_ms: u64,
    /// How long an idle pooled upstream connection is kept for reuse. Default 60,000.
    #[serde(default = "default_pool_idle_ms")]
    pub pool_idle_ms: u64,
}

impl Default for TimeoutsConf {
    fn default() -> Self {
        Self {
            connect_ms: default_connect_ms(),
            ttfb_ms: default_ttfb_ms(),
            idle_ms: default_idle_ms(),
            pool_idle_ms: default_pool_idle_ms(),
        }
    }
}

fn default_connect_ms() -> u64 {
    5_000
}
fn default_ttfb_ms() -> u64 {
    120_000
}
fn default_idle_ms() -> u64 {
    60_000
}
fn default_pool_idle_ms() -> u64 {
    60_000
}

/// One upstream endpoint of a pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConf {
    /// `http://host[:port][/base]` or `https://...`. A base path is prepended to the client's
    /// path (`http://mock:8000/anthropic` + `/v1/messages`).
    pub url: String,
    /// Keys for this endpoint, used in order: a key answered 401/403 is disabled until the
    /// next reload, a key answered 429 cools down for the upstream's `retry-after`.
    #[serde(default)]
    pub keys: Vec<KeySource>,
    /// Relative weight for the `weighted` policy. Default 1.
    #[serde(default = "one_u32")]
    pub weight: u32,
}

fn one_u32() -> u32 {
    1
}

/// How a pool picks among its healthy endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Each endpoint in turn (default).
    #[default]
    RoundRobin,
    /// The endpoint with the fewest requests in flight.
    LeastInFlight,
    /// Smooth weighted round robin by `endpoints[].weight`.
    Weighted,
}

/// `pools[].breaker`: the circuit breaker of each endpoint of the pool. Failures are connect
/// errors, timeouts, upstream resets and 500/502/503/504/529 answers; a client that leaves or
/// sends garbage, and a request sluice refuses before sending, never count.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConf {
    /// Opens after this many consecutive failures. Default 5.
    #[serde(default = "default_failures")]
    pub consecutive_failures: u32,
    /// Also opens when the failure ratio over `window_ms` reaches this (0..1], once
    /// `min_requests` were seen. Default: off.
    #[serde(default)]
    pub failure_ratio: Option<f64>,
    /// Requests needed in the window before `failure_ratio` applies. Default 20.
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
    /// Window of `failure_ratio`, ms. Default 30,000.
    #[serde(default = "default_window")]
    pub window_ms: u64,
    /// How long the breaker stays open before half-open probes, ms. Default 10,000.
    #[serde(default = "default_open")]
    pub open_ms: u64,
}

impl Default for BreakerConf {
    fn default() -> Self {
        Self {
            consecutive_failures: default_failures(),
            failure_ratio: None,
            min_requests: default_min_requests(),
            window_ms: default_window(),
            open_ms: default_open(),
        }
    }
}

fn default_failures() -> u32 {
    5
}
fn default_min_requests() -> u32 {
    20
}
fn default_window() -> u64 {
    30_000
}
fn default_open() -> u64 {
    10_000
}

/// `pools[].health_check`: an active check per endpoint (with its key); a failing check counts
/// as a breaker failure, a passing one as a success (closing a half-open breaker).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConf {
    /// Path to GET, e.g. `/v1/models` (cheap, no tokens).
    pub path: String,
    /// Interval, ms. Default 10,000.
    #[serde(default = "default_hc_interval")]
    pub interval_ms: u64,
    /// Timeout of one check, ms. Default 2,000.
    #[serde(default = "default_hc_timeout")]
    pub timeout_ms: u64,
}

fn default_hc_interval() -> u64 {
    10_000
}
fn default_hc_timeout() -> u64 {
    2_000
}

/// `pools[]`: a named group of endpoints of one provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConf {
    /// Unique name, referenced by routes and used as a metric label.
    pub name: String,
    /// Provider kind.
    pub provider: ProviderKind,
    /// At least one endpoint.
    pub endpoints: Vec<EndpointConf>,
    /// Upstream timeouts.
    #[serde(default)]
    pub timeouts: TimeoutsConf,
    /// Azure OpenAI `api-version` query parameter (required for `azure_openai`).
    #[serde(default)]
    pub api_version: Option<String>,
    /// Endpoint selection policy. Default `round_robin`.
    #[serde(default)]
    pub policy: Policy,
    /// Model renames for this pool (`gpt-4o: my-gpt4o-deployment`): the body's `model` and,
    /// for Azure, the deployment in the URL.
    #[serde(default)]
    pub model_map: std::collections::BTreeMap<String, String>,
    /// Circuit breaker per endpoint.
    #[serde(default)]
    pub breaker: BreakerConf,
    /// Optional active health check.
    #[serde(default)]
    pub health_check: Option<HealthCheckConf>,
    /// Most models a key holds a 429 cooldown for at once (expired ones are dropped first,
    /// then the one ending soonest). Default 64.
    #[serde(default = "default_max_cooldown_models_per_key")]
    pub max_cooldown_models_per_key: usize,
    /// Whether this pool's upstream continues a partial answer handed back to it (the
    /// continuation leg of `routes[].failover.resume_on_cut`). Default `none`.
    #[serde(default)]
    pub prefill: Prefill,
    /// AWS region the requests are signed for (SigV4 credential scope), e.g. `us-east-1`.
    /// Required for `bedrock`; not allowed for other providers.
    #[serde(default)]
    pub region: Option<String>,
}

/// `pools[].prefill`: how a pool's upstream is asked to continue a partial answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prefill {
    /// It cannot (default): never a continuation candidate.
    #[default]
    None,
    /// The partial answer as a trailing assistant message, which the model continues
    /// (Anthropic Messages "Prefill Claude's response"; OpenAI-compatible servers that
    /// continue a final assistant message).
    Assistant,
    /// The partial answer as an assistant message followed by a user message asking to
    /// continue exactly where it stopped, without repeating (OpenAI chat, which has no
    /// prefill).
    ContinuePrompt,
}

fn default_max_cooldown_models_per_key() -> usize {
    64
}

/// `tenants.list[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConf {
    /// Unique name, used as a metric label.
    pub name: String,
    /// Keys apps of this tenant send (Bearer or `x-api-key`).
    #[serde(default)]
    pub virtual_keys: Vec<VirtualKeySource>,
    /// This tenant's limits (else `limits.default`).
    #[serde(default)]
    pub limits: Option<LimitsConf>,
    /// Whether `tenants.header` may select this tenant for a request carrying no virtual key
    /// (trusted in-pod callers). Default false: a tenant is reached only by its virtual keys
    /// (or as the default tenant). Needs `tenants.header`.
    #[serde(default)]
    pub allow_header: bool,
}

/// `tenants`: how a request is attributed to a tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantsConf {
    /// Header naming the tenant. Without a virtual key it selects only tenants with
    /// `allow_header: true` (else a native 403); with a virtual key it must name the key's own
    /// tenant (else a native 403).
    #[serde(default)]
    pub header: Option<String>,
    /// Tenant of requests identified neither way; without it they get a native 401. Must not
    /// have virtual keys (a tenant with keys is reached only by them).
    #[serde(default)]
    pub default: Option<String>,
    /// With virtual keys configured, a key that is not one of them gets a native 401.
    /// Default true.
    #[serde(default = "default_true")]
    pub reject_unknown_keys: bool,
    /// The tenants.
    #[serde(default)]
    pub list: Vec<TenantConf>,
}

impl Default for TenantsConf {
    fn default() -> Self {
        Self {
            header: None,
            default: None,
            reject_unknown_keys: true,
            list: Vec::new(),
        }
    }
}

fn default_true() -> bool {
    true
}

/// `accounting`: bounds on what sluice reads of upstream responses to count tokens. Past a
/// bound the bytes still reach the client untouched; only the accounting gives up and the
/// request's tokens are estimated (`sluice_tokens_total{source="estimated"}`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountingConf {
    /// Most bytes held for the server-sent event in progress (bytes, as received: its lines up
    /// to the blank line that ends it). sluice holds each event twice, parsed and raw (withheld
    /// until its blank line so the client only receives whole events), so events of up to half
    /// of the cap are parsed; a larger event is forwarded as its bytes arrive, without being
    /// held or inspected, and counted in `sluice_sse_oversized_events_total`. Default 4 MiB:
    /// the largest legitimate events (a Responses `response.completed` echoing the whole
    /// output, a tool call's arguments in one chunk) stay below half of it, since a response's
    /// output is capped at about 128k tokens (roughly 0.5 MiB of text, typically under 1 MiB as
    /// JSON with escapes). Memory held per stream never exceeds the cap.
    #[serde(default = "default_max_sse_event_bytes")]
    pub max_sse_event_bytes: u64,
    /// Largest non-streamed (JSON) response body kept to read its usage (bytes). A larger body
    /// is relayed in full, its tokens estimated. Default 16 MiB (a large embeddings batch).
    #[serde(default = "default_max_json_body_bytes")]
    pub max_json_body_bytes: u64,
    /// Largest token count believed in one usage field of one response (tokens). Usage above
    /// it is treated as malformed: logged, counted in `sluice_usage_implausible_total`, and the
    /// request's tokens estimated instead. Default 100,000,000: a hundred times the largest
    /// context windows offered today (about 1-2M tokens), so no real response comes near it,
    /// while a garbage value (2^64-1) cannot bill a tenant for trillions of tokens.
    #[serde(default = "default_max_usage_tokens")]
    pub max_usage_tokens: u64,
}

impl Default for AccountingConf {
    fn default() -> Self {
        Self {
            max_sse_event_bytes: default_max_sse_event_bytes(),
            max_json_body_bytes: default_max_json_body_bytes(),
            max_usage_tokens: default_max_usage_tokens(),
        }
    }
}

fn default_max_sse_event_bytes() -> u64 {
    4 * 1024 * 1024
}
fn default_max_json_body_bytes() -> u64 {
    16 * 1024 * 1024
}
fn default_max_usage_tokens() -> u64 {
    100_000_000
}
