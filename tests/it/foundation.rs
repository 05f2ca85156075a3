//! Migrations, enqueue (CLI and library), status and configuration errors.

use serde_json::json;

use crate::helpers::*;
use herald::notification::{Limits, NewNotification};
use herald::store::enqueue::{enqueue_batch, enqueue_one, Inserted};

#[tokio::test]
async fn migrate_creates_the_database_and_is_idempotent() {
    let db = DbName::new();
    let first = herald(None)
        .env("HERALD_DATABASE_URL", db.url.expose())
        .arg("migrate")
        .output()
        .unwrap();
    assert!(first.status.success(), "{}", text(&first.stderr));
    let out = text(&first.stdout);
    assert!(out.contains("created database"), "{out}");
    assert!(
        out.contains("applied 20261126000001 create notifications"),
        "{out}"
    );

    let second = herald(None)
        .env("HERALD_DATABASE_URL", db.url.expose())
        .arg("migrate")
        .output()
        .unwrap();
    assert!(second.status.success(), "{}", text(&second.stderr));
    let out = text(&second.stdout);
    assert!(
        out.contains("up to date (2 migrations already applied)"),
        "{out}"
    );
    assert!(!out.contains("created database"), "{out}");

    // The contract's indexes exist.
    let store = herald::store::Store::connect(&db.url, 1).await.unwrap();
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT INDEX_NAME FROM information_schema.STATISTICS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'notifications'",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    for ix in [
        "PRIMARY",
        "uq_notifications_dedupe",
        "ix_notifications_due",
        "ix_notifications_finished",
        "ix_notifications_user",
    ] {
        assert!(indexes.iter().any(|i| i == ix), "missing {ix}: {indexes:?}");
    }
    store.close().await;
}

#[tokio::test]
async fn the_database_rejects_invalid_json_payloads() {
    let db = TestDb::new().await;
    let err = sqlx::query(
        "INSERT INTO notifications (user_id, channel, payload, send_at, due_at) \
         VALUES (1, 'webhook', '{not json', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))",
    )
    .execute(db.store.pool())
    .await;
    assert!(err.is_err(), "invalid JSON was accepted");
}

