//! `herald bench scale`: does a notification cost the same when the table
//! is large?
//!
//! Production tables hold millions of finished rows (kept for their
//! retention) next to a short due queue. Every statement of the protocol
//! should touch only the due part of `ix_notifications_due` and the
//! claimed rows themselves, so the cost per notification should not grow
//! with the finished rows. Two measurements check that:
//!
//! * **finished**: for an empty table and then for each `--finished N`, the
//!   S1 drain of M rows (W workers, cleanup on with the default retention, so
//!   its backlog gate and walk run but delete nothing) and then a steady
//!   phase at `--rate` for `--seconds` with the same workers, reporting
//!   throughput, delivery lag percentiles of the steady phase, the
//!   candidate query's time and index work on the full backlog (measured
//!   alone before the workers start), and the database's CPU per 1,000 rows;
//!   each non-empty run also as ratios to the empty one (`vs_empty`);
//! * **backlog**: `--backlog` due rows at once, drained by W workers, with
//!   the throughput of every tenth of the rows: the cost must not depend on
//!   how deep the queue still is.

use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::json;
use sqlx::Row;

use super::counters::Snapshot;
use super::delivered::{percentile, read_lines, tally, LineCounter};
use super::drain::{key_prefix, wait_finished, RunDir, STOP_GRACE};
use super::fill;
use super::fleet::{Fleet, FleetEnv};
use super::lag::Steady;
use super::report::{round, Report};
use super::workload::{self, BenchDb};
use super::Params;
use crate::config::Settings;
use crate::store::candidates;
use crate::store::Store;

/// Finished rows are spread over this much of the past: inside the default
/// retention of sent rows (7 days), so cleanup checks but keeps them.
const FINISHED_SPREAD_DAYS: i64 = 3;
/// Candidate reads timed alone per run.
const PROBES: usize = 21;
/// Rows per candidate read, as a worker with the default batch size asks.
const PROBE_LIMIT: usize = 1000;

/// The figures the non-empty runs are compared with.
#[derive(Debug, Clone, Copy)]
pub struct Baseline {
    jobs_per_s: f64,
    lag_p99_ms: f64,
    candidates_us: f64,
    db_cpu_ms: Option<f64>,
}

