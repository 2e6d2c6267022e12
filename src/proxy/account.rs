//! Pipeline stage 6 (logging): settle the request's tokens (exact from upstream usage, else
//! estimated with tiktoken and labelled so), export metrics, and write the one structured log
//! line per request. Never a key, never prompt text.

use super::ctx::RequestCtx;
use crate::limits::budget;
use crate::metrics;
use crate::usage::{estimate, Usage};

/// Where a token count came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The upstream's own usage report.
    Exact,
    /// Counted by sluice (tiktoken) because the upstream reported none or the stream was cut.
    Estimated,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Exact => "exact",
            Source::Estimated => "estimated",
        }
    }
}

/// Settled tokens of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// Token counts.
    pub usage: Usage,
    /// Source of `prompt_tokens` (and cached/cache-write counts).
    pub prompt_source: Source,
    /// Source of `completion_tokens` (and reasoning).
    pub completion_source: Source,
}

/// Token counts sluice had to compute itself (tiktoken), when the upstream's usage was
/// missing or the response was cut.
#[derive(Debug, Clone, Copy, Default)]
pub struct Estimates {
    /// Prompt tokens counted from the request body.
    pub prompt: Option<u64>,
    /// Completion tokens counted from the delivered text.
    pub completion: Option<u64>,
}

/// Whether the upstream's usage is the whole truth: reported, for a response that reached its
/// normal end and was inspected in full.
fn usage_is_exact(ctx: &RequestCtx) -> bool {
    ctx.delivered.usage.is_some() && ctx.delivered.completed && !ctx.delivered.usage_incomplete
}

/// Whether [`settle`] needs sluice's own token counts (usage missing, the response cut, or
/// part of it uninspected).
pub fn needs_estimates(ctx: &RequestCtx) -> bool {
    !is_cache_hit(ctx)
        && ctx.inspected.is_some()
        && ctx.delivered.coalesced.is_none()
        && (200..300).contains(&ctx.delivered.status)
        && ctx.caller.api.is_some()
        && !usage_is_exact(ctx)
}

/// Count what [`settle`] will need, on the counting thread ([`crate::usage::counter`]):
/// tokenizing is CPU work (and the first use builds the tables), which must not stall the
/// worker running other requests.
pub async fn estimates(ctx: &RequestCtx) -> Estimates {
    let Some(api) = ctx.caller.api.filter(|_| needs_estimates(ctx)) else {
        return Estimates::default();
    };
    let need_completion = !usage_is_exact(ctx);
    let need_prompt = ctx.delivered.usage.is_none();
    if !need_completion && !need_prompt {
        return Estimates::default();
    }
    let model = ctx.model().map(str::to_owned).unwrap_or_default();
    let text = ctx
        .delivered
        .output_text
        .clone()
        .filter(|_| need_completion);
    let body = ctx.body().cloned().filter(|_| need_prompt);
    let work = move || Estimates {
        prompt: body.map(|b| {
            serde_json::from_slice::<serde_json::Value>(&b)
                .map_or(0, |v| estimate::estimate_prompt_tokens(api, &model, &v))
        }),
        completion: Some(text.map_or(0, |t| estimate::count_tokens(&model, &t))),
    };
    crate::usage::counter::run(work).await.unwrap_or_default()
}

/// Settle the tokens of an inspected request that got a 2xx: the upstream's usage when the
/// response completed and was inspected in full; otherwise the reported prompt (if any) plus a
/// tiktoken count of the delivered text (never less than what the upstream already reported),
/// labelled estimated. A follower of a coalesced call settles nothing (its leader paid).
pub fn settle(ctx: &RequestCtx, est: Estimates) -> Option<Settled> {
    if is_cache_hit(ctx)
        || ctx.inspected.is_none()
        || ctx.delivered.coalesced.is_some()
        || !(200..300).contains(&ctx.delivered.status)
    {
        return None;
    }
    ctx.caller.api?;
    let completion_estimate = est.completion.unwrap_or(0);
    match ctx.delivered.usage {
        Some(u) if usage_is_exact(ctx) => Some(Settled {
            usage: u,
            prompt_source: Source::Exact,
            completion_source: Source::Exact,
        }),
        Some(mut u) => {
            u.completion_tokens = u.completion_tokens.max(completion_estimate);
            Some(Settled {
                usage: u,
                prompt_source: if u.prompt_tokens > 0 {
                    Source::Exact
                } else {
                    Source::Estimated
                },
                completion_source: Source::Estimated,
            })
        }
        None => Some(Settled {
            usage: Usage {
                prompt_tokens: est.prompt.unwrap_or(0),
                completion_tokens: completion_estimate,
                ..Usage::default()
            },
            prompt_source: Source::Estimated,
            completion_source: Source::Estimated,
        }),
    }
}

