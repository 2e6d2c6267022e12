use super::*;
use proptest::prelude::*;

fn norm(p: &str) -> Result<String, PathError> {
    normalize(p).map(Cow::into_owned)
}

#[test]
fn ordinary_paths_are_borrowed_unchanged() {
    for p in [
        "/",
        "/v1/chat/completions",
        "/anthropic/v1/messages",
        "/v1/models/",
        "/v1/models/ft:gpt-4o:org::abc",
        "/v1/models/meta-llama%2FLlama-3-8B",
        "/v1/files/file-abc.jsonl",
        "/v1/a..b/.c/d.",
        "/v1/a%2Fb%3Fc%25%2f%20",
    ] {
        assert!(
            matches!(normalize(p), Ok(Cow::Borrowed(s)) if s == p),
            "{p}"
        );
    }
}

#[test]
fn dot_segments_are_removed_per_rfc3986() {
    // RFC 3986 section 5.2.4 examples, on absolute paths.
    assert_eq!(norm("/a/b/c/./../../g").unwrap(), "/a/g");
    assert_eq!(norm("/mid/content=5/../6").unwrap(), "/mid/6");
    assert_eq!(norm("/a/b/.").unwrap(), "/a/b/");
    assert_eq!(norm("/a/b/..").unwrap(), "/a/");
    assert_eq!(norm("/a/..").unwrap(), "/");
    assert_eq!(norm("/.").unwrap(), "/");
    assert_eq!(
        norm("/v2/chat/completions/../../v2/files").unwrap(),
        "/v2/v2/files"
    );
}

#[test]
fn percent_encoded_dots_count_as_dots() {
    for p in [
        "/v2/chat/completions/%2e%2e/%2e%2e/files",
        "/v2/chat/completions/%2E%2e/%2e%2E/files",
        "/v2/chat/completions/.%2E/%2e./files",
        "/v2/chat/completions/%2e/../.././files",
    ] {
        assert_eq!(norm(p).unwrap(), "/v2/files", "{p}");
    }
}

#[test]
fn encoded_unreserved_characters_are_decoded() {
    assert_eq!(
        norm("/v1/%63hat/%43OMPLETIONS%7e%2D%5f%2e%41").unwrap(),
        "/v1/chat/COMPLETIONS~-_.A"
    );
    // Reserved characters stay encoded, as sent.
    assert_eq!(
        norm("/v1/%6dodels/a%2fb%3A").unwrap(),
        "/v1/models/a%2fb%3A"
    );
}

#[test]
fn empty_segments_are_merged() {
    assert_eq!(norm("//v1//models").unwrap(), "/v1/models");
    assert_eq!(norm("/v1/models//").unwrap(), "/v1/models/");
    assert_eq!(norm("//").unwrap(), "/");
    assert_eq!(norm("/a//../b").unwrap(), "/b");
}

#[test]
fn refusals() {
    for (p, e) in [
        ("/..", PathError::AboveRoot),
        ("/v1/../../etc/passwd", PathError::AboveRoot),
        ("/%2e%2e/x", PathError::AboveRoot),
        ("/v1/a\\..\\..\\files", PathError::Backslash),
        ("/v1/a%2F..%2F..%2Ffiles", PathError::AmbiguousSegment),
        ("/v1/a%5c..%5cfiles", PathError::AmbiguousSegment),
        ("/v1/x/..;/files", PathError::AmbiguousSegment),
        (
            "/v1/x/%2e%2e;jsessionid=1/files",
            PathError::AmbiguousSegment,
        ),
        ("/v1/a%00b", PathError::ControlOrNonAscii),
        ("/v1/a%0d%0aX:1", PathError::ControlOrNonAscii),
        ("/v1/a%7f", PathError::ControlOrNonAscii),
        ("/v1/a\u{1}", PathError::ControlOrNonAscii),
        ("/v1/é", PathError::ControlOrNonAscii),
        ("/v1/a b", PathError::ControlOrNonAscii),
        ("/v1/%zz", PathError::BadPercentEncoding),
        ("/v1/a%2", PathError::BadPercentEncoding),
        ("v1/models", PathError::NotOriginForm),
        ("*", PathError::NotOriginForm),
    ] {
        assert_eq!(norm(p), Err(e), "{p:?}");
    }
}

fn header(target: &[u8]) -> RequestHeader {
    RequestHeader::build("GET", target, None).unwrap()
}

