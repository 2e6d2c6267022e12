//! Per-tenant limits enforced on the request path: reserve before forwarding, settle after.
//!
//! - requests per second / minute: pingora-limits `Rate` (fixed windows; a count-min sketch
//!   that may over-count on a hash collision, never under: the safe side for a limit);
//! - concurrency: pingora-limits `Inflight`, whose RAII guard lives in the [`Admission`], so a
//!   permit is returned however the request ends (success, error, client disconnect);
//! - tokens per minute: [`window::Windows`], our own exact counters with reservations (see
//!   there why `Rate` does not fit);
//! - USD budgets: [`budget::Budgets`], reserved at each request's worst-case cost and settled
//!   to its exact cost, like tokens.
//!
//! The limiter outlives config snapshots: counters are keyed by a typed [`LimitKey`] (counter,
//! tenant name, model pattern) compared by the names' text, so a reload does not reset
//! anyone's minute or budget, and no key is formatted or allocated per request.

mod admission;
pub mod budget;
mod headers;
pub mod key;
mod rejection;
pub mod shared;
pub mod window;

use crate::config::limits::{ModelLimits, TenantLimits};
use crate::config::schema::FailurePolicy;
use crate::config::TenantId;
use crate::metrics;
pub use admission::Admission;
use budget::{Budgets, Period};
pub use headers::RateHeaders;
pub use key::{Counter, CounterRef, LimitKey};
use pingora_limits::inflight::Inflight;
use pingora_limits::rate::Rate;
pub use rejection::Rejection;
use shared::{SharedStore, StoreDown};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use window::{WindowState, Windows};

/// What a request asks the limiter for.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// Tenant name (the config's shared name: counter keys hold a reference to it).
    pub tenant: &'a TenantId,
    /// Model from the body.
    pub model: Option<&'a str>,
    /// Estimated prompt tokens (0 when the request is not token-accounted).
    pub prompt_tokens: u64,
    /// Output ceiling: `max_tokens`, the model's, or the default (0 when not accounted).
    pub output_ceiling: u64,
    /// Worst-case cost (prompt estimate and ceiling at the model's price), when priced: what a
    /// budget reserves (local or shared).
    pub cost_ceiling_usd: Option<f64>,
}

/// The limiter: all counters of this process.
pub struct Limiter {
    per_minute: Rate,
    per_second: Rate,
    inflight: Inflight,
    pub(crate) tokens: Windows<LimitKey>,
    pub(crate) budgets: Arc<Budgets>,
    /// The Redis-backed store for requests/tokens per minute and budgets, when configured.
    pub(crate) shared: Option<Arc<SharedStore>>,
}

impl Default for Limiter {
    fn default() -> Self {
        Self::new(None)
    }
}

/// Which of a tenant's per-minute limits the local counters enforce for one request: all of
/// them with the local store; none (Redis did) with the shared one; a share of them
/// (`limit ÷ expected_replicas`) when Redis is down and the policy is `open`.
#[derive(Debug, Clone, Copy)]
struct Local {
    requests_per_minute: Option<u64>,
    tokens_per_minute: Option<u64>,
    /// The budget is enforced here with its caps divided by this (1: the local store; the
    /// expected replicas when Redis is down and the policy is `open`); `None`: Redis did.
    budget_divisor: Option<u32>,
}

/// What a shared hold counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HoldKind {
    Requests,
    Tokens,
    MicroUsd,
}

/// A quota unit taken from a shared window, settled at the end.
pub(crate) struct SharedHold {
    pub(crate) key: LimitKey,
    pub(crate) window: u64,
    pub(crate) reserved: u64,
    pub(crate) kind: HoldKind,
}

const MINUTE_MS: u64 = 60_000;

impl Limiter {
    /// A limiter; `shared` moves requests/tokens per minute and budgets to Redis.
    pub fn new(shared: Option<Arc<SharedStore>>) -> Self {
        Self {
            per_minute: Rate::new(Duration::from_secs(60)),
            per_second: Rate::new(Duration::from_secs(1)),
            inflight: Inflight::new(),
            tokens: Windows::new(Duration::from_secs(60)),
            budgets: Arc::default(),
            shared,
        }
    }

