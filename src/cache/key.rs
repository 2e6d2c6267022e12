//! The identity of an inspected request for the response cache and for coalescing: SHA-256 of
//! the request in canonical form, and what the client asked of the cache.
//!
//! Canonical form (so that two requests a provider would answer alike hash alike):
//! - the JSON body in canonical form ([`super::canonical`]: object keys sorted (byte order) at
//!   every depth, no insignificant whitespace (RFC 8259 section 2)), with the top-level fields
//!   that do not change the answer removed: `stream`, `stream_options`
//!   (OpenAI: `stream_options.include_usage` only adds a usage chunk), `user` (OpenAI:
//!   end-user id for abuse monitoring), `metadata` (Anthropic `metadata.user_id`, OpenAI
//!   stored-completion tags);
//! - the headers that select a provider's API version or beta features, which change the
//!   answer: `anthropic-version`, `anthropic-beta` (Anthropic API versioning docs), and
//!   `openai-beta` (OpenAI Assistants/Responses beta header); Azure's `api-version` is in the
//!   query string, which is hashed with the path;
//! - plus the route, the scope (the tenant, or the whole route), the method, path and query,
//!   and whether the answer is streamed (a stream and a JSON body are stored apart: converting
//!   one into the other is not exact for every API).

mod preimage;

use http::HeaderMap;
use preimage::{
    part, CONSTANT_PARTS, JSON_TAG, NO_VERSION_HEADERS, ROUTE_TAG, STREAM_TAG, TENANT_TAG,
    VERSION_TAG,
};
use std::fmt;
use std::hash::{BuildHasher, Hasher};

/// Request headers that change what a provider answers, hashed with the body.
/// (As `HeaderName`s, built at compile time: looked up without parsing a name per request; a
/// `static`, not a `const`, so that a use is not a temporary array built and dropped.)
pub static VERSION_HEADERS: [http::HeaderName; 3] = [
    http::HeaderName::from_static(VERSION_HEADER_NAMES[0]),
    http::HeaderName::from_static(VERSION_HEADER_NAMES[1]),
    http::HeaderName::from_static(VERSION_HEADER_NAMES[2]),
];

/// The names of [`VERSION_HEADERS`] (lower case, as `HeaderName` keeps them).
const VERSION_HEADER_NAMES: [&str; 3] = ["anthropic-version", "anthropic-beta", "openai-beta"];

/// Top-level body fields that do not change the answer, left out of the hash.
pub const IGNORED_FIELDS: [&str; 4] = ["stream", "stream_options", "user", "metadata"];

/// The client's own cache switch: request header `x-sluice-cache` with `on` (cache this
/// request even when it does not ask for determinism) or `off` (bypass).
pub static CLIENT_HEADER: http::HeaderName = http::HeaderName::from_static("x-sluice-cache");

/// SHA-256 of a request in canonical form (32 bytes). Printed as 64 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(pub [u8; 32]);

impl Key {
    /// Lower-case hex (64 characters): the Redis key suffix.
    pub fn hex(&self) -> String {
        self.hex_in(&mut [0u8; 64]).to_owned()
    }

    /// Lower-case hex (64 characters) written into `out` (no allocation): the log line's
    /// `input_hash`.
    pub fn hex_in<'b>(&self, out: &'b mut [u8; 64]) -> &'b str {
        // Both digits of a byte from one table entry (built at compile time): written on
        // every logged request of a caching or coalescing route, where the `hex` crate's
        // general `encode_to_slice` cost about 700 instructions (callgrind, 2026-12-01), a
        // digit at a time about 470 and this about 280, the UTF-8 check below included
        // (callgrind route profile, 2026-12-02). `from_hex` keeps the crate (a purge
        // request's rare path).
        const PAIRS: [[u8; 2]; 256] = {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            let mut t = [[0u8; 2]; 256];
            let mut b = 0;
            while b < 256 {
                t[b] = [DIGITS[b >> 4], DIGITS[b & 0x0f]];
                b += 1;
            }
            t
        };
        for (i, byte) in self.0.into_iter().enumerate() {
            let [high, low] = PAIRS[usize::from(byte)];
            out[2 * i] = high;
            out[2 * i + 1] = low;
        }
        // Hex digits are ASCII.
        std::str::from_utf8(out).unwrap_or_default()
    }

    /// The key printed as `hex` (64 hex digits, either case: the log line's `input_hash`, the
    /// admin listener's purge path). `None` for anything else.
    pub fn from_hex(hex: &str) -> Option<Key> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex, &mut out).ok()?;
        Some(Key(out))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.hex())
    }
}

