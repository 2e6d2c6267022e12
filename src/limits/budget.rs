//! USD spend per tenant per UTC day and month, and the cost of a request from its exact usage
//! and the model's price, for the local store (`limits.store: local`; the shared store keeps
//! budgets in Redis, see `shared`).
//!
//! Like tokens, a budget is reserved before forwarding and settled after: a request reserves
//! its worst-case cost (prompt estimate and output ceiling at the model's price), at most what
//! is left, and is refused while spend plus the reservations in flight reach a cap; at its end
//! the reservation is replaced by the exact cost. Concurrent spenders therefore overshoot a
//! budget only by cost beyond their reservations.

use crate::config::limits::{Budget, Price};
use crate::config::TenantId;
use crate::usage::Usage;
use chrono::{Datelike, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Cost in USD of `u` at `price` (per 1M tokens). Cached reads are priced apart from the rest
/// of the prompt when the API counts them inside `prompt_tokens` (OpenAI); Anthropic reports
/// cache reads and writes outside `input_tokens`, so `anthropic` adds them instead.
pub fn cost_usd(u: &Usage, price: &Price, anthropic: bool) -> f64 {
    let uncached = if anthropic {
        u.prompt_tokens
    } else {
        u.prompt_tokens.saturating_sub(u.cached_tokens)
    };
    let per = 1e-6;
    uncached as f64 * price.input * per
        + u.cached_tokens as f64 * price.cached_input * per
        + u.cache_write_tokens as f64 * price.cache_write * per
        + u.completion_tokens as f64 * price.output * per
}

#[derive(Debug, Default, Clone, Copy)]
struct Spend {
    day: i64,
    day_usd: f64,
    month: i64,
    month_usd: f64,
    /// Reserved by requests in flight, in `day` and `month`.
    day_reserved_usd: f64,
    month_reserved_usd: f64,
}

/// Spend book.
#[derive(Debug, Default)]
pub struct Budgets {
    spend: Mutex<HashMap<TenantId, Spend>>,
}

/// A request's reservation on its tenant's budget (USD, in the UTC day and month it was
/// taken in). Dropped without [`BudgetHold::settle`], it is released (the request spent
/// nothing).
#[derive(Debug)]
pub struct BudgetHold {
    budgets: Arc<Budgets>,
    tenant: TenantId,
    day: i64,
    month: i64,
    /// The part of the worst case that was left when it was taken.
    usd: f64,
    /// What the reservation counts in the book: the whole worst case, even past what was left,
    /// so that once one request was admitted on the remainder no other is admitted on crumbs
    /// freed by settlements until it settles (spend overshoots the cap by at most one
    /// request).
    held: f64,
}

impl BudgetHold {
    /// USD reserved within the cap (the worst case, or what was left when less).
    pub fn usd(&self) -> f64 {
        self.usd
    }

    /// Replace the reservation by the exact cost `usd` (in one step: spend never looks
    /// lower than it is).
    pub fn settle(mut self, usd: f64) {
        self.budgets
            .settle(&self.tenant, self.day, self.month, self.held, usd);
        self.held = 0.0;
    }
}

impl Drop for BudgetHold {
    fn drop(&mut self) {
        if self.held > 0.0 {
            self.budgets
                .settle(&self.tenant, self.day, self.month, self.held, 0.0);
        }
    }
}

/// Which cap is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// The UTC day's cap.
    Day,
    /// The UTC month's cap.
    Month,
}

impl Period {
    /// `day` / `month`.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }
}

/// (UTC day number, UTC month number) now.
pub fn today() -> (i64, i64) {
    let now = Utc::now();
    (
        now.timestamp().div_euclid(86_400),
        i64::from(now.year()) * 12 + i64::from(now.month0()),
    )
}

