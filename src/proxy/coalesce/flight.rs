//! One coalesced upstream call (a flight): the response of the leader's attempt (the
//! upstream's header, from which each follower builds its own; the client-visible body chunks;
//! how it ended) as it is produced, read by every follower from its own cursor. The leader's
//! own client is written to inline by the producer (no copy, no task of its own); the flight
//! only records whether it is still there.
//!
//! Memory: while the flight takes new followers it keeps every chunk (a late joiner replays
//! them from the first), up to `max_bytes`; past it the flight takes no new followers and
//! drops the chunks every remaining client has read. A follower that lags more than
//! `max_bytes` behind holds the producer back (the upstream read waits) for at most `max_lag`;
//! then it is cut (it reads [`Next::Cut`] and ends its response) and the call goes on for the
//! others, so one client that stops reading never stalls the rest for longer than that. The
//! buffer never grows past `max_bytes` plus one chunk; a follower holds at most
//! [`HANDOFF_BYTES`] (or one chunk) of it outside the flight while it writes them. (A broadcast
//! channel's lagging receiver is dropped the same way: `tokio::sync::broadcast`'s
//! `RecvError::Lagged`.)
//!
//! Every flight of the process also counts what it retains in one [`Retained`]
//! ([`RETAINED`]): once that total is over its bound (`cache.max_flights_total_bytes`), a
//! flight that receives more stops taking followers and drops what its followers have read,
//! as past its own `max_bytes`. So what many flights keep for late joiners is bounded
//! together; what followers still have to read stays bounded per flight by `max_bytes`.

use crate::error::SluiceError;
use bytes::Bytes;
use pingora_http::ResponseHeader;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;

/// Most bytes a follower is handed by one [`Subscription::next`] (one chunk when a chunk is
/// larger).
const HANDOFF_BYTES: usize = 16 * 1024;

/// The bytes a set of flights retains together, bytes (exact: every flight adds what it
/// keeps and takes back what it drops, and all it still holds when it ends).
#[derive(Debug, Default)]
pub struct Retained(AtomicUsize);

impl Retained {
    /// Nothing retained.
    pub const fn new() -> Self {
        Self(AtomicUsize::new(0))
    }

    /// Bytes retained now.
    pub fn bytes(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    /// Count `after - before` (a flight's own retained bytes before and after a change).
    fn moved(&self, before: usize, after: usize) {
        if after > before {
            self.0.fetch_add(after - before, Ordering::Relaxed);
        } else if before > after {
            self.0.fetch_sub(before - after, Ordering::Relaxed);
        }
    }
}

/// What every flight of this process retains (`sluice_coalesce_retained_bytes`).
pub static RETAINED: Retained = Retained::new();

/// A flight's bounds: its own, and the one it shares with the other flights of `total`.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Most bytes it retains (`cache.max_flight_bytes`).
    pub max_bytes: usize,
    /// Longest it waits for a follower lagging past `max_bytes` (`cache.max_flight_lag_ms`).
    pub max_lag: Duration,
    /// Most bytes `total`'s flights retain together for late joiners
    /// (`cache.max_flights_total_bytes`).
    pub max_total: usize,
    /// What it and the other flights retain ([`RETAINED`] outside tests).
    pub total: &'static Retained,
}

/// How a flight ended.
#[derive(Debug, Clone)]
pub enum End {
    /// The response went out (whole, or ended by the relay with an error event or cut short).
    Answered {
        /// The response reached its normal end (the leader's relay says so).
        completed: bool,
        /// The error the response ended with, if any.
        error: Option<SluiceError>,
        /// The relay asked to close the client connection after it (an abnormal end).
        close: bool,
    },
    /// The leader's call failed before any response header: every client gets this error
    /// in its native shape.
    Failed(SluiceError),
    /// The producer stopped without an answer (every client had left).
    Abandoned,
}

/// A publish failed: every client of the flight has left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EveryoneLeft;

/// What a subscriber reads next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Chunks from its cursor on were appended to the caller's buffer, in order.
    Chunks,
    /// The body is over and the subscriber has read all of it.
    BodyEnd,
    /// The subscriber lagged past the flight's byte bound for longer than its lag bound and
    /// was cut: the rest of the response is not kept for it.
    Cut,
}

/// A follower's place in the flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cursor {
    /// The slot is free (its follower left).
    Free,
    /// The next chunk number it reads.
    At(usize),
    /// It was cut for lagging (no longer counted among the subscribers); it has not left yet.
    Cut,
}

