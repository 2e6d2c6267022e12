//! The flight on its own: replay for late joiners, the byte bound, back-pressure, leaving.
//! The leader's own client is written to by the producer itself: here only its presence
//! (`leader_left`) matters.

use super::*;
use crate::cache::key::Key;
use std::time::Duration;

/// A lag bound no test reaches unless it means to (those use their own).
const LAG: Duration = Duration::from_secs(60);

fn ident(n: u8) -> crate::proxy::coalesce::Ident {
    (Key([n; 32]), false)
}

/// A flight of its own set (no bound shared with other tests' flights): `max_bytes` and
/// `max_lag` its own.
fn start(n: u8, max_bytes: usize, max_lag: Duration) -> Arc<Flight> {
    let total: &'static Retained = Box::leak(Box::new(Retained::new()));
    Flight::start(
        ident(n),
        "lead",
        Bounds {
            max_bytes,
            max_lag,
            max_total: usize::MAX,
            total,
        },
    )
}

fn header() -> Box<ResponseHeader> {
    Box::new(ResponseHeader::build(200, None).unwrap())
}

async fn read_all(sub: &Subscription) -> Vec<u8> {
    let (mut out, mut chunks) = (Vec::new(), Vec::new());
    loop {
        match sub.next(&mut chunks).await {
            Next::Chunks => chunks.drain(..).for_each(|b| out.extend_from_slice(&b)),
            Next::BodyEnd => return out,
            Next::Cut => panic!("cut"),
        }
    }
}

/// The chunks available now.
async fn read_one(sub: &Subscription) -> Vec<u8> {
    let mut chunks = Vec::new();
    assert_eq!(sub.next(&mut chunks).await, Next::Chunks);
    chunks.concat()
}

#[tokio::test]
async fn a_late_joiner_gets_every_chunk_from_the_first() {
    let flight = start(1, 1024, LAG);
    let early = flight.join().expect("joinable from the start");
    flight.publish_header(header()).unwrap();
    flight
        .publish_body(Bytes::from_static(b"one "), false)
        .await
        .unwrap();
    flight
        .publish_body(Bytes::from_static(b"two "), false)
        .await
        .unwrap();
    let late = flight.join().expect("joinable under the bound");
    assert_eq!(late.header().await.unwrap().status.as_u16(), 200);
    flight
        .publish_body(Bytes::from_static(b"three"), true)
        .await
        .unwrap();
    flight.finish(End::Answered {
        completed: true,
        error: None,
        close: false,
    });
    assert_eq!(read_all(&late).await, b"one two three");
    assert_eq!(read_all(&early).await, b"one two three");
    assert!(matches!(
        late.end().await,
        End::Answered {
            completed: true,
            close: false,
            ..
        }
    ));
    assert!(flight.join().is_none(), "an ended flight takes no follower");
}

#[tokio::test]
async fn past_the_bound_no_follower_joins_and_read_chunks_are_released() {
    let flight = start(2, 10, LAG);
    let slow = flight.join().unwrap();
    flight.publish_header(header()).unwrap();
    flight
        .publish_body(Bytes::from_static(b"12345678"), false)
        .await
        .unwrap();
    let passing = flight.join().expect("8 bytes fit in 10");
    assert_eq!(
        read_one(&passing).await,
        b"12345678",
        "it replays from the first chunk"
    );
    drop(passing);
    let reused = flight.join().expect("its slot is reused");
    assert_eq!(read_one(&reused).await, b"12345678");
    drop(reused);
    // The followers above left: only `slow` reads.
    let publish = flight.publish_body(Bytes::from_static(b"abcdef"), false);
    // 14 bytes retained, over the bound: the producer waits for the follower to read.
    let mut publish = Box::pin(publish);
    assert!(
        tokio::time::timeout(Duration::from_millis(50), &mut publish)
            .await
            .is_err(),
        "the producer waits while a follower lags past the bound"
    );
    assert!(flight.join().is_none(), "over the bound: no new follower");
    let mut chunks = Vec::new();
    assert_eq!(slow.next(&mut chunks).await, Next::Chunks);
    assert_eq!(chunks.len(), 2);
    publish.await.unwrap();
    assert_eq!(flight.retained_bytes(), 0, "read chunks are released");
}

