//! Scheduled rows go out when they fall due, not when an idle worker's
//! back-off happens to end.

use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::json;

use crate::helpers::*;
use crate::receiver::Receiver;
use herald::notification::{Limits, NewNotification};
use herald::store::enqueue::enqueue_batch;

/// An idle worker backs off up to its poll interval (20 s here) between
/// reads. Two rows scheduled 3 s and 7 s ahead must each be sent within
/// 400 ms of falling due: without the wake at the next due time, the
/// jittered back-off lands that close to both in about 2 % of runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_sends_scheduled_rows_when_they_fall_due() {
    require_redis().await;
    let db = TestDb::new().await;
    let rcv = Receiver::ok(Duration::ZERO).await;
    let (now, clock) = (Utc::now(), Instant::now());
    let ahead = [Duration::from_secs(3), Duration::from_secs(7)];
    let items: Vec<NewNotification> = ahead
        .iter()
        .enumerate()
        .map(|(i, d)| {
            NewNotification::builder(i as u64, "webhook", json!({"i": i}))
                .send_at(now + chrono::Duration::from_std(*d).unwrap())
                .build(&Limits::default())
                .unwrap()
        })
        .collect();
    let mut conn = db.store.pool().acquire().await.unwrap();
    enqueue_batch(&mut conn, &items).await.unwrap();
    drop(conn);
    let mut worker = WorkerProc::spawn(
        &db,
        &key_prefix(),
        &[
            ("HERALD_WEBHOOK_URL", rcv.url()),
            (
                "HERALD_WEBHOOK_SECRET",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned(),
            ),
            ("HERALD_POLL_INTERVAL_MS", "20000".to_owned()),
        ],
    );
    wait_until("both rows sent", Duration::from_secs(30), || async {
        rcv.count() == 2
    })
    .await;
    let mut hits = rcv.hits();
    hits.sort_by_key(|h| h.start);
    for (hit, d) in hits.iter().zip(ahead) {
        let due = clock + d;
        let late = hit.start.saturating_duration_since(due);
        assert!(
            hit.start + Duration::from_millis(50) >= due,
            "row {} sent {:?} before it was due",
            hit.id,
            due - hit.start
        );
        assert!(
            late <= Duration::from_millis(400),
            "row {} due {d:?} after start was sent {late:?} late; logs:\n{}",
            hit.id,
            worker.logs()
        );
    }
    worker.signal("TERM");
    assert!(worker.wait_exit(Duration::from_secs(30)).await.success());
}

/// The next due time counts the served regions' pending rows and running
/// leases that lie ahead, by the database's clock, and nothing else: not
/// rows already due (the candidate read's), not other regions', not
/// finished rows.
#[tokio::test]
async fn the_next_due_time_is_the_nearest_pending_row_or_lease_ahead() {
    use herald::store::candidates::next_due;
    let db = TestDb::new().await;
    let pool = db.store.pool();
    let eu = vec!["eu".to_owned()];
    assert_eq!(next_due(pool, &eu).await.unwrap(), None, "empty table");
    let row = |region: &str, status: &str, ahead_s: i64| {
        format!(
            "INSERT INTO notifications (user_id, channel, region, payload, send_at, due_at, status) \
             VALUES (1, 'webhook', '{region}', '{{}}', UTC_TIMESTAMP(6), \
             UTC_TIMESTAMP(6) + INTERVAL {ahead_s} SECOND, '{status}')"
        )
    };
    db.exec(&row("eu", "pending", -5)).await;
    db.exec(&row("eu", "sent", 2)).await;
    db.exec(&row("us", "pending", 3)).await;
    assert_eq!(
        next_due(pool, &eu).await.unwrap(),
        None,
        "nothing ahead in eu"
    );
    db.exec(&row("eu", "pending", 60)).await;
    db.exec(&row("eu", "sending", 20)).await;
    let within = |d: Option<Duration>, s: u64| {
        d.is_some_and(|d| d <= Duration::from_secs(s) && d > Duration::from_secs(s - 2))
    };
    let d = next_due(pool, &eu).await.unwrap();
    assert!(within(d, 20), "the lease 20 s ahead: {d:?}");
    let both = vec!["eu".to_owned(), "us".to_owned()];
    let d = next_due(pool, &both).await.unwrap();
    assert!(within(d, 3), "the us row 3 s ahead: {d:?}");
}