#[tokio::test]
async fn enqueue_inserts_good_lines_and_names_each_bad_one() {
    let db = TestDb::new().await;
    let big = "x".repeat(70_000);
    let lines = [
        /* 1 */ r#"{"user_id":1,"channel":"webhook","payload":{"a":1}}"#.to_string(),
        /* 2 */ "this is not json".to_string(),
        /* 3 */ r#"{"channel":"webhook","payload":{}}"#.to_string(),
        /* 4 */ r#"{"user_id":"7","channel":"webhook","payload":{}}"#.to_string(),
        /* 5 */ r#"{"user_id":2,"channel":"webhook","payload":"hello"}"#.to_string(),
        /* 6 */ format!(r#"{{"user_id":2,"channel":"webhook","payload":{{"big":"{big}"}}}}"#),
        /* 7 */ r#"{"user_id":2,"channel":"webhook","payload":{},"send_at":"next tuesday"}"#.to_string(),
        /* 8 */ r#"{"user_id":2,"channel":"webhook","payload":{},"send_at":"0001-01-01T00:00:00Z"}"#.to_string(),
        /* 9 */ r#"{"user_id":2,"channel":"webhook","payload":{},"send_at":"2030-01-02T00:00:00Z","expires_at":"2030-01-01T00:00:00Z"}"#.to_string(),
        /* 10 */ r#"{"user_id":2,"channel":"","payload":{}}"#.to_string(),
        /* 11 */ r#"{"user_id":-5,"channel":"webhook","payload":{}}"#.to_string(),
        /* 12 */ r#"{"user_id":3,"channel":"log","payload":{"b":2},"send_at":"2030-06-01T12:00:00.5+02:00","expires_at":"2030-06-02T00:00:00Z","region":"eu","dedupe_key":"order-1"}"#.to_string(),
        /* 13 */ String::new(),
        /* 14 */ r#"{"user_id":4,"channel":"webhook","payload":{},"sendat":"2030-01-01T00:00:00Z"}"#.to_string(),
    ];
    let out = run_with_stdin(herald(Some(&db)).arg("enqueue"), &lines.join("\n"));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for expected in [
        "line 2: (line): not valid JSON",
        "line 3: user_id: missing",
        "line 4: user_id: expected a number, got a string",
        "line 5: payload: expected a JSON object, got a string",
        "line 6: payload: ",
        "line 7: send_at: \"next tuesday\" is not an RFC 3339 time",
        "line 8: send_at: 0001-01-01T00:00:00Z is out of range",
        "line 9: expires_at: ",
        "line 10: channel: must not be empty",
        "line 11: user_id: must not be negative",
        "line 14: (line): unknown field \"sendat\"",
        "enqueued 2, duplicates 0, rejected 11",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    assert!(err.contains("larger than the limit"), "{err}");
    assert_eq!(db.scalar("SELECT COUNT(*) FROM notifications").await, 2);

    let row: (u64, String, String, String, String, String, Option<String>, String) = sqlx::query_as(
        "SELECT user_id, channel, region, CAST(payload AS CHAR), DATE_FORMAT(send_at, '%Y-%m-%dT%H:%i:%s.%f'), \
         DATE_FORMAT(due_at, '%Y-%m-%dT%H:%i:%s.%f'), DATE_FORMAT(expires_at, '%Y-%m-%dT%H:%i:%s.%f'), CAST(status AS CHAR) \
         FROM notifications WHERE user_id = 3",
    )
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    assert_eq!(row.0, 3);
    assert_eq!(row.1, "log");
    assert_eq!(row.2, "eu");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&row.3).unwrap(),
        json!({"b": 2})
    );
    assert_eq!(
        row.4, "2030-06-01T10:00:00.500000",
        "send_at stored as UTC with microseconds"
    );
    assert_eq!(row.5, row.4, "due_at starts at send_at");
    assert_eq!(row.6.as_deref(), Some("2030-06-02T00:00:00.000000"));
    assert_eq!(row.7, "pending");
}

#[tokio::test]
async fn enqueue_reads_a_file_and_uses_the_configured_region() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.jsonl");
    let lines: String = (0..1200)
        .map(|i| format!("{{\"user_id\":{i},\"channel\":\"webhook\",\"payload\":{{\"n\":{i}}}}}\n"))
        .collect();
    std::fs::write(&path, lines).unwrap();
    let out = herald(Some(&db))
        .env("HERALD_REGION", "eu,us")
        .args(["enqueue", "--file"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("enqueued 1200, duplicates 0, rejected 0"));
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM notifications WHERE region = 'eu'")
            .await,
        1200
    );
}

#[tokio::test]
async fn dedupe_key_makes_enqueue_idempotent() {
    let db = TestDb::new().await;
    let input = [
        r#"{"user_id":1,"channel":"webhook","payload":{},"dedupe_key":"welcome-1"}"#,
        r#"{"user_id":1,"channel":"webhook","payload":{},"dedupe_key":"Welcome-1"}"#,
        r#"{"user_id":1,"channel":"webhook","payload":{},"dedupe_key":"welcome-1"}"#,
    ]
    .join("\n");
    let first = run_with_stdin(herald(Some(&db)).arg("enqueue"), &input);
    let err = text(&first.stderr);
    assert!(first.status.success(), "a duplicate is not an error: {err}");
    assert!(
        err.contains("line 3: duplicate dedupe_key \"welcome-1\""),
        "{err}"
    );
    assert!(
        err.contains("enqueued 2, duplicates 1, rejected 0"),
        "{err}"
    );

    let second = run_with_stdin(herald(Some(&db)).arg("enqueue"), &input);
    let err = text(&second.stderr);
    assert!(second.status.success(), "{err}");
    assert!(
        err.contains("line 1: duplicate dedupe_key \"welcome-1\" (already enqueued as id"),
        "{err}"
    );
    assert!(
        err.contains("enqueued 0, duplicates 3, rejected 0"),
        "{err}"
    );
    assert_eq!(db.scalar("SELECT COUNT(*) FROM notifications").await, 2);

    // The library API reports the existing id.
    let limits = Limits::default();
    let n = NewNotification::builder(1, "webhook", json!({}))
        .dedupe_key("welcome-1")
        .build(&limits)
        .unwrap();
    let mut conn = db.store.pool().acquire().await.unwrap();
    let (id, inserted) = enqueue_one(&mut conn, &n).await.unwrap();
    assert!(matches!(inserted, Inserted::Duplicate { existing_id: Some(e) } if e == id));
}

