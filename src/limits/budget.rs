//! USD spend per tenant per UTC day and month, and the cost of a request from its exact usage
//! and the model's price. Spend is local to this process (a shared store comes later).

use crate::config::limits::{Budget, Price};
use crate::usage::Usage;
use chrono::{Datelike, Utc};
use std::collections::HashMap;
use std::sync::Mutex;

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
}

/// Spend book.
#[derive(Debug, Default)]
pub struct Budgets {
    spend: Mutex<HashMap<String, Spend>>,
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
        Spend {
            day,
            day_usd: if s.day == day { s.day_usd } else { 0.0 },
            month,
            month_usd: if s.month == month { s.month_usd } else { 0.0 },
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
                tenant.to_owned(),
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
}