    /// The shared store, if any (for its background flush).
    pub fn shared(&self) -> Option<&Arc<SharedStore>> {
        self.shared.as_ref()
    }
}

/// USD as whole micro-dollars (shared budgets count integers in Redis).
pub(crate) fn micro(usd: f64) -> u64 {
    (usd * 1e6).ceil().max(0.0) as u64
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The borrowed key of `tenant`'s `counter`, narrowed to `model`'s pattern when given.
fn counter_ref<'a>(
    counter: Counter,
    tenant: &'a str,
    model: Option<&'a ModelLimits>,
) -> CounterRef<'a> {
    CounterRef {
        counter,
        tenant,
        model: model.map(|m| &*m.pattern),
    }
}

impl Limiter {
    /// Admit `ask` under `limits` or say why not. Checks, cheapest and side-effect-free first:
    /// budget, concurrency, tokens (all-or-nothing reservation), then request rates (undone
    /// if refused), so a refused request leaves no trace in any counter.
    pub async fn admit(
        self: &Arc<Self>,
        limits: &Arc<TenantLimits>,
        ask: Ask<'_>,
    ) -> Result<Admission, Rejection> {
        let deadline = self.store_deadline();
        self.admit_until(limits, ask, deadline).await
    }

    /// When a request that starts now must stop waiting on the shared store (now +
    /// `limits.redis.timeout_ms`; now without one). Several admissions of one request (a retry
    /// with a finer estimate) share it, so the request never waits longer in all.
    pub fn store_deadline(&self) -> tokio::time::Instant {
        let wait = self.shared.as_ref().map_or(Duration::ZERO, |s| s.timeout());
        tokio::time::Instant::now() + wait
    }

    /// [`Limiter::admit`] waiting on the shared store no later than `deadline`.
    pub async fn admit_until(
        self: &Arc<Self>,
        limits: &Arc<TenantLimits>,
        ask: Ask<'_>,
        deadline: tokio::time::Instant,
    ) -> Result<Admission, Rejection> {
        let all = Local {
            requests_per_minute: limits.requests_per_minute,
            tokens_per_minute: limits.tokens_per_minute,
            budget_divisor: Some(1),
        };
        let Some(shared) = &self.shared else {
            return self.admit_local(limits, ask, all);
        };
        if all.requests_per_minute.is_none()
            && all.tokens_per_minute.is_none()
            && limits.budget.is_none()
        {
            return self.admit_local(limits, ask, all);
        }
        let (local, holds) = match self.take_shared(shared, limits, &ask, deadline).await {
            Ok(Ok(holds)) => (
                Local {
                    requests_per_minute: None,
                    tokens_per_minute: None,
                    budget_divisor: None,
                },
                holds,
            ),
            Ok(Err(rejection)) => return Err(rejection),
            Err(StoreDown) => match limits.redis_failure_policy.unwrap_or(shared.failure_policy) {
                FailurePolicy::Open => {
                    metrics::REDIS_FALLBACKS.with_label_values(&["open"]).inc();
                    let share = |l: u64| (l / u64::from(shared.expected_replicas)).max(1);
                    (
                        Local {
                            requests_per_minute: all.requests_per_minute.map(share),
                            tokens_per_minute: all.tokens_per_minute.map(share),
                            budget_divisor: Some(shared.expected_replicas),
                        },
                        Vec::new(),
                    )
                }
                FailurePolicy::Closed => {
                    metrics::REDIS_FALLBACKS
                        .with_label_values(&["closed"])
                        .inc();
                    return Err(Rejection::StoreUnavailable);
                }
            },
        };
        match self.admit_local(limits, ask, local) {
            Ok(mut admission) => {
                admission.shared = holds;
                Ok(admission)
            }
            Err(r) => {
                for h in holds {
                    shared.settle(&h.key, h.window, h.reserved, 0);
                }
                Err(r)
            }
        }
    }