struct State {
    /// Moved in from the leader's relay (no copy for a flight no follower joins); each
    /// follower takes a copy ([`Subscription::header`]).
    header: Option<Box<ResponseHeader>>,
    /// Retained chunks; `chunks[0]` is chunk number `first`.
    chunks: VecDeque<Bytes>,
    first: usize,
    /// Bytes in `chunks`.
    retained: usize,
    /// Each follower's cursor.
    cursors: Vec<Cursor>,
    /// Slots of `cursors` freed by followers that left, reused by the next ones.
    free: Vec<usize>,
    subscribers: usize,
    /// The leader's own client is still there.
    leader_here: bool,
    /// New followers may join (every chunk is still retained).
    joinable: bool,
    /// The producer wrote the last body bytes.
    body_end: bool,
    /// The relay asked to close client connections after the response.
    close: bool,
    end: Option<End>,
}

impl State {
    /// Nobody is left to serve: the leader's client and every follower left.
    fn everyone_left(&self) -> bool {
        !self.leader_here && self.subscribers == 0
    }

    fn published(&self) -> usize {
        self.first + self.chunks.len()
    }

    /// Drop the chunks every subscriber has read (only once no follower can join).
    fn trim(&mut self) {
        if self.joinable {
            return;
        }
        let min = self
            .cursors
            .iter()
            .filter_map(|c| match c {
                Cursor::At(n) => Some(*n),
                Cursor::Free | Cursor::Cut => None,
            })
            .min()
            .unwrap_or_else(|| self.published());
        while self.first < min {
            match self.chunks.pop_front() {
                Some(c) => self.retained -= c.len(),
                None => break,
            }
            self.first += 1;
        }
    }

    /// Cut the followers furthest behind until what is retained fits `max_bytes` (every
    /// follower, if need be).
    fn cut_laggards(&mut self, max_bytes: usize) {
        while self.retained > max_bytes {
            let slowest = self
                .cursors
                .iter()
                .enumerate()
                .filter_map(|(id, c)| match c {
                    Cursor::At(n) => Some((*n, id)),
                    Cursor::Free | Cursor::Cut => None,
                })
                .min();
            let Some((_, id)) = slowest else { break };
            self.cursors[id] = Cursor::Cut;
            self.subscribers -= 1;
            self.trim();
        }
        if self.everyone_left() {
            self.joinable = false;
        }
    }
}

/// One shared upstream call. See the module docs.
pub struct Flight {
    state: Mutex<State>,
    /// Producer to subscribers: a header, chunk or end was published.
    progress: Notify,
    /// Subscribers to producer: a cursor moved or a subscriber left.
    drained: Notify,
    /// Most bytes retained (see the module docs).
    max_bytes: usize,
    /// Longest the producer waits for a follower lagging past `max_bytes` before cutting it.
    max_lag: Duration,
    /// Most bytes the flights of `total` retain together.
    max_total: usize,
    /// What this flight and the others retain.
    total: &'static Retained,
    /// The leader's request id (the followers' log lines name it).
    pub leader: Arc<str>,
    /// Its entry in the registry of flights.
    ident: super::Ident,
}

impl Drop for Flight {
    fn drop(&mut self) {
        let held = self.lock().retained;
        self.total.moved(held, 0);
        super::forget(&self.ident, self);
    }
}

