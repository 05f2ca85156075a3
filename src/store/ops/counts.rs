//! The figures of the console's dashboard and `GET /api/v1/counts`: the
//! status report, deliveries per minute over the last hour and the latest
//! failures. Each query is bounded by an index (`ix_notifications_finished`
//! for anything about finished rows), so the page stays cheap on big
//! tables.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{MySqlPool, Row};

use crate::store::status::{self, StatusReport};

/// Everything the dashboard shows.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Overview {
    #[serde(flatten)]
    pub status: StatusReport,
    /// Rows recorded `sent` in each of the last 60 minutes, oldest first
    /// (index 59 is the current minute).
    pub sent_per_minute: Vec<u64>,
    /// The most recent failures, newest first.
    pub latest_failures: Vec<Failure>,
}

/// One failed row, as the dashboard lists it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Failure {
    pub id: u64,
    pub channel: String,
    pub user_id: u64,
    pub finished_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

pub async fn overview(pool: &MySqlPool, failures: u32) -> Result<Overview, sqlx::Error> {
    let status = status::report(pool).await?;
    Ok(Overview {
        status,
        sent_per_minute: sent_per_minute(pool).await?,
        latest_failures: latest_failures(pool, failures).await?,
    })
}

/// Rows finished `sent` per minute over the last hour (60 buckets).
pub async fn sent_per_minute(pool: &MySqlPool) -> Result<Vec<u64>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT CAST(TIMESTAMPDIFF(MINUTE, finished_at, UTC_TIMESTAMP(6)) AS SIGNED) AS ago, \
         CAST(COUNT(*) AS SIGNED) AS n FROM notifications \
         WHERE finished_at > UTC_TIMESTAMP(6) - INTERVAL 60 MINUTE AND status = 'sent' \
         GROUP BY ago",
    )
    .fetch_all(pool)
    .await?;
    let mut out = vec![0u64; 60];
    for r in rows {
        let ago: i64 = r.try_get("ago")?;
        let n: i64 = r.try_get("n")?;
        if (0..60).contains(&ago) {
            out[59 - ago as usize] += n.max(0) as u64;
        }
    }
    Ok(out)
}

/// The `limit` most recently finished `failed` rows.
pub async fn latest_failures(pool: &MySqlPool, limit: u32) -> Result<Vec<Failure>, sqlx::Error> {
    // Walks the finished index backwards; bounded to the last week so a
    // table without recent failures is not scanned whole.
    let rows = sqlx::query(
        "SELECT id, channel, user_id, finished_at, last_error FROM notifications \
         WHERE finished_at > UTC_TIMESTAMP(6) - INTERVAL 7 DAY AND status = 'failed' \
         ORDER BY finished_at DESC LIMIT ?",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Failure {
                id: r.try_get("id")?,
                channel: r.try_get("channel")?,
                user_id: r.try_get("user_id")?,
                finished_at: r.try_get("finished_at").ok().flatten(),
                last_error: r.try_get("last_error")?,
            })
        })
        .collect()
}
