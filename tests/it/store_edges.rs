//! Enqueue and the store's edges (issue 13 items 3, 4, 5, 8b and 10):
//! lines the database refuses, large payloads, stopped runs and their
//! resumption, dedupe keys with spaces, unreadable and endless input,
//! zero dates in `status`, and the cleanup gate's regions.

use std::io::Write;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{herald, run_with_stdin, text, wait_until, TestDb};

fn line(user: usize, payload: &str) -> String {
    format!(r#"{{"user_id":{user},"channel":"webhook","payload":{payload}}}"#)
}

fn nested(depth: usize) -> String {
    format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth))
}

/// Waits for a child with a deadline; kills it (and fails) past it.
fn wait_output(mut child: Child, deadline: Duration, what: &str) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what} still running after {deadline:?}; stderr starts:\n{}",
                text(&out.stderr).chars().take(2000).collect::<String>()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn count_users(db: &TestDb) -> impl std::future::Future<Output = i64> + '_ {
    db.scalar("SELECT COUNT(DISTINCT user_id) FROM notifications")
}

#[tokio::test]
async fn enqueue_names_a_too_deep_line_and_keeps_all_the_others() {
    let db = TestDb::new().await;
    let input: String = (1..=1200)
        .map(|n| match n {
            700 => line(n, &nested(40)) + "\n",
            // The deepest payload accepted is one the database takes too.
            701 => line(n, &nested(31)) + "\n",
            _ => line(n, r#"{"n":1}"#) + "\n",
        })
        .collect();
    let out = run_with_stdin(herald(Some(&db)).arg("enqueue"), &input);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("line 700: payload: nested 40 levels deep; at most 31"),
        "{err}"
    );
    assert!(
        err.contains("enqueued 1199, duplicates 0, rejected 1"),
        "{err}"
    );
    assert!(!err.contains("herald migrate"), "no misleading hint: {err}");
    assert_eq!(db.scalar("SELECT COUNT(*) FROM notifications").await, 1199);
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM notifications WHERE user_id = 700")
            .await,
        0
    );
}

