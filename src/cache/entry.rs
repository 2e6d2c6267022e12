//! A stored response ([`Entry`]): what a cache hit replays, with a versioned binary form for
//! the Redis tier (bytes in, bytes out) and its weight in the memory tier.

use crate::usage::Usage;
use bytes::Bytes;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Bytes an entry costs beyond its own fields (the memory tier's node, key, hash slot and
/// `Arc`s, rounded up), so that a flood of tiny entries is bounded too.
pub const ENTRY_OVERHEAD_BYTES: u32 = 256;

/// First byte of [`Entry::encode`]'s output: the format version (bumped on any change; an
/// entry of another version, written by another sluice release, is a miss and is stored again).
/// Version 2 added `stored_at_ms`.
const VERSION: u8 = 2;

/// Longest `content_type` or `id` kept (bytes); longer ones are not stored.
const MAX_SHORT_FIELD: usize = u16::MAX as usize;

/// A complete 200 response as the upstream sent it (a stream already framed into whole
/// events), plus what a hit needs to replay it and to count what it saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `text/event-stream` (true) or a JSON body.
    pub sse: bool,
    /// The upstream's `content-type` value.
    pub content_type: String,
    /// The body: a JSON document, or the SSE stream (whole events, the usage chunk included
    /// when the upstream sent one).
    pub body: Bytes,
    /// The response id the upstream gave (OpenAI chat `id`, Responses `response.id`,
    /// Anthropic `message.id`), replaced by a fresh one on every hit.
    pub id: Option<String>,
    /// The upstream's usage report: the tokens (and so the USD) a hit saves.
    pub usage: Usage,
    /// When the answer was stored: milliseconds since the Unix epoch, by the wall clock of
    /// the replica that stored it (a wall clock, not an `Instant`, so that the replicas
    /// sharing the Redis tier agree on it). A hit's `age` ([`Entry::age`]) is read from it.
    pub stored_at_ms: u64,
}

/// `t` in milliseconds since the Unix epoch (0 before it; saturating far after it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Entry {
    /// Bytes this entry costs in the memory tier: its body and strings plus
    /// [`ENTRY_OVERHEAD_BYTES`] (saturating at `u32::MAX`).
    pub fn weight(&self) -> u32 {
        let n = self.body.len()
            + self.content_type.len()
            + self.id.as_ref().map_or(0, String::len)
            + ENTRY_OVERHEAD_BYTES as usize;
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// How long before `now` it was stored (zero when `stored_at_ms` is ahead of `now`: the
    /// clocks of two replicas differ). The `age` of a hit (RFC 9111 section 5.1).
    pub fn age(&self, now: SystemTime) -> Duration {
        Duration::from_millis(unix_ms(now).saturating_sub(self.stored_at_ms))
    }

    /// The versioned binary form: `[version u8][flags u8: bit 0 sse, bit 1 id present]`,
    /// `stored_at_ms` (u64 big-endian), the five usage counts (u64 big-endian: prompt,
    /// completion, cached, cache write, reasoning), `content_type` and `id` (u16 length +
    /// bytes), then the body (u32 length + bytes).
    /// Entries whose strings do not fit a u16 length or whose body does not fit a u32 are not
    /// stored (the store checks sizes first), so the lengths here are never truncated in
    /// practice; an overlong field is cut to empty rather than panicking.
    pub fn encode(&self) -> Vec<u8> {
        let id = self.id.as_deref().unwrap_or("");
        let mut out = Vec::with_capacity(
            2 + 8 + 40 + 4 + self.content_type.len() + id.len() + 4 + self.body.len(),
        );
        out.push(VERSION);
        out.push(u8::from(self.sse) | (u8::from(self.id.is_some()) << 1));
        out.extend_from_slice(&self.stored_at_ms.to_be_bytes());
        let u = &self.usage;
        for n in [
            u.prompt_tokens,
            u.completion_tokens,
            u.cached_tokens,
            u.cache_write_tokens,
            u.reasoning_tokens,
        ] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        for s in [self.content_type.as_bytes(), id.as_bytes()] {
            let s = if s.len() > MAX_SHORT_FIELD {
                &[][..]
            } else {
                s
            };
            out.extend_from_slice(&(s.len() as u16).to_be_bytes());
            out.extend_from_slice(s);
        }
        let body: &[u8] = if u32::try_from(self.body.len()).is_ok() {
            &self.body
        } else {
            &[]
        };
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    /// Parse [`Entry::encode`]'s output. `None` for another version, a short or overlong
    /// input, or strings that are not UTF-8. Never panics.
    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        let mut r = Reader(bytes);
        if r.take(1)?.first() != Some(&VERSION) {
            return None;
        }
        let flags = *r.take(1)?.first()?;
        let stored_at_ms = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
        let mut counts = [0u64; 5];
        for c in &mut counts {
            *c = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
        }
        let content_type = r.short_str()?;
        let id = r.short_str()?;
        let len = u32::from_be_bytes(r.take(4)?.try_into().ok()?) as usize;
        let body = Bytes::copy_from_slice(r.take(len)?);
        if !r.0.is_empty() {
            return None;
        }
        Some(Entry {
            sse: flags & 1 != 0,
            content_type,
            body,
            id: (flags & 2 != 0).then_some(id),
            usage: Usage {
                prompt_tokens: counts[0],
                completion_tokens: counts[1],
                cached_tokens: counts[2],
                cache_write_tokens: counts[3],
                reasoning_tokens: counts[4],
            },
            stored_at_ms,
        })
    }
}

