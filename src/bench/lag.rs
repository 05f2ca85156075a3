//! Lag: enqueue at a steady rate R/s for T s while W workers run (rows due
//! at once), then report delivered-at minus due-at percentiles.

use std::time::{Duration, Instant};

use chrono::Utc;

use super::delivered::{percentile, tally};
use super::drain::{key_prefix, lags_ms, wait_finished, RunDir, STOP_GRACE};
use super::fleet::{Fleet, FleetEnv};
use super::report::{round, Report};
use super::workload::{self, BenchDb};
use super::Params;
use crate::config::Settings;

/// Time the workers get to connect before the first row is enqueued.
const WARM_UP: Duration = Duration::from_secs(1);
/// Enqueue tick: rows due so far are inserted in one statement per tick.
const TICK: Duration = Duration::from_millis(10);

pub async fn run(settings: &Settings, params: &Params, w: usize) -> anyhow::Result<Report> {
    let label = format!("bench lag W={w}");
    let db = BenchDb::create(&settings.database_url, params.keep).await?;
    let region = settings.regions[0].as_str();
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
    let total = params.rate * params.seconds;
    let mut fleet = Fleet::start(settings, w, &env)?;
    tokio::time::sleep(WARM_UP).await;
    fleet.check_alive()?;
    eprintln!(
        "{label}: enqueueing {}/s for {} s ({total} rows)",
        params.rate, params.seconds
    );

    let t0 = Instant::now();
    let steady = Steady {
        region,
        users: params.users,
        rate: params.rate,
        seconds: params.seconds,
        first: 0,
    };
    steady
        .enqueue(&db.store, &mut fleet, &label, |_| {})
        .await?;
    let mut lines = super::delivered::LineCounter::open(&output)?;
    let (wall, _) = wait_finished(
        &db.store,
        region,
        &mut fleet,
        &label,
        total,
        0,
        t0,
        params.timeout + Duration::from_secs(params.seconds),
        || lines.lines(),
    )
    .await?;
    let peak = fleet.peak_rss_mib();
    fleet.stop(STOP_GRACE).await?;

    let expected = workload::ids_after(&db.store, 0).await?;
    let not_sent = workload::not_sent(&db.store, 0).await?;
    let (ids, lags) = lags_ms(&output)?;
    let (dupes, lost) = tally(&expected, ids, &not_sent);
    db.finish().await?;

    let wall_s = wall.as_secs_f64();
    let (p50, p99, max) = (
        percentile(&lags, 0.50),
        percentile(&lags, 0.99),
        percentile(&lags, 1.0),
    );
    eprintln!("{label}: lag p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms; dupes {dupes}, lost {lost}");
    let mut report = Report {
        system: "herald",
        scenario: "lag",
        m: total,
        w,
        c: params.c,
        l_ms: params.l_ms,
        wall_s: round(wall_s, 3),
        jobs_per_s: round(total as f64 / wall_s, 1),
        dupes,
        lost,
        peak_rss_mib: round(peak, 1),
        ideal_ratio: None,
        extra: Default::default(),
    };
    report.set("rate", params.rate);
    report.set("seconds", params.seconds);
    report.set("p50_ms", round(p50, 1));
    report.set("p99_ms", round(p99, 1));
    report.set("max_ms", round(max, 1));
    Ok(report)
}

/// Rows enqueued at a steady rate, each due when it is inserted.
#[derive(Debug, Clone, Copy)]
pub struct Steady<'a> {
    pub region: &'a str,
    pub users: u64,
    pub rate: u64,
    pub seconds: u64,
    /// Number of the first row (its payload and user).
    pub first: u64,
}

impl Steady<'_> {
    /// Enqueues `rate` rows per second for `seconds`: every tick, the rows
    /// due by then in one statement. Checks the workers and prints progress
    /// once a second, calling `each_second` with the fleet then. Returns how
    /// many rows it inserted.
    pub async fn enqueue(
        &self,
        store: &crate::store::Store,
        fleet: &mut Fleet,
        label: &str,
        mut each_second: impl FnMut(&Fleet),
    ) -> anyhow::Result<u64> {
        let total = self.rate * self.seconds;
        let t0 = Instant::now();
        let mut inserted = 0u64;
        let mut next_report = Instant::now() + Duration::from_secs(1);
        while inserted < total {
            let due = ((t0.elapsed().as_secs_f64() * self.rate as f64) as u64).min(total);
            if due > inserted {
                let n = due - inserted;
                workload::enqueue(
                    store,
                    self.first + inserted,
                    n,
                    self.users,
                    "file",
                    self.region,
                    Utc::now(),
                )
                .await?;
                inserted = due;
            }
            if Instant::now() >= next_report {
                fleet.check_alive()?;
                each_second(fleet);
                eprintln!(
                    "{label}: enqueued {inserted}/{total}, {:.1} s",
                    t0.elapsed().as_secs_f64()
                );
                next_report += Duration::from_secs(1);
            }
            tokio::time::sleep(TICK).await;
        }
        Ok(inserted)
    }
}
