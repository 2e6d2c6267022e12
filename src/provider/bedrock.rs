//! AWS Bedrock Runtime: each attempt re-signed with SigV4 (service `bedrock`, the pool's
//! `region`) with the pool's credentials, or a Bedrock API key sent as the bearer token; the
//! model in the path (`/model/{modelId}/{operation}`); errors as `{"message"}` with the
//! `x-amzn-errortype` header, and in an event stream as an exception message.
//!
//! Sources: AWS Bedrock Runtime API reference
//! (<https://docs.aws.amazon.com/bedrock/latest/APIReference/API_Operations_Amazon_Bedrock_Runtime.html>:
//! `Converse`, `ConverseStream`, `InvokeModel`, `InvokeModelWithResponseStream`, "Common
//! Errors"); AWS "Signature Version 4 for API requests"
//! (<https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv4.html>); Bedrock "API
//! keys" (<https://docs.aws.amazon.com/bedrock/latest/userguide/api-keys.html>: sent as
//! `Authorization: Bearer`); botocore's service model `bedrock-runtime/2023-09-30` (signing
//! name `bedrock`, rest-json errors read from `x-amzn-errortype`).
//!
//! Keys: a pool key (from `env` or `file`, as for every provider) of the form
//! `ACCESS_KEY_ID:SECRET_ACCESS_KEY` or `ACCESS_KEY_ID:SECRET_ACCESS_KEY:SESSION_TOKEN` is an
//! AWS credential and signs; any other value (no `:`) is a Bedrock API key.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use pingora_error::{Error, ErrorType};
use pingora_http::RequestHeader;

use super::{join, ErrorStyle, Provider};

/// SigV4 signing name of the Bedrock Runtime (botocore `signingName`).
pub const SIGNING_NAME: &str = "bedrock";

/// Headers of the client's own SigV4 signature (or session), dropped before re-signing.
pub const CLIENT_SIGNATURE_HEADERS: [&str; 4] = [
    "authorization",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
];

/// Longest model id or ARN accepted in the upstream URL (bytes). Bedrock model ids are under
/// 100 bytes; an inference-profile or provisioned-model ARN is at most 2,048 (botocore's
/// `ConversationalModelId` max length).
const MAX_MODEL_ID_BYTES: usize = 2048;

/// The Bedrock Runtime provider.
pub struct Bedrock;

impl Provider for Bedrock {
    /// Without the request's body and region only a Bedrock API key can be sent (the bearer
    /// token); an AWS credential needs [`Provider::authorize`].
    fn set_auth(&self, req: &mut RequestHeader, key: &str) -> pingora_error::Result<()> {
        self.authorize(req, key, None, None)
    }

    fn upstream_path(&self, base: &str, pq: &str, model: Option<&str>, _: Option<&str>) -> String {
        match (model, operation(pq)) {
            (Some(model), Some(op)) => {
                let query = pq.find('?').map_or("", |q| &pq[q..]);
                let id = percent_encoding::utf8_percent_encode(model, MODEL_ID);
                join(base, &format!("/model/{id}/{op}{query}"))
            }
            _ => join(base, pq),
        }
    }

    fn error_style(&self) -> ErrorStyle {
        ErrorStyle::Bedrock
    }

    fn accepts_model(&self, model: &str) -> bool {
        !model.is_empty()
            && model.len() <= MAX_MODEL_ID_BYTES
            && model.bytes().all(|b| b.is_ascii_graphic())
    }

    fn authorize(
        &self,
        req: &mut RequestHeader,
        key: &str,
        body: Option<&[u8]>,
        region: Option<&str>,
    ) -> pingora_error::Result<()> {
        for h in CLIENT_SIGNATURE_HEADERS {
            req.remove_header(h);
        }
        let mut parts = key.splitn(3, ':');
        let (Some(akid), Some(secret)) = (parts.next(), parts.next()) else {
            return req.insert_header("authorization", format!("Bearer {key}"));
        };
        let token = parts.next().filter(|t| !t.is_empty());
        let region = region.ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "bedrock pool has no region")
        })?;
        sign_v4(req, akid, secret, token, region, body)
    }

    fn model_in_body(&self) -> bool {
        false
    }
}