#[tokio::test(start_paused = true)]
async fn a_follower_lagging_past_the_bound_longer_than_the_lag_bound_is_cut() {
    let lag = Duration::from_millis(1000);
    let flight = start(6, 10, lag);
    let stuck = flight.join().unwrap();
    let reading = flight.join().unwrap();
    flight.publish_header(header()).unwrap();
    flight
        .publish_body(Bytes::from_static(b"12345678"), false)
        .await
        .unwrap();
    assert_eq!(read_one(&reading).await, b"12345678");
    // 14 bytes retained for `stuck`, which reads nothing: the producer waits the lag bound
    // (virtual time), then cuts it and goes on; `stuck`, waiting on its cut (as a follower
    // whose write to its client is blocked does), sees it then.
    assert!(
        futures_util::FutureExt::now_or_never(stuck.cut()).is_none(),
        "not cut yet"
    );
    let started = tokio::time::Instant::now();
    let (published, ()) = tokio::join!(
        flight.publish_body(Bytes::from_static(b"abcdef"), false),
        stuck.cut()
    );
    published.expect("`reading` is still there");
    assert_eq!(started.elapsed(), lag, "it waited exactly the lag bound");
    assert_eq!(
        flight.retained_bytes(),
        6,
        "only what `reading` has not read is kept: the cut follower's chunks are released"
    );
    let mut chunks = Vec::new();
    assert_eq!(stuck.next(&mut chunks).await, Next::Cut);
    assert!(chunks.is_empty());
    assert_eq!(read_one(&reading).await, b"abcdef", "the others go on");
    flight
        .publish_body(Bytes::from_static(b"!"), true)
        .await
        .unwrap();
    assert_eq!(read_all(&reading).await, b"!");
    drop(stuck);
    assert!(
        !flight.all_left(),
        "`reading` and the leader's client remain"
    );
    drop(reading);
    flight.leader_left();
    // (A cut follower counted twice would underflow the count: a panic in this build.)
    assert!(
        flight.all_left(),
        "a cut follower that leaves is not counted twice"
    );
}

#[tokio::test(start_paused = true)]
async fn cutting_the_last_follower_of_a_call_whose_leader_left_ends_the_call() {
    let flight = start(7, 4, Duration::ZERO);
    let stuck = flight.join().unwrap();
    flight.leader_left();
    flight.publish_header(header()).unwrap();
    assert_eq!(
        flight
            .publish_body(Bytes::from_static(b"12345"), false)
            .await,
        Err(EveryoneLeft),
        "with a lag bound of 0 the laggard is cut at once, and nobody is left"
    );
    let mut chunks = Vec::new();
    assert_eq!(stuck.next(&mut chunks).await, Next::Cut);
}

#[tokio::test]
async fn the_largest_lag_bound_the_config_takes_waits_for_the_follower() {
    // `max_flight_lag_ms: 18446744073709551615` (u64::MAX): the deadline is computed and
    // far off; the producer waits as long as the follower takes.
    let flight = start(8, 4, Duration::from_millis(u64::MAX));
    let slow = flight.join().unwrap();
    flight.publish_header(header()).unwrap();
    let mut publish = Box::pin(flight.publish_body(Bytes::from_static(b"12345"), false));
    assert!(
        tokio::time::timeout(Duration::from_millis(50), &mut publish)
            .await
            .is_err(),
        "the producer waits for the follower"
    );
    assert_eq!(read_one(&slow).await, b"12345");
    assert_eq!(
        publish.await,
        Ok(true),
        "the follower read it: the call goes on"
    );
}

#[tokio::test]
async fn the_producer_sees_everyone_gone_only_when_the_last_client_leaves() {
    let flight = start(3, 1024, LAG);
    drop(flight.join().unwrap());
    let mut gone = Box::pin(flight.all_gone());
    assert!(
        tokio::time::timeout(Duration::from_millis(20), &mut gone)
            .await
            .is_err(),
        "the leader's client is still there"
    );
    let follower = flight.join().expect("still joinable");
    flight.leader_left();
    assert!(!flight.all_left(), "a follower is still there");
    assert!(
        tokio::time::timeout(Duration::from_millis(20), &mut gone)
            .await
            .is_err(),
        "a follower is still there"
    );
    drop(follower);
    tokio::time::timeout(Duration::from_secs(1), gone)
        .await
        .expect("resolves once the last client left");
    assert!(
        flight.join().is_none(),
        "a call about to be cancelled takes no one"
    );
    assert!(flight.publish_header(header()).is_err());
    assert!(flight
        .publish_body(Bytes::from_static(b"x"), false)
        .await
        .is_err());
}

