//! Pipeline stages 3 to 5 on a route with `coalesce: true` (inspected requests with a
//! [`Key`]): request coalescing. Identical requests in flight at the same time share one
//! upstream call (a [`Flight`]).
//!
//! - Identity: the request's cache key ([`crate::cache::key`]: canonical body, route, scope
//!   (the tenant by default), version headers, streamed or not) plus whether the client asked
//!   for the usage chunk itself (sluice hides the one it asked for on the client's behalf, so
//!   the two would see different streams).
//! - The first request with that identity is the leader: it is admitted as usual and runs
//!   failover and the relay (stages 4 and 5) through a [`Downstream`] ([`Publisher`]) that
//!   writes to its own client as usual and also publishes into the flight, for the followers
//!   (a leader without followers costs one buffered `Bytes` handle per chunk, no copy, no task
//!   of its own; the upstream's response header is moved into the flight, and each follower
//!   builds its own header from it as the leader's relay did, with its own cache outcome,
//!   request id and `x-ratelimit-*` values). Nothing is published before commit on content,
//!   so followers see only the candidate that delivered; after content, an upstream failure
//!   ends every client's stream with the same native error event (it is in the flight's
//!   chunks); a failure before any header reaches every client as the same native error.
//! - A follower joins while the flight takes followers (it has kept every chunk, up to
//!   `cache.max_flight_bytes`): it is admitted under its tenant's request limits only (no
//!   token or budget reservation), gets the chunks already sent, then follows live.
//! - A follower that lags more than `cache.max_flight_bytes` behind holds the call back for at
//!   most `cache.max_flight_lag_ms`; then it is cut (its stream ends with the native
//!   `fell_behind` error event) and the call goes on for the others. The leader's own client,
//!   written to inline, is cut likewise when, with followers there, one write to it stays
//!   blocked that long (it is closed mid-response: its stream position is unknown).
//! - The upstream call is cancelled (the attempt dropped, closing its connection) only when
//!   every client (the leader's own included) has left.
//! - Charging: the leader's tenant pays the upstream tokens and budget, and its log line has
//!   the call's full usage even when its own client left early. A follower settles no tokens:
//!   its log line says `coalesced=<leader request id>` with 0 tokens, and it is counted in
//!   `sluice_coalesced_requests_total{route}`.

mod flight;

use super::ctx::{Delivered, RequestCtx};
use super::downstream::Downstream;
use super::{failover, limit, relay};
use crate::cache::key::{DigestHash, Key};
use crate::cache::record::Recorder;
use crate::config::Snapshot;
use crate::error::SluiceError;
use crate::limits::Limiter;
use crate::metrics;
use bytes::Bytes;
pub use flight::{Bounds, End, EveryoneLeft, Flight, Next, Retained, Subscription, RETAINED};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, Weak};

/// What makes two requests share a flight: their [`Key`], and whether sluice asked for the
/// usage chunk on the client's behalf (then hidden from it).
pub type Ident = (Key, bool);

/// The flights in progress that may take followers, by identity. Outside the config
/// snapshot: a reload does not split a flight.
/// Hashed by the key's own first bytes ([`DigestHash`]).
static FLIGHTS: LazyLock<Mutex<Registry>> = LazyLock::new(Mutex::default);

type Registry = HashMap<Ident, Weak<Flight>, DigestHash>;

fn flights() -> MutexGuard<'static, Registry> {
    FLIGHTS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Remove `flight`'s registry entry (when it is still the one registered under `ident`).
fn forget(ident: &Ident, flight: *const Flight) {
    let mut map = flights();
    if map
        .get(ident)
        .is_some_and(|w| std::ptr::eq(w.as_ptr(), flight))
    {
        map.remove(ident);
    }
}

/// Whether a flight with `ident` takes followers now.
fn joinable(ident: &Ident) -> bool {
    let found = flights().get(ident).and_then(Weak::upgrade);
    found.is_some_and(|f| f.joinable())
}

