//! A coalescing client that stops reading a long answer is cut after
//! `cache.max_flight_lag_ms` (a follower with the API's native `fell_behind` error event, the
//! leader's own client closed), counted and logged as cut, and the call goes on for the
//! others.

use super::support::{Behavior, Mock, Sluice};
use super::{chat, first_chunk, plain_config, rest, send, KEY_ENV, VK};
use std::time::{Duration, Instant};

/// A client that posts `body` to `path` on a socket with a small receive buffer, then
/// reads nothing until told: sluice's writes to it stop making progress once its socket
/// buffers are full.
async fn stuck_client(s: &Sluice, path: &str, body: &serde_json::Value) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let addr = s.proxy.trim_start_matches("http://").parse().unwrap();
    let mut conn = sock.connect(addr).await.unwrap();
    let body = serde_json::to_vec(body).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: sluice\r\nauthorization: Bearer {VK}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body).await.unwrap();
    conn
}

/// Content chunks of the burst below: about 17 MB in 1 KB events, far more than a stuck
/// client's socket buffers hold.
const BURST_EVENTS: usize = 16_000;

/// A proxy whose coalesced calls retain `flight_bytes` and cut a client after 300 ms of
/// holding one back, with a client write timeout of `write_timeout_ms` (far longer than the
/// tests wait: only the lag bound can free the others), over a primary that sends one event,
/// then (once its gate opens) [`BURST_EVENTS`] more at once.
fn burst_proxy(
    primary: &Mock,
    fallback: &Mock,
    write_timeout_ms: u64,
    flight_bytes: usize,
) -> Sluice {
    primary.set(Behavior::GatedBurst {
        events: BURST_EVENTS,
        pad: 1000,
    });
    let config = plain_config(primary, fallback)
        .yaml(&format!(
            "server: {{client_write_timeout_ms: {write_timeout_ms}}}"
        ))
        .yaml(&format!(
            "cache: {{max_flight_bytes: {flight_bytes}, max_flight_lag_ms: 300}}"
        ))
        .to_yaml();
    Sluice::start(&config, &[KEY_ENV])
}

/// Once a follower has joined, open the primary's gate: the burst flows.
async fn open_gate_once_coalesced(s: &Sluice, primary: &Mock) {
    s.wait_metric(
        "sluice_coalesced_requests_total",
        &[("route", "chat")],
        |v| v >= 1.0,
    )
    .await;
    primary.gate.notify_one();
}

/// `whole` is the burst's whole answer: every token in order, then `[DONE]`.
fn assert_whole_burst(whole: &str) {
    let mut at = 0;
    for i in 0..BURST_EVENTS {
        let tok = format!("\"tok{i} ");
        at += whole[at..]
            .find(&tok)
            .unwrap_or_else(|| panic!("{tok} missing or out of order"));
    }
    assert!(whole.ends_with("data: [DONE]\n\n"), "the answer is whole");
}

/// Once one client was cut, `sluice_coalesce_clients_cut_total` reads exactly 1.
async fn assert_one_cut(s: &Sluice) {
    let cut = s
        .wait_metric(
            "sluice_coalesce_clients_cut_total",
            &[("route", "chat")],
            |v| v >= 1.0,
        )
        .await;
    assert_eq!(cut, 1.0);
}

/// What a cut client reads once it reads at last, to the end of its connection: the
/// answer's start and never its end (`[DONE]`).
async fn read_cut(mut stuck: tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stuck.read_to_end(&mut seen))
        .await
        .expect("the cut client's connection ends")
        .unwrap();
    let seen = String::from_utf8_lossy(&seen).into_owned();
    assert!(seen.starts_with("HTTP/1.1 200"));
    assert!(seen.contains("\"tok1 "), "it got the answer's start");
    assert!(!seen.contains("[DONE]"), "it did not get the rest");
    seen
}

/// The access line of the cut client whose raw response (head included) is `seen`: it says
/// `error="fell_behind"`, not that the client disconnected, and no disconnect is counted.
async fn assert_cut_logged(s: &Sluice, seen: &str) -> String {
    let id = seen
        .lines()
        .find_map(|l| l.strip_prefix("x-sluice-request-id: "))
        .expect("a request id")
        .trim();
    let needle = format!("request_id={id} ");
    let log = s.wait_log(&needle).await;
    let line = log
        .lines()
        .find(|l| l.contains(&needle))
        .unwrap_or_else(|| panic!("no access line for {id}: {log}"))
        .to_owned();
    assert!(line.contains("error=\"fell_behind\""), "{line}");
    assert!(line.contains("client_disconnected=false"), "{line}");
    assert_eq!(
        s.metric("sluice_client_disconnects_total", &[("route", "chat")])
            .await,
        0.0,
        "a cut is not a disconnect"
    );
    line
}

