//! Pipeline stage 2 (request_filter): read the JSON body of an LLM API call (up to the cap),
//! learn `model`, `stream` and the output ceiling, and rewrite it where sluice must (OpenAI
//! streamed chat: ask for the usage chunk).
//!
//! Requests sluice need not inspect (GETs, multipart uploads, unknown paths no model route
//! depends on) are never buffered: they stream through Pingora's normal path.

use super::ctx::Inspected;
use crate::config::Snapshot;
use crate::error::SluiceError;
use crate::usage::ApiKind;
use bytes::{Bytes, BytesMut};
use pingora_http::RequestHeader;
use pingora_proxy::Session;
use serde::de::IgnoredAny;
use serde::Deserialize;
use std::borrow::Cow;

/// A client sending more than this (bytes) after the cap is not drained: the connection is
/// closed after the 413.
const MAX_DRAIN_BYTES: usize = 256 * 1024 * 1024;

/// Whether sluice reads this request's body before routing it: a POST with a JSON (or
/// unspecified) content type, on an API path sluice accounts or on a path where a route
/// matches on the model.
pub fn should_inspect(req: &RequestHeader, snapshot: &Snapshot) -> bool {
    if req.method != http::Method::POST {
        return false;
    }
    let json = match req.headers.get(http::header::CONTENT_TYPE) {
        None => true,
        Some(v) => v.to_str().map(|s| s.contains("json")).unwrap_or(false),
    };
    let path = req.uri.path();
    json && (ApiKind::from_path(path).is_some() || snapshot.path_needs_model(path))
}

/// Read the whole request body, at most `cap` bytes.
///
/// Answers `Expect: 100-continue` first. A declared `content-length` over the cap, or a body
/// that grows past it, is [`SluiceError::BodyTooLarge`]; the rest of the body is then drained
/// (up to 256 MiB) so the client reads the 413 instead of a reset. Invalid chunked framing is
/// [`SluiceError::BadRequestFraming`], a client that left [`SluiceError::ClientGone`].
pub async fn read_body(session: &mut Session, cap: usize) -> Result<Bytes, SluiceError> {
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if let Some(len) = declared.filter(|len| *len > cap) {
        if !expects_continue {
            drain(session, len).await;
        } else {
            // The client waits for our go-ahead: answer without reading, then close.
            session.set_keepalive(None);
        }
        return Err(SluiceError::BodyTooLarge(cap));
    }
    if expects_continue {
        let downstream = session.as_downstream_mut();
        downstream.set_close_on_response_before_downstream_finish(false);
        let sent = downstream.write_continue_response().await;
        downstream.set_close_on_response_before_downstream_finish(true);
        sent.map_err(|_| SluiceError::Internal)?;
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(16 * 1024).min(cap));
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > cap {
                    let seen = buf.len() + chunk.len();
                    drain(session, seen).await;
                    return Err(SluiceError::BodyTooLarge(cap));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(buf.freeze()),
            Err(e) => {
                // The body's framing is lost either way: the connection cannot carry another
                // request (`connection: close` on the answer, if any).
                session.set_keepalive(None);
                return Err(super::classify::client_error(&e));
            }
        }
    }
}

async fn drain(session: &mut Session, mut seen: usize) {
    while seen <= MAX_DRAIN_BYTES {
        match session.read_request_body().await {
            Ok(Some(chunk)) => seen += chunk.len(),
            Ok(None) => return,
            Err(_) => break,
        }
    }
    session.set_keepalive(None);
}

#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    max_output_tokens: Option<u64>,
    /// Ollama: `options.num_predict`, its output ceiling (Ollama docs/api.md, "Parameters").
    /// Read leniently: a body whose `options` is not Ollama's object is still forwarded.
    #[serde(default)]
    options: Option<serde_json::Value>,
    /// Absent (`None`), `null` (`Some(None)`) or an object.
    #[serde(default, deserialize_with = "present")]
    stream_options: Option<Option<StreamOptions>>,
    /// Gemini: `generationConfig.maxOutputTokens` is the output ceiling.
    #[serde(default, rename = "generationConfig")]
    generation_config: Option<GenerationConfig>,
}

