//! Golden fixtures: every stream replayed whole, split at every byte boundary, byte by byte,
//! and with `\r\n` / `\r` line ends; hide mode must reproduce the stream without include_usage.

use super::{fixture, fixture_dir, replay, replay_whole, u, Outcome};
use crate::usage::{ApiKind, Usage};

struct Case {
    file: &'static str,
    api: ApiKind,
    usage: Option<Usage>,
    text: &'static str,
    completed: bool,
    saw_error: bool,
    events: u64,
    /// In hide mode the client must receive exactly this file.
    hidden: Option<&'static str>,
}

const fn case(
    file: &'static str,
    api: ApiKind,
    usage: Option<Usage>,
    text: &'static str,
    events: u64,
) -> Case {
    Case {
        file,
        api,
        usage,
        text,
        completed: true,
        saw_error: false,
        events,
        hidden: None,
    }
}

fn cases() -> Vec<Case> {
    use ApiKind::*;
    vec![
        Case {
            hidden: Some("openai_chat/llmock_include_usage.hidden.sse"),
            ..case(
                "openai_chat/llmock_include_usage.sse",
                OpenAiChat,
                Some(u(21, 17, 0, 0, 0)),
                "Hello! The café is open — 日本語 too.{\"city\":\"Paris\",\"unit\":\"c\"}",
                16,
            )
        },
        case(
            "openai_chat/llmock_include_usage.hidden.sse",
            OpenAiChat,
            None,
            "Hello! The café is open — 日本語 too.{\"city\":\"Paris\",\"unit\":\"c\"}",
            15,
        ),
        Case {
            hidden: Some("openai_chat/openai_include_usage.hidden.sse"),
            ..case(
                "openai_chat/openai_include_usage.sse",
                OpenAiChat,
                Some(u(1234, 260, 1024, 0, 192)),
                "Bonjour — ça va? 日本語 🌧️ done.",
                10,
            )
        },
        case(
            "openai_chat/openai_include_usage.hidden.sse",
            OpenAiChat,
            None,
            "Bonjour — ça va? 日本語 🌧️ done.",
            9,
        ),
        case(
            "openai_chat/llmock_capture_include_usage.sse",
            OpenAiChat,
            Some(u(6, 13, 0, 0, 0)),
            "Hello! gpt-4o-mini received: Say hello — café naïve 日本",
            13,
        ),
        case(
            "openai_chat/llmock_capture_tools.sse",
            OpenAiChat,
            Some(u(7, 5, 0, 0, 0)),
            "{\"city\": \"mock-city\"}",
            7,
        ),
        case(
            "openai_chat/compat_no_usage_tools.sse",
            OpenAiChat,
            None,
            "{\"city\":\"Zürich\"}{\"tz\":\"CET\"}",
            7,
        ),
        case(
            "openai_chat/completions_include_usage.sse",
            OpenAiCompletions,
            Some(u(5, 7, 0, 0, 0)),
            "\n\nOnce upon a time",
            5,
        ),
        Case {
            completed: false,
            saw_error: true,
            ..case(
                "openai_chat/error_in_stream.sse",
                OpenAiChat,
                None,
                "I can't help with that.",
                4,
            )
        },
        case(
            "openai_responses/llmock_capture.sse",
            OpenAiResponses,
            Some(u(4, 9, 0, 0, 0)),
            "LLMock says hello from gpt-4.1-mini.",
            13,
        ),
        case(
            "openai_responses/llmock_capture_tools.sse",
            OpenAiResponses,
            Some(u(7, 5, 0, 0, 0)),
            "{\"city\": \"mock-city\"}",
            8,
        ),
        case(
            "openai_responses/reasoning_cached_tools.sse",
            OpenAiResponses,
            Some(u(2150, 310, 2048, 0, 256)),
            "Checking the weather in Zürich — one moment.{\"city\":\"Zürich\"}",
            19,
        ),
        case(
            "openai_responses/incomplete.sse",
            OpenAiResponses,
            Some(u(40, 16, 0, 0, 0)),
            "A long story that",
            7,
        ),
        Case {
            completed: false,
            saw_error: true,
            ..case("openai_responses/failed.sse", OpenAiResponses, None, "", 4)
        },
        case(
            "anthropic/llmock_capture.sse",
            AnthropicMessages,
            Some(u(1, 14, 0, 0, 0)),
            "Hi there. This is a simulated reply from claude-sonnet-4-5.",
            15,
        ),
        case(
            "anthropic/llmock_capture_tools.sse",
            AnthropicMessages,
            Some(u(7, 5, 0, 0, 0)),
            "{\"city\": \"mock-city\"}",
            7,
        ),
        case(
            "anthropic/thinking_cache.sse",
            AnthropicMessages,
            Some(u(12, 187, 4096, 2048, 0)),
            "The user greets me in German. Reply briefly.Grüße aus Köln 🌧",
            13,
        ),
        case(
            "anthropic/server_tool_delta_override.sse",
            AnthropicMessages,
            Some(u(10682, 510, 0, 0, 0)),
            "Let me search.{\"query\": \"weather NYC\"} Sunny, 21°C.",
            15,
        ),
        Case {
            completed: false,
            saw_error: true,
            ..case(
                "anthropic/overloaded_error.sse",
                AnthropicMessages,
                Some(u(25, 1, 0, 0, 0)),
                "Hello!",
                6,
            )
        },
        // Gemini has no terminal event: `completed` stays false; whether the stream ended
        // after its final content is checked by `gemini_streams_end_after_final_content`.
        Case {
            completed: false,
            ..case(
                "gemini/sdk_stream_parts.sse",
                GeminiGenerateContent,
                Some(u(35100, 500, 0, 0, 0)),
                "Part A Part B Part C!",
                3,
            )
        },
        Case {
            completed: false,
            ..case(
                "gemini/sdk_stream_thoughts.sse",
                GeminiGenerateContent,
                Some(u(205, 40, 180, 0, 15)),
                "Thinking step 1...Hello world!",
                2,
            )
        },
        Case {
            completed: false,
            ..case(
                "gemini/sdk_stream_no_finish.sse",
                GeminiGenerateContent,
                None,
                "Hello world",
                2,
            )
        },
        Case {
            completed: false,
            saw_error: true,
            ..case(
                "gemini/sdk_stream_error.sse",
                GeminiGenerateContent,
                Some(u(100, 10, 0, 0, 0)),
                "Part A ",
                2,
            )
        },
    ]
}