/// A cursor over encoded bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn short_str(&mut self) -> Option<String> {
        let len = u16::from_be_bytes(self.take(2)?.try_into().ok()?) as usize;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Entry {
        Entry {
            sse: true,
            content_type: "text/event-stream; charset=utf-8".to_owned(),
            body: Bytes::from_static(b"data: {\"id\":\"chatcmpl-1\"}\n\ndata: [DONE]\n\n"),
            id: Some("chatcmpl-1".to_owned()),
            usage: Usage {
                prompt_tokens: 12,
                completion_tokens: 7,
                cached_tokens: 1,
                cache_write_tokens: 2,
                reasoning_tokens: 3,
            },
            stored_at_ms: 1_764_547_200_123,
        }
    }

    #[test]
    fn round_trips() {
        let e = sample();
        assert_eq!(Entry::decode(&e.encode()), Some(e.clone()));
        let plain = Entry {
            sse: false,
            id: None,
            ..e
        };
        assert_eq!(Entry::decode(&plain.encode()), Some(plain));
    }

    #[test]
    fn refuses_other_versions_and_truncation() {
        let mut bytes = sample().encode();
        for n in 0..bytes.len() {
            assert_eq!(Entry::decode(&bytes[..n]), None, "prefix of {n} bytes");
        }
        bytes.push(0);
        assert_eq!(Entry::decode(&bytes), None, "trailing byte");
        bytes.pop();
        bytes[0] = VERSION + 1;
        assert_eq!(Entry::decode(&bytes), None);
    }

    #[test]
    fn age_is_the_time_since_it_was_stored_and_never_negative() {
        let e = sample();
        let stored = UNIX_EPOCH + Duration::from_millis(e.stored_at_ms);
        assert_eq!(e.age(stored), Duration::ZERO);
        assert_eq!(
            e.age(stored + Duration::from_millis(2_500)),
            Duration::from_millis(2_500)
        );
        // Another replica's clock behind this one's.
        assert_eq!(e.age(stored - Duration::from_secs(3)), Duration::ZERO);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }

    #[test]
    fn weight_counts_body_and_overhead() {
        let e = sample();
        assert_eq!(
            e.weight() as usize,
            e.body.len() + e.content_type.len() + 10 + ENTRY_OVERHEAD_BYTES as usize
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Entry::decode(&bytes);
        }
    }
}
