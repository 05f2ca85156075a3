//! The fault suite: real `herald worker` processes drain a backlog of `file`
//! channel rows while one fault is injected, the fault heals, and the
//! scenario measures what happened from the deliveries file and the
//! database, then prints ONE JSON line (and appends it to
//! `$HERALD_FAULTS_OUT`, default `target/faults.jsonl`) so the README's
//! fault table carries measured figures, not words.
//!
//! Why the figures can be trusted: every status change of a row (and every
//! re-claim, a changed `claim_token`) is logged by a trigger with the
//! database clock, so "in flight at the moment of the fault" and "claimed
//! before it was due" are read from the database's own history, and the
//! deliveries file is the receiver's view (one line per delivery).
//!
//! Short mode (default, CI) uses small backlogs and 3 s faults; set
//! `HERALD_FAULTS=full` for big backlogs and 20 s faults. README.md
//! ("Measured: the fault suite") has the commands and the figures.

pub mod proxy;

mod clock;
mod db;
mod disk;
mod net;
mod process;

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{NaiveDateTime, Utc};
use serde_json::{json, Value};

use crate::helpers::*;
use herald::notification::{Limits, NewNotification};
use herald::store::Store;

/// Backlog and fault length of one run.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    pub rows: u64,
    pub fault: Duration,
    pub mode: &'static str,
}

pub fn size() -> Size {
    if std::env::var("HERALD_FAULTS").is_ok_and(|v| v == "full") {
        Size {
            rows: 12_000,
            fault: Duration::from_secs(20),
            mode: "full",
        }
    } else {
        Size {
            rows: 2_000,
            fault: Duration::from_secs(3),
            mode: "short",
        }
    }
}

/// The database clock, read on the host: every server these tests use runs
/// on this machine, so host time and `UTC_TIMESTAMP(6)` are the same clock.
pub fn db_now() -> NaiveDateTime {
    Utc::now().naive_utc()
}

/// One scenario's database, deliveries file and key prefix.
pub struct Rig {
    pub store: Store,
    /// What workers put in `HERALD_DATABASE_URL`.
    pub url: String,
    pub prefix: String,
    pub file: PathBuf,
    pub rows: u64,
    pub size: Size,
    /// When the first worker started.
    started: Option<Instant>,
    /// Keeps the deliveries file's directory alive.
    _dir: tempfile::TempDir,
    _db: Option<TestDb>,
}

impl Rig {
    /// A fresh database on the shared server with `rows` due rows.
    pub async fn shared(size: Size) -> Rig {
        require_redis().await;
        let db = TestDb::new().await;
        let store = db.store.clone();
        let url = db.url_str();
        Self::prepare(store, url, Some(db), size, None).await
    }

    /// Migrates `url` (a private server) and fills it.
    pub async fn on(url: &str, size: Size) -> Rig {
        let secret = herald::secret::SecretUrl::parse(url).unwrap();
        herald::store::migrate::migrate(&secret).await.unwrap();
        let store = Store::connect(&secret, 4).await.unwrap();
        Self::prepare(store, url.to_owned(), None, size, None).await
    }

    /// Like [`Rig::shared`], with the deliveries file in `dir`.
    pub async fn shared_in(size: Size, dir: &Path) -> Rig {
        require_redis().await;
        let db = TestDb::new().await;
        let store = db.store.clone();
        let url = db.url_str();
        Self::prepare(store, url, Some(db), size, Some(dir)).await
    }

    async fn prepare(
        store: Store,
        url: String,
        db: Option<TestDb>,
        size: Size,
        file_dir: Option<&Path>,
    ) -> Rig {
        install_transition_log(&store).await;
        enqueue_file_rows(&store, size.rows, Duration::ZERO, 0).await;
        let dir = tempfile::tempdir().unwrap();
        let file = file_dir.unwrap_or(dir.path()).join("deliveries.jsonl");
        Rig {
            store,
            url,
            prefix: key_prefix(),
            file,
            rows: size.rows,
            size,
            started: None,
            _dir: dir,
            _db: db,
        }
    }

