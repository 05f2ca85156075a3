//! The sender against real processes: `herald worker` children, a real
//! MariaDB, the real Redis, and a real HTTP receiver.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{Duration as ChronoDuration, Utc};
use serde_json::json;

use crate::helpers::*;
use crate::receiver::Receiver;
use herald::notification::{Limits, NewNotification};
use herald::store::enqueue::enqueue_batch;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Enqueues `n` due webhook notifications for `users` users; row `i` is for
/// user `i % users` and due `n - i` ms in the past (so id order is due order).
async fn enqueue(db: &TestDb, n: u64, users: u64, region: &str) {
    enqueue_into(&db.store, n, users, region).await;
}

async fn enqueue_into(store: &herald::store::Store, n: u64, users: u64, region: &str) {
    let limits = Limits::default();
    let now = Utc::now();
    let items: Vec<NewNotification> = (0..n)
        .map(|i| {
            NewNotification::builder(i % users, "webhook", json!({"i": i}))
                .send_at(
                    now - ChronoDuration::milliseconds((n - i) as i64) - ChronoDuration::seconds(1),
                )
                .region(region)
                .build(&limits)
                .unwrap()
        })
        .collect();
    let mut conn = store.pool().acquire().await.unwrap();
    enqueue_batch(&mut conn, &items).await.unwrap();
}

/// A private MariaDB (which the test may crash or pause), migrated, with
/// `n` due webhook rows; returns it with its URL and a pool on it.
async fn private_database_with(
    n: u64,
) -> (
    crate::mariadb_proc::MariaDbProc,
    String,
    herald::store::Store,
) {
    let mysql = crate::mariadb_proc::MariaDbProc::start();
    let url = mysql.url("herald");
    let secret_url = herald::secret::SecretUrl::parse(&url).unwrap();
    herald::store::migrate::migrate(&secret_url).await.unwrap();
    let store = herald::store::Store::connect(&secret_url, 2).await.unwrap();
    enqueue_into(&store, n, n, "default").await;
    (mysql, url, store)
}

/// Rows `sent`, read through a pool that survives the server's restarts.
async fn sent_on(store: &herald::store::Store) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM notifications WHERE status = 'sent'")
        .fetch_one(store.pool())
        .await
        .unwrap_or(0)
}

/// Records every transition into a final status, so a test can prove that
/// no row was marked twice (the table itself only shows the last write).
async fn install_finish_log(db: &TestDb) {
    db.exec("CREATE TABLE finish_log (id BIGINT UNSIGNED NOT NULL, status VARCHAR(16) NOT NULL)")
        .await;
    db.exec(
        "CREATE TRIGGER log_finish AFTER UPDATE ON notifications FOR EACH ROW \
         INSERT INTO finish_log (id, status) SELECT NEW.id, NEW.status FROM DUAL \
         WHERE NEW.status <> OLD.status AND NEW.status IN ('sent', 'failed', 'expired')",
    )
    .await;
}

async fn assert_finished_once(db: &TestDb) {
    let twice = db
        .scalar(
            "SELECT COUNT(*) FROM (SELECT id FROM finish_log GROUP BY id HAVING COUNT(*) > 1) t",
        )
        .await;
    assert_eq!(twice, 0, "some rows were marked final more than once");
}

/// Every one of `n` rows delivered exactly once and made final once.
async fn assert_exactly_once(db: &TestDb, rcv: &Receiver, n: usize, why: &str) {
    let delivered = rcv.delivered();
    assert_eq!(delivered.len(), n, "every id delivered");
    let dupes: Vec<_> = delivered.iter().filter(|(_, c)| **c > 1).collect();
    assert!(dupes.is_empty(), "{why}: {dupes:?}");
    assert_finished_once(db).await;
}

fn env(receiver: &Receiver, extra: &[(&str, &str)]) -> Vec<(&'static str, String)> {
    let mut v: Vec<(&'static str, String)> = vec![
        ("HERALD_WEBHOOK_URL", receiver.url()),
        ("HERALD_WEBHOOK_SECRET", SECRET.to_owned()),
        ("HERALD_POLL_INTERVAL_MS", "100".to_owned()),
    ];
    for (k, val) in extra {
        let k: &'static str = Box::leak(k.to_string().into_boxed_str());
        v.push((k, val.to_string()));
    }
    v
}

