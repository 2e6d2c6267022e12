//! Request coalescing through the real proxy (`coalesce: true`): identical streamed requests
//! in flight at the same time make one upstream call and every client gets the whole answer
//! (late joiners too); the call is cancelled only when every client has left; a leader that
//! fails over before content takes its followers along; a failure after content reaches every
//! client as the same native error event; different requests are not coalesced. A client
//! that stops reading is cut ([`cut`]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/mod.rs"]
mod support;

mod cut;

use std::time::{Duration, Instant};
use support::{Behavior, Config, CutEnd, Mock, Pool, Route, Sluice, Tenant};

const KEY_ENV: (&str, &str) = ("SLUICE_TEST_KEY", "sk-real-upstream-key");
const VK: &str = "sk-coalesce-virtual-key";

fn config(primary: &Mock, fallback: &Mock) -> String {
    let breaker = "{breaker: {consecutive_failures: 1000000}}";
    Config::new()
        .pool(Pool::openai("primary", &primary.url()).yaml(breaker))
        .pool(Pool::openai("fallback", &fallback.url()))
        .route(
            Route::prefix("chat", "/v1", &["primary", "fallback"])
                .yaml("{coalesce: true, failover: {first_token_ms: 300}}"),
        )
        .tenant(Tenant::new("t").virtual_key(VK))
        .to_yaml()
}

/// A sluice on [`config`] whose primary streams `events` content events `gap_ms` apart
/// (`Behavior::Paced`), with its primary and fallback.
async fn paced(events: usize, gap_ms: u64) -> (Sluice, Mock, Mock) {
    let (primary, fallback) = paced_mocks(events, gap_ms).await;
    let s = Sluice::start(&config(&primary, &fallback), &[KEY_ENV]);
    (s, primary, fallback)
}

/// A primary that streams `events` content events `gap_ms` apart (`Behavior::Paced`), and an
/// idle fallback.
async fn paced_mocks(events: usize, gap_ms: u64) -> (Mock, Mock) {
    let (primary, fallback) = (Mock::start().await, Mock::start().await);
    primary.set(Behavior::Paced {
        events,
        gap_ms,
        reset_after: None,
    });
    (primary, fallback)
}

/// A coalescing route over `primary` then `fallback`, with neither a breaker setting nor
/// commit on content; more YAML can be merged in.
fn plain_config(primary: &Mock, fallback: &Mock) -> Config {
    Config::new()
        .pool(Pool::openai("primary", &primary.url()))
        .pool(Pool::openai("fallback", &fallback.url()))
        .route(Route::prefix("chat", "/v1", &["primary", "fallback"]).yaml("{coalesce: true}"))
        .tenant(Tenant::new("t").virtual_key(VK))
}

fn chat(text: &str) -> serde_json::Value {
    serde_json::json!({"model": "gpt-4o-mini", "stream": true,
        "messages": [{"role": "user", "content": text}]})
}

/// `POST /v1/chat/completions` of `body` to the proxy at `proxy` under virtual key `key`, on a
/// client of its own (each request on a connection of its own).
async fn post_chat(proxy: &str, key: &str, body: &serde_json::Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{proxy}/v1/chat/completions"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn send(s: &Sluice, body: &serde_json::Value) -> reqwest::Response {
    let resp = post_chat(&s.proxy, VK, body).await;
    assert_eq!(resp.status(), 200);
    resp
}

/// The rest of `resp`'s body after `got`, as text (bounded by the test's own timeout).
async fn rest(mut resp: reqwest::Response, mut got: Vec<u8>) -> String {
    let read = async {
        while let Ok(Some(c)) = resp.chunk().await {
            got.extend_from_slice(&c);
        }
        got
    };
    let got = tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the stream ends");
    String::from_utf8(got).unwrap()
}

/// The first body chunk of `resp`.
async fn first_chunk(resp: &mut reqwest::Response) -> Vec<u8> {
    let c = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
        .await
        .expect("a first chunk")
        .unwrap()
        .expect("a non-empty body");
    c.to_vec()
}

