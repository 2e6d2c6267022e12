//! Provider differences behind one small trait, one file per provider: how the upstream key
//! is sent, how the client's path maps onto the upstream's, and the native error body.
//! Adding a provider touches one file and the [`ProviderKind`] enum.

mod anthropic;
mod azure_openai;
pub mod bedrock;
mod gemini;
mod native_error;
mod ollama;
mod openai;
mod openai_compatible;

pub use gemini::{
    http_status_of as gemini_code_status, path_model_and_method as gemini_path,
    status_name as gemini_status_name,
};
pub use native_error::{is_content_filter_code, NativeError};

pub use crate::config::schema::ProviderKind;
use crate::error::SluiceError;
use crate::usage::ApiKind;
use bytes::Bytes;
use pingora_http::RequestHeader;

/// Native error shape an SDK understands (OpenAI API reference "Error codes"; Anthropic API
/// reference "Errors").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorStyle {
    /// `{"error":{"message","type","param","code"}}`, request id in `x-request-id`.
    #[default]
    OpenAi,
    /// `{"type":"error","error":{"type","message"}}`, request id in `request-id`.
    Anthropic,
    /// Ollama: `{"error":"message"}` (Ollama docs/api.md), request id in `x-request-id`.
    Ollama,
    /// AWS Bedrock Runtime (rest-json): `{"message"}` with the type in `x-amzn-errortype`,
    /// request id in `x-amzn-requestid`.
    Bedrock,
    /// Gemini API `{"error":{"code","message","status"}}` (the HTTP status and the canonical
    /// code name, Google API error model), request id in `x-request-id`.
    Gemini,
}

impl ErrorStyle {
    /// Guess the style of a request that matched no route: Anthropic when the path is the
    /// Messages API or the client sent `anthropic-version`, Ollama for Ollama's own endpoints
    /// under `/api/`, Bedrock for a `/model/...` path, Gemini when the client sent
    /// `x-goog-api-key` or the path is a Gemini method (`.../models/{model}:{method}`), else
    /// OpenAI.
    pub fn guess(req: &RequestHeader) -> Self {
        let path = req.uri.path();
        if path.contains("/messages") || req.headers.contains_key("anthropic-version") {
            ErrorStyle::Anthropic
        } else if is_ollama_path(path) {
            ErrorStyle::Ollama
        } else if path.starts_with("/model/") {
            ErrorStyle::Bedrock
        } else if req.headers.contains_key(gemini::KEY_HEADER)
            || gemini::path_model_and_method(path).is_some()
        {
            ErrorStyle::Gemini
        } else {
            ErrorStyle::OpenAi
        }
    }

    /// Header carrying the request id for this style.
    pub fn request_id_header(self) -> &'static str {
        match self {
            ErrorStyle::OpenAi => "x-request-id",
            ErrorStyle::Anthropic => "request-id",
            ErrorStyle::Ollama => "x-request-id",
            ErrorStyle::Bedrock => "x-amzn-requestid",
            ErrorStyle::Gemini => "x-request-id",
        }
    }

    /// The header naming an error's type for this style, for an error answered with
    /// `status`: Bedrock's `x-amzn-errortype` (botocore reads the `ClientError` code from it,
    /// e.g. `ThrottlingException` for 429); `None` for the JSON styles.
    pub fn error_type_header(self, status: u16) -> Option<(&'static str, &'static str)> {
        match self {
            ErrorStyle::Bedrock => Some(("x-amzn-errortype", bedrock::error_type(status))),
            _ => None,
        }
    }

    /// A native in-stream error event carrying `body` (an error body of this style): OpenAI
    /// SDKs raise on a `data:` JSON with an `error` key, Anthropic SDKs on `event: error`.
    pub fn sse_error_event(self, body: &[u8]) -> Bytes {
        if self == ErrorStyle::Ollama {
            // Not SSE: Ollama streams NDJSON, where an error is one `{"error":..}` line.
            return ollama::error_line(body);
        }
        let mut out = Vec::with_capacity(body.len() + 24);
        if self == ErrorStyle::Anthropic {
            out.extend_from_slice(b"event: error\n");
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(body);
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }

    /// Serialize a native error body. `kind` is the error's type (`invalid_request_error`...;
    /// for Gemini the canonical code name, `RESOURCE_EXHAUSTED`...), `code` the OpenAI `code`
    /// (Gemini: the HTTP status as decimal text, the body's numeric `code`; when absent or
    /// not a number, the status the code name stands for).
    pub fn body(self, kind: &str, code: Option<&str>, message: &str) -> Bytes {
        match self {
            ErrorStyle::OpenAi => openai::error_body(kind, code, message),
            ErrorStyle::Anthropic => anthropic::error_body(kind, message),
            ErrorStyle::Ollama => ollama::error_body(message),
            ErrorStyle::Bedrock => bedrock::error_body(message),
            ErrorStyle::Gemini => {
                gemini::error_body(kind, code.and_then(|c| c.parse().ok()), message)
            }
        }
    }
}