/// One run with `finished` rows already in the table. Returns its report
/// and, for the empty table, the baseline of the others.
pub async fn finished_run(
    settings: &Settings,
    params: &Params,
    w: usize,
    finished: u64,
    baseline: Option<Baseline>,
) -> anyhow::Result<(Report, Baseline)> {
    let label = format!("bench scale finished={finished} W={w}");
    let db = BenchDb::create(&settings.database_url, params.keep).await?;
    let region = settings.regions[0].as_str();
    let old_max = if finished > 0 {
        eprintln!("{label}: filling {finished} finished rows");
        let t = Instant::now();
        let tenth = (finished / 10).max(1);
        let max = fill::finished(
            &db.store,
            finished,
            region,
            chrono::Duration::days(FINISHED_SPREAD_DAYS),
            |n| {
                if n % tenth < 100_000 || n == finished {
                    eprintln!("{label}: filled {n}/{finished}");
                }
            },
        )
        .await?;
        eprintln!("{label}: filled in {:.1} s", t.elapsed().as_secs_f64());
        max
    } else {
        0
    };
    eprintln!("{label}: enqueueing {} due rows", params.m);
    let drained = workload::due_backlog(&db.store, params.m, params.users, region, old_max).await?;
    let probe = probe_candidates(&db, region).await?;
    eprintln!(
        "{label}: candidate read of {PROBE_LIMIT} alone: median {:.0} µs, {:.0} index entries read",
        probe.median_us, probe.read_next
    );

    let dir = RunDir::new()?;
    let output = dir.output()?;
    let env = fleet_env(&db, params, &output);
    let mut lines = LineCounter::open(&output)?;
    let before = Snapshot::take(&db.store, &db.name).await?;
    let t0 = Instant::now();
    let mut fleet = Fleet::start(settings, w, &env)?;
    let m = drained.len() as u64;
    let (wall, _) = wait_finished(
        &db.store,
        region,
        &mut fleet,
        &label,
        m,
        old_max,
        t0,
        params.timeout,
        || lines.lines(),
    )
    .await?;
    let work = before.work_until(&Snapshot::take(&db.store, &db.name).await?, m);

    // The steady phase: the same workers, a table that now also holds the
    // drained rows.
    let steady_from = fill::max_id(&db.store).await?;
    let steady = Steady {
        region,
        users: params.users,
        rate: params.rate,
        seconds: params.seconds,
        first: params.m,
    };
    eprintln!(
        "{label}: steady phase, {}/s for {} s",
        params.rate, params.seconds
    );
    let t1 = Instant::now();
    let n = steady
        .enqueue(&db.store, &mut fleet, &label, |_| {})
        .await?;
    wait_finished(
        &db.store,
        region,
        &mut fleet,
        &label,
        m + n,
        old_max,
        t1,
        params.timeout + Duration::from_secs(params.seconds),
        || lines.lines(),
    )
    .await?;
    let peak = fleet.peak_rss_mib();
    fleet.stop(STOP_GRACE).await?;

    let delivered = read_lines(&output)?;
    let mut lags: Vec<f64> = delivered
        .iter()
        .filter(|l| l.id > steady_from)
        .map(|l| (l.at_us as f64 - l.send_at.timestamp_micros() as f64) / 1000.0)
        .collect();
    lags.sort_by(f64::total_cmp);
    let expected = workload::ids_after(&db.store, old_max).await?;
    let not_sent = workload::not_sent(&db.store, old_max).await?;
    let (dupes, lost) = tally(&expected, delivered.iter().map(|l| l.id), &not_sent);
    db.finish().await?;

    let jobs_per_s = m as f64 / wall.as_secs_f64();
    let (p50, p99) = (percentile(&lags, 0.50), percentile(&lags, 0.99));
    let this = Baseline {
        jobs_per_s,
        lag_p99_ms: p99,
        candidates_us: probe.median_us,
        db_cpu_ms: work.cpu_ms,
    };
    let mut report = Report {
        system: "herald",
        scenario: "scale",
        m,
        w,
        c: params.c,
        l_ms: params.l_ms,
        wall_s: round(wall.as_secs_f64(), 3),
        jobs_per_s: round(jobs_per_s, 1),
        dupes,
        lost,
        peak_rss_mib: round(peak, 1),
        ideal_ratio: None,
        extra: Default::default(),
    };
    report.set("phase", "finished");
    report.set("finished_rows", finished);
    report.set("rate", params.rate);
    report.set("seconds", params.seconds);
    report.set("lag_p50_ms", round(p50, 1));
    report.set("lag_p99_ms", round(p99, 1));
    report.set("candidates_us", round(probe.median_us, 1));
    report.set("candidates_index_reads", round(probe.read_next, 1));
    if let Some(cpu) = work.cpu_ms {
        report.set("db_cpu_ms_per_1000_rows", cpu);
    }
    if let Some(base) = baseline {
        let ratio = |a: f64, b: f64| if b > 0.0 { round(a / b, 3) } else { 0.0 };
        let mut vs = json!({
            "jobs_per_s": ratio(jobs_per_s, base.jobs_per_s),
            "lag_p99_ms": ratio(p99, base.lag_p99_ms),
            "candidates_us": ratio(probe.median_us, base.candidates_us),
        });
        if let (Some(a), Some(b)) = (work.cpu_ms, base.db_cpu_ms) {
            vs["db_cpu_ms_per_1000_rows"] = ratio(a, b).into();
        }
        report.set("vs_empty", vs);
    }
    if params.db_counters {
        report.set("db_per_1000_rows", serde_json::to_value(&work)?);
    }
    eprintln!(
        "{label}: {m} in {:.3} s = {jobs_per_s:.0}/s; steady lag p99 {p99:.1} ms; dupes {dupes}, lost {lost}",
        wall.as_secs_f64()
    );
    Ok((report, this))
}

