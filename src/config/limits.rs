//! Compiled limits and model facts: per-tenant limits (globs compiled, weights checked), the
//! default limits, and the model table (output ceilings, prices). Validation errors are
//! path-qualified like the rest of the config.

use super::schema::{FailurePolicy, LimitsConf, ModelConf};
use super::ConfigError;
use globset::{Glob, GlobMatcher};

/// USD per 1M tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    /// Uncached input.
    pub input: f64,
    /// Output (reasoning included).
    pub output: f64,
    /// Cache reads.
    pub cached_input: f64,
    /// Cache writes.
    pub cache_write: f64,
}

/// One `models[]` entry.
#[derive(Debug)]
pub struct ModelInfo {
    /// The glob as written (log/metric context).
    pub pattern: String,
    /// Compiled glob.
    pub glob: GlobMatcher,
    /// Output ceiling for requests without `max_tokens`.
    pub max_output_tokens: Option<u64>,
    /// Price, if known.
    pub price: Option<Price>,
}

/// Budget caps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// USD per UTC day.
    pub usd_per_day: Option<f64>,
    /// USD per UTC month.
    pub usd_per_month: Option<f64>,
    /// End streams that would overspend.
    pub cut_off_streams: bool,
}

/// Tenant + model limits.
#[derive(Debug)]
pub struct ModelLimits {
    /// The glob as written; part of the counter key (shared, so a key costs no copy).
    pub pattern: std::sync::Arc<str>,
    /// Compiled glob.
    pub glob: GlobMatcher,
    /// Requests per minute.
    pub requests_per_minute: Option<u64>,
    /// Weighted tokens per minute.
    pub tokens_per_minute: Option<u64>,
    /// Concurrent requests.
    pub max_concurrent: Option<u64>,
}

/// A tenant's compiled limits.
#[derive(Debug)]
pub struct TenantLimits {
    /// Requests per minute.
    pub requests_per_minute: Option<u64>,
    /// Requests per second.
    pub requests_per_second: Option<u64>,
    /// Weighted tokens per minute.
    pub tokens_per_minute: Option<u64>,
    /// Input tokens per minute.
    pub input_tokens_per_minute: Option<u64>,
    /// Output tokens per minute.
    pub output_tokens_per_minute: Option<u64>,
    /// Weight of input tokens in `tokens_per_minute`.
    pub input_token_weight: f64,
    /// Weight of output tokens in `tokens_per_minute`.
    pub output_token_weight: f64,
    /// Concurrent requests.
    pub max_concurrent: Option<u64>,
    /// Budget.
    pub budget: Option<Budget>,
    /// Tenant + model limits.
    pub models: Vec<ModelLimits>,
    /// Failure policy override for shared limits.
    pub redis_failure_policy: Option<FailurePolicy>,
}

impl TenantLimits {
    /// Weighted token count for `tokens_per_minute`.
    pub fn weighted(&self, input: u64, output: u64) -> u64 {
        (input as f64 * self.input_token_weight + output as f64 * self.output_token_weight).ceil()
            as u64
    }
}

fn positive(path: &str, name: &str, v: Option<u64>, errs: &mut Vec<ConfigError>) {
    if v == Some(0) {
        errs.push(ConfigError {
            path: format!("{path}.{name}"),
            message: "must be at least 1 (omit it for no limit)".to_owned(),
        });
    }
}

fn usd(path: &str, name: &str, v: Option<f64>, errs: &mut Vec<ConfigError>) {
    if let Some(x) = v {
        if !x.is_finite() || x < 0.0 {
            errs.push(ConfigError {
                path: format!("{path}.{name}"),
                message: format!("must be a non-negative number, got {x}"),
            });
        }
    }
}

fn glob(path: &str, pattern: &str, errs: &mut Vec<ConfigError>) -> Option<GlobMatcher> {
    match Glob::new(pattern) {
        Ok(g) => Some(g.compile_matcher()),
        Err(e) => {
            errs.push(ConfigError {
                path: path.to_owned(),
                message: format!("invalid glob: {e}"),
            });
            None
        }
    }
}

