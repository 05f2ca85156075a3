//! `herald show|list|retry|cancel` against a real database and real worker
//! processes: the built binary, as an operator runs it.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{Duration as ChronoDuration, Utc};
use serde_json::{json, Value};

use crate::helpers::*;
use crate::receiver::Receiver;
use herald::notification::{Limits, NewNotification};
use herald::store::enqueue::enqueue_batch;

/// Enqueues `n` due rows on `channel` for `user(i)`; returns their ids.
pub(crate) async fn enqueue_rows(
    db: &TestDb,
    n: u64,
    channel: &str,
    user: impl Fn(u64) -> u64,
    payload: impl Fn(u64) -> Value,
) -> Vec<u64> {
    let limits = Limits::default();
    let send_at = Utc::now() - ChronoDuration::seconds(1);
    let items: Vec<NewNotification> = (0..n)
        .map(|i| {
            NewNotification::builder(user(i), channel, payload(i))
                .send_at(send_at)
                .build(&limits)
                .unwrap()
        })
        .collect();
    let mut conn = db.store.pool().acquire().await.unwrap();
    enqueue_batch(&mut conn, &items).await.unwrap();
    let max = db
        .scalar("SELECT CAST(MAX(id) AS SIGNED) FROM notifications")
        .await as u64;
    ((max + 1 - n)..=max).collect()
}

/// Runs `herald <args>` on `db`; returns (exit code, stdout, stderr). On
/// a blocking thread: the test's own receiver must keep answering.
async fn run(db: &TestDb, args: &[&str]) -> (i32, String, String) {
    let mut cmd = herald(Some(db));
    cmd.args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("running herald");
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

fn json_of(stdout: &str) -> Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// Ids in a file channel's output, with how often each was delivered.
fn file_deliveries(path: &std::path::Path) -> HashMap<u64, usize> {
    let mut out = HashMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        *out.entry(v["id"].as_u64().unwrap()).or_default() += 1;
    }
    out
}