/// The outcome a case must produce for `raw` (the fixture, or a line-end variant of it).
fn expected(case: &Case, hide: bool, raw: &[u8], hidden: Option<&[u8]>) -> Outcome {
    Outcome {
        usage: case.usage,
        text: case.text.to_owned(),
        completed: case.completed,
        saw_error: case.saw_error,
        events: case.events,
        malformed: 0,
        oversized: 0,
        forwarded: match (hide, hidden) {
            (true, Some(hidden)) => hidden.to_vec(),
            _ => raw.to_vec(),
        },
    }
}

/// Runs `check` on each case in pass-through mode and, when it has a hidden file, hide mode.
fn each_mode(mut check: impl FnMut(&Case, bool, &[u8], Option<&[u8]>)) {
    for case in cases() {
        let raw = fixture(case.file);
        let hidden = case.hidden.map(fixture);
        check(&case, false, &raw, None);
        if hidden.is_some() {
            check(&case, true, &raw, hidden.as_deref());
        }
    }
}

#[test]
fn every_sse_fixture_has_a_case() {
    let listed: Vec<&str> = cases().iter().map(|c| c.file).collect();
    for dir in ["openai_chat", "openai_responses", "anthropic", "gemini"] {
        for entry in std::fs::read_dir(fixture_dir().join(dir)).unwrap() {
            let name = format!("{dir}/{}", entry.unwrap().file_name().to_string_lossy());
            if name.ends_with(".sse") {
                assert!(
                    listed.contains(&name.as_str()),
                    "{name} has no expected usage"
                );
            }
        }
    }
}

#[test]
fn fixtures_whole() {
    each_mode(|case, hide, raw, hidden| {
        let got = replay_whole(case.api, hide, raw);
        assert_eq!(
            got,
            expected(case, hide, raw, hidden),
            "{} hide={hide}",
            case.file
        );
    });
}

