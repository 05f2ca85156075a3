//! `herald bench soak`: a steady rate for a long time, with cleanup
//! deleting behind it.
//!
//! Leaks and slow drifts (a cache that only grows, an index that fragments,
//! a backlog that creeps up) do not show in a 2-second drain. The soak
//! enqueues `--rate` rows per second, each due at once, for `--duration`
//! seconds while W workers deliver them and cleanup (every second, sent
//! rows kept one minute) deletes them again, then reports per window of
//! `--window-s` seconds: delivery lag percentiles (of the rows enqueued in
//! that window) and each worker's resident set at the window's end; and
//! over the whole run: lost and duplicated rows and how much the workers'
//! memory grew over the second half.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;

use super::delivered::{percentile, read_lines, LineCounter};
use super::drain::{key_prefix, wait_finished, RunDir, STOP_GRACE};
use super::fleet::{Fleet, FleetEnv};
use super::lag::Steady;
use super::report::{round, Report};
use super::workload::{self, BenchDb};
use super::Params;
use crate::config::Settings;

/// Time the workers get to connect before the first row is enqueued.
const WARM_UP: Duration = Duration::from_secs(1);

/// One window's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    /// 1-based.
    pub window: usize,
    /// Rows enqueued in this window.
    pub rows: usize,
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
    pub lag_max_ms: f64,
    /// Each worker's VmRSS at the window's end.
    pub rss_mib: Vec<f64>,
}

pub async fn run(settings: &Settings, params: &Params, w: usize) -> anyhow::Result<Report> {
    let label = format!("bench soak W={w}");
    let window = Duration::from_secs(params.window_s.max(1));
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
        webhook_url: None,
        cleanup: vec![
            ("HERALD_CLEANUP_INTERVAL_S", "1".into()),
            ("HERALD_RETENTION_SENT", "1m".into()),
        ],
        extra: Vec::new(),
    };
    let mut fleet = Fleet::start(settings, w, &env)?;
    tokio::time::sleep(WARM_UP).await;
    fleet.check_alive()?;
    eprintln!(
        "{label}: {}/s for {} s, windows of {} s, cleanup on (sent rows kept 1 min)",
        params.rate,
        params.seconds,
        window.as_secs()
    );

    let t0 = Instant::now();
    let t0_wall = Utc::now();
    let steady = Steady {
        region,
        users: params.users,
        rate: params.rate,
        seconds: params.seconds,
        first: 0,
    };
    // VmRSS of each worker at the end of each window.
    let mut rss: Vec<Vec<f64>> = Vec::new();
    let total = steady
        .enqueue(&db.store, &mut fleet, &label, |fleet| {
            if t0.elapsed() >= window * (rss.len() as u32 + 1) {
                let now = fleet.rss_mib();
                eprintln!(
                    "{label}: window {} ends, worker RSS {now:?} MiB",
                    rss.len() + 1
                );
                rss.push(now);
            }
        })
        .await?;
    let mut lines = LineCounter::open(&output)?;
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
    let windows_n = (params.seconds as f64 / window.as_secs_f64())
        .ceil()
        .max(1.0) as usize;
    while rss.len() < windows_n {
        rss.push(fleet.rss_mib());
    }
    let peak = fleet.peak_rss_mib();
    fleet.stop(STOP_GRACE).await?;

    let delivered = read_lines(&output)?;
    let distinct: HashSet<u64> = delivered.iter().map(|l| l.id).collect();
    let dupes = (delivered.len() - distinct.len()) as u64;
    // Cleanup deletes delivered rows as the soak goes, so the rows left
    // cannot list what was enqueued: every row of this fresh database is
    // one the soak enqueued, so a row is lost when fewer distinct ids were
    // delivered than enqueued, or when a row left is not `sent`.
    let not_sent = workload::not_sent(&db.store, 0).await?.len() as u64;
    let lost = total.saturating_sub(distinct.len() as u64) + not_sent;
    let left = workload::count_up_to(&db.store, u64::MAX).await?;
    db.finish().await?;

    let mut by_window: Vec<Vec<f64>> = vec![Vec::new(); windows_n];
    for l in &delivered {
        let at = (l.send_at - t0_wall).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
        let k = ((at / window.as_secs_f64()) as usize).min(windows_n - 1);
        by_window[k].push((l.at_us as f64 - l.send_at.timestamp_micros() as f64) / 1000.0);
    }
    let windows: Vec<Window> = by_window
        .into_iter()
        .enumerate()
        .map(|(i, mut lags)| {
            lags.sort_by(f64::total_cmp);
            Window {
                window: i + 1,
                rows: lags.len(),
                lag_p50_ms: round(percentile(&lags, 0.5), 1),
                lag_p99_ms: round(percentile(&lags, 0.99), 1),
                lag_max_ms: round(percentile(&lags, 1.0), 1),
                rss_mib: rss[i].iter().map(|r| round(*r, 2)).collect(),
            }
        })
        .collect();
    let worst = windows.iter().map(|w| w.lag_p99_ms).fold(0.0, f64::max);
    let growth = rss_growth(&rss);
    let mut report = Report {
        system: "herald",
        scenario: "soak",
        m: total,
        w,
        c: params.c,
        l_ms: params.l_ms,
        wall_s: round(wall.as_secs_f64(), 3),
        jobs_per_s: round(total as f64 / wall.as_secs_f64(), 1),
        dupes,
        lost,
        peak_rss_mib: round(peak, 1),
        ideal_ratio: None,
        extra: Default::default(),
    };
    report.set("rate", params.rate);
    report.set("duration_s", params.seconds);
    report.set("window_s", window.as_secs());
    report.set("lag_p99_ms_worst_window", worst);
    report.set("rss_growth_second_half_mib", round(growth, 2));
    report.set("rows_deleted_by_cleanup", total.saturating_sub(left));
    report.set("windows", serde_json::to_value(&windows)?);
    eprintln!(
        "{label}: {total} rows; worst window lag p99 {worst:.1} ms; RSS growth over the second half {growth:.2} MiB; dupes {dupes}, lost {lost}"
    );
    Ok(report)
}

/// The largest growth of one worker's resident set between the middle
/// window's end and the last window's end (the first half is warm-up:
/// pools, caches and allocator arenas filling).
fn rss_growth(rss: &[Vec<f64>]) -> f64 {
    let (Some(last), Some(mid)) = (
        rss.last(),
        rss.get(rss.len() / 2 - usize::from(rss.len() > 1)),
    ) else {
        return 0.0;
    };
    last.iter().zip(mid).map(|(a, b)| a - b).fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_is_measured_over_the_second_half() {
        // Ten windows: from the end of the fifth to the end of the tenth.
        let rss: Vec<Vec<f64>> = (0..10).map(|i| vec![10.0 + i as f64, 20.0]).collect();
        assert_eq!(rss_growth(&rss), 5.0);
        assert_eq!(rss_growth(&[vec![3.0]]), 0.0);
    }
}