/// A cache hit: no upstream was paid, so no tokens or spend are settled (what it saved is
/// counted by the cache stage).
fn is_cache_hit(ctx: &RequestCtx) -> bool {
    ctx.cache == Some(crate::cache::Outcome::Hit)
}

/// USD cost of `usage` from the request's model price, if the model table has one.
fn cost(ctx: &RequestCtx, usage: &Usage) -> Option<f64> {
    let snapshot = ctx.snapshot.as_ref()?;
    let price = snapshot.model_info(ctx.model()?)?.price?;
    let anthropic = ctx.caller.api == Some(crate::usage::ApiKind::AnthropicMessages);
    Some(budget::cost_usd(usage, &price, anthropic))
}

/// Export the request's metrics, settle its limiter admission (exact tokens, cost), and
/// write its log line.
pub fn finish(ctx: &mut RequestCtx, status: u16, est: Estimates) {
    let admission = ctx.admission.take();
    let model = metrics::model_label_ref(ctx.model());
    let tenant = ctx.caller.tenant.as_deref().unwrap_or("none");
    let route = ctx.route_name();
    let pool = ctx.pool_name();
    metrics::REQUESTS
        .with_label_values(&[route, pool, model, metrics::status_class(status)])
        .inc();
    let duration = ctx.start.elapsed();
    if ctx.upstream.last.is_some() {
        metrics::UPSTREAM_DURATION
            .with_label_values(&[route, pool])
            .observe(duration.as_secs_f64());
    }
    if let Some(ttft) = ctx.delivered.ttft {
        metrics::TTFT
            .with_label_values(&[route, pool])
            .observe(ttft.as_secs_f64());
    }
    let settled = settle(ctx, est);
    if let Some(s) = &settled {
        let u = &s.usage;
        for (kind, n, src) in [
            ("prompt", u.prompt_tokens, s.prompt_source),
            ("completion", u.completion_tokens, s.completion_source),
            ("cached", u.cached_tokens, s.prompt_source),
            ("cache_write", u.cache_write_tokens, s.prompt_source),
            ("reasoning", u.reasoning_tokens, s.completion_source),
        ] {
            if n > 0 || kind == "prompt" || kind == "completion" {
                metrics::TOKENS
                    .with_label_values(&[tenant, model, kind, src.label()])
                    .inc_by(n);
            }
        }
    }
    let cost = settled.as_ref().and_then(|s| cost(ctx, &s.usage));
    if let Some(usd) = cost {
        metrics::SPEND
            .with_label_values(&[tenant, model])
            .inc_by(usd);
    }
    if let Some(admission) = admission {
        let u = settled.map(|s| s.usage).unwrap_or_default();
        admission.settle(u.prompt_tokens, u.completion_tokens, cost);
    }
    let u = settled.map(|s| s.usage).unwrap_or_default();
    let token_source = settled.map_or("none", |s| s.completion_source.label());
    let endpoint = ctx.upstream.endpoint_addr().unwrap_or("none");
    let mut hex = [0u8; 64];
    let input_hash = ctx.reuse.as_ref().map_or("", |r| r.key.hex_in(&mut hex));
    crate::access_log::write(&crate::access_log::AccessLine {
        request_id: &ctx.request_id,
        tenant,
        route,
        pool,
        endpoint,
        model,
        status,
        stream: ctx.fields().stream,
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
        cached_tokens: u.cached_tokens,
        reasoning_tokens: u.reasoning_tokens,
        token_source,
        cost_usd: cost.unwrap_or(0.0),
        ttft: ctx.delivered.ttft,
        held: ctx.delivered.held,
        duration,
        completed: ctx.delivered.completed,
        attempts: &ctx.upstream.attempts,
        client_disconnected: ctx.delivered.client_disconnected,
        error: ctx.delivered.error.as_ref().map_or("", |e| e.label()),
        resumes: ctx.delivered.resumes,
        legs: &ctx.delivered.legs,
        cache: ctx.cache.map_or("", crate::cache::Outcome::as_str),
        input_hash,
        coalesced: ctx.delivered.coalesced.as_deref().unwrap_or(""),
    });
    end_spans(ctx, status, settled.map(|s| s.usage));
}

/// End the served attempt's span and the request's (tracing on), with the settled tokens.
fn end_spans(ctx: &mut RequestCtx, status: u16, usage: Option<Usage>) {
    if let Some(span) = ctx.upstream.served_span.take() {
        let upstream_status = ctx
            .upstream
            .attempts
            .iter()
            .rev()
            .find(|a| a.outcome == "ok")
            .map_or(status, |a| a.status);
        let error = ctx.delivered.error.as_ref().map(|e| e.label());
        span.end_served(
            upstream_status,
            usage,
            ctx.delivered.response_model.as_deref(),
            error,
        );
    }
    if let Some(span) = ctx.trace.take() {
        span.finish(ctx, crate::otel::RequestEnd { status, usage });
    }
}
