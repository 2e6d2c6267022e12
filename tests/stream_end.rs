//! Every stream ends well-formed, through the real proxy: a captured stream of each API
//! (chat, Responses, Anthropic Messages) cut by the upstream at every byte offset, by a TCP
//! reset and by a clean end of body, reaches the client as whole events of the original
//! followed by the API's native error event; a chat stream that lacks only `data: [DONE]`
//! is complete, with exact usage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use futures_util::StreamExt;
use std::path::PathBuf;
use std::time::Duration;
use support::{Behavior, Config, CutEnd, Mock, Pool, Route, Sluice, Tenant};

const KEY_ENV: (&str, &str) = ("SLUICE_TEST_KEY", "sk-real-upstream-key");
const VK: &str = "sk-stream-end-virtual-key";

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap()
}

/// One pool per API on its own mock (a breaker that never opens: resets are the point).
fn config(openai: &Mock, responses: &Mock, anthropic: &Mock) -> String {
    let breaker = "{breaker: {consecutive_failures: 1000000}, timeouts: {idle_ms: 500}}";
    Config::new()
        .pool(Pool::openai("chat", &openai.url()).yaml(breaker))
        .pool(Pool::openai("resp", &responses.url()).yaml(breaker))
        .pool(Pool::anthropic("anth", &anthropic.url()).yaml(breaker))
        .route(Route::prefix("messages", "/v1/messages", &["anth"]))
        .route(Route::prefix("responses", "/v1/responses", &["resp"]))
        .route(Route::prefix("chat", "/v1", &["chat"]))
        .tenant(Tenant::new("t").virtual_key(VK))
        .to_yaml()
}

/// Three mock upstreams (chat, responses, anthropic) and a sluice routing to them.
async fn start() -> (Sluice, Mock, Mock, Mock) {
    let (chat, responses, anthropic) = (
        Mock::start().await,
        Mock::start().await,
        Mock::start().await,
    );
    let s = Sluice::start(&config(&chat, &responses, &anthropic), &[KEY_ENV]);
    (s, chat, responses, anthropic)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Api {
    Chat,
    Responses,
    Anthropic,
}

impl Api {
    fn path_and_body(self) -> (&'static str, serde_json::Value) {
        match self {
            Api::Chat => (
                "/v1/chat/completions",
                serde_json::json!({"model": "gpt-4o-mini", "stream": true,
                    "stream_options": {"include_usage": true},
                    "messages": [{"role": "user", "content": "hi"}]}),
            ),
            Api::Responses => (
                "/v1/responses",
                serde_json::json!({"model": "gpt-4.1-mini", "stream": true, "input": "hi"}),
            ),
            Api::Anthropic => (
                "/v1/messages",
                serde_json::json!({"model": "claude-sonnet-4-5", "stream": true, "max_tokens": 64,
                    "messages": [{"role": "user", "content": "hi"}]}),
            ),
        }
    }

    /// The stream carried its final content (chat: a `finish_reason` and the usage chunk the
    /// request asked for; Anthropic: a `message_delta` with a `stop_reason`), so a clean end
    /// of body there is a complete response even without the terminal event.
    fn final_content_seen(self, events: &[(String, String)]) -> bool {
        let json = |d: &str| serde_json::from_str::<serde_json::Value>(d).unwrap_or_default();
        match self {
            Api::Chat => {
                events
                    .iter()
                    .any(|(_, d)| json(d)["choices"][0]["finish_reason"].is_string())
                    && events.iter().any(|(_, d)| json(d)["usage"].is_object())
            }
            Api::Anthropic => events
                .iter()
                .any(|(n, d)| n == "message_delta" && json(d)["delta"]["stop_reason"].is_string()),
            Api::Responses => false,
        }
    }

    /// The event the official SDK raises its native error class on.
    fn is_native_error(self, (name, data): &(String, String)) -> bool {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
            return false;
        };
        match self {
            Api::Chat => v["error"]["message"].is_string(),
            Api::Responses => {
                name == "error" && v["type"] == "error" && v["error"]["message"].is_string()
            }
            Api::Anthropic => name == "error" && v["type"] == "error" && v["error"].is_object(),
        }
    }
}

