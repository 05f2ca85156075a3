//! Cleanup: a plain S1 run, then S1 again with a backlog of old `sent` rows
//! and cleanup enabled in every worker (interval 1 s, sent rows kept 1 h).
//! Reports both throughputs and the rows deleted per second, during the
//! drain and in a short tail after it (cleanup only runs while at most
//! `--cleanup-max-backlog` rows are due, so most deleting happens once the
//! queue is short; `--cleanup-max-backlog 1000000` makes it compete with the
//! whole drain).
//!
//! S1 alone swings by 10–20 % between consecutive runs on a busy 2-core
//! machine, as much as the effect being measured. So the two runs alternate
//! [`ROUNDS`] times and the ratio reported is the median of the pairs' ratios.

use std::time::Duration;

use super::drain::{self, Extras};
use super::report::{round, Report};
use super::Params;
use crate::config::Settings;

/// Baseline/cleanup pairs per invocation.
pub const ROUNDS: usize = 3;

pub async fn run(settings: &Settings, params: &Params, w: usize) -> anyhow::Result<Report> {
    let tail = Duration::from_secs(params.seconds);
    let extras = Extras {
        old_rows: params.old_rows,
        cleanup: vec![
            ("HERALD_CLEANUP_INTERVAL_S", "1".into()),
            ("HERALD_RETENTION_SENT", "1h".into()),
            (
                "HERALD_CLEANUP_MAX_BACKLOG",
                params.cleanup_max_backlog.to_string(),
            ),
        ],
        tail,
        from_start: true,
    };
    let baseline = Extras {
        from_start: true,
        ..Extras::default()
    };
    let mut pairs = Vec::with_capacity(ROUNDS);
    for round_no in 1..=ROUNDS {
        eprintln!("bench cleanup W={w}: round {round_no}/{ROUNDS}, baseline run (cleanup off)");
        let base = drain::run(settings, params, w, &baseline).await?;
        eprintln!(
            "bench cleanup W={w}: round {round_no}/{ROUNDS}, run with {} old rows and cleanup on",
            params.old_rows
        );
        let with = drain::run(settings, params, w, &extras).await?;
        pairs.push((base.report, with));
    }
    let ratio_of = |(b, w): &(Report, drain::Outcome)| w.report.jobs_per_s / b.jobs_per_s;
    pairs.sort_by(|a, b| ratio_of(a).total_cmp(&ratio_of(b)));
    let ratios: Vec<f64> = pairs.iter().map(|p| round(ratio_of(p), 3)).collect();
    let dupes: u64 = pairs.iter().map(|(b, w)| b.dupes + w.report.dupes).sum();
    let lost: u64 = pairs.iter().map(|(b, w)| b.lost + w.report.lost).sum();
    let rss = pairs
        .iter()
        .map(|(b, w)| b.peak_rss_mib.max(w.report.peak_rss_mib))
        .fold(0.0, f64::max);
    let (base, with) = pairs.swap_remove(ROUNDS / 2);

    let mut report = with.report;
    let during = params.old_rows.saturating_sub(with.old_left_at_drain);
    let after = with.old_left_at_drain.saturating_sub(with.old_left_at_end);
    let per_s = |n: u64, s: f64| if s > 0.0 { round(n as f64 / s, 1) } else { 0.0 };
    report.set("baseline_jobs_per_s", base.jobs_per_s);
    report.set(
        "throughput_ratio",
        round(report.jobs_per_s / base.jobs_per_s, 3),
    );
    report.set("round_ratios", ratios);
    report.set("old_rows", params.old_rows);
    report.set("cleanup_max_backlog", params.cleanup_max_backlog);
    report.set("deleted_during_drain", during);
    report.set("deleted_per_s_during_drain", per_s(during, report.wall_s));
    report.set("tail_s", params.seconds);
    report.set("deleted_in_tail", after);
    report.set("deleted_per_s_in_tail", per_s(after, tail.as_secs_f64()));
    report.dupes = dupes;
    report.lost = lost;
    report.peak_rss_mib = rss;
    Ok(report)
}
