//! Fleet-wide rate limits and circuit breakers (`herald::gate`) against
//! real worker processes, real HTTP receivers and real Redis.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::helpers::*;
use crate::receiver::Receiver;
use crate::redis_procs::free_port;

async fn insert_due(db: &TestDb, channel: &str, n: u64) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let values: Vec<String> = chunk
            .iter()
            .map(|i| {
                format!("({i}, '{channel}', '{{}}', UTC_TIMESTAMP(6) - INTERVAL 1 SECOND, UTC_TIMESTAMP(6) - INTERVAL 1 SECOND)")
            })
            .collect();
        db.exec(&format!(
            "INSERT INTO notifications (user_id, channel, payload, send_at, due_at) VALUES {}",
            values.join(",")
        ))
        .await;
    }
}

async fn count(db: &TestDb, channel: &str, status: &str) -> i64 {
    db.scalar(&format!(
        "SELECT COUNT(*) FROM notifications WHERE channel = '{channel}' AND status = '{status}'"
    ))
    .await
}

async fn attempts(db: &TestDb, channel: &str) -> (i64, i64) {
    sqlx::query_as(&format!(
        "SELECT CAST(COALESCE(SUM(attempts), 0) AS SIGNED), CAST(COALESCE(MAX(attempts), 0) AS SIGNED) \
         FROM notifications WHERE channel = '{channel}'"
    ))
    .fetch_one(db.store.pool())
    .await
    .unwrap()
}