#[tokio::test]
async fn a_follower_that_stops_reading_is_cut_and_the_call_goes_on_for_the_others() {
    let (primary, fallback) = (Mock::start().await, Mock::start().await);
    let s = burst_proxy(&primary, &fallback, 600_000, 65_536);
    let body = chat("a very long answer");
    let mut leader = send(&s, &body).await;
    let got = first_chunk(&mut leader).await;
    let follower = stuck_client(&s, "/v1/chat/completions", &body).await;
    open_gate_once_coalesced(&s, &primary).await;
    // The leader's client gets the whole answer while the follower still reads nothing.
    assert_whole_burst(&rest(leader, got).await);
    assert_eq!(primary.requests().len(), 1, "one shared upstream call");
    // Counted when it was cut, before it reads again.
    assert_one_cut(&s).await;
    // The follower, reading at last, finds the answer's start, then the native error event
    // on an event boundary, then the end of the connection.
    let seen = read_cut(follower).await;
    let err = seen
        .rfind("data: {\"error\"")
        .expect("a native error event");
    // Before it, the previous chunk ended on an event boundary (`\n\n`, then the chunked
    // framing: CRLF, the error event's own chunk-size line).
    let before = seen[..err]
        .strip_suffix("\r\n")
        .expect("a chunk-size line")
        .trim_end_matches(|c: char| c.is_ascii_hexdigit());
    assert!(before.ends_with("\n\n\r\n"), "on an event boundary");
    assert!(
        seen[err..].contains("\"code\":\"fell_behind\""),
        "{}",
        &seen[err..]
    );
    assert_cut_logged(&s, &seen).await;
}

#[tokio::test]
async fn a_cut_follower_that_never_reads_again_is_logged_as_cut_at_its_write_timeout() {
    let (primary, fallback) = (Mock::start().await, Mock::start().await);
    let s = burst_proxy(&primary, &fallback, 1000, 65_536);
    let body = chat("a very long answer for a hung client");
    let mut leader = send(&s, &body).await;
    let got = first_chunk(&mut leader).await;
    let stuck = stuck_client(&s, "/v1/chat/completions", &body).await;
    open_gate_once_coalesced(&s, &primary).await;
    assert_whole_burst(&rest(leader, got).await);
    assert_one_cut(&s).await;
    // Its blocked write gives up after `server.client_write_timeout_ms`; its line says
    // sluice cut it, not that it left.
    let log = s.wait_log("error=\"fell_behind\"").await;
    let line = log
        .lines()
        .find(|l| l.contains("error=\"fell_behind\""))
        .unwrap_or_else(|| panic!("no cut line: {log}"));
    assert!(line.contains("client_disconnected=false"), "{line}");
    assert!(
        !line.contains("coalesced=\"\""),
        "the follower's line: {line}"
    );
    assert_eq!(
        s.metric("sluice_client_disconnects_total", &[("route", "chat")])
            .await,
        0.0
    );
    drop(stuck);
}