/// Settings for fault tests: a short lock TTL (send timeout 40% of it) so
/// leases run out within the test, and small batches.
fn short_lock_env(
    rcv: &Receiver,
    id: &str,
    concurrency: usize,
    ttl_ms: u64,
) -> Vec<(&'static str, String)> {
    env(
        rcv,
        &[
            ("HERALD_WORKER_ID", id),
            ("HERALD_CONCURRENCY", &concurrency.to_string()),
            ("HERALD_BATCH_SIZE", &(concurrency * 2).to_string()),
            ("HERALD_LOCK_TTL_MS", &ttl_ms.to_string()),
            ("HERALD_SEND_TIMEOUT_MS", &(ttl_ms * 2 / 5).to_string()),
        ],
    )
}

async fn wait_all_final(db: &TestDb, total: i64, deadline: Duration) {
    wait_until("all rows final", deadline, || async {
        db.scalar(
            "SELECT COUNT(*) FROM notifications WHERE status IN ('sent', 'failed', 'expired')",
        )
        .await
            == total
    })
    .await;
}

async fn stop_all(workers: &mut [WorkerProc]) {
    for w in workers.iter() {
        w.signal("TERM");
    }
    for w in workers.iter_mut() {
        wait_clean_exit(w).await;
    }
}

/// SIGTERM and expect a clean exit.
async fn stop(w: &mut WorkerProc) {
    w.signal("TERM");
    wait_clean_exit(w).await;
}

