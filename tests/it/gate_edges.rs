//! The delivery gate against hostile inputs and failures, on real Redis:
//! channel names full of Lua and Redis syntax, extreme rates, a breaker
//! that opens at the first failure, cool-downs of 1 ms and 30 days, a probe
//! whose worker dies mid-probe, and the master's clock going back.

use std::time::Duration;

use herald::gate::rate::ProbeAsk;
use herald::gate::{Ask, BreakerState, Gate, Report, Transition};
use herald::lock::{LockConfig, Redlock};
use herald::policy::RateLimit;
use herald::secret::SecretUrl;
use redis::AsyncCommands;

use crate::helpers::*;

/// A gate on the shared Redis, and its key prefix.
async fn gate() -> (Gate, String) {
    require_redis().await;
    let prefix = key_prefix();
    let mut cfg = LockConfig::new(vec![SecretUrl::parse(redis_url()).unwrap()]);
    cfg.key_prefix = prefix.clone();
    let redlock = Redlock::new(cfg).await.unwrap();
    redlock.warm_up(Duration::from_secs(2)).await;
    (Gate::new(redlock), prefix)
}

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn limited(channel: &str, rows: u32, per_second: f64, burst: u32) -> Ask<'_> {
    Ask {
        channel,
        rows,
        rate: Some(RateLimit { per_second, burst }),
        probe: None,
    }
}

fn probe<'a>(channel: &'a str, token: &'a str, ttl: Duration) -> Ask<'a> {
    Ask {
        channel,
        rows: 5,
        rate: None,
        probe: Some(ProbeAsk { token, ttl }),
    }
}

fn fail<'a>(channel: &'a str, n: u32, failures: u32, cool_down: Duration) -> Report<'a> {
    Report::Counts {
        channel,
        answered: false,
        trailing_failures: n,
        failures,
        cool_down,
    }
}

#[tokio::test]
async fn channel_names_with_lua_and_redis_syntax_keep_their_own_state() {
    let (gate, _) = gate().await;
    // 64 characters of quotes, brackets, pattern and format characters,
    // the board's own separator, and multi-byte text.
    let odd = "a'b\"c]]--[[%s%d{x}*?:o:f:\\n\u{e9}\u{1f642}".to_owned();
    let odd = format!("{odd}{}", "z".repeat(64 - odd.chars().count()));
    assert_eq!(odd.chars().count(), 64);
    let v = gate
        .admit(&[limited(&odd, 10, 100.0, 3), limited("plain", 10, 100.0, 3)])
        .await
        .unwrap();
    assert_eq!((v[0].granted, v[1].granted), (3, 3), "{v:?}");
    let b = gate
        .report(&[fail(&odd, 1, 1, Duration::from_secs(60))])
        .await
        .unwrap();
    assert_eq!(b.transitions, vec![(odd.clone(), Transition::Opened)]);
    assert!(matches!(b.channels[&odd].state, BreakerState::Open(_)));
    assert_eq!(b.channels.len(), 1, "no other channel touched: {b:?}");
    let v = gate
        .admit(&[
            probe(&odd, "t", Duration::from_secs(5)),
            probe("plain", "t", Duration::from_secs(5)),
        ])
        .await
        .unwrap();
    assert_eq!((v[0].granted, v[1].granted), (0, 5), "{v:?}");
}

#[tokio::test]
async fn extreme_rates_neither_fail_nor_burst() {
    let (gate, _) = gate().await;
    // One a thousand seconds: the burst of one now, the next in ~1000 s.
    let v = gate.admit(&[limited("slow", 3, 0.001, 1)]).await.unwrap();
    assert_eq!(v[0].granted, 1, "{v:?}");
    assert_eq!(v[0].spacing, Duration::from_secs(1000));
    assert!(v[0].rate_start >= Duration::from_secs(999), "{v:?}");
    // Absurdly small: treated as one a year, and Redis accepts every value.
    let v = gate
        .admit(&[limited("tiny", 1000, 1e-300, 1)])
        .await
        .unwrap();
    assert_eq!(v[0].granted, 1, "{v:?}");
    let again = gate.admit(&[limited("tiny", 5, 1e-300, 1)]).await.unwrap();
    assert_eq!(again[0].granted, 0, "{again:?}");
    // A million a second with its default burst: a whole batch passes.
    let v = gate
        .admit(&[limited("fast", 1000, 1e6, 1_000_000)])
        .await
        .unwrap();
    assert_eq!(v[0].granted, 1000, "{v:?}");
    // ...and with a burst of one, the rest get slots microseconds apart.
    let v = gate.admit(&[limited("fast1", 1000, 1e6, 1)]).await.unwrap();
    assert!(v[0].granted >= 1, "{v:?}");
    assert_eq!(v[0].spacing, Duration::from_micros(1));
    assert!(v[0].rate_start < Duration::from_millis(10), "{v:?}");
}