/// `sluice_coalesced_requests_total` of the `chat` route now.
async fn coalesced(s: &Sluice) -> f64 {
    s.metric("sluice_coalesced_requests_total", &[("route", "chat")])
        .await
}

/// A whole answer of a `Paced { events }` stream: every token in order, then `[DONE]`.
fn assert_whole(body: &str, events: usize) {
    let mut at = 0;
    for i in 0..events {
        let tok = format!("\"tok{i} \"");
        let found = body[at..]
            .find(&tok)
            .unwrap_or_else(|| panic!("{tok} missing or out of order in {body}"));
        at += found;
    }
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    assert!(
        !body.contains("\"usage\""),
        "the usage chunk sluice asked for is hidden"
    );
}

#[tokio::test]
async fn identical_concurrent_requests_share_one_upstream_call() {
    let (s, primary, _fallback) = paced(10, 30).await;
    const N: usize = 20;
    let body = chat("the same question");
    let clients: Vec<_> = (0..N)
        .map(|_| {
            let (proxy, body) = (s.proxy.clone(), body.clone());
            tokio::spawn(async move {
                let resp = post_chat(&proxy, VK, &body).await;
                let id = resp.headers()["x-sluice-request-id"]
                    .to_str()
                    .unwrap()
                    .to_owned();
                (id, rest(resp, Vec::new()).await)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for c in clients {
        answers.push(c.await.unwrap());
    }
    assert_eq!(
        primary.requests().len(),
        1,
        "one upstream call for {N} clients"
    );
    assert_whole(&answers[0].1, 10);
    for (_, a) in &answers {
        assert_eq!(a, &answers[0].1, "every client gets the same stream");
    }
    let mut ids: Vec<&str> = answers.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), N, "each client has its own request id");
    let followers = s
        .wait_metric(
            "sluice_coalesced_requests_total",
            &[("route", "chat")],
            |v| v >= (N - 1) as f64,
        )
        .await;
    assert_eq!(followers, (N - 1) as f64);
    // Followers' log lines name the leader and carry no tokens; the leader's has the usage.
    let until = Instant::now() + Duration::from_secs(5);
    let log = loop {
        let log = s.log();
        if log.matches("request_id=").count() >= N || Instant::now() > until {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("request_id=")).collect();
    assert_eq!(lines.len(), N, "{log}");
    let leaders: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("coalesced=\"\""))
        .collect();
    assert_eq!(leaders.len(), 1, "{log}");
    assert!(
        leaders[0].contains("completion_tokens=10"),
        "{}",
        leaders[0]
    );
    let leader_id = leaders[0]
        .split("request_id=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap();
    let tag = format!("coalesced=\"{leader_id}\"");
    for l in lines.iter().filter(|l| !l.contains("coalesced=\"\"")) {
        assert!(l.contains(&tag), "{l}");
        assert!(l.contains("prompt_tokens=0 completion_tokens=0"), "{l}");
    }
}

#[tokio::test]
async fn a_late_joiner_gets_the_whole_answer() {
    let (s, primary, _fallback) = paced(12, 40).await;
    let body = chat("late joiner");
    let mut leader = send(&s, &body).await;
    let mut got = first_chunk(&mut leader).await;
    // Let more chunks go by before the follower joins.
    while !String::from_utf8_lossy(&got).contains("tok3 ") {
        got.extend_from_slice(&first_chunk(&mut leader).await);
    }
    let follower = send(&s, &body).await;
    let (a, b) = tokio::join!(rest(leader, got), rest(follower, Vec::new()));
    assert_whole(&a, 12);
    assert_eq!(a, b, "the late joiner replays the chunks already sent");
    assert_eq!(primary.requests().len(), 1);
}

#[tokio::test]
async fn every_client_leaving_cancels_the_upstream_call_at_once() {
    let (s, primary, _fallback) = paced(400, 20).await;
    let body = chat("everyone leaves");
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut resp = send(&s, &body).await;
        first_chunk(&mut resp).await;
        clients.push(resp);
    }
    // Two leave: the call goes on for the last one.
    clients.truncate(1);
    assert!(
        primary
            .wait_closed(Duration::from_millis(300))
            .await
            .is_none(),
        "a client is still there: the upstream call goes on"
    );
    first_chunk(&mut clients[0]).await;
    drop(clients);
    let left = Instant::now();
    let closed = primary
        .wait_closed(Duration::from_secs(2))
        .await
        .expect("the upstream connection is closed");
    let after = closed.saturating_duration_since(left);
    eprintln!("upstream closed {after:?} after the last client left");
    assert!(after < Duration::from_millis(100), "closed after {after:?}");
    assert_eq!(primary.requests().len(), 1);
}

#[tokio::test]
async fn the_leaders_client_leaving_does_not_stop_a_follower() {
    let (s, primary, _fallback) = paced(15, 20).await;
    let body = chat("leader leaves");
    let mut leader = send(&s, &body).await;
    first_chunk(&mut leader).await;
    let mut follower = send(&s, &body).await;
    let got = first_chunk(&mut follower).await;
    drop(leader);
    let b = rest(follower, got).await;
    assert_whole(&b, 15);
    assert_eq!(primary.requests().len(), 1);
    assert!(primary.slow_closed_at.lock().unwrap().is_none());
    assert_eq!(
        s.wait_metric(
            "sluice_coalesced_requests_total",
            &[("route", "chat")],
            |v| v >= 1.0
        )
        .await,
        1.0
    );
}

/// The primary answers its header and a role-only chunk, then stalls (no content); the
/// fallback streams 5 paced events.
fn stall_before_content(primary: &Mock, fallback: &Mock) {
    let role_only = "data: {\"id\":\"PRIMARY-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n";
    primary.set(Behavior::CutAt {
        body: role_only.as_bytes().to_vec(),
        end: CutEnd::Stall,
    });
    fallback.set(Behavior::Paced {
        events: 5,
        gap_ms: 20,
        reset_after: None,
    });
}

#[tokio::test]
async fn followers_follow_the_leaders_failover_before_content() {
    let (primary, fallback) = (Mock::start().await, Mock::start().await);
    stall_before_content(&primary, &fallback);
    let s = Sluice::start(&config(&primary, &fallback), &[KEY_ENV]);
    let body = chat("failover");
    let leader = {
        let (proxy, body) = (s.proxy.clone(), body.clone());
        tokio::spawn(async move {
            let resp = post_chat(&proxy, VK, &body).await;
            rest(resp, Vec::new()).await
        })
    };
    // Joined while the leader's primary is held (first_token_ms 300).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let followers = futures_util::future::join_all((0..4).map(|_| async {
        let resp = send(&s, &body).await;
        rest(resp, Vec::new()).await
    }));
    let answers = followers.await;
    let lead = leader.await.unwrap();
    assert_whole(&lead, 5);
    assert!(!lead.contains("PRIMARY"), "{lead}");
    for a in &answers {
        assert_eq!(a, &lead);
    }
    assert_eq!(primary.requests().len(), 1);
    assert_eq!(fallback.requests().len(), 1);
}