#[tokio::test]
async fn library_enqueue_joins_the_callers_transaction() {
    let db = TestDb::new().await;
    let limits = Limits::default();
    let items: Vec<_> = (0..3)
        .map(|i| {
            NewNotification::builder(i, "webhook", json!({"i": i}))
                .build(&limits)
                .unwrap()
        })
        .collect();

    let mut tx = db.store.pool().begin().await.unwrap();
    let res = enqueue_batch(&mut tx, &items).await.unwrap();
    assert_eq!(res, vec![Inserted::New; 3]);
    tx.rollback().await.unwrap();
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM notifications").await,
        0,
        "rolled back with the caller"
    );

    let mut tx = db.store.pool().begin().await.unwrap();
    enqueue_batch(&mut tx, &items).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(db.scalar("SELECT COUNT(*) FROM notifications").await, 3);

    let bad = NewNotification::builder(1, "web hook", json!({}))
        .build(&limits)
        .unwrap_err();
    assert_eq!(bad.field, "channel");
}

#[tokio::test]
async fn status_counts_by_status_backlog_and_lag() {
    let db = TestDb::new().await;
    let lines: String = (0..10)
        .map(|i| format!("{{\"user_id\":{i},\"channel\":\"webhook\",\"payload\":{{}},\"send_at\":\"2020-01-01T00:00:00Z\"}}\n"))
        .collect();
    let out = run_with_stdin(herald(Some(&db)).arg("enqueue"), &lines);
    assert!(out.status.success());
    run_with_stdin(
        herald(Some(&db)).arg("enqueue"),
        r#"{"user_id":99,"channel":"webhook","payload":{},"send_at":"2035-01-01T00:00:00Z"}"#,
    );
    db.exec("UPDATE notifications SET status = 'sent' WHERE user_id IN (0, 1, 2)")
        .await;
    db.exec("UPDATE notifications SET status = 'failed' WHERE user_id = 3")
        .await;

    let out = herald(Some(&db))
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["counts"]["sent"], 3);
    assert_eq!(v["counts"]["failed"], 1);
    assert_eq!(v["counts"]["pending"], 7);
    assert_eq!(v["counts"]["expired"], 0);
    assert_eq!(v["due_backlog"], 6, "the 2035 row is not due");
    let lag = v["oldest_due_lag_s"].as_f64().unwrap();
    assert!(lag > 86_400.0 * 365.0, "lag since 2020: {lag}");

    let out = herald(Some(&db)).arg("status").output().unwrap();
    let shown = text(&out.stdout);
    assert!(
        shown.contains("pending    7") && shown.contains("due backlog 6"),
        "{shown}"
    );
}