/// A request's part in a flight.
pub enum Role {
    /// It started the flight: it makes the upstream call.
    Leader(Arc<Flight>),
    /// It shares the call of the flight's leader.
    Follower(Subscription),
}

/// Join the flight in progress for `ident`, or start one led by request `request_id` within
/// `bounds`.
pub fn join_or_lead(ident: Ident, request_id: &str, bounds: Bounds) -> Role {
    let mut map = flights();
    let existing = map.get(&ident).and_then(Weak::upgrade);
    let joined = existing.as_ref().and_then(Flight::join);
    let role = match joined {
        Some(sub) => Role::Follower(sub),
        None => {
            let flight = Flight::start(ident, request_id, bounds);
            map.insert(ident, Arc::downgrade(&flight));
            Role::Leader(flight)
        }
    };
    // A flight whose last holder is `existing` runs its `Drop` (which takes the registry
    // lock) after the lock is released.
    drop(map);
    drop(existing);
    role
}

/// Serve an inspected request on a `coalesce: true` route: admission, then either the
/// upstream call for every client that shares it (leader) or a copy of another request's
/// call (follower). Errors: a refused admission, or the leader's error before any response
/// header (the caller answers it natively).
pub async fn serve(
    limiter: &Arc<Limiter>,
    snapshot: &Snapshot,
    session: &mut Session,
    ctx: &mut RequestCtx,
    key: Key,
    recorder: Option<Recorder>,
) -> Result<(), SluiceError> {
    let ident = (key, ctx.fields().injected_include_usage);
    // A request that will most likely follow is admitted under request limits only. The
    // flight may close between this look and the join: such a request then leads on that
    // admission (its tokens settle at the end all the same, unreserved).
    if joinable(&ident) {
        limit::admit_requests(limiter, snapshot, ctx).await?;
    } else {
        limit::admit(limiter, snapshot, ctx).await?;
    }
    let c = &snapshot.cache;
    let bounds = Bounds {
        max_bytes: c.max_flight_bytes,
        max_lag: c.max_flight_lag,
        max_total: c.max_flights_total_bytes,
        total: &RETAINED,
    };
    match join_or_lead(ident, &ctx.request_id, bounds) {
        Role::Leader(flight) => lead(session, ctx, flight, recorder).await,
        // A follower's copy is a future of its own, boxed: the leader's path, which nearly
        // every request takes, does not carry the follower's code and state in its poll
        // function (fewer instruction-cache lines per request; a follower pays one allocation).
        Role::Follower(sub) => {
            let copy: std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send + '_>> =
                Box::pin(follow(session, ctx, sub, bounds.max_bytes));
            copy.await
        }
    }
}

/// The leader: failover and the relay write to its own client and publish into the flight.
async fn lead(
    session: &mut Session,
    ctx: &mut RequestCtx,
    flight: Arc<Flight>,
    recorder: Option<Recorder>,
) -> Result<(), SluiceError> {
    let mut publisher = Publisher {
        flight,
        session,
        own_left: false,
        own_cut: false,
        upstream: None,
    };
    let produced = produce(&mut publisher, ctx, recorder).await;
    let (own_left, own_cut) = (publisher.own_left, publisher.own_cut);
    let max_bytes = publisher.flight.max_bytes();
    drop(publisher);
    produced?;
    if own_cut {
        // Sluice closed it, it did not leave: its log line says so (`error=fell_behind`, not
        // counted as a client disconnect), as a cut follower's does; the call's own outcome
        // (`completed`, usage) stays the leader's. (`client_disconnected` is set only when
        // every follower left too: the relay saw the call abandoned.)
        metrics::COALESCE_CUT
            .with_label_values(&[ctx.route_name()])
            .inc();
        ctx.delivered
            .error
            .get_or_insert(SluiceError::FellBehind(max_bytes));
        // Its last write was dropped part-way: no end of framing may follow it.
        ctx.delivered.cut_short = true;
    } else if own_left && !ctx.delivered.client_disconnected {
        // The shared call went on for the followers; its usage stays the leader's. (When
        // every client left, the relay counted the disconnect already.)
        metrics::CLIENT_DISCONNECTS
            .with_label_values(&[ctx.route_name()])
            .inc();
        ctx.delivered.client_disconnected = true;
    }
    Ok(())
}

