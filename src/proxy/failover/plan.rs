//! The candidates of one request, shared by its lanes: pools in the route's order, each pool's
//! endpoints in its policy's order (computed when the first lane reaches the pool, so a pool
//! never tried does not advance its round-robin), and the request as each pool's upstream gets
//! it. Every lane (the first one, and the hedged ones) takes the next candidate no lane took,
//! and all count toward the same `max_attempts` and `deadline`.

use super::Served;
use crate::config::{Failover, Pool, Route};
use crate::error::SluiceError;
use crate::provider::provider;
use bytes::Bytes;
use pingora_http::RequestHeader;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

/// The request as one pool's upstream gets it.
pub(super) struct PoolRequest {
    /// The model as the pool's upstream knows it (after `model_map`), if the body names one.
    pub model: Option<String>,
    /// The body, with the model renamed when the pool maps it.
    pub body: Bytes,
}

/// One candidate: an endpoint of a pool, and the request for that pool.
pub(super) struct Candidate {
    pub pool: Arc<Pool>,
    /// Endpoint index in `pool.endpoints`.
    pub endpoint: usize,
    pub request: Arc<PoolRequest>,
    /// Its place in the route's order (0 for the first candidate taken).
    pub seq: usize,
}

#[derive(Default)]
struct Cursor {
    /// Index of the pool being walked in `route.pools`.
    pool: usize,
    /// That pool's endpoint order and how far it was taken; `None` before the pool is reached.
    order: Option<(Vec<usize>, usize, Arc<PoolRequest>)>,
    /// A pool whose URL cannot carry the model (Azure deployment names): skipped, answered
    /// when no other pool could serve.
    invalid_model: Option<SluiceError>,
    /// The body could not be rewritten for a pool's model: the request ends with this error.
    fatal: Option<SluiceError>,
    /// Candidates taken so far.
    taken: usize,
}

/// An answer kept: the answer, its pool, endpoint index and candidate place.
type Kept = (Served, Arc<Pool>, usize, usize);

/// Everything the lanes of one request share.
pub(super) struct Plan<'a> {
    pub route: &'a Route,
    pub rules: &'a Failover,
    /// The failover deadline (`failover.deadline_ms` from the start of failover).
    pub deadline: Instant,
    /// The client's request header as forwarded to every attempt.
    pub base: RequestHeader,
    /// The client's model, if the body names one.
    asked: Option<String>,
    body: Bytes,
    cursor: Mutex<Cursor>,
    attempts: AtomicU32,
    /// Lanes race (`hedge`): an error answer is then kept, not served at once, while another
    /// lane may still deliver.
    pub hedged: bool,
    /// The rules said stop (or an error answer is to be served): no lane takes a candidate.
    stopped: AtomicBool,
    /// The upstream answer kept to be served if nothing does better: the one of the latest
    /// candidate in the route's order (what an unhedged request would serve), with its pool,
    /// endpoint and place; replacing it drops (closes) the previous one at once.
    held: Mutex<Option<Kept>>,
    /// The latest attempt's failure without an answer.
    last_err: Mutex<Option<SluiceError>>,
    /// The pool and endpoint of the latest attempt of any lane.
    last: Mutex<Option<(Arc<Pool>, usize)>>,
}

impl<'a> Plan<'a> {
    pub fn new(route: &'a Route, base: RequestHeader, asked: Option<&str>, body: Bytes) -> Self {
        Plan {
            route,
            rules: &route.failover,
            deadline: Instant::now() + route.failover.deadline,
            base,
            asked: asked.map(str::to_owned),
            body,
            cursor: Mutex::new(Cursor::default()),
            attempts: AtomicU32::new(0),
            hedged: route.hedge.is_some(),
            stopped: AtomicBool::new(false),
            held: Mutex::new(None),
            last_err: Mutex::new(None),
            last: Mutex::new(None),
        }
    }

    /// No lane takes another candidate (the rules said stop).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    /// Keep `answer` (from endpoint `endpoint` of `pool`, candidate `seq`) to serve if nothing
    /// does better, unless one of a later candidate is kept; the answer it replaces (or
    /// `answer` itself) is dropped, closing its connection.
    pub fn hold(&self, answer: Served, pool: Arc<Pool>, endpoint: usize, seq: usize) {
        let dropped = match self.held.lock() {
            Ok(mut h) if h.as_ref().is_none_or(|(_, _, _, kept)| *kept <= seq) => {
                h.replace((answer, pool, endpoint, seq)).map(|(a, ..)| a)
            }
            _ => Some(answer),
        };
        drop(dropped);
    }