/// Compile one `limits` block found at `path`.
pub fn compile_limits(path: &str, c: &LimitsConf, errs: &mut Vec<ConfigError>) -> TenantLimits {
    for (name, v) in [
        ("requests_per_minute", c.requests_per_minute),
        ("requests_per_second", c.requests_per_second),
        ("tokens_per_minute", c.tokens_per_minute),
        ("input_tokens_per_minute", c.input_tokens_per_minute),
        ("output_tokens_per_minute", c.output_tokens_per_minute),
        ("max_concurrent", c.max_concurrent),
    ] {
        positive(path, name, v, errs);
    }
    for (name, w) in [
        ("input_token_weight", c.input_token_weight),
        ("output_token_weight", c.output_token_weight),
    ] {
        if !w.is_finite() || w <= 0.0 {
            errs.push(ConfigError {
                path: format!("{path}.{name}"),
                message: format!("must be a positive number, got {w}"),
            });
        }
    }
    let budget = c.budget.as_ref().map(|b| {
        usd(path, "budget.usd_per_day", b.usd_per_day, errs);
        usd(path, "budget.usd_per_month", b.usd_per_month, errs);
        Budget {
            usd_per_day: b.usd_per_day,
            usd_per_month: b.usd_per_month,
            cut_off_streams: b.cut_off_streams,
        }
    });
    let mut models = Vec::new();
    for (i, m) in c.models.iter().enumerate() {
        let mp = format!("{path}.models[{i}]");
        positive(&mp, "requests_per_minute", m.requests_per_minute, errs);
        positive(&mp, "tokens_per_minute", m.tokens_per_minute, errs);
        positive(&mp, "max_concurrent", m.max_concurrent, errs);
        if let Some(g) = glob(&format!("{mp}.model"), &m.model, errs) {
            models.push(ModelLimits {
                pattern: m.model.as_str().into(),
                glob: g,
                requests_per_minute: m.requests_per_minute,
                tokens_per_minute: m.tokens_per_minute,
                max_concurrent: m.max_concurrent,
            });
        }
    }
    TenantLimits {
        requests_per_minute: c.requests_per_minute,
        requests_per_second: c.requests_per_second,
        tokens_per_minute: c.tokens_per_minute,
        input_tokens_per_minute: c.input_tokens_per_minute,
        output_tokens_per_minute: c.output_tokens_per_minute,
        input_token_weight: c.input_token_weight,
        output_token_weight: c.output_token_weight,
        max_concurrent: c.max_concurrent,
        budget,
        models,
        redis_failure_policy: c.redis_failure_policy,
    }
}

/// Compile `models[]`.
pub fn compile_models(models: &[ModelConf], errs: &mut Vec<ConfigError>) -> Vec<ModelInfo> {
    let mut out = Vec::new();
    for (i, m) in models.iter().enumerate() {
        let path = format!("models[{i}]");
        positive(&path, "max_output_tokens", m.max_output_tokens, errs);
        let price = m.price.as_ref().map(|p| {
            let pp = format!("{path}.price");
            usd(&pp, "input_per_1m", Some(p.input_per_1m), errs);
            usd(&pp, "output_per_1m", Some(p.output_per_1m), errs);
            usd(&pp, "cached_input_per_1m", p.cached_input_per_1m, errs);
            usd(&pp, "cache_write_per_1m", p.cache_write_per_1m, errs);
            Price {
                input: p.input_per_1m,
                output: p.output_per_1m,
                cached_input: p.cached_input_per_1m.unwrap_or(p.input_per_1m),
                cache_write: p.cache_write_per_1m.unwrap_or(p.input_per_1m),
            }
        });
        if let Some(g) = glob(&format!("{path}.match"), &m.pattern, errs) {
            out.push(ModelInfo {
                pattern: m.pattern.clone(),
                glob: g,
                max_output_tokens: m.max_output_tokens,
                price,
            });
        }
    }
    out
}