    /// Settings shared by every scenario: slow enough sends (25 ms each,
    /// 8 at a time) that the backlog is still draining when the fault
    /// strikes, a 4 s lock TTL so leases run out within a 20 s fault, and
    /// retries that keep going for the whole fault.
    pub fn env(&self, id: &str, redis_urls: &[String]) -> Vec<(&'static str, String)> {
        vec![
            ("HERALD_WORKER_ID", id.to_owned()),
            ("HERALD_REDIS_URLS", redis_urls.join(",")),
            ("HERALD_FILE_PATH", self.file.display().to_string()),
            ("HERALD_FILE_LATENCY_MS", "25".to_owned()),
            ("HERALD_CONCURRENCY", "8".to_owned()),
            ("HERALD_BATCH_SIZE", "16".to_owned()),
            ("HERALD_LOCK_TTL_MS", "4000".to_owned()),
            ("HERALD_SEND_TIMEOUT_MS", "1600".to_owned()),
            ("HERALD_POLL_INTERVAL_MS", "100".to_owned()),
            ("HERALD_MAX_ATTEMPTS", "1000".to_owned()),
            ("HERALD_RETRY_BASE_MS", "200".to_owned()),
            ("HERALD_RETRY_MAX_MS", "1000".to_owned()),
            // A fault that makes sends fail (a full disk) opens the
            // channel's breaker; probing every second, like the retries
            // above, keeps recovery within a second of the fault's end.
            ("HERALD_BREAKER_COOL_DOWN", "1s".to_owned()),
        ]
    }

    /// A worker on `db_url` (the rig's, or a proxy's) and `redis_urls`.
    pub fn spawn(
        &mut self,
        id: &str,
        db_url: &str,
        redis_urls: &[String],
        extra: &[(&'static str, String)],
    ) -> WorkerProc {
        let mut env = self.env(id, redis_urls);
        env.extend(extra.iter().cloned());
        self.started.get_or_insert_with(Instant::now);
        WorkerProc::spawn_on(db_url, &self.prefix, &env)
    }

    pub async fn sent(&self) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM notifications WHERE status = 'sent'")
            .fetch_one(self.store.pool())
            .await
            .unwrap_or(0)
    }

    /// Waits (deadline, not a sleep) until `n` rows are sent, so the fault
    /// strikes a drain in progress.
    pub async fn wait_sent(&self, n: i64) {
        wait_until(
            &format!("{n} rows sent before the fault"),
            Duration::from_secs(120),
            || async { self.sent().await >= n },
        )
        .await;
    }

    /// A fifth of the backlog: the usual moment to strike.
    pub fn strike_at(&self) -> i64 {
        (self.rows / 5) as i64
    }
}

/// Logs every status change and every re-claim with the database clock.
/// `due` is the row's due time before the change, so a claim earlier than
/// its due time is visible as `at < due`.
pub async fn install_transition_log(store: &Store) {
    for sql in [
        "CREATE TABLE fault_log (seq BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, \
         id BIGINT UNSIGNED NOT NULL, status VARCHAR(16) NOT NULL, claimed_by VARCHAR(128) NULL, \
         due DATETIME(6) NOT NULL, send_at DATETIME(6) NOT NULL, at DATETIME(6) NOT NULL)",
        // A plain INSERT … VALUES: an INSERT … SELECT would take the
        // table's AUTO-INC lock for the statement and serialise every
        // claim and finish of the workers behind it.
        "CREATE TRIGGER fault_log_t AFTER UPDATE ON notifications FOR EACH ROW \
         IF NEW.status <> OLD.status OR NOT (NEW.claim_token <=> OLD.claim_token) THEN \
         INSERT INTO fault_log (id, status, claimed_by, due, send_at, at) \
         VALUES (NEW.id, NEW.status, NEW.claimed_by, OLD.due_at, NEW.send_at, UTC_TIMESTAMP(6)); \
         END IF",
    ] {
        sqlx::raw_sql(sql).execute(store.pool()).await.unwrap();
    }
}

/// `n` rows for the `file` channel, one user each, due `ahead` from now
/// (already due a second ago when `ahead` is zero). `first` numbers them.
pub async fn enqueue_file_rows(store: &Store, n: u64, ahead: Duration, first: u64) {
    let limits = Limits::default();
    let due = if ahead.is_zero() {
        Utc::now() - chrono::Duration::seconds(1)
    } else {
        Utc::now() + chrono::Duration::from_std(ahead).unwrap()
    };
    let items: Vec<NewNotification> = (first..first + n)
        .map(|i| {
            NewNotification::builder(i, "file", json!({ "i": i }))
                .send_at(due)
                .build(&limits)
                .unwrap()
        })
        .collect();
    let mut conn = store.pool().acquire().await.unwrap();
    for chunk in items.chunks(500) {
        herald::store::enqueue::enqueue_batch(&mut conn, chunk)
            .await
            .unwrap();
    }
}

/// Deliveries per id, read from the file channel's output. A line cut short
/// by a failed write (disk full) is not a delivery: the transport reported
/// it as failed and the row was retried. Lines are split where a delivery
/// starts, not only at newlines, because the next append lands right after
/// such a fragment.
pub fn deliveries(file: &Path) -> HashMap<u64, usize> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut out = HashMap::new();
    for part in text.split("{\"id\":").skip(1) {
        let line = format!("{{\"id\":{part}");
        // The first value only: a fragment too short to hold `{"id":`
        // trails the line before it and must not spoil that line.
        let first = serde_json::Deserializer::from_str(&line)
            .into_iter::<Value>()
            .next();
        if let Some(Ok(v)) = first {
            if let Some(id) = v["id"].as_u64() {
                *out.entry(id).or_insert(0) += 1;
            }
        }
    }
    out
}