    /// Take this request's requests-per-minute unit and weighted-token reservation from the
    /// shared windows. `Ok(Err(_))`: refused (nothing kept); `Err(StoreDown)`: Redis failed.
    async fn take_shared(
        &self,
        shared: &Arc<SharedStore>,
        limits: &TenantLimits,
        ask: &Ask<'_>,
        deadline: tokio::time::Instant,
    ) -> Result<Result<Vec<SharedHold>, Rejection>, StoreDown> {
        // One deadline for all of this request's takes: never more than `timeout_ms` in all.
        let window_reset = || {
            let now = now_ms();
            Duration::from_millis(MINUTE_MS - now % MINUTE_MS)
        };
        let mut holds = Vec::new();
        if let Some(limit) = limits.requests_per_minute {
            let key = LimitKey::tenant(Counter::RequestsPerMinute, ask.tenant);
            match shared.take(&key, limit, 1, MINUTE_MS, deadline).await? {
                Some(window) => holds.push(SharedHold {
                    key,
                    window,
                    reserved: 1,
                    kind: HoldKind::Requests,
                }),
                None => {
                    return Ok(Err(Rejection::Requests {
                        limit,
                        retry_after: window_reset(),
                    }))
                }
            }
        }
        let amount = limits.weighted(ask.prompt_tokens, ask.output_ceiling);
        if let (Some(limit), true) = (limits.tokens_per_minute, amount > 0) {
            let key = LimitKey::tenant(Counter::TokensPerMinute, ask.tenant);
            let taken = match shared.take(&key, limit, amount, MINUTE_MS, deadline).await {
                Ok(t) => t,
                Err(e) => {
                    for h in holds {
                        shared.settle(&h.key, h.window, h.reserved, 0);
                    }
                    return Err(e);
                }
            };
            match taken {
                Some(window) => {
                    metrics::TOKENS_RESERVED
                        .with_label_values(&[ask.tenant.as_ref()])
                        .inc_by(amount);
                    holds.push(SharedHold {
                        key,
                        window,
                        // What `take` took: a request over the whole limit takes the limit.
                        reserved: amount.min(limit),
                        kind: HoldKind::Tokens,
                    });
                }
                None => {
                    for h in holds {
                        shared.settle(&h.key, h.window, h.reserved, 0);
                    }
                    return Ok(Err(Rejection::Tokens {
                        limit,
                        remaining: 0,
                        retry_after: window_reset(),
                    }));
                }
            }
        }
        if let (Some(b), Some(cost)) = (&limits.budget, ask.cost_ceiling_usd) {
            let (day, month) = budget::today();
            let amount = micro(cost).max(1);
            for (period, counter, cap, window, ttl) in [
                (
                    Period::Day,
                    Counter::UsdPerDay,
                    b.usd_per_day,
                    day,
                    2 * 86_400_000,
                ),
                (
                    Period::Month,
                    Counter::UsdPerMonth,
                    b.usd_per_month,
                    month,
                    32 * 86_400_000,
                ),
            ] {
                let Some(cap) = cap else { continue };
                let key = LimitKey::tenant(counter, ask.tenant);
                let taken = shared
                    .take_in(&key, micro(cap), amount, window as u64, ttl, deadline)
                    .await;
                match taken {
                    Ok(Some(w)) => holds.push(SharedHold {
                        key,
                        window: w,
                        // What `take_in` took: at most the whole cap.
                        reserved: amount.min(micro(cap)),
                        kind: HoldKind::MicroUsd,
                    }),
                    Ok(None) | Err(_) => {
                        for h in holds {
                            shared.settle(&h.key, h.window, h.reserved, 0);
                        }
                        return match taken {
                            Err(e) => Err(e),
                            _ => Ok(Err(Rejection::Budget { period })),
                        };
                    }
                }
            }
        }
        Ok(Ok(holds))
    }

