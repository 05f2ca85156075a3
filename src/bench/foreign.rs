//! `herald bench foreign-locks`: S1's drain while another application holds
//! row locks on 1 % of the due rows, against the same drain without them.
//!
//! Applications that share the table may hold `SELECT … FOR UPDATE` on rows
//! for as long as they like. The claim must go around those rows without
//! waiting for them and without paying much for the detour: the issue asks
//! the other rows to drain at ≥ 80 % of the normal rate.
//!
//! `--pairs` (default 3) alternating pairs on fresh databases, the same W
//! workers and settings:
//!
//! * free: M rows on the `file` channel, timed until all are finished;
//! * locked: the same M rows, every hundredth (`id % 100 = 7`) locked by a
//!   READ COMMITTED transaction on its own connection before the workers
//!   start, timed until every other row is finished. Then the transaction
//!   ends, and the report says how long the held rows took to follow
//!   (`released_drain_s`): nothing may be lost or sent twice.
//!
//! The lock is held for at most `--seconds` (default 30); a drain slower
//! than that measures the wrong thing and fails the run.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sqlx::{Connection, Executor, MySqlConnection};

use super::counters::{status_counters, DbWork, Snapshot};
use super::delivered::{read_lines, tally, LineCounter};
use super::drain::{key_prefix, RunDir, STOP_GRACE};
use super::fleet::{Fleet, FleetEnv};
use super::report::{median, round, Report};
use super::workload::{self, BenchDb};
use super::Params;
use crate::config::Settings;

/// Server counters read around each timed drain (server-wide).
const SERVER_COUNTERS: [&str; 6] = [
    "Questions",
    "Com_select",
    "Com_update",
    "Handler_read_key",
    "Handler_read_next",
    "Innodb_row_lock_waits",
];

/// Rows whose id has this remainder modulo 100 are held by the other
/// application: 1 %, spread evenly over the queue, so nearly every claim
/// batch meets some.
const HELD_REMAINDER: u64 = 7;

pub async fn run(settings: &Settings, params: &Params, w: usize) -> anyhow::Result<Report> {
    let mut pairs: Vec<(Run, Run)> = Vec::new();
    for i in 0..params.pairs {
        let free = once(settings, params, w, false).await?;
        let locked = once(settings, params, w, true).await?;
        eprintln!(
            "bench foreign-locks W={w} pair {}/{}: free {:.0}/s, with 1 % held elsewhere {:.0}/s: {:.1} %; \
             statements per row {:.2} vs {:.2}",
            i + 1,
            params.pairs,
            free.rate,
            locked.rate,
            locked.rate / free.rate * 100.0,
            free.per_row("Questions"),
            locked.per_row("Questions"),
        );
        pairs.push((free, locked));
    }
    let med = |f: &dyn Fn(&(Run, Run)) -> f64| median(pairs.iter().map(f).collect());
    let ratio = med(&|(a, b)| b.rate / a.rate);
    let (free_rate, locked_rate) = (med(&|p| p.0.rate), med(&|p| p.1.rate));
    eprintln!(
        "bench foreign-locks W={w}, medians of {} pairs: free {free_rate:.0}/s, with held rows \
         {locked_rate:.0}/s, ratio {:.1} %",
        pairs.len(),
        ratio * 100.0
    );
    let mut report = Report {
        system: "herald",
        scenario: "foreign-locks",
        m: params.m,
        w,
        c: params.c,
        l_ms: params.l_ms,
        wall_s: round(med(&|p| p.1.wall.as_secs_f64()), 3),
        jobs_per_s: round(locked_rate, 1),
        dupes: pairs.iter().map(|(a, b)| a.dupes + b.dupes).sum(),
        lost: pairs.iter().map(|(a, b)| a.lost + b.lost).sum(),
        peak_rss_mib: round(
            pairs
                .iter()
                .map(|(a, b)| a.peak.max(b.peak))
                .fold(0.0, f64::max),
            1,
        ),
        ideal_ratio: None,
        extra: Default::default(),
    };
    report.set("pairs", pairs.len());
    report.set("free_jobs_per_s", round(free_rate, 1));
    report.set("ratio", round(ratio, 3));
    report.set(
        "held_rows",
        pairs.last().map(|p| p.1.held).unwrap_or_default(),
    );
    report.set(
        "released_drain_s",
        round(med(&|p| p.1.after_release.as_secs_f64()), 3),
    );
    for (key, name) in [
        ("statements_per_row", "Questions"),
        ("selects_per_row", "Com_select"),
        ("updates_per_row", "Com_update"),
        ("rows_read_per_row", "Handler_read_key"),
        ("index_entries_per_row", "Handler_read_next"),
        ("row_lock_waits", "Innodb_row_lock_waits"),
    ] {
        report.set(
            &format!("free_{key}"),
            round(med(&|p| p.0.per_row(name)), 3),
        );
        report.set(key, round(med(&|p| p.1.per_row(name)), 3));
    }
    let each: Vec<serde_json::Value> = pairs
        .iter()
        .map(|(a, b)| {
            serde_json::json!({
                "free_jobs_per_s": round(a.rate, 1),
                "jobs_per_s": round(b.rate, 1),
                "ratio": round(b.rate / a.rate, 3),
            })
        })
        .collect();
    report.set("each_pair", each);
    if let Some((free, held)) = pairs.last() {
        if let (Some(a), Some(b)) = (&free.work, &held.work) {
            report.set("free_db_per_1000_rows", serde_json::to_value(a)?);
            report.set("db_per_1000_rows", serde_json::to_value(b)?);
        }
    }
    report.set("hold_limit_s", params.seconds);
    Ok(report)
}

