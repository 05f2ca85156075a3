//! Issue 14, errors and logs: a log filter that would hide everything, the
//! attempt count of rows that expired unsent, what `herald status` shows
//! during an outage, and `/readyz` and poll errors naming the real cause of
//! an unreachable Redis, once.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{
    herald, key_prefix, mysql_server, text, wait_until, DbName, TestDb, WorkerProc,
};
use crate::redis_procs::free_port;

/// `HERALD_LOG=hrald=debug` is valid syntax that enables nothing of
/// Herald's: it used to make the worker silent.
#[tokio::test]
async fn a_log_filter_naming_no_herald_target_warns_once_and_keeps_info_output() {
    let db = TestDb::new().await;
    let w = WorkerProc::spawn(&db, &key_prefix(), &[("HERALD_LOG", "hrald=debug".into())]);
    wait_until("the start-up line", Duration::from_secs(20), || async {
        w.logs().contains("worker starting")
    })
    .await;
    let logs = w.logs();
    assert_eq!(
        logs.matches("names no target of Herald's own logs").count(),
        1,
        "{logs}"
    );
    assert!(logs.contains("hrald=debug,info"), "{logs}");

    // A filter that does reach Herald is left alone: no warning.
    let out = herald(Some(&db))
        .env("HERALD_LOG", "herald=warn,sqlx=error")
        .arg("status")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(text(&out.stderr), "");
}

/// The claim counts an attempt; a row whose `expires_at` had passed when
/// its turn came was never attempted, so the expired write gives it back.
#[tokio::test]
async fn a_row_that_expired_unsent_keeps_its_attempt_count() {
    let db = TestDb::new().await;
    // id 1: never attempted; id 2: attempted once before, then expired
    // while waiting for its retry.
    db.exec(
        "INSERT INTO notifications (id, user_id, channel, payload, send_at, due_at, expires_at, attempts) VALUES \
         (1, 1, 'log', '{}', UTC_TIMESTAMP(6) - INTERVAL 2 SECOND, UTC_TIMESTAMP(6) - INTERVAL 2 SECOND, \
          UTC_TIMESTAMP(6) - INTERVAL 1 SECOND, 0), \
         (2, 2, 'log', '{}', UTC_TIMESTAMP(6) - INTERVAL 9 SECOND, UTC_TIMESTAMP(6) - INTERVAL 2 SECOND, \
          UTC_TIMESTAMP(6) - INTERVAL 1 SECOND, 1)",
    )
    .await;
    let _w = WorkerProc::spawn(&db, &key_prefix(), &[]);
    wait_until("both rows expired", Duration::from_secs(20), || async {
        db.count_status("expired").await == 2
    })
    .await;
    assert_eq!(
        db.scalar("SELECT CAST(attempts AS SIGNED) FROM notifications WHERE id = 1")
            .await,
        0
    );
    assert_eq!(
        db.scalar("SELECT CAST(attempts AS SIGNED) FROM notifications WHERE id = 2")
            .await,
        1
    );
}

/// During a receiver outage the counts looked healthy; the rows waiting
/// for a retry and why they wait were invisible.
#[tokio::test]
async fn status_shows_rows_waiting_for_a_retry_and_the_latest_error_per_channel() {
    let db = TestDb::new().await;
    db.exec(
        "INSERT INTO notifications (user_id, channel, region, payload, send_at, due_at, status, attempts, \
           last_error, finished_at) VALUES \
         (1, 'webhook', 'default', '{}', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) + INTERVAL 1 HOUR, 'pending', 2, \
          'HTTP 503: old outage', NULL), \
         (2, 'webhook', 'eu', '{}', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) + INTERVAL 5 MINUTE, 'pending', 1, \
          'HTTP 503: receiver down', NULL), \
         (3, 'sms', 'default', '{}', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6), 'failed', 8, \
          'HTTP 410: gone', UTC_TIMESTAMP(6)), \
         (4, 'log', 'default', '{}', UTC_TIMESTAMP(6) + INTERVAL 1 DAY, UTC_TIMESTAMP(6) + INTERVAL 1 DAY, \
          'pending', 0, NULL, NULL), \
         (5, 'log', 'default', '{}', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6), 'sent', 1, NULL, UTC_TIMESTAMP(6))",
    )
    .await;
    // The newer of the two webhook errors is the one shown.
    db.exec("UPDATE notifications SET updated_at = UTC_TIMESTAMP(6) - INTERVAL 1 HOUR WHERE user_id = 1")
        .await;

    let out = herald(Some(&db))
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["retry_waiting"], 2, "{v}");
    assert_eq!(v["retry_waiting_is_lower_bound"], false, "{v}");
    assert_eq!(v["counts"]["pending"], 3, "{v}");
    let errors = v["latest_errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{v}");
    let by = |channel: &str| {
        errors
            .iter()
            .find(|e| e["channel"] == channel)
            .unwrap_or_else(|| panic!("no {channel} in {v}"))
    };
    assert_eq!(by("webhook")["error"], "HTTP 503: receiver down", "{v}");
    assert_eq!(by("webhook")["status"], "pending", "{v}");
    assert_eq!(by("sms")["error"], "HTTP 410: gone", "{v}");
    assert_eq!(by("sms")["status"], "failed", "{v}");

    let out = herald(Some(&db)).arg("status").output().unwrap();
    let shown = text(&out.stdout);
    assert!(shown.contains("retry waiting 2\n"), "{shown}");
    assert!(shown.contains("oldest due lag"), "{shown}");
    assert!(
        shown.contains("webhook (1 waiting for a retry)")
            && shown.contains("HTTP 503: receiver down"),
        "{shown}"
    );
    assert!(shown.contains("sms (1 failed)"), "{shown}");
}