/// Ollama's native API: `/api/` then one of its endpoints (Ollama docs/api.md), so that
/// OpenAI-compatible paths under `/api/v1/...` (OpenRouter and others) keep the OpenAI style.
fn is_ollama_path(path: &str) -> bool {
    const ENDPOINTS: [&str; 14] = [
        "chat",
        "generate",
        "embed",
        "embeddings",
        "tags",
        "show",
        "create",
        "copy",
        "delete",
        "pull",
        "push",
        "ps",
        "version",
        "blobs",
    ];
    path.strip_prefix("/api/").is_some_and(|rest| {
        let first = rest.split('/').next().unwrap_or("");
        ENDPOINTS.contains(&first)
    })
}

/// The native in-stream error event for `err` in a stream of `api`, which the client's SDK
/// raises its own error class on: OpenAI chat/completions `data: {"error":{..}}`, Anthropic
/// `event: error` + `data: {"type":"error","error":{..}}`, Responses `event: error` (see
/// [`responses_error_event`], numbered `sequence_number`); `fallback`'s shape when the API is
/// unknown. Write it on an event boundary (after a blank line), or the SDK never sees it.
pub fn stream_error_event(
    api: Option<ApiKind>,
    fallback: ErrorStyle,
    err: &SluiceError,
    sequence_number: u64,
) -> Bytes {
    let style = match api {
        Some(ApiKind::OpenAiResponses) => {
            return responses_error_event(&err.body(ErrorStyle::OpenAi), sequence_number);
        }
        Some(ApiKind::AnthropicMessages) => ErrorStyle::Anthropic,
        Some(ApiKind::OllamaChat | ApiKind::OllamaGenerate | ApiKind::OllamaEmbed) => {
            ErrorStyle::Ollama
        }
        Some(ApiKind::BedrockConverse | ApiKind::BedrockInvoke) => {
            return bedrock::exception_message(err.status(), &format!("sluice: {err}"));
        }
        Some(ApiKind::GeminiGenerateContent) => ErrorStyle::Gemini,
        Some(_) => ErrorStyle::OpenAi,
        None => fallback,
    };
    style.sse_error_event(&err.body(style))
}