/// When the fault was on, by the database clock.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: NaiveDateTime,
    pub end: NaiveDateTime,
}

/// Waits until every row is `sent` (or `deadline` passes: the figures are
/// printed either way, then the assertions fail), measures, prints and
/// appends the JSON line, and asserts: nothing lost, nothing claimed before
/// due, and every duplicate among the rows in flight while the fault was on
/// (the documented bound).
pub async fn settle_and_report(
    rig: &Rig,
    scenario: &str,
    injected: &str,
    window: Window,
    workers: &mut [WorkerProc],
    faulted: Option<&[&str]>,
    extra: Value,
) -> Value {
    let deadline = Duration::from_secs(if rig.size.mode == "full" { 600 } else { 180 });
    let start = Instant::now();
    while rig.sent().await < rig.rows as i64 && start.elapsed() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drain_s = rig.started.map_or(0.0, |t| t.elapsed().as_secs_f64());
    for w in workers.iter() {
        w.signal("TERM");
    }
    for w in workers.iter_mut() {
        let _ = w.wait_exit(Duration::from_secs(30)).await;
    }
    let store = &rig.store;
    let delivered = deliveries(&rig.file);
    let sent: Vec<u64> =
        sqlx::query_scalar("SELECT id FROM notifications WHERE status = 'sent' ORDER BY id")
            .fetch_all(store.pool())
            .await
            .unwrap();
    let all: Vec<u64> = sqlx::query_scalar("SELECT id FROM notifications ORDER BY id")
        .fetch_all(store.pool())
        .await
        .unwrap();
    let sent: BTreeSet<u64> = sent.into_iter().collect();
    let lost: Vec<u64> = all
        .iter()
        .copied()
        .filter(|id| !sent.contains(id) || !delivered.contains_key(id))
        .collect();
    let dup_ids: Vec<u64> = delivered
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| *id)
        .collect();
    let duplicates: usize = delivered.values().map(|n| n.saturating_sub(1)).sum();
    let bound = in_flight_during(store, window, faulted).await;
    let beyond: Vec<u64> = dup_ids
        .iter()
        .copied()
        .filter(|id| !bound.contains(id))
        .collect();
    let early: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM fault_log WHERE status = 'sending' AND at < due")
            .fetch_one(store.pool())
            .await
            .unwrap();
    let (max_lag_us, last_sent): (Option<i64>, Option<NaiveDateTime>) = sqlx::query_as(
        "SELECT CAST(MAX(TIMESTAMPDIFF(MICROSECOND, send_at, at)) AS SIGNED), MAX(at) \
         FROM fault_log WHERE status = 'sent'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    let drain_after_s = last_sent.map_or(-1.0, |t| secs(t - window.end).max(0.0));
    // Nothing left to recover when the others finished during the fault.
    let recovery_s = if drain_after_s == 0.0 {
        0.0
    } else {
        recovery(store, window, faulted).await
    };
    let mut line = Figures::new();
    line.extend(
        json!({
            "scenario": scenario,
            "injected": injected,
            "mode": rig.size.mode,
            "rows": rig.rows,
            "workers": workers.len(),
            "fault_s": round3((window.end - window.start).num_milliseconds() as f64 / 1e3),
            "lost": lost.len(),
            "duplicates": duplicates,
            "dup_bound": bound.len(),
            "claimed_early": early,
            "recovery_s": round3(recovery_s),
            "drain_after_s": round3(drain_after_s),
            "max_lag_s": round3(max_lag_us.unwrap_or(0) as f64 / 1e6),
            "drain_s": round3(drain_s),
        }),
        &[
            "scenario",
            "injected",
            "lost",
            "duplicates",
            "dup_bound",
            "recovery_s",
            "max_lag_s",
        ],
    );
    line.extend(extra, &[]);
    emit(&line);
    let logs = || {
        workers
            .iter()
            .map(|w| w.logs())
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    if !lost.is_empty() {
        let raw = std::fs::read_to_string(&rig.file).unwrap_or_default();
        let mut why = String::new();
        for id in lost.iter().take(5) {
            let row: Option<(String, u32, Option<String>)> = sqlx::query_as(
                "SELECT CAST(status AS CHAR), attempts, last_error FROM notifications WHERE id = ?",
            )
            .bind(id)
            .fetch_optional(store.pool())
            .await
            .unwrap();
            let needle = format!("{{\"id\":{id},");
            let in_file: Vec<&str> = raw
                .match_indices(&needle)
                .map(|(at, _)| &raw[at.saturating_sub(40)..(at + 300).min(raw.len())])
                .collect();
            why.push_str(&format!("\nid {id}: row {row:?}; in the file: {in_file:?}"));
        }
        panic!(
            "{scenario}: {} rows lost{why}\nlogs:\n{}",
            lost.len(),
            logs()
        );
    }
    assert!(
        beyond.is_empty(),
        "{scenario}: rows delivered twice that were not in flight during the fault: {beyond:?}"
    );
    assert_eq!(early, 0, "{scenario}: rows claimed before they were due");
    line.0.into_iter().collect()
}

/// A JSON object that keeps its keys in order (serde_json sorts them), so
/// each line starts with the figures the README's table carries.
#[derive(Debug, Default)]
pub struct Figures(pub Vec<(String, Value)>);

impl Figures {
    pub fn new() -> Figures {
        Figures::default()
    }

    /// Appends the fields of `obj`, those named in `first` first, in that
    /// order, then the rest.
    pub fn extend(&mut self, obj: Value, first: &[&str]) {
        let Value::Object(mut map) = obj else {
            return;
        };
        for k in first {
            if let Some(v) = map.remove(*k) {
                self.0.push((k.to_string(), v));
            }
        }
        self.0.extend(map);
    }
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("{")?;
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}:{v}", Value::from(k.as_str()))?;
        }
        f.write_str("}")
    }
}

