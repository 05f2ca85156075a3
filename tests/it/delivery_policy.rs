//! Acceptance tests of the delivery policy (issue 11) against real worker
//! processes and a real HTTP receiver: a minute-long receiver outage loses
//! nothing and leaves the reasons in the attempt history; `Retry-After` is
//! honoured; a 4xx is permanent; `HERALD_RECORD_ATTEMPTS=all` records the
//! sent attempt too.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use herald::store::attempts::{self, AttemptRow};

use crate::helpers::*;
use crate::receiver::Receiver;

/// Delays whose shortest draw (each one from `[max(d/2, previous d), d]`)
/// still spans 65 s: 1 + 2 + 4 + 8 + 5 × 10. The last delays are short, so
/// a row waits at most ~10 s once the receiver is back.
const OUTAGE_SCHEDULE: &str = "2s,4s,8s,10s,10s,10s,10s,10s,10s";

fn worker_env(
    url: &str,
    worker_id: &str,
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let mut v = vec![
        ("HERALD_WEBHOOK_URL", url.to_owned()),
        ("HERALD_WORKER_ID", worker_id.to_owned()),
        ("HERALD_POLL_INTERVAL_MS", "100".to_owned()),
        ("HERALD_SEND_TIMEOUT_MS", "3000".to_owned()),
    ];
    v.extend(extra.iter().map(|(k, val)| (*k, val.to_string())));
    v
}

/// `n` webhook rows due now; their ids, in order.
async fn insert_due(db: &TestDb, n: u64) -> Vec<u64> {
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
    sqlx::query_scalar("SELECT id FROM notifications ORDER BY id")
        .fetch_all(db.store.pool())
        .await
        .unwrap()
}

/// A local address nothing listens on (yet): connections are refused.
fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

async fn history(db: &TestDb, id: u64) -> Vec<AttemptRow> {
    attempts::of(db.store.pool(), id).await.unwrap()
}

async fn stop(workers: &mut [WorkerProc]) {
    for w in workers.iter() {
        w.signal("TERM");
    }
    for w in workers.iter_mut() {
        let status = w.wait_exit(Duration::from_secs(30)).await;
        assert!(status.success(), "worker exited {status:?}:\n{}", w.logs());
    }
}