#[tokio::test]
async fn enqueue_splits_a_chunk_the_database_refuses_and_names_each_refused_line() {
    let db = TestDb::new().await;
    // A refusal Herald cannot foresee: the database's own rule, as another
    // team might add it.
    db.exec(
        "CREATE TRIGGER refuse_666 BEFORE INSERT ON notifications FOR EACH ROW \
         BEGIN IF NEW.user_id = 666 THEN \
         SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'user 666 is blocked'; END IF; END",
    )
    .await;
    let bad = [3, 700, 701, 1100];
    let input: String = (1..=1200)
        .map(|n| {
            let user = if bad.contains(&n) { 666 } else { 1000 + n };
            line(user, r#"{"n":1}"#) + "\n"
        })
        .collect();
    let out = run_with_stdin(herald(Some(&db)).arg("enqueue"), &input);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for n in bad {
        assert!(
            err.contains(&format!(
                "line {n}: refused by the database: 1644 user 666 is blocked"
            )),
            "line {n} not named in:\n{err}"
        );
    }
    assert!(
        err.contains("enqueued 1196, duplicates 0, rejected 4"),
        "{err}"
    );
    assert_eq!(db.scalar("SELECT COUNT(*) FROM notifications").await, 1196);
    assert_eq!(count_users(&db).await, 1196, "every good line once");
}

#[tokio::test]
async fn enqueue_sizes_statements_by_bytes() {
    let db = TestDb::new().await;
    let packet = db
        .scalar("SELECT CAST(@@max_allowed_packet AS SIGNED)")
        .await;
    let big = "x".repeat(60_000);
    // More bytes than one packet holds, in fewer rows than one chunk.
    let rows = (packet as usize / 60_000) + 50;
    assert!(
        rows < 500,
        "max_allowed_packet {packet} is too large for this test"
    );
    let input: String = (1..=rows)
        .map(|n| line(n, &format!(r#"{{"big":"{big}"}}"#)) + "\n")
        .collect();
    let out = run_with_stdin(herald(Some(&db)).arg("enqueue"), &input);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("enqueued {rows}, duplicates 0, rejected 0")),
        "{err}"
    );
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM notifications").await,
        rows as i64
    );
}

#[tokio::test]
async fn a_stopped_enqueue_says_where_to_resume_and_the_resumed_run_inserts_each_line_once() {
    let db = TestDb::new().await;
    let input: Vec<String> = (1..=1200).map(|n| line(n, r#"{"n":1}"#) + "\n").collect();
    let mut child = herald(Some(&db))
        .arg("enqueue")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input[..600].concat().as_bytes()).unwrap();
    stdin.flush().unwrap();
    wait_until(
        "the first chunk to commit",
        Duration::from_secs(30),
        || async { db.scalar("SELECT COUNT(*) FROM notifications").await >= 500 },
    )
    .await;
    // The table goes away under the run: the next chunk fails as a whole.
    db.exec("RENAME TABLE notifications TO notifications_away")
        .await;
    stdin.write_all(input[600..].concat().as_bytes()).unwrap();
    drop(stdin);
    let out = wait_output(child, Duration::from_secs(60), "herald enqueue");
    let err = text(&out.stderr);
    db.exec("RENAME TABLE notifications_away TO notifications")
        .await;
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("herald: error: inserting lines 501.."),
        "{err}"
    );
    assert!(err.contains("(has `herald migrate` been run?)"), "{err}");
    assert_eq!(
        err.matches("inserting lines").count(),
        1,
        "said once: {err}"
    );
    assert!(
        err.contains("enqueued 500, duplicates 0, rejected 0"),
        "{err}"
    );
    let skip: usize = err
        .split("rerun with --skip-lines ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no --skip-lines hint in:\n{err}"));
    assert_eq!(skip, 500, "{err}");
    assert_eq!(db.scalar("SELECT COUNT(*) FROM notifications").await, 500);

    let out = run_with_stdin(
        herald(Some(&db)).args(["enqueue", "--skip-lines", &skip.to_string()]),
        &input.concat(),
    );
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("enqueued 700, duplicates 0, rejected 0"),
        "{err}"
    );
    assert_eq!(db.scalar("SELECT COUNT(*) FROM notifications").await, 1200);
    assert_eq!(count_users(&db).await, 1200, "no line twice");
}

#[tokio::test]
async fn dedupe_keys_with_edge_spaces_are_rejected_and_counts_match_the_table() {
    let db = TestDb::new().await;
    let keyed = |user: usize, key: &str| {
        format!(r#"{{"user_id":{user},"channel":"webhook","payload":{{}},"dedupe_key":"{key}"}}"#)
    };
    let input = [keyed(1, "order-17"), keyed(2, "order-17 ")].join("\n");
    let out = run_with_stdin(herald(Some(&db)).arg("enqueue"), &input);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("line 2: dedupe_key: \"order-17 \" starts or ends with a space"),
        "{err}"
    );
    assert!(
        err.contains("enqueued 1, duplicates 0, rejected 1"),
        "{err}"
    );
    assert_eq!(db.scalar("SELECT COUNT(*) FROM notifications").await, 1);

    // A row another service wrote with a trailing space holds the key.
    db.exec(
        "INSERT INTO notifications (user_id, channel, payload, dedupe_key, send_at, due_at) \
         VALUES (3, 'webhook', '{}', 'order-18 ', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))",
    )
    .await;
    let foreign = db
        .scalar("SELECT CAST(id AS SIGNED) FROM notifications WHERE user_id = 3")
        .await;
    let out = run_with_stdin(herald(Some(&db)).arg("enqueue"), &keyed(4, "order-18"));
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "line 1: duplicate dedupe_key \"order-18\" (already enqueued as id {foreign})"
        )),
        "{err}"
    );
    assert!(
        err.contains("enqueued 0, duplicates 1, rejected 0"),
        "{err}"
    );
    assert_eq!(db.scalar("SELECT COUNT(*) FROM notifications").await, 2);
}