#[tokio::test]
async fn one_failure_opens_and_cool_downs_of_1_ms_and_30_days_hold() {
    let (gate, prefix) = gate().await;
    let ttl = Duration::from_secs(5);
    // failures = 1, cool_down = 1 ms: open, then half-open at once.
    let b = gate
        .report(&[fail("quick", 1, 1, Duration::from_millis(1))])
        .await
        .unwrap();
    assert_eq!(
        b.transitions,
        vec![("quick".to_owned(), Transition::Opened)]
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    let v = gate.admit(&[probe("quick", "p1", ttl)]).await.unwrap();
    assert_eq!((v[0].granted, v[0].probe), (1, true), "{v:?}");

    // 30 days: still open, and the board outlives the cool-down.
    let month = Duration::from_secs(30 * 86_400);
    gate.report(&[fail("month", 1, 1, month)]).await.unwrap();
    let b = gate.board().await.unwrap();
    let BreakerState::Open(left) = b.channels["month"].state else {
        panic!("{b:?}");
    };
    assert!(left > month - Duration::from_secs(60), "{left:?}");
    let pttl: i64 = redis()
        .await
        .pttl(format!("{prefix}gate:breakers"))
        .await
        .unwrap();
    assert!(
        pttl > month.as_millis() as i64,
        "the board would expire before the breaker closes: {pttl} ms"
    );
}

#[tokio::test]
async fn a_probe_whose_worker_died_is_taken_again_after_its_ttl() {
    let (gate, _) = gate().await;
    gate.report(&[fail("a", 1, 1, Duration::from_millis(1))])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let ttl = Duration::from_millis(400);
    let v = gate.admit(&[probe("a", "dead-worker", ttl)]).await.unwrap();
    assert!(v[0].probe, "{v:?}");
    // The worker dies: it never reports. Others wait for the probe...
    let v = gate.admit(&[probe("a", "w2", ttl)]).await.unwrap();
    assert_eq!(v[0].granted, 0, "{v:?}");
    assert!(v[0].breaker_wait <= ttl, "{v:?}");
    // ...but not for ever: once the probe key expires, a new probe goes.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let v = gate.admit(&[probe("a", "w2", ttl)]).await.unwrap();
        if v[0].probe {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "half-open for ever: {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b = gate
        .report(&[Report::Probe {
            channel: "a",
            answered: true,
            cool_down: Duration::from_millis(1),
            token: "w2",
        }])
        .await
        .unwrap();
    assert_eq!(b.transitions, vec![("a".to_owned(), Transition::Closed)]);
}

#[tokio::test]
async fn a_rate_limit_survives_the_masters_clock_going_back() {
    let (gate, prefix) = gate().await;
    let v = gate.admit(&[limited("sms", 5, 100.0, 5)]).await.unwrap();
    assert_eq!(v[0].granted, 5);
    // The master's clock goes back an hour: its stored schedule is now an
    // hour ahead of it (written here as the same state).
    let mut r = redis().await;
    let key = format!("{prefix}gate:rate:sms");
    let mut shifted = Vec::new();
    for field in ["tat", "at"] {
        let v: f64 = r.hget(&key, field).await.unwrap();
        shifted.push((field, format!("{:.0}", v + 3.6e9)));
    }
    let _: () = r.hset_multiple(&key, &shifted).await.unwrap();
    // The channel waits about one interval, not an hour.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let v = gate.admit(&[limited("sms", 20, 100.0, 5)]).await.unwrap();
    assert!(v[0].rate_start < Duration::from_secs(1), "{v:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let v = gate.admit(&[limited("sms", 20, 100.0, 5)]).await.unwrap();
    assert!(v[0].granted >= 1, "still stalled: {v:?}");
}
