//! The attempt history at the store level, against a real MariaDB: a
//! history row exists exactly when its attempt's fenced finish took effect
//! (not for a lost claim, not twice for a retried write, later for a row
//! that was busy), and cleanup deletes history with its notification and
//! sweeps history whose notification another service deleted.

use std::collections::HashMap;
use std::process::Stdio;

use chrono::Utc;
use sqlx::Connection;

use herald::outcome::Outcome;
use herald::store::attempts::{self, Attempt, History};
use herald::store::claim;
use herald::store::finish::{self, Finish};
use herald::store::prune;

use crate::helpers::*;

async fn insert_due(db: &TestDb, n: u64) -> Vec<u64> {
    let values: Vec<String> = (0..n)
        .map(|i| format!("({i}, 'webhook', '{{}}', UTC_TIMESTAMP(6) - INTERVAL 1 SECOND, UTC_TIMESTAMP(6) - INTERVAL 1 SECOND)"))
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

async fn claim_all(db: &TestDb, ids: &[u64]) -> [u8; 16] {
    let token: [u8; 16] = rand::random();
    let regions = vec!["default".to_owned()];
    let got = claim::claim_rows(
        db.store.pool(),
        ids,
        &regions,
        &token,
        "t",
        60_000_000,
        &Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(got.len(), ids.len());
    token
}

fn attempt(status: u16, ms: u32) -> Attempt {
    Attempt {
        attempt: 1,
        started_at: Utc::now(),
        duration_ms: ms,
        http_status: Some(status),
        response_body: Some(format!("body of a {status}")),
    }
}

async fn history_len(db: &TestDb, id: u64) -> usize {
    attempts::of(db.store.pool(), id).await.unwrap().len()
}

async fn last(db: &TestDb, id: u64) -> (Option<u16>, Option<u32>) {
    sqlx::query_as("SELECT last_http_status, last_duration_ms FROM notifications WHERE id = ?")
        .bind(id)
        .fetch_one(db.store.pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_written_only_where_the_fenced_finish_took_effect() {
    let db = TestDb::new().await;
    let pool = db.store.pool();
    let ids = insert_due(&db, 5).await;
    let token = claim_all(&db, &ids).await;
    let map: HashMap<u64, Attempt> = [
        (ids[0], attempt(503, 11)),
        (ids[1], attempt(503, 12)),
        (ids[2], attempt(404, 13)),
        (ids[3], attempt(200, 14)),
        (ids[4], attempt(200, 15)),
    ]
    .into_iter()
    .collect();
    let history = History {
        worker_id: "w-test",
        record_sent: false,
        attempts: &map,
    };
    let retry = || Finish::Retry {
        delay_us: 60_000_000,
        error: "HTTP 503: down".into(),
    };
    // Row 0's claim was lost: another instance re-claimed it.
    db.exec(&format!(
        "UPDATE notifications SET claim_token = X'00112233445566778899aabbccddeeff' WHERE id = {}",
        ids[0]
    ))
    .await;
    // Row 1 is locked by another application's transaction.
    let mut foreign = sqlx::MySqlConnection::connect(&db.url_str()).await.unwrap();
    sqlx::raw_sql(&format!(
        "START TRANSACTION; SELECT id FROM notifications WHERE id = {} FOR UPDATE",
        ids[1]
    ))
    .execute(&mut foreign)
    .await
    .unwrap();
    let rows = vec![
        (ids[0], retry()),
        (ids[1], retry()),
        (
            ids[2],
            Finish::Failed {
                error: "HTTP 404: gone".into(),
            },
        ),
        (ids[3], Finish::Sent),
        (ids[4], Finish::Sent),
    ];
    let (c, busy) = finish::finish_recorded(pool, &token, &rows, history, &Default::default())
        .await
        .unwrap();
    assert_eq!(busy, vec![ids[1]]);
    assert_eq!(
        (
            c[Outcome::Lost],
            c[Outcome::Failed],
            c[Outcome::Sent],
            c[Outcome::Retried]
        ),
        (1, 1, 2, 0)
    );
    assert_eq!(
        history_len(&db, ids[0]).await,
        0,
        "a lost claim records nothing"
    );
    assert_eq!(
        last(&db, ids[0]).await,
        (None, None),
        "nor touches the new owner's row"
    );
    assert_eq!(
        history_len(&db, ids[1]).await,
        0,
        "a busy row is not recorded yet"
    );
    let failed = attempts::of(pool, ids[2]).await.unwrap();
    assert_eq!(failed.len(), 1);
    let a = &failed[0];
    assert_eq!(
        (
            a.attempt,
            a.outcome.as_str(),
            a.http_status,
            a.duration_ms,
            a.worker_id.as_str()
        ),
        (1, "failed", Some(404), 13, "w-test")
    );
    assert_eq!(a.error.as_deref(), Some("HTTP 404: gone"));
    assert_eq!(a.response_body.as_deref(), Some("body of a 404"));
    assert_eq!(last(&db, ids[2]).await, (Some(404), Some(13)));
    // Sent attempts: on the row, not in the history (the default).
    assert_eq!(history_len(&db, ids[3]).await, 0);
    assert_eq!(last(&db, ids[3]).await, (Some(200), Some(14)));
    assert_eq!(last(&db, ids[4]).await, (Some(200), Some(15)));

    // The same write again (its reply was lost): done, and not recorded twice.
    let again = [rows[2].clone()];
    let (c, _) = finish::finish_recorded(pool, &token, &again, history, &Default::default())
        .await
        .unwrap();
    assert_eq!((c[Outcome::Failed], c[Outcome::Lost]), (1, 0));
    assert_eq!(history_len(&db, ids[2]).await, 1);

    // Once the foreign lock is gone, the busy row is written with its attempt.
    sqlx::raw_sql("COMMIT").execute(&mut foreign).await.unwrap();
    let (c, busy) =
        finish::finish_recorded(pool, &token, &rows[1..2], history, &Default::default())
            .await
            .unwrap();
    assert_eq!((c[Outcome::Retried], busy.len()), (1, 0));
    let h = attempts::of(pool, ids[1]).await.unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(
        (h[0].outcome.as_str(), h[0].http_status),
        ("retried", Some(503))
    );
    assert_eq!(last(&db, ids[1]).await, (Some(503), Some(12)));

    // Expired before sending and handed back: not attempts, whatever the
    // caller passes along.
    let extra = insert_due(&db, 2).await;
    let (e, hb) = (extra[extra.len() - 2], extra[extra.len() - 1]);
    let token3 = claim_all(&db, &[e, hb]).await;
    let map2: HashMap<u64, Attempt> = [(e, attempt(500, 1)), (hb, attempt(500, 1))].into();
    let h2 = History {
        attempts: &map2,
        record_sent: true,
        ..history
    };
    let done = [(e, Finish::Expired), (hb, Finish::HandBack)];
    let (c, _) = finish::finish_recorded(pool, &token3, &done, h2, &Default::default())
        .await
        .unwrap();
    assert_eq!((c[Outcome::Expired], c[Outcome::HandedBack]), (1, 1));
    for id in [e, hb] {
        assert_eq!(history_len(&db, id).await, 0);
        assert_eq!(last(&db, id).await, (None, None));
    }

    // HERALD_RECORD_ATTEMPTS=all: the sent attempt gets its row too.
    db.exec(&format!(
        "UPDATE notifications SET status = 'pending', due_at = UTC_TIMESTAMP(6) - INTERVAL 1 SECOND WHERE id = {}",
        ids[1]
    ))
    .await;
    let token2 = claim_all(&db, &ids[1..2]).await;
    let all = History {
        record_sent: true,
        ..history
    };
    let (c, _) = finish::finish_recorded(
        pool,
        &token2,
        &[(ids[1], Finish::Sent)],
        all,
        &Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(c[Outcome::Sent], 1);
    let h = attempts::of(pool, ids[1]).await.unwrap();
    let got: Vec<_> = h
        .iter()
        .map(|a| (a.outcome.as_str(), a.http_status))
        .collect();
    assert_eq!(got, [("retried", Some(503)), ("sent", Some(503))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_deletes_history_with_its_notification_and_sweeps_orphans() {
    require_redis().await;
    let db = TestDb::new().await;
    // user_id tells the groups apart: 1 = sent long ago (deleted), 2 = sent
    // just now (kept), 3 = pending (never touched).
    db.exec(
        "INSERT INTO notifications (user_id, channel, payload, send_at, due_at, status, finished_at) VALUES \
         (1, 'webhook', '{}', UTC_TIMESTAMP(6) - INTERVAL 3 DAY, UTC_TIMESTAMP(6) - INTERVAL 3 DAY, 'sent', UTC_TIMESTAMP(6) - INTERVAL 2 DAY), \
         (1, 'webhook', '{}', UTC_TIMESTAMP(6) - INTERVAL 3 DAY, UTC_TIMESTAMP(6) - INTERVAL 3 DAY, 'failed', UTC_TIMESTAMP(6) - INTERVAL 2 DAY), \
         (2, 'webhook', '{}', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6), 'sent', UTC_TIMESTAMP(6)), \
         (3, 'webhook', '{}', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) + INTERVAL 1 HOUR, 'pending', NULL)",
    )
    .await;
    // Three attempts per row, plus history whose notification another
    // service deleted (id 999999 never existed here).
    db.exec(
        "INSERT INTO notification_attempts (notification_id, attempt, started_at, duration_ms, outcome, worker_id) \
         SELECT n.id, k.a, UTC_TIMESTAMP(6), 1, 'retried', 'w' FROM notifications n \
         CROSS JOIN (SELECT 1 AS a UNION ALL SELECT 2 UNION ALL SELECT 3) k",
    )
    .await;
    db.exec(
        "INSERT INTO notification_attempts (notification_id, attempt, started_at, duration_ms, outcome, worker_id) \
         VALUES (999999, 1, UTC_TIMESTAMP(6), 1, 'failed', 'w'), (999999, 2, UTC_TIMESTAMP(6), 1, 'failed', 'w')",
    )
    .await;
    let count = || db.scalar("SELECT COUNT(*) FROM notification_attempts");
    assert_eq!(count().await, 14);

    // One DELETE batch takes its rows' history, and only theirs.
    let failed = db
        .scalar("SELECT CAST(id AS SIGNED) FROM notifications WHERE status = 'failed'")
        .await as u64;
    let mut conn = db.store.pool().acquire().await.unwrap();
    assert_eq!(prune::delete_ids(&mut conn, &[failed]).await.unwrap(), 1);
    drop(conn);
    assert_eq!(history_len(&db, failed).await, 0);
    assert_eq!(count().await, 11, "the orphans are the sweep's job");

    let out = herald(Some(&db))
        .env("HERALD_KEY_PREFIX", key_prefix())
        .env("HERALD_CLEANUP_BATCH", "2")
        .env("HERALD_CLEANUP_PAUSE_MS", "0")
        .env("HERALD_RETENTION_SENT", "1d")
        .env("HERALD_RETENTION_FAILED", "1d")
        .args(["cleanup", "--once"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    let left = |sql: &'static str| db.scalar(sql);
    assert_eq!(
        left("SELECT COUNT(*) FROM notifications WHERE user_id = 1").await,
        0
    );
    assert_eq!(
        left("SELECT COUNT(*) FROM notification_attempts a LEFT JOIN notifications n ON n.id = a.notification_id WHERE n.id IS NULL").await,
        0,
        "no history without its notification"
    );
    assert_eq!(
        left("SELECT COUNT(*) FROM notification_attempts a JOIN notifications n ON n.id = a.notification_id WHERE n.user_id IN (2, 3)").await,
        6,
        "history of the rows kept is kept"
    );
}