    fn admit_local(
        self: &Arc<Self>,
        limits: &Arc<TenantLimits>,
        ask: Ask<'_>,
        local: Local,
    ) -> Result<Admission, Rejection> {
        let tenant: &str = ask.tenant;
        let model_limits: Vec<_> = match ask.model {
            Some(m) => limits
                .models
                .iter()
                .filter(|ml| ml.glob.is_match(m))
                .collect(),
            None => Vec::new(),
        };
        let (budget_hold, budget_left) = match (&limits.budget, local.budget_divisor) {
            // Shared budgets were reserved in Redis: the request may spend its reservation.
            (Some(_), None) => (None, ask.cost_ceiling_usd),
            // Local budgets (or this replica's share while Redis is down) reserve the worst
            // case here (released if refused below).
            (Some(b), Some(n)) => {
                let share = |cap: f64| cap / f64::from(n.max(1));
                let b = crate::config::limits::Budget {
                    usd_per_day: b.usd_per_day.map(share),
                    usd_per_month: b.usd_per_month.map(share),
                    ..*b
                };
                let (hold, left) = self
                    .budgets
                    .reserve(ask.tenant, &b, ask.cost_ceiling_usd.unwrap_or(0.0))
                    .map_err(|period| Rejection::Budget { period })?;
                (Some(hold), Some(left))
            }
            (None, _) => (None, None),
        };

        let counter = |c, model| counter_ref(c, tenant, model);
        let mut guards = Vec::new();
        let mut counted = false;
        let concurrency = model_limits.iter().map(|ml| (Some(*ml), ml.max_concurrent));
        for (model, limit) in std::iter::once((None, limits.max_concurrent)).chain(concurrency) {
            let Some(limit) = limit else { continue };
            let (guard, n) = self.inflight.incr(counter(Counter::Concurrency, model), 1);
            if n > limit as isize {
                return Err(Rejection::Concurrency { limit });
            }
            guards.push(guard);
            counted = true;
        }

        let mut headers = RateHeaders::default();
        let (input, output) = (ask.prompt_tokens, ask.output_ceiling);
        // (counter key, amount, limit): every token window this request reserves on.
        let mut pairs: Vec<(LimitKey, u64, u64)> = Vec::new();
        if input.saturating_add(output) > 0 {
            let weighted = limits.weighted(input, output);
            let tenant_windows = [
                (Counter::TokensPerMinute, weighted, local.tokens_per_minute),
                (
                    Counter::InputTokensPerMinute,
                    input,
                    limits.input_tokens_per_minute,
                ),
                (
                    Counter::OutputTokensPerMinute,
                    output,
                    limits.output_tokens_per_minute,
                ),
            ];
            for (c, amount, limit) in tenant_windows {
                if let Some(l) = limit {
                    pairs.push((LimitKey::tenant(c, ask.tenant), amount, l));
                }
            }
            for ml in &model_limits {
                if let Some(l) = ml.tokens_per_minute {
                    let key = LimitKey::model(Counter::TokensPerMinute, ask.tenant, &ml.pattern);
                    pairs.push((key, weighted, l));
                }
            }
        }
        let mut reservations = Vec::new();
        if !pairs.is_empty() {
            match self.tokens.try_reserve(&pairs, now_ms()) {
                Ok(res) => {
                    let (first_state, first_limit): (WindowState, u64) = (res[0].1, pairs[0].2);
                    headers.tokens = Some((first_limit, first_state.remaining, first_state.reset));
                    let mut reserved = 0u64;
                    reservations.reserve(pairs.len());
                    for ((key, amount, _), (r, _)) in pairs.into_iter().zip(res) {
                        reserved = reserved.saturating_add(amount);
                        reservations.push((key, r));
                    }
                    metrics::TOKENS_RESERVED
                        .with_label_values(&[tenant])
                        .inc_by(reserved);
                }
                Err((i, state)) => {
                    return Err(Rejection::Tokens {
                        limit: pairs.get(i).map_or(0, |p| p.2),
                        remaining: state.remaining,
                        retry_after: state.reset,
                    })
                }
            }
        }
        let in_flight = counted.then(|| {
            let gauge = metrics::TENANT_IN_FLIGHT.with_label_values(&[tenant]);
            gauge.inc();
            gauge
        });
        let mut admission = Admission {
            limiter: self.clone(),
            tenant: ask.tenant.clone(),
            limits: limits.clone(),
            guards,
            reservations,
            reserved: (input, output),
            headers,
            budget_left,
            budget_hold,
            settled: false,
            in_flight,
            shared: Vec::new(),
        };
        // Request rates last: a refusal above leaves them untouched, and a refusal here is
        // undone, along with the reservations (dropping `admission`).
        let rates = || {
            let tenant_rates = [
                (
                    &self.per_second,
                    counter(Counter::RequestsPerSecond, None),
                    limits.requests_per_second,
                ),
                (
                    &self.per_minute,
                    counter(Counter::RequestsPerMinute, None),
                    local.requests_per_minute,
                ),
            ];
            let model_rates = model_limits.iter().map(|ml| {
                (
                    &self.per_minute,
                    counter(Counter::RequestsPerMinute, Some(*ml)),
                    ml.requests_per_minute,
                )
            });
            tenant_rates
                .into_iter()
                .chain(model_rates)
                .filter_map(|(rate, key, limit)| Some((rate, key, limit?)))
        };
        for (observed, (rate, key, limit)) in rates().enumerate() {
            let n = rate.observe(&key, 1);
            let reset = rate.rate_with(&key, |c| {
                c.interval
                    .mul_f64((1.0 - c.current_interval_fraction).clamp(0.0, 1.0))
            });
            if n > limit as isize {
                // Undo this observation and the ones before it.
                for (rate, key, _) in rates().take(observed + 1) {
                    rate.observe(&key, -1);
                }
                return Err(Rejection::Requests {
                    limit,
                    retry_after: reset,
                });
            }
            let remaining = (limit as isize - n).max(0) as u64;
            let tighter = admission
                .headers
                .requests
                .is_none_or(|(_, rem, _)| remaining < rem);
            if tighter {
                admission.headers.requests = Some((limit, remaining, reset));
            }
        }
        Ok(admission)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{compile, parse, Secrets};

    fn limits_of(yaml: &str) -> Arc<TenantLimits> {
        let snap = compile(&parse(yaml).unwrap(), Secrets::Skip).unwrap();
        snap.tenant_limits("t").unwrap().clone()
    }

    const YAML: &str = "tenants:\n  list:\n    - name: t\n      limits:\n        requests_per_minute: 3\n        models: [{model: 'gpt-4o*', requests_per_minute: 1}]\n";

    fn ask<'a>(tenant: &'a TenantId, model: &'a str) -> Ask<'a> {
        Ask {
            tenant,
            model: Some(model),
            prompt_tokens: 0,
            output_ceiling: 0,
            cost_ceiling_usd: None,
        }
    }

    /// A reload compiles new limits and new `Arc`s of the same names: the counters go on.
    #[tokio::test]
    async fn counters_survive_a_reload_and_models_count_apart() {
        let limiter = Arc::new(Limiter::default());
        let (before, after) = (limits_of(YAML), limits_of(YAML));
        let (t1, t2): (TenantId, TenantId) = (Arc::from("t"), Arc::from("t"));
        assert!(limiter
            .admit(&before, ask(&t1, "gpt-4o-mini"))
            .await
            .is_ok());
        // The model's own minute is spent, across the reload too; the tenant's is not.
        let refused = limiter.admit(&after, ask(&t2, "gpt-4o")).await;
        assert!(matches!(refused, Err(Rejection::Requests { limit: 1, .. })));
        assert!(limiter.admit(&after, ask(&t2, "o3")).await.is_ok());
        // The refusal above left no trace in the tenant's minute: 2 of 3 used, one more fits.
        assert!(limiter.admit(&after, ask(&t2, "o3")).await.is_ok());
        let refused = limiter.admit(&before, ask(&t1, "o3")).await;
        assert!(matches!(refused, Err(Rejection::Requests { limit: 3, .. })));
        // Another tenant's counters are its own.
        let other: TenantId = Arc::from("u");
        assert!(limiter.admit(&after, ask(&other, "o3")).await.is_ok());
    }
}