/// `/readyz` used to say "lock request dropped: its runtime shut down - Io"
/// when the Redis port was closed, and each failed poll logged two WARN
/// lines.
#[tokio::test]
async fn an_unreachable_redis_is_named_with_its_cause_in_readyz_and_in_one_poll_warning() {
    let db = TestDb::new().await;
    db.exec(
        "INSERT INTO notifications (user_id, channel, payload, send_at, due_at) \
         VALUES (1, 'log', '{}', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))",
    )
    .await;
    let addr = format!("127.0.0.1:{}", free_port());
    let closed = free_port();
    let w = WorkerProc::spawn(
        &db,
        &key_prefix(),
        &[
            ("HERALD_REDIS_URLS", format!("redis://127.0.0.1:{closed}")),
            ("HERALD_HTTP_ADDR", addr.clone()),
        ],
    );
    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    let body = loop {
        // The first answers may come before the pool has tried to dial.
        if let Ok(r) = client.get(format!("http://{addr}/readyz")).send().await {
            assert_eq!(r.status(), 503);
            let body = r.text().await.unwrap_or_default();
            if body.contains("Connection refused") || started.elapsed() > Duration::from_secs(20) {
                break body;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{}", w.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(body.contains("Connection refused"), "{body}");
    assert!(body.contains(&format!("127.0.0.1:{closed}")), "{body}");
    assert!(!body.contains("runtime shut down"), "{body}");

    wait_until("a failed poll", Duration::from_secs(20), || async {
        w.logs().contains("poll failed")
    })
    .await;
    let logs = w.logs();
    for line in logs.lines().filter(|l| l.contains("poll failed")) {
        assert_eq!(line.matches("Connection refused").count(), 1, "{line}");
    }
    let warnings = logs.lines().filter(|l| l.contains(" WARN ")).count();
    let polls = logs.lines().filter(|l| l.contains("poll failed")).count();
    let other = logs
        .lines()
        .filter(|l| l.contains(" WARN ") && !l.contains("poll failed"))
        .filter(|l| !l.contains("fewer Redis masters") && !l.contains("HERALD_WEBHOOK_URL"))
        .filter(|l| !l.contains("circuit breaker opened"))
        .collect::<Vec<_>>();
    assert!(polls <= warnings && other.is_empty(), "{logs}");
}

/// `cleanup --once` on a database that exists but was never migrated
/// printed a bare "error 1146".
#[tokio::test]
async fn cleanup_on_an_unmigrated_database_says_to_run_migrate() {
    let db = DbName::new();
    let server = herald::secret::SecretUrl::parse(&format!("{}/mysql", mysql_server())).unwrap();
    let admin = herald::store::Store::connect(&server, 1).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE `{}`", db.name))
        .execute(admin.pool())
        .await
        .unwrap();
    admin.close().await;
    for args in [&["cleanup", "--once"][..], &["cleanup", "--dry-run"]] {
        let out = herald(None)
            .env("HERALD_DATABASE_URL", db.url.expose())
            .args(args)
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("run `herald migrate` first"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("1146"), "{args:?}: {err}");
    }
}