#[tokio::test]
async fn a_failure_after_content_reaches_every_client_as_the_same_error_event() {
    let (primary, fallback) = (Mock::start().await, Mock::start().await);
    primary.set(Behavior::Paced {
        events: 10,
        gap_ms: 40,
        reset_after: Some(4),
    });
    let s = Sluice::start(&config(&primary, &fallback), &[KEY_ENV]);
    let body = chat("cut");
    let mut leader = send(&s, &body).await;
    let got = first_chunk(&mut leader).await;
    let follower = send(&s, &body).await;
    let (a, b) = tokio::join!(rest(leader, got), rest(follower, Vec::new()));
    assert!(a.contains("\"tok3 \""), "{a}");
    let last = a.trim_end().rsplit("\n\n").next().unwrap();
    assert!(
        last.starts_with("data: {\"error\":"),
        "ends with OpenAI's native error event: {a}"
    );
    assert!(!a.contains("[DONE]"));
    assert_eq!(a, b, "the follower gets the same events and error");
    assert_eq!(primary.requests().len(), 1);
    assert_eq!(fallback.requests().len(), 0, "no failover after content");
}

#[tokio::test]
async fn different_requests_are_not_coalesced() {
    let (s, primary, _fallback) = paced(5, 30).await;
    let (one, another) = (chat("one question"), chat("another question"));
    let (a, b) = tokio::join!(send(&s, &one), send(&s, &another));
    let (a, b) = tokio::join!(rest(a, Vec::new()), rest(b, Vec::new()));
    assert_whole(&a, 5);
    assert_whole(&b, 5);
    assert_eq!(primary.requests().len(), 2);
    assert_eq!(coalesced(&s).await, 0.0);
}