/// Characters percent-encoded in a model id path segment: all but RFC 3986 unreserved
/// (`:` and `/` of ARNs included), as the AWS SDKs encode URI labels.
const MODEL_ID: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The operation segment of a Bedrock path (`converse`, `converse-stream`, `invoke`,
/// `invoke-with-response-stream`), when `pq` is `/model/{modelId}/{operation}[?query]`.
fn operation(pq: &str) -> Option<&str> {
    let path = pq.split(['?', '#']).next()?;
    let (model, op) = path.strip_prefix("/model/")?.split_once('/')?;
    let known = [
        "converse",
        "converse-stream",
        "invoke",
        "invoke-with-response-stream",
    ];
    (!model.is_empty() && known.contains(&op)).then_some(op)
}

/// The model id and whether the answer streams, from a Bedrock path
/// (`/model/{modelId}/{operation}`): the id percent-decoded (`anthropic.claude-3-haiku-20240307-v1%3A0`
/// is `anthropic.claude-3-haiku-20240307-v1:0`); `converse-stream` and
/// `invoke-with-response-stream` stream. `None` for any other path or an id that is not UTF-8.
pub fn model_from_path(path: &str) -> Option<(String, bool)> {
    let op = operation(path)?;
    let encoded = path.strip_prefix("/model/")?.split_once('/')?.0;
    let model = percent_encoding::percent_decode_str(encoded)
        .decode_utf8()
        .ok()?
        .into_owned();
    let stream = matches!(op, "converse-stream" | "invoke-with-response-stream");
    Some((model, stream))
}

/// The output ceiling a `Converse` / `ConverseStream` body sets (`inferenceConfig.maxTokens`,
/// tokens), for the token limits' reservation; `None` when absent or not a JSON object.
/// Source: Bedrock Runtime API reference, "InferenceConfiguration".
pub fn max_tokens(body: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default, rename = "inferenceConfig")]
        inference_config: Option<Inference>,
    }
    #[derive(serde::Deserialize)]
    struct Inference {
        #[serde(default, rename = "maxTokens")]
        max_tokens: Option<u64>,
    }
    serde_json::from_slice::<Body>(body)
        .ok()?
        .inference_config?
        .max_tokens
}

/// Signs `req` (its `host` already set) with SigV4: `x-amz-date`, `authorization` and, for
/// temporary credentials, `x-amz-security-token` are added. Signed headers: `host`,
/// `content-type` when present, and those the signer adds. `body`: the exact payload (hashed
/// into the signature), or `None` for a body streamed through (`UNSIGNED-PAYLOAD`).
fn sign_v4(
    req: &mut RequestHeader,
    akid: &str,
    secret: &str,
    token: Option<&str>,
    region: &str,
    body: Option<&[u8]>,
) -> pingora_error::Result<()> {
    let fail = |what: &'static str| Error::explain(ErrorType::InternalError, what);
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| fail("sigv4: no host header"))?
        .to_owned();
    let content_type = req
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let pq = req
        .uri
        .path_and_query()
        .map_or_else(|| req.uri.path(), |pq| pq.as_str());
    // The scheme is not part of the canonical request; only host and path-and-query are.
    let url = format!("https://{host}{pq}");
    let mut headers = vec![("host", host.as_str())];
    if let Some(ct) = content_type.as_deref() {
        headers.push(("content-type", ct));
    }
    let payload = match body {
        Some(b) => SignableBody::Bytes(b),
        None => SignableBody::UnsignedPayload,
    };
    let method = req.method.as_str().to_owned();
    let signable = SignableRequest::new(&method, &url, headers.into_iter(), payload)
        .map_err(|_| fail("sigv4: request not signable"))?;
    let identity = Credentials::new(akid, secret, token.map(str::to_owned), None, "sluice").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SIGNING_NAME)
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|_| fail("sigv4: signing parameters"))?
        .into();
    let (instructions, _) = sign(signable, &params)
        .map_err(|_| fail("sigv4: signing failed"))?
        .into_parts();
    let (headers, _) = instructions.into_parts();
    for h in headers {
        req.insert_header(h.name(), h.value())?;
    }
    Ok(())
}

/// The AWS error type (`x-amzn-errortype`, botocore's `ClientError` code) for a sluice error
/// answered with `status`, from the Bedrock Runtime operations' documented errors.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 | 413 => "ValidationException",
        401 => "UnrecognizedClientException",
        403 => "AccessDeniedException",
        404 => "ResourceNotFoundException",
        408 => "ModelTimeoutException",
        429 => "ThrottlingException",
        503 => "ServiceUnavailableException",
        _ => "InternalServerException",
    }
}