struct Run {
    wall: Duration,
    /// Rows finished per second, not counting the held rows.
    rate: f64,
    held: u64,
    after_release: Duration,
    dupes: u64,
    lost: u64,
    peak: f64,
    /// Growth of [`SERVER_COUNTERS`] over the timed drain, per timed row.
    server: HashMap<String, f64>,
    /// `--db-counters`: the database's work per 1,000 timed rows.
    work: Option<DbWork>,
}

impl Run {
    fn per_row(&self, name: &str) -> f64 {
        self.server.get(name).copied().unwrap_or(0.0)
    }
}

async fn once(settings: &Settings, params: &Params, w: usize, hold: bool) -> anyhow::Result<Run> {
    let label = format!(
        "bench foreign-locks W={w} ({})",
        if hold { "1 % held elsewhere" } else { "free" }
    );
    let db = BenchDb::create(&settings.database_url, params.keep).await?;
    let region = settings.regions[0].as_str();
    let expected = workload::due_backlog(&db.store, params.m, params.users, region, 0).await?;
    let held_ids: Vec<u64> = match hold {
        true => expected
            .iter()
            .copied()
            .filter(|id| id % 100 == HELD_REMAINDER)
            .collect(),
        false => Vec::new(),
    };
    let mut holder = match hold {
        true => Some(Holder::lock(db.url.expose(), &held_ids).await?),
        false => None,
    };
    eprintln!(
        "{label}: enqueued {}, {} held; starting workers",
        expected.len(),
        held_ids.len()
    );
    let dir = RunDir::new()?;
    let output = dir.output()?;
    let env = FleetEnv {
        exe: params.worker_exe.clone(),
        database_url: db.url.expose().to_owned(),
        key_prefix: key_prefix(),
        concurrency: params.c,
        file_path: Some(output.clone()),
        file_latency_ms: params.l_ms,
        ..FleetEnv::default()
    };
    let mut lines = LineCounter::open(&output)?;
    // Both runs are timed until the same rows (all but the hundredth that
    // the other run holds) are finished.
    let timed = expected
        .iter()
        .filter(|id| *id % 100 != HELD_REMAINDER)
        .count() as u64;
    let before = status_counters(&db.store, &SERVER_COUNTERS).await?;
    let counted = match params.db_counters {
        true => Some(Snapshot::take(&db.store, &db.name).await?),
        false => None,
    };
    let t0 = Instant::now();
    let mut fleet = Fleet::start(settings, w, &env)?;
    let hold_limit = Duration::from_secs(params.seconds.max(1));
    let mut last_report = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        fleet.check_alive()?;
        let d = lines.lines();
        if d >= timed && !others_unfinished(&db.store, region).await? {
            break;
        }
        if t0.elapsed() > hold_limit.min(params.timeout) {
            bail!(
                "{label}: only {d} of {timed} free rows delivered after {:?}: the measurement needs \
                 the drain to end while the rows are held (raise --seconds)",
                t0.elapsed()
            );
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "{label}: delivered {d}/{timed}, {:.1} s",
                t0.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
    }
    let wall = t0.elapsed();
    let work = match &counted {
        Some(before) => Some(before.work_until(&Snapshot::take(&db.store, &db.name).await?, timed)),
        None => None,
    };
    let after = status_counters(&db.store, &SERVER_COUNTERS).await?;
    let server = after
        .iter()
        .map(|(k, v)| {
            let grown = v - before.get(k).copied().unwrap_or(0.0);
            (k.clone(), grown / timed.max(1) as f64)
        })
        .collect();
    // The other application ends its transaction: the held rows must follow.
    let released = Instant::now();
    if let Some(h) = holder.take() {
        h.release().await?;
        super::drain::wait_finished(
            &db.store,
            region,
            &mut fleet,
            &label,
            expected.len() as u64,
            0,
            released,
            params.timeout,
            || lines.lines(),
        )
        .await?;
    }
    let after_release = released.elapsed();
    let peak = fleet.peak_rss_mib();
    fleet.stop(STOP_GRACE).await?;
    let delivered: Vec<u64> = read_lines(&output)?.into_iter().map(|l| l.id).collect();
    let not_sent = workload::not_sent(&db.store, 0).await?;
    let (dupes, lost) = tally(&expected, delivered, &not_sent);
    db.finish().await?;
    eprintln!(
        "{label}: {timed} in {:.3} s = {:.0}/s, dupes {dupes}, lost {lost}",
        wall.as_secs_f64(),
        timed as f64 / wall.as_secs_f64()
    );
    Ok(Run {
        wall,
        rate: timed as f64 / wall.as_secs_f64(),
        held: held_ids.len() as u64,
        after_release: if hold { after_release } else { Duration::ZERO },
        dupes,
        lost,
        peak,
        server,
        work,
    })
}