impl Budgets {
    fn current(&self, tenant: &str) -> Spend {
        let (day, month) = today();
        let s = self
            .spend
            .lock()
            .ok()
            .and_then(|m| m.get(tenant).copied())
            .unwrap_or_default();
        Self::rolled(s, day, month)
    }

    /// Reserve `usd` (a request's worst-case cost) of `tenant`'s `budget` while there is any
    /// left after spend and the reservations in flight; the hold's [`BudgetHold::usd`] is the
    /// part that was left, and the whole worst case counts in the book until it settles. Returns the hold and the USD that
    /// was left before it, or the period whose cap spend and reservations already reach.
    pub fn reserve(
        self: &Arc<Self>,
        tenant: &TenantId,
        budget: &Budget,
        usd: f64,
    ) -> Result<(BudgetHold, f64), Period> {
        let (day, month) = today();
        let Ok(mut m) = self.spend.lock() else {
            return Err(Period::Day);
        };
        let stored = m.get(&**tenant).copied().unwrap_or_default();
        let mut s = Self::rolled(stored, day, month);
        let mut left = f64::INFINITY;
        for (period, cap, spent) in [
            (
                Period::Day,
                budget.usd_per_day,
                s.day_usd + s.day_reserved_usd,
            ),
            (
                Period::Month,
                budget.usd_per_month,
                s.month_usd + s.month_reserved_usd,
            ),
        ] {
            if let Some(cap) = cap {
                if spent >= cap {
                    return Err(period);
                }
                left = left.min(cap - spent);
            }
        }
        let held = usd.max(0.0);
        let take = held.min(left);
        s.day_reserved_usd += held;
        s.month_reserved_usd += held;
        m.insert(tenant.clone(), s);
        Ok((
            BudgetHold {
                budgets: self.clone(),
                tenant: tenant.clone(),
                day,
                month,
                usd: take,
                held,
            },
            left,
        ))
    }

    fn settle(&self, tenant: &TenantId, day: i64, month: i64, reserved: f64, usd: f64) {
        let (today, this_month) = today();
        let Ok(mut m) = self.spend.lock() else {
            return;
        };
        let stored = m.get(&**tenant).copied().unwrap_or_default();
        let mut s = Self::rolled(stored, today, this_month);
        if day == today {
            s.day_reserved_usd = (s.day_reserved_usd - reserved).max(0.0);
        }
        if month == this_month {
            s.month_reserved_usd = (s.month_reserved_usd - reserved).max(0.0);
        }
        s.day_usd += usd;
        s.month_usd += usd;
        m.insert(tenant.clone(), s);
    }

    fn rolled(s: Spend, day: i64, month: i64) -> Spend {
        let same_day = s.day == day;
        let same_month = s.month == month;
        Spend {
            day,
            day_usd: if same_day { s.day_usd } else { 0.0 },
            month,
            month_usd: if same_month { s.month_usd } else { 0.0 },
            day_reserved_usd: if same_day { s.day_reserved_usd } else { 0.0 },
            month_reserved_usd: if same_month {
                s.month_reserved_usd
            } else {
                0.0
            },
        }
    }

    /// USD left under `budget` for `tenant` (the smaller of day and month), or the spent
    /// period when nothing is left.
    pub fn remaining(&self, tenant: &str, budget: &Budget) -> Result<f64, Period> {
        let s = self.current(tenant);
        let mut left = f64::INFINITY;
        if let Some(cap) = budget.usd_per_day {
            if s.day_usd >= cap {
                return Err(Period::Day);
            }
            left = left.min(cap - s.day_usd);
        }
        if let Some(cap) = budget.usd_per_month {
            if s.month_usd >= cap {
                return Err(Period::Month);
            }
            left = left.min(cap - s.month_usd);
        }
        Ok(left)
    }

    /// Add `usd` to `tenant`'s day and month.
    pub fn charge(&self, tenant: &str, usd: f64) {
        let s = self.current(tenant);
        if let Ok(mut m) = self.spend.lock() {
            m.insert(
                tenant.into(),
                Spend {
                    day_usd: s.day_usd + usd,
                    month_usd: s.month_usd + usd,
                    ..s
                },
            );
        }
    }

