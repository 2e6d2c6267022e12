//! Ollama golden fixtures (`tests/fixtures/ollama/`, from Ollama's docs/api.md examples):
//! every NDJSON stream replayed whole, split at every byte boundary, byte by byte and with
//! `\r\n` line ends; the non-streamed bodies through the JSON accountant.

use super::{fixture, fixture_dir, replay, u, Case};
use crate::usage::{ApiKind, JsonAccountant, Usage};

fn cases() -> Vec<Case> {
    use ApiKind::*;
    vec![
        Case {
            file: "ollama/chat_stream.ndjson",
            api: OllamaChat,
            usage: Some(u(26, 282, 0, 0, 0)),
            text: "The sky is blue — café 日本語 🌧️",
            completed: true,
            saw_error: false,
            events: 4,
        },
        Case {
            file: "ollama/generate_stream.ndjson",
            api: OllamaGenerate,
            usage: Some(u(26, 259, 0, 0, 0)),
            text: "The sky is \"blue\"\n",
            completed: true,
            saw_error: false,
            events: 4,
        },
        Case {
            file: "ollama/chat_thinking_tools_stream.ndjson",
            api: OllamaChat,
            usage: Some(u(122, 33, 0, 0, 0)),
            text: "The user wants the weather.{\"format\":\"celsius\",\"location\":\"Paris, FR\"}",
            completed: true,
            saw_error: false,
            events: 4,
        },
        Case {
            file: "ollama/error_in_stream.ndjson",
            api: OllamaGenerate,
            usage: None,
            text: "Once upon",
            completed: false,
            saw_error: true,
            events: 3,
        },
        Case {
            // `prompt_eval_count` absent (a prompt served from Ollama's cache): 0 input.
            file: "ollama/generate_length.ndjson",
            api: OllamaGenerate,
            usage: Some(u(0, 1, 0, 0, 0)),
            text: "Hi",
            completed: true,
            saw_error: false,
            events: 2,
        },
    ]
}

#[test]
fn every_ndjson_fixture_has_a_case() {
    let listed: Vec<&str> = cases().iter().map(|c| c.file).collect();
    for entry in std::fs::read_dir(fixture_dir().join("ollama")).unwrap() {
        let name = format!("ollama/{}", entry.unwrap().file_name().to_string_lossy());
        if name.ends_with(".ndjson") {
            assert!(listed.contains(&name.as_str()), "{name} has no case");
        }
    }
}

#[test]
fn ndjson_fixtures_split_at_every_byte_boundary_and_byte_by_byte() {
    for case in cases() {
        let raw = fixture(case.file);
        let want = case.clean(&raw);
        assert_eq!(replay(case.api, false, [&raw[..]]), want, "{}", case.file);
        for cut in 0..=raw.len() {
            let got = replay(case.api, false, [&raw[..cut], &raw[cut..]]);
            assert_eq!(got, want, "{} cut={cut}", case.file);
        }
        assert_eq!(
            replay(case.api, false, raw.chunks(1)),
            want,
            "{}",
            case.file
        );
        // Hide mode is for OpenAI chat only: ignored here.
        assert_eq!(replay(case.api, true, [&raw[..]]), want, "{}", case.file);
    }
}

#[test]
fn ndjson_fixtures_with_crlf_split_everywhere() {
    for case in cases() {
        let raw: Vec<u8> = fixture(case.file)
            .iter()
            .flat_map(|&b| {
                if b == b'\n' {
                    vec![b'\r', b'\n']
                } else {
                    vec![b]
                }
            })
            .collect();
        let want = case.clean(&raw);
        for cut in 0..=raw.len() {
            let got = replay(case.api, false, [&raw[..cut], &raw[cut..]]);
            assert_eq!(got, want, "{} crlf cut={cut}", case.file);
        }
    }
}

#[test]
fn a_stream_cut_inside_a_line_forwards_only_whole_lines() {
    let raw = fixture("ollama/chat_stream.ndjson");
    let second = raw.iter().position(|b| *b == b'\n').unwrap() + 1;
    for cut in second..second + 40 {
        let got = replay(ApiKind::OllamaChat, false, [&raw[..cut]]);
        assert_eq!(got.forwarded, &raw[..second], "cut={cut}");
        assert!(!got.completed && got.usage.is_none());
    }
    // A final line whole but for its `\n` is forwarded, `\n` added.
    let got = replay(ApiKind::OllamaChat, false, [&raw[..raw.len() - 1]]);
    assert_eq!(got.forwarded, raw);
    assert!(got.completed);
}

#[test]
fn ndjson_bodies() {
    let cases: [(&str, ApiKind, Usage, &str); 4] = [
        (
            "ollama/chat.json",
            ApiKind::OllamaChat,
            u(26, 298, 0, 0, 0),
            "Hello! How are you today?",
        ),
        (
            "ollama/chat_tool_calls.json",
            ApiKind::OllamaChat,
            u(122, 33, 0, 0, 0),
            "{\"format\":\"celsius\",\"location\":\"Paris, FR\"}",
        ),
        (
            "ollama/generate.json",
            ApiKind::OllamaGenerate,
            u(26, 290, 0, 0, 0),
            "The sky is blue because it is the color of the sky.",
        ),
        (
            "ollama/embed.json",
            ApiKind::OllamaEmbed,
            u(8, 0, 0, 0, 0),
            "",
        ),
    ];
    for (file, api, usage, text) in cases {
        let raw = fixture(file);
        let mut acc = JsonAccountant::new(api, 1 << 20);
        for piece in raw.chunks(7) {
            acc.push(piece);
        }
        assert_eq!(acc.finish(), Some(usage), "{file}");
        assert_eq!(acc.output_text(), text, "{file}");
    }
}

#[test]
fn ollama_paths() {
    let cases = [
        ("/api/chat", Some(ApiKind::OllamaChat)),
        ("/api/chat/", Some(ApiKind::OllamaChat)),
        ("/ollama/api/generate?x=1", Some(ApiKind::OllamaGenerate)),
        ("/api/embed", Some(ApiKind::OllamaEmbed)),
        ("/api/embeddings", Some(ApiKind::OllamaEmbed)),
        ("/api/tags", None),
        ("/api/show", None),
        ("/api/version", None),
        ("/api/chatx", None),
    ];
    for (path, want) in cases {
        assert_eq!(ApiKind::from_path(path), want, "{path}");
    }
    assert!(ApiKind::OllamaChat.streams_by_default());
    assert!(ApiKind::OllamaGenerate.streams_by_default());
    assert!(!ApiKind::OllamaEmbed.streams_by_default());
    assert!(!ApiKind::OpenAiChat.streams_by_default());
    assert!(crate::usage::is_stream_content_type("application/x-ndjson"));
    assert!(crate::usage::is_stream_content_type(
        "text/event-stream; charset=utf-8"
    ));
    assert!(!crate::usage::is_stream_content_type("application/json"));
}