impl Flight {
    /// A flight started by request `leader`, whose client is there, within `bounds`.
    pub fn start(ident: super::Ident, leader: &str, bounds: Bounds) -> Arc<Flight> {
        let Bounds {
            max_bytes,
            max_lag,
            max_total,
            total,
        } = bounds;
        Arc::new(Flight {
            state: Mutex::new(State {
                header: None,
                chunks: VecDeque::new(),
                first: 0,
                retained: 0,
                cursors: Vec::new(),
                free: Vec::new(),
                subscribers: 0,
                leader_here: true,
                joinable: true,
                body_end: false,
                close: false,
                end: None,
            }),
            progress: Notify::new(),
            drained: Notify::new(),
            max_bytes,
            max_lag,
            max_total,
            total,
            leader: leader.into(),
            ident,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held leaves plain data behind: keep serving it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A follower's subscription, from the first chunk; `None` when the flight no longer
    /// takes followers (over its byte bound, ended, or every client left).
    pub fn join(self: &Arc<Self>) -> Option<Subscription> {
        let mut s = self.lock();
        if !s.joinable || s.end.is_some() || s.everyone_left() {
            return None;
        }
        // Joinable: nothing was released yet, the follower starts at the first chunk.
        let id = match s.free.pop() {
            Some(id) => id,
            None => {
                s.cursors.push(Cursor::Free);
                s.cursors.len() - 1
            }
        };
        if let Some(c) = s.cursors.get_mut(id) {
            *c = Cursor::At(0);
        }
        s.subscribers += 1;
        Some(Subscription {
            flight: self.clone(),
            id,
        })
    }

    /// Whether it takes followers now.
    pub fn joinable(&self) -> bool {
        let s = self.lock();
        s.joinable && s.end.is_none()
    }

    /// Producer: publish the served attempt's response header (as the upstream sent it; each
    /// follower builds its own from it). Errors: every client has left.
    pub fn publish_header(&self, header: Box<ResponseHeader>) -> Result<(), EveryoneLeft> {
        let mut s = self.lock();
        if s.everyone_left() {
            return Err(EveryoneLeft);
        }
        s.header = Some(header);
        let wake = s.subscribers > 0;
        drop(s);
        self.wake_subscribers(wake);
        Ok(())
    }

    /// Producer: publish body bytes (`end`: the last ones), waiting while the slowest follower
    /// lags past the byte bound, for at most the lag bound: then the followers furthest
    /// behind are cut until the rest fits. Returns whether any follower is there (the call
    /// is shared). Errors: every client has left.
    pub async fn publish_body(&self, data: Bytes, end: bool) -> Result<bool, EveryoneLeft> {
        let (fits, wake) = {
            let mut s = self.lock();
            if s.everyone_left() {
                return Err(EveryoneLeft);
            }
            if !data.is_empty() {
                let before = s.retained;
                s.retained += data.len();
                s.chunks.push_back(data);
                self.total.moved(before, s.retained);
                if s.retained > self.max_bytes || self.total.bytes() > self.max_total {
                    // Late joiners could no longer replay the whole response, or every
                    // flight together keeps too much for them.
                    s.joinable = false;
                }
                self.trim(&mut s);
            }
            s.body_end |= end;
            (s.retained <= self.max_bytes, s.subscribers > 0)
        };
        self.wake_subscribers(wake);
        if fits {
            return Ok(wake);
        }
        // Back-pressure: wait until what some follower has not read fits the bound again,
        // for at most the lag bound (a bound past what an `Instant` holds never expires).
        let deadline = tokio::time::Instant::now().checked_add(self.max_lag);
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            {
                let mut s = self.lock();
                if s.everyone_left() {
                    return Err(EveryoneLeft);
                }
                self.trim(&mut s);
                if s.retained <= self.max_bytes {
                    return Ok(s.subscribers > 0);
                }
            }
            let expired = match deadline {
                Some(at) => tokio::time::timeout_at(at, drained).await.is_err(),
                None => {
                    drained.await;
                    false
                }
            };
            if expired {
                let mut s = self.lock();
                let before = s.retained;
                s.cut_laggards(self.max_bytes);
                self.total.moved(before, s.retained);
                let (left, shared) = (s.everyone_left(), s.subscribers > 0);
                drop(s);
                // The cut followers read `Next::Cut` at once (whatever they wait on).
                self.progress.notify_waiters();
                return if left { Err(EveryoneLeft) } else { Ok(shared) };
            }
        }
    }

    /// [`State::trim`], counted in the flights' total.
    fn trim(&self, s: &mut State) {
        let before = s.retained;
        s.trim();
        self.total.moved(before, s.retained);
    }

    /// Producer: close client connections after the response (it ended abnormally).
    pub fn close_after(&self) {
        self.lock().close = true;
    }

    /// Producer: the leader's own client left (the call goes on while followers remain).
    pub fn leader_left(&self) {
        let mut s = self.lock();
        s.leader_here = false;
        if s.everyone_left() {
            // Nobody left to serve: no follower may join a call about to be cancelled.
            s.joinable = false;
        }
        drop(s);
        self.drained.notify_waiters();
    }

    /// Producer: whether any follower is there (not counting cut ones).
    pub fn followed(&self) -> bool {
        self.lock().subscribers > 0
    }

    /// Producer: whether every client (the leader's and every follower) has left.
    pub fn all_left(&self) -> bool {
        self.lock().everyone_left()
    }

    /// Producer: resolves once every client (the leader's and every follower) has left.
    /// Cancel-safe.
    pub async fn all_gone(&self) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.lock().everyone_left() {
                return;
            }
            drained.await;
        }
    }

    /// Producer: the flight is over (idempotent: the first end stands). A response that
    /// ended by an error the relay closed the connection for says `close`.
    pub fn finish(&self, end: End) {
        let mut s = self.lock();
        if s.end.is_none() {
            let end = match end {
                End::Answered {
                    completed, error, ..
                } => End::Answered {
                    completed,
                    error,
                    close: s.close || !s.body_end,
                },
                other => other,
            };
            s.end = Some(end);
        }
        s.joinable = false;
        let wake = s.subscribers > 0;
        drop(s);
        self.wake_subscribers(wake);
    }

