//! A provider key held in memory: never printed (its `Debug` is redacted) and only ever
//! written into an upstream request header.

use std::fmt;

/// A secret string (provider key). `Debug`/`Display` print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a key read from an env var or a file (whitespace trimmed by the caller).
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The key itself, for the upstream auth header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}