#[tokio::test]
async fn a_leader_whose_client_stops_reading_is_cut_and_its_followers_get_the_whole_answer() {
    let (primary, fallback) = (Mock::start().await, Mock::start().await);
    let s = burst_proxy(&primary, &fallback, 600_000, 65_536);
    let body = chat("another very long answer");
    // The leader's request comes from the client that will not read.
    let stuck = stuck_client(&s, "/v1/chat/completions", &body).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while primary.requests().is_empty() {
        assert!(Instant::now() < deadline, "the leader's call starts");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut follower = send(&s, &body).await;
    let got = first_chunk(&mut follower).await;
    open_gate_once_coalesced(&s, &primary).await;
    assert_whole_burst(&rest(follower, got).await);
    assert_eq!(primary.requests().len(), 1, "one shared upstream call");
    assert_one_cut(&s).await;
    // The leader's client, reading at last, gets the answer's start and then the end of its
    // connection (closed mid-response), never the rest.
    let seen = read_cut(stuck).await;
    // Its log line says it was cut, not that it left; the call is still the leader's.
    let line = assert_cut_logged(&s, &seen).await;
    assert!(line.contains("completed=true"), "{line}");
    assert!(line.contains("coalesced=\"\""), "{line}");
}

#[tokio::test]
async fn a_cut_responses_follower_gets_an_error_event_numbered_after_its_last_event() {
    let (primary, fallback) = (Mock::start().await, Mock::start().await);
    let s = burst_proxy(&primary, &fallback, 600_000, 65_536);
    let body = serde_json::json!({"model": "gpt-4o-mini", "stream": true,
        "input": "a very long answer"});
    let mut leader = reqwest::Client::new()
        .post(format!("{}/v1/responses", s.proxy))
        .bearer_auth(VK)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(leader.status(), 200);
    let got = first_chunk(&mut leader).await;
    let follower = stuck_client(&s, "/v1/responses", &body).await;
    open_gate_once_coalesced(&s, &primary).await;
    let whole = rest(leader, got).await;
    assert!(
        whole.contains("event: response.completed"),
        "the leader's answer is whole"
    );
    let seen = read_cut(follower).await;
    assert!(
        !seen.contains("response.completed"),
        "it did not get the rest"
    );
    let err = seen.rfind("event: error").expect("a native error event");
    let number = |text: &str| -> u64 {
        let at = text
            .rfind("\"sequence_number\":")
            .expect("a sequence number")
            + 18;
        let digits: String = text[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().unwrap()
    };
    let last = number(&seen[..err]);
    assert!(last >= 1, "it got events past the first");
    assert_eq!(
        number(&seen[err..]),
        last + 1,
        "numbered right after the last event it got: {}",
        &seen[err..]
    );
    assert!(seen[err..].contains("fell_behind"));
}

#[tokio::test]
async fn a_leader_whose_write_blocked_before_any_follower_joined_is_cut_once_one_has() {
    let (primary, fallback) = (Mock::start().await, Mock::start().await);
    // The flight stays joinable over everything the stuck leader's socket takes.
    let s = burst_proxy(&primary, &fallback, 600_000, 64 << 20);
    let body = chat("a long answer nobody else wants yet");
    let stuck = stuck_client(&s, "/v1/chat/completions", &body).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while primary.requests().is_empty() {
        assert!(Instant::now() < deadline, "the leader's call starts");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The burst flows to the leader's client alone until its socket buffers are full and a
    // write to it blocks (an unshared call: nothing to cut for).
    primary.gate.notify_one();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        s.metric("sluice_coalesce_clients_cut_total", &[("route", "chat")])
            .await,
        0.0,
        "without followers the leader's client holds back only its own call"
    );
    // A follower joins the blocked call: within the lag bound the leader's client is cut
    // and the follower gets the whole answer.
    let mut follower = send(&s, &body).await;
    let got = first_chunk(&mut follower).await;
    assert_whole_burst(&rest(follower, got).await);
    assert_eq!(primary.requests().len(), 1, "one shared upstream call");
    assert_one_cut(&s).await;
    let seen = read_cut(stuck).await;
    assert_cut_logged(&s, &seen).await;
}

#[tokio::test]
async fn a_leader_whose_followers_all_left_while_its_write_blocked_is_not_cut() {
    let (primary, fallback) = (Mock::start().await, Mock::start().await);
    let s = burst_proxy(&primary, &fallback, 600_000, 65_536);
    let body = chat("a long answer its follower gives up on");
    let mut stuck = stuck_client(&s, "/v1/chat/completions", &body).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while primary.requests().is_empty() {
        assert!(Instant::now() < deadline, "the leader's call starts");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut follower = send(&s, &body).await;
    first_chunk(&mut follower).await;
    open_gate_once_coalesced(&s, &primary).await;
    // The leader's write blocks with the follower there (its 4 KiB receive buffer fills in
    // a few ms); the follower leaves before the 300 ms lag bound: then nobody is held back
    // but the leader's own call, so its client is not cut.
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(follower);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        s.metric("sluice_coalesce_clients_cut_total", &[("route", "chat")])
            .await,
        0.0
    );
    // Reading at last, it gets the whole answer, to its last chunk (the connection stays
    // open for the next request).
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let read = async {
        let mut buf = vec![0u8; 1 << 16];
        while !seen.ends_with(b"data: [DONE]\n\n\r\n0\r\n\r\n") {
            let n = stuck.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the end of the answer");
            seen.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the whole answer comes");
    assert!(!String::from_utf8_lossy(&seen).contains("fell_behind"));
}