    /// Wake the subscribers waiting for progress, if the flight has any (`any`, read under
    /// the lock that published): a subscriber counts from its join, before it first waits,
    /// so a flight without one has nobody to wake (the leader's own client is written to
    /// inline).
    fn wake_subscribers(&self, any: bool) {
        if any {
            self.progress.notify_waiters();
        }
    }

    /// The longest a follower may hold the call back (`cache.max_flight_lag_ms`).
    pub fn max_lag(&self) -> Duration {
        self.max_lag
    }

    /// The most bytes retained for followers (`cache.max_flight_bytes`).
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Bytes retained now (tests and the memory bound).
    pub fn retained_bytes(&self) -> usize {
        self.lock().retained
    }
}

/// One follower's read position in a flight. Dropping it leaves the flight: the last client
/// to leave makes [`Flight::all_gone`] resolve, which cancels the upstream call.
pub struct Subscription {
    flight: Arc<Flight>,
    id: usize,
}

impl Subscription {
    /// The flight.
    pub fn flight(&self) -> &Arc<Flight> {
        &self.flight
    }

    /// Wait for the response header (a copy of the upstream's), or the end that came
    /// instead. Cancel-safe.
    pub async fn header(&self) -> Result<ResponseHeader, End> {
        loop {
            let progress = self.flight.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            {
                let s = self.flight.lock();
                if let Some(h) = &s.header {
                    return Ok(ResponseHeader::clone(h));
                }
                if let Some(end) = &s.end {
                    return Err(end.clone());
                }
            }
            progress.await;
        }
    }

    /// The next chunks from this client's cursor (at most `HANDOFF_BYTES`, 16 KiB, at least one
    /// chunk), appended to `out` (a buffer the caller reuses), or [`Next::BodyEnd`] once it
    /// read the last ones. Cancel-safe (the cursor moves
    /// only when chunks are handed over).
    pub async fn next(&self, out: &mut Vec<Bytes>) -> Next {
        loop {
            let progress = self.flight.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            {
                let mut s = self.flight.lock();
                let cursor = match s.cursors.get(self.id).copied() {
                    Some(Cursor::At(n)) => n,
                    Some(Cursor::Cut) => return Next::Cut,
                    Some(Cursor::Free) | None => 0,
                };
                let published = s.published();
                if cursor < published {
                    // At most `HANDOFF_BYTES` (at least one chunk) at a time: what a follower
                    // holds outside the flight stays small, and the flight's count of what it
                    // has not read (the lag it is cut on) stays exact to within that.
                    let from = cursor.saturating_sub(s.first);
                    let mut bytes = 0;
                    let mut taken = 0;
                    for chunk in s.chunks.iter().skip(from) {
                        if taken > 0 && bytes + chunk.len() > HANDOFF_BYTES {
                            break;
                        }
                        bytes += chunk.len();
                        taken += 1;
                        out.push(chunk.clone());
                    }
                    let at = (s.first + from + taken).min(published);
                    if let Some(c) = s.cursors.get_mut(self.id) {
                        *c = Cursor::At(at);
                    }
                    let lagging = !s.joinable;
                    drop(s);
                    if lagging {
                        self.flight.drained.notify_waiters();
                    }
                    return Next::Chunks;
                }
                if s.body_end || s.end.is_some() {
                    return Next::BodyEnd;
                }
            }
            progress.await;
        }
    }

    /// Resolves once this follower is cut (it will read [`Next::Cut`]); pending for as long
    /// as it is not. Cancel-safe. (A follower whose write to its client is blocked learns of
    /// its cut here, not at its next [`Subscription::next`], which may never come.)
    pub async fn cut(&self) {
        loop {
            let progress = self.flight.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            if self.flight.lock().cursors.get(self.id) == Some(&Cursor::Cut) {
                return;
            }
            progress.await;
        }
    }

    /// Wait for how the flight ended (it comes right after the body's end).
    pub async fn end(&self) -> End {
        loop {
            let progress = self.flight.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            if let Some(end) = self.flight.lock().end.clone() {
                return end;
            }
            progress.await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut s = self.flight.lock();
        if let Some(c) = s.cursors.get_mut(self.id) {
            let was = std::mem::replace(c, Cursor::Free);
            match was {
                Cursor::At(_) => {
                    s.subscribers -= 1;
                    s.free.push(self.id);
                }
                // A cut follower no longer counted among the subscribers.
                Cursor::Cut => s.free.push(self.id),
                Cursor::Free => {}
            }
        }
        if s.everyone_left() {
            // Nobody left to serve: no follower may join a call about to be cancelled.
            s.joinable = false;
        }
        drop(s);
        self.flight.drained.notify_waiters();
    }
}

#[cfg(test)]
mod tests;
