//! The `limits` and `models` parts of the schema: per-tenant limits, budgets, the shared
//! (Redis) store, and model facts (output ceilings, prices).

use super::one_u32;
use serde::Deserialize;

/// Per-tenant limits (`tenants.list[].limits`, `limits.default`). Every field is optional; an
/// absent limit costs nothing on the request path.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConf {
    /// Requests admitted per minute (fixed 60 s window).
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    /// Requests admitted per second (fixed 1 s window).
    #[serde(default)]
    pub requests_per_second: Option<u64>,
    /// Weighted tokens per minute: `input × input_token_weight + output × output_token_weight`,
    /// reserved before the call (prompt estimate + output ceiling) and settled to exact usage.
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    /// Input (prompt) tokens per minute, counted on their own.
    #[serde(default)]
    pub input_tokens_per_minute: Option<u64>,
    /// Output (completion) tokens per minute, counted on their own.
    #[serde(default)]
    pub output_tokens_per_minute: Option<u64>,
    /// Weight of an input token in `tokens_per_minute`. Default 1.
    #[serde(default = "one")]
    pub input_token_weight: f64,
    /// Weight of an output token in `tokens_per_minute`. Default 1.
    #[serde(default = "one")]
    pub output_token_weight: f64,
    /// Requests (streams included) in flight at once.
    #[serde(default)]
    pub max_concurrent: Option<u64>,
    /// Spend caps in USD, priced from `models[].price`.
    #[serde(default)]
    pub budget: Option<BudgetConf>,
    /// Limits for this tenant on some models only (`model` is a glob); each applies on top of
    /// the tenant-wide ones.
    #[serde(default)]
    pub models: Vec<ModelLimitsConf>,
    /// With `limits.store: redis`: what to do when Redis is unreachable, for this tenant
    /// (else `limits.redis.failure_policy`).
    #[serde(default)]
    pub redis_failure_policy: Option<FailurePolicy>,
}

/// What shared limits do when Redis is unreachable or slow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Keep serving under local limits of `limit ÷ expected_replicas` (default).
    #[default]
    Open,
    /// Refuse with a native 503 until Redis is back.
    Closed,
}

/// Where limit counters live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// In this process (default; needs nothing).
    #[default]
    Local,
    /// Shared by every replica through Redis, served from leased slices.
    Redis,
}

/// `limits.redis`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConf {
    /// `redis://[:password@]host:port[/db]` (standalone), or `rediss://` for TLS (server
    /// certificate checked against the Mozilla roots bundled in the binary). Not reloadable.
    pub url: String,
    /// The longest a request waits on Redis in all (its leases, or a connection), ms; past it
    /// the failure policy applies. Default 50. Not reloadable.
    #[serde(default = "default_redis_timeout")]
    pub timeout_ms: u64,
    /// `open` (default) or `closed`.
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    /// Replicas sharing the limits: the local fallback allows `limit ÷ expected_replicas`.
    /// Default 1.
    #[serde(default = "one_u32")]
    pub expected_replicas: u32,
    /// Longest a leased slice covers at the current rate, ms: bigger means fewer round trips,
    /// more quota held per replica. Default 250.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// Bound on one attempt to (re)connect, ms. Connecting happens in the background, never
    /// on a request's path; after a failed attempt the next comes 500 ms later. Default 1000.
    #[serde(default = "default_redis_connect_timeout")]
    pub connect_timeout_ms: u64,
}

fn default_redis_connect_timeout() -> u64 {
    1000
}

fn default_redis_timeout() -> u64 {
    50
}
fn default_lease_ms() -> u64 {
    250
}

fn one() -> f64 {
    1.0
}

/// `limits.models[]`: tenant + model limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelLimitsConf {
    /// Glob on the request's model.
    pub model: String,
    /// Requests per minute on these models.
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    /// Weighted tokens per minute on these models (the tenant's weights).
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    /// Requests in flight at once on these models.
    #[serde(default)]
    pub max_concurrent: Option<u64>,
}

/// `budget`: USD caps per UTC day and month.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConf {
    /// USD per UTC day.
    #[serde(default)]
    pub usd_per_day: Option<f64>,
    /// USD per UTC month.
    #[serde(default)]
    pub usd_per_month: Option<f64>,
    /// End a stream (with a native in-stream error event) when its running output would
    /// exceed the budget left when it started. Default false.
    #[serde(default)]
    pub cut_off_streams: bool,
}

/// `limits`: defaults for every tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Limits of tenants that set none.
    #[serde(default)]
    pub default: Option<LimitsConf>,
    /// Output ceiling reserved when neither the request (`max_tokens`...) nor its model
    /// (`models[].max_output_tokens`) sets one. Default 4096.
    #[serde(default = "default_output_ceiling")]
    pub default_max_output_tokens: u64,
    /// `local` (default) or `redis`. Not reloadable.
    #[serde(default)]
    pub store: StoreKind,
    /// Redis settings, required with `store: redis`.
    #[serde(default)]
    pub redis: Option<RedisConf>,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            default: None,
            default_max_output_tokens: default_output_ceiling(),
            store: StoreKind::Local,
            redis: None,
        }
    }
}

fn default_output_ceiling() -> u64 {
    4096
}

/// Price of a model in USD per 1M tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceConf {
    /// Input (prompt) tokens, uncached.
    pub input_per_1m: f64,
    /// Output (completion) tokens, reasoning included.
    pub output_per_1m: f64,
    /// Cached input tokens (cache reads). Default: `input_per_1m`.
    #[serde(default)]
    pub cached_input_per_1m: Option<f64>,
    /// Cache writes (Anthropic `cache_creation_input_tokens`). Default: `input_per_1m`.
    #[serde(default)]
    pub cache_write_per_1m: Option<f64>,
}

/// `models[]`: facts about models, first matching glob wins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConf {
    /// Glob on the request's model (`gpt-4o*`).
    #[serde(rename = "match")]
    pub pattern: String,
    /// Output ceiling reserved when the request sets no `max_tokens`.
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    /// Price table entry.
    #[serde(default)]
    pub price: Option<PriceConf>,
}
