//! Pipeline stage 4 (request_filter, inspected requests): perform the upstream attempts.
//!
//! Each attempt is a subrequest of this same proxy app (pingora-proxy 0.9.1
//! `SubrequestSpawner::create_subrequest`, `subrequest::Ctx`): Pingora's normal
//! upstream path and hooks do the proxying, fed from the body held in memory (one `Bytes`,
//! shared by every attempt, never copied), so bodies of any size up to the cap work, unlike
//! Pingora's 64 KiB retry buffer. Failover happens here in the parent, and only before any
//! response byte reached the client. The subrequest API is alpha in Pingora: this module and
//! `relay.rs` are the only ones that touch it.

use super::classify::classify;
use super::ctx::{AttemptRecord, AttemptSpec, RequestCtx};
use super::relay;
use crate::balance::breaker::Outcome;
use crate::balance::breaker::Pass;
use crate::balance::now_ms;
use crate::config::{Pool, Timeouts};
use crate::error::{SluiceError, TimeoutPhase};
use crate::metrics;
use crate::provider::provider;
use bytes::Bytes;
use pingora_core::protocols::http::HttpTask;
use pingora_error::Error;
use pingora_http::ResponseHeader;
use pingora_proxy::subrequest::{BodyMode, Ctx as SubrequestCtx};
use pingora_proxy::Session;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Counts an attempt in flight on its endpoint (for `least_in_flight`) while it lives.
struct InFlight(Arc<Pool>, usize);

