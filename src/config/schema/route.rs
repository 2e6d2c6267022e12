//! The `routes` part of the schema: what a route matches, its pools in order, and its failover
//! rules (moving on, same-endpoint retries, error-aware failover, commit on content, resume).

use super::default_true;
use serde::Deserialize;

/// A header a route requires: `name` equal to `value` (exact).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatchConf {
    /// Header name (case-insensitive).
    pub name: String,
    /// Required value (exact).
    pub value: String,
}

/// `routes[].match`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConf {
    /// Path prefix, on segment boundaries (`/v1` matches `/v1/chat/completions`, not `/v10`).
    /// Default `/`.
    #[serde(default = "default_prefix")]
    pub path_prefix: String,
    /// Glob on the body's `model` (`gpt-4o*`, `claude-*`). A route with a model glob only
    /// matches requests whose JSON body names a matching model.
    #[serde(default)]
    pub model: Option<String>,
    /// Required header.
    #[serde(default)]
    pub header: Option<HeaderMatchConf>,
}

fn default_prefix() -> String {
    "/".to_owned()
}

/// `routes[]`: first match wins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConf {
    /// Unique name, used as a metric label.
    pub name: String,
    /// What the route matches.
    #[serde(rename = "match")]
    pub matcher: MatchConf,
    /// Pool names, in order of preference (primary first).
    pub pools: Vec<String>,
    /// When and how often to try another endpoint / pool.
    #[serde(default)]
    pub failover: FailoverConf,
    /// Exact-match response cache (off when absent).
    #[serde(default)]
    pub cache: Option<super::RouteCacheConf>,
    /// Identical requests in flight at the same time share one upstream attempt. Default false.
    #[serde(default)]
    pub coalesce: bool,
    /// Race a slow first attempt on the next candidate (off when absent).
    #[serde(default)]
    pub hedge: Option<super::HedgeConf>,
}

/// `routes[].failover`: failover happens only before the first response byte reached the
/// client; endpoints of a pool are tried before the next pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverConf {
    /// Upstream statuses that move on to the next endpoint. Default 429, 500, 502, 503, 504,
    /// 529 (never another 4xx).
    #[serde(default = "default_retry_statuses")]
    pub retry_on_status: Vec<u16>,
    /// Move on after a connect error. Default true.
    #[serde(default = "default_true")]
    pub retry_on_connect_error: bool,
    /// Move on after a connect or time-to-first-byte timeout. Default true.
    #[serde(default = "default_true")]
    pub retry_on_timeout: bool,
    /// Most upstream attempts per request. Default 4.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Deadline for all attempts until a response starts, ms. Default 180,000.
    #[serde(default = "default_deadline")]
    pub deadline_ms: u64,
    /// Commit on content: for a streamed inspected request, the most time from sending an
    /// attempt's request to its first event carrying output (so also to its header, when
    /// shorter than the pool's `ttfb_ms`), ms; past it the attempt fails like a timeout
    /// (`retry_on_timeout`) and the next candidate is tried. Default 120,000 (the default
    /// `ttfb_ms`).
    #[serde(default = "default_first_token")]
    pub first_token_ms: u64,
    /// Retries of the same endpoint on transient failures, before moving on.
    #[serde(default)]
    pub retry: RetryConf,
    /// Native error codes or types (OpenAI `error.code` / `error.type`, Anthropic
    /// `error.type`) that move a 4xx answer on to the next candidate, e.g.
    /// `context_length_exceeded` with a larger-context pool next. Default none. A content-filter
    /// rejection is never moved on, whatever this lists.
    #[serde(default)]
    pub retry_on_error_codes: Vec<String>,
    /// Substrings of the native error message (case-insensitive) that move a 4xx answer on,
    /// for providers without error codes (Anthropic: `prompt is too long`). Default none.
    #[serde(default)]
    pub retry_on_error_messages: Vec<String>,
    /// Most bytes of a 4xx body read to match its error against the two lists above, bytes.
    /// Default 16,384 (native error bodies are a few hundred bytes).
    #[serde(default = "default_max_error_body_bytes")]
    pub max_error_body_bytes: u64,
    /// Resume a streamed answer cut after content (upstream reset, error, end without the
    /// final event, or `idle_ms` stall) on the next candidate whose pool has a `prefill`,
    /// splicing the continuation into the client's stream. Default false.
    #[serde(default)]
    pub resume_on_cut: bool,
    /// Most continuations per request with `resume_on_cut` (each also counts toward
    /// `max_attempts`). Default 1, at most 8.
    #[serde(default = "default_max_resumes")]
    pub max_resumes: u32,
}

/// `routes[].failover.retry`: the same endpoint tried again, with jittered exponential
/// backoff ("full jitter": a uniform random wait in `[0, min(max_backoff_ms, backoff_ms ×
/// 2^retry)]`), on transient failures, before the next candidate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConf {
    /// Most retries of one endpoint per request (0: never). Default 1.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Statuses retried on the same endpoint. Default 500, 502.
    #[serde(default = "default_retry_same_statuses")]
    pub on_status: Vec<u16>,
    /// Retry after the connection was reset or closed before the response header. Default true.
    #[serde(default = "default_true")]
    pub on_reset: bool,
    /// Retry after a connect or time-to-first-byte timeout. Default false (a stalled endpoint
    /// is better left for the next one).
    #[serde(default)]
    pub on_timeout: bool,
    /// Base of the backoff, ms. Default 100.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    /// Cap of the backoff, ms. Default 2,000.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
}

impl Default for RetryConf {
    fn default() -> Self {
        Self {
            max_retries: default_max_retries(),
            on_status: default_retry_same_statuses(),
            on_reset: true,
            on_timeout: false,
            backoff_ms: default_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
        }
    }
}

fn default_max_retries() -> u32 {
    1
}
fn default_retry_same_statuses() -> Vec<u16> {
    vec![500, 502]
}
fn default_backoff_ms() -> u64 {
    100
}
fn default_max_backoff_ms() -> u64 {
    2_000
}
fn default_max_error_body_bytes() -> u64 {
    16 * 1024
}

impl Default for FailoverConf {
    fn default() -> Self {
        Self {
            retry_on_status: default_retry_statuses(),
            retry_on_connect_error: true,
            retry_on_timeout: true,
            max_attempts: default_attempts(),
            deadline_ms: default_deadline(),
            retry: RetryConf::default(),
            retry_on_error_codes: Vec::new(),
            retry_on_error_messages: Vec::new(),
            max_error_body_bytes: default_max_error_body_bytes(),
            first_token_ms: default_first_token(),
            resume_on_cut: false,
            max_resumes: default_max_resumes(),
        }
    }
}

fn default_retry_statuses() -> Vec<u16> {
    vec![429, 500, 502, 503, 504, 529]
}
fn default_attempts() -> u32 {
    4
}
fn default_deadline() -> u64 {
    180_000
}
fn default_first_token() -> u64 {
    120_000
}
fn default_max_resumes() -> u32 {
    1
}
