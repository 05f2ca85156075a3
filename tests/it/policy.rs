//! Delivery policy against real worker processes and a real HTTP receiver:
//! the retry schedule rides out a receiver outage, the default schedule does
//! not give up within seconds, and a bad schedule stops the start.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::helpers::*;
use crate::receiver::Receiver;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn worker_env(rcv: &Receiver, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut v = vec![
        ("HERALD_WEBHOOK_URL", rcv.url()),
        ("HERALD_WEBHOOK_SECRET", SECRET.to_owned()),
        ("HERALD_POLL_INTERVAL_MS", "50".to_owned()),
        ("HERALD_HTTP_ADDR", String::new()),
        ("HERALD_STATS_INTERVAL_S", "0".to_owned()),
    ];
    v.extend(extra.iter().map(|(k, val)| (*k, val.to_string())));
    v
}

async fn insert_due(db: &TestDb, n: u64) {
    let values: Vec<String> = (0..n)
        .map(|i| {
            format!("({i}, 'webhook', '{{}}', UTC_TIMESTAMP(6) - INTERVAL 1 SECOND, UTC_TIMESTAMP(6) - INTERVAL 1 SECOND)")
        })
        .collect();
    db.exec(&format!(
        "INSERT INTO notifications (user_id, channel, payload, send_at, due_at) VALUES {}",
        values.join(",")
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_a_while_loses_nothing_with_a_schedule_that_outlasts_it() {
    require_redis().await;
    let db = TestDb::new().await;
    insert_due(&db, 40).await;
    // Down (503) for the first 3 s, then up; the schedule spans ~6 s.
    let down_until = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let clock = down_until.clone();
    let rcv = Receiver::scripted(Duration::ZERO, move |_, _| {
        let mut until = clock.lock().unwrap();
        let until = until.get_or_insert_with(|| Instant::now() + Duration::from_secs(3));
        if Instant::now() < *until {
            (503, None)
        } else {
            (200, None)
        }
    })
    .await;
    let mut worker = WorkerProc::spawn(
        &db,
        &key_prefix(),
        &worker_env(
            &rcv,
            &[
                ("HERALD_RETRY_SCHEDULE", "200ms,400ms,800ms,1600ms,3200ms"),
                // The schedule alone; the breaker has its own tests (limits.rs).
                ("HERALD_BREAKER_FAILURES", "0"),
            ],
        ),
    );
    wait_until("all 40 sent", Duration::from_secs(40), || async {
        db.count_status("sent").await == 40
    })
    .await;
    worker.signal("TERM");
    worker.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(db.count_status("failed").await, 0);
    let retried = db
        .scalar("SELECT COUNT(*) FROM notifications WHERE attempts > 1")
        .await;
    assert_eq!(retried, 40, "every row met the outage first");
    let failures = rcv.hits().iter().filter(|h| h.status == 503).count();
    assert!(failures >= 40, "{failures} failed attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_schedule_waits_about_30s_after_a_first_failure() {
    require_redis().await;
    let db = TestDb::new().await;
    insert_due(&db, 3).await;
    let rcv = Receiver::scripted(Duration::ZERO, |_, _| (503, None)).await;
    let mut worker = WorkerProc::spawn(&db, &key_prefix(), &worker_env(&rcv, &[]));
    wait_until("three first attempts recorded", Duration::from_secs(30), || async {
        db.scalar(
            "SELECT COUNT(*) FROM notifications WHERE status = 'pending' AND attempts = 1 AND last_error IS NOT NULL",
        )
        .await
            == 3
    })
    .await;
    worker.signal("TERM");
    worker.wait_exit(Duration::from_secs(20)).await;
    // Equal jitter over the first delay (30 s): between 15 and 30 s ahead.
    let (min_s, max_s): (f64, f64) = sqlx::query_as(
        "SELECT CAST(MIN(TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), due_at)) / 1e6 AS DOUBLE), \
                CAST(MAX(TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), due_at)) / 1e6 AS DOUBLE) \
         FROM notifications",
    )
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    assert!(
        min_s > 10.0 && max_s <= 30.5,
        "next attempt in {min_s}..{max_s} s"
    );
    assert_eq!(db.count_status("failed").await, 0);
}

#[test]
fn a_bad_retry_schedule_exits_2_naming_the_setting_and_the_element() {
    for (envs, wants) in [
        (
            vec![("HERALD_RETRY_SCHEDULE", "30s,2x,1h")],
            vec!["HERALD_RETRY_SCHEDULE", "element 2", "\"2x\""],
        ),
        (
            vec![("HERALD_RETRY_SCHEDULE", "2m,30s")],
            vec!["HERALD_RETRY_SCHEDULE", "element 2", "shorter"],
        ),
        (
            vec![
                ("HERALD_RETRY_SCHEDULE", "30s"),
                ("HERALD_MAX_ATTEMPTS", "3"),
            ],
            vec!["HERALD_RETRY_SCHEDULE", "not both"],
        ),
    ] {
        let mut cmd = herald(None);
        cmd.arg("worker");
        for (k, v) in &envs {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{envs:?}: {err}");
        for want in wants {
            assert!(err.contains(want), "{envs:?}: missing {want:?} in {err}");
        }
    }
}
