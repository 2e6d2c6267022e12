//! The proxy: Pingora's `ProxyHttp` implemented as a thin list of delegations to one module
//! per pipeline stage, in the order a request meets them:
//!
//! 0. `path`      (request_filter) path normalized (dot-segments, slashes) or refused
//! 1. `identify`  (request_filter) tenant from virtual key / header / default
//! 2. `inspect`   (request_filter) read + parse + rewrite the JSON body of API calls
//!    2b. `reuse` / 2c. `cache` (request_filter) the request's key; a cache hit is answered
//!    here, before token/budget admission, without any upstream attempt
//! 3. `limit`     (request_filter) admission under the tenant's limits
//!    (`coalesce`: on a `coalesce: true` route, stages 3 to 5 shared by identical requests
//!    in flight: one upstream call, every client a copy of it)
//! 4. `failover`  (request_filter) [`attempt::Attempt`]s over the route's candidates, until one
//!    answers; failover only before the first response byte
//!    4b. `commit` (request_filter) a streamed answer held until its first content event:
//!    failover goes on until then
//! 5. `relay`     (request_filter) the served attempt's response to the client chunk by chunk,
//!    usage accounting, cancellation (dropping the attempt closes the upstream connection)
//!    (`resume`: a stream cut after content continued on the next candidate, spliced in)
//! 6. `account`   (logging) tokens settled, metrics, one log line
//!
//! Inspected requests are answered entirely in `request_filter`: attempts are values on
//! pingora-core's HTTP connector, not sessions of this app, so no hook runs twice. Requests
//! sluice does not inspect (passthrough) take Pingora's own proxy path, where `upstream`
//! (upstream_peer, upstream_request_filter) picks the endpoint and injects the key.

pub mod account;
pub mod attempt;
mod cache;
pub mod classify;
pub mod coalesce;
mod commit;
pub mod ctx;
pub mod downstream;
mod failover;
pub mod identify;
pub mod inspect;
pub mod limit;
pub mod path;
mod relay;
mod request;
mod respond;
mod resume;
pub mod reuse;
mod upstream;

use crate::balance::breaker::Outcome;
use crate::config::Snapshot;
use crate::error;
use crate::limits::Limiter;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use ctx::RequestCtx;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Client requests in flight in this process.
static ACTIVE: AtomicI64 = AtomicI64::new(0);

/// Client requests in flight now (drain on shutdown).
pub fn active_requests() -> i64 {
    ACTIVE.load(Ordering::Acquire)
}

/// Counts one client request in flight for as long as its context lives.
pub struct ActiveGuard(());

impl ActiveGuard {
    fn new() -> Self {
        ACTIVE.fetch_add(1, Ordering::AcqRel);
        Self(())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The sluice proxy app. Holds the current config snapshot; each request pins the snapshot it
/// started with.
pub struct Sluice {
    config: Arc<ArcSwap<Snapshot>>,
    limiter: Arc<Limiter>,
    /// The response cache's store, sized by the first snapshot's `cache` section.
    store: Arc<crate::cache::Store>,
}

impl Sluice {
    /// A proxy serving `config` (swappable for hot reload) under `limiter`, with a response
    /// store built from `config`'s current `cache` section (kept across reloads).
    pub fn new(config: Arc<ArcSwap<Snapshot>>, limiter: Arc<Limiter>) -> Self {
        let store = Arc::new(crate::cache::Store::new(&config.load().cache));
        Self {
            config,
            limiter,
            store,
        }
    }

    /// The response cache's store.
    pub fn store(&self) -> &Arc<crate::cache::Store> {
        &self.store
    }
}

#[async_trait]
impl ProxyHttp for Sluice {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    /// Stages 0 to 5 for inspected requests (or hand over to Pingora for passthrough).
    /// Returns true when the response was already written.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.active = Some(ActiveGuard::new());
        ctx.trace = crate::otel::RequestSpan::start(session.req_header(), ctx.start);
        let handled = request::handle(
            &self.limiter,
            &self.store,
            self.config.load_full(),
            session,
            ctx,
        )
        .await;
        let started = session.response_written().is_some();
        match handled {
            Ok(request::Flow::Passthrough) => return Ok(false),
            Ok(request::Flow::Done) if ctx.delivered.client_disconnected => {
                // Pingora takes a client for gone on a half-close or a pipelined byte too,
                // while it may still read: its connection is never reused, and a response it
                // did not get whole is never ended with the end of its framing.
                session.set_keepalive(None);
                ctx.delivered.cut_short |= started;
            }
            Ok(request::Flow::Done) => {}
            Err(e) if started => {
                // After the header no native answer can follow: break the transfer off.
                crate::metrics::ERRORS.with_label_values(&[e.label()]).inc();
                ctx.delivered.error = Some(e);
                ctx.delivered.cut_short = true;
            }
            Err(e) => {
                respond::send_error(session, ctx, e).await;
                return Ok(true);
            }
        }
        if ctx.delivered.cut_short {
            // Pingora ends a response it is told was sent (`Ok(true)`) with the end of its
            // framing; an error instead drops the connection as it is (`fail_to_proxy` then
            // writes nothing).
            return Err(Error::explain(
                pingora_error::ErrorType::WriteError,
                "response cut short: transfer broken off",
            ));
        }
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        upstream::peer(ctx).await
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream::rewrite_request(upstream_request, ctx)
    }

    /// Passthrough responses get the request id header (inspected ones get it from the relay).
    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.passthrough.is_some() {
            upstream_response.insert_header("x-sluice-request-id", ctx.request_id.as_str())?;
            if let Some(outcome) = ctx.cache {
                upstream_response.insert_header(cache::HEADER, outcome.as_str())?;
            }
            respond::rate_limit_headers(upstream_response, ctx)?;
        }
        Ok(())
    }