    /// The answer kept, if any (taken), with its pool and endpoint.
    pub fn take_held(&self) -> Option<(Served, Arc<Pool>, usize)> {
        let (answer, pool, endpoint, _) = self.held.lock().ok()?.take()?;
        Some((answer, pool, endpoint))
    }

    /// Remember `err`, the latest attempt's failure without an answer.
    pub fn failed(&self, err: SluiceError) {
        if let Ok(mut e) = self.last_err.lock() {
            *e = Some(err);
        }
    }

    /// The latest failure without an answer, if any (taken).
    pub fn take_last_err(&self) -> Option<SluiceError> {
        self.last_err.lock().ok()?.take()
    }

    /// An attempt starts on endpoint `endpoint` of `pool`.
    pub fn attempting(&self, pool: &Arc<Pool>, endpoint: usize) {
        if let Ok(mut l) = self.last.lock() {
            *l = Some((pool.clone(), endpoint));
        }
    }

    /// The pool and endpoint of the latest attempt, if any.
    pub fn last(&self) -> Option<(Arc<Pool>, usize)> {
        self.last.lock().ok()?.clone()
    }

    /// The next candidate no lane took yet; `None` when every one was taken (or the request
    /// must end: the cursor's `fatal`).
    pub fn next_candidate(&self) -> Option<Candidate> {
        let Ok(mut c) = self.cursor.lock() else {
            return None;
        };
        loop {
            if c.fatal.is_some() || self.stopped.load(Ordering::Acquire) {
                return None;
            }
            let pool = self.route.pools.get(c.pool)?;
            if let Some((order, pos, request)) = &mut c.order {
                if let Some(&endpoint) = order.get(*pos) {
                    *pos += 1;
                    let candidate = Candidate {
                        pool: pool.clone(),
                        endpoint,
                        request: request.clone(),
                        seq: c.taken,
                    };
                    c.taken += 1;
                    return Some(candidate);
                }
                c.order = None;
                c.pool += 1;
                continue;
            }
            let model = self
                .asked
                .as_deref()
                .map(|m| pool.upstream_model(m).to_owned());
            if model
                .as_deref()
                .is_some_and(|m| !provider(pool.provider).accepts_model(m))
            {
                c.invalid_model = Some(SluiceError::InvalidModel(pool.name.to_string()));
                c.pool += 1;
                continue;
            }
            // A provider that reads the model from the path only gets the body untouched.
            let in_body = provider(pool.provider).model_in_body();
            let body = match (self.asked.as_deref(), &model) {
                (Some(asked), Some(renamed)) if asked != renamed && in_body => {
                    match super::super::inspect::with_model(&self.body, renamed) {
                        Ok(b) => b,
                        Err(e) => {
                            c.fatal = Some(e);
                            return None;
                        }
                    }
                }
                _ => self.body.clone(),
            };
            c.order = Some((pool.order(), 0, Arc::new(PoolRequest { model, body })));
        }
    }

    /// Whether a candidate is left for another lane (without taking it).
    pub fn has_candidates(&self) -> bool {
        let Ok(c) = self.cursor.lock() else {
            return false;
        };
        if c.fatal.is_some() || self.stopped.load(Ordering::Acquire) {
            return false;
        }
        match &c.order {
            Some((order, pos, _)) => *pos < order.len() || c.pool + 1 < self.route.pools.len(),
            None => c.pool < self.route.pools.len(),
        }
    }

    /// Count one more attempt; `false` (nothing counted) when `max_attempts` were made or the
    /// deadline passed.
    pub fn take_attempt(&self) -> bool {
        if Instant::now() >= self.deadline {
            return false;
        }
        self.attempts
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.rules.max_attempts).then_some(n + 1)
            })
            .is_ok()
    }

    /// Whether another attempt fits in `max_attempts` (without counting one).
    pub fn attempt_left(&self) -> bool {
        self.attempts.load(Ordering::Acquire) < self.rules.max_attempts
    }

    /// Attempts made so far by every lane.
    pub fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::Acquire)
    }

    /// The pool skipped because it cannot carry the model, if any.
    pub fn take_invalid_model(&self) -> Option<SluiceError> {
        self.cursor.lock().ok()?.invalid_model.take()
    }

    /// The error that ended the request before any candidate (a body that could not be
    /// rewritten for a pool's model), if any.
    pub fn take_fatal(&self) -> Option<SluiceError> {
        self.cursor.lock().ok()?.fatal.take()
    }
}
