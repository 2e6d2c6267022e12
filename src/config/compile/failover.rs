//! `routes[].failover` compiled: the rules validated (each problem with its path) and turned
//! into the snapshot's [`Failover`], with `max_resumes` for `resume_on_cut`.

use super::Errors;
use crate::config::schema::{FailoverConf, Prefill};
use crate::config::snapshot::{Failover, Pool, Retry};
use std::sync::Arc;
use std::time::Duration;

/// The route's failover rules at `path` (`routes[i]`) over its resolved `pools`, and its
/// `max_resumes` (0 when `resume_on_cut` is off); problems go to `errs`.
pub(super) fn compile_failover(
    path: &str,
    f: &FailoverConf,
    pools: &[Arc<Pool>],
    errs: &mut Errors,
) -> (Failover, u32) {
    if f.max_attempts == 0 {
        errs.push(
            format!("{path}.failover.max_attempts"),
            "must be at least 1",
        );
    }
    if f.deadline_ms == 0 {
        errs.push(
            format!("{path}.failover.deadline_ms"),
            "must be greater than 0",
        );
    }
    for (j, st) in f.retry.on_status.iter().enumerate() {
        if !(500..600).contains(st) && *st != 408 && *st != 429 {
            errs.push(
                format!("{path}.failover.retry.on_status[{j}]"),
                format!("{st}: only 408, 429 and 5xx can be retried"),
            );
        }
    }
    for (j, code) in f.retry_on_error_codes.iter().enumerate() {
        if crate::provider::is_content_filter_code(code) {
            errs.push(
                format!("{path}.failover.retry_on_error_codes[{j}]"),
                format!("{code}: a content-filter rejection is never retried"),
            );
        }
    }
    if f.max_error_body_bytes == 0
        && !(f.retry_on_error_codes.is_empty() && f.retry_on_error_messages.is_empty())
    {
        errs.push(
            format!("{path}.failover.max_error_body_bytes"),
            "must be greater than 0 when retry_on_error_codes is set",
        );
    }
    if f.first_token_ms == 0 {
        errs.push(
            format!("{path}.failover.first_token_ms"),
            "must be greater than 0",
        );
    }
    for (j, st) in f.retry_on_status.iter().enumerate() {
        if !(400..600).contains(st) || (*st != 429 && *st < 500 && *st != 408) {
            errs.push(
                format!("{path}.failover.retry_on_status[{j}]"),
                format!("{st}: only 408, 429 and 5xx can be retried elsewhere"),
            );
        }
    }
    let max_resumes = resume_bound(path, f, pools, errs);
    let failover = Failover {
        retry_on_status: f.retry_on_status.clone(),
        retry_on_connect_error: f.retry_on_connect_error,
        retry_on_timeout: f.retry_on_timeout,
        max_attempts: f.max_attempts,
        deadline: Duration::from_millis(f.deadline_ms),
        retry: Retry {
            max_retries: f.retry.max_retries,
            on_status: f.retry.on_status.clone(),
            on_reset: f.retry.on_reset,
            on_timeout: f.retry.on_timeout,
            backoff: Duration::from_millis(f.retry.backoff_ms),
            max_backoff: Duration::from_millis(f.retry.max_backoff_ms),
        },
        retry_on_error_codes: f.retry_on_error_codes.clone(),
        retry_on_error_messages: f
            .retry_on_error_messages
            .iter()
            .map(|m| m.to_lowercase())
            .collect(),
        max_error_body_bytes: usize::try_from(f.max_error_body_bytes).unwrap_or(usize::MAX),
        first_token: Duration::from_millis(f.first_token_ms),
    };
    (failover, max_resumes)
}

/// `routes[].failover.max_resumes` when `resume_on_cut` is on (0 when off), with the
/// combinations that could never resume refused: `max_resumes` outside 1..=8, a single
/// attempt allowed, or no pool of the route declaring a `prefill`.
fn resume_bound(path: &str, f: &FailoverConf, pools: &[Arc<Pool>], errs: &mut Errors) -> u32 {
    if !f.resume_on_cut {
        return 0;
    }
    if !(1..=8).contains(&f.max_resumes) {
        errs.push(
            format!("{path}.failover.max_resumes"),
            "must be between 1 and 8",
        );
    }
    if f.max_attempts < 2 {
        errs.push(
            format!("{path}.failover.resume_on_cut"),
            "needs max_attempts of at least 2 (the continuation is an attempt)",
        );
    }
    if pools.iter().all(|p| p.prefill == Prefill::None) {
        errs.push(
            format!("{path}.failover.resume_on_cut"),
            "no pool of this route accepts a prefill (set pools[].prefill)",
        );
    }
    f.max_resumes
}
