//! The breaker's state machine and half-open gate, on tokio's paused clock.

use super::*;

fn conf(failures: u32, open_ms: u64) -> BreakerConf {
    BreakerConf {
        consecutive_failures: failures,
        open_ms,
        ..BreakerConf::default()
    }
}

fn open(b: &Breaker, failures: u32) {
    for _ in 0..failures {
        assert!(b.admit().is_ok());
        b.failure();
    }
    assert_eq!(b.admit().unwrap_err(), Skip::Open);
}

#[tokio::test(start_paused = true)]
async fn opens_after_n_failures_and_a_probe_closes_it() {
    let b = Breaker::new(&conf(3, 1_000), "p", "unit-open:1");
    open(&b, 3);
    tokio::time::advance(Duration::from_millis(999)).await;
    assert_eq!(
        b.admit().unwrap_err(),
        Skip::Open,
        "still open before open_ms"
    );
    tokio::time::advance(Duration::from_millis(2)).await;
    let probe = b.admit().unwrap();
    assert!(probe.is_probe());
    b.success();
    drop(probe);
    for _ in 0..5 {
        assert!(!b.admit().unwrap().is_probe(), "closed: everyone passes");
    }
    b.failure();
    assert!(
        b.admit().is_ok(),
        "one failure does not reopen a closed breaker"
    );
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_exactly_one_probe() {
    let b = Breaker::new(&conf(1, 100), "p", "unit-one:1");
    open(&b, 1);
    tokio::time::advance(Duration::from_millis(150)).await;
    let results: Vec<Result<Pass, Skip>> = (0..10).map(|_| b.admit()).collect();
    let probes = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(probes, 1, "exactly one probe");
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|s| *s == Skip::ProbeInFlight));
    assert!(!b.permits(), "a probe is out");
    // The probe fails: open again for open_ms, nobody passes.
    b.failure();
    drop(results);
    assert_eq!(b.admit().unwrap_err(), Skip::Open);
    tokio::time::advance(Duration::from_millis(150)).await;
    assert!(b.admit().unwrap().is_probe(), "next probe after open_ms");
}

#[tokio::test(start_paused = true)]
async fn a_probe_dropped_without_an_outcome_frees_the_slot() {
    let b = Breaker::new(&conf(1, 100), "p", "unit-drop:1");
    open(&b, 1);
    tokio::time::advance(Duration::from_millis(100)).await;
    let probe = b.admit().unwrap();
    assert_eq!(b.admit().unwrap_err(), Skip::ProbeInFlight);
    drop(probe);
    let next = b.admit().unwrap();
    assert!(next.is_probe(), "the next caller probes");
    assert_eq!(b.admit().unwrap_err(), Skip::ProbeInFlight);
    // A stale pass dropped after the state moved on changes nothing.
    b.success();
    drop(next);
    assert!(!b.admit().unwrap().is_probe());
}

#[tokio::test(start_paused = true)]
async fn failure_ratio_over_the_window_opens_once_min_requests_were_seen() {
    let c = BreakerConf {
        consecutive_failures: 100,
        failure_ratio: Some(0.5),
        min_requests: 10,
        window_ms: 1_000,
        open_ms: 500,
    };
    let b = Breaker::new(&c, "p", "unit-ratio:1");
    // 4 of 8 failed: under min_requests.
    for i in 0..8 {
        if i % 2 == 0 {
            b.failure();
        } else {
            b.success();
        }
    }
    assert!(b.admit().is_ok());
    // Old outcomes leave the window: 9 successes then 1 failure later is 10% only.
    tokio::time::advance(Duration::from_millis(1_200)).await;
    for _ in 0..9 {
        b.success();
    }
    b.failure();
    assert!(b.admit().is_ok(), "10% failed");
    for _ in 0..9 {
        b.failure();
    }
    // 9 of 18 failed by the eighth: at least half.
    assert_eq!(b.admit().unwrap_err(), Skip::Open);
}

#[tokio::test(start_paused = true)]
async fn outcomes_while_open_change_nothing_and_a_late_success_closes() {
    let b = Breaker::new(&conf(1, 1_000), "p", "unit-late:1");
    open(&b, 1);
    b.success();
    b.failure();
    assert_eq!(b.admit().unwrap_err(), Skip::Open);
    tokio::time::advance(Duration::from_millis(1_001)).await;
    // The active health check reports without a pass.
    assert!(b.permits());
    b.success();
    assert!(!b.admit().unwrap().is_probe(), "closed");
}

#[tokio::test(start_paused = true)]
async fn configure_keeps_the_state_and_applies_new_thresholds() {
    let b = Breaker::new(&conf(5, 1_000), "p", "unit-conf:1");
    b.failure();
    b.configure(&conf(2, 50));
    b.failure();
    assert_eq!(b.admit().unwrap_err(), Skip::Open, "second failure of 2");
    tokio::time::advance(Duration::from_millis(60)).await;
    assert!(b.admit().unwrap().is_probe(), "new open_ms applied");
}

#[test]
fn only_upstream_outcomes_count() {
    assert_eq!(Outcome::of_status(0), Outcome::Neutral);
    assert_eq!(Outcome::of_status(200), Outcome::Success);
    assert_eq!(Outcome::of_status(404), Outcome::Success);
    for s in FAILURE_STATUSES {
        assert_eq!(Outcome::of_status(s), Outcome::Failure);
    }
    assert_eq!(
        Outcome::of_error(&SluiceError::UpstreamUnreachable("h:1".into())),
        Outcome::Failure
    );
    for neutral in [
        SluiceError::ClientGone,
        SluiceError::BadRequestFraming,
        SluiceError::Internal,
        SluiceError::UnknownTenant,
    ] {
        assert_eq!(Outcome::of_error(&neutral), Outcome::Neutral);
    }
    let conf = BreakerConf {
        consecutive_failures: 2,
        ..BreakerConf::default()
    };
    let b = Breaker::new(&conf, "p", "unit-test:2");
    for _ in 0..50 {
        b.record(Outcome::Neutral);
    }
    b.record(Outcome::Failure);
    assert!(
        b.permits(),
        "neutral outcomes neither open nor reset the count"
    );
    b.record(Outcome::Neutral);
    b.record(Outcome::Failure);
    assert!(!b.permits(), "two consecutive upstream failures open it");
}
