//! Google Gemini API (generativelanguage.googleapis.com): the key in `x-goog-api-key` (a `key`
//! query parameter from the client is stripped), the model in the path
//! (`/v1beta/models/{model}:{method}`), errors as `{"error":{"code","message","status"}}`.
//!
//! Sources: Gemini API reference <https://ai.google.dev/api> ("API keys": `x-goog-api-key` or
//! `?key=`; "Generating content": `models/{model}:generateContent`,
//! `:streamGenerateContent?alt=sse`), and the error model of Google APIs
//! <https://cloud.google.com/apis/design/errors> (`google.rpc.Status`: the HTTP status in
//! `code`, the canonical code name such as `RESOURCE_EXHAUSTED` in `status`).

use super::{join, ErrorStyle, Provider};
use bytes::Bytes;
use pingora_http::RequestHeader;

/// The Gemini provider.
pub struct Gemini;

/// The header the Gemini API reads the key from.
pub const KEY_HEADER: &str = "x-goog-api-key";

/// Most bytes of a model id placed in the upstream path.
const MAX_MODEL_BYTES: usize = 128;

impl Provider for Gemini {
    fn set_auth(&self, req: &mut RequestHeader, key: &str) -> pingora_error::Result<()> {
        req.insert_header(KEY_HEADER, key)
    }

    /// The client's path with the model segment replaced by `model` (the pool's `model_map`)
    /// when one is given, and without any `key` query parameter (a key the client sent there
    /// never reaches the upstream; the pool's key goes in `x-goog-api-key`).
    fn upstream_path(
        &self,
        base: &str,
        pq: &str,
        model: Option<&str>,
        _api_version: Option<&str>,
    ) -> String {
        let (path, query) = match pq.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (pq, None),
        };
        let mut out = match (model, model_span(path)) {
            (Some(m), Some((start, end))) => {
                join(base, &format!("{}{m}{}", &path[..start], &path[end..]))
            }
            _ => join(base, path),
        };
        if let Some(q) = query.map(strip_key_param).filter(|q| !q.is_empty()) {
            out.push('?');
            out.push_str(&q);
        }
        out
    }

    fn error_style(&self) -> ErrorStyle {
        ErrorStyle::Gemini
    }

    /// Model ids go in the URL: 1 to 128 letters, digits, `-`, `_` and `.`, starting with a
    /// letter or digit (Gemini model codes such as `gemini-2.5-flash`, `gemini-2.0-flash-001`).
    fn accepts_model(&self, model: &str) -> bool {
        let mut bytes = model.bytes();
        bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
            && model.len() <= MAX_MODEL_BYTES
            && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    }

    fn model_in_body(&self) -> bool {
        false
    }
}

/// The byte range of the model id in a Gemini method path: the segment after `/models/` or
/// `/tunedModels/` up to the `:` before the method (`/v1beta/models/gemini-2.5-flash:generateContent`
/// -> `gemini-2.5-flash`). `None` when the path is not of that form.
fn model_span(path: &str) -> Option<(usize, usize)> {
    let colon = path.rfind(':')?;
    let slash = path[..colon].rfind('/')?;
    let collection = &path[..slash];
    let is_models = collection.ends_with("/models") || collection.ends_with("/tunedModels");
    (is_models && colon > slash + 1 && !path[colon..].contains('/')).then_some((slash + 1, colon))
}

/// What a Gemini method path says: the model id and the method (`generateContent`,
/// `streamGenerateContent`, `countTokens`, `embedContent`, ...), or `None` when `path` (no
/// query) is not `.../models/{model}:{method}`.
pub fn path_model_and_method(path: &str) -> Option<(&str, &str)> {
    let (start, end) = model_span(path)?;
    Some((&path[start..end], &path[end + 1..]))
}

/// `query` without its `key=...` parameters (the API's query-parameter form of the key).
fn strip_key_param(query: &str) -> String {
    query
        .split('&')
        .filter(|p| !p.is_empty() && *p != "key" && !p.starts_with("key="))
        .collect::<Vec<_>>()
        .join("&")
}

/// The client's key sent as the `key` query parameter of a Gemini path (a method path, or
/// one under `/v1beta/`; the SDKs send `x-goog-api-key`, raw REST clients may use `?key=`),
/// if any and not empty.
pub fn query_key(req: &RequestHeader) -> Option<&str> {
    let path = req.uri.path();
    if !(path.starts_with("/v1beta/") || path_model_and_method(path).is_some()) {
        return None;
    }
    req.uri
        .query()?
        .split('&')
        .find_map(|p| p.strip_prefix("key="))
        .filter(|k| !k.is_empty())
}