/// Strict parse of a whole stream: `Err` unless it ends on a blank line. Events are
/// (`event:` name, `data:` lines joined with `\n`).
fn parse_strict(raw: &[u8]) -> Result<Vec<(String, String)>, String> {
    let text = String::from_utf8_lossy(raw)
        .replace("\r\n", "\n")
        .replace('\r', "\n");
    if text.is_empty() {
        return Ok(Vec::new());
    }
    if !text.ends_with("\n\n") {
        return Err(format!("does not end on a blank line: {text:?}"));
    }
    let mut events = Vec::new();
    for block in text.split("\n\n") {
        let (mut name, mut data, mut any) = (String::new(), Vec::new(), false);
        for line in block
            .split('\n')
            .filter(|l| !l.is_empty() && !l.starts_with(':'))
        {
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
            match field {
                "event" => (name, any) = (value, true),
                "data" => (data.push(value), any = true).1,
                _ => {}
            }
        }
        if any {
            events.push((name, data.join("\n")));
        }
    }
    Ok(events)
}

/// Reads the whole response body (bounded: 20 s), whatever its framing ended with.
async fn body_of(resp: reqwest::Response) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    let read = async {
        while let Some(Ok(chunk)) = stream.next().await {
            out.extend_from_slice(&chunk);
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("body read within 20 s");
    out
}

/// Every offset of `name` for `api`, by reset and by clean EOF, 16 requests at a time.
async fn sweep(s: &Sluice, mock: &Mock, api: Api, name: &str) -> usize {
    let raw = fixture(name);
    let original = parse_strict(&raw).unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let (path, body) = api.path_and_body();
    let mut checked = 0;
    for reset in [false, true] {
        let end = if reset { CutEnd::Reset } else { CutEnd::Eof };
        mock.set(Behavior::CutAt {
            body: raw.clone(),
            end,
        });
        let results = futures_util::stream::iter(0..=raw.len())
            .map(|cut| {
                let req = client
                    .post(format!("{}{path}", s.proxy))
                    .bearer_auth(VK)
                    .header("anthropic-version", "2023-06-01")
                    .header("x-cut-at", cut.to_string())
                    .json(&body);
                async move {
                    let resp = req.send().await.unwrap();
                    assert_eq!(resp.status(), 200, "{name} cut at {cut}");
                    (cut, body_of(resp).await)
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
        for (cut, got) in results {
            let ctx = format!("{name} cut at {cut} (reset {reset})");
            let events = parse_strict(&got).unwrap_or_else(|e| panic!("{ctx}: {e}"));
            // Complete (nothing appended): the whole stream at a clean end, or a clean end
            // right after the final content.
            let complete = !reset && (events == original || api.final_content_seen(&events));
            let before = if complete {
                &events[..]
            } else {
                let (last, before) = events
                    .split_last()
                    .unwrap_or_else(|| panic!("{ctx}: empty"));
                // The native error event, unless the upstream's own error came through.
                assert!(
                    api.is_native_error(last) || upstream_error_seen(&events),
                    "{ctx}: last event {last:?}"
                );
                before
            };
            assert_eq!(before, &original[..before.len()], "{ctx}");
            if cut == raw.len() && !reset {
                assert_eq!(events, original, "{ctx}: the whole stream, nothing added");
            }
            checked += 1;
        }
    }
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_cut_at_every_offset_end_in_their_native_error_event() {
    let (s, chat, responses, anthropic) = start().await;
    let started = std::time::Instant::now();
    let mut n = 0;
    n += sweep(
        &s,
        &anthropic,
        Api::Anthropic,
        "anthropic/llmock_capture_tools.sse",
    )
    .await;
    n += sweep(&s, &chat, Api::Chat, "openai_chat/llmock_capture_tools.sse").await;
    n += sweep(
        &s,
        &responses,
        Api::Responses,
        "openai_responses/failed.sse",
    )
    .await;
    eprintln!("{n} cut streams checked in {:?}", started.elapsed());
}

#[tokio::test]
async fn a_chat_stream_without_done_is_complete_with_exact_usage() {
    let (s, chat, _responses, _anthropic) = start().await;
    let raw = String::from_utf8(fixture("openai_chat/llmock_capture_include_usage.sse")).unwrap();
    let without_done = raw.replace("data: [DONE]\n\n", "");
    assert_ne!(raw, without_done);
    chat.set(Behavior::CutAt {
        body: without_done.clone().into_bytes(),
        end: CutEnd::Eof,
    });
    let (path, body) = Api::Chat.path_and_body();
    let resp = reqwest::Client::new()
        .post(format!("{}{path}", s.proxy))
        .bearer_auth(VK)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = body_of(resp).await;
    assert_eq!(
        String::from_utf8_lossy(&got),
        without_done,
        "nothing appended"
    );
    let exact = s
        .wait_metric(
            "sluice_tokens_total",
            &[("kind", "completion"), ("source", "exact")],
            |v| v > 0.0,
        )
        .await;
    assert!(exact > 0.0);
    assert_eq!(
        s.metric("sluice_tokens_total", &[("source", "estimated")])
            .await,
        0.0
    );
    // The access line is written just after the metrics: poll for it (bounded).
    let logged = |log: &str| log.contains("completed=true") || log.contains("\"completed\":true");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !logged(&s.log()) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(logged(&s.log()), "{}", s.log());
}

/// The upstream's own in-stream error reached the client (`event: error`, a Responses
/// `response.failed`, or a `data:` JSON with an `error` object).
fn upstream_error_seen(events: &[(String, String)]) -> bool {
    events.iter().any(|(name, data)| {
        let v = serde_json::from_str::<serde_json::Value>(data).unwrap_or_default();
        name == "error" || v["type"] == "response.failed" || v["error"].is_object()
    })
}

#[tokio::test]
async fn a_stream_stalled_inside_an_event_ends_on_a_boundary_with_a_timeout_error() {
    let (s, _chat, _responses, anthropic) = start().await;
    let raw = fixture("anthropic/llmock_capture.sse");
    let original = parse_strict(&raw).unwrap();
    // Inside the `ping` event: its `event:` line and part of its data.
    let ping = String::from_utf8_lossy(&raw).find("event: ping").unwrap();
    let cut = ping + "event: ping\ndata: {\"ty".len();
    anthropic.set(Behavior::CutAt {
        body: raw.clone(),
        end: CutEnd::Stall,
    });
    let (path, body) = Api::Anthropic.path_and_body();
    let resp = reqwest::Client::new()
        .post(format!("{}{path}", s.proxy))
        .bearer_auth(VK)
        .header("anthropic-version", "2023-06-01")
        .header("x-cut-at", cut.to_string())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let events = parse_strict(&body_of(resp).await).unwrap();
    let (last, before) = events.split_last().unwrap();
    assert_eq!(before, &original[..before.len()]);
    assert_eq!(
        before.len(),
        2,
        "message_start and content_block_start, not the partial ping"
    );
    assert!(Api::Anthropic.is_native_error(last), "{last:?}");
    assert!(
        last.1.contains("upstream_timeout") || last.1.contains("api_error"),
        "{last:?}"
    );
}

#[tokio::test]
async fn a_plain_json_body_cut_by_the_upstream_reaches_the_client_as_a_broken_transfer() {
    let (s, chat, _responses, _anthropic) = start().await;
    // A whole chat completion (chunked, no content-length), reset after 40 bytes.
    let whole = serde_json::json!({"id": "chatcmpl-cut", "object": "chat.completion",
        "created": 1, "model": "gpt-4o-mini", "choices": [{"index": 0, "finish_reason": "stop",
        "message": {"role": "assistant", "content": "a plain answer cut by its upstream"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}});
    chat.set(Behavior::CutJsonAt {
        body: serde_json::to_vec(&whole).unwrap(),
        end: CutEnd::Reset,
    });
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.proxy))
        .bearer_auth(VK)
        .header("x-cut-at", "40")
        .json(&serde_json::json!({"model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    // Either a native error before any byte of the body, or a transfer the client sees
    // break (no end of its chunked body): never a truncated body framed as whole.
    if resp.status() == 200 {
        let body = tokio::time::timeout(Duration::from_secs(10), resp.bytes())
            .await
            .expect("the transfer ends");
        assert!(
            body.is_err(),
            "a body cut short was framed as complete: {:?}",
            body.map(|b| String::from_utf8_lossy(&b).into_owned())
        );
    } else {
        assert_eq!(resp.status(), 502);
        let err: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["code"], "upstream_error", "{err}");
    }
}

#[tokio::test]
async fn a_passthrough_body_cut_by_the_upstream_is_a_broken_transfer_logged_with_the_status_sent() {
    let (s, chat, _responses, _anthropic) = start().await;
    // A passthrough request (a GET: never inspected) whose 200 answer is reset mid-body.
    chat.set(Behavior::CutJsonAt {
        body: br#"{"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]}"#.to_vec(),
        end: CutEnd::Reset,
    });
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/models", s.proxy))
        .bearer_auth(VK)
        .header("x-cut-at", "30")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = resp
        .headers()
        .get("x-sluice-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("request id")
        .to_owned();
    let body = tokio::time::timeout(Duration::from_secs(10), resp.bytes())
        .await
        .expect("the transfer ends");
    assert!(
        body.is_err(),
        "a body cut short was framed as complete: {body:?}"
    );
    // Its access line says what the client got (the 200 that went out) and why it ended short.
    let line = s.wait_log(&id).await;
    let line = line.lines().find(|l| l.contains(&id)).unwrap().to_owned();
    assert!(line.contains(" status=200 "), "{line}");
    assert!(line.contains(" error=\"upstream_"), "{line}");
    assert!(line.contains(" completed=false "), "{line}");
}
