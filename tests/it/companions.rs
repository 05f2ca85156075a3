//! Cleanup, fleet stats, `/livez`, `/readyz` and `/metrics` against real
//! `herald` processes, a real MariaDB and real Redis servers.

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::helpers::*;
use crate::redis_procs::{free_port, RedisProc};

/// Rows for one insert: `(group, status, region, due, finished, updated)`,
/// times as SQL expressions. `user_id` carries the group, so a test can
/// count what is left of each kind.
struct Rows(Vec<String>);

fn ago(secs: i64) -> String {
    format!("UTC_TIMESTAMP(6) - INTERVAL {secs} SECOND")
}

impl Rows {
    fn new() -> Rows {
        Rows(Vec::new())
    }

    #[allow(clippy::too_many_arguments)]
    fn add(
        mut self,
        n: usize,
        group: u64,
        status: &str,
        region: &str,
        due: &str,
        finished: Option<&str>,
        updated: &str,
    ) -> Rows {
        for _ in 0..n {
            self.0.push(format!(
                "({group}, 'log', '{{}}', '{region}', {due}, {due}, '{status}', {}, {updated})",
                finished.unwrap_or("NULL")
            ));
        }
        self
    }

    async fn insert(self, db: &TestDb) {
        for chunk in self.0.chunks(1000) {
            db.exec(&format!(
                "INSERT INTO notifications \
                 (user_id, channel, payload, region, send_at, due_at, status, finished_at, updated_at) \
                 VALUES {}",
                chunk.join(", ")
            ))
            .await;
        }
    }
}

async fn left_in_group(db: &TestDb, group: u64) -> i64 {
    db.scalar(&format!(
        "SELECT COUNT(*) FROM notifications WHERE user_id = {group}"
    ))
    .await
}

/// The JSON log lines (HERALD_LOG_FORMAT=json) whose message starts with `prefix`.
fn json_lines(logs: &str, prefix: &str) -> Vec<Value> {
    logs.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"].as_str().is_some_and(|m| m.starts_with(prefix)))
        .collect()
}

fn timestamp(v: &Value) -> DateTime<Utc> {
    v["timestamp"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .unwrap_or_else(|| panic!("no timestamp in {v}"))
        .with_timezone(&Utc)
}

fn http_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let r = client()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?))
}

