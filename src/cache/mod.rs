//! Response reuse: an exact-match response cache (memory tier, then an optional Redis tier)
//! and request coalescing, both keyed by [`key::Key`], the SHA-256 of the request in
//! canonical form. Stores live outside the config snapshot (a reload keeps them).

pub mod key;
pub mod redis_tier;

pub use key::{Intent, Key};