/// Failover and the relay, to the leader's client and into the flight; the flight's end is
/// published whatever happens.
async fn produce(
    publisher: &mut Publisher<'_>,
    ctx: &mut RequestCtx,
    recorder: Option<Recorder>,
) -> Result<(), SluiceError> {
    match failover::run(publisher, ctx).await {
        Ok(failover::Ended::Served(served)) => {
            let delivered = relay::relay(publisher, ctx, served, recorder).await;
            publisher.flight.finish(End::Answered {
                completed: delivered.completed,
                error: delivered.error.clone(),
                close: false,
            });
            ctx.delivered = delivered;
            Ok(())
        }
        Ok(failover::Ended::ClientGone) => {
            publisher.flight.finish(End::Abandoned);
            ctx.delivered.client_disconnected = true;
            Ok(())
        }
        Err(e) => {
            publisher.flight.finish(End::Failed(e.clone()));
            Err(e)
        }
    }
}

/// A follower: a copy of the leader's call, charged no tokens.
async fn follow(
    session: &mut Session,
    ctx: &mut RequestCtx,
    sub: Subscription,
    max_bytes: usize,
) -> Result<(), SluiceError> {
    metrics::COALESCED
        .with_label_values(&[ctx.route_name()])
        .inc();
    let leader = sub.flight().leader.clone();
    let copied = copy(sub, session, ctx, max_bytes).await;
    ctx.delivered.coalesced = Some(leader.clone());
    let mut delivered = copied?;
    if delivered.client_disconnected {
        metrics::CLIENT_DISCONNECTS
            .with_label_values(&[ctx.route_name()])
            .inc();
    }
    delivered.coalesced = Some(leader);
    ctx.delivered = delivered;
    Ok(())
}

