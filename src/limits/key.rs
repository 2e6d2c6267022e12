//! Typed limit counter keys: which counter (requests per second, tokens per minute, ...) of
//! which tenant, optionally narrowed to one `models[]` pattern of the tenant's limits.
//!
//! A key is built from the request's tenant and the compiled limits without formatting or
//! allocating: the owned form ([`LimitKey`]) holds the tenant's and pattern's `Arc<str>`
//! (a reference count each), the borrowed form ([`CounterRef`]) only hashes them for
//! pingora-limits' `Rate` and `Inflight`, which key by any `Hash`. Keys compare and hash by
//! the names' text, so the counters of a tenant survive a config reload (its new snapshot
//! holds new `Arc`s of the same names). The Redis key of a shared window is the only string
//! form, written when a lease or a give-back goes to Redis, not per request.

use crate::config::TenantId;
use std::fmt;
use std::sync::Arc;

/// Which of a tenant's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    /// Requests in flight (`max_concurrent`).
    Concurrency,
    /// `requests_per_second`.
    RequestsPerSecond,
    /// `requests_per_minute`.
    RequestsPerMinute,
    /// Weighted `tokens_per_minute`.
    TokensPerMinute,
    /// `input_tokens_per_minute`.
    InputTokensPerMinute,
    /// `output_tokens_per_minute`.
    OutputTokensPerMinute,
    /// `budget.usd_per_day`, in micro-USD (shared store).
    UsdPerDay,
    /// `budget.usd_per_month`, in micro-USD (shared store).
    UsdPerMonth,
}

impl Counter {
    /// The counter's part of a Redis key (`rpm`, `tpm`, `usd:day`, ...). These are the names
    /// replicas agree on: changing one splits a window across versions during a rollout.
    pub fn redis_suffix(self) -> &'static str {
        match self {
            Counter::Concurrency => "c",
            Counter::RequestsPerSecond => "rps",
            Counter::RequestsPerMinute => "rpm",
            Counter::TokensPerMinute => "tpm",
            Counter::InputTokensPerMinute => "itpm",
            Counter::OutputTokensPerMinute => "otpm",
            Counter::UsdPerDay => "usd:day",
            Counter::UsdPerMonth => "usd:month",
        }
    }
}

/// A counter of one tenant, optionally of one of its `models[]` patterns (owned; cloning
/// costs one or two reference counts).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LimitKey {
    /// Which counter.
    pub counter: Counter,
    /// The tenant's name.
    pub tenant: TenantId,
    /// The `models[].model` glob as written, for a tenant + model counter.
    pub model: Option<Arc<str>>,
}

impl LimitKey {
    /// The tenant-wide `counter` of `tenant`.
    pub fn tenant(counter: Counter, tenant: &TenantId) -> Self {
        Self {
            counter,
            tenant: tenant.clone(),
            model: None,
        }
    }

    /// `counter` of `tenant` for the requests matching model pattern `model`.
    pub fn model(counter: Counter, tenant: &TenantId, model: &Arc<str>) -> Self {
        Self {
            counter,
            tenant: tenant.clone(),
            model: Some(model.clone()),
        }
    }

    /// The borrowed form, for counters that only hash their key.
    pub fn as_ref(&self) -> CounterRef<'_> {
        CounterRef {
            counter: self.counter,
            tenant: &self.tenant,
            model: self.model.as_deref(),
        }
    }

    /// The Redis key of this counter's `window`: `sluice:{tenant}:{suffix}:{window}` for a
    /// tenant-wide counter, `sluice:{tenant}\0{model}:{suffix}:{window}` for a model's.
    pub fn redis_key(&self, window: u64) -> String {
        format!("sluice:{self}:{window}")
    }
}

impl fmt::Display for LimitKey {
    /// `{tenant}:{suffix}`, or `{tenant}\0{model}:{suffix}` (the NUL cannot occur in YAML
    /// names, so no two keys print alike).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.model {
            Some(m) => write!(f, "{}\0{m}:{}", self.tenant, self.counter.redis_suffix()),
            None => write!(f, "{}:{}", self.tenant, self.counter.redis_suffix()),
        }
    }
}

/// A counter key borrowed from the request (no allocation); hashes like nothing else that
/// shares its counter map (the counter is part of the hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CounterRef<'a> {
    /// Which counter.
    pub counter: Counter,
    /// The tenant's name.
    pub tenant: &'a str,
    /// The `models[].model` glob, for a tenant + model counter.
    pub model: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::hash_map::DefaultHasher;
    use std::hash::{Hash, Hasher};

    fn hash<T: Hash>(t: &T) -> u64 {
        let mut h = DefaultHasher::new();
        t.hash(&mut h);
        h.finish()
    }

    #[test]
    fn keys_of_the_same_names_are_equal_across_snapshots() {
        // A reload compiles new Arcs of the same names: the counters must be the same.
        let (a, b): (TenantId, TenantId) = (Arc::from("team-a"), Arc::from("team-a"));
        let (m1, m2): (Arc<str>, Arc<str>) = (Arc::from("gpt-4o*"), Arc::from("gpt-4o*"));
        assert!(!Arc::ptr_eq(&a, &b));
        let k1 = LimitKey::model(Counter::RequestsPerMinute, &a, &m1);
        let k2 = LimitKey::model(Counter::RequestsPerMinute, &b, &m2);
        assert_eq!(k1, k2);
        assert_eq!(hash(&k1), hash(&k2));
        assert_eq!(hash(&k1.as_ref()), hash(&k2.as_ref()));
    }

    #[test]
    fn counters_tenants_and_models_are_distinct_keys() {
        let a: TenantId = Arc::from("a");
        let ab: TenantId = Arc::from("ab");
        let m: Arc<str> = Arc::from("b");
        let keys = [
            LimitKey::tenant(Counter::RequestsPerMinute, &a),
            LimitKey::tenant(Counter::RequestsPerSecond, &a),
            LimitKey::tenant(Counter::RequestsPerMinute, &ab),
            LimitKey::model(Counter::RequestsPerMinute, &a, &m),
        ];
        for (i, x) in keys.iter().enumerate() {
            for y in &keys[i + 1..] {
                assert_ne!(x, y);
                assert_ne!(x.as_ref(), y.as_ref());
            }
        }
    }

    #[test]
    fn redis_keys_keep_their_established_names() {
        let t: TenantId = Arc::from("team-a");
        let m: Arc<str> = Arc::from("gpt-4o*");
        assert_eq!(
            LimitKey::tenant(Counter::RequestsPerMinute, &t).redis_key(7),
            "sluice:team-a:rpm:7"
        );
        assert_eq!(
            LimitKey::tenant(Counter::TokensPerMinute, &t).redis_key(7),
            "sluice:team-a:tpm:7"
        );
        assert_eq!(
            LimitKey::tenant(Counter::UsdPerDay, &t).redis_key(20_000),
            "sluice:team-a:usd:day:20000"
        );
        assert_eq!(
            LimitKey::tenant(Counter::UsdPerMonth, &t).redis_key(24_322),
            "sluice:team-a:usd:month:24322"
        );
        assert_eq!(
            LimitKey::model(Counter::RequestsPerMinute, &t, &m).redis_key(1),
            "sluice:team-a\0gpt-4o*:rpm:1"
        );
    }
}
