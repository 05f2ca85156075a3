//! The worker against what other services and operators do to it: row
//! locks held by another connection, rows whose content breaks statements,
//! retried finish writes, and a second signal. Real MariaDB, real Redis,
//! real `herald worker` processes and a real HTTP receiver.

use std::time::{Duration, Instant};

use chrono::{Duration as ChronoDuration, Utc};
use serde_json::json;
use sqlx::Connection;

use crate::helpers::*;
use crate::receiver::Receiver;
use herald::notification::{Limits, NewNotification};
use herald::outcome::Outcome;
use herald::store::claim;
use herald::store::enqueue::enqueue_batch;
use herald::store::finish::{self, Finish, FinishCounts};

/// Enqueues `n` due webhook rows, one user each.
async fn enqueue(db: &TestDb, n: u64) {
    enqueue_at(db, n, Utc::now() - ChronoDuration::seconds(1)).await;
}

/// Row `id` as another instance leaves it after its lease ran out and it
/// re-claimed the row: claimed under a token that is not ours.
async fn another_owner_claims(db: &TestDb, id: u64) {
    db.exec(&format!(
        "UPDATE notifications SET claim_token = X'00112233445566778899aabbccddeeff' WHERE id = {id}"
    ))
    .await;
}

/// Enqueues `n` due rows; returns their ids, oldest first.
async fn enqueue_ids(db: &TestDb, n: u64) -> Vec<u64> {
    enqueue(db, n).await;
    sqlx::query_scalar("SELECT id FROM notifications ORDER BY id")
        .fetch_all(db.store.pool())
        .await
        .unwrap()
}

/// Claims `ids` under `token` for a minute, as a worker would; returns
/// how many rows the claim took.
async fn claim_under(db: &TestDb, ids: &[u64], token: &[u8; 16]) -> usize {
    let regions = vec!["default".to_owned()];
    claim::claim_rows(
        db.store.pool(),
        ids,
        &regions,
        token,
        "t",
        60_000_000,
        &Default::default(),
    )
    .await
    .unwrap()
    .len()
}

async fn enqueue_at(db: &TestDb, n: u64, send_at: chrono::DateTime<Utc>) {
    let limits = Limits::default();
    let items: Vec<NewNotification> = (0..n)
        .map(|i| {
            NewNotification::builder(i, "webhook", json!({"i": i}))
                .send_at(send_at)
                .build(&limits)
                .unwrap()
        })
        .collect();
    let mut conn = db.store.pool().acquire().await.unwrap();
    for chunk in items.chunks(1000) {
        enqueue_batch(&mut conn, chunk).await.unwrap();
    }
}

fn env(rcv: &Receiver, extra: &[(&str, &str)]) -> Vec<(&'static str, String)> {
    let mut v: Vec<(&'static str, String)> = vec![
        ("HERALD_WEBHOOK_URL", rcv.url()),
        ("HERALD_POLL_INTERVAL_MS", "100".to_owned()),
    ];
    for (k, val) in extra {
        let k: &'static str = Box::leak(k.to_string().into_boxed_str());
        v.push((k, val.to_string()));
    }
    v
}

async fn stop(w: &mut WorkerProc) {
    w.signal("TERM");
    let status = w.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "exit {status:?}; logs:\n{}", w.logs());
}