/// Copy the flight to one client: the header (built from the upstream's, as the leader's
/// was, with the client's own cache outcome, request id and `x-ratelimit-*` values, so one
/// tenant's limits never reach another tenant's client), the chunks from its cursor, then
/// live, until the flight's end. Leaving (the client gone) drops the
/// subscription at once. A follower cut for lagging (more than `max_bytes` behind: see
/// [`flight`]) ends its stream with the API's native error event (the flight's chunks are
/// whole events), or its plain body short, and closes. Errors: the leader's error before any
/// header (not written: the caller answers it natively for this client).
async fn copy(
    sub: Subscription,
    session: &mut Session,
    ctx: &RequestCtx,
    max_bytes: usize,
) -> Result<Delivered, SluiceError> {
    let start = ctx.start;
    let mut d = Delivered::default();
    let header = tokio::select! {
        h = sub.header() => h,
        () = Downstream::gone(session) => {
            d.client_disconnected = true;
            return Ok(d);
        }
    };
    let (header, sse) = match header {
        Ok(up) => {
            let sse = relay::is_sse(&up);
            (
                relay::client_header(relay::downstream_parts(&up, sse), ctx),
                sse,
            )
        }
        Err(End::Failed(e)) => return Err(e),
        // No header and no error: the producer stopped (a bug): nothing to relay.
        Err(_) => return Err(SluiceError::Internal),
    };
    d.status = header.status.as_u16();
    if Downstream::write_header(session, header).await.is_err() {
        d.client_disconnected = true;
        return Ok(d);
    }
    let mut chunks = Vec::new();
    // A Responses stream's last chunk written, to number a cut's error event after it.
    let responses = ctx.caller.api == Some(crate::usage::ApiKind::OpenAiResponses);
    let mut last_written: Option<Bytes> = None;
    // Counted and logged once, when the follower is cut: while a write to it is blocked (it
    // stopped reading) if that is when, not only once it reads again, which may never be.
    let mut cut = false;
    let count_cut = |cut: &mut bool, d: &mut Delivered| {
        if !*cut {
            *cut = true;
            metrics::COALESCE_CUT
                .with_label_values(&[ctx.route_name()])
                .inc();
            d.error = Some(SluiceError::FellBehind(max_bytes));
        }
    };
    loop {
        let next = tokio::select! {
            biased;
            n = sub.next(&mut chunks) => Some(n),
            () = Downstream::gone(session) => None,
        };
        match next {
            Some(Next::Chunks) => {
                for chunk in chunks.drain(..) {
                    if d.ttft.is_none() {
                        d.ttft = Some(start.elapsed());
                    }
                    if responses {
                        last_written = Some(chunk.clone());
                    }
                    let written = {
                        let write = Downstream::write_body(session, chunk, false);
                        tokio::pin!(write);
                        // The cut is only looked at while the write is pending (`biased`).
                        tokio::select! {
                            biased;
                            w = &mut write => w,
                            () = sub.cut() => {
                                count_cut(&mut cut, &mut d);
                                // Its client may still read: the write goes on, bounded by
                                // `server.client_write_timeout_ms`; the error event follows.
                                write.await
                            }
                        }
                    };
                    if written.is_err() {
                        // Sluice cut it first: its line says `fell_behind`, not a disconnect.
                        d.client_disconnected = d.error.is_none();
                        session.set_keepalive(None);
                        return Ok(d);
                    }
                    if cut {
                        // The rest of its batch is dropped: the error event comes next, on
                        // the event boundary this whole chunk ended on.
                        break;
                    }
                }
            }
            Some(Next::BodyEnd) => break,
            Some(Next::Cut) => {
                drop(sub);
                count_cut(&mut cut, &mut d);
                let err = SluiceError::FellBehind(max_bytes);
                end_short(session, ctx, sse, &err, last_written.as_deref(), &mut d).await;
                return Ok(d);
            }
            None => {
                d.client_disconnected = true;
                session.set_keepalive(None);
                return Ok(d);
            }
        }
    }
    let end = sub.end().await;
    drop(sub);
    match end {
        End::Answered {
            completed,
            error,
            close,
        } => {
            d.completed = completed;
            d.error = error;
            if close {
                session.set_keepalive(None);
                // A plain body that did not reach its end went out short (a stream's end,
                // its error event included, came as the leader's chunks).
                d.cut_short = !sse && !completed;
            } else if Downstream::write_body(session, Bytes::new(), true)
                .await
                .is_err()
                && !completed
            {
                d.client_disconnected = true;
            }
        }
        // The producer failed or stopped after the header (not expected: failover ends
        // before it, the relay answers): the client's response ends short, natively.
        End::Failed(e) => {
            end_short(session, ctx, sse, &e, last_written.as_deref(), &mut d).await;
            d.error = Some(e);
        }
        End::Abandoned => {
            let e = SluiceError::Internal;
            end_short(session, ctx, sse, &e, last_written.as_deref(), &mut d).await;
            d.error = Some(e);
        }
    }
    Ok(d)
}

/// End a follower's response short for `err`: a stream with the API's native error event
/// (written at this client's own pace, bounded by the write timeout; a Responses event
/// numbered after `last`, the last chunk it got), a plain body by breaking the transfer off
/// ([`Delivered::cut_short`]); the connection is closed after it.
async fn end_short(
    session: &mut Session,
    ctx: &RequestCtx,
    sse: bool,
    err: &SluiceError,
    last: Option<&[u8]>,
    d: &mut Delivered,
) {
    if sse {
        let seq = last
            .and_then(crate::usage::last_sequence_number)
            .map_or(0, |n| n.saturating_add(1));
        let event = crate::provider::stream_error_event(ctx.caller.api, ctx.caller.style, err, seq);
        let _ = Downstream::write_body(session, event, false).await;
    } else {
        d.cut_short = true;
    }
    session.set_keepalive(None);
}