/// Whether any row outside the held hundredth is unfinished. Stops at the
/// first such index entry (after the held ones, which lead the queue), so
/// checking every few milliseconds does not load the database the run is
/// measuring: a count walked every unfinished entry each time, which the
/// counters showed as four times the rows' own index reads.
async fn others_unfinished(store: &crate::store::Store, region: &str) -> anyhow::Result<bool> {
    let row: Option<i32> = sqlx::query_scalar(&format!(
        "SELECT 1 FROM notifications FORCE INDEX (ix_notifications_due) \
         WHERE region = ? AND status IN ('pending','sending') AND MOD(id, 100) <> {HELD_REMAINDER} LIMIT 1"
    ))
    .bind(region)
    .fetch_optional(store.pool())
    .await?;
    Ok(row.is_some())
}

/// The other application: one connection holding `FOR UPDATE` locks on
/// the given rows in an open transaction.
struct Holder(MySqlConnection);

impl Holder {
    async fn lock(url: &str, ids: &[u64]) -> anyhow::Result<Holder> {
        let mut conn = MySqlConnection::connect(url)
            .await
            .context("connecting the lock holder")?;
        let list = ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        conn.execute(sqlx::raw_sql(&format!(
            "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION; \
             SELECT id FROM notifications WHERE id IN ({list}) FOR UPDATE"
        )))
        .await
        .context("locking the held rows")?;
        Ok(Holder(conn))
    }

    async fn release(mut self) -> anyhow::Result<()> {
        self.0.execute("ROLLBACK").await?;
        self.0.close().await?;
        Ok(())
    }
}