#[tokio::test]
async fn a_key_another_writer_commits_during_the_insert_counts_as_a_duplicate() {
    let db = TestDb::new().await;
    // Another service inserts the key and keeps its transaction open, so
    // Herald's check does not see it and its INSERT waits on the key.
    let mut other = db.store.pool().begin().await.unwrap();
    sqlx::query(
        "INSERT INTO notifications (user_id, channel, payload, dedupe_key, send_at, due_at) \
         VALUES (9, 'webhook', '{}', 'race-1', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))",
    )
    .execute(&mut *other)
    .await
    .unwrap();
    let input = [
        line(1, "{}"),
        r#"{"user_id":2,"channel":"webhook","payload":{},"dedupe_key":"race-1"}"#.to_string(),
        line(3, "{}"),
    ]
    .join("\n");
    let mut child = herald(Some(&db))
        .arg("enqueue")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    wait_for_waiting_insert(&db, "herald's INSERT to wait on the key").await;
    other.commit().await.unwrap();
    let out = wait_output(child, Duration::from_secs(30), "herald enqueue");
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("line 2: duplicate dedupe_key \"race-1\" (already enqueued as id"),
        "{err}"
    );
    assert!(
        err.contains("enqueued 2, duplicates 1, rejected 0"),
        "{err}"
    );
    assert_eq!(db.scalar("SELECT COUNT(*) FROM notifications").await, 3);
}

#[tokio::test]
async fn enqueue_of_a_directory_ends_with_one_error() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let child = herald(Some(&db))
        .args(["enqueue", "--file"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child, Duration::from_secs(20), "enqueue --file <dir>");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.matches("cannot read").count(), 1, "{err}");
    assert!(err.contains("Is a directory"), "{err}");
    assert!(err.contains("no line was inserted"), "{err}");
}

/// Peak resident memory of a running process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test]
async fn an_overlong_line_is_skipped_by_number_in_bounded_memory() {
    let db = TestDb::new().await;
    let mut child = herald(Some(&db))
        .arg("enqueue")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all((line(1, "{}") + "\n").as_bytes()).unwrap();
    // Line 2: 256 MiB inside a JSON string, never a newline until the end.
    stdin
        .write_all(br#"{"user_id":2,"channel":"webhook","payload":{"x":""#)
        .unwrap();
    let block = vec![b'x'; 1 << 20];
    for _ in 0..256 {
        stdin.write_all(&block).unwrap();
    }
    stdin.write_all(b"\"}}\n").unwrap();
    stdin.write_all(line(3, "{}").as_bytes()).unwrap();
    stdin.flush().unwrap();
    // Everything but the pipe's buffer has been read by now.
    let peak = peak_rss(pid);
    drop(stdin);
    let out = wait_output(child, Duration::from_secs(60), "herald enqueue");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("line 2: (line): 268435508 bytes is longer than the limit of 458752 bytes"),
        "{err}"
    );
    assert!(
        err.contains("enqueued 2, duplicates 0, rejected 1"),
        "{err}"
    );
    assert!(
        peak < 64 << 20,
        "peak RSS {} MiB while reading a 256 MiB line",
        peak >> 20
    );
    assert_eq!(db.scalar("SELECT COUNT(*) FROM notifications").await, 2);
}

#[tokio::test]
async fn enqueue_of_dev_zero_ends_with_a_clear_error() {
    let db = TestDb::new().await;
    let child = herald(Some(&db))
        .args(["enqueue", "--file", "/dev/zero"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child, Duration::from_secs(20), "enqueue --file /dev/zero");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("line 1: contains a NUL byte") && err.contains("not JSON lines"),
        "{err}"
    );
    assert!(err.lines().count() <= 4, "one error, not a flood:\n{err}");
}