/// `herald_breaker_open{channel="…"}` on a worker's /metrics (None if the
/// endpoint does not answer yet).
async fn breaker_gauge(addr: &str, channel: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let series = format!("herald_breaker_open{{channel=\"{channel}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

fn status(db: &TestDb, prefix: &str) -> String {
    let out = herald(Some(db))
        .env("HERALD_KEY_PREFIX", prefix)
        .arg("status")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_channel_opens_its_breaker_keeps_its_attempts_and_flows_again_when_it_returns() {
    require_redis().await;
    let db = TestDb::new().await;
    let prefix = key_prefix();
    let down = Arc::new(AtomicBool::new(true));
    let dead = Receiver::hanging_while(down.clone()).await;
    let healthy = Receiver::ok(Duration::ZERO).await;
    insert_due(&db, "a", 200).await;
    insert_due(&db, "b", 1500).await;
    let addrs = [
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    ];
    let workers: Vec<WorkerProc> = addrs
        .iter()
        .map(|addr| {
            WorkerProc::spawn(
                &db,
                &prefix,
                &[
                    (
                        "HERALD_CHANNELS",
                        format!("a=webhook:{},b=webhook:{}", dead.url(), healthy.url()),
                    ),
                    ("HERALD_SEND_TIMEOUT_MS", "500".into()),
                    // Without the breaker, every row would be tried again
                    // about once a second.
                    ("HERALD_RETRY_SCHEDULE", "1s,1s,1s,1s,1s,1s,1s,1s".into()),
                    ("HERALD_BREAKER_FAILURES", "3".into()),
                    ("HERALD_BREAKER_COOL_DOWN", "1s".into()),
                    ("HERALD_POLL_INTERVAL_MS", "50".into()),
                    ("HERALD_HTTP_ADDR", addr.clone()),
                ],
            )
        })
        .collect();
    let logs = || {
        workers
            .iter()
            .map(|w| w.logs())
            .collect::<Vec<_>>()
            .join("\n")
    };

    wait_until(
        "every b row sent while a is dead",
        Duration::from_secs(40),
        || async { count(&db, "b", "sent").await == 1500 },
    )
    .await;
    wait_until(
        "a's breaker gauge at 1",
        Duration::from_secs(20),
        || async {
            for addr in &addrs {
                if breaker_gauge(addr, "a").await == Some(1.0) {
                    return true;
                }
            }
            false
        },
    )
    .await;
    let shown = status(&db, &prefix);
    assert!(
        shown.contains("breaker    a: open") || shown.contains("breaker    a: half-open"),
        "{shown}"
    );

    // While open: only probes reach the receiver, one per cool-down
    // fleet-wide, and only they use attempts.
    let (sum_before, _) = attempts(&db, "a").await;
    let requests_before = dead.started();
    let t = Instant::now();
    wait_until("three probes", Duration::from_secs(20), || async {
        dead.started() >= requests_before + 3
    })
    .await;
    // Let the last probe's attempt be counted.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (sum_after, max_after) = attempts(&db, "a").await;
    let requests = dead.started() - requests_before;
    let secs = t.elapsed().as_secs_f64();
    assert!(
        (requests as f64) <= secs / 1.0 + 3.0,
        "{requests} requests in {secs:.1} s with a 1 s cool-down\n{}",
        logs()
    );
    assert!(
        sum_after - sum_before <= requests as i64 + 2,
        "attempts grew by {} for {requests} requests",
        sum_after - sum_before
    );
    assert!(max_after <= 6, "a row used {max_after} attempts while open");
    assert_eq!(count(&db, "a", "failed").await, 0);

    down.store(false, Ordering::SeqCst);
    wait_until(
        "every a row sent once a is back",
        Duration::from_secs(40),
        || async { count(&db, "a", "sent").await == 200 },
    )
    .await;
    assert_eq!(count(&db, "a", "failed").await, 0);
    wait_until(
        "a's breaker gauge back at 0 everywhere",
        Duration::from_secs(10),
        || async {
            for addr in &addrs {
                if breaker_gauge(addr, "a").await != Some(0.0) {
                    return false;
                }
            }
            true
        },
    )
    .await;
    let shown = status(&db, &prefix);
    assert!(shown.contains("breakers   all closed"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_hold_a_channel_to_200_per_second_and_the_channel_beside_it_drains() {
    require_redis().await;
    let db = TestDb::new().await;
    let prefix = key_prefix();
    let limited = Receiver::ok(Duration::ZERO).await;
    let free = Receiver::ok(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        format!(
            "[channels.limited]\ntransport = \"webhook\"\nurl = \"{}\"\nrate_limit = \"200/s\"\n\n\
             [channels.free]\ntransport = \"webhook\"\nurl = \"{}\"\n",
            limited.url(),
            free.url()
        ),
    )
    .unwrap();
    insert_due(&db, "limited", 5000).await;
    insert_due(&db, "free", 3000).await;
    let env = [
        ("HERALD_CONFIG", config.display().to_string()),
        ("HERALD_POLL_INTERVAL_MS", "100".to_owned()),
    ];
    let workers: Vec<WorkerProc> = (0..3)
        .map(|_| WorkerProc::spawn(&db, &prefix, &env))
        .collect();
    let logs = || {
        workers
            .iter()
            .map(|w| w.logs())
            .collect::<Vec<_>>()
            .join("\n")
    };

    wait_until(
        "a first limited delivery",
        Duration::from_secs(30),
        || async { limited.count() > 0 },
    )
    .await;
    let t0 = limited.hits().iter().map(|h| h.end).min().unwrap();
    // Warm-up (start-up, the first burst) excluded: 10 s windows starting
    // 3 s to 8 s after the first delivery. The limiter must never let more
    // through than rate × 10 s + burst (220/s) in any of them. A loaded
    // 2-core machine stalls processes for a second or more at times, and
    // capacity a GCRA does not use within one burst is gone, so the
    // lower bound (180/s) is asked of the best window, not of every one.
    wait_until("the 18 s mark", Duration::from_secs(40), || async {
        Instant::now() > t0 + Duration::from_millis(18_500)
    })
    .await;
    assert_eq!(
        count(&db, "free", "sent").await,
        3000,
        "the unlimited channel did not drain\n{}",
        logs()
    );
    let ends: Vec<Duration> = limited
        .hits()
        .iter()
        .filter(|h| h.status < 300)
        .map(|h| h.end.saturating_duration_since(t0))
        .collect();
    let mut per_s = [0usize; 19];
    for e in &ends {
        if let Some(n) = per_s.get_mut(e.as_secs() as usize) {
            *n += 1;
        }
    }
    let rates: Vec<f64> = (6..=16)
        .map(|half| {
            let from = Duration::from_millis(half * 500);
            let to = from + Duration::from_secs(10);
            ends.iter().filter(|e| **e >= from && **e < to).count() as f64 / 10.0
        })
        .collect();
    eprintln!("limited channel per second: {per_s:?}; 10 s windows: {rates:?}");
    let best = rates.iter().copied().fold(0.0, f64::max);
    // Never over the limit in any window; and no stall either: rows held
    // back are deferred to when they may go, so every window stays near
    // the rate (a looser floor than the best window's, for a loaded CI).
    assert!(
        rates.iter().all(|r| (150.0..=220.0).contains(r)),
        "limited channel at {rates:?}/s over 10 s windows; per second: {per_s:?}\n{}",
        logs()
    );
    assert!(
        (180.0..=220.0).contains(&best),
        "limited channel at {rates:?}/s over 10 s windows (want 200 ± 10 %); per second: {per_s:?}\n{}",
        logs()
    );
    let free_last = free.hits().iter().map(|h| h.end).max().unwrap();
    assert!(
        free_last < t0 + Duration::from_secs(10),
        "the unlimited channel took {:?} after the first limited delivery",
        free_last.saturating_duration_since(t0)
    );
    // Held-back rows were never attempted: every sent row took one attempt.
    let (_, max_attempts) = attempts(&db, "limited").await;
    assert_eq!(max_attempts, 1);
    assert_eq!(count(&db, "limited", "failed").await, 0);
}

/// One series (exact name and labels) on a worker's /metrics; 0 if absent.
async fn metric(addr: &str, series: &str) -> f64 {
    let Ok(r) = reqwest::get(format!("http://{addr}/metrics")).await else {
        return 0.0;
    };
    let text = r.text().await.unwrap_or_default();
    let series = format!("{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_does_not_answer_a_limited_channel_waits_and_then_resumes_without_a_burst() {
    // (A gate call that fails while the lock works, e.g. a master lost
    // between the two, defers the channel's rows: `tests/it/gate.rs` shows
    // the call failing, `worker::gate` turns that into a deferral.)
    let mut redis = crate::redis_procs::RedisProc::start();
    let db = TestDb::new().await;
    let limited = Receiver::ok(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        format!(
            "[channels.limited]\ntransport = \"webhook\"\nurl = \"{}\"\n\
             rate_limit = {{ rate = \"20/s\", burst = 5 }}\n",
            limited.url()
        ),
    )
    .unwrap();
    insert_due(&db, "limited", 400).await;
    let addr = format!("127.0.0.1:{}", free_port());
    let worker = WorkerProc::spawn(
        &db,
        &key_prefix(),
        &[
            ("HERALD_CONFIG", config.display().to_string()),
            ("HERALD_REDIS_URLS", redis.url()),
            ("HERALD_POLL_INTERVAL_MS", "50".into()),
            ("HERALD_HTTP_ADDR", addr.clone()),
        ],
    );
    wait_until("40 limited deliveries", Duration::from_secs(30), || async {
        limited.count() >= 40
    })
    .await;
    redis.pause();
    // In-flight sends end within a moment; after that nothing goes out.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = limited.count();
    // The lock needs Redis too: polls fail, so nothing is claimed (and
    // nothing burns an attempt) until it answers again.
    wait_until("failing polls", Duration::from_secs(10), || async {
        metric(&addr, "herald_poll_errors_total").await > 0.0
    })
    .await;
    wait_until("3 s of outage", Duration::from_secs(10), || async {
        limited.count() > before || Instant::now() > limited_last(&limited) + Duration::from_secs(3)
    })
    .await;
    assert_eq!(limited.count(), before, "sent while Redis did not answer");
    let resumed = Instant::now();
    redis.resume();
    wait_until("deliveries again", Duration::from_secs(20), || async {
        limited.count() > before
    })
    .await;
    wait_until(
        "3 s after the first delivery after resume",
        Duration::from_secs(20),
        || async { Instant::now() > resumed + Duration::from_secs(6) },
    )
    .await;
    // No burst of what waited: from the first delivery after the outage,
    // every second carries at most rate + burst (20 + 5; +2 for rows
    // granted at a second's edge and delivered just after it).
    let after: Vec<Duration> = limited
        .hits()
        .iter()
        .filter(|h| h.end > resumed)
        .map(|h| h.end - resumed)
        .collect();
    let first = after.iter().min().copied().unwrap();
    for s in 0..4u32 {
        let from = first + Duration::from_secs(s as u64);
        let n = after
            .iter()
            .filter(|t| **t >= from && **t < from + Duration::from_secs(1))
            .count();
        assert!(
            n <= 27,
            "{n} deliveries in second {s} after the outage\n{}",
            worker.logs()
        );
    }
    let (_, max_attempts) = attempts(&db, "limited").await;
    assert_eq!(max_attempts, 1, "a deferral used an attempt");
}

fn limited_last(r: &Receiver) -> Instant {
    r.hits().iter().map(|h| h.end).max().unwrap()
}
