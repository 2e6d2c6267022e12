//! Azure OpenAI: `api-key` header; an OpenAI SDK's `/v1/<op>` becomes
//! `/openai/deployments/<model>/<op>?api-version=<v>` (deployment named as the model), other
//! paths `/openai/<rest>?api-version=<v>`. Errors use OpenAI's shape.

use super::{join, ErrorStyle, Provider};
use pingora_http::RequestHeader;

/// The Azure OpenAI provider.
pub struct AzureOpenAi;

const DEPLOYMENT_OPS: [&str; 4] = ["chat/completions", "completions", "embeddings", "audio/"];

impl Provider for AzureOpenAi {
    fn set_auth(&self, req: &mut RequestHeader, key: &str) -> pingora_error::Result<()> {
        req.insert_header("api-key", key)
    }

    fn upstream_path(
        &self,
        base: &str,
        pq: &str,
        model: Option<&str>,
        api_version: Option<&str>,
    ) -> String {
        let (path, query) = match pq.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (pq, None),
        };
        let rest = path
            .strip_prefix("/v1/")
            .unwrap_or(path.trim_start_matches('/'));
        let mut out = match model {
            Some(m) if DEPLOYMENT_OPS.iter().any(|op| rest.starts_with(op)) => {
                join(base, &format!("/openai/deployments/{m}/{rest}"))
            }
            _ => join(base, &format!("/openai/{rest}")),
        };
        let mut sep = '?';
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
            sep = '&';
        }
        if let Some(v) = api_version {
            out.push(sep);
            out.push_str("api-version=");
            out.push_str(v);
        }
        out
    }

    fn error_style(&self) -> ErrorStyle {
        ErrorStyle::OpenAi
    }

    fn accepts_model(&self, model: &str) -> bool {
        is_deployment_name(model)
    }
}

/// Whether `name` can be an Azure OpenAI deployment name, and so be placed as one path segment
/// of `/openai/deployments/{deployment-id}/...` (Azure OpenAI REST API reference) without
/// escaping: 1 to 64 characters, letters, digits, `-`, `_` and `.` (the characters the Azure
/// portal and the Cognitive Services management API accept in deployment names), starting with
/// a letter or digit (as the management API's `^[a-zA-Z0-9][a-zA-Z0-9_.-]*$` name pattern), so
/// `.` and `..` are never one.
pub fn is_deployment_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.len() <= 64
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}