    /// USD spent today and this month by `tenant`.
    pub fn spent(&self, tenant: &str) -> (f64, f64) {
        let s = self.current(tenant);
        (s.day_usd, s.month_usd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_and_caps() {
        let p = Price {
            input: 2.0,
            output: 10.0,
            cached_input: 1.0,
            cache_write: 3.0,
        };
        let u = Usage {
            prompt_tokens: 1_000_000,
            completion_tokens: 100_000,
            cached_tokens: 500_000,
            ..Usage::default()
        };
        assert!((cost_usd(&u, &p, false) - (1.0 + 0.5 + 1.0)).abs() < 1e-9);
        assert!((cost_usd(&u, &p, true) - (2.0 + 0.5 + 1.0)).abs() < 1e-9);
        let b = Budgets::default();
        let cap = Budget {
            usd_per_day: Some(0.01),
            usd_per_month: None,
            cut_off_streams: false,
        };
        assert!((b.remaining("t", &cap).unwrap() - 0.01).abs() < 1e-12);
        b.charge("t", 0.004);
        b.charge("t", 0.006);
        assert_eq!(b.remaining("t", &cap), Err(Period::Day));
        assert!(b.remaining("other", &cap).is_ok());
    }

    #[test]
    fn reservations_bound_concurrent_spend_and_settle_to_the_exact_cost() {
        let b = Arc::new(Budgets::default());
        let t: TenantId = Arc::from("t");
        let cap = Budget {
            usd_per_day: Some(0.5),
            usd_per_month: Some(10.0),
            cut_off_streams: false,
        };
        // Worst case $0.12 each: four fit, the fifth gets what is left, the sixth nothing.
        let mut holds: Vec<BudgetHold> = (0..5)
            .map(|_| b.reserve(&t, &cap, 0.12).unwrap().0)
            .collect();
        assert!((holds[4].usd() - 0.02).abs() < 1e-12);
        assert_eq!(b.reserve(&t, &cap, 0.12).unwrap_err(), Period::Day);
        // Settlements below the worst case free nothing while the fifth, admitted on the
        // remainder, is in flight: no sixth request is admitted on those crumbs.
        let cheap = b.reserve(&t, &cap, 0.0);
        assert_eq!(cheap.unwrap_err(), Period::Day);
        {
            let b2 = Arc::new(Budgets::default());
            let mut four: Vec<BudgetHold> = (0..4)
                .map(|_| b2.reserve(&t, &cap, 0.12).unwrap().0)
                .collect();
            let fifth = b2.reserve(&t, &cap, 0.12).unwrap().0;
            for h in four.drain(..) {
                h.settle(0.11);
            }
            assert_eq!(b2.reserve(&t, &cap, 0.12).unwrap_err(), Period::Day);
            fifth.settle(0.11);
            assert_eq!(b2.reserve(&t, &cap, 0.12).unwrap_err(), Period::Day);
        }
        // A dropped hold (refused or cut before any usage) gives its reservation back.
        drop(holds.pop());
        let (again, left) = b.reserve(&t, &cap, 0.12).unwrap();
        assert!((left - 0.02).abs() < 1e-12 && (again.usd() - 0.02).abs() < 1e-12);
        // Settled to exact costs: spend is what was used, not what was reserved.
        for h in holds {
            h.settle(0.1);
        }
        again.settle(0.03);
        let (day, month) = b.spent("t");
        assert!((day - 0.43).abs() < 1e-12 && (month - 0.43).abs() < 1e-12);
        let (next, left) = b.reserve(&t, &cap, 0.12).unwrap();
        assert!((left - 0.07).abs() < 1e-12 && (next.usd() - 0.07).abs() < 1e-12);
    }
}