    /// Passthrough: a native error, always with `connection: close` (the request body may be
    /// half-read); a client that left gets none, one whose body framing is invalid gets a 400.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        if ctx.delivered.cut_short {
            // The response went out short (`request_filter`): nothing more is written.
            return FailToProxy {
                error_code: ctx.delivered.status,
                can_reuse_downstream: false,
            };
        }
        let endpoint = ctx
            .upstream
            .endpoint_addr()
            .unwrap_or("upstream")
            .to_owned();
        let err = classify::classify(e, &endpoint, session.response_written().is_none());
        if matches!(err, error::SluiceError::ClientGone) {
            // The client is gone: nobody to answer.
            ctx.delivered.client_disconnected = true;
            ctx.delivered.error = Some(err);
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let code = err.status();
        // The client's request body may be half-read: say `connection: close` on the error.
        session.set_keepalive(None);
        respond::send_error(session, ctx, err).await;
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// A response broken off on purpose (`Delivered::cut_short`) is not a proxy error: its
    /// access line says what happened.
    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, _error: &Error) -> bool {
        ctx.delivered.cut_short
    }

    /// Passthrough: passive health from the upstream's own outcome (its status, or an
    /// upstream-caused error); a client that left or a request sluice refused is neutral.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = match session.response_written() {
            Some(h) if ctx.delivered.status == 0 => h.status.as_u16(),
            _ => ctx.delivered.status,
        };
        if ctx.delivered.status == 0 {
            ctx.delivered.status = status;
        }
        if let Some(passthrough) = ctx.passthrough.as_mut() {
            // Passive health from streamed-through traffic too.
            if let Some(ep) = ctx
                .upstream
                .last
                .as_ref()
                .and_then(|(p, i)| p.endpoints.get(*i))
            {
                let outcome = match e {
                    Some(e) => Outcome::of_error(&classify::classify(e, &ep.addr, false)),
                    None => Outcome::of_status(status),
                };
                ep.state.breaker.record(outcome);
            }
            // The outcome is in: free a half-open probe slot now, not after the estimates.
            passthrough.breaker_pass = None;
        }
        if let Some(admission) = ctx.admission.as_mut() {
            // The request is over for its tenant's concurrency whatever accounting remains.
            admission.release_permits();
        }
        if account::needs_estimates(ctx) {
            // Tokenizing (and, the first time, building the tables) must not hold the client's
            // connection: settle, export and log from a task of its own.
            let mut owned = std::mem::take(ctx);
            tokio::spawn(async move {
                let est = account::estimates(&owned).await;
                account::finish(&mut owned, status, est);
            });
        } else {
            account::finish(ctx, status, account::Estimates::default());
        }
    }
}