#[tokio::test]
async fn invalid_configuration_exits_2_and_names_the_setting() {
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a str);
    let cases: &[Case] = &[
        (
            &[("HERALD_REDIS_URLS", "redis://a:6379,http://b")],
            &["status"],
            "HERALD_REDIS_URLS",
        ),
        (
            &[("HERALD_REDIS_URLS", "redis://a:6379,redis://a:6379")],
            &["status"],
            "listed twice",
        ),
        (
            &[("HERALD_DATABASE_URL", "postgres://x/y")],
            &["status"],
            "HERALD_DATABASE_URL",
        ),
        (
            &[("HERALD_REGION", "eu west")],
            &["status"],
            "HERALD_REGION",
        ),
        (&[("HERALD_LOG", "herald=loud")], &["status"], "HERALD_LOG"),
        (
            &[("HERALD_CONCURRENCY", "0")],
            &["worker"],
            "HERALD_CONCURRENCY",
        ),
        (
            &[("HERALD_CONCURRENCY", "lots")],
            &["worker"],
            "HERALD_CONCURRENCY",
        ),
        (
            &[("HERALD_LOCK_SCOPE", "planet")],
            &["worker"],
            "HERALD_LOCK_SCOPE",
        ),
        (
            &[
                ("HERALD_LOCK_TTL_MS", "1000"),
                ("HERALD_SEND_TIMEOUT_MS", "900"),
            ],
            &["worker"],
            "HERALD_LOCK_TTL_MS",
        ),
        (
            &[("HERALD_HTTP_ADDR", "nowhere")],
            &["worker"],
            "HERALD_HTTP_ADDR",
        ),
        (
            &[("HERALD_RETENTION_SENT", "7 weeks")],
            &["worker"],
            "HERALD_RETENTION_SENT",
        ),
    ];
    for (env, args, expected) in cases {
        let mut cmd = herald(None);
        cmd.envs(env.iter().copied()).args(*args);
        let out = cmd.output().unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env:?} {args:?}: {err}");
        assert!(
            err.contains(expected),
            "{env:?}: expected {expected:?} in {err}"
        );
    }
}

#[tokio::test]
async fn passwords_never_appear_in_errors() {
    let out = herald(None)
        .env(
            "HERALD_DATABASE_URL",
            "mysql://app:hunter2@127.0.0.1:1/herald",
        )
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("app:***@127.0.0.1"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");

    let out = herald(None)
        .env(
            "HERALD_REDIS_URLS",
            "redis://:hunter2@a:6379,redis://:hunter2@a:6379",
        )
        .arg("status")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(!err.contains("hunter2"), "{err}");
}

#[tokio::test]
async fn a_worker_on_an_unmigrated_database_says_to_run_migrate() {
    let db = DbName::new();
    let server = herald::secret::SecretUrl::parse(&format!("{MYSQL_SERVER}/mysql")).unwrap();
    let admin = herald::store::Store::connect(&server, 1).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE `{}`", db.name))
        .execute(admin.pool())
        .await
        .unwrap();
    admin.close().await;
    let out = herald(None)
        .env("HERALD_DATABASE_URL", db.url.expose())
        .env("HERALD_HTTP_ADDR", "")
        .arg("worker")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("run `herald migrate` first"), "{err}");
}