/// Rows whose claim by a faulted worker (`None`: any worker) overlapped the
/// fault window: a `sending` period (from the claim to the next logged
/// change) that had begun by the window's end and not ended before its
/// start. These are the rows "on the wire or delivered but not yet
/// recorded" by the workers the fault hit, while it was on.
pub async fn in_flight_during(store: &Store, w: Window, faulted: Option<&[&str]>) -> BTreeSet<u64> {
    let log: Vec<(u64, String, Option<String>, NaiveDateTime)> =
        sqlx::query_as("SELECT id, status, claimed_by, at FROM fault_log ORDER BY id, seq")
            .fetch_all(store.pool())
            .await
            .unwrap();
    let mut out = BTreeSet::new();
    for (i, (id, status, by, at)) in log.iter().enumerate() {
        if status != "sending" || *at > w.end {
            continue;
        }
        if let Some(f) = faulted {
            if !by.as_deref().is_some_and(|b| f.contains(&b)) {
                continue;
            }
        }
        let ended = log
            .get(i + 1)
            .filter(|(next, ..)| next == id)
            .map(|(.., t)| *t);
        if ended.is_none_or(|t| t >= w.start) {
            out.insert(*id);
        }
    }
    out
}

/// Seconds from the fault's end until a worker it hit (`None`: any) records
/// a row sent again: how long the fault outlives its cause. 0 when it hit
/// no worker; -1 when none ever did.
async fn recovery(store: &Store, w: Window, faulted: Option<&[&str]>) -> f64 {
    let mut sql = "SELECT MIN(at) FROM fault_log WHERE status = 'sent' AND at >= ?".to_owned();
    match faulted {
        Some([]) => return 0.0,
        Some(names) => {
            sql.push_str(" AND claimed_by IN (");
            sql.push_str(&vec!["?"; names.len()].join(","));
            sql.push(')');
        }
        None => {}
    }
    let mut q = sqlx::query_scalar::<_, Option<NaiveDateTime>>(&sql).bind(w.end);
    for n in faulted.unwrap_or(&[]) {
        q = q.bind(*n);
    }
    let first = q.fetch_one(store.pool()).await.unwrap();
    first.map_or(-1.0, |t| secs(t - w.end))
}