/// A native in-stream error event for an OpenAI Responses stream, from `openai_body` (an
/// OpenAI error body `{"error":{"message","type","param","code"}}`):
/// `event: error` + `data: {"type":"error","code","message","param","sequence_number","error":{..}}`.
///
/// The API reference documents the `error` event's fields flat (`code`, `message`, `param`,
/// `sequence_number`); the live API nests them under `error`, and that nested object is what
/// the official SDKs raise on (openai-python `Stream.__stream__` and openai-node
/// `Stream.fromSSEResponse` raise `APIError` for a `data:` JSON with a truthy `error`).
/// Both are sent, so a client of either shape sees the failure. Source:
/// <https://platform.openai.com/docs/api-reference/responses-streaming/error>.
pub fn responses_error_event(openai_body: &[u8], sequence_number: u64) -> Bytes {
    let error = serde_json::from_slice::<serde_json::Value>(openai_body)
        .ok()
        .and_then(|mut v| v.get_mut("error").map(serde_json::Value::take))
        .unwrap_or_else(|| serde_json::json!({"message": "stream failed", "type": "server_error"}));
    let field = |k: &str| error.get(k).cloned().unwrap_or(serde_json::Value::Null);
    let data = serde_json::json!({
        "type": "error",
        "code": field("code"),
        "message": field("message"),
        "param": field("param"),
        "sequence_number": sequence_number,
        "error": error,
    });
    let mut out = b"event: error\ndata: ".to_vec();
    out.extend_from_slice(data.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// What a provider does to an upstream request.
pub trait Provider {
    /// Write `key` in the provider's auth header. Client credentials were already removed.
    fn set_auth(&self, req: &mut RequestHeader, key: &str) -> pingora_error::Result<()>;
    /// Upstream path-and-query for the client's `path_and_query`, given the endpoint's base
    /// path, the request's model (from the body, if inspected) and the pool's api version.
    fn upstream_path(
        &self,
        base_path: &str,
        path_and_query: &str,
        model: Option<&str>,
        api_version: Option<&str>,
    ) -> String;
    /// Native error style of this provider's API.
    fn error_style(&self) -> ErrorStyle;
    /// Whether `model` (as the pool's upstream knows it, after `model_map`) may be used by
    /// [`Provider::upstream_path`]. Providers that put the model in the URL check it against
    /// the characters the provider allows there; the others take any model (it stays in the
    /// JSON body).
    fn accepts_model(&self, _model: &str) -> bool {
        true
    }
    /// Write the credential for an upstream request whose `host` is already set: `body` is the
    /// exact payload when known (`None` for a body streamed through), `region` the pool's.
    /// Providers that sign the request (Bedrock's SigV4) need both; the others just
    /// [`Provider::set_auth`].
    fn authorize(
        &self,
        req: &mut RequestHeader,
        key: &str,
        _body: Option<&[u8]>,
        _region: Option<&str>,
    ) -> pingora_error::Result<()> {
        self.set_auth(req, key)
    }
    /// Whether the upstream reads the model from the JSON body's `model` (so a pool's
    /// `model_map` rewrites the body). False for providers that take it from the path only
    /// (Gemini, Bedrock), whose bodies are forwarded untouched.
    fn model_in_body(&self) -> bool {
        true
    }
}

/// The provider implementation for `kind`.
pub fn provider(kind: ProviderKind) -> &'static dyn Provider {
    match kind {
        ProviderKind::OpenAi => &openai::OpenAi,
        ProviderKind::AzureOpenAi => &azure_openai::AzureOpenAi,
        ProviderKind::Anthropic => &anthropic::Anthropic,
        ProviderKind::OpenAiCompatible => &openai_compatible::OpenAiCompatible,
        ProviderKind::Ollama => &ollama::Ollama,
        ProviderKind::Bedrock => &bedrock::Bedrock,
        ProviderKind::Gemini => &gemini::Gemini,
    }
}

/// Headers that carry a client credential; all are removed before the upstream key is set.
pub const CLIENT_CREDENTIAL_HEADERS: [&str; 4] =
    ["authorization", "x-api-key", "api-key", gemini::KEY_HEADER];

/// The client's credential: `Authorization: Bearer <k>`, else the access key id of an AWS
/// SigV4 `Authorization: AWS4-HMAC-SHA256 Credential=<k>/<date>/<region>/<service>/aws4_request, ...`
/// (an AWS SDK signing with placeholder credentials whose access key id is the virtual key;
/// the signature itself is not checked), else `x-api-key`, else `api-key`, else
/// `x-goog-api-key` (Gemini SDKs), else a Gemini path's `key` query parameter.
pub fn client_key(req: &RequestHeader) -> Option<&str> {
    if let Some(v) = req
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if let Some(k) = sigv4_access_key_id(v) {
            return Some(k);
        }
        if let Some(k) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
        {
            return Some(k.trim());
        }
    }
    ["x-api-key", "api-key", gemini::KEY_HEADER]
        .iter()
        .find_map(|h| req.headers.get(*h).and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .or_else(|| gemini::query_key(req))
}

/// The access key id of an AWS SigV4 `Authorization` value (AWS "Signature Version 4":
/// `AWS4-HMAC-SHA256 Credential=AKID/date/region/service/aws4_request, SignedHeaders=..,
/// Signature=..`).
fn sigv4_access_key_id(v: &str) -> Option<&str> {
    let params = v.strip_prefix("AWS4-HMAC-SHA256")?;
    let cred = params
        .split(',')
        .find_map(|p| p.trim().strip_prefix("Credential="))?;
    cred.split('/').next().map(str::trim)
}

/// Prefix `path_and_query` with `base_path` (no trailing slash).
pub(crate) fn join(base_path: &str, path_and_query: &str) -> String {
    let mut s = String::with_capacity(base_path.len() + path_and_query.len());
    s.push_str(base_path);
    s.push_str(path_and_query);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_headers_per_provider() {
        for (kind, header, value) in [
            (ProviderKind::OpenAi, "authorization", "Bearer k1"),
            (ProviderKind::OpenAiCompatible, "authorization", "Bearer k1"),
            (ProviderKind::AzureOpenAi, "api-key", "k1"),
            (ProviderKind::Anthropic, "x-api-key", "k1"),
            (ProviderKind::Ollama, "authorization", "Bearer k1"),
            (ProviderKind::Gemini, "x-goog-api-key", "k1"),
        ] {
            let mut req = RequestHeader::build("POST", b"/v1/x", None).unwrap();
            provider(kind).set_auth(&mut req, "k1").unwrap();
            assert_eq!(req.headers.get(header).unwrap(), value, "{kind:?}");
        }
    }

    #[test]
    fn client_key_forms() {
        let mut req = RequestHeader::build("POST", b"/", None).unwrap();
        assert_eq!(client_key(&req), None);
        req.insert_header("x-api-key", "a").unwrap();
        assert_eq!(client_key(&req), Some("a"));
        req.insert_header("authorization", "Bearer b").unwrap();
        assert_eq!(client_key(&req), Some("b"));
        req.insert_header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=vk-1/20250101/us-east-1/bedrock/aws4_request, SignedHeaders=host, Signature=ab",
        )
        .unwrap();
        assert_eq!(client_key(&req), Some("vk-1"));
        let mut req = RequestHeader::build("POST", b"/v1/models/m:generateContent", None).unwrap();
        req.insert_header("x-goog-api-key", "g").unwrap();
        assert_eq!(client_key(&req), Some("g"));
        // A Gemini path's `key` query parameter, only when no header carries a key.
        let q =
            RequestHeader::build("POST", b"/v1beta/models/m:countTokens?a=1&key=q", None).unwrap();
        assert_eq!(client_key(&q), Some("q"));
        let other = RequestHeader::build("POST", b"/v1/chat/completions?key=q", None).unwrap();
        assert_eq!(client_key(&other), None);
    }

    #[test]
    fn azure_paths() {
        let p = provider(ProviderKind::AzureOpenAi);
        assert_eq!(
            p.upstream_path(
                "",
                "/v1/chat/completions",
                Some("gpt-4o"),
                Some("2024-10-21")
            ),
            "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            p.upstream_path("", "/v1/models?x=1", None, Some("v")),
            "/openai/models?x=1&api-version=v"
        );
        let o = provider(ProviderKind::OpenAi);
        assert_eq!(
            o.upstream_path("/base", "/v1/models", None, None),
            "/base/v1/models"
        );
    }

    #[test]
    fn only_azure_checks_the_model_it_puts_in_the_url() {
        let az = provider(ProviderKind::AzureOpenAi);
        for ok in ["gpt-4o", "gpt-4o.mini_v2", "A1", &"a".repeat(64)] {
            assert!(az.accepts_model(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "x/../../files?a=",
            "a#b",
            "a/b",
            "a?b",
            "a b",
            "a%2e",
            "-a",
            ".a",
            "é",
            &"a".repeat(65),
        ] {
            assert!(!az.accepts_model(bad), "{bad}");
        }
        assert!(provider(ProviderKind::OpenAiCompatible).accepts_model("org/model:q4 #1"));
    }

    #[test]
    fn native_error_bodies_parse() {
        let b = ErrorStyle::OpenAi.body("invalid_request_error", Some("x"), "m \"q\"");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"]["message"], "m \"q\"");
        assert_eq!(v["error"]["code"], "x");
        assert!(v["error"]["param"].is_null());
        let b = ErrorStyle::Anthropic.body("rate_limit_error", None, "m");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        let b = ErrorStyle::Ollama.body("rate_limit_error", Some("x"), "m \"q\"");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v, serde_json::json!({"error": "m \"q\""}));
        let line = ErrorStyle::Ollama.sse_error_event(&b);
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
    }

    #[test]
    fn ollama_paths_guess_the_ollama_style() {
        let req = RequestHeader::build("POST", b"/api/chat", None).unwrap();
        assert_eq!(ErrorStyle::guess(&req), ErrorStyle::Ollama);
        let req = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
        assert_eq!(ErrorStyle::guess(&req), ErrorStyle::OpenAi);
        // OpenAI-compatible APIs under `/api/v1` (OpenRouter) keep the OpenAI style.
        let req = RequestHeader::build("POST", b"/api/v1/chat/completions", None).unwrap();
        assert_eq!(ErrorStyle::guess(&req), ErrorStyle::OpenAi);
        let req = RequestHeader::build("GET", b"/api/tags", None).unwrap();
        assert_eq!(ErrorStyle::guess(&req), ErrorStyle::Ollama);
    }
}