async fn wait_sent(db: &TestDb, n: i64, deadline: Duration) {
    wait_until(&format!("{n} rows sent"), deadline, || async {
        db.count_status("sent").await >= n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_locked_by_another_transaction_do_not_stall_the_rest() {
    require_redis().await;
    let db = TestDb::new().await;
    let rcv = Receiver::ok(Duration::ZERO).await;
    let prefix = key_prefix();
    let settings = env(&rcv, &[("HERALD_CONCURRENCY", "64")]);
    let mut workers = vec![
        WorkerProc::spawn(&db, &prefix, &settings),
        WorkerProc::spawn(&db, &prefix, &settings),
    ];
    // Larger runs for figures: HERALD_TEST_LOCK_ROWS=30000.
    let n: u64 = std::env::var("HERALD_TEST_LOCK_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);

    // The normal rate, for comparison: rows that fall due all at once, as
    // in the locked run below.
    let due = Utc::now() + ChronoDuration::seconds(3);
    enqueue_at(&db, n, due).await;
    tokio::time::sleep((due - Utc::now()).to_std().unwrap_or_default()).await;
    let t = Instant::now();
    wait_sent(&db, n as i64, Duration::from_secs(60)).await;
    let normal = n as f64 / t.elapsed().as_secs_f64();

    // Then 1 % of the next rows locked by another connection before they
    // fall due, held until every other row is sent.
    let first_new: u64 = db
        .scalar("SELECT CAST(COALESCE(MAX(id), 0) AS SIGNED) FROM notifications")
        .await as u64
        + 1;
    let due = Utc::now() + ChronoDuration::seconds(3);
    enqueue_at(&db, n, due).await;
    let mut foreign = sqlx::MySqlConnection::connect(&db.url_str()).await.unwrap();
    let locked: Vec<u64> = (0..n / 100).map(|i| first_new + i * 100 + 7).collect();
    let list = locked
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    sqlx::raw_sql("START TRANSACTION")
        .execute(&mut foreign)
        .await
        .unwrap();
    let held: Vec<u64> = sqlx::query_scalar(&format!(
        "SELECT id FROM notifications WHERE id IN ({list}) AND status = 'pending' FOR UPDATE"
    ))
    .fetch_all(&mut foreign)
    .await
    .unwrap();
    let held_n = held.len() as i64;
    assert_eq!(held_n, (n / 100) as i64);
    assert_eq!(db.count_status("sent").await, n as i64, "not due yet");
    let wait = (due - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait).await;
    let t = Instant::now();
    wait_sent(&db, 2 * n as i64 - held_n, Duration::from_secs(40)).await;
    let rate = (n as i64 - held_n) as f64 / t.elapsed().as_secs_f64();
    eprintln!(
        "drain: {normal:.0} rows/s normally, {rate:.0} rows/s with {held_n} rows locked elsewhere ({:.0} %)",
        100.0 * rate / normal
    );
    assert_eq!(
        db.scalar(&format!(
            "SELECT COUNT(*) FROM notifications WHERE id IN ({list}) AND status = 'pending'"
        ))
        .await,
        held_n,
        "the locked rows wait for their lock"
    );
    // A loose bound: the point is that the others flowed at all while the
    // locks were held; the figure above is for the report.
    assert!(
        rate >= normal * 0.3,
        "{rate:.0}/s with foreign locks vs {normal:.0}/s normally"
    );

    sqlx::raw_sql("COMMIT").execute(&mut foreign).await.unwrap();
    wait_sent(&db, 2 * n as i64, Duration::from_secs(30)).await;
    for w in &mut workers {
        stop(w).await;
    }
    let dupes = rcv.delivered().values().filter(|c| **c > 1).count();
    assert_eq!(dupes, 0, "nothing sent twice");
    assert_eq!(rcv.delivered().len(), 2 * n as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_row_fails_alone_and_the_rest_flows() {
    require_redis().await;
    let db = TestDb::new().await;
    let past = "UTC_TIMESTAMP(6) - INTERVAL 1 SECOND";
    // An attempt count at the column's maximum, written by another service:
    // `attempts + 1` is out of range.
    db.exec(&format!(
        "INSERT INTO notifications (user_id, channel, payload, send_at, due_at, attempts) \
         VALUES (900001, 'webhook', '{{}}', {past}, {past}, 4294967295)"
    ))
    .await;
    // A payload that is not JSON, written with MariaDB's checks off: every
    // UPDATE of the row fails its CHECK.
    let mut lax = sqlx::MySqlConnection::connect(&db.url_str()).await.unwrap();
    sqlx::raw_sql(&format!(
        "SET SESSION check_constraint_checks = 0; \
         INSERT INTO notifications (user_id, channel, payload, send_at, due_at) \
         VALUES (900002, 'webhook', 'not json', {past}, {past})"
    ))
    .execute(&mut lax)
    .await
    .unwrap();
    drop(lax);
    let bad_id: u64 = db
        .scalar("SELECT CAST(id AS SIGNED) FROM notifications WHERE user_id = 900002")
        .await as u64;
    // Good rows inserted after them.
    enqueue(&db, 50).await;

    let rcv = Receiver::ok(Duration::ZERO).await;
    let prefix = key_prefix();
    let addr = format!("127.0.0.1:{}", crate::redis_procs::free_port());
    let mut worker = WorkerProc::spawn(
        &db,
        &prefix,
        &env(
            &rcv,
            &[("HERALD_HTTP_ADDR", &addr), ("HERALD_MAX_ATTEMPTS", "3")],
        ),
    );
    wait_until("every row final", Duration::from_secs(30), || async {
        db.scalar("SELECT COUNT(*) FROM notifications WHERE status IN ('sent', 'failed')")
            .await
            == 52
    })
    .await;
    assert_eq!(db.count_status("sent").await, 51, "{}", worker.logs());
    let (status, error): (String, Option<String>) =
        sqlx::query_as("SELECT CAST(status AS CHAR), last_error FROM notifications WHERE id = ?")
            .bind(bad_id)
            .fetch_one(db.store.pool())
            .await
            .unwrap();
    assert_eq!(status, "failed");
    let error = error.unwrap_or_default();
    assert!(
        error.contains("CONSTRAINT"),
        "reason names the problem: {error}"
    );
    // The warning may reach the log file a moment after the row's state.
    let names_row = |logs: &str| {
        logs.contains(&format!("id={bad_id}")) || logs.contains(&format!("\"id\":{bad_id}"))
    };
    wait_until("the log names the row", Duration::from_secs(10), || async {
        names_row(&worker.logs())
    })
    .await;
    assert_eq!(
        db.scalar("SELECT CAST(attempts AS SIGNED) FROM notifications WHERE user_id = 900001")
            .await,
        4294967295,
        "the count saturates instead of failing the claim"
    );

    // Polls that keep failing make the instance unready, with the reason.
    let get = |path: &'static str| {
        let url = format!("http://{addr}{path}");
        async move {
            let r = reqwest::get(url).await.ok()?;
            let status = r.status().as_u16();
            Some((status, r.text().await.ok()?))
        }
    };
    wait_until("ready", Duration::from_secs(10), || async {
        get("/readyz").await.map(|r| r.0) == Some(200)
    })
    .await;
    db.exec("RENAME TABLE notifications TO notifications_away")
        .await;
    wait_until("unready while polls fail", Duration::from_secs(10), || async {
        matches!(get("/readyz").await, Some((503, body)) if body.contains("polls failing") && body.contains("notifications"))
    })
    .await;
    db.exec("RENAME TABLE notifications_away TO notifications")
        .await;
    wait_until("ready again", Duration::from_secs(10), || async {
        get("/readyz").await.map(|r| r.0) == Some(200)
    })
    .await;
    stop(&mut worker).await;
}

/// A finish write whose first attempt committed but whose reply was lost
/// is retried; the retry changes nothing, and that is not a lost claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_finish_counts_rows_it_already_recorded_as_done() {
    let db = TestDb::new().await;
    let ids = enqueue_ids(&db, 8).await;
    let pool = db.store.pool();
    let token: [u8; 16] = rand::random();
    assert_eq!(claim_under(&db, &ids, &token).await, 8);

    let finishes: Vec<(u64, Finish)> = vec![
        (ids[0], Finish::Sent),
        (ids[1], Finish::Sent),
        (ids[2], Finish::Sent),
        (ids[3], Finish::Failed { error: "x".into() }),
        (
            ids[4],
            Finish::Retry {
                delay_us: 60_000_000,
                error: "y".into(),
            },
        ),
        (ids[5], Finish::HandBack),
    ];
    let mut want = FinishCounts::default();
    want.add(Outcome::Sent, 3);
    want.add(Outcome::Retried, 1);
    want.add(Outcome::Failed, 1);
    want.add(Outcome::HandedBack, 1);
    assert_eq!(finish::finish(pool, &token, &finishes).await.unwrap(), want);
    assert_eq!(
        finish::finish(pool, &token, &finishes).await.unwrap(),
        want,
        "the retry recognises its own earlier write"
    );

    // A claim that really was lost still counts as lost.
    another_owner_claims(&db, ids[6]).await;
    let c = finish::finish(
        pool,
        &token,
        &[(ids[6], Finish::Sent), (ids[7], Finish::Sent)],
    )
    .await
    .unwrap();
    assert_eq!((c[Outcome::Sent], c[Outcome::Lost]), (1, 1));
    assert_eq!(
        db.scalar(&format!(
            "SELECT COUNT(*) FROM notifications WHERE id = {} AND status = 'sending'",
            ids[6]
        ))
        .await,
        1,
        "the new owner's row is left alone"
    );

    // A claimed row another transaction holds locked: the finish does not
    // wait for it, it reports it busy, and writes it once it is free.
    let token2: [u8; 16] = rand::random();
    db.exec(&format!(
        "UPDATE notifications SET status = 'pending', due_at = UTC_TIMESTAMP(6) - INTERVAL 1 SECOND WHERE id IN ({}, {})",
        ids[6], ids[7]
    ))
    .await;
    assert_eq!(claim_under(&db, &[ids[6], ids[7]], &token2).await, 2);
    let mut foreign = sqlx::MySqlConnection::connect(&db.url_str()).await.unwrap();
    sqlx::raw_sql(&format!(
        "START TRANSACTION; SELECT id FROM notifications WHERE id = {} FOR UPDATE",
        ids[6]
    ))
    .execute(&mut foreign)
    .await
    .unwrap();
    let both = [(ids[6], Finish::Sent), (ids[7], Finish::Sent)];
    let t = Instant::now();
    let (c, busy) = finish::finish_rows(pool, &token2, &both, &Default::default())
        .await
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(
        (c[Outcome::Sent], c[Outcome::Lost], busy),
        (1, 0, vec![ids[6]])
    );
    sqlx::raw_sql("COMMIT").execute(&mut foreign).await.unwrap();
    let (c, busy) = finish::finish_rows(pool, &token2, &both[..1], &Default::default())
        .await
        .unwrap();
    assert_eq!((c[Outcome::Sent], c[Outcome::Lost], busy.len()), (1, 0, 0));
}

/// The rows of several claims are written `sent` in one statement, each
/// fenced by its own claim's token: a row passed under a token that does
/// not own it, or whose claim was lost, is left alone; the others are
/// recorded, and writing each claim again counts them as recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_several_claims_finish_together_each_under_its_own_token() {
    let db = TestDb::new().await;
    let ids = enqueue_ids(&db, 6).await;
    let pool = db.store.pool();
    let (a, b): ([u8; 16], [u8; 16]) = (rand::random(), rand::random());
    assert_eq!(claim_under(&db, &ids[..3], &a).await, 3);
    assert_eq!(claim_under(&db, &ids[3..], &b).await, 3);
    let status = |id: u64| {
        sqlx::query_scalar::<_, String>(
            "SELECT CAST(status AS CHAR) FROM notifications WHERE id = ?",
        )
        .bind(id)
        .fetch_one(pool)
    };
    let history = herald::store::attempts::History::none();
    let foreign = herald::store::ForeignLocks::default();

    // Both claims' first rows, each under its own token: one statement.
    let all = finish::finish_sent_together(
        pool,
        &[
            finish::SentClaim {
                token: &a,
                ids: &ids[..1],
            },
            finish::SentClaim {
                token: &b,
                ids: &ids[3..4],
            },
        ],
        &history,
        &foreign,
    )
    .await
    .unwrap();
    assert!(all);
    assert_eq!(status(ids[0]).await.unwrap(), "sent");
    assert_eq!(status(ids[3]).await.unwrap(), "sent");

    // Row 1 passed under b's token (b does not own it) and row 4 after its
    // claim was lost: neither changes, the others do.
    another_owner_claims(&db, ids[4]).await;
    let all = finish::finish_sent_together(
        pool,
        &[
            finish::SentClaim {
                token: &a,
                ids: &ids[2..3],
            },
            finish::SentClaim {
                token: &b,
                ids: &[ids[1], ids[4], ids[5]],
            },
        ],
        &history,
        &foreign,
    )
    .await
    .unwrap();
    assert!(!all, "two rows did not change");
    assert_eq!(
        status(ids[1]).await.unwrap(),
        "sending",
        "fenced by the claim that owns it"
    );
    assert_eq!(
        status(ids[4]).await.unwrap(),
        "sending",
        "the new owner's row is left alone"
    );
    assert_eq!(status(ids[2]).await.unwrap(), "sent");
    assert_eq!(status(ids[5]).await.unwrap(), "sent");

    // Each claim written again on its own: recorded rows count as sent,
    // the lost one as lost, and a's row 1 is written now.
    let c = finish::finish(pool, &a, &[(ids[1], Finish::Sent), (ids[2], Finish::Sent)])
        .await
        .unwrap();
    assert_eq!((c[Outcome::Sent], c[Outcome::Lost]), (2, 0));
    let c = finish::finish(pool, &b, &[(ids[4], Finish::Sent), (ids[5], Finish::Sent)])
        .await
        .unwrap();
    assert_eq!((c[Outcome::Sent], c[Outcome::Lost]), (1, 1));
    assert_eq!(status(ids[1]).await.unwrap(), "sent");
    assert_eq!(status(ids[4]).await.unwrap(), "sending");
}

/// The worker's peak resident memory in MiB (`VmHWM`).
fn peak_rss_mib(w: &WorkerProc) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", w.child.id())).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_payloads_written_elsewhere_stay_within_the_memory_bound() {
    require_redis().await;
    let db = TestDb::new().await;
    // 150 rows of 1 MB, inserted by SQL as another service would (MariaDB's
    // sequence engine makes the rows server-side).
    db.exec(
        "INSERT INTO notifications (user_id, channel, payload, send_at, due_at) \
         SELECT seq, 'webhook', CONCAT('{\"x\":\"', REPEAT('a', 1000000), '\"}'), \
         UTC_TIMESTAMP(6) - INTERVAL 1 SECOND, UTC_TIMESTAMP(6) - INTERVAL 1 SECOND FROM seq_1_to_150",
    )
    .await;
    let rcv = Receiver::ok(Duration::from_millis(50)).await;
    let prefix = key_prefix();
    let mut worker = WorkerProc::spawn(&db, &prefix, &env(&rcv, &[("HERALD_CONCURRENCY", "64")]));
    wait_sent(&db, 150, Duration::from_secs(60)).await;
    let peak = peak_rss_mib(&worker);
    eprintln!("peak RSS with 150 x 1 MB payloads: {peak:.0} MiB");
    stop(&mut worker).await;
    assert_eq!(rcv.delivered().len(), 150);
    assert!(
        rcv.hits().iter().all(|h| h.body.len() > 1_000_000),
        "every payload sent whole"
    );
    // Without the bound: 389 MiB here; with it about 50 MiB (about 100
    // while mimalloc kept freed pages for its default second).
    assert!(peak < 120.0, "peak RSS {peak:.0} MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_whose_outcome_cannot_be_written_fails_alone() {
    require_redis().await;
    let db = TestDb::new().await;
    enqueue(&db, 40).await;
    let victim: u64 = db
        .scalar("SELECT CAST(MIN(id) + 7 AS SIGNED) FROM notifications")
        .await as u64;
    // Another service's trigger refuses one row's `sent` write.
    db.exec(&format!(
        "CREATE TRIGGER refuse_sent BEFORE UPDATE ON notifications FOR EACH ROW \
         IF NEW.status = 'sent' AND NEW.id = {victim} THEN \
         SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused by audit'; END IF"
    ))
    .await;
    let rcv = Receiver::ok(Duration::ZERO).await;
    let prefix = key_prefix();
    let mut worker = WorkerProc::spawn(&db, &prefix, &env(&rcv, &[]));
    wait_until("every row final", Duration::from_secs(30), || async {
        db.scalar("SELECT COUNT(*) FROM notifications WHERE status IN ('sent', 'failed')")
            .await
            == 40
    })
    .await;
    stop(&mut worker).await;
    assert_eq!(db.count_status("sent").await, 39);
    let error: Option<String> = sqlx::query_scalar(
        "SELECT last_error FROM notifications WHERE id = ? AND status = 'failed'",
    )
    .bind(victim)
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    let error = error.unwrap_or_default();
    assert!(error.contains("refused by audit"), "{error}");
    assert_eq!(rcv.delivered().len(), 40, "delivered once each");
}
