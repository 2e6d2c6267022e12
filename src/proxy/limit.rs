//! Pipeline stage 3b (request_filter, after routing): admit the request under its tenant's
//! limits, reserving its worst case (prompt estimate + output ceiling); refuse it with a
//! native 429 when it does not fit. Tenants without limits skip this stage entirely.

use super::ctx::RequestCtx;
use crate::config::limits::{ModelLimits, TenantLimits};
use crate::config::Snapshot;
use crate::error::SluiceError;
use crate::limits::{Ask, Limiter, Rejection};
use crate::metrics;
use crate::usage::{estimate, ApiKind};
use bytes::Bytes;
use std::sync::Arc;

/// Bodies up to this size get a tiktoken prompt estimate; larger ones the byte heuristic
/// (tiktoken-rs runs at about 9 MB/s: 8 KiB costs under 1 ms, 256 KiB would cost ~27 ms).
const TOKENIZE_MAX_BYTES: usize = 8 * 1024;

/// Admit `ctx`'s request or return the rejection as a [`SluiceError`].
pub async fn admit(
    limiter: &Arc<Limiter>,
    snapshot: &Snapshot,
    ctx: &mut RequestCtx,
) -> Result<(), SluiceError> {
    let Some(tenant) = ctx.caller.tenant.clone() else {
        return Ok(());
    };
    let Some(limits) = snapshot.tenant_limits(&tenant) else {
        return Ok(());
    };
    let model = ctx.model();
    let counts_tokens = limits.tokens_per_minute.is_some()
        || limits.input_tokens_per_minute.is_some()
        || limits.output_tokens_per_minute.is_some()
        || limits.models.iter().any(|m| m.tokens_per_minute.is_some());
    let (prompt, ceiling) = match (ctx.caller.api, ctx.body()) {
        (Some(api), Some(body)) if counts_tokens => (
            byte_estimate(body),
            match api {
                ApiKind::Embeddings | ApiKind::OllamaEmbed => 0,
                _ => snapshot.output_ceiling(model, ctx.fields().max_tokens),
            },
        ),
        _ => (0, 0),
    };
    // Worst-case cost, for budgets shared across replicas (they reserve it).
    let cost_ceiling_usd = match (
        &limits.budget,
        model.and_then(|m| snapshot.model_info(m)?.price),
    ) {
        (Some(_), Some(price)) => {
            let (p, c) = match (ctx.caller.api, ctx.body()) {
                (Some(api), Some(body)) if prompt == 0 => (
                    prompt_estimate(api, model.unwrap_or(""), body),
                    snapshot.output_ceiling(model, ctx.fields().max_tokens),
                ),
                _ => (prompt, ceiling),
            };
            Some((p as f64 * price.input + c as f64 * price.output) * 1e-6)
        }
        _ => None,
    };
    let ask = Ask {
        tenant: &tenant,
        model,
        prompt_tokens: prompt,
        output_ceiling: ceiling,
        cost_ceiling_usd,
    };
    // One bound on the wait for the shared store, however many times this request asks.
    let deadline = limiter.store_deadline();
    let mut result = limiter.admit_until(limits, ask, deadline).await;
    if let (Err(Rejection::Tokens { .. }), Some(api), Some(body)) =
        (&result, ctx.caller.api, ctx.body())
    {
        // The byte heuristic over-estimates; before refusing, count the prompt with tiktoken
        // (OpenAI models, small bodies) and ask again: a refusal leaves no trace to undo.
        let precise = prompt_estimate(api, model.unwrap_or(""), body);
        if precise < prompt {
            let ask = Ask {
                prompt_tokens: precise,
                ..ask
            };
            result = limiter.admit_until(limits, ask, deadline).await;
        }
    }
    decided(&tenant, result, ctx)
}