/// `backlog` due rows at once; the throughput of each tenth of them.
pub async fn backlog_run(
    settings: &Settings,
    params: &Params,
    w: usize,
    backlog: u64,
) -> anyhow::Result<Report> {
    let label = format!("bench scale backlog={backlog} W={w}");
    let db = BenchDb::create(&settings.database_url, params.keep).await?;
    let region = settings.regions[0].as_str();
    eprintln!("{label}: inserting {backlog} due rows");
    let send_at = Utc::now() - chrono::Duration::seconds(1);
    fill::due(
        &db.store,
        backlog,
        params.users,
        "file",
        region,
        send_at,
        |_| {},
    )
    .await?;
    let expected = workload::ids_after(&db.store, 0).await?;
    workload::settle(&db.store).await?;

    let dir = RunDir::new()?;
    let output = dir.output()?;
    let env = fleet_env(&db, params, &output);
    let mut lines = LineCounter::open(&output)?;
    let before = Snapshot::take(&db.store, &db.name).await?;
    let t0 = Instant::now();
    let mut fleet = Fleet::start(settings, w, &env)?;
    let m = expected.len() as u64;
    // When each tenth of the rows had been delivered (seen on the file
    // transport's output, every 20 ms).
    let mut marks: Vec<Duration> = Vec::with_capacity(11);
    let (wall, first) = wait_finished(
        &db.store,
        region,
        &mut fleet,
        &label,
        m,
        0,
        t0,
        params.timeout,
        || {
            let d = lines.lines();
            while marks.len() < 11 && d * 10 >= m * marks.len() as u64 && d > 0 {
                marks.push(t0.elapsed());
            }
            d
        },
    )
    .await?;
    let work = before.work_until(&Snapshot::take(&db.store, &db.name).await?, m);
    let peak = fleet.peak_rss_mib();
    fleet.stop(STOP_GRACE).await?;
    let delivered = read_lines(&output)?;
    let not_sent = workload::not_sent(&db.store, 0).await?;
    let (dupes, lost) = tally(&expected, delivered.iter().map(|l| l.id), &not_sent);
    db.finish().await?;

    let deciles = decile_rates(&marks, m);
    let first_s = first.map_or(0.0, |f| f.as_secs_f64());
    let mut report = Report {
        system: "herald",
        scenario: "scale",
        m,
        w,
        c: params.c,
        l_ms: params.l_ms,
        wall_s: round(wall.as_secs_f64(), 3),
        jobs_per_s: round(m as f64 / wall.as_secs_f64(), 1),
        dupes,
        lost,
        peak_rss_mib: round(peak, 1),
        ideal_ratio: None,
        extra: Default::default(),
    };
    report.set("phase", "backlog");
    report.set("first_delivery_s", round(first_s, 3));
    report.set(
        "decile_jobs_per_s",
        deciles.iter().map(|r| round(*r, 1)).collect::<Vec<_>>(),
    );
    if let (Some(first), Some(last)) = (deciles.first(), deciles.last()) {
        if *first > 0.0 {
            report.set("last_to_first_decile", round(last / first, 3));
        }
    }
    let (lo, hi) = deciles
        .iter()
        .fold((f64::MAX, 0.0_f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    if hi > 0.0 {
        report.set("min_to_max_decile", round(lo / hi, 3));
    }
    if let Some(cpu) = work.cpu_ms {
        report.set("db_cpu_ms_per_1000_rows", cpu);
    }
    if params.db_counters {
        report.set("db_per_1000_rows", serde_json::to_value(&work)?);
    }
    eprintln!(
        "{label}: {m} in {:.1} s; per tenth {:?}/s; dupes {dupes}, lost {lost}",
        wall.as_secs_f64(),
        deciles.iter().map(|r| r.round() as u64).collect::<Vec<_>>()
    );
    Ok(report)
}

/// Rows per second within each tenth, from the times the tenths were
/// reached (`marks[0]` is the first delivery, so start-up is left out).
fn decile_rates(marks: &[Duration], m: u64) -> Vec<f64> {
    let tenth = m as f64 / 10.0;
    marks
        .windows(2)
        .map(|w| {
            let s = (w[1] - w[0]).as_secs_f64();
            if s > 0.0 {
                tenth / s
            } else {
                0.0
            }
        })
        .collect()
}

/// The workers of a scale run: cleanup on with its production defaults
/// (retention, backlog gate), ticking every second.
fn fleet_env(db: &BenchDb, params: &Params, output: &std::path::Path) -> FleetEnv {
    FleetEnv {
        exe: params.worker_exe.clone(),
        database_url: db.url.expose().to_owned(),
        key_prefix: key_prefix(),
        concurrency: params.c,
        file_path: Some(output.to_owned()),
        file_latency_ms: params.l_ms,
        webhook_url: None,
        cleanup: vec![("HERALD_CLEANUP_INTERVAL_S", "1".into())],
        extra: Vec::new(),
    }
}

/// The candidate query on the full backlog, alone on one connection.
struct Probe {
    median_us: f64,
    /// `Handler_read_next` per call: index entries the read walked.
    read_next: f64,
}

async fn probe_candidates(db: &BenchDb, region: &str) -> anyhow::Result<Probe> {
    let store = Store::connect(&db.url, 1).await?;
    let regions = vec![region.to_owned()];
    // The session's counters, read twice first to learn what reading them
    // costs.
    let s0 = read_next(&store).await?;
    let s1 = read_next(&store).await?;
    let mut times = Vec::with_capacity(PROBES);
    for _ in 0..PROBES {
        let t = Instant::now();
        candidates::candidates(store.pool(), &regions, PROBE_LIMIT, None).await?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let s2 = read_next(&store).await?;
    store.close().await;
    times.sort_by(f64::total_cmp);
    let own = s1.saturating_sub(s0);
    Ok(Probe {
        median_us: percentile(&times, 0.5),
        read_next: s2.saturating_sub(s1).saturating_sub(own) as f64 / PROBES as f64,
    })
}

async fn read_next(store: &Store) -> anyhow::Result<u64> {
    let row = sqlx::raw_sql("SHOW SESSION STATUS LIKE 'Handler_read_next'")
        .fetch_one(store.pool())
        .await?;
    let v: String = row.try_get(1)?;
    Ok(v.trim().parse().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenths_are_timed_between_marks() {
        let marks: Vec<Duration> = (0..=10).map(|i| Duration::from_millis(100 * i)).collect();
        let r = decile_rates(&marks, 1000);
        assert_eq!(r.len(), 10);
        assert!(r.iter().all(|x| (x - 1000.0).abs() < 1e-6));
    }
}