#[test]
fn fixtures_split_at_every_byte_boundary() {
    each_mode(|case, hide, raw, hidden| {
        let want = expected(case, hide, raw, hidden);
        for cut in 0..=raw.len() {
            let got = replay(case.api, hide, [&raw[..cut], &raw[cut..]]);
            assert_eq!(got, want, "{} hide={hide} cut={cut}", case.file);
        }
    });
}

#[test]
fn fixtures_byte_by_byte() {
    each_mode(|case, hide, raw, hidden| {
        let got = replay(case.api, hide, raw.chunks(1));
        assert_eq!(
            got,
            expected(case, hide, raw, hidden),
            "{} hide={hide}",
            case.file
        );
    });
}

fn with_line_end(raw: &[u8], end: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() * 2);
    for &b in raw {
        if b == b'\n' {
            out.extend_from_slice(end);
        } else {
            out.push(b);
        }
    }
    out
}

#[test]
fn fixtures_with_crlf_and_cr_line_ends_split_everywhere() {
    each_mode(|case, hide, raw, hidden| {
        for end in [&b"\r\n"[..], &b"\r"[..]] {
            let raw = with_line_end(raw, end);
            let hidden = hidden.map(|h| with_line_end(h, end));
            let want = expected(case, hide, &raw, hidden.as_deref());
            for cut in 0..=raw.len() {
                let got = replay(case.api, hide, [&raw[..cut], &raw[cut..]]);
                assert_eq!(got, want, "{} hide={hide} end={end:?} cut={cut}", case.file);
            }
        }
    });
}

#[test]
fn fixtures_with_bom_and_three_way_splits() {
    each_mode(|case, hide, raw, hidden| {
        let mut with_bom = b"\xEF\xBB\xBF".to_vec();
        with_bom.extend_from_slice(raw);
        let hidden = hidden.map(|h| [&b"\xEF\xBB\xBF"[..], h].concat());
        let want = expected(case, hide, &with_bom, hidden.as_deref());
        // Cuts at 1 and 2 split the BOM itself; the others split lines and characters.
        for first in [1, 2, 3, 7, 50] {
            for len in [1, 2, 5, 13, 64] {
                let a = first.min(with_bom.len());
                let b = (a + len).min(with_bom.len());
                let got = replay(
                    case.api,
                    hide,
                    [&with_bom[..a], &with_bom[a..b], &with_bom[b..]],
                );
                assert_eq!(got, want, "{} hide={hide} cuts={a},{b}", case.file);
            }
        }
    });
}

/// Gemini streams complete by their last chunk (every candidate's `finishReason`, and
/// `usageMetadata`), at every split and with `\r\n` line ends (what the API sends).
#[test]
fn gemini_streams_end_after_final_content() {
    for (file, whole) in [
        ("gemini/sdk_stream_parts.sse", true),
        ("gemini/sdk_stream_thoughts.sse", true),
        ("gemini/sdk_stream_no_finish.sse", false),
        ("gemini/sdk_stream_error.sse", false),
    ] {
        for raw in [fixture(file), with_line_end(&fixture(file), b"\r\n")] {
            for cut in 0..=raw.len() {
                let mut acc = crate::usage::SseAccountant::new(
                    ApiKind::GeminiGenerateContent,
                    false,
                    1 << 20,
                );
                acc.push(&bytes::Bytes::copy_from_slice(&raw[..cut]));
                acc.push(&bytes::Bytes::copy_from_slice(&raw[cut..]));
                acc.finish();
                assert_eq!(
                    acc.ended_after_final_content(true),
                    whole,
                    "{file} cut={cut}"
                );
            }
            // Cut before its last event, no stream is whole.
            let last = raw.len() - 10;
            let mut acc =
                crate::usage::SseAccountant::new(ApiKind::GeminiGenerateContent, false, 1 << 20);
            acc.push(&bytes::Bytes::copy_from_slice(&raw[..last]));
            acc.finish();
            assert!(!acc.ended_after_final_content(true), "{file} cut at {last}");
        }
    }
}