impl InFlight {
    fn new(pool: Arc<Pool>, endpoint: usize) -> Self {
        if let Some(e) = pool.endpoints.get(endpoint) {
            e.state.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        Self(pool, endpoint)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(e) = self.0.endpoints.get(self.1) {
            e.state.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The subrequest's future, polled inline by the parent (not spawned): dropping it drops the
/// upstream connection synchronously, whatever else the worker thread is doing.
type ChildFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A running attempt. Dropping it drops the subrequest, which closes its upstream connection
/// at once (cancellation is money).
pub struct Child {
    spec: Arc<AttemptSpec>,
    _in_flight: InFlight,
    fut: Option<ChildFuture>,
    rx: mpsc::Receiver<HttpTask>,
    /// Request-side channel, kept open: the subrequest treats its closing as a client leaving.
    _tx: mpsc::Sender<HttpTask>,
    proxy_error: oneshot::Receiver<Box<Error>>,
    /// Endpoint `host:port`, for errors.
    pub endpoint: String,
    /// Pool timeouts.
    pub timeouts: Timeouts,
}

impl Child {
    /// Drop the subrequest now, closing its upstream connection.
    pub fn close(&mut self) {
        self.fut = None;
    }

    /// Receive the subrequest's next response task while driving it. `None` once it ended
    /// and every task was read.
    pub async fn next_task(&mut self) -> Option<HttpTask> {
        loop {
            let Some(fut) = self.fut.as_mut() else {
                return self.rx.recv().await;
            };
            tokio::select! {
                biased;
                task = self.rx.recv() => return task,
                () = fut => self.fut = None,
            }
        }
    }

    /// The error the subrequest ended with, if it reported one, mapped to a [`SluiceError`].
    pub fn failure(&mut self, before_header: bool) -> SluiceError {
        match self.proxy_error.try_recv() {
            Ok(e) => classify(&e, &self.endpoint, before_header),
            Err(_) => SluiceError::UpstreamFailed(self.endpoint.clone()),
        }
    }
}

/// How the wait for an attempt's response header ended.
enum First {
    Header(Box<ResponseHeader>, bool),
    Failed(SluiceError),
    ClientGone,
}

/// A response held back because another endpoint may do better; returned as-is if none does.
struct Held {
    child: Child,
    header: Box<ResponseHeader>,
    end: bool,
    pool: Arc<Pool>,
    endpoint: usize,
}

/// Run the route's pools in order (each pool's endpoints in its policy's order) until one
/// answers with a status that is not retryable; relay that answer to the client.
///
/// Skipped without a connection attempt: endpoints whose breaker is open, cooling down after a
/// `retry-after`, or without a usable key. Bounded by the route's `max_attempts` and
/// `deadline`. When every candidate failed, the last upstream answer is relayed as-is if
/// there was one; otherwise the last error (or [`SluiceError::NoUpstreamAvailable`] with the
/// earliest cooldown) is returned for the caller to answer natively.
pub async fn run(session: &mut Session, ctx: &mut RequestCtx) -> Result<(), SluiceError> {
    let (Some(snapshot), Some(route_idx)) = (ctx.snapshot.clone(), ctx.route) else {
        return Err(SluiceError::Internal);
    };
    let Some(route) = snapshot.routes.get(route_idx) else {
        return Err(SluiceError::Internal);
    };
    let rules = &route.failover;
    let deadline = tokio::time::Instant::now() + rules.deadline;
    let body = ctx.body.clone().unwrap_or_default();
    let mut last_err: Option<SluiceError> = None;
    let mut held: Option<Held> = None;
    let mut earliest: Option<u64> = None;
    // Whether every endpoint that could not serve was held back by upstream 429s only.
    let (mut rate_limited, mut other_unavailable) = (false, false);
    let mut attempts = 0u32;
    let mut previous: Option<(Arc<str>, String)> = None;
    // A pool whose URL cannot carry the model (Azure deployment names) is skipped without a
    // connection: not an endpoint failure. Answered when no other pool could serve.
    let mut invalid_model: Option<SluiceError> = None;
    let outcome = 'pools: {
        for pool in &route.pools {
            let model = ctx
                .inspected
                .model
                .as_deref()
                .map(|m| pool.upstream_model(m).to_owned());
            if model
                .as_deref()
                .is_some_and(|m| !provider(pool.provider).accepts_model(m))
            {
                invalid_model = Some(SluiceError::InvalidModel(pool.name.to_string()));
                continue;
            }
            let pool_body = match (&ctx.inspected.model, &model) {
                (Some(asked), Some(renamed)) if asked != renamed => {
                    super::inspect::with_model(&body, renamed)?
                }
                _ => body.clone(),
            };
            for ep_idx in pool.order() {
                let ep = &pool.endpoints[ep_idx];
                // `_pass` holds a half-open breaker's probe slot until this endpoint is done.
                let (mut key, _pass) = match usable(pool, ep_idx, model.as_deref(), &mut earliest) {
                    Ok(k) => k,
                    Err(keys_cooling) => {
                        rate_limited |= keys_cooling;
                        other_unavailable |= !keys_cooling;
                        if ep.keys.is_empty() {
                            last_err = Some(SluiceError::NoUpstreamKey(pool.name.to_string()));
                        }
                        continue;
                    }
                };
                loop {
                    if attempts >= rules.max_attempts || tokio::time::Instant::now() >= deadline {
                        break 'pools None;
                    }
                    attempts += 1;
                    if let Some((from, reason)) = previous.take() {
                        metrics::FAILOVERS
                            .with_label_values(&[
                                &*route.name,
                                &*from,
                                &*pool.name,
                                reason.as_str(),
                            ])
                            .inc();
                    }
                    ctx.pool = Some(pool.clone());
                    ctx.endpoint = ep_idx;
                    let mut child =
                        spawn(session, ctx, pool, ep_idx, key, model.clone(), &pool_body).await?;
                    match first_response(session, &mut child, deadline).await {
                        First::Header(header, end) => {
                            let status = header.status.as_u16();
                            let now = now_ms();
                            ep.state.breaker.record(Outcome::of_status(status));
                            let wait = retry_after_ms(&header);
                            match status {
                                401 | 403 => {
                                    ep.state.keys.disable(key);
                                    metrics::KEY_COOLDOWNS
                                        .with_label_values(&[
                                            &*pool.name,
                                            ep.addr.as_str(),
                                            "unauthorized",
                                        ])
                                        .inc();
                                    if let Ok(next) = ep.state.keys.pick(now, model.as_deref()) {
                                        // Another key of the same endpoint may work.
                                        record(ctx, pool, &ep.addr, status, "key_disabled");
                                        key = next;
                                        continue;
                                    }
                                }
                                429 => {
                                    rate_limited = true;
                                    let until = now + wait.unwrap_or(1_000);
                                    ep.state.keys.cool_down(key, model.as_deref(), until);
                                    earliest = Some(earliest.map_or(until, |e| e.min(until)));
                                    metrics::KEY_COOLDOWNS
                                        .with_label_values(&[
                                            &*pool.name,
                                            ep.addr.as_str(),
                                            "rate_limited",
                                        ])
                                        .inc();
                                }
                                503 | 529 => {
                                    if let Some(w) = wait {
                                        ep.state
                                            .cooldown_until_ms
                                            .fetch_max(now + w, Ordering::AcqRel);
                                        earliest =
                                            Some(earliest.map_or(now + w, |e| e.min(now + w)));
                                    }
                                }
                                _ => {}
                            }
                            if rules.retry_on_status.contains(&status) {
                                record(ctx, pool, &ep.addr, status, "failover");
                                previous = Some((pool.name.clone(), status.to_string()));
                                // Keep this answer: it is returned as-is if nothing does better.
                                held = Some(Held {
                                    child,
                                    header,
                                    end,
                                    pool: pool.clone(),
                                    endpoint: ep_idx,
                                });
                                break;
                            }
                            record(ctx, pool, &ep.addr, status, "ok");
                            drop(held.take());
                            break 'pools Some((child, header, end));
                        }
                        First::Failed(err) => {
                            other_unavailable = true;
                            // Only what the upstream did counts: an attempt sluice could not
                            // even send (a rewrite it refused, an internal error) is neutral.
                            ep.state.breaker.record(Outcome::of_error(&err));
                            record(ctx, pool, &ep.addr, 0, err.label());
                            let retry = match &err {
                                SluiceError::UpstreamTimeout { .. } => rules.retry_on_timeout,
                                _ => rules.retry_on_connect_error,
                            };
                            previous = Some((pool.name.clone(), err.label().to_owned()));
                            last_err = Some(err);
                            if !retry {
                                break 'pools None;
                            }
                            break;
                        }
                        First::ClientGone => {
                            record(ctx, pool, &ep.addr, 0, "client_gone");
                            ctx.client_disconnected = true;
                            metrics::ATTEMPTS
                                .with_label_values(&[&route.name])
                                .observe(f64::from(attempts));
                            return Ok(());
                        }
                    }
                }
            }
        }
        None
    };
    metrics::ATTEMPTS
        .with_label_values(&[&route.name])
        .observe(f64::from(attempts));
    if let Some((child, header, end)) = outcome {
        relay::relay(session, ctx, child, header, end).await;
        return Ok(());
    }
    if let Some(h) = held {
        // Every candidate failed: the last upstream answer goes back as-is.
        ctx.pool = Some(h.pool);
        ctx.endpoint = h.endpoint;
        relay::relay(session, ctx, h.child, h.header, h.end).await;
        return Ok(());
    }
    let retry_after = earliest.map(|t| Duration::from_millis(t.saturating_sub(now_ms())));
    Err(match (last_err, invalid_model) {
        (Some(e), _) => e,
        (None, Some(e)) if !rate_limited && !other_unavailable => e,
        (None, _) => SluiceError::NoUpstreamAvailable {
            retry_after,
            rate_limited: rate_limited && !other_unavailable,
        },
    })
}

/// A usable key of endpoint `idx` for a request for `model` (as the pool's upstream knows it;
/// `None` when the request names none) if the endpoint may be tried now (not cooling down,
/// breaker admitting the call), with the breaker's pass to hold until the attempt's outcome is
/// recorded; records why not otherwise and updates the earliest cooldown. `Err(true)`: its
/// keys are all cooling down after 429s; `Err(false)`: unavailable for another reason.
pub(super) fn usable(
    pool: &Pool,
    idx: usize,
    model: Option<&str>,
    earliest: &mut Option<u64>,
) -> Result<(usize, Pass), bool> {
    let ep = &pool.endpoints[idx];
    let now = now_ms();
    let until = ep.state.cooldown_until_ms.load(Ordering::Acquire);
    if until > now {
        *earliest = Some(earliest.map_or(until, |e| e.min(until)));
        metrics::ENDPOINT_SKIPS
            .with_label_values(&[&*pool.name, ep.addr.as_str(), "cooling_down"])
            .inc();
        return Err(false);
    }
    let pass = match ep.state.breaker.admit() {
        Ok(pass) => pass,
        Err(skip) => {
            metrics::ENDPOINT_SKIPS
                .with_label_values(&[&*pool.name, ep.addr.as_str(), skip.label()])
                .inc();
            return Err(false);
        }
    };
    // Without a usable key the pass (and a probe slot it holds) is dropped unused.
    match ep.state.keys.pick(now, model) {
        Ok(k) => Ok((k, pass)),
        Err(until) => {
            if let Some(u) = until {
                *earliest = Some(earliest.map_or(u, |e| e.min(u)));
            }
            metrics::ENDPOINT_SKIPS
                .with_label_values(&[&*pool.name, ep.addr.as_str(), "no_usable_key"])
                .inc();
            Err(until.is_some())
        }
    }
}

/// The upstream's `retry-after-ms`, else `retry-after` in seconds (HTTP dates are not
/// honoured: sluice then uses its default cooldown).
pub fn retry_after_ms(h: &ResponseHeader) -> Option<u64> {
    let get = |n: &str| {
        h.headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        return (ms.is_finite() && ms >= 0.0).then_some(ms as u64);
    }
    get("retry-after")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| (s * 1000.0) as u64)
}

fn record(
    ctx: &mut RequestCtx,
    pool: &Arc<Pool>,
    endpoint: &str,
    status: u16,
    outcome: &'static str,
) {
    ctx.attempts.push(AttemptRecord {
        pool: pool.name.clone(),
        endpoint: endpoint.to_owned(),
        status,
        outcome,
    });
}

async fn spawn(
    session: &mut Session,
    ctx: &RequestCtx,
    pool: &Arc<Pool>,
    endpoint: usize,
    key: usize,
    model: Option<String>,
    body: &Bytes,
) -> Result<Child, SluiceError> {
    let spec = AttemptSpec {
        pool: pool.clone(),
        endpoint,
        key,
        model,
        body_len: body.len(),
        uri: session.req_header().uri.clone(),
        request_id: ctx.request_id.clone(),
        sent_ms: std::sync::atomic::AtomicU64::new(0),
    };
    let spec = Arc::new(spec);
    let sub_ctx = SubrequestCtx::builder()
        .body_mode(BodyMode::ExpectBody)
        .user_ctx(Box::new(spec.clone()))
        .build();
    let Some(spawner) = session.subrequest_spawner.as_ref() else {
        return Err(SluiceError::Internal);
    };
    let (prepared, handle) = spawner.create_subrequest(session.as_downstream(), sub_ctx);
    let tx = handle.tx;
    // The channel has room for a few tasks: the whole body goes in as one `Bytes` (a refcount
    // bump, not a copy) and the subrequest reads it when it wants it.
    if tx
        .send(HttpTask::Body(Some(body.clone()), true))
        .await
        .is_err()
    {
        return Err(SluiceError::Internal);
    }
    Ok(Child {
        spec,
        _in_flight: InFlight::new(pool.clone(), endpoint),
        fut: Some(Box::pin(prepared.run())),
        rx: handle.rx,
        _tx: tx,
        proxy_error: handle.subreq_proxy_error,
        endpoint: pool.endpoints[endpoint].addr.clone(),
        timeouts: pool.timeouts,
    })
}

/// Wait for the attempt's response header, bounded by connect + TTFB timeouts and the route's
/// failover deadline, while watching the client.
async fn first_response(
    session: &mut Session,
    child: &mut Child,
    route_deadline: tokio::time::Instant,
) -> First {
    let started = tokio::time::Instant::now();
    let started_ms = now_ms();
    // Until the request is sent, the bound is connect + TTFB; once sent, TTFB from then.
    // Re-evaluated every RECHECK while waiting.
    const RECHECK: Duration = Duration::from_millis(20);
    loop {
        let sent = child.spec.sent_ms.load(Ordering::Acquire);
        let deadline = if sent == 0 {
            started + child.timeouts.connect + child.timeouts.ttfb
        } else {
            started + Duration::from_millis(sent.saturating_sub(started_ms)) + child.timeouts.ttfb
        }
        .min(route_deadline);
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return First::Failed(SluiceError::UpstreamTimeout {
                upstream: child.endpoint.clone(),
                phase: TimeoutPhase::FirstByte,
            });
        }
        // Both other branches are cancel-safe: the subrequest future lives in `child` and is
        // only borrowed by `next_task`; the idle probe consumes nothing unless it completes.
        let task = tokio::select! {
            task = child.next_task() => task,
            _ = tokio::time::sleep_until(deadline.min(now + RECHECK)) => continue,
            _ = session.as_downstream_mut().read_body_or_idle(true) => return First::ClientGone,
        };
        match task {
            // 1xx (e.g. 100 Continue from the upstream) is not the client's business.
            Some(HttpTask::Header(h, _)) if h.status.is_informational() => continue,
            Some(HttpTask::Header(h, end)) => return First::Header(h, end),
            Some(HttpTask::Failed(e)) => return First::Failed(classify(&e, &child.endpoint, true)),
            Some(_) => continue,
            None => return First::Failed(child.failure(true)),
        }
    }
}