/// Row facts the assertions need: (id, status, attempts, last_http_status, last_duration_ms).
async fn rows(db: &TestDb) -> Vec<(u64, String, u32, Option<u16>, Option<u32>)> {
    sqlx::query_as(
        "SELECT id, CAST(status AS CHAR), attempts, last_http_status, last_duration_ms \
         FROM notifications ORDER BY id",
    )
    .fetch_all(db.store.pool())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_60s_then_up_loses_nothing_and_the_history_says_why() {
    require_redis().await;
    let db = TestDb::new().await;
    let ids = insert_due(&db, 30).await;
    // For 30 s nothing listens (connection refused), then the receiver
    // answers 503 until 60 s, then 200.
    let addr = free_addr();
    let t0 = Instant::now();
    let up_at = t0 + Duration::from_secs(60);
    let url = format!("http://{addr}/hook");
    let prefix = key_prefix();
    let mut workers: Vec<WorkerProc> = ["w1", "w2"]
        .iter()
        .map(|w| {
            WorkerProc::spawn(
                &db,
                &prefix,
                &worker_env(
                    &url,
                    w,
                    &[
                        ("HERALD_RETRY_SCHEDULE", OUTAGE_SCHEDULE),
                        // The schedule alone rides out this outage, every
                        // attempt recorded. The breaker (on by default)
                        // would hold the rows without attempts instead;
                        // tests/it/limits.rs covers that path.
                        ("HERALD_BREAKER_FAILURES", "0"),
                    ],
                ),
            )
        })
        .collect();
    wait_until(
        "a refused attempt recorded for every row",
        Duration::from_secs(28),
        || async {
            db.scalar(
                "SELECT COUNT(DISTINCT notification_id) FROM notification_attempts \
             WHERE http_status IS NULL AND error LIKE 'connect:%'",
            )
            .await
                == 30
        },
    )
    .await;
    // The outage's script, not a wait for a condition.
    tokio::time::sleep_until((t0 + Duration::from_secs(30)).into()).await;
    let rcv = Receiver::serve(
        Some(addr),
        Duration::ZERO,
        move |_, _| {
            if Instant::now() < up_at {
                (503, None)
            } else {
                (200, None)
            }
        },
        |status| {
            if status == 503 {
                "down for maintenance".into()
            } else {
                "ok".into()
            }
        },
    )
    .await;
    wait_until("all 30 sent", Duration::from_secs(75), || async {
        db.count_status("sent").await == 30
    })
    .await;
    stop(&mut workers).await;

    assert_eq!(db.count_status("failed").await, 0);
    let delivered = rcv.delivered();
    for id in &ids {
        assert_eq!(delivered.get(id), Some(&1), "row {id} delivered once");
    }
    assert!(rcv
        .hits()
        .iter()
        .all(|h| h.status != 200 || h.start >= up_at));
    for (id, status, attempts, last_status, last_ms) in rows(&db).await {
        assert_eq!(status, "sent");
        assert_eq!(
            last_status,
            Some(200),
            "row {id}: the sent attempt's status"
        );
        assert!(last_ms.is_some(), "row {id}: the sent attempt's duration");
        let h = history(&db, id).await;
        // Every failed attempt, in order, and (by default) not the sent one.
        let numbers: Vec<u32> = h.iter().map(|a| a.attempt).collect();
        assert_eq!(numbers, (1..attempts).collect::<Vec<_>>(), "row {id}");
        assert!(
            attempts >= 7,
            "row {id}: {attempts} attempts over the outage"
        );
        assert!(h.iter().all(|a| a.outcome == "retried"), "row {id}: {h:?}");
        assert!(h.iter().all(|a| a.worker_id == "w1" || a.worker_id == "w2"));
        assert!(h.windows(2).all(|w| w[0].started_at < w[1].started_at));
        // Both reasons: a refused connection, then the receiver's 503.
        assert!(
            h.iter().any(|a| a.http_status.is_none()
                && a.error
                    .as_deref()
                    .is_some_and(|e| e.starts_with("connect:"))
                && a.response_body.is_none()),
            "row {id}: {h:?}"
        );
        assert!(
            h.iter().any(|a| a.http_status == Some(503)
                && a.error
                    .as_deref()
                    .is_some_and(|e| e.starts_with("HTTP 503"))
                && a.response_body.as_deref() == Some("down for maintenance")),
            "row {id}: {h:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_a_4xx_is_permanent_and_all_records_the_sent_attempt() {
    require_redis().await;
    let db = TestDb::new().await;
    let ids = insert_due(&db, 12).await;
    // By id: a third gets 404 (permanent), a third 429 with Retry-After: 3
    // on the first request, a third 200.
    let kind = |id: u64| id % 3;
    let rcv = Receiver::serve(
        None,
        Duration::ZERO,
        move |id, n| match (kind(id), n) {
            (0, _) => (404, None),
            (1, 0) => (429, Some(3)),
            _ => (200, None),
        },
        |status| match status {
            404 => "no such user".into(),
            429 => "slow down".into(),
            _ => "ok".into(),
        },
    )
    .await;
    let mut workers = vec![WorkerProc::spawn(
        &db,
        &key_prefix(),
        &worker_env(
            &rcv.url(),
            "w1",
            &[
                ("HERALD_RETRY_SCHEDULE", "200ms,400ms,800ms"),
                // Below Retry-After, so the 3 s come from the receiver.
                ("HERALD_RETRY_THROTTLE_FLOOR", "1s"),
                ("HERALD_RECORD_ATTEMPTS", "all"),
            ],
        ),
    )];
    wait_until("all 12 finished", Duration::from_secs(30), || async {
        db.count_status("sent").await + db.count_status("failed").await == 12
    })
    .await;
    stop(&mut workers).await;

    let mut requests: HashMap<u64, usize> = HashMap::new();
    for h in rcv.hits() {
        *requests.entry(h.id).or_default() += 1;
    }
    let facts: HashMap<u64, _> = rows(&db)
        .await
        .into_iter()
        .map(|(id, status, attempts, last, ms)| (id, (status, attempts, last, ms)))
        .collect();
    for id in ids {
        let (status, attempts, last_status, last_ms) = &facts[&id];
        let h = history(&db, id).await;
        assert!(last_ms.is_some(), "row {id}");
        match kind(id) {
            0 => {
                assert_eq!((status.as_str(), *attempts), ("failed", 1), "row {id}");
                assert_eq!(requests[&id], 1, "row {id}: a 404 is not retried");
                assert_eq!(*last_status, Some(404));
                assert_eq!(h.len(), 1, "row {id}: {h:?}");
                let a = &h[0];
                assert_eq!((a.outcome.as_str(), a.http_status), ("failed", Some(404)));
                assert_eq!(a.response_body.as_deref(), Some("no such user"));
                assert!(a.error.as_deref().unwrap().starts_with("HTTP 404"), "{a:?}");
            }
            1 => {
                assert_eq!((status.as_str(), *attempts), ("sent", 2), "row {id}");
                assert_eq!(*last_status, Some(200));
                let got: Vec<_> = h
                    .iter()
                    .map(|a| (a.attempt, a.outcome.as_str(), a.http_status))
                    .collect();
                assert_eq!(
                    got,
                    [(1, "retried", Some(429)), (2, "sent", Some(200))],
                    "row {id}"
                );
                assert_eq!(h[0].response_body.as_deref(), Some("slow down"));
                let gap = (h[1].started_at - h[0].started_at).to_std().unwrap();
                // Retry-After: 3 beats the 200 ms schedule and the 1 s floor;
                // the upper bound leaves room for a loaded machine.
                assert!(
                    gap >= Duration::from_secs(3) && gap < Duration::from_secs(8),
                    "row {id}: second attempt {gap:?} after the first"
                );
            }
            _ => {
                assert_eq!((status.as_str(), *attempts), ("sent", 1), "row {id}");
                assert_eq!(*last_status, Some(200));
                let got: Vec<_> = h
                    .iter()
                    .map(|a| (a.attempt, a.outcome.as_str(), a.http_status))
                    .collect();
                assert_eq!(got, [(1, "sent", Some(200))], "row {id}");
                assert_eq!(h[0].error, None);
                assert_eq!(h[0].response_body.as_deref(), Some("ok"));
            }
        }
    }
}