fn status_json(db: &TestDb) -> serde_json::Value {
    let out = herald(Some(db))
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn status_reports_the_lag_of_valid_rows_beside_zero_dates() {
    let db = TestDb::new().await;
    db.exec(
        "INSERT INTO notifications (user_id, channel, payload, send_at, due_at) VALUES \
         (1, 'webhook', '{}', UTC_TIMESTAMP(6) - INTERVAL 3600 SECOND, \
          UTC_TIMESTAMP(6) - INTERVAL 3600 SECOND)",
    )
    .await;
    // Another service whose sql_mode allows zero dates.
    let mut conn = db.store.pool().acquire().await.unwrap();
    sqlx::query("SET SESSION sql_mode = ''")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO notifications (user_id, channel, payload, send_at, due_at) VALUES \
         (2, 'webhook', '{}', '0000-00-00 00:00:00', '0000-00-00 00:00:00')",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    conn.close().await.unwrap();

    let v = status_json(&db);
    let lag = v["oldest_due_lag_s"]
        .as_f64()
        .unwrap_or_else(|| panic!("no lag in {v}"));
    assert!((3600.0..3700.0).contains(&lag), "{v}");
    assert_eq!(v["invalid_due_at"], 1, "{v}");
    assert_eq!(v["due_backlog"], 2, "zero dates count as due: {v}");

    let out = herald(Some(&db)).arg("status").output().unwrap();
    let shown = text(&out.stdout);
    assert!(shown.contains("invalid due_at 1"), "{shown}");
}

#[tokio::test]
async fn the_cleanup_gate_counts_only_the_regions_this_worker_serves() {
    let db = TestDb::new().await;
    let rows: Vec<String> = (0..1001)
        .map(|i| {
            format!(
                "({i}, 'webhook', '{{}}', 'elsewhere', UTC_TIMESTAMP(6) - INTERVAL 60 SECOND, \
                 UTC_TIMESTAMP(6) - INTERVAL 60 SECOND)"
            )
        })
        .collect();
    db.exec(&format!(
        "INSERT INTO notifications (user_id, channel, payload, region, send_at, due_at) VALUES {}",
        rows.join(", ")
    ))
    .await;
    let dry = |region: &str| {
        let out = herald(Some(&db))
            .env("HERALD_REGION", region)
            .env("HERALD_CLEANUP_MAX_BACKLOG", "1000")
            .args(["cleanup", "--once", "--dry-run"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let here = dry("default");
    assert!(here.contains("backlog 0 <= 1000"), "{here}");
    let there = dry("elsewhere");
    assert!(
        there.contains("a pass now would be skipped (backlog 1001 > 1000)"),
        "{there}"
    );
    let both = dry("default,elsewhere");
    assert!(both.contains("skipped (backlog 1001 > 1000)"), "{both}");
}

#[tokio::test]
async fn a_workers_cleanup_runs_despite_a_backlog_in_a_region_it_does_not_serve() {
    crate::helpers::require_redis().await;
    let db = TestDb::new().await;
    let mut rows: Vec<String> = (0..10)
        .map(|_| {
            "(1, 'log', '{}', 'default', UTC_TIMESTAMP(6) - INTERVAL 10 DAY, \
             UTC_TIMESTAMP(6) - INTERVAL 10 DAY, 'sent', UTC_TIMESTAMP(6) - INTERVAL 2 HOUR)"
                .to_string()
        })
        .collect();
    rows.extend((0..6).map(|_| {
        "(2, 'log', '{}', 'other', UTC_TIMESTAMP(6) - INTERVAL 60 SECOND, \
         UTC_TIMESTAMP(6) - INTERVAL 60 SECOND, 'pending', NULL)"
            .to_string()
    }));
    db.exec(&format!(
        "INSERT INTO notifications \
         (user_id, channel, payload, region, send_at, due_at, status, finished_at) VALUES {}",
        rows.join(", ")
    ))
    .await;
    let w = crate::helpers::WorkerProc::spawn(
        &db,
        &crate::helpers::key_prefix(),
        &[
            ("HERALD_REGION", "default".into()),
            ("HERALD_CLEANUP", "true".into()),
            ("HERALD_CLEANUP_INTERVAL_S", "1".into()),
            ("HERALD_CLEANUP_MAX_BACKLOG", "5".into()),
            ("HERALD_RETENTION_SENT", "1h".into()),
        ],
    );
    wait_until("cleanup to delete", Duration::from_secs(20), || async {
        w.logs().contains("cleanup: deleted 10 in")
    })
    .await;
    assert!(!w.logs().contains("cleanup: skipped"), "{}", w.logs());
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM notifications WHERE status = 'pending'")
            .await,
        6,
        "the other region's rows are not this worker's"
    );
}

#[tokio::test]
async fn a_small_max_allowed_packet_sizes_the_chunks_and_names_a_row_that_cannot_fit() {
    // A private server: the shared one's settings are not ours to change.
    let mysql = crate::mariadb_proc::MariaDbProc::start();
    let url = mysql.url("herald");
    let secret = herald::secret::SecretUrl::parse(&url).unwrap();
    herald::store::migrate::migrate(&secret).await.unwrap();
    let admin = herald::store::Store::connect(&secret, 1).await.unwrap();
    sqlx::query("SET GLOBAL max_allowed_packet = 1048576")
        .execute(admin.pool())
        .await
        .unwrap();
    let big = "x".repeat(60_000);
    let huge = "y".repeat(700_000);
    let input: String = (1..=300)
        .map(|n| {
            let payload = if n == 150 { &huge } else { &big };
            line(n, &format!(r#"{{"big":"{payload}"}}"#)) + "\n"
        })
        .collect();
    let mut cmd = herald(None);
    cmd.env("HERALD_DATABASE_URL", &url)
        .env("HERALD_MAX_PAYLOAD_BYTES", "1000000")
        .arg("enqueue");
    let out = run_with_stdin(&mut cmd, &input);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "line 150: payload: 700010 bytes do not fit the server's max_allowed_packet of 1048576 bytes"
        ),
        "{err}"
    );
    assert!(
        err.contains("enqueued 299, duplicates 0, rejected 1"),
        "{err}"
    );
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM notifications")
        .fetch_one(admin.pool())
        .await
        .unwrap();
    assert_eq!(n, 299);
    admin.close().await;
}

#[tokio::test]
async fn the_library_reports_a_key_committed_during_its_insert_as_a_duplicate() {
    use herald::notification::{Limits, NewNotification};
    use herald::store::enqueue::{enqueue_batch, Inserted};
    let db = TestDb::new().await;
    let mut other = db.store.pool().begin().await.unwrap();
    sqlx::query(
        "INSERT INTO notifications (user_id, channel, payload, dedupe_key, send_at, due_at) \
         VALUES (9, 'webhook', '{}', 'race-2', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))",
    )
    .execute(&mut *other)
    .await
    .unwrap();
    let items: Vec<NewNotification> = (0..3)
        .map(|i| {
            let b = NewNotification::builder(i, "webhook", serde_json::json!({"i": i}));
            let b = if i == 1 { b.dedupe_key("race-2") } else { b };
            b.build(&Limits::default()).unwrap()
        })
        .collect();
    let store = db.store.clone();
    let task = tokio::spawn(async move {
        let mut tx = store.pool().begin().await.unwrap();
        let res = enqueue_batch(&mut tx, &items).await.unwrap();
        tx.commit().await.unwrap();
        res
    });
    wait_for_waiting_insert(&db, "the library's INSERT to wait on the key").await;
    other.commit().await.unwrap();
    let res = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap();
    let id = db
        .scalar("SELECT CAST(id AS SIGNED) FROM notifications WHERE dedupe_key = 'race-2'")
        .await as u64;
    assert_eq!(
        res,
        vec![
            Inserted::New,
            Inserted::Duplicate {
                existing_id: Some(id)
            },
            Inserted::New
        ]
    );
    assert_eq!(db.scalar("SELECT COUNT(*) FROM notifications").await, 3);
}

/// Waits (with a deadline) until an `INSERT INTO notifications` of this
/// test's database is waiting on a lock another transaction holds.
async fn wait_for_waiting_insert(db: &TestDb, what: &str) {
    let sql = format!(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
         WHERE DB = '{}' AND INFO LIKE 'INSERT INTO notifications (user_id%'",
        db.db.name
    );
    wait_until(what, Duration::from_secs(30), || async {
        db.scalar(&sql).await > 0
    })
    .await;
}