fn secs(d: chrono::TimeDelta) -> f64 {
    d.num_microseconds().unwrap_or(0) as f64 / 1e6
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Prints the line on stdout (run with `--nocapture` to see it) and appends
/// it, in one write, to `$HERALD_FAULTS_OUT` or `target/faults.jsonl`.
pub fn emit(line: &impl std::fmt::Display) {
    let text = format!("{line}\n");
    print!("{text}");
    let path = std::env::var_os("HERALD_FAULTS_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/faults.jsonl"));
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        let _ = f.write_all(text.as_bytes());
    }
}

/// The window from `start` (taken before the fault was injected) until now
/// (call it right after healing).
pub fn window_since(start: NaiveDateTime) -> Window {
    Window {
        start,
        end: db_now(),
    }
}

#[test]
fn a_line_cut_short_by_a_full_disk_is_not_a_delivery_and_hides_none() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("d.jsonl");
    std::fs::write(
        &file,
        "{\"id\":1,\"at_us\":5}\n{\"id\":2,\"at\
         {\"id\":3,\"at_us\":5}\n{\"i\
         {\"id\":4,\"at_us\":5}\n{\"id\":1,\"at_us\":6}\n",
    )
    .unwrap();
    let d = deliveries(&file);
    assert_eq!(d.get(&1), Some(&2));
    assert_eq!(d.get(&2), None, "the fragment is no delivery");
    assert_eq!(d.get(&3), Some(&1), "the line after the fragment counts");
    assert_eq!(d.get(&4), Some(&1));
    assert_eq!(d.len(), 3);
}