#[tokio::test]
async fn show_list_and_refusals() {
    let db = TestDb::new().await;
    let ids = enqueue_rows(
        &db,
        3,
        "log",
        |i| 40 + i,
        |i| json!({"i": i, "html": "<b>"}),
    )
    .await;
    db.exec(&format!(
        "UPDATE notifications SET status = 'failed', attempts = 2, last_error = 'receiver said 400', \
         finished_at = UTC_TIMESTAMP(6) WHERE id = {}",
        ids[0]
    ))
    .await;
    db.exec(&format!(
        "INSERT INTO notification_attempts (notification_id, attempt, started_at, duration_ms, outcome, http_status, error, worker_id) \
         VALUES ({0}, 1, UTC_TIMESTAMP(6), 12, 'retried', 503, 'busy', 'w1'), ({0}, 2, UTC_TIMESTAMP(6), 9, 'failed', 400, 'receiver said 400', 'w2')",
        ids[0]
    ))
    .await;

    let (code, out, _) = run(&db, &["show", &ids[0].to_string(), "--json"]).await;
    assert_eq!(code, 0);
    let v = json_of(&out);
    assert_eq!(v["status"], "failed");
    assert_eq!(v["attempt_history"].as_array().unwrap().len(), 2);
    assert_eq!(v["attempt_history"][1]["http_status"], 400);
    let (code, out, _) = run(&db, &["show", &ids[0].to_string()]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("receiver said 400") && out.contains("503"),
        "{out}"
    );
    let (code, _, _) = run(&db, &["show", "999999"]).await;
    assert_eq!(code, 1);

    // Filters and cursor paging: two pages of one row for user 41 and 42.
    let (code, out, _) = run(
        &db,
        &["list", "--status", "pending", "--limit", "1", "--json"],
    )
    .await;
    assert_eq!(code, 0);
    let page = json_of(&out);
    assert_eq!(page["rows"][0]["id"], ids[2]);
    let cursor = page["next_cursor"].as_u64().expect("a next page");
    let (_, out, _) = run(
        &db,
        &[
            "list",
            "--status",
            "pending",
            "--limit",
            "1",
            "--cursor",
            &cursor.to_string(),
            "--json",
        ],
    )
    .await;
    let page = json_of(&out);
    assert_eq!(page["rows"][0]["id"], ids[1]);
    assert!(page["next_cursor"].is_null());
    let (_, out, _) = run(&db, &["list", "--user", "40", "--oldest-first"]).await;
    assert!(out.contains("failed") && out.contains("1 rows"), "{out}");

    // Bad filters exit 2 naming the flag; no filter at all is refused.
    let (code, _, err) = run(&db, &["list", "--status", "done"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("--status"), "{err}");
    let (code, _, err) = run(&db, &["list", "--since", "yesterday"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("--since"), "{err}");
    for cmd in ["retry", "cancel"] {
        let (code, _, err) = run(&db, &[cmd]).await;
        assert_eq!(code, 2, "{cmd}: {err}");
        assert!(err.contains("--all"), "{err}");
    }

    // Retry by id: a dry run changes nothing; each id gets its reason.
    let (code, out, _) = run(
        &db,
        &[
            "retry",
            &ids[0].to_string(),
            &ids[1].to_string(),
            "12345678",
            "--dry-run",
            "--json",
        ],
    )
    .await;
    assert_eq!(code, 0);
    let r = json_of(&out);
    let outcomes: HashMap<u64, String> = r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_u64().unwrap(),
                c["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(outcomes[&ids[0]], "would_retry");
    assert_eq!(outcomes[&ids[1]], "skipped");
    assert_eq!(outcomes[&12345678], "not_found");
    assert_eq!(db.count_status("failed").await, 1);
    let (code, out, _) = run(&db, &["retry", &ids[0].to_string()]).await;
    assert_eq!(code, 0);
    assert!(out.contains("retried 1 of 1"), "{out}");
    let row: (String, u32, Option<String>) = sqlx::query_as(&format!(
        "SELECT CAST(status AS CHAR), attempts, last_error FROM notifications WHERE id = {}",
        ids[0]
    ))
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    assert_eq!((row.0.as_str(), row.1), ("pending", 0));
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM notification_attempts")
            .await,
        2
    );

    // Cancel by dedupe-less selection: a user's pending rows.
    let (code, out, _) = run(&db, &["cancel", "--user", "41", "--json"]).await;
    assert_eq!(code, 0);
    let r = json_of(&out);
    assert_eq!(r["changed"], 1);
    assert_eq!(db.count_status("cancelled").await, 1);
}

/// 10,000 failed rows retried in batches while two workers run: every one
/// delivered exactly once.
#[tokio::test]
async fn retrying_10000_failed_rows_while_workers_run_delivers_each_once() {
    require_redis().await;
    let db = TestDb::new().await;
    let prefix = key_prefix();
    let ids = enqueue_rows(&db, 10_000, "file", |i| i % 500, |i| json!({"i": i})).await;
    db.exec(
        "UPDATE notifications SET status = 'failed', attempts = 8, finished_at = UTC_TIMESTAMP(6), \
         last_error = 'receiver down'",
    )
    .await;
    // Live traffic beside the retry.
    let live = enqueue_rows(&db, 1_000, "file", |i| i, |i| json!({"live": i})).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("deliveries.jsonl");
    let env = [
        ("HERALD_FILE_PATH", out.display().to_string()),
        ("HERALD_CONCURRENCY", "16".to_owned()),
        ("HERALD_BATCH_SIZE", "200".to_owned()),
    ];
    let _a = WorkerProc::spawn(&db, &prefix, &env);
    let _b = WorkerProc::spawn(&db, &prefix, &env);
    wait_until(
        "the workers to start sending",
        Duration::from_secs(20),
        || async { db.count_status("sent").await > 0 },
    )
    .await;

    let (code, stdout, stderr) = run(
        &db,
        &["retry", "--status", "failed", "--channel", "file", "--json"],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    let report = json_of(&stdout);
    assert_eq!(report["changed"], 10_000, "{}", report["matched"]);

    wait_until("every row sent", Duration::from_secs(90), || async {
        db.count_status("sent").await == 11_000
    })
    .await;
    let delivered = file_deliveries(&out);
    for id in ids.iter().chain(&live) {
        assert_eq!(
            delivered.get(id),
            Some(&1),
            "row {id} delivered {:?} times",
            delivered.get(id)
        );
    }
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM notifications WHERE attempts <> 1")
            .await,
        0,
        "each retried row started a fresh set of attempts"
    );
}

/// A user's 1,000 pending rows cancelled while workers drain them: each
/// ends cancelled or sent, and no row reported cancelled is ever
/// delivered.
#[tokio::test]
async fn cancelling_a_users_1000_rows_while_workers_drain_them() {
    require_redis().await;
    let db = TestDb::new().await;
    let prefix = key_prefix();
    let receiver = Receiver::ok(Duration::from_millis(40)).await;
    let ids = enqueue_rows(&db, 1_000, "webhook", |_| 7, |i| json!({"i": i})).await;
    let other = enqueue_rows(&db, 200, "webhook", |i| 100 + i, |i| json!({"o": i})).await;
    let env = [
        ("HERALD_WEBHOOK_URL", receiver.url()),
        ("HERALD_CONCURRENCY", "4".to_owned()),
        ("HERALD_BATCH_SIZE", "50".to_owned()),
    ];
    let _a = WorkerProc::spawn(&db, &prefix, &env);
    let _b = WorkerProc::spawn(&db, &prefix, &env);
    wait_until("some rows delivered", Duration::from_secs(30), || async {
        receiver.count() >= 100
    })
    .await;

    let (code, stdout, stderr) = run(&db, &["cancel", "--user", "7", "--json"]).await;
    let reported_at = Instant::now();
    assert_eq!(code, 0, "{stderr}");
    let report = json_of(&stdout);
    let rows = report["rows"].as_array().unwrap();
    let by_outcome = |o: &str| -> HashSet<u64> {
        rows.iter()
            .filter(|c| c["outcome"] == o)
            .map(|c| c["id"].as_u64().unwrap())
            .collect()
    };
    let cancelled = by_outcome("cancelled");
    assert!(
        cancelled.len() > 100,
        "most rows were still pending: {}",
        cancelled.len()
    );
    assert!(
        by_outcome("sending").is_empty(),
        "every row settled within the wait"
    );

    wait_until(
        "the other users' rows sent",
        Duration::from_secs(60),
        || async {
            db.scalar("SELECT COUNT(*) FROM notifications WHERE status IN ('pending', 'sending')")
                .await
                == 0
        },
    )
    .await;
    // Deliveries still in flight would show up now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hits = receiver.hits();
    let delivered: HashSet<u64> = hits.iter().map(|h| h.id).collect();
    for id in &cancelled {
        assert!(
            !delivered.contains(id),
            "row {id} was reported cancelled and delivered"
        );
    }
    assert!(
        hits.iter()
            .filter(|h| cancelled.contains(&h.id))
            .all(|h| h.start < reported_at),
        "no delivery of a cancelled row after the report"
    );
    let statuses: HashMap<u64, String> = sqlx::query_as::<_, (u64, String)>(
        "SELECT id, CAST(status AS CHAR) FROM notifications WHERE user_id = 7",
    )
    .fetch_all(db.store.pool())
    .await
    .unwrap()
    .into_iter()
    .collect();
    for id in &ids {
        match statuses[id].as_str() {
            "cancelled" => assert!(!delivered.contains(id), "cancelled row {id} was delivered"),
            "sent" => assert!(delivered.contains(id), "sent row {id} never arrived"),
            other => panic!("row {id} ended {other}"),
        }
    }
    assert!(cancelled.iter().all(|id| statuses[id] == "cancelled"));
    for id in &other {
        assert!(
            delivered.contains(id),
            "other user's row {id} not delivered"
        );
    }
}

/// Rows claimed ahead and waiting for a send slot when the cancel comes
/// are not sent: the worker re-checks them before sending and hands them
/// back, which ends them `cancelled`. The row on the wire ends `sent`, and
/// the report says the send had already started.
#[tokio::test]
async fn a_cancel_request_stops_claimed_rows_before_their_send() {
    require_redis().await;
    let db = TestDb::new().await;
    let receiver = Receiver::ok(Duration::from_millis(2_500)).await;
    let ids = enqueue_rows(&db, 6, "webhook", |_| 9, |i| json!({"i": i})).await;
    let env = [
        ("HERALD_WEBHOOK_URL", receiver.url()),
        ("HERALD_CONCURRENCY", "1".to_owned()),
        ("HERALD_SEND_TIMEOUT_MS", "5000".to_owned()),
    ];
    let _w = WorkerProc::spawn(&db, &key_prefix(), &env);
    wait_until(
        "one send on the wire and others claimed",
        Duration::from_secs(20),
        || async { receiver.in_progress() == 1 && db.count_status("sending").await >= 2 },
    )
    .await;
    // Let the claimed rows wait past the worker's re-check threshold.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let waiting: Vec<u64> = sqlx::query_scalar::<_, u64>(
        "SELECT id FROM notifications WHERE status = 'sending' ORDER BY id",
    )
    .fetch_all(db.store.pool())
    .await
    .unwrap();
    let (code, stdout, stderr) = run(&db, &["cancel", "--user", "9", "--json"]).await;
    assert_eq!(code, 0, "{stderr}");
    let report = json_of(&stdout);
    let outcome = |id: u64| -> String {
        report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .map(|c| c["outcome"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let on_wire: Vec<u64> = receiver.hits().iter().map(|h| h.id).collect();
    let sent_rows: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|id| outcome(*id) == "sent")
        .collect();
    assert_eq!(
        sent_rows.len(),
        1,
        "only the row on the wire is sent: {report}"
    );
    assert!(
        report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["outcome"] == "sent"
                && c["detail"]
                    .as_str()
                    .unwrap_or("")
                    .contains("already started")),
        "{report}"
    );
    let claimed_waiting: Vec<u64> = waiting
        .iter()
        .copied()
        .filter(|id| !sent_rows.contains(id))
        .collect();
    assert!(
        !claimed_waiting.is_empty(),
        "rows were claimed ahead: {waiting:?}"
    );
    for id in &claimed_waiting {
        assert_eq!(outcome(*id), "cancelled", "claimed row {id}: {report}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered: HashSet<u64> = receiver.hits().iter().map(|h| h.id).collect();
    assert_eq!(
        delivered.len(),
        1,
        "nothing but the first send went out: {delivered:?} {on_wire:?}"
    );
    assert_eq!(db.count_status("cancelled").await, 5);
}
