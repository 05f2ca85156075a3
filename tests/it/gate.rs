//! The delivery gate as a library (`herald::gate`) against real Redis:
//! GCRA admission and slots for the rows over the limit, the breaker's
//! open → half-open → probe → closed cycle, failover to the next master,
//! and a gate that cannot reach Redis failing instead of letting rows
//! through.

use std::time::{Duration, Instant};

use herald::gate::rate::ProbeAsk;
use herald::gate::{Ask, BreakerState, Gate, Report, Transition};
use herald::lock::{LockConfig, Redlock};
use herald::policy::RateLimit;
use herald::secret::SecretUrl;

use crate::helpers::*;

async fn gate_on(urls: &[String]) -> Gate {
    let mut cfg = LockConfig::new(urls.iter().map(|u| SecretUrl::parse(u).unwrap()).collect());
    cfg.key_prefix = key_prefix();
    let redlock = Redlock::new(cfg).await.unwrap();
    redlock.warm_up(Duration::from_secs(2)).await;
    Gate::new(redlock)
}

fn rate(channel: &str, rows: u32, per_second: f64, burst: u32) -> Ask<'_> {
    Ask {
        channel,
        rows,
        rate: Some(RateLimit { per_second, burst }),
        probe: None,
    }
}

#[tokio::test]
async fn gcra_grants_the_burst_then_hands_out_slots_from_the_next_token() {
    require_redis().await;
    let gate = gate_on(&[redis_url().to_owned()]).await;
    let plain = Ask {
        channel: "free",
        rows: 7,
        rate: None,
        probe: None,
    };
    let v = gate
        .admit(&[rate("sms", 50, 100.0, 10), plain.clone()])
        .await
        .unwrap();
    assert_eq!(v[0].granted, 10, "{v:?}");
    assert_eq!(v[0].rate_deferred, 40);
    assert_eq!(v[0].spacing, Duration::from_millis(10));
    assert!(v[0].rate_start <= Duration::from_millis(20), "{v:?}");
    assert_eq!(v[1].granted, 7, "an unlimited channel passes whole");
    // A second instance at once: nothing now, and its slots count from
    // the next free token (not after the 40 slots already handed out: a
    // slot is a hint, and rows sent to the back of such a tail left the
    // channel idle while their own slots passed unused).
    let w = gate.admit(&[rate("sms", 20, 100.0, 10)]).await.unwrap();
    assert!(w[0].granted <= 1, "{w:?}");
    assert_eq!(w[0].rate_deferred + w[0].granted, 20, "{w:?}");
    assert!(
        w[0].rate_start <= Duration::from_millis(20),
        "slots start at the next token: {w:?}"
    );
    // Over a second, about 100 more conform, never more than rate + burst.
    let start = Instant::now();
    let mut granted = 0;
    while start.elapsed() < Duration::from_secs(1) {
        granted += gate.admit(&[rate("sms", 5, 100.0, 10)]).await.unwrap()[0].granted;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!((80..=110).contains(&granted), "{granted} granted in 1 s");
}

#[tokio::test]
async fn a_breaker_opens_at_the_threshold_lets_one_probe_through_and_closes_on_an_answer() {
    require_redis().await;
    let gate = gate_on(&[redis_url().to_owned()]).await;
    let cool = Duration::from_millis(600);
    let counts = |answered, trailing| Report::Counts {
        channel: "a",
        answered,
        trailing_failures: trailing,
        failures: 5,
        cool_down: cool,
    };
    // Failures from several reporters add up; an answer resets the count.
    let b = gate.report(&[counts(false, 3)]).await.unwrap();
    assert_eq!(b.channels["a"].failures, 3);
    let b = gate.report(&[counts(true, 1)]).await.unwrap();
    assert_eq!(b.channels["a"].failures, 1);
    assert!(b.transitions.is_empty());
    let b = gate.report(&[counts(false, 4)]).await.unwrap();
    assert_eq!(b.transitions, vec![("a".to_owned(), Transition::Opened)]);
    assert!(matches!(b.channels["a"].state, BreakerState::Open(_)));
    // A second opening report does not reopen (one log line per opening).
    let b = gate.report(&[counts(false, 2)]).await.unwrap();
    assert!(b.transitions.is_empty());

    let probe = |token| Ask {
        channel: "a",
        rows: 9,
        rate: None,
        probe: Some(ProbeAsk {
            token,
            ttl: Duration::from_secs(5),
        }),
    };
    let v = gate.admit(&[probe("w1:1")]).await.unwrap();
    assert_eq!(v[0].granted, 0, "open: nothing passes");
    assert!(v[0].breaker_wait > Duration::from_millis(300), "{v:?}");
    tokio::time::sleep(cool).await;
    assert_eq!(
        gate.board().await.unwrap().channels["a"].state,
        BreakerState::HalfOpen
    );
    let v = gate.admit(&[probe("w1:2")]).await.unwrap();
    assert_eq!((v[0].granted, v[0].probe), (1, true), "{v:?}");
    let other = gate.admit(&[probe("w2:1")]).await.unwrap();
    assert_eq!(other[0].granted, 0, "one probe fleet-wide: {other:?}");
    assert!(other[0].breaker_wait > Duration::from_secs(4), "{other:?}");

    // The probe fails: open again for a cool-down.
    let b = gate
        .report(&[Report::Probe {
            channel: "a",
            answered: false,
            cool_down: cool,
            token: "w1:2",
        }])
        .await
        .unwrap();
    assert_eq!(b.transitions, vec![("a".to_owned(), Transition::Reopened)]);
    tokio::time::sleep(cool).await;
    let v = gate.admit(&[probe("w2:2")]).await.unwrap();
    assert!(v[0].probe, "the failed probe freed the key: {v:?}");
    let b = gate
        .report(&[Report::Probe {
            channel: "a",
            answered: true,
            cool_down: cool,
            token: "w2:2",
        }])
        .await
        .unwrap();
    assert_eq!(b.transitions, vec![("a".to_owned(), Transition::Closed)]);
    assert!(
        !b.channels.contains_key("a"),
        "closed and no failures: {b:?}"
    );
    let v = gate.admit(&[probe("w1:3")]).await.unwrap();
    assert_eq!((v[0].granted, v[0].probe), (9, false));
}

#[tokio::test]
async fn the_gate_moves_to_the_next_master_and_fails_when_none_answers() {
    require_redis().await;
    let dead = format!("redis://127.0.0.1:{}", crate::redis_procs::free_port());
    let gate = gate_on(&[dead.clone(), redis_url().to_owned()]).await;
    let v = gate.admit(&[rate("sms", 3, 10.0, 2)]).await.unwrap();
    assert_eq!(v[0].granted, 2, "served by the second master: {v:?}");

    let gate = gate_on(&[dead]).await;
    let e = gate.admit(&[rate("sms", 3, 10.0, 2)]).await.unwrap_err();
    assert!(e.to_string().contains("no Redis master answered"), "{e}");
    assert!(gate.board().await.is_err());
}
