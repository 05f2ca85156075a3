//! What `herald status` shows beside the counts during an outage: rows
//! waiting for a retry and the latest error of each channel.
//!
//! During a receiver outage the counts look healthy (`pending 993, due
//! backlog 3`): the failing rows sit in `pending` with a `due_at` in the
//! future. Both answers here come from bounded walks of indexes, never from
//! a scan of the table, because `status` must stay cheap on a table of
//! millions of rows:
//!
//! * rows waiting for a retry (`pending`, `attempts > 0`, due in the
//!   future): among the [`RETRY_WINDOW`] pending rows of each region due
//!   soonest, walked along `ix_notifications_due`. Retries are due within
//!   the retry schedule (hours), rows scheduled far ahead come after them,
//!   so the window holds the retries unless the backlog is huge; then the
//!   count is a lower bound and says so.
//! * the latest errors: per channel, the newest `last_error` of those
//!   retry-waiting rows (by `updated_at`, which the retry write sets) and of
//!   the [`FAILED_WINDOW`] most recently finished rows (walked backwards
//!   along `ix_notifications_finished`) that failed.

use serde::Serialize;
use sqlx::{MySqlPool, Row};

/// Pending rows (per region, due soonest first) examined for retries.
pub const RETRY_WINDOW: u64 = 10_000;
/// Most recently finished rows examined for failures.
pub const FAILED_WINDOW: u64 = 1_000;

/// Rows waiting for a retry and the latest errors.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RetryReport {
    /// Pending rows that were attempted before and are due in the future.
    pub retry_waiting: u64,
    /// True when a region's window was full: `retry_waiting` is then a
    /// lower bound.
    pub retry_waiting_is_lower_bound: bool,
    /// One entry per channel with an error, newest first.
    pub latest_errors: Vec<ChannelError>,
}

/// The newest error seen on one channel.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChannelError {
    pub channel: String,
    /// `pending` (waiting for a retry) or `failed`.
    pub status: String,
    /// Seconds since the row was written with this error.
    pub age_s: i64,
    pub error: String,
    /// Rows of this channel and status in the examined windows.
    pub rows: u64,
}

/// Retry-waiting rows of `regions` and the latest error of each channel.
pub async fn report(pool: &MySqlPool, regions: &[String]) -> Result<RetryReport, sqlx::Error> {
    let mut out = RetryReport::default();
    let mut errors: Vec<ChannelError> = Vec::new();
    for region in regions {
        // One walk of the window: per channel its retry-waiting rows and
        // its newest error; `examined` is the window's size.
        let rows = sqlx::query(
            "SELECT channel, waiting, examined, age_s, last_error FROM ( \
               SELECT channel, last_error, \
                 TIMESTAMPDIFF(SECOND, updated_at, UTC_TIMESTAMP(6)) AS age_s, \
                 CAST(SUM(attempts > 0) OVER (PARTITION BY channel) AS SIGNED) AS waiting, \
                 CAST(COUNT(*) OVER () AS SIGNED) AS examined, \
                 ROW_NUMBER() OVER (PARTITION BY channel \
                   ORDER BY attempts > 0 AND last_error IS NOT NULL DESC, updated_at DESC) AS rn \
               FROM (SELECT channel, updated_at, last_error, attempts \
                     FROM notifications FORCE INDEX (ix_notifications_due) \
                     WHERE region = ? AND status = 'pending' AND due_at > UTC_TIMESTAMP(6) \
                     ORDER BY due_at LIMIT ?) w) x \
             WHERE rn = 1",
        )
        .bind(region)
        .bind(RETRY_WINDOW)
        .fetch_all(pool)
        .await?;
        for r in rows {
            let waiting = r.try_get::<i64, _>("waiting")?.max(0) as u64;
            let examined = r.try_get::<i64, _>("examined")?.max(0) as u64;
            out.retry_waiting += waiting;
            out.retry_waiting_is_lower_bound |= examined >= RETRY_WINDOW;
            let error: Option<String> = r.try_get("last_error")?;
            if let (true, Some(error)) = (waiting > 0, error) {
                merge(
                    &mut errors,
                    ChannelError {
                        channel: r.try_get("channel")?,
                        status: "pending".into(),
                        age_s: r.try_get::<Option<i64>, _>("age_s")?.unwrap_or(0),
                        error,
                        rows: waiting,
                    },
                );
            }
        }
    }
    let rows = sqlx::query(
        "SELECT channel, age_s, last_error, n FROM ( \
           SELECT channel, TIMESTAMPDIFF(SECOND, finished_at, UTC_TIMESTAMP(6)) AS age_s, last_error, \
             ROW_NUMBER() OVER (PARTITION BY channel ORDER BY finished_at DESC) AS rn, \
             COUNT(*) OVER (PARTITION BY channel) AS n \
           FROM (SELECT channel, finished_at, last_error, status \
                 FROM notifications FORCE INDEX (ix_notifications_finished) \
                 WHERE finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT ?) w \
           WHERE status = 'failed' AND last_error IS NOT NULL) x \
         WHERE rn = 1",
    )
    .bind(FAILED_WINDOW)
    .fetch_all(pool)
    .await?;
    for r in rows {
        merge(&mut errors, decode(&r, "failed")?);
    }
    errors.sort_by(|a, b| a.age_s.cmp(&b.age_s).then(a.channel.cmp(&b.channel)));
    out.latest_errors = errors;
    Ok(out)
}

fn decode(r: &sqlx::mysql::MySqlRow, status: &str) -> Result<ChannelError, sqlx::Error> {
    Ok(ChannelError {
        channel: r.try_get("channel")?,
        status: status.to_owned(),
        // NULL only for a zero date another service wrote.
        age_s: r.try_get::<Option<i64>, _>("age_s")?.unwrap_or(0),
        error: r.try_get("last_error")?,
        rows: r.try_get::<i64, _>("n")?.max(0) as u64,
    })
}

/// Keeps the newest error per channel (across regions and statuses).
fn merge(errors: &mut Vec<ChannelError>, e: ChannelError) {
    match errors.iter_mut().find(|x| x.channel == e.channel) {
        Some(x) if e.age_s < x.age_s => *x = e,
        Some(_) => {}
        None => errors.push(e),
    }
}
