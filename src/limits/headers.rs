//! The `x-ratelimit-*` response headers of an admitted request, as OpenAI sends them (limit,
//! remaining, reset per requests and tokens window:
//! <https://platform.openai.com/docs/guides/rate-limits#rate-limits-in-headers>).

use std::time::Duration;

/// `x-ratelimit-*` values: (limit, remaining, reset).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateHeaders {
    /// Requests window, if limited.
    pub requests: Option<(u64, u64, Duration)>,
    /// Tokens window, if limited.
    pub tokens: Option<(u64, u64, Duration)>,
}

/// `x-ratelimit-{limit,remaining,reset}-requests` (OpenAI's names, see
/// <https://platform.openai.com/docs/guides/rate-limits#rate-limits-in-headers>).
const REQUEST_HEADERS: [&str; 3] = [
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
];

/// `x-ratelimit-{limit,remaining,reset}-tokens`.
const TOKEN_HEADERS: [&str; 3] = [
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
];

impl RateHeaders {
    /// Insert the `x-ratelimit-*` headers of the limited windows into `h` (limit and
    /// remaining as integers, reset like OpenAI's `1s`/`6m0s`, see
    /// [`crate::error::reset_format`]). Measured (benches/hot_paths.rs, `rate_limit_headers`):
    /// about 21,500 instructions for both windows, nearly all of it Pingora's `insert_header`
    /// (name parse, case map, value copy); formatting the numbers on the stack instead of in a
    /// `String` did not pay (+3%), so they are formatted plainly. Errors: Pingora's on an
    /// invalid header (none here: the names and values are valid).
    pub fn write_to(&self, h: &mut pingora_http::ResponseHeader) -> pingora_error::Result<()> {
        for (names, window) in [
            (REQUEST_HEADERS, self.requests),
            (TOKEN_HEADERS, self.tokens),
        ] {
            let Some((limit, remaining, reset)) = window else {
                continue;
            };
            let [limit_name, remaining_name, reset_name] = names;
            h.insert_header(limit_name, limit.to_string())?;
            h.insert_header(remaining_name, remaining.to_string())?;
            h.insert_header(reset_name, crate::error::reset_format(reset))?;
        }
        Ok(())
    }

    /// [`RateHeaders::write_to`] straight into a `HeaderMap` under static names, for a header
    /// built without Pingora's case map (the relay's): no name parse, no case map entry.
    pub fn write_to_map(&self, headers: &mut http::HeaderMap) {
        use http::{HeaderName, HeaderValue};
        for (names, window) in [
            (REQUEST_HEADERS, self.requests),
            (TOKEN_HEADERS, self.tokens),
        ] {
            let Some((limit, remaining, reset)) = window else {
                continue;
            };
            let [limit_name, remaining_name, reset_name] = names;
            headers.insert(
                HeaderName::from_static(limit_name),
                HeaderValue::from(limit),
            );
            headers.insert(
                HeaderName::from_static(remaining_name),
                HeaderValue::from(remaining),
            );
            if let Ok(v) = HeaderValue::from_str(&crate::error::reset_format(reset)) {
                headers.insert(HeaderName::from_static(reset_name), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_headers_are_openais() {
        let headers = RateHeaders {
            requests: Some((100, 99, Duration::from_millis(1500))),
            tokens: Some((40_000, 0, Duration::from_secs(360))),
        };
        let mut h = pingora_http::ResponseHeader::build(200, None).unwrap();
        headers.write_to(&mut h).unwrap();
        let get = |n: &str| h.headers.get(n).unwrap().to_str().unwrap().to_owned();
        assert_eq!(get("x-ratelimit-limit-requests"), "100");
        assert_eq!(get("x-ratelimit-remaining-requests"), "99");
        assert_eq!(get("x-ratelimit-reset-requests"), "1.5s");
        assert_eq!(get("x-ratelimit-limit-tokens"), "40000");
        assert_eq!(get("x-ratelimit-remaining-tokens"), "0");
        assert_eq!(get("x-ratelimit-reset-tokens"), "6m0s");
        assert_eq!(h.headers.len(), 6);
        // Only the limited windows get headers.
        let mut h = pingora_http::ResponseHeader::build(200, None).unwrap();
        RateHeaders {
            tokens: None,
            ..headers
        }
        .write_to(&mut h)
        .unwrap();
        assert_eq!(h.headers.len(), 3);
        assert!(h.headers.get("x-ratelimit-limit-tokens").is_none());
    }

    #[test]
    fn the_header_map_path_writes_the_same_headers() {
        let headers = RateHeaders {
            requests: Some((100, 99, Duration::from_millis(1500))),
            tokens: Some((40_000, 0, Duration::from_secs(360))),
        };
        let mut with_case = pingora_http::ResponseHeader::build(200, None).unwrap();
        headers.write_to(&mut with_case).unwrap();
        let mut map = http::HeaderMap::new();
        headers.write_to_map(&mut map);
        assert_eq!(map.len(), 6);
        for (name, value) in &map {
            assert_eq!(with_case.headers.get(name), Some(value), "{name}");
        }
    }
}