async fn wait_clean_exit(w: &mut WorkerProc) {
    let status = w.wait_exit(Duration::from_secs(20)).await;
    assert!(
        status.success(),
        "worker exit {status:?}; logs:\n{}",
        w.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_deliver_5000_exactly_once_and_share_the_work() {
    require_redis().await;
    let db = TestDb::new().await;
    install_finish_log(&db).await;
    enqueue(&db, 5000, 500, "default").await;
    let rcv = Receiver::ok(Duration::ZERO).await;
    let prefix = key_prefix();
    let mut workers: Vec<WorkerProc> = (0..4)
        .map(|i| {
            let id = format!("w{i}");
            WorkerProc::spawn(
                &db,
                &prefix,
                &env(
                    &rcv,
                    &[
                        ("HERALD_WORKER_ID", &id),
                        ("HERALD_CONCURRENCY", "16"),
                        ("HERALD_BATCH_SIZE", "50"),
                    ],
                ),
            )
        })
        .collect();
    wait_all_final(&db, 5000, Duration::from_secs(120)).await;
    stop_all(&mut workers).await;

    assert_eq!(db.count_status("sent").await, 5000);
    assert_exactly_once(&db, &rcv, 5000, "duplicates without any crash").await;

    let shares: Vec<(String, i64)> = sqlx::query_as(
        "SELECT claimed_by, COUNT(*) FROM notifications GROUP BY claimed_by ORDER BY claimed_by",
    )
    .fetch_all(db.store.pool())
    .await
    .unwrap();
    assert_eq!(shares.len(), 4, "every worker sent some: {shares:?}");
    for (w, n) in &shares {
        assert!(*n >= 100, "worker {w} did only {n} of 5000: {shares:?}");
    }
    // Signatures verify and carry the stable id.
    let secret =
        herald::transport::decode_secret(&herald::secret::SecretString::new(SECRET.into()))
            .unwrap();
    for h in rcv.hits().iter().take(200) {
        assert_eq!(h.webhook_id, h.id.to_string());
        assert!(
            herald::transport::verify_signature(
                &secret,
                &h.webhook_id,
                &h.timestamp,
                &h.body,
                &h.signature
            ),
            "signature of {} does not verify",
            h.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_scope_sends_a_users_notifications_in_due_order_one_at_a_time() {
    require_redis().await;
    let db = TestDb::new().await;
    enqueue(&db, 300, 15, "default").await;
    let rcv = Receiver::ok(Duration::from_millis(5)).await;
    let prefix = key_prefix();
    let mut workers: Vec<WorkerProc> = (0..2)
        .map(|_| {
            WorkerProc::spawn(
                &db,
                &prefix,
                &env(
                    &rcv,
                    &[
                        ("HERALD_LOCK_SCOPE", "user"),
                        ("HERALD_CONCURRENCY", "8"),
                        ("HERALD_BATCH_SIZE", "20"),
                    ],
                ),
            )
        })
        .collect();
    wait_all_final(&db, 300, Duration::from_secs(90)).await;
    stop_all(&mut workers).await;

    let mut by_user: HashMap<u64, Vec<_>> = HashMap::new();
    for h in rcv.hits() {
        by_user.entry(h.user_id).or_default().push(h);
    }
    assert_eq!(by_user.len(), 15);
    for (user, mut hits) in by_user {
        assert_eq!(hits.len(), 20, "user {user}");
        hits.sort_by_key(|h| h.start);
        let ids: Vec<u64> = hits.iter().map(|h| h.id).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted, "user {user}: delivered out of due order");
        for pair in hits.windows(2) {
            assert!(
                pair[0].end <= pair[1].start,
                "user {user}: two sends overlapped"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_worker_mid_run_loses_nothing_and_duplicates_only_its_in_flight_rows() {
    require_redis().await;
    let db = TestDb::new().await;
    enqueue(&db, 1500, 300, "default").await;
    let rcv = Receiver::ok(Duration::from_millis(40)).await;
    let prefix = key_prefix();
    let settings = |id: &str| short_lock_env(&rcv, id, 16, 2000);
    let mut victim = WorkerProc::spawn(&db, &prefix, &settings("victim"));
    let mut others: Vec<WorkerProc> = (0..2)
        .map(|i| WorkerProc::spawn(&db, &prefix, &settings(&format!("w{i}"))))
        .collect();
    wait_until("the victim is sending", Duration::from_secs(30), || async {
        db.scalar(
            "SELECT COUNT(*) FROM notifications WHERE claimed_by = 'victim' AND status = 'sent'",
        )
        .await
            > 50
    })
    .await;
    victim.signal("KILL");
    victim.wait_exit(Duration::from_secs(5)).await;
    // What it held when it died: claimed, unfinished.
    let held: HashSet<u64> = sqlx::query_scalar(
        "SELECT id FROM notifications WHERE claimed_by = 'victim' AND status = 'sending'",
    )
    .fetch_all(db.store.pool())
    .await
    .unwrap()
    .into_iter()
    .collect();

    wait_all_final(&db, 1500, Duration::from_secs(90)).await;
    stop_all(&mut others).await;
    assert_eq!(db.count_status("sent").await, 1500, "nothing lost");
    let delivered = rcv.delivered();
    assert_eq!(delivered.len(), 1500);
    let hits = rcv.hits();
    for (id, n) in delivered.iter().filter(|(_, n)| **n > 1) {
        assert!(
            held.contains(id),
            "row {id} delivered {n} times but the killed worker did not hold it"
        );
        let keys: HashSet<&str> = hits
            .iter()
            .filter(|h| h.id == *id)
            .map(|h| h.webhook_id.as_str())
            .collect();
        assert_eq!(
            keys.len(),
            1,
            "row {id}: duplicates must carry the same webhook-id"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stalled_past_its_lock_changes_nothing_when_it_resumes() {
    require_redis().await;
    let db = TestDb::new().await;
    install_finish_log(&db).await;
    enqueue(&db, 600, 600, "default").await;
    let rcv = Receiver::ok(Duration::from_millis(150)).await;
    let prefix = key_prefix();
    let settings = |id: &str| short_lock_env(&rcv, id, 8, 1000);
    let mut stalled = WorkerProc::spawn(&db, &prefix, &settings("stalled"));
    wait_until("the worker has sends in flight", Duration::from_secs(30), || async {
        rcv.in_progress() >= 4
            && db
                .scalar("SELECT COUNT(*) FROM notifications WHERE claimed_by = 'stalled' AND status = 'sending'")
                .await
                >= 8
    })
    .await;
    stalled.signal("STOP");
    let held: Vec<u64> = sqlx::query_scalar(
        "SELECT id FROM notifications WHERE claimed_by = 'stalled' AND status = 'sending'",
    )
    .fetch_all(db.store.pool())
    .await
    .unwrap();
    let mut rescuer = WorkerProc::spawn(&db, &prefix, &settings("rescuer"));
    // The rescuer re-claims and finishes what the stalled worker held.
    wait_until("the stalled worker's rows are finished by the rescuer", Duration::from_secs(30), || async {
        let list = held.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        db.scalar(&format!(
            "SELECT COUNT(*) FROM notifications WHERE id IN ({list}) AND status = 'sent' AND claimed_by = 'rescuer'"
        ))
        .await
            == held.len() as i64
    })
    .await;
    stalled.signal("CONT");
    wait_all_final(&db, 600, Duration::from_secs(60)).await;
    stop(&mut stalled).await;
    stop(&mut rescuer).await;

    assert_eq!(db.count_status("sent").await, 600);
    assert_finished_once(&db).await;
    let logs = stalled.logs();
    let lost: u64 = logs
        .lines()
        .filter(|l| l.contains("worker stopped"))
        .find_map(|l| l.split("lost=").nth(1))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no totals in the stalled worker's log:\n{logs}"));
    assert!(
        lost >= 1,
        "the stalled worker's stale finishes must be counted as lost ownership:\n{logs}"
    );
    assert!(logs.contains("claim was lost"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_failures_expiry_and_bad_rows() {
    require_redis().await;
    let db = TestDb::new().await;
    install_finish_log(&db).await;
    // ids: 1 = 503, 503, 200; 2 = 400; 3 = always 503; 4 = expired; 5.. bad rows; 9 = fine.
    let past = "UTC_TIMESTAMP(6) - INTERVAL 1 SECOND";
    for (user, payload) in [(1, "{\"k\":1}"), (2, "{\"k\":2}"), (3, "{\"k\":3}")] {
        db.exec(&format!(
            "INSERT INTO notifications (user_id, channel, payload, send_at, due_at) VALUES ({user}, 'webhook', '{payload}', {past}, {past})"
        ))
        .await;
    }
    db.exec(&format!(
        "INSERT INTO notifications (user_id, channel, payload, send_at, due_at, expires_at) \
         VALUES (4, 'webhook', '{{}}', {past}, {past}, UTC_TIMESTAMP(6) - INTERVAL 1 MICROSECOND)"
    ))
    .await;
    db.exec(&format!(
        "INSERT INTO notifications (user_id, channel, payload, send_at, due_at) VALUES (5, 'webhook', '[1,2]', {past}, {past})"
    ))
    .await;
    db.exec(&format!(
        "INSERT INTO notifications (user_id, channel, payload, send_at, due_at) VALUES (6, 'pigeon', '{{}}', {past}, {past})"
    ))
    .await;
    // A zero date written by a lax client (sql_mode without NO_ZERO_DATE).
    let mut conn = db.store.pool().acquire().await.unwrap();
    sqlx::query("SET SESSION sql_mode = ''")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query(&format!(
        "INSERT INTO notifications (user_id, channel, payload, send_at, due_at) VALUES (7, 'webhook', '{{}}', '0000-00-00 00:00:00', {past})"
    ))
    .execute(&mut *conn)
    .await
    .unwrap();
    drop(conn);
    db.exec(&format!(
        "INSERT INTO notifications (user_id, channel, payload, send_at, due_at, dedupe_key) VALUES (9, 'webhook', '{{}}', {past}, {past}, 'welcome-9')"
    ))
    .await;

    let rcv = Receiver::scripted(Duration::ZERO, |id, n| match id {
        1 if n < 2 => (503, None),
        2 => (400, None),
        3 => (503, None),
        _ => (200, None),
    })
    .await;
    let prefix = key_prefix();
    let mut worker = WorkerProc::spawn(
        &db,
        &prefix,
        &env(
            &rcv,
            &[
                ("HERALD_RETRY_BASE_MS", "600"),
                ("HERALD_MAX_ATTEMPTS", "3"),
                ("HERALD_POLL_INTERVAL_MS", "20"),
            ],
        ),
    );
    wait_all_final(&db, 8, Duration::from_secs(30)).await;
    stop(&mut worker).await;

    let row = |user: u64| {
        let pool = db.store.pool().clone();
        async move {
            sqlx::query_as::<_, (String, u32, Option<String>)>(
                "SELECT CAST(status AS CHAR), attempts, last_error FROM notifications WHERE user_id = ?",
            )
            .bind(user)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let (status, attempts, _) = row(1).await;
    assert_eq!(
        (status.as_str(), attempts),
        ("sent", 3),
        "503, 503, then 200"
    );
    let gaps: Vec<Duration> = {
        let hits: Vec<_> = rcv.hits().into_iter().filter(|h| h.id == 1).collect();
        hits.windows(2).map(|w| w[1].start - w[0].start).collect()
    };
    assert_eq!(gaps.len(), 2);
    assert!(
        gaps[0] >= Duration::from_millis(280),
        "first retry delay {:?}",
        gaps[0]
    );
    assert!(
        gaps[1] + Duration::from_millis(60) >= gaps[0],
        "delays must grow: {gaps:?}"
    );
    assert!(
        gaps[1] >= Duration::from_millis(580),
        "second retry delay {:?}",
        gaps[1]
    );

    let (status, attempts, err) = row(2).await;
    assert_eq!(
        (status.as_str(), attempts),
        ("failed", 1),
        "400 fails at once"
    );
    assert!(err.unwrap().contains("400"));

    let (status, attempts, err) = row(3).await;
    assert_eq!((status.as_str(), attempts), ("failed", 3));
    assert!(err.unwrap().contains("gave up after 3 attempts: HTTP 503"));

    assert_eq!(row(4).await.0, "expired");
    let (status, _, err) = row(5).await;
    assert_eq!(status, "failed");
    assert!(err.unwrap().contains("payload is not a JSON object"));
    let (status, _, err) = row(6).await;
    assert_eq!(status, "failed");
    assert!(err.unwrap().contains("pigeon"));
    let (status, _, err) = row(7).await;
    assert_eq!(status, "failed");
    assert!(err.unwrap().contains("send_at"));
    assert_eq!(row(9).await.0, "sent");

    let hits = rcv.hits();
    let ids_hit: HashSet<u64> = hits.iter().map(|h| h.user_id).collect();
    for never in [4, 5, 6, 7] {
        assert!(
            !ids_hit.contains(&never),
            "user {never}'s row must never be sent"
        );
    }
    // webhook-id is stable across attempts and is the dedupe key when set.
    let keys: HashSet<&str> = hits
        .iter()
        .filter(|h| h.user_id == 3)
        .map(|h| h.webhook_id.as_str())
        .collect();
    assert_eq!(keys.len(), 1);
    assert!(hits
        .iter()
        .any(|h| h.user_id == 9 && h.webhook_id == "welcome-9"));
    let secret =
        herald::transport::decode_secret(&herald::secret::SecretString::new(SECRET.into()))
            .unwrap();
    for h in &hits {
        assert!(herald::transport::verify_signature(
            &secret,
            &h.webhook_id,
            &h.timestamp,
            &h.body,
            &h.signature
        ));
    }
    assert_finished_once(&db).await;
    assert!(worker.logs().contains("unusable row"), "{}", worker.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_within_the_grace_period_and_hands_unsent_claims_back() {
    require_redis().await;
    let db = TestDb::new().await;
    install_finish_log(&db).await;
    enqueue(&db, 400, 400, "default").await;
    let rcv = Receiver::ok(Duration::from_millis(300)).await;
    let prefix = key_prefix();
    let mut worker = WorkerProc::spawn(
        &db,
        &prefix,
        &env(
            &rcv,
            &[
                ("HERALD_CONCURRENCY", "8"),
                ("HERALD_BATCH_SIZE", "64"),
                ("HERALD_SHUTDOWN_GRACE_MS", "5000"),
            ],
        ),
    );
    wait_until("sends in flight", Duration::from_secs(30), || async {
        rcv.count() >= 8
    })
    .await;
    let sent_at_signal = rcv.count();
    worker.signal("TERM");
    let started = std::time::Instant::now();
    let status = worker.wait_exit(Duration::from_secs(8)).await;
    assert!(status.success(), "exit code {status:?}\n{}", worker.logs());
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(db.count_status("sending").await, 0, "no claim left behind");
    let sent = db.count_status("sent").await;
    let pending = db.count_status("pending").await;
    assert_eq!(sent + pending, 400);
    assert!(
        sent >= sent_at_signal as i64,
        "in-flight sends were allowed to finish"
    );
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM notifications WHERE status = 'pending' AND attempts <> 0")
            .await,
        0,
        "handed-back rows do not count an attempt"
    );
    assert!(pending > 0, "the test must stop the worker mid-run");

    // A new worker finishes the rest: nothing lost, nothing twice.
    let mut next = WorkerProc::spawn(&db, &prefix, &env(&rcv, &[("HERALD_CONCURRENCY", "64")]));
    wait_all_final(&db, 400, Duration::from_secs(60)).await;
    stop(&mut next).await;
    assert_exactly_once(&db, &rcv, 400, "graceful shutdown must not duplicate").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_serves_only_its_region() {
    require_redis().await;
    let db = TestDb::new().await;
    enqueue(&db, 100, 10, "eu").await;
    enqueue(&db, 100, 10, "us").await;
    let rcv = Receiver::ok(Duration::ZERO).await;
    let prefix = key_prefix();
    let mut worker = WorkerProc::spawn(&db, &prefix, &env(&rcv, &[("HERALD_REGION", "eu")]));
    wait_until("eu rows sent", Duration::from_secs(30), || async {
        db.scalar("SELECT COUNT(*) FROM notifications WHERE region = 'eu' AND status = 'sent'")
            .await
            == 100
    })
    .await;
    // A second wave, enqueued once the first is done, proves the worker
    // kept polling while the us rows were due all along.
    enqueue(&db, 10, 10, "eu").await;
    wait_until(
        "the second eu wave sent",
        Duration::from_secs(30),
        || async {
            db.scalar("SELECT COUNT(*) FROM notifications WHERE region = 'eu' AND status = 'sent'")
                .await
                == 110
        },
    )
    .await;
    stop(&mut worker).await;
    assert_eq!(
        db.scalar(
            "SELECT COUNT(*) FROM notifications WHERE region = 'us' AND status = 'pending' \
             AND attempts = 0 AND claimed_by IS NULL AND claim_token IS NULL"
        )
        .await,
        100,
        "us rows untouched"
    );
    assert_eq!(rcv.count(), 110);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_masters_failing_and_returning_lose_nothing() {
    use crate::redis_procs::Masters;
    let db = TestDb::new().await;
    install_finish_log(&db).await;
    enqueue(&db, 3000, 3000, "default").await;
    let mut masters = Masters::start(3);
    let rcv = Receiver::ok(Duration::from_millis(2)).await;
    let prefix = key_prefix();
    let urls = masters.urls().join(",");
    let mut workers: Vec<WorkerProc> = (0..2)
        .map(|i| {
            WorkerProc::spawn(
                &db,
                &prefix,
                &env(
                    &rcv,
                    &[
                        ("HERALD_REDIS_URLS", &urls),
                        ("HERALD_LOCK_MASTER_TIMEOUT_MS", "50"),
                        ("HERALD_WORKER_ID", &format!("w{i}")),
                        ("HERALD_CONCURRENCY", "8"),
                        ("HERALD_BATCH_SIZE", "32"),
                    ],
                ),
            )
        })
        .collect();
    let sent = || db.count_status("sent");
    wait_until("sending started", Duration::from_secs(30), || async {
        sent().await >= 200
    })
    .await;

    // One of three masters gone: a majority remains, sending goes on.
    masters[0].kill();
    let at_kill = sent().await;
    wait_until(
        "progress with 2 of 3 masters",
        Duration::from_secs(30),
        || async { sent().await >= at_kill + 500 },
    )
    .await;

    // Two of three gone: no quorum, no new claims, and the logs say why.
    masters[1].kill();
    wait_until(
        "workers report the lost quorum",
        Duration::from_secs(30),
        || async { workers.iter().all(|w| w.logs().contains("no quorum")) },
    )
    .await;
    wait_until("in-flight rows finish", Duration::from_secs(30), || async {
        db.count_status("sending").await == 0
    })
    .await;
    let frozen = sent().await;
    assert!(frozen < 3000, "the test must lose the quorum mid-run");
    let failures = || {
        workers
            .iter()
            .map(|w| w.logs().matches("no quorum").count())
            .sum::<usize>()
    };
    let before = failures();
    wait_until("more polls fail", Duration::from_secs(30), || async {
        failures() >= before + 4
    })
    .await;
    assert_eq!(
        sent().await,
        frozen,
        "nothing is claimed or sent without a quorum"
    );

    // Masters come back empty (they keep nothing on disk): sending resumes,
    // and the fenced claims keep it exactly-once.
    masters[0].restart();
    masters[1].restart();
    wait_all_final(&db, 3000, Duration::from_secs(60)).await;
    stop_all(&mut workers).await;
    assert_eq!(sent().await, 3000);
    assert_exactly_once(&db, &rcv, 3000, "no duplicates without a crash").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_and_hands_claims_back() {
    require_redis().await;
    let db = TestDb::new().await;
    enqueue(&db, 20, 20, "default").await;
    // Sends that would outlast any reasonable wait.
    let rcv = Receiver::ok(Duration::from_secs(8)).await;
    let prefix = key_prefix();
    let mut worker = WorkerProc::spawn(
        &db,
        &prefix,
        &env(
            &rcv,
            &[
                ("HERALD_SHUTDOWN_GRACE_MS", "60000"),
                ("HERALD_SEND_TIMEOUT_MS", "9000"),
            ],
        ),
    );
    wait_until("sends in flight", Duration::from_secs(30), || async {
        rcv.in_progress() >= 5
    })
    .await;
    assert!(db.count_status("sending").await > 0);
    worker.signal("TERM");
    wait_until(
        "the first signal is acknowledged",
        Duration::from_secs(10),
        || async { worker.logs().contains("shutting down") },
    )
    .await;
    let started = std::time::Instant::now();
    worker.signal("INT");
    let status = worker.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(130), "{}", worker.logs());
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(worker.logs().contains("second signal"));
    // Right after exit, before any lease could end: nothing left claimed.
    assert_eq!(db.count_status("sending").await, 0, "{}", worker.logs());
    assert_eq!(db.count_status("pending").await, 20);
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM notifications WHERE attempts <> 0")
            .await,
        0,
        "cut-off sends do not count an attempt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_locked_elsewhere_are_skipped_without_spinning_then_sent() {
    use crate::redis_procs::RedisProc;
    use herald::lock::{LockConfig, Redlock};
    let redis = RedisProc::start();
    let db = TestDb::new().await;
    enqueue(&db, 10, 10, "default").await;
    let prefix = key_prefix();
    // Another owner (a stalled instance, say) holds every due row's key.
    let other = Redlock::new(LockConfig {
        key_prefix: prefix.clone(),
        ..LockConfig::new(vec![herald::secret::SecretUrl::parse(&redis.url()).unwrap()])
    })
    .await
    .unwrap();
    let ids: Vec<u64> = sqlx::query_scalar("SELECT id FROM notifications")
        .fetch_all(db.store.pool())
        .await
        .unwrap();
    let keys: Vec<String> = ids.iter().map(|id| format!("n:{id}")).collect();
    let held = other
        .acquire_many(&keys, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(held.granted().len(), 10);

    let rcv = Receiver::ok(Duration::ZERO).await;
    let mut worker = WorkerProc::spawn(
        &db,
        &prefix,
        &env(
            &rcv,
            &[
                ("HERALD_REDIS_URLS", &redis.url()),
                ("HERALD_POLL_INTERVAL_MS", "500"),
            ],
        ),
    );
    let sets = || {
        let info = redis.raw("INFO commandstats");
        info.split("cmdstat_set:calls=")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    wait_until(
        "the worker tries the held keys",
        Duration::from_secs(20),
        || async { sets() > 10 },
    )
    .await;
    let before = sets();
    // An observation window, not synchronisation: how often does it retry?
    tokio::time::sleep(Duration::from_secs(2)).await;
    let polls = (sets() - before) / 10;
    assert!(
        polls <= 40,
        "{polls} lock rounds in 2 s on keys held elsewhere: the poller spins"
    );
    assert_eq!(
        db.count_status("sent").await,
        0,
        "held rows must not be sent"
    );

    other.release_many(held).await.unwrap();
    wait_all_final(&db, 10, Duration::from_secs(10)).await;
    stop(&mut worker).await;
    assert_eq!(rcv.delivered().len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_crash_mid_run_loses_nothing_and_sends_nothing_twice() {
    require_redis().await;
    let (mut mysql, url, store) = private_database_with(600).await;

    // Slow enough that sends are always in flight when the database dies,
    // so some finish writes must wait for it to come back.
    let rcv = Receiver::ok(Duration::from_millis(100)).await;
    let prefix = key_prefix();
    // Leases (~28 s) outlast the outage: only the workers that sent the
    // rows can finish them, once the database is back.
    let mut workers: Vec<WorkerProc> = (0..2)
        .map(|i| {
            WorkerProc::spawn_on(
                &url,
                &prefix,
                &short_lock_env(&rcv, &format!("w{i}"), 16, 30_000),
            )
        })
        .collect();
    wait_until("sending started", Duration::from_secs(30), || async {
        rcv.count() >= 100
    })
    .await;

    // Crash the database under the workers and keep it down until a finish
    // write has failed (the pool gives up connecting after 10 s): an outage
    // longer than any quick retry would bridge.
    mysql.kill();
    wait_until(
        "finish writes retrying through the outage",
        Duration::from_secs(60),
        || async {
            workers
                .iter()
                .any(|w| w.logs().lines().any(|l| l.contains("finish write failed")))
        },
    )
    .await;
    mysql.restart();

    wait_until(
        "all rows final after the crash",
        Duration::from_secs(90),
        || async { sent_on(&store).await == 600 },
    )
    .await;
    stop_all(&mut workers).await;
    // The outage was seen, and sending resumed after it.
    let recovered = workers.iter().any(|w| {
        let logs = w.logs();
        let failed_at = logs
            .find("poll failed")
            .into_iter()
            .chain(logs.find("finish write failed"))
            .min();
        failed_at.is_some_and(|at| logs[at..].contains("finish write succeeded after retrying"))
    });
    assert!(
        recovered,
        "no worker logged the outage and then recorded its sends:\n{}\n{}",
        workers[0].logs(),
        workers[1].logs()
    );
    let delivered = rcv.delivered();
    assert_eq!(delivered.len(), 600, "every row delivered");
    let dupes: Vec<_> = delivered.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dupes.is_empty(),
        "finish writes wait out the outage, so nothing is sent twice: {dupes:?}"
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_database_times_out_instead_of_blocking_and_nothing_is_lost() {
    require_redis().await;
    let (mysql, url, store) = private_database_with(400).await;
    let rcv = Receiver::ok(Duration::from_millis(50)).await;
    let prefix = key_prefix();
    let mut worker = WorkerProc::spawn_on(&url, &prefix, &short_lock_env(&rcv, "w", 16, 4000));
    wait_until("sending started", Duration::from_secs(30), || async {
        rcv.count() >= 50
    })
    .await;

    // The database stops answering without closing anything.
    mysql.pause();
    // The pool's 10 s acquire timeout or our own bound on the round or write,
    // whichever comes first: a failure is logged, nothing blocks for good.
    wait_until(
        "a bounded poll round or finish write to give up",
        Duration::from_secs(60),
        || async {
            let logs = worker.logs();
            logs.contains("no answer within") || logs.contains("finish write failed")
        },
    )
    .await;
    mysql.resume();

    wait_until(
        "all rows final after the hang",
        Duration::from_secs(90),
        || async { sent_on(&store).await == 400 },
    )
    .await;
    stop(&mut worker).await;
    // A hang longer than the lease may legitimately repeat in-flight rows
    // (same webhook-id); nothing may be missing.
    assert_eq!(rcv.delivered().len(), 400, "every row delivered");
    store.close().await;
}
