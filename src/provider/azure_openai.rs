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
}