/// The canonical code name (`google.rpc.Code`) Google APIs send in `error.status` for an HTTP
/// status (<https://cloud.google.com/apis/design/errors#handling_errors>).
pub fn status_name(http_status: u16) -> &'static str {
    match http_status {
        400 | 413 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "NOT_IMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

/// The HTTP status of a canonical code name (the inverse of [`status_name`]; 500 for others,
/// numbers included).
pub fn http_status_of(status: &str) -> u16 {
    match status {
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => 400,
        "UNAUTHENTICATED" => 401,
        "PERMISSION_DENIED" => 403,
        "NOT_FOUND" => 404,
        "ABORTED" | "ALREADY_EXISTS" => 409,
        "RESOURCE_EXHAUSTED" => 429,
        "CANCELLED" => 499,
        "NOT_IMPLEMENTED" => 501,
        "UNAVAILABLE" => 503,
        "DEADLINE_EXCEEDED" => 504,
        _ => 500,
    }
}

/// Gemini error body `{"error":{"code":<http status>,"message","status":<code name>}}` for
/// the canonical code name `status` (`RESOURCE_EXHAUSTED`...) and the HTTP status `code`
/// (when `None`, the one `status` stands for). google-genai raises
/// `ClientError` for a 4xx `code`, `ServerError` for a 5xx one, in a body and in a stream's
/// `data:` JSON starting with `{"error":`.
pub(super) fn error_body(status: &str, code: Option<u16>, message: &str) -> Bytes {
    let code = code.unwrap_or_else(|| http_status_of(status));
    let v = serde_json::json!({
        "error": { "code": code, "message": message, "status": status }
    });
    Bytes::from(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_keep_the_method_swap_the_model_and_drop_the_key() {
        let g = Gemini;
        assert_eq!(
            g.upstream_path(
                "",
                "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key=sk-1",
                Some("gemini-2.5-pro"),
                None
            ),
            "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
        );
        assert_eq!(
            g.upstream_path("/base", "/v1beta/models/m:countTokens?key=x", None, None),
            "/base/v1beta/models/m:countTokens"
        );
        assert_eq!(
            g.upstream_path("", "/v1beta/models?pageSize=5&key", Some("z"), None),
            "/v1beta/models?pageSize=5"
        );
        assert_eq!(
            g.upstream_path(
                "",
                "/v1beta/tunedModels/t1:generateContent",
                Some("t2"),
                None
            ),
            "/v1beta/tunedModels/t2:generateContent"
        );
    }

    #[test]
    fn model_and_method_from_the_path() {
        assert_eq!(
            path_model_and_method("/v1beta/models/gemini-2.0-flash:generateContent"),
            Some(("gemini-2.0-flash", "generateContent"))
        );
        for not in [
            "/v1beta/models",
            "/v1beta/models/:generateContent",
            "/v1beta/files/x:download",
            "/v1/chat/completions",
            "/v1beta/models/a:b/c",
        ] {
            assert_eq!(path_model_and_method(not), None, "{not}");
        }
    }

    #[test]
    fn error_bodies_carry_code_and_status() {
        for (http, name) in [
            (401, "UNAUTHENTICATED"),
            (429, "RESOURCE_EXHAUSTED"),
            (503, "UNAVAILABLE"),
            (502, "INTERNAL"),
        ] {
            assert_eq!(status_name(http), name);
            let v: serde_json::Value =
                serde_json::from_slice(&error_body(name, None, "m")).unwrap();
            assert_eq!(v["error"]["status"], name);
            assert_eq!(v["error"]["message"], "m");
            let code = v["error"]["code"].as_u64().unwrap();
            assert_eq!(status_name(code as u16), name);
        }
    }

    #[test]
    fn code_names_stand_for_their_status() {
        assert_eq!(http_status_of("UNAVAILABLE"), 503);
        assert_eq!(http_status_of("RESOURCE_EXHAUSTED"), 429);
        assert_eq!(http_status_of("503"), 500);
        assert_eq!(http_status_of("something_new"), 500);
    }

    #[test]
    fn models_in_the_url_are_checked() {
        let g = Gemini;
        assert!(g.accepts_model("gemini-2.5-flash-preview-05-20"));
        for bad in ["", "a/b", "a:b", "..", "a?b", "-x", &"a".repeat(129)] {
            assert!(!g.accepts_model(bad), "{bad}");
        }
    }
}
