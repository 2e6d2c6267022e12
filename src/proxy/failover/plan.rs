//! The candidates of one request, shared by its lanes: pools in the route's order, each pool's
//! endpoints in its policy's order (computed when the first lane reaches the pool, so a pool
//! never tried does not advance its round-robin), and the request as each pool's upstream gets
//! it. Every lane (the first one, and the hedged ones) takes the next candidate no lane took,
//! and all count toward the same `max_attempts` and `deadline`.

use crate::config::{Failover, Pool, Route};
use crate::error::SluiceError;
use crate::provider::provider;
use bytes::Bytes;
use pingora_http::RequestHeader;
use std::sync::atomic::{AtomicU32, Ordering};
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
}

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
        }
    }

    /// The next candidate no lane took yet; `None` when every one was taken (or the request
    /// must end: see [`Plan::fatal`]).
    pub fn next_candidate(&self) -> Option<Candidate> {
        let Ok(mut c) = self.cursor.lock() else {
            return None;
        };
        loop {
            if c.fatal.is_some() {
                return None;
            }
            let pool = self.route.pools.get(c.pool)?;
            if let Some((order, pos, request)) = &mut c.order {
                if let Some(&endpoint) = order.get(*pos) {
                    *pos += 1;
                    return Some(Candidate {
                        pool: pool.clone(),
                        endpoint,
                        request: request.clone(),
                    });
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
            let body = match (self.asked.as_deref(), &model) {
                (Some(asked), Some(renamed)) if asked != renamed => {
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
        if c.fatal.is_some() {
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
