//! Response reuse: an exact-match response cache (memory tier, then an optional Redis tier)
//! and request coalescing, both keyed by [`key::Key`], the SHA-256 of the request in
//! canonical form. Stores live outside the config snapshot (a reload keeps them).
//!
//! - [`key`]: the request's key and the client's cache intent;
//! - [`entry`]: a stored response and its binary form;
//! - [`store`]: the process's store (memory tier, then the Redis tier);
//! - [`admission`]: which answers a full memory tier takes (a doorkeeper of one-off keys);
//! - [`redis_tier`]: the Redis tier, bytes in and out, shared by the replicas;
//! - [`purge_channel`]: a purge on one replica reaches every replica's memory tier;
//! - [`record`]: the relay's recorder, which stores a complete response;
//! - [`replay`]: a stored response made fresh for a hit (new id and creation time).

pub mod admission;
pub mod canonical;
pub mod entry;
pub mod key;
pub mod purge_channel;
pub mod record;
pub mod redis_tier;
pub mod replay;
pub mod store;
#[cfg(test)]
mod test_json;

pub use entry::Entry;
pub use key::{Intent, Key};
pub use store::Store;

/// What the cache did for a request of a caching route: the `x-sluice-cache` response
/// header, the log line's `cache` field and the `outcome` label of
/// `sluice_cache_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered from the store, without any upstream attempt.
    Hit,
    /// Looked up, not found: answered by the upstream (and stored if complete).
    Miss,
    /// Not looked up: the request is not cacheable (not deterministic, no opt-in), or the
    /// client asked for a fresh answer (`cache-control: no-cache`, `x-sluice-cache: off`).
    Bypass,
}

impl Outcome {
    /// `hit`, `miss` or `bypass`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Bypass => "bypass",
        }
    }
}
