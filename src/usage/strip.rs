//! Hide mode's textual rewrite: the top-level `"usage":null` member cut out of a raw
//! OpenAI chat chunk's bytes without parsing and re-serializing it (see
//! [`super::SseAccountant`]'s doc for the rule).

/// Removes the first top-level-looking `"usage":null` member from raw event bytes (see
/// [`crate::usage::SseAccountant`]'s doc for the rule). Returns whether something was removed.
pub(crate) fn strip_usage_null(raw: &mut Vec<u8>) -> bool {
    const KEY: &[u8] = b"\"usage\"";
    let is_blank = |b: u8| b == b' ' || b == b'\t';
    let mut from = 0;
    while let Some(rel) = find(&raw[from..], KEY) {
        let key = from + rel;
        from = key + KEY.len();
        // After the key: blanks, ':', blanks, "null", then a delimiter.
        let mut j = skip(raw, key + KEY.len(), is_blank);
        if raw.get(j) != Some(&b':') {
            continue;
        }
        j = skip(raw, j + 1, is_blank);
        if !raw[j..].starts_with(b"null") {
            continue;
        }
        let end = j + 4;
        if raw.get(end).is_some_and(|b| b.is_ascii_alphanumeric()) {
            continue;
        }
        // Preferred: cut the separator before it (`,"usage":null`).
        let mut k = key;
        while k > 0 && is_blank(raw[k - 1]) {
            k -= 1;
        }
        if k > 0 && raw[k - 1] == b',' {
            raw.drain(k - 1..end);
            return true;
        }
        if k == 0 || raw[k - 1] != b'{' {
            continue; // not a plain object member (e.g. data split over lines): leave it
        }
        // First member: cut the separator after it (`"usage":null,`), or only member.
        let after = skip(raw, end, is_blank);
        match raw.get(after) {
            Some(b',') => {
                let after = skip(raw, after + 1, is_blank);
                raw.drain(key..after);
                return true;
            }
            Some(b'}') => {
                raw.drain(key..end);
                return true;
            }
            _ => continue,
        }
    }
    false
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

fn skip(raw: &[u8], mut i: usize, pred: impl Fn(u8) -> bool) -> usize {
    while i < raw.len() && pred(raw[i]) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip(s: &str) -> String {
        let mut raw = s.as_bytes().to_vec();
        strip_usage_null(&mut raw);
        String::from_utf8(raw).unwrap()
    }

    #[test]
    fn strip_rule_covers_the_shapes_seen_on_the_wire() {
        // llmock (usage last) and real OpenAI (usage before obfuscation).
        assert_eq!(
            strip(r#"data: {"choices":[],"usage":null}"#),
            r#"data: {"choices":[]}"#
        );
        assert_eq!(
            strip(r#"data: {"choices":[],"usage":null,"obfuscation":"x"}"#),
            r#"data: {"choices":[],"obfuscation":"x"}"#
        );
        // Python json.dumps default separators.
        assert_eq!(strip(r#"{"a": 1, "usage": null}"#), r#"{"a": 1}"#);
        assert_eq!(strip(r#"{"usage": null, "a": 1}"#), r#"{"a": 1}"#);
        assert_eq!(strip(r#"{"usage":null}"#), r#"{}"#);
        // Content that mentions usage is not touched: quotes inside strings are escaped.
        let content = r#"{"c":"say \"usage\":null","usage":null}"#;
        assert_eq!(strip(content), r#"{"c":"say \"usage\":null"}"#);
        assert_eq!(strip(r#"{"usage":nullx}"#), r#"{"usage":nullx}"#);
        // JSON split over two data lines: no separator next to it, left alone (still valid).
        let split = "data: {\"choices\":[],\ndata: \"usage\":null}";
        assert_eq!(strip(split), split);
        assert_eq!(strip(r#"{"usage":{"a":1}}"#), r#"{"usage":{"a":1}}"#);
    }
}
