//! Redlock against real redis-server processes (1, 3 and 5 masters).
//!
//! Every test uses its own key prefix; nothing here flushes a database.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald::lock::{FailureKind, Lock, LockConfig, LockError, Redlock, Token};

use crate::helpers::wait_until;
use crate::redis_procs::{Masters, RedisProc};

const MASTER_TIMEOUT: Duration = Duration::from_millis(50);

pub(crate) fn prefix() -> String {
    format!("t-{}:", &Token::random().unwrap().to_hex()[..12])
}

/// Test masters' settings: a short timeout and a quick breaker, so faults
/// show within a test's time.
pub(crate) fn config(urls: Vec<String>, prefix: &str) -> LockConfig {
    LockConfig {
        masters: urls
            .iter()
            .map(|u| herald::secret::SecretUrl::parse(u).unwrap())
            .collect(),
        key_prefix: prefix.to_owned(),
        master_timeout: MASTER_TIMEOUT,
        pool_size: 2,
        breaker_failures: 3,
        breaker_cooldown: Duration::from_millis(300),
        ..LockConfig::default()
    }
}

async fn redlock(urls: Vec<String>, prefix: &str) -> Redlock {
    Redlock::new(config(urls, prefix)).await.unwrap()
}

async fn conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Keys under `prefix` on one master (KEYS is fine on a test server).
async fn keys_on(url: &str, prefix: &str) -> Vec<String> {
    let mut c = conn(url).await;
    redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut c)
        .await
        .unwrap()
}

async fn no_keys_left(urls: &[String], prefix: &str) {
    for url in urls {
        let url = url.clone();
        wait_until("no keys left behind", Duration::from_secs(3), || {
            let url = url.clone();
            async move { keys_on(&url, prefix).await.is_empty() }
        })
        .await;
    }
}