/// Hashes a [`Key`] by its first 8 bytes: a key is already a SHA-256 digest, uniform and not
/// choosable by a client (finding inputs whose digests collide in 64 bits is a preimage
/// search), so hashing it again buys nothing. For the response store's table and the
/// registry of coalesced flights.
#[derive(Clone, Copy, Default)]
pub struct DigestHash;

impl BuildHasher for DigestHash {
    type Hasher = DigestHasher;
    fn build_hasher(&self) -> DigestHasher {
        DigestHasher(0)
    }
}

/// See [`DigestHash`]: keeps the first 8 bytes written (little-endian).
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 32]`'s `Hash` writes its length first (a `usize`), then the 32 bytes.
        if bytes.len() >= 8 {
            let mut first = [0u8; 8];
            first.copy_from_slice(&bytes[..8]);
            self.0 ^= u64::from_le_bytes(first);
        }
    }
    fn write_usize(&mut self, _len: usize) {}
}

/// Where a request's key is shared: `route` always; `tenant` for the tenant scope (`None`:
/// every tenant of the route shares entries).
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// Route name.
    pub route: &'a str,
    /// Tenant name, for `scope: tenant`.
    pub tenant: Option<&'a str>,
}

/// What the client asked of the cache, from its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Intent {
    /// The body asks for a repeatable answer: `temperature` is 0, or a `seed` is set.
    pub deterministic: bool,
    /// `x-sluice-cache: on`.
    pub opted_in: bool,
    /// `cache-control: no-cache` (RFC 9111 section 5.2.1.4) or `x-sluice-cache: off`: do not
    /// answer from the cache; the fresh answer replaces the entry (`no-cache` only).
    pub no_cache: bool,
    /// `cache-control: no-store` (RFC 9111 section 5.2.1.5) or `x-sluice-cache: off`: do not
    /// store this request's answer.
    pub no_store: bool,
    /// `cache-control: max-age=N` (RFC 9111 section 5.2.1.1), in seconds: the client takes no
    /// stored answer older than this; an older one is a miss whose fresh answer replaces it.
    /// The smallest of several; a value that is not a non-negative integer is ignored, and
    /// one past 2^31 is taken as 2^31 (RFC 9111 section 1.2.2).
    pub max_age_s: Option<u64>,
}

/// The largest delta-seconds value a recipient keeps (RFC 9111 section 1.2.2).
const MAX_DELTA_SECONDS: u64 = 1 << 31;

/// The value of a `max-age=N` directive (`directive` trimmed, its name in any case), if it
/// is one with a valid delta-seconds: digits only, optionally quoted (a sender must not
/// generate the quoted form, RFC 9111 section 5.2.1.1, but recipients ought to accept both
/// forms, section 5.2).
fn max_age(directive: &str) -> Option<u64> {
    let (name, value) = directive.split_once('=')?;
    if !name.trim_end().eq_ignore_ascii_case("max-age") {
        return None;
    }
    let value = value.trim_start();
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // All digits: only an overflow fails to parse, and it is past the cap anyway.
    Some(
        value
            .parse::<u64>()
            .map_or(MAX_DELTA_SECONDS, |n| n.min(MAX_DELTA_SECONDS)),
    )
}

impl Intent {
    /// Read the request's headers; `deterministic`: what its body says
    /// ([`super::canonical::Canonical::deterministic`]).
    pub fn of(headers: &HeaderMap, deterministic: bool) -> Intent {
        let mut intent = Intent {
            deterministic,
            ..Intent::default()
        };
        // One pass over the request's few headers instead of two lookups.
        let mut switch = None;
        for (name, v) in headers {
            if name == CLIENT_HEADER {
                // The first one counts, as `HeaderMap::get` reads it.
                switch = switch.or(Some(v));
                continue;
            }
            if name != http::header::CACHE_CONTROL {
                continue;
            }
            for directive in v.to_str().unwrap_or("").split(',') {
                let directive = directive.trim();
                if directive.eq_ignore_ascii_case("no-cache") {
                    intent.no_cache = true;
                } else if directive.eq_ignore_ascii_case("no-store") {
                    intent.no_store = true;
                } else if let Some(n) = max_age(directive) {
                    intent.max_age_s = Some(intent.max_age_s.map_or(n, |m| m.min(n)));
                }
            }
        }
        match switch
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_ascii_lowercase())
            .as_deref()
        {
            Some("on") => intent.opted_in = true,
            Some("off") => {
                intent.no_cache = true;
                intent.no_store = true;
            }
            _ => {}
        }
        intent
    }
}

/// The key of a request: `method`, `path_and_query`, its `headers` and its JSON body in
/// canonical form (`canonical`: [`super::canonical::Canonical::text`]), `streamed` (the client
/// asked for a stream), in `scope`.
pub fn compute(
    scope: Scope<'_>,
    method: &str,
    path_and_query: &str,
    headers: &HeaderMap,
    canonical: &[u8],
    streamed: bool,
) -> Key {
    // Every variable-length part is length-prefixed, so no two requests share a preimage.
    // The parts are gathered into one buffer and hashed in one update (the digest is of the
    // concatenation either way; one update saves SHA's per-call buffering). The constant runs
    // of parts are written whole ([`preimage`]): 7 to 12 copies per request instead of 26
    // (callgrind, 2026-12-02).
    // Room for it all when no version header is sent: the constant runs, and the five
    // variable parts below (route, tenant, method, path and query, body) with their lengths.
    let mut preimage: Vec<u8> = Vec::with_capacity(
        CONSTANT_PARTS
            + 5 * 8
            + scope.route.len()
            + scope.tenant.map_or(0, str::len)
            + method.len()
            + path_and_query.len()
            + canonical.len(),
    );
    let buf = &mut preimage;
    buf.extend_from_slice(&VERSION_TAG.0);
    part(buf, scope.route.as_bytes());
    match scope.tenant {
        Some(t) => {
            buf.extend_from_slice(&TENANT_TAG.0);
            part(buf, t.as_bytes());
        }
        None => buf.extend_from_slice(&ROUTE_TAG.0),
    }
    part(buf, method.as_bytes());
    part(buf, path_and_query.as_bytes());
    // One pass over the request's few headers finds every version header's values (three
    // `get_all` lookups hash a name each: about 700 instructions, callgrind, 2026-12-01);
    // a `Vec` allocates only for a header the request carries.
    let mut found: [Vec<&[u8]>; VERSION_HEADERS.len()] = Default::default();
    for (name, value) in headers {
        if let Some(i) = VERSION_HEADERS.iter().position(|v| v == name) {
            found[i].push(value.as_bytes());
        }
    }
    if found.iter().all(Vec::is_empty) {
        // The usual request: each name with a count of 0, as the loop below writes them.
        buf.extend_from_slice(&NO_VERSION_HEADERS.0);
    } else {
        for (name, mut values) in VERSION_HEADERS.iter().zip(found) {
            values.sort_unstable();
            part(buf, name.as_str().as_bytes());
            part(buf, &(values.len() as u64).to_be_bytes());
            for v in values {
                part(buf, v);
            }
        }
    }
    buf.extend_from_slice(if streamed { &STREAM_TAG.0 } else { &JSON_TAG.0 });
    part(buf, canonical);
    // ring's SHA-256 (BoringSSL's assembly, which uses the CPU's SHA extensions where it has
    // them): `make bench` `cache/digest_of_request` measured it faster than the `sha2` crate
    // here, on every request of a caching or coalescing route.
    let digest = ring::digest::digest(&ring::digest::SHA256, &preimage);
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    Key(key)
}

/// A distinct key for unit tests: `i` in the first 8 bytes (the memory tier's shards and table),
/// and bits spread from it in bytes 8..16 (where the admission doorkeeper reads a digest), as
/// SHA-256's are.
#[cfg(test)]
pub(crate) fn test_key(i: u64) -> Key {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&i.to_be_bytes());
    let spread = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29) ^ i;
    k[8..16].copy_from_slice(&spread.to_le_bytes());
    Key(k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::canonical;
    use proptest::prelude::*;
    use serde_json::Value;
    use sha2::{Digest, Sha256};

    fn key(body: &str, headers: &HeaderMap, streamed: bool, tenant: Option<&str>) -> Key {
        let text = canonical::of(body.as_bytes()).unwrap().text;
        compute(
            Scope {
                route: "chat",
                tenant,
            },
            "POST",
            "/v1/chat/completions",
            headers,
            &text,
            streamed,
        )
    }

    #[test]
    fn key_order_whitespace_and_ignored_fields_do_not_change_the_key() {
        let h = HeaderMap::new();
        let a = key(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0}"#,
            &h,
            false,
            Some("t"),
        );
        let b = key(
            r#"{ "temperature" : 0, "stream": false, "user": "u1", "metadata": {"a": 1},
                "stream_options": {"include_usage": true},
                "messages": [ {"content": "hi", "role": "user"} ], "model": "m" }"#,
            &h,
            false,
            Some("t"),
        );
        assert_eq!(a, b);
        assert_eq!(a.hex().len(), 64);
    }

    #[test]
    fn content_scope_stream_and_version_headers_change_the_key() {
        let h = HeaderMap::new();
        let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        let base = key(body, &h, false, Some("t"));
        let other_text = key(
            r#"{"model":"m","messages":[{"role":"user","content":"ho"}]}"#,
            &h,
            false,
            Some("t"),
        );
        // `user` is ignored only at the top level: inside a message it is content.
        let nested_user = key(
            r#"{"model":"m","messages":[{"role":"user","content":"hi","user":"x"}]}"#,
            &h,
            false,
            Some("t"),
        );
        let streamed = key(body, &h, true, Some("t"));
        let other_tenant = key(body, &h, false, Some("u"));
        let route_scope = key(body, &h, false, None);
        let mut versioned = HeaderMap::new();
        versioned.insert("anthropic-version", "2023-06-01".parse().unwrap());
        let with_version = key(body, &versioned, false, Some("t"));
        let mut unrelated = HeaderMap::new();
        unrelated.insert("x-stainless-retry-count", "1".parse().unwrap());
        assert_eq!(key(body, &unrelated, false, Some("t")), base);
        for (what, k) in [
            ("content", other_text),
            ("nested user", nested_user),
            ("stream", streamed),
            ("tenant", other_tenant),
            ("scope", route_scope),
            ("version header", with_version),
        ] {
            assert_ne!(k, base, "{what} did not change the key");
        }
    }

    /// The digest is of the length-prefixed parts in their documented order (so keys stored
    /// in a shared Redis tier by an older build stay valid), whatever the hashing is split into
    /// and whichever parts are written whole: with and without version headers, tenant or
    /// route scope, streamed or not.
    #[test]
    fn the_digest_is_of_the_length_prefixed_parts() {
        let body = br#"{"model":"m"}"#;
        let mut beta = HeaderMap::new();
        beta.append("anthropic-beta", "b2".parse().unwrap());
        beta.append("anthropic-beta", "a1".parse().unwrap());
        beta.append("content-type", "application/json".parse().unwrap());
        let mut plain = HeaderMap::new();
        plain.append("content-type", "application/json".parse().unwrap());
        let betas: &[&[u8]] = &[b"a1", b"b2"];
        for (headers, beta_values) in [(&beta, betas), (&plain, &[][..])] {
            for tenant in [Some("t"), None] {
                for streamed in [true, false] {
                    let got = compute(
                        Scope {
                            route: "chat",
                            tenant,
                        },
                        "POST",
                        "/v1/messages?x=1",
                        headers,
                        body,
                        streamed,
                    );
                    let mut want = Sha256::new();
                    let mut part = |bytes: &[u8]| {
                        want.update((bytes.len() as u64).to_be_bytes());
                        want.update(bytes);
                    };
                    part(b"sluice-cache-v1");
                    part(b"chat");
                    match tenant {
                        Some(t) => {
                            part(b"tenant");
                            part(t.as_bytes());
                        }
                        None => part(b"route"),
                    }
                    part(b"POST");
                    part(b"/v1/messages?x=1");
                    for (name, values) in [
                        ("anthropic-version", &[][..]),
                        ("anthropic-beta", beta_values),
                        ("openai-beta", &[][..]),
                    ] {
                        part(name.as_bytes());
                        part(&(values.len() as u64).to_be_bytes());
                        for v in values {
                            part(v);
                        }
                    }
                    part(if streamed { b"stream" } else { b"json" });
                    part(body);
                    assert_eq!(got, Key(want.finalize().into()), "{tenant:?} {streamed}");
                    assert_eq!(got.hex(), hex::encode(got.0));
                }
            }
        }
    }

    #[test]
    fn intent_reads_the_client_switches() {
        let none = HeaderMap::new();
        assert!(Intent::of(&none, true).deterministic);
        assert_eq!(Intent::of(&none, false), Intent::default());
        let mut h = HeaderMap::new();
        h.insert("cache-control", "max-age=0, No-Cache".parse().unwrap());
        h.insert(CLIENT_HEADER.clone(), "on".parse().unwrap());
        let i = Intent::of(&h, false);
        assert!(i.no_cache && i.opted_in && !i.no_store);
        let mut off = HeaderMap::new();
        off.insert(CLIENT_HEADER.clone(), "off".parse().unwrap());
        let i = Intent::of(&off, false);
        assert!(i.no_cache && i.no_store);
        assert_eq!(i.max_age_s, None);
    }

    #[test]
    fn intent_reads_max_age_in_seconds() {
        let of = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append("cache-control", v.parse().unwrap());
            }
            Intent::of(&h, false).max_age_s
        };
        assert_eq!(of(&["max-age=0, No-Cache"]), Some(0));
        assert_eq!(of(&["MAX-AGE = 30"]), Some(30));
        assert_eq!(of(&["max-age=\"12\""]), Some(12));
        // The smallest of several, across header lines too.
        assert_eq!(of(&["max-age=60", "no-transform, max-age=5"]), Some(5));
        // Past 2^31 (or past u64) is 2^31.
        assert_eq!(of(&["max-age=99999999999999999999999"]), Some(1 << 31));
        // Not delta-seconds: ignored.
        for bad in [
            "max-age=-1",
            "max-age=",
            "max-age=1.5",
            "max-age",
            "s-maxage=3",
            "max-age=0x10",
        ] {
            assert_eq!(of(&[bad]), None, "{bad}");
        }
    }

    /// Arbitrary JSON values (bounded depth and size).
    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[a-z \"\\\\é]{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]

        /// The log line's hex is the `hex` crate's, and `from_hex` reads it back.
        #[test]
        fn hex_is_lower_case_and_reads_back(bytes in proptest::array::uniform32(any::<u8>())) {
            let key = Key(bytes);
            let hex = key.hex();
            prop_assert_eq!(&hex, &hex::encode(bytes));
            prop_assert_eq!(Key::from_hex(&hex), Some(key));
        }

        /// The canonical text is valid JSON equal to the input (below the top level, where
        /// nothing is left out), and pretty-printing the input does not change the key.
        #[test]
        fn canonical_form_is_the_same_json(v in json()) {
            let nested = Value::Array(vec![v.clone()]);
            let out = canonical::of(nested.to_string().as_bytes()).unwrap().text;
            let back: Value = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(&back, &nested);
            let h = HeaderMap::new();
            let scope = Scope { route: "r", tenant: None };
            let text = |s: String| canonical::of(s.as_bytes()).unwrap().text;
            prop_assert_eq!(
                compute(scope, "POST", "/p", &h, &text(v.to_string()), false),
                compute(scope, "POST", "/p", &h, &text(serde_json::to_string_pretty(&v).unwrap()), false)
            );
        }
    }
}