async fn wait_http(addr: &str, w: &WorkerProc) {
    let deadline = Duration::from_secs(20);
    let start = Instant::now();
    while get(addr, "/livez").await.map(|r| r.0) != Some(200) {
        assert!(
            start.elapsed() < deadline,
            "/livez never answered 200; logs:\n{}",
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------- cleanup

#[tokio::test]
async fn cleanup_deletes_only_finished_rows_past_their_retention_in_batches() {
    require_redis().await;
    let db = TestDb::new().await;
    let now = "UTC_TIMESTAMP(6)";
    let old = ago(10 * 86_400);
    Rows::new()
        .add(8, 1, "sent", "default", &old, Some(&ago(7200)), now) // past 1h: deleted
        .add(3, 2, "sent", "default", &old, Some(&ago(600)), now) // kept
        .add(4, 3, "failed", "default", &old, Some(&ago(5400)), now) // failed keeps 2h
        .add(5, 4, "failed", "default", &old, Some(&ago(10_800)), now) // deleted
        .add(2, 5, "expired", "default", &old, Some(&ago(7200)), now) // deleted
        // Cancelled by another service without finished_at: aged by updated_at.
        .add(2, 6, "cancelled", "default", &old, None, &ago(10_800)) // deleted
        .add(1, 7, "cancelled", "default", &old, Some(&ago(300)), now) // kept
        // Pending and sending rows are never touched, however old they look.
        .add(3, 8, "pending", "other", &old, Some(&old), &old)
        .add(3, 9, "sending", "other", &old, Some(&old), &old)
        .add(2, 10, "pending", "other", &ago(-86_400), Some(&old), &old)
        .insert(&db)
        .await;
    let total = db.scalar("SELECT COUNT(*) FROM notifications").await;
    assert_eq!(total, 33);

    let prefix = key_prefix();
    let cleanup = |extra: &[&str]| {
        let mut cmd = herald(Some(&db));
        cmd.env("HERALD_KEY_PREFIX", &prefix)
            .env("HERALD_LOG", "warn,herald::cleanup=debug")
            .env("HERALD_LOG_FORMAT", "json")
            .env("HERALD_CLEANUP_BATCH", "4")
            .env("HERALD_CLEANUP_PAUSE_MS", "10")
            .env("HERALD_RETENTION_SENT", "1h")
            .env("HERALD_RETENTION_FAILED", "2h")
            .env("HERALD_RETENTION_EXPIRED", "1h")
            .args(["cleanup", "--once"])
            .args(extra)
            .stdin(Stdio::null());
        cmd.output().unwrap()
    };

    let dry = cleanup(&["--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    let out = text(&dry.stdout);
    assert!(
        out.contains("would delete 17 (sent 8, failed 5, expired 2, cancelled 2)"),
        "{out}"
    );
    // The due rows are in "other", which this cleanup's worker does not serve.
    assert!(out.contains("backlog 0 <= 1000"), "{out}");
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM notifications").await,
        33,
        "a dry run deletes nothing"
    );

    let run = cleanup(&[]);
    let (out, logs) = (text(&run.stdout), text(&run.stderr));
    assert!(run.status.success(), "{out}\n{logs}");
    let batches: Vec<(u64, u64, u64)> = json_lines(&logs, "cleanup batch")
        .iter()
        .map(|v| {
            (
                v["deleted"].as_u64().unwrap(),
                v["scanned"].as_u64().unwrap(),
                v["batch"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        batches.iter().all(|&(d, s, b)| b == 4 && s <= 4 && d <= s),
        "every statement within the configured batch: {batches:?}"
    );
    assert_eq!(batches.iter().map(|b| b.0).sum::<u64>(), 17, "{batches:?}");
    assert_eq!(
        out.trim(),
        format!(
            "deleted 17 in {} batches, stamped finished_at on 2 cancelled rows",
            batches.len()
        ),
        "{logs}"
    );
    let expect = [
        (1, 0),
        (2, 3),
        (3, 4),
        (4, 0),
        (5, 0),
        (6, 0),
        (7, 1),
        (8, 3),
        (9, 3),
        (10, 2),
    ];
    for (group, left) in expect {
        assert_eq!(left_in_group(&db, group).await, left, "group {group}");
    }
    assert_eq!(db.count_status("pending").await, 5);
    assert_eq!(db.count_status("sending").await, 3);

    // Nothing left to do: an empty pass, and the lock was released.
    let again = cleanup(&[]);
    assert_eq!(text(&again.stdout).trim(), "deleted 0 in 0 batches");
}

#[tokio::test]
async fn cleanup_shrinks_its_batch_after_a_lock_wait_timeout() {
    require_redis().await;
    let db = TestDb::new().await;
    Rows::new()
        .add(
            10,
            1,
            "sent",
            "default",
            &ago(86_400),
            Some(&ago(7200)),
            "UTC_TIMESTAMP(6)",
        )
        .insert(&db)
        .await;
    // Another session holds the oldest row, which cleanup selects first.
    let mut tx = db.store.pool().begin().await.unwrap();
    let oldest: u64 = sqlx::query_scalar(
        "SELECT id FROM notifications ORDER BY finished_at, id LIMIT 1 FOR UPDATE",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert!(oldest > 0);

    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("cleanup.log");
    let child = herald(Some(&db))
        .env("HERALD_KEY_PREFIX", key_prefix())
        .env("HERALD_LOG", "warn")
        .env("HERALD_CLEANUP_BATCH", "4")
        .env("HERALD_CLEANUP_PAUSE_MS", "10")
        .env("HERALD_RETENTION_SENT", "1h")
        .args(["cleanup", "--once"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_until("a lock-wait timeout", Duration::from_secs(20), || async {
        logs().contains("shrinking the batch")
    })
    .await;
    tx.rollback().await.unwrap();

    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let logs = logs();
    assert!(out.status.success(), "{logs}");
    assert!(logs.contains("batch=4 next_batch=2"), "{logs}");
    // The first DELETE deleted nothing; the rest went through two at a time.
    assert_eq!(
        text(&out.stdout).trim(),
        "deleted 10 in 5 batches",
        "{logs}"
    );
    assert_eq!(left_in_group(&db, 1).await, 0);
}

#[tokio::test]
async fn cleanup_skips_while_the_backlog_is_above_the_threshold() {
    require_redis().await;
    let db = TestDb::new().await;
    let old = ago(10 * 86_400);
    Rows::new()
        .add(
            10,
            1,
            "sent",
            "default",
            &old,
            Some(&ago(7200)),
            "UTC_TIMESTAMP(6)",
        )
        // Due in the region this worker serves, and kept from it by another
        // connection's row locks (below): a backlog that stays.
        .add(
            6,
            2,
            "pending",
            "default",
            &ago(60),
            None,
            "UTC_TIMESTAMP(6)",
        )
        .insert(&db)
        .await;
    let mut holder = db.store.pool().begin().await.unwrap();
    sqlx::query("SELECT id FROM notifications WHERE user_id = 2 FOR UPDATE")
        .fetch_all(&mut *holder)
        .await
        .unwrap();
    let addr = http_addr();
    let w = WorkerProc::spawn(
        &db,
        &key_prefix(),
        &[
            ("HERALD_HTTP_ADDR", addr.clone()),
            ("HERALD_CLEANUP", "true".into()),
            ("HERALD_CLEANUP_INTERVAL_S", "1".into()),
            ("HERALD_CLEANUP_MAX_BACKLOG", "5".into()),
            ("HERALD_RETENTION_SENT", "1h".into()),
        ],
    );
    wait_http(&addr, &w).await;
    wait_until(
        "a skipped cleanup tick",
        Duration::from_secs(15),
        || async { w.logs().contains("cleanup: skipped (backlog 6 > 5)") },
    )
    .await;
    let m = scrape(&addr).await;
    assert!(
        m.get("herald_cleanup_skipped_total{reason=\"backlog\"}") >= 1.0,
        "{}",
        m.text
    );
    assert_eq!(m.get("herald_cleanup_deleted_total"), 0.0);
    assert_eq!(m.get("herald_due_backlog"), 6.0);
    assert_eq!(left_in_group(&db, 1).await, 10, "nothing deleted");

    // Once the backlog is gone, the next tick deletes.
    sqlx::query("UPDATE notifications SET status = 'cancelled' WHERE status = 'pending'")
        .execute(&mut *holder)
        .await
        .unwrap();
    holder.commit().await.unwrap();
    wait_until("cleanup to run", Duration::from_secs(15), || async {
        w.logs().contains("cleanup: deleted 10 in 1 batches")
    })
    .await;
    assert_eq!(left_in_group(&db, 1).await, 0);
    assert_eq!(left_in_group(&db, 2).await, 6, "cancelled just now: kept");
    let m = scrape(&addr).await;
    assert_eq!(m.get("herald_cleanup_deleted_total"), 10.0);
    assert_eq!(m.get("herald_cleanup_batches_total"), 1.0);
}

#[tokio::test]
async fn two_workers_never_run_cleanup_at_the_same_time() {
    require_redis().await;
    let db = TestDb::new().await;
    Rows::new()
        .add(
            3000,
            1,
            "sent",
            "default",
            &ago(86_400),
            Some(&ago(7200)),
            "UTC_TIMESTAMP(6)",
        )
        .insert(&db)
        .await;
    let prefix = key_prefix();
    // Each tick runs into its 1 s cap (10 rows, then 100 ms pause), and
    // ticks come every second: the lock is almost always held, so the two
    // workers keep running into each other.
    let env = [
        ("HERALD_CLEANUP", "true".to_string()),
        ("HERALD_CLEANUP_INTERVAL_S", "1".into()),
        ("HERALD_CLEANUP_BATCH", "10".into()),
        ("HERALD_CLEANUP_PAUSE_MS", "100".into()),
        ("HERALD_CLEANUP_MAX_TICK_S", "1".into()),
        ("HERALD_RETENTION_SENT", "1h".into()),
        ("HERALD_LOG", "info,herald::cleanup=debug".into()),
        ("HERALD_LOG_FORMAT", "json".into()),
    ];
    let mut workers = [
        WorkerProc::spawn(&db, &prefix, &env),
        WorkerProc::spawn(&db, &prefix, &env),
    ];
    let finished = |ws: &[WorkerProc]| {
        ws.iter()
            .map(|w| json_lines(&w.logs(), "cleanup tick finished").len())
            .sum::<usize>()
    };
    let contended = |ws: &[WorkerProc]| {
        ws.iter()
            .any(|w| w.logs().contains("cleanup: lock held elsewhere"))
    };
    wait_until("8 cleanup ticks", Duration::from_secs(40), || async {
        finished(&workers) >= 8
    })
    .await;
    for w in &workers {
        w.signal("TERM");
    }
    for w in &mut workers {
        let status = w.wait_exit(Duration::from_secs(20)).await;
        assert!(status.success(), "{}", w.logs());
    }

    // The work under the lock, as [start, end] per tick, from both logs.
    let mut runs: Vec<(DateTime<Utc>, DateTime<Utc>, usize)> = Vec::new();
    for (i, w) in workers.iter().enumerate() {
        let logs = w.logs();
        let marks: Vec<(String, DateTime<Utc>)> = json_lines(&logs, "cleanup tick ")
            .iter()
            .map(|v| (v["message"].as_str().unwrap().to_owned(), timestamp(v)))
            .collect();
        assert_eq!(marks.len() % 2, 0, "unpaired tick marks:\n{logs}");
        for pair in marks.chunks(2) {
            assert_eq!(pair[0].0, "cleanup tick started", "{logs}");
            assert_eq!(pair[1].0, "cleanup tick finished", "{logs}");
            runs.push((pair[0].1, pair[1].1, i));
        }
    }
    runs.sort();
    assert!(runs.len() >= 6, "{runs:?}");
    for pair in runs.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "cleanup runs overlap: worker {} ran {}..{}, worker {} started at {}",
            pair[0].2,
            pair[0].0,
            pair[0].1,
            pair[1].2,
            pair[1].0
        );
    }
    assert!(
        contended(&workers),
        "the workers never competed for the lock, so the test proved nothing"
    );
    let deleted = 3000 - left_in_group(&db, 1).await;
    assert!(deleted >= 60, "ticks deleted only {deleted} rows");
}

// ------------------------------------------------------------------ stats

fn window_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn each_stats_window_is_logged_by_exactly_one_of_three_workers() {
    require_redis().await;
    let db = TestDb::new().await;
    Rows::new()
        .add(
            4,
            1,
            "failed",
            "default",
            &ago(60),
            Some(&ago(30)),
            "UTC_TIMESTAMP(6)",
        )
        .insert(&db)
        .await;
    let prefix = key_prefix();
    let env = [
        ("HERALD_STATS_INTERVAL_S", "1".to_string()),
        ("HERALD_LOG_FORMAT", "json".into()),
    ];
    let mut workers: Vec<WorkerProc> = (0..3)
        .map(|_| WorkerProc::spawn(&db, &prefix, &env))
        .collect();
    wait_until(
        "all three workers to start",
        Duration::from_secs(20),
        || {
            let ready = workers
                .iter()
                .all(|w| w.logs().contains("fleet stats scheduled"));
            async move { ready }
        },
    )
    .await;
    // Windows wholly inside the time all three run.
    let first = window_now() + 1;
    wait_until("six stats windows", Duration::from_secs(30), || {
        let now = window_now();
        async move { now >= first + 6 }
    })
    .await;
    let last = window_now() - 1;
    for w in &workers {
        w.signal("TERM");
    }
    for w in &mut workers {
        assert!(w.wait_exit(Duration::from_secs(20)).await.success());
    }

    let mut loggers: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, w) in workers.iter().enumerate() {
        for line in json_lines(&w.logs(), "fleet stats") {
            if line["message"] != "fleet stats" {
                continue;
            }
            assert_eq!(line["failed"], 4, "{line}");
            assert_eq!(line["pending"], 0, "{line}");
            loggers
                .entry(line["window"].as_u64().unwrap())
                .or_default()
                .push(i);
        }
    }
    for (window, who) in &loggers {
        assert_eq!(who.len(), 1, "window {window} logged by workers {who:?}");
    }
    for window in first..=last {
        assert!(
            loggers.contains_key(&window),
            "window {window} was logged by no worker: {loggers:?}"
        );
    }
}

// ------------------------------------------------------------------- HTTP

#[tokio::test]
async fn readyz_fails_within_the_timeout_while_redis_hangs_and_recovers() {
    let db = TestDb::new().await;
    let mut redis = RedisProc::start();
    let addr = http_addr();
    let w = WorkerProc::spawn(
        &db,
        &key_prefix(),
        &[
            ("HERALD_REDIS_URLS", redis.url()),
            ("HERALD_HTTP_ADDR", addr.clone()),
            ("HERALD_HEALTH_TIMEOUT_MS", "500".into()),
        ],
    );
    wait_http(&addr, &w).await;
    for _ in 0..5 {
        assert_eq!(get(&addr, "/readyz").await.unwrap().0, 200);
    }
    assert_eq!(
        redis.raw("DBSIZE").trim(),
        ":0",
        "each probe releases its key"
    );

    redis.pause();
    let t = Instant::now();
    let (status, body) = get(&addr, "/readyz").await.unwrap();
    let took = t.elapsed();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("lock"), "{body}");
    assert!(
        took < Duration::from_millis(500 + 700),
        "/readyz took {took:?} with a 500 ms health timeout"
    );
    // Liveness is about this process, not its dependencies.
    assert_eq!(get(&addr, "/livez").await.unwrap().0, 200);

    redis.resume();
    wait_until("/readyz 200 again", Duration::from_secs(20), || async {
        get(&addr, "/readyz").await.map(|r| r.0) == Some(200)
    })
    .await;
    // Probes sent while the server was stopped may land after it resumes;
    // they carry a TTL, and none may stay.
    wait_until("no keys left in Redis", Duration::from_secs(10), || async {
        redis.raw("DBSIZE").trim() == ":0"
    })
    .await;
}

/// A scrape, checked against the OpenMetrics text grammar.
struct Scrape {
    text: String,
    samples: HashMap<String, f64>,
}

impl Scrape {
    /// A series by its exact printed name and labels; 0 if absent.
    fn get(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }
}

async fn scrape(addr: &str) -> Scrape {
    let r = client()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        ct.starts_with("application/openmetrics-text; version=1.0.0")
            || ct.starts_with("text/plain; version=0.0.4"),
        "{ct}"
    );
    let text = r.text().await.unwrap();
    let samples = parse_exposition(&text);
    Scrape { text, samples }
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses the exposition strictly enough to catch malformed output: every
/// sample belongs to a declared family with a suffix its type allows,
/// labels are well-formed, values are numbers, histogram buckets are
/// cumulative and end at `+Inf` = `_count`, and the text ends in `# EOF`.
fn parse_exposition(text: &str) -> HashMap<String, f64> {
    assert!(text.ends_with("# EOF\n"), "no # EOF terminator");
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = HashMap::new();
    let mut buckets: HashMap<String, Vec<f64>> = HashMap::new();
    for line in text.lines() {
        if line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap(), parts.next().unwrap_or(""));
            assert!(valid_name(name), "bad family name in {line:?}");
            match kind {
                "HELP" | "UNIT" => {}
                "TYPE" => {
                    let t = parts.next().unwrap_or("");
                    assert!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "summary",
                            "info",
                            "stateset",
                            "unknown"
                        ]
                        .contains(&t),
                        "{line:?}"
                    );
                    assert!(
                        types.insert(name.to_owned(), t.to_owned()).is_none(),
                        "family {name} declared twice"
                    );
                }
                _ => panic!("unknown comment {line:?}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, Some(l.strip_suffix('}').expect("unclosed labels"))),
            None => (series, None),
        };
        assert!(valid_name(name), "bad metric name in {line:?}");
        let mut le = None;
        if let Some(labels) = labels {
            // key="value" pairs; values may contain escaped quotes.
            let mut rest = labels;
            while !rest.is_empty() {
                let (key, after) = rest.split_once("=\"").expect("label without value");
                assert!(valid_name(key), "bad label name in {line:?}");
                let mut end = None;
                let mut escaped = false;
                for (i, c) in after.char_indices() {
                    match (escaped, c) {
                        (true, _) => escaped = false,
                        (false, '\\') => escaped = true,
                        (false, '"') => {
                            end = Some(i);
                            break;
                        }
                        _ => {}
                    }
                }
                let end = end.expect("unterminated label value");
                if key == "le" {
                    le = Some(after[..end].to_owned());
                }
                rest = after[end + 1..]
                    .strip_prefix(',')
                    .unwrap_or(&after[end + 1..]);
            }
        }
        let family = types
            .keys()
            .filter(|f| name.starts_with(f.as_str()))
            .max_by_key(|f| f.len())
            .unwrap_or_else(|| panic!("sample {name} has no # TYPE"));
        let suffix = &name[family.len()..];
        let allowed: &[&str] = match types[family].as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "gauge" => &[""],
            _ => &[
                "", "_total", "_sum", "_count", "_bucket", "_created", "_info",
            ],
        };
        assert!(
            allowed.contains(&suffix),
            "{name}: suffix not allowed for its type"
        );
        if suffix == "_bucket" {
            assert!(le.is_some(), "bucket without le: {line:?}");
            let key = format!(
                "{family}{}",
                labels
                    .unwrap_or("")
                    .replace(&format!("le=\"{}\"", le.as_deref().unwrap()), "")
            );
            buckets.entry(key).or_default().push(value);
        }
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "duplicate series {series}"
        );
    }
    for (family, counts) in &buckets {
        assert!(
            counts.windows(2).all(|w| w[0] <= w[1]),
            "{family}: buckets not cumulative"
        );
    }
    for (family, t) in &types {
        if t == "histogram" && !samples.contains_key(&format!("{family}_count")) {
            continue; // labelled histograms: checked per series above
        }
        if t == "histogram" {
            let inf = samples[&format!("{family}_bucket{{le=\"+Inf\"}}")];
            assert_eq!(inf, samples[&format!("{family}_count")], "{family}");
        }
    }
    samples
}

#[tokio::test]
async fn metrics_parse_and_counters_move_as_notifications_are_sent() {
    require_redis().await;
    let db = TestDb::new().await;
    let addr = http_addr();
    let w = WorkerProc::spawn(
        &db,
        &key_prefix(),
        &[
            ("HERALD_HTTP_ADDR", addr.clone()),
            ("HERALD_POLL_INTERVAL_MS", "50".into()),
        ],
    );
    wait_http(&addr, &w).await;
    let before = scrape(&addr).await;
    for name in [
        "herald_claimed_total",
        "herald_sent_total",
        "herald_retried_total",
        "herald_failed_total",
        "herald_expired_total",
        "herald_lost_ownership_total",
        "herald_lock_contended_total",
        "herald_cleanup_deleted_total",
        "herald_in_flight",
        "herald_due_backlog",
        "herald_send_duration_seconds_count",
        "herald_delivery_lag_seconds_count",
        "herald_batch_duration_seconds_count",
        "herald_lock_acquire_duration_seconds_count",
        &format!(
            "herald_lock_master_errors_total{{index=\"0\",master=\"{}\"}}",
            crate::helpers::redis_url()
        ),
        &format!(
            "herald_lock_master_timeouts_total{{index=\"0\",master=\"{}\"}}",
            crate::helpers::redis_url()
        ),
    ] {
        assert!(
            before.samples.contains_key(name),
            "{name} missing:\n{}",
            before.text
        );
    }
    assert_eq!(before.get("herald_sent_total"), 0.0);

    let lines: String = (0..5)
        .map(|i| format!("{{\"user_id\":{i},\"channel\":\"log\",\"payload\":{{\"i\":{i}}}}}\n"))
        .collect();
    let out = run_with_stdin(herald(Some(&db)).arg("enqueue"), &lines);
    assert!(out.status.success(), "{}", text(&out.stderr));

    wait_until(
        "five sends in /metrics",
        Duration::from_secs(20),
        || async { scrape(&addr).await.get("herald_sent_total") == 5.0 },
    )
    .await;
    let after = scrape(&addr).await;
    assert!(after.get("herald_claimed_total") >= 5.0, "{}", after.text);
    assert!(after.get("herald_send_duration_seconds_count") >= 5.0);
    assert!(after.get("herald_delivery_lag_seconds_count") >= 5.0);
    assert!(after.get("herald_lock_acquire_duration_seconds_count") >= 1.0);
    assert_eq!(after.get("herald_failed_total"), 0.0);
    assert_eq!(db.count_status("sent").await, 5);
}

/// `herald cleanup` does its one pass without `--once` (one pass is the only
/// mode); `--once` is still accepted for old scripts but no longer shown.
#[tokio::test]
async fn cleanup_runs_one_pass_without_once_and_still_accepts_it() {
    require_redis().await;
    let db = TestDb::new().await;
    db.exec(
        "INSERT INTO notifications (user_id, channel, region, payload, send_at, due_at, \
         status, attempts, finished_at, created_at) VALUES \
         (1,'log','default','{}',UTC_TIMESTAMP() - INTERVAL 3 DAY,UTC_TIMESTAMP() - INTERVAL 3 DAY,\
          'sent',1,UTC_TIMESTAMP() - INTERVAL 2 DAY,UTC_TIMESTAMP() - INTERVAL 3 DAY),\
         (2,'log','default','{}',UTC_TIMESTAMP() - INTERVAL 3 DAY,UTC_TIMESTAMP() - INTERVAL 3 DAY,\
          'sent',1,UTC_TIMESTAMP() - INTERVAL 2 DAY,UTC_TIMESTAMP() - INTERVAL 3 DAY)",
    )
    .await;
    let prefix = key_prefix();
    let run = |args: &[&str]| {
        herald(Some(&db))
            .env("HERALD_KEY_PREFIX", &prefix)
            .env("HERALD_RETENTION_SENT", "1d")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let dry = run(&["cleanup", "--once", "--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    assert!(
        text(&dry.stdout).contains("would delete 2"),
        "{}",
        text(&dry.stdout)
    );
    let pass = run(&["cleanup"]);
    assert!(pass.status.success(), "{}", text(&pass.stderr));
    assert!(
        text(&pass.stdout).contains("deleted 2 in"),
        "{}",
        text(&pass.stdout)
    );
    assert_eq!(db.scalar("SELECT COUNT(*) FROM notifications").await, 0);

    let help = text(&run(&["cleanup", "--help"]).stdout);
    assert!(help.contains("--dry-run"), "{help}");
    for worker_only in [
        "--once",
        "--cleanup-interval-s",
        "--cleanup <",
        "--concurrency",
    ] {
        assert!(!help.contains(worker_only), "{worker_only} in:\n{help}");
    }
}
