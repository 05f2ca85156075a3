//! Cleanup: a plain S1 run, then S1 again with a backlog of old `sent` rows
//! and cleanup enabled in every worker (interval 1 s, sent rows kept 1 h).
//! Reports both throughputs and the rows deleted per second, during the
//! drain and in a short tail after it (cleanup only runs while at most
//! `--cleanup-max-backlog` rows are due, so most deleting happens once the
//! queue is short; `--cleanup-max-backlog 1000000` makes it compete with the
//! whole drain).
//!
//! Without a cleanup task in the worker this still runs and reports 0
//! deleted.

use std::time::Duration;

use super::drain::{self, Extras};
use super::report::{round, Report};
use super::Params;
use crate::config::Settings;

pub async fn run(settings: &Settings, params: &Params, w: usize) -> anyhow::Result<Report> {
    eprintln!("bench cleanup W={w}: baseline run (cleanup off)");
    let base = drain::run(settings, params, w, &Extras::default()).await?;
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
    };
    eprintln!(
        "bench cleanup W={w}: run with {} old rows and cleanup on",
        params.old_rows
    );
    let with = drain::run(settings, params, w, &extras).await?;

    let mut report = with.report;
    let during = params.old_rows.saturating_sub(with.old_left_at_drain);
    let after = with.old_left_at_drain.saturating_sub(with.old_left_at_end);
    let per_s = |n: u64, s: f64| if s > 0.0 { round(n as f64 / s, 1) } else { 0.0 };
    report.set("baseline_jobs_per_s", base.report.jobs_per_s);
    report.set(
        "throughput_ratio",
        round(report.jobs_per_s / base.report.jobs_per_s, 3),
    );
    report.set("old_rows", params.old_rows);
    report.set("cleanup_max_backlog", params.cleanup_max_backlog);
    report.set("deleted_during_drain", during);
    report.set("deleted_per_s_during_drain", per_s(during, report.wall_s));
    report.set("tail_s", params.seconds);
    report.set("deleted_in_tail", after);
    report.set("deleted_per_s_in_tail", per_s(after, tail.as_secs_f64()));
    report.dupes += base.report.dupes;
    report.lost += base.report.lost;
    report.peak_rss_mib = report.peak_rss_mib.max(base.report.peak_rss_mib);
    Ok(report)
}