/// Admit a request that makes no upstream call of its own (a cache hit, a follower of a
/// coalesced call): only the tenant's request limits (requests per minute / second,
/// concurrency, tenant-wide and per model); no token reservation and no budget hold, so it is
/// never refused for tokens or budget and settles nothing.
pub async fn admit_requests(
    limiter: &Arc<Limiter>,
    snapshot: &Snapshot,
    ctx: &mut RequestCtx,
) -> Result<(), SluiceError> {
    let Some(tenant) = ctx.caller.tenant.clone() else {
        return Ok(());
    };
    let Some(limits) = snapshot.tenant_limits(&tenant) else {
        return Ok(());
    };
    let requests_only = Arc::new(TenantLimits {
        requests_per_minute: limits.requests_per_minute,
        requests_per_second: limits.requests_per_second,
        tokens_per_minute: None,
        input_tokens_per_minute: None,
        output_tokens_per_minute: None,
        input_token_weight: limits.input_token_weight,
        output_token_weight: limits.output_token_weight,
        max_concurrent: limits.max_concurrent,
        budget: None,
        models: limits
            .models
            .iter()
            .map(|m| ModelLimits {
                pattern: m.pattern.clone(),
                glob: m.glob.clone(),
                requests_per_minute: m.requests_per_minute,
                tokens_per_minute: None,
                max_concurrent: m.max_concurrent,
            })
            .collect(),
        redis_failure_policy: limits.redis_failure_policy,
    });
    let ask = Ask {
        tenant: &tenant,
        model: ctx.model(),
        prompt_tokens: 0,
        output_ceiling: 0,
        cost_ceiling_usd: None,
    };
    let result = limiter.admit(&requests_only, ask).await;
    decided(&tenant, result, ctx)
}

/// Record the admission decision (metric; `ctx.admission`) or turn the refusal into an error.
fn decided(
    tenant: &str,
    result: Result<crate::limits::Admission, Rejection>,
    ctx: &mut RequestCtx,
) -> Result<(), SluiceError> {
    match result {
        Ok(admission) => {
            metrics::LIMIT_DECISIONS
                .with_label_values(&[tenant, "admitted", "ok"])
                .inc();
            ctx.admission = Some(admission);
            Ok(())
        }
        Err(rejection) => {
            metrics::LIMIT_DECISIONS
                .with_label_values(&[tenant, "rejected", rejection.reason()])
                .inc();
            Err(match rejection {
                Rejection::Budget { period } => SluiceError::BudgetExceeded(period),
                Rejection::StoreUnavailable => SluiceError::LimitStoreUnavailable,
                other => SluiceError::RateLimited(other),
            })
        }
    }
}

/// The reservation's first guess at the prompt: the body's bytes / 4 (JSON syntax makes it an
/// over-estimate, the safe side). Cheap; refined with [`prompt_estimate`] only when the guess
/// does not fit the window (tiktoken-rs costs tens of µs even for a short prompt).
pub fn byte_estimate(body: &Bytes) -> u64 {
    (body.len() as u64).div_ceil(4)
}

/// Prompt tokens a request will likely use: tiktoken over the prompt text for OpenAI models
/// (bodies up to 8 KiB, once the tokenizer is loaded), otherwise the body's bytes / 4 (about 4 bytes per token of English
/// text; JSON syntax makes this over-estimate, the safe side for a reservation).
pub fn prompt_estimate(api: ApiKind, model: &str, body: &Bytes) -> u64 {
    let openai_model = ["gpt-", "o1", "o3", "o4", "chatgpt-", "text-embedding-"]
        .iter()
        .any(|p| model.starts_with(p));
    if openai_model && body.len() <= TOKENIZE_MAX_BYTES {
        // The tables are built on first need, off the request path; until then, the heuristic.
        if !estimate::is_loaded(model) {
            estimate::load_in_background(model);
        } else if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
            return estimate::estimate_prompt_tokens(api, model, &v);
        }
    }
    (body.len() as u64).div_ceil(4)
}