/// Issue 13 item 6: whatever shape a URL-bearing setting has (a password
/// holding `/`, `#`, `,` or `@`, a URL that does not parse), no error
/// printed by the binary may contain the password.
#[tokio::test]
async fn no_error_prints_a_password_whatever_the_url_shape() {
    // (password pieces that must not appear, URL with the password in it)
    let shapes: &[(&[&str], &str)] = &[
        (&["S3cr3t"], "//u:S3cr3t/pw@127.0.0.1:1/h"),
        (&["S3#cr3t", "cr3t"], "//u:S3#cr3t@127.0.0.1:1/h"),
        (&["S3c", "r3tX"], "//u:S3c,r3tX@127.0.0.1:1/h"),
        (&["p@ssw0rd", "ssw0rd"], "//u:p@ssw0rd@127.0.0.1:1/h"),
        (&["S3cr3t"], "//u:S3cr3t@127.0.0.1:1/h"),
        (&["S3cr3t"], "//u:S3cr3t@/h"),
    ];
    for (secrets, shape) in shapes {
        let cases: Vec<(&str, String, &str)> = vec![
            ("HERALD_DATABASE_URL", format!("mysql:{shape}"), "status"),
            ("HERALD_DATABASE_URL", format!("mysql:{shape}"), "migrate"),
            ("HERALD_REDIS_URLS", format!("redis:{shape}"), "status"),
            (
                "HERALD_REDIS_URLS",
                format!("redis://127.0.0.1:1,redis:{shape}"),
                "worker",
            ),
            ("HERALD_WEBHOOK_URL", format!("http:{shape}"), "worker"),
            (
                "HERALD_CHANNELS",
                format!("x=webhook:http:{shape}"),
                "worker",
            ),
            (
                "HERALD_CHANNELS",
                format!("a=log,x=webhook:https:{shape},b=log"),
                "worker",
            ),
        ];
        for (env, value, command) in cases {
            let out = herald(None)
                // Anything that gets past validation fails fast here.
                .env("HERALD_DATABASE_URL", "mysql://root@127.0.0.1:1/herald")
                .env("HERALD_HTTP_ADDR", "")
                .env(env, &value)
                .arg(command)
                .output()
                .unwrap();
            let err = text(&out.stderr);
            assert!(!out.status.success(), "{env}={value} {command}: {err}");
            for secret in *secrets {
                assert!(
                    !err.contains(secret),
                    "{env}={value} {command} printed {secret:?}: {err}"
                );
            }
        }
    }
}

/// Issue 13 item 7: a retention too large to compute with used to wrap
/// around to a few hours, so cleanup would have deleted fresh rows.
#[tokio::test]
async fn retention_past_100_years_exits_2_naming_the_setting() {
    for (env, value) in [
        ("HERALD_RETENTION_SENT", "213503982334602d"),
        ("HERALD_RETENTION_FAILED", "36501d"),
        ("HERALD_RETENTION_EXPIRED", "99999999999999999999999"),
    ] {
        for command in [&["cleanup", "--dry-run"][..], &["worker"][..]] {
            let out = herald(None).env(env, value).args(command).output().unwrap();
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{env}={value}: {err}");
            assert!(err.contains(env), "{env}={value}: {err}");
            assert!(err.contains("100 years"), "{env}={value}: {err}");
        }
    }
    let db = TestDb::new().await;
    let out = herald(Some(&db))
        .env("HERALD_RETENTION_SENT", "36500d")
        .args(["cleanup", "--dry-run"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("would delete 0"));
}

/// Issue 13 item 8: a closed database port used to cost 10 s and end in
/// "pool timed out while waiting for an open connection".
#[tokio::test]
async fn a_closed_database_port_fails_at_once_with_the_cause_once() {
    let port = {
        // A port nothing listens on: bound, then released.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("mysql://root@127.0.0.1:{port}/herald");
    for command in ["status", "migrate", "enqueue", "worker", "cleanup"] {
        let started = std::time::Instant::now();
        let out = herald(None)
            .env("HERALD_DATABASE_URL", &url)
            .env("HERALD_HTTP_ADDR", "")
            .arg(command)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command}: {err}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{command} took {:?}: {err}",
            started.elapsed()
        );
        assert!(err.contains("connection refused"), "{command}: {err}");
        assert!(
            err.contains(&format!("127.0.0.1:{port}")),
            "{command}: {err}"
        );
        assert!(!err.contains("pool timed out"), "{command}: {err}");
        assert!(err.matches("os error").count() <= 1, "{command}: {err}");
        assert!(err.matches("refused").count() == 1, "{command}: {err}");
    }
}

#[tokio::test]
async fn a_missing_database_says_to_run_migrate() {
    let db = DbName::new();
    for command in ["status", "enqueue", "worker", "cleanup"] {
        let out = herald(None)
            .env("HERALD_DATABASE_URL", db.url.expose())
            .env("HERALD_HTTP_ADDR", "")
            .arg(command)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command}: {err}");
        assert!(err.contains("Unknown database"), "{command}: {err}");
        assert!(err.contains("run `herald migrate`"), "{command}: {err}");
        assert_eq!(
            err.matches("Unknown database").count(),
            1,
            "{command}: {err}"
        );
    }
}