/// Retries retryable failures, pausing up to `pause` (jittered) between
/// attempts, until `deadline`; the callers that need retries write this loop.
async fn acquire_retrying(
    rl: &Redlock,
    key: &str,
    ttl: Duration,
    pause: Duration,
    deadline: Duration,
) -> Result<Lock, LockError> {
    let until = Instant::now() + deadline;
    loop {
        match rl.acquire(key, ttl).await {
            Err(e) if e.is_retryable() && Instant::now() < until => {
                let ns = pause.as_nanos() as u64;
                let wait = Duration::from_nanos(if ns == 0 {
                    0
                } else {
                    rand::random::<u64>() % ns
                });
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

fn ttl() -> Duration {
    Duration::from_secs(5)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_exclusion_with_1_3_and_5_masters() {
    for n in [1usize, 3, 5] {
        let masters = Masters::start(n);
        let p = prefix();
        let mut instances = Vec::new();
        for _ in 0..3 {
            instances.push(redlock(masters.urls(), &p).await);
        }
        assert_eq!(instances[0].quorum(), n / 2 + 1);
        // Deliberately non-atomic read-modify-write: only the lock protects it.
        let counter = Arc::new(AtomicU64::new(0));
        let intervals = Arc::new(Mutex::new(Vec::<(String, Instant, Instant)>::new()));
        let tasks = 12;
        let per_task = 15;
        let mut handles = Vec::new();
        for t in 0..tasks {
            let rl = instances[t % instances.len()].clone();
            let counter = counter.clone();
            let intervals = intervals.clone();
            handles.push(tokio::spawn(async move {
                for _ in 0..per_task {
                    let lock = acquire_retrying(
                        &rl,
                        "counter",
                        ttl(),
                        Duration::from_millis(8),
                        Duration::from_secs(60),
                    )
                    .await
                    .unwrap();
                    let start = Instant::now();
                    let v = counter.load(Ordering::Relaxed);
                    tokio::task::yield_now().await;
                    tokio::task::yield_now().await;
                    counter.store(v + 1, Ordering::Relaxed);
                    let end = Instant::now();
                    intervals
                        .lock()
                        .unwrap()
                        .push((lock.token().to_hex(), start, end));
                    rl.release(lock).await.unwrap();
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        assert_eq!(
            counter.load(Ordering::Relaxed),
            (tasks * per_task) as u64,
            "{n} masters"
        );
        let mut iv = intervals.lock().unwrap().clone();
        iv.sort_by_key(|i| i.1);
        for w in iv.windows(2) {
            assert!(w[0].2 <= w[1].1, "{n} masters: critical sections overlap");
            assert_ne!(w[0].0, w[1].0, "tokens are unique");
        }
        no_keys_left(&masters.urls(), &p).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_three_killed_still_granted() {
    let mut masters = Masters::start(3);
    let p = prefix();
    let rl = redlock(masters.urls(), &p).await;
    assert_eq!(rl.warm_up(Duration::from_secs(2)).await, 3);
    masters[2].kill();
    assert_eq!(rl.warm_up(Duration::from_millis(200)).await, 2);
    for i in 0..10 {
        let lock = rl.acquire(&format!("k{i}"), ttl()).await.unwrap();
        assert!(lock.remaining_validity() > Duration::from_secs(4));
        rl.release(lock).await.unwrap();
    }
    let batch = rl
        .acquire_many(&(0..20).map(|i| format!("b{i}")).collect::<Vec<_>>(), ttl())
        .await
        .unwrap();
    assert_eq!(batch.len(), 20);
    rl.release_many(batch).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_three_killed_none_granted_and_nothing_left_behind() {
    let mut masters = Masters::start(3);
    let urls = masters.urls();
    let p = prefix();
    let rl = redlock(urls.clone(), &p).await;
    masters[1].kill();
    masters[2].kill();
    for i in 0..5 {
        match rl.acquire(&format!("k{i}"), ttl()).await {
            Err(LockError::NoQuorum {
                granted,
                needed,
                causes,
            }) => {
                assert!(granted <= 1);
                assert_eq!(needed, 2);
                assert_eq!(causes.len(), 2, "{causes:?}");
            }
            other => panic!("expected NoQuorum, got {other:?}"),
        }
    }
    let keys: Vec<String> = (0..50).map(|i| format!("b{i}")).collect();
    assert!(matches!(
        rl.acquire_many(&keys, ttl()).await,
        Err(LockError::NoQuorum { .. })
    ));
    assert!(rl.metrics().snapshot().no_quorum >= 6);
    masters[1].restart();
    masters[2].restart();
    no_keys_left(&urls, &p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_three_paused_costs_at_most_the_master_timeout() {
    let mut masters = Masters::start(3);
    let p = prefix();
    let rl = redlock(masters.urls(), &p).await;
    // Connections exist before the pause, as in production.
    let l = rl.acquire("warm", ttl()).await.unwrap();
    rl.release(l).await.unwrap();
    masters[1].pause();
    for round in 0..5 {
        let mut handles = Vec::new();
        for i in 0..8 {
            let rl = rl.clone();
            handles.push(tokio::spawn(async move {
                let t0 = Instant::now();
                let lock = rl.acquire(&format!("r{round}-k{i}"), ttl()).await.unwrap();
                let took = t0.elapsed();
                rl.release(lock).await.unwrap();
                took
            }));
        }
        for h in handles {
            let took = h.await.unwrap();
            assert!(
                took <= MASTER_TIMEOUT + Duration::from_millis(30),
                "acquire took {took:?} with one master hung"
            );
        }
    }
    // A fresh instance that never saw the master alive is bounded too.
    let fresh = redlock(masters.urls(), &p).await;
    let t0 = Instant::now();
    let lock = fresh.acquire("fresh", ttl()).await.unwrap();
    assert!(
        t0.elapsed() <= MASTER_TIMEOUT + Duration::from_millis(100),
        "{:?}",
        t0.elapsed()
    );
    fresh.release(lock).await.unwrap();
    masters[1].resume();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_survives_two_of_three_masters_paused() {
    let masters = Masters::start(3);
    let p = prefix();
    let rl = redlock(masters.urls(), &p).await;
    let mut lock = rl.acquire("job", Duration::from_secs(2)).await.unwrap();
    // The acquire needs a majority only: on a loaded machine one master's
    // SET may have missed its timeout and never been sent.
    let mine = vec![format!("{p}job")];
    let mut holding = Vec::new();
    for url in masters.urls() {
        holding.push(keys_on(&url, &p).await == mine);
    }
    assert!(holding.iter().filter(|h| **h).count() >= 2);
    for i in 0..2 {
        assert!(masters[i].raw("CLIENT PAUSE 700 ALL").starts_with("+OK"));
    }
    let t0 = Instant::now();
    rl.extend(&mut lock, Duration::from_secs(2)).await.unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "extend waited out the pause"
    );
    assert!(lock.remaining_validity() > Duration::from_millis(1500));
    // Still ours on every master that had it, and nobody else can take it.
    for (url, held) in masters.urls().into_iter().zip(holding) {
        if held {
            assert_eq!(keys_on(&url, &p).await, mine);
        }
    }
    let other = redlock(masters.urls(), &p).await;
    assert!(matches!(
        other.acquire("job", ttl()).await,
        Err(LockError::Contended)
    ));
    rl.release(lock).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_owner_cannot_release_or_extend_and_keys_expire() {
    let masters = Masters::start(3);
    let p = prefix();
    let a = redlock(masters.urls(), &p).await;
    let b = redlock(masters.urls(), &p).await;
    let short = Duration::from_millis(300);
    let t0 = Instant::now();
    let mut old = a.acquire("res", short).await.unwrap();
    assert!(matches!(
        b.acquire("res", short).await,
        Err(LockError::Contended)
    ));
    // The key expires after its TTL: b gets it then, not before.
    let newer = acquire_retrying(
        &b,
        "res",
        ttl(),
        Duration::from_millis(20),
        Duration::from_secs(3),
    )
    .await
    .unwrap();
    assert!(
        t0.elapsed() >= short - Duration::from_millis(10),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(old.remaining_validity(), Duration::ZERO);
    // The new owner holds a majority; the old key may still linger for a
    // moment on a master whose expiry lagged, which is why b's SET there
    // could have been refused. Count where b's key is, before and after.
    let mut held_before = 0;
    for url in masters.urls() {
        held_before += keys_on(&url, &p).await.len();
    }
    assert!(held_before >= 2, "the new owner holds a majority");
    // The former owner can neither release nor extend the new owner's lock.
    assert!(matches!(
        a.extend(&mut old, ttl()).await,
        Err(LockError::Lost)
    ));
    assert!(matches!(a.release(old).await, Err(LockError::Lost)));
    let mut held_after = 0;
    for url in masters.urls() {
        held_after += keys_on(&url, &p).await.len();
    }
    assert!(held_after >= 2, "new owner's key intact on a majority");
    assert!(a.metrics().snapshot().extend_failures >= 1);
    b.release(newer).await.unwrap();
    no_keys_left(&masters.urls(), &p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_short_ttl_is_an_error_at_once() {
    let mut masters = Masters::start(1);
    let p = prefix();
    let rl = redlock(masters.urls(), &p).await;
    // The master is stopped: a call that sent anything would wait out the
    // master timeout and fail with another error, whatever the machine's
    // load (a wall-clock bound alone failed on a loaded CI machine).
    masters[0].pause();
    let t0 = Instant::now();
    for ttl in [
        Duration::ZERO,
        Duration::from_millis(1),
        Duration::from_millis(3),
    ] {
        assert!(matches!(
            rl.acquire("x", ttl).await,
            Err(LockError::TtlTooShort { .. })
        ));
        assert!(matches!(
            rl.acquire_many(&["x".into()], ttl).await,
            Err(LockError::TtlTooShort { .. })
        ));
        assert!(matches!(
            rl.with_lock("x", ttl, |_| async {}).await,
            Err(LockError::TtlTooShort { .. })
        ));
    }
    assert!(
        t0.elapsed() < Duration::from_millis(400),
        "{:?}",
        t0.elapsed()
    );
    assert!(matches!(
        rl.acquire("x", Duration::MAX).await,
        Err(LockError::Config(_))
    ));
    masters[0].resume();
    let mut ok = rl.acquire("x", Duration::from_millis(200)).await.unwrap();
    assert!(matches!(
        rl.extend(&mut ok, Duration::from_millis(2)).await,
        Err(LockError::TtlTooShort { .. })
    ));
    assert!(keys_on(&masters.urls()[0], &p).await.len() <= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_of_500_returns_exactly_the_free_keys() {
    let masters = Masters::start(3);
    let urls = masters.urls();
    let p = prefix();
    let rl = redlock(urls.clone(), &p).await;
    let other = redlock(urls.clone(), &p).await;
    let keys: Vec<String> = (0..500).map(|i| format!("n:{i}")).collect();
    // Held properly elsewhere: every 7th key.
    let held: Vec<String> = keys.iter().step_by(7).cloned().collect();
    let theirs = other.acquire_many(&held, ttl()).await.unwrap();
    assert_eq!(theirs.granted(), &held[..]);
    // Held by a foreign value on 2 of 3 masters (we can win only a minority,
    // which must be undone): keys 3, 10, 17, ...
    let minority: Vec<String> = keys.iter().skip(3).step_by(7).cloned().collect();
    for url in &urls[..2] {
        let mut c = conn(url).await;
        for k in &minority {
            let _: () = redis::cmd("SET")
                .arg(format!("{p}{k}"))
                .arg("foreign")
                .arg("PX")
                .arg(60_000)
                .query_async(&mut c)
                .await
                .unwrap();
        }
    }
    let t0 = Instant::now();
    let mine = rl.acquire_many(&keys, ttl()).await.unwrap();
    let took = t0.elapsed();
    let expected: Vec<String> = keys
        .iter()
        .filter(|k| !held.contains(k) && !minority.contains(k))
        .cloned()
        .collect();
    assert_eq!(
        mine.granted(),
        &expected[..],
        "granted exactly the free keys, in order"
    );
    assert!(mine.is_granted("n:1") && !mine.is_granted("n:0") && !mine.is_granted("n:3"));
    assert!(
        mine.remaining_validity() > Duration::from_secs(4),
        "took {took:?}"
    );
    // Our minority grants on the third master are deleted again.
    let third = urls[2].clone();
    let expected_on_third = held.len() + expected.len();
    wait_until("minority grants released", Duration::from_secs(3), || {
        let third = third.clone();
        let p = p.clone();
        async move { keys_on(&third, &p).await.len() == expected_on_third }
    })
    .await;
    // Release a sub-batch, then the rest.
    assert_eq!(mine.len(), expected.len());
    let first: Vec<String> = expected[..100].to_vec();
    rl.release_keys(&mine, &first).await.unwrap();
    let again = other.acquire_many(&first, ttl()).await.unwrap();
    assert_eq!(again.len(), 100, "released sub-batch is free again");
    other.release_many(again).await.unwrap();
    rl.release_many(mine).await.unwrap();
    other.release_many(theirs).await.unwrap();
    for url in &urls {
        let mut c = conn(url).await;
        for k in &minority {
            let _: () = redis::cmd("DEL")
                .arg(format!("{p}{k}"))
                .query_async(&mut c)
                .await
                .unwrap();
        }
    }
    no_keys_left(&urls, &p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_fails_fast_on_a_dead_master_and_recovers() {
    let mut masters = Masters::start(1);
    let p = prefix();
    let rl = redlock(masters.urls(), &p).await;
    let l = rl.acquire("b", ttl()).await.unwrap();
    rl.release(l).await.unwrap();
    masters[0].kill();
    let is_breaker_open = |e: &LockError| match e {
        LockError::NoQuorum { causes, .. } => {
            causes.iter().any(|c| c.kind == FailureKind::BreakerOpen)
        }
        _ => false,
    };
    // A few failures open the breaker ...
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let e = rl.acquire("b", ttl()).await.unwrap_err();
        if is_breaker_open(&e) {
            break;
        }
        assert!(Instant::now() < deadline, "breaker never opened: {e}");
    }
    // ... after which a dead master costs next to nothing.
    for _ in 0..20 {
        let t0 = Instant::now();
        let e = rl.acquire("b", ttl()).await.unwrap_err();
        assert!(is_breaker_open(&e), "{e}");
        assert!(
            t0.elapsed() < Duration::from_millis(5),
            "{:?}",
            t0.elapsed()
        );
    }
    let m = rl.metrics().snapshot();
    assert!(m.masters[0].breaker_opened >= 1 && m.masters[0].breaker_rejections >= 20);
    masters[0].restart();
    // A restarted master sits out for the longest TTL in use (see
    // lock::restart), then the breaker's probe lets it back in.
    let l = acquire_retrying(
        &rl,
        "b",
        ttl(),
        Duration::from_millis(100),
        ttl() + Duration::from_secs(5),
    )
    .await
    .unwrap();
    rl.release(l).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_per_window_has_exactly_one_winner() {
    let masters = Masters::start(3);
    let p = prefix();
    let window = Duration::from_secs(30);
    // Stay clear of a window boundary so all callers see the same window.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let into = Duration::from_millis((now.as_millis() % window.as_millis()) as u64);
    if window - into < Duration::from_secs(3) {
        tokio::time::sleep(window - into + Duration::from_millis(100)).await;
    }
    let mut instances = Vec::new();
    for _ in 0..4 {
        instances.push(redlock(masters.urls(), &p).await);
    }
    let mut handles = Vec::new();
    for i in 0..40 {
        let rl = instances[i % 4].clone();
        handles.push(tokio::spawn(async move {
            rl.once_per_window("stats", window).await
        }));
    }
    let mut results = Vec::new();
    for h in handles {
        results.push(h.await.unwrap());
    }
    let winners = results.iter().filter(|r| matches!(r, Ok(true))).count();
    assert_eq!(
        winners,
        1,
        "{results:?} {:?}",
        instances[0].metrics().snapshot()
    );
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert!(!instances[0].once_per_window("stats", window).await.unwrap());
    // The winner's key is never released: it stays on a majority, with the
    // window as TTL.
    let mut holding = 0;
    for url in masters.urls() {
        let keys = keys_on(&url, &p).await;
        assert!(keys.len() <= 1, "{keys:?}");
        if let Some(k) = keys.first() {
            assert!(k.starts_with(&format!("{p}stats:")));
            let mut c = conn(&url).await;
            let pttl: i64 = redis::cmd("PTTL").arg(k).query_async(&mut c).await.unwrap();
            assert!(pttl > 0 && pttl <= window.as_millis() as i64);
            holding += 1;
        }
    }
    assert!(holding >= 2, "held on a majority");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_works_and_fails_within_its_deadline_on_hang() {
    let mut masters = Masters::start(3);
    let p = prefix();
    let rl = redlock(masters.urls(), &p).await;
    rl.probe(Duration::from_millis(500)).await.unwrap();
    masters[0].pause();
    rl.probe(Duration::from_millis(500)).await.unwrap();
    masters[1].pause();
    let deadline = Duration::from_millis(200);
    let t0 = Instant::now();
    assert!(rl.probe(deadline).await.is_err());
    assert!(
        t0.elapsed() <= deadline + Duration::from_millis(30),
        "{:?}",
        t0.elapsed()
    );
    masters[0].resume();
    masters[1].resume();
    // A single hung master: the probe's own deadline is the bound.
    let mut single = RedisProc::start();
    let one = Redlock::new(LockConfig {
        master_timeout: Duration::from_secs(5),
        ..config(vec![single.url()], &p)
    })
    .await
    .unwrap();
    one.probe(Duration::from_millis(500)).await.unwrap();
    single.pause();
    let t0 = Instant::now();
    assert!(one.probe(deadline).await.is_err());
    assert!(
        t0.elapsed() <= deadline + Duration::from_millis(30),
        "{:?}",
        t0.elapsed()
    );
    single.resume();
    no_keys_left(&masters.urls(), &p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lock_renews_while_working_and_signals_loss() {
    let masters = Masters::start(3);
    let urls = masters.urls();
    let p = prefix();
    let rl = redlock(urls.clone(), &p).await;
    let other = redlock(urls.clone(), &p).await;
    let ttl = Duration::from_millis(300);
    // Work runs for three TTLs; the watchdog keeps the lock alive throughout.
    let out = rl
        .with_lock("job", ttl, |guard| {
            let other = other.clone();
            async move {
                let until = Instant::now() + Duration::from_millis(900);
                while Instant::now() < until {
                    assert!(matches!(
                        other.acquire("job", ttl).await,
                        Err(LockError::Contended)
                    ));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                assert!(!guard.is_lost());
                assert!(guard.remaining_validity() > Duration::ZERO);
                7
            }
        })
        .await
        .unwrap();
    assert_eq!(out, 7);
    // Released when the work finished.
    let l = other.acquire("job", ttl).await.unwrap();
    other.release(l).await.unwrap();

    // Loss: the key disappears from every master; the work is told.
    let urls2 = urls.clone();
    let p2 = p.clone();
    let lost_seen = rl
        .with_lock("job", ttl, |guard| async move {
            for url in &urls2 {
                let mut c = conn(url).await;
                let _: () = redis::cmd("DEL")
                    .arg(format!("{p2}job"))
                    .query_async(&mut c)
                    .await
                    .unwrap();
            }
            tokio::time::timeout(Duration::from_secs(3), guard.lost().cancelled())
                .await
                .is_ok()
        })
        .await
        .unwrap();
    assert!(lost_seen, "loss was signalled to the work");

    // Dropping with_lock mid-work releases the lock without blocking.
    let fut = rl.with_lock("drop", Duration::from_secs(10), |_| {
        std::future::pending::<()>()
    });
    assert!(tokio::time::timeout(Duration::from_millis(100), fut)
        .await
        .is_err());
    no_keys_left(&urls, &p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_acquire_releases_what_it_took() {
    let mut masters = Masters::start(3);
    let urls = masters.urls();
    let p = prefix();
    let rl = redlock(urls.clone(), &p).await;
    let l = rl.acquire("warm", ttl()).await.unwrap();
    rl.release(l).await.unwrap();
    masters[1].pause();
    masters[2].pause();
    // Master 0 grants at once, the others hang; the caller gives up first.
    let r = tokio::time::timeout(
        Duration::from_millis(10),
        rl.acquire("c", Duration::from_secs(60)),
    )
    .await;
    assert!(r.is_err(), "acquire was still waiting");
    let url0 = urls[0].clone();
    let p0 = p.clone();
    wait_until(
        "the granted master is cleaned up",
        Duration::from_secs(2),
        || {
            let url0 = url0.clone();
            let p0 = p0.clone();
            async move { keys_on(&url0, &p0).await.is_empty() }
        },
    )
    .await;
    // A failed acquire (majority impossible) cleans up the same way.
    assert!(matches!(
        rl.acquire("d", Duration::from_secs(60)).await,
        Err(LockError::NoQuorum { .. })
    ));
    wait_until("failed acquire cleaned up", Duration::from_secs(2), || {
        let url0 = urls[0].clone();
        let p0 = p.clone();
        async move { keys_on(&url0, &p0).await.is_empty() }
    })
    .await;
    masters[1].resume();
    masters[2].resume();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_and_password_work_and_are_never_shown() {
    let srv = RedisProc::start_with(&[
        "--user",
        "default",
        "off",
        "--user",
        "herald",
        "on",
        ">s3cr3t-pw",
        "~*",
        "&*",
        "+@all",
    ]);
    let p = prefix();
    let url = format!("redis://herald:s3cr3t-pw@127.0.0.1:{}", srv.port);
    let rl = redlock(vec![url], &p).await;
    let lock = rl.acquire("acl", ttl()).await.unwrap();
    rl.release(lock).await.unwrap();
    assert!(!format!("{rl:?}").contains("s3cr3t-pw"));
    let bad = redlock(
        vec![format!("redis://herald:wrong-pw@127.0.0.1:{}", srv.port)],
        &p,
    )
    .await;
    let e = bad.acquire("acl", ttl()).await.unwrap_err();
    assert!(matches!(e, LockError::NoQuorum { .. }), "{e}");
    let shown = format!("{e} {e:?} {bad:?}");
    assert!(!shown.contains("wrong-pw"), "{shown}");
    let m = format!("{:?}", rl.metrics().snapshot());
    assert!(!m.contains("s3cr3t-pw"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_redis_with_a_unique_prefix() {
    // The shared server is only ever touched under this test's own prefix.
    crate::helpers::require_redis().await;
    let p = prefix();
    // The shared server is busy with every other test: no 50 ms master
    // timeout here, which is about faults this test does not inject.
    let mut cfg = config(vec![crate::helpers::redis_url().into()], &p);
    cfg.master_timeout = Duration::from_secs(2);
    let rl = Redlock::new(cfg).await.unwrap();
    let mut lock = rl.acquire("shared", ttl()).await.unwrap();
    rl.extend(&mut lock, ttl()).await.unwrap();
    rl.release(lock).await.unwrap();
    rl.probe(Duration::from_millis(500)).await.unwrap();
    assert!(keys_on(crate::helpers::redis_url(), &p).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |args: &[&str]| {
        let ok = std::process::Command::new("openssl")
            .args(args)
            .current_dir(d)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "openssl {args:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=herald-test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    let path = |f: &str| d.join(f).to_str().unwrap().to_owned();
    let tls_port = crate::redis_procs::free_port().to_string();
    let srv = RedisProc::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &path("srv.crt"),
        "--tls-key-file",
        &path("srv.key"),
        "--tls-ca-cert-file",
        &path("ca.crt"),
        "--tls-auth-clients",
        "no",
    ]);
    let p = prefix();
    let cfg = LockConfig {
        tls_root_ca: Some(std::fs::read(d.join("ca.crt")).unwrap()),
        ..config(vec![format!("rediss://127.0.0.1:{tls_port}")], &p)
    };
    let rl = Redlock::new(cfg).await.unwrap();
    let lock = rl.acquire("tls", ttl()).await.unwrap();
    let batch = rl
        .acquire_many(&["a".into(), "b".into()], ttl())
        .await
        .unwrap();
    rl.release_many(batch).await.unwrap();
    rl.release(lock).await.unwrap();
    assert!(
        keys_on(&srv.url(), &p).await.is_empty(),
        "plain port sees the same data"
    );
    // Without the CA the server's certificate is rejected.
    let untrusted = redlock(vec![format!("rediss://127.0.0.1:{tls_port}")], &p).await;
    assert!(matches!(
        untrusted.acquire("tls", ttl()).await,
        Err(LockError::NoQuorum { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_hole_master_costs_at_most_the_master_timeout() {
    // Accepts TCP connections and never answers (not even the handshake).
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole_url = format!("redis://{}", hole.local_addr().unwrap());
    let keep = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in hole.incoming().take(64) {
            conns.push(c);
        }
    });
    let masters = Masters::start(2);
    let p = prefix();
    let mut urls = masters.urls();
    urls.push(hole_url);
    let rl = redlock(urls, &p).await;
    // Held by someone else on one real master: our outcome then depends on
    // the black hole, so this acquire must wait for it, but only for the timeout.
    let mut c = conn(&masters.urls()[0]).await;
    let _: () = redis::cmd("SET")
        .arg(format!("{p}held"))
        .arg("foreign")
        .query_async(&mut c)
        .await
        .unwrap();
    let mut handles = Vec::new();
    for i in 0..8 {
        let rl = rl.clone();
        handles.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let free = rl.acquire(&format!("free{i}"), ttl()).await;
            let free_took = t0.elapsed();
            let t1 = Instant::now();
            let held = rl.acquire("held", ttl()).await;
            (free.is_ok(), free_took, held.is_err(), t1.elapsed())
        }));
    }
    let mut longest = Duration::ZERO;
    for h in handles {
        let (ok, free_took, refused, held_took) = h.await.unwrap();
        assert!(ok && refused);
        let bound = MASTER_TIMEOUT + Duration::from_millis(30);
        assert!(
            free_took <= bound && held_took <= bound,
            "{free_took:?} {held_took:?}"
        );
        longest = longest.max(held_took);
    }
    // The first ones waited for the hole; once its breaker opened, the rest
    // failed fast.
    assert!(
        longest >= MASTER_TIMEOUT - Duration::from_millis(5),
        "{longest:?}"
    );
    let snap = rl.metrics().snapshot();
    assert!(snap.masters[2].timeouts >= 1, "{snap:?}");
    let _: () = redis::cmd("DEL")
        .arg(format!("{p}held"))
        .query_async(&mut c)
        .await
        .unwrap();
    drop(keep); // the accept thread ends with the test process
}

/// `INFO commandstats` call count of one command (0 if never called).
fn calls_of(r: &RedisProc, command: &str) -> u64 {
    let stats = r.raw("INFO commandstats");
    let prefix = format!("cmdstat_{command}:calls=");
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// Concurrent single-key acquires and releases share round trips: while one
/// batch is held up at the master, the others queue and go out together, and
/// the releases of different owners share one Lua call. Each caller still
/// gets its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_single_key_requests_are_coalesced() {
    let r = RedisProc::start();
    let p = prefix();
    let rl = Redlock::new(LockConfig {
        master_timeout: Duration::from_secs(3),
        ..config(vec![r.url()], &p)
    })
    .await
    .unwrap();
    rl.warm_up(Duration::from_secs(5)).await;
    let ttl = Duration::from_secs(60);
    // Someone else holds k0: its acquire must fail while the other 63 succeed.
    let other = redlock(vec![r.url()], &p).await;
    let held = other.acquire("k0", ttl).await.unwrap();
    assert!(r.raw("CONFIG RESETSTAT").starts_with("+OK"));

    assert!(r.raw("CLIENT PAUSE 300 WRITE").starts_with("+OK"));
    let keys: Vec<String> = (0..64).map(|i| format!("k{i}")).collect();
    let results = futures::future::join_all(keys.iter().map(|k| rl.acquire(k, ttl))).await;
    assert!(matches!(results[0], Err(LockError::Contended)));
    let locks: Vec<_> = results.into_iter().skip(1).map(Result::unwrap).collect();
    assert_eq!(calls_of(&r, "set"), 64, "one SET per key");

    assert!(r.raw("CLIENT PAUSE 300 WRITE").starts_with("+OK"));
    let released = futures::future::join_all(locks.into_iter().map(|l| rl.release(l))).await;
    assert!(released.iter().all(Result::is_ok), "{released:?}");
    let evals = calls_of(&r, "evalsha");
    assert!(
        (1..=4).contains(&evals),
        "63 releases took {evals} Lua calls; expected them coalesced into a few"
    );
    assert_eq!(keys_on(&r.url(), &p).await, vec![format!("{p}k0")]);
    other.release(held).await.unwrap();
    no_keys_left(&[r.url()], &p).await;
}