#[tokio::test]
async fn followers_reserve_no_tokens_but_count_against_request_limits() {
    let (primary, fallback) = paced_mocks(10, 30).await;
    const ONE_AT_A_TIME: &str = "sk-coalesce-one-at-a-time";
    let config = Config::new()
        .pool(Pool::openai("primary", &primary.url()))
        .pool(Pool::openai("fallback", &fallback.url()))
        .route(Route::prefix("chat", "/v1", &["primary", "fallback"]).yaml("{coalesce: true}"))
        // One reservation (the body's bytes / 4 plus max_tokens 200) fits, two do not.
        .tenant(
            Tenant::new("t")
                .virtual_key(VK)
                .limits("tokens_per_minute: 300"),
        )
        .tenant(
            Tenant::new("u")
                .virtual_key(ONE_AT_A_TIME)
                .limits("max_concurrent: 1"),
        )
        .to_yaml();
    let s = Sluice::start(&config, &[KEY_ENV]);
    let mut body = chat("limits");
    body["max_tokens"] = 200.into();
    let mut leader = send(&s, &body).await;
    let got = first_chunk(&mut leader).await;
    // Without coalescing this second reservation would not fit the window: a follower has none.
    let follower = send(&s, &body).await;
    let (a, b) = tokio::join!(rest(leader, got), rest(follower, Vec::new()));
    assert_whole(&a, 10);
    assert_eq!(a, b);
    assert_eq!(primary.requests().len(), 1);
    // The call is charged once, to the leader: the upstream's usage (9 + 10).
    let tokens = |kind: &'static str| {
        let s = &s;
        async move {
            s.wait_metric(
                "sluice_tokens_total",
                &[("tenant", "t"), ("kind", kind)],
                |v| v > 0.0,
            )
            .await
        }
    };
    assert_eq!(tokens("prompt").await, 9.0);
    assert_eq!(tokens("completion").await, 10.0);

    // Request limits do apply to followers: a second request of a tenant allowed one at a
    // time is refused, coalesced or not.
    let mut first = post_chat(&s.proxy, ONE_AT_A_TIME, &body).await;
    assert_eq!(first.status(), 200);
    first.chunk().await.unwrap();
    let second = post_chat(&s.proxy, ONE_AT_A_TIME, &body).await;
    assert_eq!(second.status(), 429);
    assert_eq!(primary.requests().len(), 2, "tenants do not share calls");
}

#[tokio::test]
async fn a_failure_before_any_header_reaches_every_client_natively() {
    let (primary, fallback) = (Mock::start().await, Mock::start().await);
    primary.set(Behavior::Stall);
    fallback.set(Behavior::Stall);
    let timeouts = "{timeouts: {ttfb_ms: 300}}";
    let config = Config::new()
        .pool(Pool::openai("primary", &primary.url()).yaml(timeouts))
        .pool(Pool::openai("fallback", &fallback.url()).yaml(timeouts))
        .route(Route::prefix("chat", "/v1", &["primary", "fallback"]).yaml("{coalesce: true}"))
        .tenant(Tenant::new("t").virtual_key(VK))
        .to_yaml();
    let s = Sluice::start(&config, &[KEY_ENV]);
    let body = chat("nobody answers");
    let answers = futures_util::future::join_all((0..3).map(|i| {
        let (proxy, body) = (s.proxy.clone(), body.clone());
        async move {
            // The leader first; the others join while it waits.
            tokio::time::sleep(Duration::from_millis(100 * i)).await;
            let resp = post_chat(&proxy, VK, &body).await;
            let status = resp.status().as_u16();
            let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
            let json: serde_json::Value = resp.json().await.unwrap();
            (status, id, json)
        }
    }))
    .await;
    let (status, _, json) = &answers[0];
    assert!(*status >= 500, "{status}");
    assert!(
        json["error"]["message"].is_string(),
        "OpenAI's error shape: {json}"
    );
    for (st, _, j) in &answers {
        assert_eq!((st, j), (status, json), "every client gets the same error");
    }
    let mut ids: Vec<&str> = answers.iter().map(|(_, id, _)| id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "each with its own request id");
    assert_eq!(primary.requests().len(), 1);
    assert_eq!(fallback.requests().len(), 1);
}