/// Ranges are checked by clap now; the error still names the variable and
/// the flag, and exits 2, for every command's settings.
#[tokio::test]
async fn out_of_range_settings_of_every_command_exit_2_naming_the_variable() {
    let cases: &[(&str, &str, &[&str])] = &[
        ("HERALD_DB_POOL_SIZE", "0", &["status"]),
        ("HERALD_LOCK_MASTER_TIMEOUT_MS", "60001", &["status"]),
        ("HERALD_MAX_PAYLOAD_BYTES", "0", &["enqueue"]),
        ("HERALD_CLEANUP_BATCH", "0", &["cleanup"]),
        ("HERALD_CLEANUP_MAX_TICK_S", "86401", &["worker"]),
        ("HERALD_BATCH_SIZE", "5001", &["worker"]),
        ("HERALD_MAX_RESPONSE_BYTES", "0", &["worker"]),
        ("HERALD_RETRY_BASE_MS", "5000", &["worker"]),
    ];
    for (env, value, args) in cases {
        let mut cmd = herald(None);
        if *env == "HERALD_RETRY_BASE_MS" {
            cmd.env("HERALD_RETRY_MAX_MS", "4000");
        }
        let out = cmd.env(env, value).args(*args).output().unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env}={value}: {err}");
        assert!(err.contains(env), "{env}={value}: {err}");
    }
}

/// Two spellings of one Redis server (`/0` is the default database) would
/// count twice towards the quorum: refused at start-up, exit 2.
#[tokio::test]
async fn one_redis_master_listed_twice_in_two_spellings_exits_2() {
    let out = herald(None)
        .env(
            "HERALD_REDIS_URLS",
            "redis://127.0.0.1:6379,redis://127.0.0.1:6379/0",
        )
        .arg("status")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("HERALD_REDIS_URLS"), "{err}");
    assert!(err.contains("listed twice"), "{err}");
}

/// `--help` shows which variable sets a flag, but never the value of a URL
/// or secret setting (a webhook URL may carry a token in its query).
#[test]
fn help_never_shows_the_value_of_a_url_or_secret_setting() {
    let out = herald(None)
        .env("HERALD_DATABASE_URL", "mysql://u:Pw1secret@h/db")
        .env("HERALD_REDIS_URLS", "redis://:Pw2secret@h:6379")
        .env("HERALD_WEBHOOK_URL", "https://h/x?token=Pw3secret")
        .env("HERALD_WEBHOOK_SECRET", "whsec_Pw4secret")
        .env("HERALD_CHANNELS", "a=webhook:https://u:Pw5secret@h/")
        .args(["worker", "--help"])
        .output()
        .unwrap();
    let help = text(&out.stdout);
    assert!(out.status.success());
    assert!(help.contains("HERALD_WEBHOOK_URL"), "{help}");
    assert!(!help.contains("secret@") && !help.contains("Pw"), "{help}");
    assert!(help.contains("Global options"), "{help}");
}

/// A misspelled variable used to be ignored without a word.
#[tokio::test]
async fn an_unknown_herald_variable_gets_one_warning_naming_the_closest() {
    let db = TestDb::new().await;
    let out = herald(Some(&db))
        .env("HERALD_CONCURENCY", "4")
        .env("HERALD_LOG", "warn")
        .arg("status")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.matches("HERALD_CONCURENCY").count(), 1, "{err}");
    assert!(err.contains("did you mean HERALD_CONCURRENCY"), "{err}");
    // Known variables (HERALD_DATABASE_URL, HERALD_LOG) get no warning.
    assert_eq!(err.lines().count(), 1, "{err}");
}