/// Gemini `GenerationConfig` (Gemini API reference, "Generating content").
#[derive(Deserialize)]
struct GenerationConfig {
    #[serde(default, rename = "maxOutputTokens")]
    max_output_tokens: Option<u64>,
}

/// For `Option<Option<T>>` fields: tells an explicit `null` (`Some(None)`) from an absent
/// member (`None`, through `#[serde(default)]`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
    #[serde(flatten)]
    _rest: std::collections::HashMap<String, IgnoredAny>,
}

/// Learn the fields sluice needs from a JSON body and rewrite it if needed. Returns what was
/// learned and the body to forward (the same `Bytes` when unchanged).
///
/// Rewrite: an OpenAI chat/completions request with `stream: true` that does not ask for
/// `stream_options.include_usage` gets it (so the upstream reports exact usage); the usage
/// chunk is then hidden from the client by the response stage.
///
/// Errors: [`SluiceError::BadJson`] when the body is not a JSON object.
pub fn inspect(api: Option<ApiKind>, body: Bytes) -> Result<(Inspected, Bytes), SluiceError> {
    // serde would also read a struct from a JSON array (fields by position): refuse it first.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(SluiceError::BadJson(
            "the request body must be a JSON object".to_owned(),
        ));
    }
    let peek: Peek<'_> =
        serde_json::from_slice(&body).map_err(|e| SluiceError::BadJson(e.to_string()))?;
    let mut out = Inspected {
        model: peek.model.map(Cow::into_owned),
        // Ollama chat and generate stream when `stream` is absent.
        stream: peek
            .stream
            .unwrap_or_else(|| api.is_some_and(ApiKind::streams_by_default)),
        max_tokens: peek
            .max_tokens
            .or(peek.max_completion_tokens)
            .or(peek.max_output_tokens)
            // -1 (no limit) and -2 (fill the context) are not ceilings.
            .or_else(|| {
                let n = peek.options.as_ref()?.get("num_predict")?.as_u64();
                n.filter(|n| *n > 0)
            })
            .or(peek.generation_config.and_then(|g| g.max_output_tokens)),
        injected_include_usage: false,
    };
    let wants_usage = peek
        .stream_options
        .as_ref()
        .and_then(|o| o.as_ref()?.include_usage)
        .unwrap_or(false);
    let chat_like = matches!(api, Some(ApiKind::OpenAiChat | ApiKind::OpenAiCompletions));
    if !(chat_like && out.stream && !wants_usage) {
        return Ok((out, body));
    }
    out.injected_include_usage = true;
    // Absent: insert the member. Present (an object, or null): rewrite it in place, never
    // add a second `stream_options` (JSON parsers keep the last duplicate).
    let rewritten = if peek.stream_options.is_none() {
        insert_first_member(&body, br#""stream_options":{"include_usage":true}"#)
    } else {
        set_include_usage(&body)?
    };
    Ok((out, rewritten))
}

/// Insert `member` as the first member of the JSON object in `body` (which was just parsed as
/// an object, so its first non-blank byte is `{`). One copy of the body, no re-serialization.
fn insert_first_member(body: &Bytes, member: &[u8]) -> Bytes {
    let open = body.iter().position(|b| *b == b'{').unwrap_or(0);
    let rest = &body[open + 1..];
    let empty = rest.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
    let mut out = BytesMut::with_capacity(body.len() + member.len() + 1);
    out.extend_from_slice(&body[..=open]);
    out.extend_from_slice(member);
    if !empty {
        out.extend_from_slice(b",");
    }
    out.extend_from_slice(rest);
    out.freeze()
}