#[tokio::test]
async fn identical_plain_json_requests_share_one_call_too() {
    let mock = Mock::start().await;
    // Every reply held 300 ms: the requests overlap.
    let slow = support::DelayProxy::start(mock.addr, Duration::from_millis(300)).await;
    let config = Config::new()
        .pool(Pool::openai("slow", &format!("http://{}", slow.addr)))
        .route(Route::prefix("chat", "/v1", &["slow"]).yaml("{coalesce: true}"))
        .tenant(Tenant::new("t").virtual_key(VK))
        .to_yaml();
    let s = Sluice::start(&config, &[KEY_ENV]);
    let body = serde_json::json!({"model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "plain"}]});
    let answers = futures_util::future::join_all((0..5).map(|_| {
        let (proxy, body) = (s.proxy.clone(), body.clone());
        async move {
            let resp = post_chat(&proxy, VK, &body).await;
            assert_eq!(resp.status(), 200);
            resp.json::<serde_json::Value>().await.unwrap()
        }
    }))
    .await;
    assert_eq!(mock.requests().len(), 1);
    assert_eq!(answers[0]["choices"][0]["message"]["content"], "Hi");
    assert!(answers.iter().all(|a| a == &answers[0]));
}

#[tokio::test]
async fn a_plain_json_answer_cut_by_the_upstream_breaks_off_for_every_client() {
    let mock = Mock::start().await;
    // Half of a whole chat completion (chunked), then silence past the pool's idle timeout.
    let whole = serde_json::json!({"id": "chatcmpl-cut", "object": "chat.completion",
        "created": 1, "model": "gpt-4o-mini", "choices": [{"index": 0, "finish_reason": "stop",
        "message": {"role": "assistant", "content": "a plain answer its upstream stalls on"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}});
    let whole = serde_json::to_vec(&whole).unwrap();
    mock.set(Behavior::CutJsonAt {
        body: whole[..whole.len() / 2].to_vec(),
        end: CutEnd::Stall,
    });
    let config = Config::new()
        .pool(Pool::openai("stall", &mock.url()).yaml("{timeouts: {idle_ms: 500}}"))
        .route(Route::prefix("chat", "/v1", &["stall"]).yaml("{coalesce: true}"))
        .tenant(Tenant::new("t").virtual_key(VK))
        .to_yaml();
    let s = Sluice::start(&config, &[KEY_ENV]);
    let body = serde_json::json!({"model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "plain, cut"}]});
    let leader = post_chat(&s.proxy, VK, &body).await;
    let follower = post_chat(&s.proxy, VK, &body).await;
    assert_eq!(
        (leader.status().as_u16(), follower.status().as_u16()),
        (200, 200)
    );
    let (a, b) = tokio::join!(leader.bytes(), follower.bytes());
    // Neither gets half a JSON body framed as whole: the transfer breaks off.
    assert!(a.is_err(), "leader: {a:?}");
    assert!(b.is_err(), "follower: {b:?}");
    assert_eq!(mock.requests().len(), 1, "one shared call");
    assert_eq!(coalesced(&s).await, 1.0);
}

#[tokio::test]
async fn past_the_flight_bound_a_new_request_makes_its_own_call() {
    let (primary, fallback) = paced_mocks(40, 20).await;
    let config = plain_config(&primary, &fallback)
        .yaml("cache: {max_flight_bytes: 2000}")
        .to_yaml();
    let s = Sluice::start(&config, &[KEY_ENV]);
    let body = chat("a long answer");
    let mut leader = send(&s, &body).await;
    let mut got = Vec::new();
    // Each event is about 130 bytes: 2,000 bytes are past after about 16.
    while !String::from_utf8_lossy(&got).contains("tok17 ") {
        got.extend_from_slice(&first_chunk(&mut leader).await);
    }
    let late = send(&s, &body).await;
    let (a, b) = tokio::join!(rest(leader, got), rest(late, Vec::new()));
    assert_whole(&a, 40);
    assert_whole(&b, 40);
    assert_eq!(
        primary.requests().len(),
        2,
        "the flight took no follower past its bound"
    );
    assert_eq!(coalesced(&s).await, 0.0);
}

/// What all flights keep for late joiners is bounded together (`max_flights_total_bytes`):
/// with one flight keeping about 1,500 bytes (its upstream stalled after one large event), a
/// second one goes past the 2,000 of both after a few of its own events, far below its own
/// bound (1 MiB): a late request identical to it then makes its own call. What they keep
/// reads in `sluice_coalesce_retained_bytes`, 0 once they are over.
#[tokio::test]
async fn past_the_bound_of_all_flights_together_a_new_request_makes_its_own_call() {
    let (primary, fallback) = (Mock::start().await, Mock::start().await);
    let config = plain_config(&primary, &fallback)
        .yaml("cache: {max_flights_total_bytes: 2000}")
        .to_yaml();
    let s = Sluice::start(&config, &[KEY_ENV]);
    // The first flight: one content event of about 1,500 bytes, then nothing.
    let big = format!(
        "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{}\"}},\"finish_reason\":null}}]}}\n\n",
        "x".repeat(1400)
    );
    primary.set(Behavior::CutAt {
        body: big.into_bytes(),
        end: CutEnd::Stall,
    });
    let mut stalled = send(&s, &chat("an answer that stalls")).await;
    let held = first_chunk(&mut stalled).await;
    assert!(held.len() > 1400, "{}", held.len());
    // The second flight: events of about 130 bytes; the two keep 2,000 together after about
    // 4 of them.
    primary.set(Behavior::Paced {
        events: 40,
        gap_ms: 20,
        reset_after: None,
    });
    let body = chat("a long answer");
    let mut leader = send(&s, &body).await;
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("tok8 ") {
        got.extend_from_slice(&first_chunk(&mut leader).await);
    }
    let kept = s.metric("sluice_coalesce_retained_bytes", &[]).await;
    assert!(
        (1400.0..=2200.0).contains(&kept),
        "the flights keep {kept} bytes together"
    );
    let late = send(&s, &body).await;
    let (a, b) = tokio::join!(rest(leader, got), rest(late, Vec::new()));
    assert_whole(&a, 40);
    assert_whole(&b, 40);
    assert_eq!(
        primary.requests().len(),
        3,
        "a flight took a follower past the bound of all flights"
    );
    drop(stalled);
    let kept = s
        .wait_metric("sluice_coalesce_retained_bytes", &[], |v| v == 0.0)
        .await;
    assert_eq!(kept, 0.0, "bytes still counted after every flight ended");
}

#[tokio::test]
async fn a_hedged_call_is_shared_like_any_other() {
    let (primary, fallback) = (Mock::start().await, Mock::start().await);
    stall_before_content(&primary, &fallback);
    let config = Config::new()
        .pool(Pool::openai("primary", &primary.url()))
        .pool(Pool::openai("fallback", &fallback.url()))
        .route(
            Route::prefix("chat", "/v1", &["primary", "fallback"])
                .yaml("{coalesce: true, hedge: {after_ms: 200}}"),
        )
        .tenant(Tenant::new("t").virtual_key(VK))
        .to_yaml();
    let s = Sluice::start(&config, &[KEY_ENV]);
    let body = chat("hedged");
    let answers = futures_util::future::join_all((0..4).map(|i| {
        let s = &s;
        let body = &body;
        async move {
            // The leader first; the followers join before the hedge starts.
            tokio::time::sleep(Duration::from_millis(50 * i)).await;
            rest(send(s, body).await, Vec::new()).await
        }
    }))
    .await;
    assert_whole(&answers[0], 5);
    assert!(!answers[0].contains("PRIMARY"), "{}", answers[0]);
    assert!(answers.iter().all(|a| a == &answers[0]));
    assert_eq!(primary.requests().len(), 1);
    assert_eq!(fallback.requests().len(), 1);
    let closed = primary.wait_closed(Duration::from_secs(2)).await;
    assert!(
        closed.is_some(),
        "the stalled primary is closed when the hedge wins"
    );
}

/// With `scope: route`, tenants share a flight; each client still gets its own request id
/// and its own tenant's `x-ratelimit-*` headers, never the leader's.
#[tokio::test]
async fn a_follower_gets_its_own_headers_not_the_leaders() {
    let (primary, fallback) = paced_mocks(10, 30).await;
    const UNLIMITED: &str = "sk-coalesce-unlimited";
    let config = Config::new()
        .pool(Pool::openai("primary", &primary.url()))
        .pool(Pool::openai("fallback", &fallback.url()))
        .route(
            Route::prefix("chat", "/v1", &["primary", "fallback"])
                .yaml("{coalesce: true, cache: {scope: route, when: always}}"),
        )
        .tenant(
            Tenant::new("t")
                .virtual_key(VK)
                .limits("requests_per_minute: 1000"),
        )
        .tenant(Tenant::new("u").virtual_key(UNLIMITED))
        .to_yaml();
    let s = Sluice::start(&config, &[KEY_ENV]);
    let body = chat("own headers");
    let mut leader = send(&s, &body).await;
    let got = first_chunk(&mut leader).await;
    let follower = post_chat(&s.proxy, UNLIMITED, &body).await;
    assert_eq!(follower.status(), 200);
    let limits = |r: &reqwest::Response| {
        r.headers()
            .keys()
            .filter(|n| n.as_str().starts_with("x-ratelimit-"))
            .count()
    };
    let id = |r: &reqwest::Response| r.headers()["x-sluice-request-id"].clone();
    assert_eq!(
        limits(&leader),
        3,
        "the leader's tenant has a request limit"
    );
    assert_eq!(limits(&follower), 0, "the follower's tenant has none");
    assert_ne!(id(&leader), id(&follower));
    assert_eq!(
        follower.headers()["content-type"],
        leader.headers()["content-type"]
    );
    let (a, b) = tokio::join!(rest(leader, got), rest(follower, Vec::new()));
    assert_whole(&a, 10);
    assert_eq!(a, b);
    assert_eq!(primary.requests().len(), 1, "one shared call");
}

#[tokio::test]
async fn past_the_drain_deadline_the_leader_and_its_followers_end_with_the_same_error_event() {
    // About 8 s of stream, far past the 1 s drain deadline.
    let (primary, fallback) = paced_mocks(400, 20).await;
    let config = plain_config(&primary, &fallback)
        .yaml("server: {drain_timeout_seconds: 1}")
        .to_yaml();
    let mut s = Sluice::start(&config, &[KEY_ENV]);
    let body = chat("drain me");
    let mut leader = send(&s, &body).await;
    let got = first_chunk(&mut leader).await;
    let mut follower = send(&s, &body).await;
    let joined = first_chunk(&mut follower).await;
    s.signal("TERM");
    let (a, b) = tokio::join!(rest(leader, got), rest(follower, joined));
    assert_eq!(primary.requests().len(), 1, "one shared call");
    for body in [&a, &b] {
        assert!(
            body.contains("\"tok5 \""),
            "the stream flowed during the drain"
        );
        let last = body.trim_end().rsplit("\n\n").next().unwrap_or("");
        assert!(
            last.starts_with("data: {\"error\"") && last.contains("shutting_down"),
            "ended with {last:?}"
        );
        assert!(!body.contains("[DONE]"));
    }
    assert_eq!(
        a, b,
        "the follower got the leader's stream, error event included"
    );
    assert!(
        s.wait_exit(Duration::from_secs(10)).is_some(),
        "sluice exits once the shared call ended: {}",
        s.log()
    );
}