/// The exception type of an event stream exception message for `status`: the member names
/// of `ConverseStreamOutput` (`throttlingException`, `validationException`,
/// `serviceUnavailableException`, `internalServerException`).
fn stream_exception_type(status: u16) -> &'static str {
    match status {
        400 | 413 => "validationException",
        429 => "throttlingException",
        503 => "serviceUnavailableException",
        _ => "internalServerException",
    }
}

/// Bedrock error body (rest-json: `{"message": "..."}`; the type goes in `x-amzn-errortype`).
pub(super) fn error_body(message: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "message": message }).to_string())
}

/// A native in-stream exception for an error answered with `status` and carrying
/// `message`: one event stream message with `:message-type: exception`, `:exception-type`
/// and `:content-type: application/json`, payload `{"message": ...}`, which botocore raises
/// as `EventStreamError` with the exception type as its code.
pub fn exception_message(status: u16, message: &str) -> Bytes {
    Bytes::from(crate::usage::encode_eventstream_message(
        &[
            (":exception-type", stream_exception_type(status)),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        &error_body(message),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_and_stream_from_the_path() {
        assert_eq!(
            model_from_path("/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream"),
            Some(("anthropic.claude-3-haiku-20240307-v1:0".into(), true))
        );
        assert_eq!(
            model_from_path("/model/m/converse"),
            Some(("m".into(), false))
        );
        assert_eq!(model_from_path("/model/m/invoke").map(|m| m.1), Some(false));
        assert_eq!(model_from_path("/model//converse"), None);
        assert_eq!(model_from_path("/model/m/other"), None);
    }

    #[test]
    fn max_tokens_from_the_inference_config() {
        assert_eq!(
            max_tokens(br#"{"messages":[],"inferenceConfig":{"maxTokens":300,"temperature":0.1}}"#),
            Some(300)
        );
        assert_eq!(max_tokens(br#"{"messages":[]}"#), None);
        assert_eq!(
            max_tokens(br#"{"inferenceConfig":{"maxTokens":"x"}}"#),
            None
        );
    }

    #[test]
    fn upstream_path_encodes_the_mapped_model() {
        let p = Bedrock;
        assert_eq!(
            p.upstream_path(
                "/base",
                "/model/a%3A0/converse?x=1",
                Some("arn:aws:b/c:1"),
                None
            ),
            "/base/model/arn%3Aaws%3Ab%2Fc%3A1/converse?x=1"
        );
        assert_eq!(p.upstream_path("", "/other", Some("m"), None), "/other");
        assert!(p.accepts_model("us.anthropic.claude-3-5-sonnet-20241022-v2:0"));
        assert!(!p.accepts_model("a b") && !p.accepts_model(""));
    }

    #[test]
    fn signs_with_credentials_or_sends_the_api_key() {
        let mut req = RequestHeader::build("POST", b"/model/m/converse", None).unwrap();
        req.insert_header("host", "bedrock.local:8000").unwrap();
        req.insert_header("authorization", "AWS4-HMAC-SHA256 Credential=vk/...")
            .unwrap();
        req.insert_header("x-amz-date", "20200101T000000Z").unwrap();
        Bedrock
            .authorize(
                &mut req,
                "AKID:SECRET:TOKEN",
                Some(b"{}"),
                Some("us-east-1"),
            )
            .unwrap();
        let auth = req.headers.get("authorization").unwrap().to_str().unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKID/"),
            "{auth}"
        );
        assert!(auth.contains("/us-east-1/bedrock/aws4_request"), "{auth}");
        assert_ne!(req.headers.get("x-amz-date").unwrap(), "20200101T000000Z");
        assert_eq!(req.headers.get("x-amz-security-token").unwrap(), "TOKEN");
        let mut req = RequestHeader::build("POST", b"/model/m/converse", None).unwrap();
        Bedrock
            .authorize(&mut req, "bedrock-api-key", None, None)
            .unwrap();
        assert_eq!(
            req.headers.get("authorization").unwrap(),
            "Bearer bedrock-api-key"
        );
        let mut req = RequestHeader::build("POST", b"/model/m/converse", None).unwrap();
        assert!(Bedrock.authorize(&mut req, "A:S", None, None).is_err());
    }
}