#[test]
fn request_header_is_rewritten_only_when_needed() {
    let mut req = header(b"/v1/models?limit=2&after=a%2Fb&x=../y");
    normalize_request(&mut req).unwrap();
    assert_eq!(req.raw_path(), b"/v1/models?limit=2&after=a%2Fb&x=../y");

    let mut req = header(b"/v2/chat/completions/%2e%2e/../files?a=..%2F&b");
    normalize_request(&mut req).unwrap();
    assert_eq!(req.raw_path(), b"/v2/files?a=..%2F&b");
    assert_eq!(req.uri.path(), "/v2/files");

    // Absolute-form becomes origin-form: what was routed is what goes upstream.
    let mut req = header(b"http://127.0.0.1:9/v2/x/../files?q=1");
    normalize_request(&mut req).unwrap();
    assert_eq!(req.raw_path(), b"/v2/files?q=1");
    let mut req = header(b"HTTP://h/v1/models");
    normalize_request(&mut req).unwrap();
    assert_eq!(req.raw_path(), b"/v1/models");

    let mut checked = 0;
    for bad in [&b"/v1/../.."[..], b"/v1/\xff", b"foo:bar", b"*"] {
        // Targets Pingora itself refuses never reach sluice.
        let Ok(mut req) = RequestHeader::build("GET", bad, None) else {
            continue;
        };
        checked += 1;
        assert!(
            matches!(
                normalize_request(&mut req),
                Err(SluiceError::InvalidPath(_))
            ),
            "{}",
            bad.escape_ascii()
        );
    }
    assert!(checked >= 3, "only {checked} targets built");
}

/// Segments drawn from the characters that matter (dots, encoded dots, slashes, names).
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("%2e".to_owned()),
        Just("%2E%2e".to_owned()),
        Just(".%2e".to_owned()),
        Just(String::new()),
        "[a-z0-9._~-]{1,6}",
        "[a-z]{1,3}%2[fF][a-z]{1,3}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    (prop::collection::vec(segment(), 0..10), any::<bool>()).prop_map(|(segs, slash)| {
        let mut p = String::from("/");
        p.push_str(&segs.join("/"));
        if slash {
            p.push('/');
        }
        p
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Never panics on arbitrary input; whatever it accepts is normal and stays normal.
    #[test]
    fn arbitrary_input_never_panics(s in "\\PC{0,40}", raw in prop::collection::vec(any::<u8>(), 0..40)) {
        let _ = normalize(&s);
        let lossy = String::from_utf8_lossy(&raw);
        let _ = normalize(&lossy);
    }

    /// Idempotent, rooted, no dot-segment or empty segment left, no longer than the input.
    #[test]
    fn output_is_normal_and_stable(p in path()) {
        if let Ok(out) = normalize(&p) {
            prop_assert!(out.starts_with('/'));
            prop_assert!(out.len() <= p.len());
            let again = normalize(&out).unwrap();
            prop_assert_eq!(&*again, &*out);
            prop_assert!(matches!(again, Cow::Borrowed(_)));
            let body = out.trim_start_matches('/');
            let body = body.strip_suffix('/').unwrap_or(body);
            if !body.is_empty() {
                for seg in body.split('/') {
                    prop_assert!(!seg.is_empty(), "empty segment in {}", out);
                    let d = decode(seg);
                    prop_assert!(!is_dots(&d), "dot-segment {} in {}", seg, out);
                }
            }
        }
    }

    /// Never climbs: a path is refused as `AboveRoot` exactly when its `..` count exceeds
    /// the names before them at some point.
    #[test]
    fn climbing_is_refused_not_clamped(p in path()) {
        let mut depth: i64 = 0;
        let mut climbed = false;
        for seg in p.split('/').filter(|s| !s.is_empty()) {
            match decode(seg).as_slice() {
                b"." => {}
                b".." => {
                    depth -= 1;
                    climbed |= depth < 0;
                    depth = depth.max(0);
                }
                _ => depth += 1,
            }
        }
        match normalize(&p) {
            Err(PathError::AboveRoot) => prop_assert!(climbed),
            Err(PathError::AmbiguousSegment) => {}
            Err(e) => prop_assert!(false, "unexpected {:?} for {}", e, p),
            Ok(_) => prop_assert!(!climbed),
        }
    }
}
