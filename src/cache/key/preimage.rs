//! The constant parts of a cache key's preimage ([`super::compute`]), length-prefixed and
//! built at compile time, so that a request's preimage is written in a few copies.

/// Appends one part of a key's preimage: its length (8 bytes, big-endian), then its bytes.
pub(super) fn part(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    buf.extend_from_slice(bytes);
}

/// Constant parts of a key's preimage, length-prefixed as [`part`] writes them, built at
/// compile time (`N`: their total length, [`prefixed_len`]).
pub(super) struct Prefixed<const N: usize>(pub(super) [u8; N]);

/// The length of `parts` length-prefixed.
const fn prefixed_len(parts: &[&[u8]]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < parts.len() {
        n += 8 + parts[i].len();
        i += 1;
    }
    n
}

impl<const N: usize> Prefixed<N> {
    /// `parts`, each after its length; `N` must be [`prefixed_len`] of them (checked when
    /// the constant is built: a mismatch does not compile).
    const fn of(parts: &[&[u8]]) -> Self {
        assert!(prefixed_len(parts) == N);
        let mut out = [0u8; N];
        let mut at = 0;
        let mut i = 0;
        while i < parts.len() {
            let p = parts[i];
            let len = (p.len() as u64).to_be_bytes();
            let mut j = 0;
            while j < 8 {
                out[at] = len[j];
                at += 1;
                j += 1;
            }
            j = 0;
            while j < p.len() {
                out[at] = p[j];
                at += 1;
                j += 1;
            }
            i += 1;
        }
        Prefixed(out)
    }
}

/// A count of 0 values, as the part [`super::compute`] writes for an absent version header.
const ZERO: [u8; 8] = 0u64.to_be_bytes();
const VERSION_PARTS: &[&[u8]] = &[b"sluice-cache-v1"];
const TENANT_PARTS: &[&[u8]] = &[b"tenant"];
const ROUTE_PARTS: &[&[u8]] = &[b"route"];
const STREAM_PARTS: &[&[u8]] = &[b"stream"];
const JSON_PARTS: &[&[u8]] = &[b"json"];
/// Every name of [`super::VERSION_HEADERS`], in order, each with a count of 0.
const NO_VERSION_PARTS: &[&[u8]] = &[
    super::VERSION_HEADER_NAMES[0].as_bytes(),
    &ZERO,
    super::VERSION_HEADER_NAMES[1].as_bytes(),
    &ZERO,
    super::VERSION_HEADER_NAMES[2].as_bytes(),
    &ZERO,
];
pub(super) static VERSION_TAG: Prefixed<{ prefixed_len(VERSION_PARTS) }> =
    Prefixed::of(VERSION_PARTS);
pub(super) static TENANT_TAG: Prefixed<{ prefixed_len(TENANT_PARTS) }> = Prefixed::of(TENANT_PARTS);
pub(super) static ROUTE_TAG: Prefixed<{ prefixed_len(ROUTE_PARTS) }> = Prefixed::of(ROUTE_PARTS);
pub(super) static STREAM_TAG: Prefixed<{ prefixed_len(STREAM_PARTS) }> = Prefixed::of(STREAM_PARTS);
pub(super) static JSON_TAG: Prefixed<{ prefixed_len(JSON_PARTS) }> = Prefixed::of(JSON_PARTS);
pub(super) static NO_VERSION_HEADERS: Prefixed<{ prefixed_len(NO_VERSION_PARTS) }> =
    Prefixed::of(NO_VERSION_PARTS);
/// Room for the constant parts in a preimage (the longest choice of each).
pub(super) const CONSTANT_PARTS: usize = prefixed_len(VERSION_PARTS)
    + prefixed_len(TENANT_PARTS)
    + prefixed_len(NO_VERSION_PARTS)
    + prefixed_len(STREAM_PARTS);
