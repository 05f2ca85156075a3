//! Fleet statistics: once per window, one instance logs the whole table's
//! picture.
//!
//! Every instance wakes once per window and asks
//! [`Redlock::once_per_window`](crate::lock::Redlock::once_per_window) for
//! `stats:{window index}`. The key is never released and expires with the
//! window, so exactly one instance per window wins and logs, and the fleet's
//! size does not multiply the counting queries.
//!
//! Instances wake a little after the window starts (10-20 % into it), never
//! at its edge: the index the winner logs is computed on either side of the
//! election and must agree, which it always does away from the boundary.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use rand::Rng;
use sqlx::MySqlPool;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::lock::Redlock;
use crate::metrics::Metrics;
use crate::store::status::{self, StatusReport};
use crate::store::Store;

/// Lock name; the key is `{prefix}stats:{window index}`.
pub const LOCK_NAME: &str = "stats";

/// What the winner of a window logs.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetStats {
    /// `unix_time / window`, the same index as the lock key's.
    pub window: u64,
    pub report: StatusReport,
    /// Rows that became `sent` during the previous (complete) window.
    pub sent_last_window: u64,
    /// Rows that became `failed` during the previous window.
    pub failed_last_window: u64,
}

fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn index_at(t: Duration, window: Duration) -> u64 {
    (t.as_millis() / window.as_millis().max(1)) as u64
}

/// Runs until `shutdown`.
pub async fn run(
    store: Store,
    redlock: Redlock,
    metrics: Arc<Metrics>,
    window: Duration,
    shutdown: CancellationToken,
) {
    info!(window_s = window.as_secs(), "fleet stats scheduled");
    loop {
        let now = since_epoch();
        let index = index_at(now, window);
        let offset = window / 10 + rand::rng().random_range(Duration::ZERO..=window / 10);
        let start = Duration::from_millis((window.as_millis() * u128::from(index)) as u64);
        let mut wake = start + offset;
        if wake <= now {
            wake += window;
        }
        tokio::select! {
            _ = tokio::time::sleep(wake - now) => {}
            _ = shutdown.cancelled() => return,
        }
        let before = index_at(since_epoch(), window);
        let won = redlock.once_per_window(LOCK_NAME, window).await;
        let after = index_at(since_epoch(), window);
        if before != after {
            // Cannot tell which window's key was asked for; skip rather
            // than risk logging a window another instance also logs.
            debug!(before, after, "stats election straddled a window boundary");
            continue;
        }
        match won {
            Ok(true) => match collect(store.pool(), before, window).await {
                Ok(stats) => {
                    metrics.stats_windows.inc();
                    metrics.due_backlog.set(stats.report.due_backlog as i64);
                    log(&stats);
                }
                Err(e) => warn!(window = before, error = %e, "fleet stats: query failed"),
            },
            Ok(false) => debug!(
                window = before,
                "fleet stats: another instance has this window"
            ),
            Err(e) => warn!(window = before, error = %e, "fleet stats: election failed"),
        }
    }
}

fn at_millis(ms: u128) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms as i64).unwrap_or_default()
}

/// Counts for window `index` (deliveries: during the window before it).
pub async fn collect(
    pool: &MySqlPool,
    index: u64,
    window: Duration,
) -> Result<FleetStats, sqlx::Error> {
    let report = status::report(pool).await?;
    let w = window.as_millis();
    let from = at_millis(w * u128::from(index.saturating_sub(1)));
    let to = at_millis(w * u128::from(index));
    // A range of ix_notifications_finished (finished_at): one window's rows.
    let finished_between = |status: &'static str| {
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM notifications \
             WHERE status = ? AND finished_at >= ? AND finished_at < ?",
        )
        .bind(status)
        .bind(from.naive_utc())
        .bind(to.naive_utc())
        .fetch_one(pool)
    };
    let sent_last_window = finished_between("sent").await?.max(0) as u64;
    let failed_last_window = finished_between("failed").await?.max(0) as u64;
    Ok(FleetStats {
        window: index,
        report,
        sent_last_window,
        failed_last_window,
    })
}

fn log(s: &FleetStats) {
    let n = |status: &str| s.report.counts.get(status).copied().unwrap_or(0);
    info!(
        window = s.window,
        pending = n("pending"),
        sending = n("sending"),
        sent = n("sent"),
        failed = n("failed"),
        expired = n("expired"),
        cancelled = n("cancelled"),
        due_backlog = s.report.due_backlog,
        oldest_due_lag_s = s.report.oldest_due_lag_s.unwrap_or(0.0),
        sent_last_window = s.sent_last_window,
        failed_last_window = s.failed_last_window,
        "fleet stats"
    );
}
