//! Pipeline stage 4 (request_filter, inspected requests): perform the upstream attempts.
//!
//! Each attempt is a subrequest of this same proxy app (FACTS.md §4): Pingora's normal
//! upstream path and hooks do the proxying, fed from the body held in memory (one `Bytes`,
//! shared by every attempt, never copied), so bodies of any size up to the cap work, unlike
//! Pingora's 64 KiB retry buffer. Failover happens here in the parent, and only before any
//! response byte reached the client. The subrequest API is alpha in Pingora: this module and
//! `relay.rs` are the only ones that touch it.

use super::ctx::{AttemptRecord, AttemptSpec, RequestCtx};
use super::relay;
use crate::config::{Pool, Timeouts};
use crate::error::{SluiceError, TimeoutPhase};
use bytes::Bytes;
use pingora_core::protocols::http::HttpTask;
use pingora_error::{Error, ErrorType};
use pingora_http::ResponseHeader;
use pingora_proxy::subrequest::{BodyMode, Ctx as SubrequestCtx};
use pingora_proxy::Session;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Upstream statuses worth another pool before the first byte reached the client.
const FAILOVER_STATUSES: [u16; 6] = [429, 500, 502, 503, 504, 529];

/// The subrequest's future, polled inline by the parent (not spawned): dropping it drops the
/// upstream connection synchronously, whatever else the worker thread is doing.
type ChildFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A running attempt. Dropping it drops the subrequest, which closes its upstream connection
/// at once (cancellation is money).
pub struct Child {
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

/// Run the route's pools in order until one answers; relay that answer to the client.
///
/// Errors: the last attempt's failure when no pool produced a response (nothing was sent to
/// the client yet, so the caller answers natively).
pub async fn run(session: &mut Session, ctx: &mut RequestCtx) -> Result<(), SluiceError> {
    let (Some(snapshot), Some(route_idx)) = (ctx.snapshot.clone(), ctx.route) else {
        return Err(SluiceError::Internal);
    };
    let Some(route) = snapshot.routes.get(route_idx) else {
        return Err(SluiceError::Internal);
    };
    let body = ctx.body.clone().unwrap_or_default();
    let mut last_err = SluiceError::Internal;
    for (i, pool) in route.pools.iter().enumerate() {
        let is_last = i + 1 == route.pools.len();
        let Some(ep) = pool.pick() else { continue };
        ctx.pool = Some(pool.clone());
        ctx.endpoint = ep;
        let endpoint = pool.endpoints[ep].addr.clone();
        if pool.endpoints[ep].keys.is_empty() {
            last_err = SluiceError::NoUpstreamKey(pool.name.to_string());
            record(ctx, pool, &endpoint, 0, last_err.label());
            continue;
        }
        let mut child = spawn(session, ctx, pool, ep, &body).await?;
        match first_response(session, &mut child).await {
            First::Header(header, end) => {
                let status = header.status.as_u16();
                if !is_last && FAILOVER_STATUSES.contains(&status) {
                    record(ctx, pool, &endpoint, status, "failover");
                    continue; // `child` dropped: subrequest aborted, connection closed
                }
                record(ctx, pool, &endpoint, status, "ok");
                relay::relay(session, ctx, child, header, end).await;
                return Ok(());
            }
            First::Failed(err) => {
                record(ctx, pool, &endpoint, 0, err.label());
                last_err = err;
            }
            First::ClientGone => {
                record(ctx, pool, &endpoint, 0, "client_gone");
                ctx.client_disconnected = true;
                return Ok(());
            }
        }
    }
    Err(last_err)
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
    body: &Bytes,
) -> Result<Child, SluiceError> {
    let spec = AttemptSpec {
        pool: pool.clone(),
        endpoint,
        model: ctx.inspected.model.clone(),
        body_len: body.len(),
        request_id: ctx.request_id.clone(),
    };
    let sub_ctx = SubrequestCtx::builder()
        .body_mode(BodyMode::ExpectBody)
        .user_ctx(Box::new(Arc::new(spec)))
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
        fut: Some(Box::pin(prepared.run())),
        rx: handle.rx,
        _tx: tx,
        proxy_error: handle.subreq_proxy_error,
        endpoint: pool.endpoints[endpoint].addr.clone(),
        timeouts: pool.timeouts,
    })
}

/// Wait for the attempt's response header, bounded by connect + TTFB timeouts, while
/// watching the client.
async fn first_response(session: &mut Session, child: &mut Child) -> First {
    let deadline = tokio::time::Instant::now() + child.timeouts.connect + child.timeouts.ttfb;
    loop {
        let event = tokio::select! {
            task = child.next_task() => Some(task),
            _ = tokio::time::sleep_until(deadline) => None,
            _ = session.as_downstream_mut().read_body_or_idle(true) => return First::ClientGone,
        };
        match event {
            None => {
                return First::Failed(SluiceError::UpstreamTimeout {
                    upstream: child.endpoint.clone(),
                    phase: TimeoutPhase::FirstByte,
                })
            }
            // 1xx (e.g. 100 Continue from the upstream) is not the client's business.
            Some(Some(HttpTask::Header(h, _))) if h.status.is_informational() => continue,
            Some(Some(HttpTask::Header(h, end))) => return First::Header(h, end),
            Some(Some(HttpTask::Failed(e))) => {
                return First::Failed(classify(&e, &child.endpoint, true))
            }
            Some(Some(_)) => continue,
            Some(None) => return First::Failed(child.failure(true)),
        }
    }
}

/// Map a Pingora upstream error to sluice's error.
pub fn classify(e: &Error, endpoint: &str, before_header: bool) -> SluiceError {
    let upstream = endpoint.to_owned();
    match e.etype() {
        ErrorType::ConnectTimedout => SluiceError::UpstreamTimeout {
            upstream,
            phase: TimeoutPhase::Connect,
        },
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => SluiceError::UpstreamTimeout {
            upstream,
            phase: if before_header {
                TimeoutPhase::FirstByte
            } else {
                TimeoutPhase::Idle
            },
        },
        ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::ConnectProxyFailure
        | ErrorType::TLSHandshakeFailure
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::InvalidCert
        | ErrorType::HandshakeError
        | ErrorType::SocketError
        | ErrorType::BindError => SluiceError::UpstreamUnreachable(upstream),
        _ => SluiceError::UpstreamFailed(upstream),
    }
}