/// What the path says about a request of an API that names the model (and the streaming) in
/// the path rather than the body (`body`: the request body, for what else such an API keeps
/// elsewhere). Other paths leave `fields` alone.
/// - Gemini (`/v1beta/models/{model}:{method}`, Gemini API reference): the model (when the
///   body named none) and, for `generateContent` / `streamGenerateContent`, whether it
///   streams (the method decides; a body's `stream` is not part of that API).
/// - Bedrock Runtime (`/model/{modelId}/{operation}`): the percent-decoded model id, the
///   streaming (`converse-stream`, `invoke-with-response-stream`) and the output ceiling of
///   a Converse body (`inferenceConfig.maxTokens`).
pub fn from_path(fields: &mut Inspected, path: &str, api: Option<ApiKind>, body: &[u8]) {
    if let Some((model, stream)) = crate::provider::bedrock::model_from_path(path) {
        fields.model = Some(model);
        fields.stream = stream;
        fields.max_tokens = crate::provider::bedrock::max_tokens(body);
        return;
    }
    let Some((model, method)) = crate::provider::gemini_path(path) else {
        return;
    };
    if fields.model.is_none() {
        fields.model = Some(model.to_owned());
    }
    if api == Some(ApiKind::GeminiGenerateContent) {
        fields.stream = method == "streamGenerateContent";
    }
}

/// Rewrite an existing `stream_options` to `include_usage: true` (rare: re-serializes).
fn set_include_usage(body: &Bytes) -> Result<Bytes, SluiceError> {
    let mut v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| SluiceError::BadJson(e.to_string()))?;
    if let Some(opts) = v.get_mut("stream_options").and_then(|o| o.as_object_mut()) {
        opts.insert("include_usage".into(), serde_json::Value::Bool(true));
    } else if let Some(obj) = v.as_object_mut() {
        obj.insert(
            "stream_options".into(),
            serde_json::json!({"include_usage": true}),
        );
    }
    serde_json::to_vec(&v)
        .map(Bytes::from)
        .map_err(|_| SluiceError::Internal)
}

