//! Attribute values of the OpenTelemetry GenAI semantic conventions
//! (<https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/>): the operation name of
//! each API sluice accounts, and the provider name of each pool's provider.

use crate::config::schema::ProviderKind;
use crate::usage::ApiKind;

// The GenAI attribute names. `opentelemetry-semantic-conventions` 0.33 deprecates its GenAI
// constants (moved to <https://github.com/open-telemetry/semantic-conventions-genai>), so they
// are spelled here, as that repository publishes them.

/// `gen_ai.operation.name`.
pub const GEN_AI_OPERATION_NAME: &str = "gen_ai.operation.name";
/// `gen_ai.provider.name` (formerly `gen_ai.system`).
pub const GEN_AI_PROVIDER_NAME: &str = "gen_ai.provider.name";
/// `gen_ai.request.model`.
pub const GEN_AI_REQUEST_MODEL: &str = "gen_ai.request.model";
/// `gen_ai.response.model`.
pub const GEN_AI_RESPONSE_MODEL: &str = "gen_ai.response.model";
/// `gen_ai.usage.input_tokens`.
pub const GEN_AI_USAGE_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
/// `gen_ai.usage.output_tokens`.
pub const GEN_AI_USAGE_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";

/// `gen_ai.operation.name` of an API call: `chat`, `text_completion`, `embeddings` or
/// `generate_content` (Gemini), the convention's well-known values.
pub fn operation(api: ApiKind) -> &'static str {
    match api {
        ApiKind::OpenAiChat
        | ApiKind::OpenAiResponses
        | ApiKind::AnthropicMessages
        | ApiKind::OllamaChat
        | ApiKind::BedrockConverse
        | ApiKind::BedrockInvoke => "chat",
        ApiKind::OpenAiCompletions | ApiKind::OllamaGenerate => "text_completion",
        ApiKind::Embeddings | ApiKind::OllamaEmbed => "embeddings",
        ApiKind::GeminiGenerateContent => "generate_content",
    }
}

/// `gen_ai.provider.name` of a pool's provider: the convention's well-known values
/// (`openai`, `azure.ai.openai`, `anthropic`, `aws.bedrock`, `gcp.gemini`); Ollama and
/// OpenAI-compatible servers, which it does not list, by their config name.
pub fn provider_name(p: ProviderKind) -> &'static str {
    match p {
        ProviderKind::OpenAi => "openai",
        ProviderKind::AzureOpenAi => "azure.ai.openai",
        ProviderKind::Anthropic => "anthropic",
        ProviderKind::OpenAiCompatible => "openai_compatible",
        ProviderKind::Ollama => "ollama",
        ProviderKind::Bedrock => "aws.bedrock",
        ProviderKind::Gemini => "gcp.gemini",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_follow_the_api_of_the_path() {
        let op = |p: &str| ApiKind::from_path(p).map(operation);
        assert_eq!(op("/v1/chat/completions"), Some("chat"));
        assert_eq!(op("/v1/messages"), Some("chat"));
        assert_eq!(op("/v1/completions"), Some("text_completion"));
        assert_eq!(op("/v1/embeddings"), Some("embeddings"));
        assert_eq!(
            op("/v1beta/models/gemini-2.0-flash:generateContent"),
            Some("generate_content")
        );
    }

    #[test]
    fn providers_use_the_conventions_well_known_names() {
        assert_eq!(provider_name(ProviderKind::OpenAi), "openai");
        assert_eq!(provider_name(ProviderKind::Anthropic), "anthropic");
        assert_eq!(provider_name(ProviderKind::AzureOpenAi), "azure.ai.openai");
        assert_eq!(provider_name(ProviderKind::Bedrock), "aws.bedrock");
        assert_eq!(provider_name(ProviderKind::Gemini), "gcp.gemini");
    }
}