#[tokio::test]
async fn an_error_before_the_header_reaches_every_follower() {
    let flight = start(4, 1024, LAG);
    let (one, two) = (flight.join().unwrap(), flight.join().unwrap());
    flight.finish(End::Failed(SluiceError::NoUpstreamAvailable {
        retry_after: None,
        rate_limited: false,
    }));
    for sub in [&one, &two] {
        match sub.header().await {
            Err(End::Failed(e)) => assert_eq!(e.status(), 503),
            _ => panic!("expected the leader's error"),
        }
    }
}

#[tokio::test]
async fn a_body_that_ends_without_its_end_write_closes_the_clients() {
    let flight = start(5, 1024, LAG);
    let follower = flight.join().unwrap();
    flight.publish_header(header()).unwrap();
    flight
        .publish_body(Bytes::from_static(b"{\"cut"), false)
        .await
        .unwrap();
    flight.finish(End::Answered {
        completed: false,
        error: None,
        close: false,
    });
    assert_eq!(read_all(&follower).await, b"{\"cut");
    assert!(matches!(
        follower.end().await,
        End::Answered { close: true, .. }
    ));
}

#[tokio::test]
async fn a_follower_is_handed_at_most_the_handoff_bound_at_a_time() {
    let flight = start(9, 1 << 20, LAG);
    let sub = flight.join().unwrap();
    flight.publish_header(header()).unwrap();
    for _ in 0..10 {
        flight
            .publish_body(Bytes::from(vec![b'x'; 4096]), false)
            .await
            .unwrap();
    }
    let big = HANDOFF_BYTES + 1;
    flight
        .publish_body(Bytes::from(vec![b'y'; big]), true)
        .await
        .unwrap();
    let mut handed = Vec::new();
    let mut chunks = Vec::new();
    while sub.next(&mut chunks).await == Next::Chunks {
        handed.push(chunks.drain(..).map(|c| c.len()).collect::<Vec<_>>());
    }
    // 16 KiB is four 4 KiB chunks; a chunk over the bound comes alone.
    assert_eq!(
        handed,
        vec![vec![4096; 4], vec![4096; 4], vec![4096; 2], vec![big]]
    );
}

/// Flights that together keep more than their shared bound for late joiners: the one that
/// receives more stops taking followers and drops what no follower still needs; the count is
/// exact, back to 0 once they are gone.
#[tokio::test]
async fn flights_over_their_shared_bound_stop_keeping_chunks_for_late_joiners() {
    let total: &'static Retained = Box::leak(Box::new(Retained::new()));
    let bounds = Bounds {
        max_bytes: 1024,
        max_lag: LAG,
        max_total: 100,
        total,
    };
    let (a, b) = (
        Flight::start(ident(20), "a", bounds),
        Flight::start(ident(21), "b", bounds),
    );
    let follower = b.join().expect("joinable from the start");
    for f in [&a, &b] {
        f.publish_header(header()).unwrap();
    }
    a.publish_body(Bytes::from(vec![b'a'; 60]), false)
        .await
        .unwrap();
    b.publish_body(Bytes::from(vec![b'b'; 30]), false)
        .await
        .unwrap();
    assert_eq!(total.bytes(), 90, "both keep everything under the bound");
    assert!(a.joinable() && b.joinable());
    // 120 > 100: B takes no new followers and keeps only what its follower has not read.
    b.publish_body(Bytes::from(vec![b'c'; 30]), false)
        .await
        .unwrap();
    assert!(
        !b.joinable(),
        "over the shared bound B still takes followers"
    );
    assert!(b.join().is_none());
    assert_eq!(total.bytes(), 120, "its follower has read nothing yet");
    assert_eq!(read_one(&follower).await.len(), 60);
    b.publish_body(Bytes::from(vec![b'd'; 10]), false)
        .await
        .unwrap();
    assert_eq!(b.retained_bytes(), 10, "what the follower read is dropped");
    assert_eq!(total.bytes(), 70);
    // A, still joinable, stops at its next chunk while the total stays over the bound.
    assert!(a.joinable());
    a.publish_body(Bytes::from(vec![b'e'; 50]), false)
        .await
        .unwrap();
    assert!(!a.joinable());
    assert_eq!(a.retained_bytes(), 0, "no follower: A keeps nothing");
    assert_eq!(total.bytes(), 10);
    drop(follower);
    drop((a, b));
    assert_eq!(total.bytes(), 0, "every byte given back");
}