/// The body with its `model` replaced by `model` (a pool's `model_map`): one copy per pool that
/// renames, re-serialized.
pub fn with_model(body: &Bytes, model: &str) -> Result<Bytes, SluiceError> {
    let mut v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| SluiceError::BadJson(e.to_string()))?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("model".into(), serde_json::Value::String(model.to_owned()));
    }
    serde_json::to_vec(&v)
        .map(Bytes::from)
        .map_err(|_| SluiceError::Internal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn run(api: ApiKind, body: &str) -> (Inspected, Value) {
        let (i, b) = inspect(Some(api), Bytes::from(body.to_owned())).unwrap();
        (i, serde_json::from_slice(&b).unwrap())
    }

    #[test]
    fn learns_fields() {
        let (i, _) = run(
            ApiKind::AnthropicMessages,
            r#"{"model":"claude-x","max_tokens":64,"stream":true,"messages":[]}"#,
        );
        assert_eq!(i.model.as_deref(), Some("claude-x"));
        assert_eq!(i.max_tokens, Some(64));
        assert!(i.stream && !i.injected_include_usage);
        let (i, _) = run(
            ApiKind::OpenAiChat,
            r#"{"model":"m","max_completion_tokens":9}"#,
        );
        assert_eq!(i.max_tokens, Some(9));
        assert!(!i.stream);
        // Ollama: `stream` defaults to true for chat and generate, not for embed.
        let (i, _) = run(
            ApiKind::OllamaChat,
            r#"{"model":"llama3.2","messages":[],"options":{"num_predict":12}}"#,
        );
        assert!(i.stream && !i.injected_include_usage);
        assert_eq!(i.max_tokens, Some(12));
        let (i, _) = run(ApiKind::OllamaGenerate, r#"{"model":"m","stream":false}"#);
        assert!(!i.stream);
        let (i, _) = run(
            ApiKind::OllamaGenerate,
            r#"{"model":"m","options":{"num_predict":-1}}"#,
        );
        assert!(i.stream);
        assert_eq!(i.max_tokens, None);
        let (i, _) = run(ApiKind::OllamaEmbed, r#"{"model":"m","input":"x"}"#);
        assert!(!i.stream);
    }

    #[test]
    fn adds_include_usage_only_when_missing() {
        let (i, v) = run(
            ApiKind::OpenAiChat,
            r#" {"model":"m","stream":true,"messages":[]}"#,
        );
        assert!(i.injected_include_usage);
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], "m");
        let (i, v) = run(
            ApiKind::OpenAiChat,
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":false}}"#,
        );
        assert!(i.injected_include_usage);
        assert_eq!(v["stream_options"]["include_usage"], true);
        let body = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#;
        let (i, b) = inspect(Some(ApiKind::OpenAiChat), Bytes::from(body)).unwrap();
        assert!(!i.injected_include_usage);
        assert_eq!(b, body.as_bytes());
        // Not streamed: stream_options would be a 400 upstream, never added.
        // `null` is absent: replaced, never a second `stream_options` member.
        let body = r#"{"model":"m","stream":true,"stream_options":null}"#;
        let (i, b) = inspect(Some(ApiKind::OpenAiChat), Bytes::from(body)).unwrap();
        assert!(i.injected_include_usage);
        assert_eq!(
            String::from_utf8_lossy(&b)
                .matches("stream_options")
                .count(),
            1
        );
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        let (i, v) = run(ApiKind::OpenAiChat, r#"{"model":"m"}"#);
        assert!(!i.injected_include_usage);
        assert!(v.get("stream_options").is_none());
    }

    /// Found by `props::json_that_is_not_an_object_is_refused`: serde read `Peek` from an
    /// array, so `[null,true]` on chat was "streamed" and got a member spliced into the array.
    #[test]
    fn an_array_body_is_bad_json() {
        for body in ["[]", " [null,true]", "\"x\"", "7"] {
            let r = inspect(Some(ApiKind::OpenAiChat), Bytes::from(body));
            assert!(matches!(r, Err(SluiceError::BadJson(_))), "{body}");
        }
    }

    /// Found by `props::objects_keep_their_members_and_gain_include_usage_when_asked_for`:
    /// `"stream_options": null` read as absent, so a second `stream_options` was inserted and
    /// the upstream (keeping the last, null) sent no usage.
    #[test]
    fn null_stream_options_is_replaced_not_duplicated() {
        let (i, b) = inspect(
            Some(ApiKind::OpenAiChat),
            Bytes::from_static(br#"{"stream":true,"stream_options":null}"#),
        )
        .unwrap();
        assert!(i.injected_include_usage);
        let text = String::from_utf8(b.to_vec()).unwrap();
        assert_eq!(text.matches("stream_options").count(), 1, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
    }

    #[test]
    fn gemini_model_stream_and_ceiling_from_path_and_generation_config() {
        let path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent";
        let api = ApiKind::from_path(path);
        assert_eq!(api, Some(ApiKind::GeminiGenerateContent));
        let body = r#"{"contents":[],"generationConfig":{"maxOutputTokens":77}}"#;
        let (mut i, b) = inspect(api, Bytes::from(body)).unwrap();
        assert_eq!(b, body.as_bytes());
        from_path(&mut i, path, api, body.as_bytes());
        assert_eq!(i.model.as_deref(), Some("gemini-2.5-flash"));
        assert!(i.stream && !i.injected_include_usage);
        assert_eq!(i.max_tokens, Some(77));
        let path = "/v1beta/models/m1:countTokens";
        let (mut i, _) = inspect(None, Bytes::from_static(b"{}")).unwrap();
        from_path(&mut i, path, ApiKind::from_path(path), b"{}");
        assert_eq!((i.model.as_deref(), i.stream), (Some("m1"), false));
    }

    #[test]
    fn bedrock_model_stream_and_ceiling_from_path_and_inference_config() {
        let path = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream";
        let api = ApiKind::from_path(path);
        let body = r#"{"messages":[],"inferenceConfig":{"maxTokens":300}}"#;
        let (mut i, _) = inspect(api, Bytes::from(body)).unwrap();
        from_path(&mut i, path, api, body.as_bytes());
        assert_eq!(
            i.model.as_deref(),
            Some("anthropic.claude-3-haiku-20240307-v1:0")
        );
        assert!(i.stream);
        assert_eq!(i.max_tokens, Some(300));
        let path = "/model/m/converse";
        from_path(&mut i, path, ApiKind::from_path(path), b"{}");
        assert_eq!((i.stream, i.max_tokens), (false, None));
    }

    #[test]
    fn empty_object_and_bad_json() {
        assert_eq!(
            insert_first_member(&Bytes::from_static(b"{ }"), b"\"a\":1"),
            Bytes::from_static(b"{\"a\":1 }")
        );
        assert!(matches!(
            inspect(
                Some(ApiKind::OpenAiChat),
                Bytes::from_static(b"{\"model\":")
            ),
            Err(SluiceError::BadJson(_))
        ));
    }
}

/// Property tests: arbitrary bytes never panic; any JSON object comes back as the same
/// members, plus `stream_options.include_usage: true` when sluice asks for usage.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    const APIS: [Option<ApiKind>; 7] = [
        None,
        Some(ApiKind::OpenAiChat),
        Some(ApiKind::OpenAiCompletions),
        Some(ApiKind::OpenAiResponses),
        Some(ApiKind::AnthropicMessages),
        Some(ApiKind::Embeddings),
        Some(ApiKind::GeminiGenerateContent),
    ];

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(any::<String>(), inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A request body: the members sluice reads, each absent or well-typed (or, for
    /// `stream_options`, anything an object or null), plus arbitrary others.
    fn request() -> impl Strategy<Value = Map<String, Value>> {
        (
            proptest::option::of(any::<String>()),
            proptest::option::of(any::<bool>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(prop_oneof![
                Just(Value::Null),
                proptest::option::of(any::<bool>()).prop_map(|b| {
                    let mut m = Map::new();
                    m.insert("x".into(), Value::from(1));
                    if let Some(b) = b {
                        m.insert("include_usage".into(), Value::Bool(b));
                    }
                    Value::Object(m)
                }),
            ]),
            proptest::collection::btree_map("[a-z_]{1,12}", json(), 0..5),
        )
            .prop_map(|(model, stream, max_tokens, options, others)| {
                let mut m: Map<String, Value> = others.into_iter().collect();
                let known = [
                    ("model", model.map(Value::String)),
                    ("stream", stream.map(Value::Bool)),
                    ("max_tokens", max_tokens.map(Value::from)),
                    ("stream_options", options),
                ];
                for (k, v) in known {
                    m.remove(k);
                    if let Some(v) = v {
                        m.insert(k.into(), v);
                    }
                }
                m
            })
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]

        #[test]
        fn arbitrary_bytes_never_panic(
            raw in proptest::collection::vec(any::<u8>(), 0..256),
            api in proptest::sample::select(&APIS[..]),
        ) {
            let _ = inspect(api, Bytes::from(raw));
        }

        #[test]
        fn json_that_is_not_an_object_is_refused(
            v in json().prop_filter("not an object", |v| !v.is_object()),
            api in proptest::sample::select(&APIS[..]),
        ) {
            let r = inspect(api, Bytes::from(v.to_string()));
            prop_assert!(matches!(r, Err(SluiceError::BadJson(_))), "{v}");
        }

        #[test]
        fn objects_keep_their_members_and_gain_include_usage_when_asked_for(
            members in request(),
            api in proptest::sample::select(&APIS[..]),
            pretty in any::<bool>(),
        ) {
            let input = Value::Object(members.clone());
            let text = if pretty {
                serde_json::to_string_pretty(&input).unwrap()
            } else {
                input.to_string()
            };
            let body = Bytes::from(text);
            let (learned, out) = inspect(api, body.clone()).unwrap();
            let model = members.get("model").and_then(Value::as_str).map(str::to_owned);
            prop_assert_eq!(learned.model, model);
            prop_assert_eq!(learned.stream, members.get("stream") == Some(&Value::Bool(true)));
            let got: Value = serde_json::from_slice(&out).unwrap();
            let Value::Object(mut got) = got else {
                return Err(TestCaseError::fail("not an object"));
            };
            if !learned.injected_include_usage {
                prop_assert_eq!(out, body);
                return Ok(());
            }
            prop_assert!(matches!(api, Some(ApiKind::OpenAiChat | ApiKind::OpenAiCompletions)));
            let options = got.remove("stream_options").unwrap_or_default();
            prop_assert_eq!(options.get("include_usage"), Some(&Value::Bool(true)));
            let mut want = members;
            let before = want.remove("stream_options");
            if let Some(Value::Object(before)) = before {
                // Other stream options are kept.
                for (k, v) in before.iter().filter(|(k, _)| *k != "include_usage") {
                    prop_assert_eq!(options.get(k), Some(v));
                }
            }
            prop_assert_eq!(got, want);
        }
    }
}