/// The client side failover and the relay write to on a leader's behalf: its own client
/// (while it is there) and the flight. A write fails only when every client has left;
/// `gone` resolves then.
pub struct Publisher<'a> {
    flight: Arc<Flight>,
    /// The leader's own client.
    session: &'a mut Session,
    /// It left (or a write to it failed): no more writes to it.
    own_left: bool,
    /// It was cut for holding a shared call back longer than the lag bound.
    own_cut: bool,
    /// The served attempt's header, published to the flight with the leader's own header:
    /// each follower builds its header from it (moved, not copied: a leader that no
    /// follower joins pays nothing for it).
    upstream: Option<Box<ResponseHeader>>,
}

impl Publisher<'_> {
    /// The leader's own client is gone: only followers, if any, are served from now on.
    fn own_client_left(&mut self) {
        if !self.own_left {
            self.own_left = true;
            self.session.set_keepalive(None);
            self.flight.leader_left();
        }
    }
}

impl Drop for Publisher<'_> {
    fn drop(&mut self) {
        // However the producer stopped, no follower waits for an end that never comes.
        self.flight.finish(End::Abandoned);
    }
}

fn everyone_left() -> Box<pingora_error::Error> {
    pingora_error::Error::explain(
        pingora_error::ErrorType::ConnectionClosed,
        "every client of the coalesced call left",
    )
}

impl Downstream for Publisher<'_> {
    fn req_header(&self) -> &RequestHeader {
        Downstream::req_header(&*self.session)
    }

    async fn write_header(&mut self, header: Box<ResponseHeader>) -> pingora_error::Result<()> {
        if let Some(up) = self.upstream.take() {
            self.flight
                .publish_header(up)
                .map_err(|_| everyone_left())?;
        }
        if !self.own_left
            && Downstream::write_header(&mut *self.session, header)
                .await
                .is_err()
        {
            self.own_client_left();
        }
        Ok(())
    }

    async fn write_body(&mut self, data: Bytes, end: bool) -> pingora_error::Result<()> {
        let shared = self
            .flight
            .publish_body(data.clone(), end)
            .await
            .map_err(|_| everyone_left())?;
        if self.own_left {
            return Ok(());
        }
        let written = {
            let flight = &self.flight;
            let write = Downstream::write_body(&mut *self.session, data, end);
            tokio::pin!(write);
            match futures_util::poll!(write.as_mut()) {
                // The common case: no timer at all.
                std::task::Poll::Ready(result) => result.is_ok(),
                // With followers there, the leader's own client holds the call back no longer
                // than a follower may: a write still blocked after the lag bound (its socket
                // buffers full: it stopped reading) cuts it. Followers are looked for at each
                // lag bound, not only when the chunk was published: one may join while the
                // write is blocked, and all may leave (then it holds back only its own call,
                // as on an unshared route, bounded by `server.client_write_timeout_ms`). A
                // cut write is dropped, as Pingora drops one at its own write timeout, and
                // its connection is closed.
                std::task::Poll::Pending if shared && flight.max_lag().is_zero() => {
                    self.own_cut = true;
                    false
                }
                std::task::Poll::Pending => {
                    // A lag bound of 0 (cut at once) looks every millisecond, no faster.
                    let period = flight.max_lag().max(std::time::Duration::from_millis(1));
                    loop {
                        match tokio::time::timeout(period, write.as_mut()).await {
                            Ok(result) => break result.is_ok(),
                            Err(_) if flight.followed() => {
                                self.own_cut = true;
                                break false;
                            }
                            Err(_) => {}
                        }
                    }
                }
            }
        };
        if !written {
            self.own_client_left();
            if self.flight.all_left() {
                return Err(everyone_left());
            }
        }
        Ok(())
    }

    async fn gone(&mut self) {
        if !self.own_left {
            // Cancel-safe: nothing is recorded until the client is seen gone.
            Downstream::gone(&mut *self.session).await;
            self.own_client_left();
        }
        self.flight.all_gone().await;
    }

    fn close_after(&mut self) {
        self.flight.close_after();
        self.session.set_keepalive(None);
    }

    fn keep_upstream_header(&mut self, header: Box<ResponseHeader>) {
        self.upstream = Some(header);
    }
}
