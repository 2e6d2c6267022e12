//! An admitted request's hold on the limiter: its reservations, concurrency permits and
//! shared-window holds, settled to exact usage (or released if dropped).

use super::budget::BudgetHold;
use super::key::{Counter, LimitKey};
use super::window::Reservation;
use super::{micro, now_ms, HoldKind, Limiter, RateHeaders, SharedHold};
use crate::config::limits::TenantLimits;
use crate::config::TenantId;
use crate::metrics;
use pingora_limits::inflight::Guard;
use std::sync::Arc;

/// An admitted request's hold on the limiter. Dropping it without [`Admission::settle`]
/// releases every reservation (the request used nothing).
pub struct Admission {
    pub(super) limiter: Arc<Limiter>,
    pub(super) tenant: TenantId,
    pub(super) limits: Arc<TenantLimits>,
    pub(super) guards: Vec<Guard>,
    /// Token windows reserved on (the key's counter says which amount settles it).
    pub(super) reservations: Vec<(LimitKey, Reservation)>,
    /// Tokens reserved (prompt estimate, output ceiling).
    pub reserved: (u64, u64),
    /// Values for `x-ratelimit-*` headers.
    pub headers: RateHeaders,
    /// USD left under the tenant's budget at admission, when it has one.
    pub budget_left: Option<f64>,
    /// The local budget's reservation, settled to the exact cost.
    pub(super) budget_hold: Option<BudgetHold>,
    pub(super) settled: bool,
    /// The tenant's `sluice_tenant_requests_in_flight` gauge while this request counts in it
    /// (a handle: decremented without a label lookup).
    pub(super) in_flight: Option<prometheus::IntGauge>,
    pub(super) shared: Vec<SharedHold>,
}

impl Admission {
    /// The tenant's limits.
    pub fn limits(&self) -> &TenantLimits {
        &self.limits
    }

    /// Replace the reservations by the exact usage and charge `cost_usd` to the budget.
    pub fn settle(mut self, input: u64, output: u64, cost_usd: Option<f64>) {
        // Token reservations, local or shared (Redis), settle to the usage.
        let reserved_tokens =
            !self.reservations.is_empty() || self.shared.iter().any(|h| h.kind == HoldKind::Tokens);
        if reserved_tokens && !self.settled {
            metrics::TOKENS_SETTLED
                .with_label_values(&[&self.tenant])
                .inc_by(input.saturating_add(output));
        }
        self.settle_shared(input, output, cost_usd);
        self.release(input, output);
        let hold = self.budget_hold.take();
        if let (Some(hold), Some(budget)) = (hold, self.limits.budget.as_ref()) {
            let usd = cost_usd.unwrap_or(0.0);
            if usd > hold.usd() {
                metrics::BUDGET_OVERRUN
                    .with_label_values(&[&self.tenant])
                    .inc_by(usd - hold.usd());
            }
            hold.settle(usd);
            // With Redis, local spend is only what was admitted while Redis was down.
            let local_store = self.limiter.shared.is_none();
            let (day, month) = self.limiter.budgets.spent(&self.tenant);
            for (period, cap, spent) in [
                ("day", budget.usd_per_day, day),
                ("month", budget.usd_per_month, month),
            ] {
                if let Some(cap) = cap.filter(|_| local_store) {
                    metrics::BUDGET_REMAINING
                        .with_label_values(&[&self.tenant, period])
                        .set((cap - spent).max(0.0));
                }
            }
        }
    }

    /// Give back the concurrency permits now, before the request's accounting ends (a client
    /// that left must not hold its tenant's `max_concurrent` while its tokens are estimated).
    /// Idempotent.
    pub fn release_permits(&mut self) {
        self.guards.clear();
        if let Some(gauge) = self.in_flight.take() {
            gauge.dec();
        }
    }

    /// Settle shared holds (once): tokens to the weighted usage, budgets to the exact cost.
    fn settle_shared(&mut self, input: u64, output: u64, cost_usd: Option<f64>) {
        let Some(sh) = self.limiter.shared.clone() else {
            return;
        };
        // Day and month hold the same amount: count the overrun once.
        let mut overrun_counted = false;
        for h in std::mem::take(&mut self.shared) {
            let actual = match h.kind {
                HoldKind::Requests => h.reserved,
                HoldKind::Tokens => self.limits.weighted(input, output),
                HoldKind::MicroUsd => cost_usd.map_or(0, micro),
            };
            if h.kind == HoldKind::MicroUsd && actual > h.reserved && !overrun_counted {
                overrun_counted = true;
                metrics::BUDGET_OVERRUN
                    .with_label_values(&[&self.tenant])
                    .inc_by((actual - h.reserved) as f64 * 1e-6);
            }
            sh.settle(&h.key, h.window, h.reserved, actual);
        }
    }

    fn release(&mut self, input: u64, output: u64) {
        if self.settled {
            return;
        }
        self.settled = true;
        let now = now_ms();
        for (key, r) in &self.reservations {
            let actual = match key.counter {
                Counter::InputTokensPerMinute => input,
                Counter::OutputTokensPerMinute => output,
                _ => self.limits.weighted(input, output),
            };
            self.limiter.tokens.settle(key, *r, actual, now);
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.settle_shared(0, 0, None);
        self.release(0, 0);
        if let Some(gauge) = self.in_flight.take() {
            gauge.dec();
        }
    }
}
