//! Counts for `herald status`, the stats task and the cleanup gate.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{MySqlConnection, MySqlExecutor, MySqlPool, QueryBuilder};

use crate::notification::Status;

/// A snapshot of the table.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatusReport {
    /// Rows per status; every status is present, zero included.
    pub counts: BTreeMap<String, u64>,
    /// Rows a worker could pick up now: pending and due, or sending with an
    /// expired lease.
    pub due_backlog: u64,
    /// Seconds since the oldest due row became due; `None` with no backlog.
    pub oldest_due_lag_s: Option<f64>,
    pub at: DateTime<Utc>,
}

/// Regions present in the table. Served from the first column of the due
/// index (a loose index scan), so it stays cheap on big tables.
pub async fn regions<'e>(db: impl MySqlExecutor<'e>) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT region FROM notifications GROUP BY region")
        .fetch_all(db)
        .await
}

/// Due rows, counting at most `limit` per (region, status) part: the cleanup
/// gate only needs to know whether the backlog is above its threshold, and a
/// bounded count keeps that check cheap however large the backlog grows.
pub async fn due_backlog(pool: &MySqlPool, limit: Option<u64>) -> Result<u64, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    due_backlog_on(&mut conn, limit).await
}

/// [`due_backlog`] on a given connection, for callers that already hold one
/// (cleanup must not need a second connection from a pool of one).
pub async fn due_backlog_on(
    conn: &mut MySqlConnection,
    limit: Option<u64>,
) -> Result<u64, sqlx::Error> {
    let regions = regions(&mut *conn).await?;
    if regions.is_empty() {
        return Ok(0);
    }
    let mut qb = QueryBuilder::new("SELECT CAST(COALESCE(SUM(n), 0) AS UNSIGNED) FROM (");
    let mut first = true;
    for region in &regions {
        for status in ["pending", "sending"] {
            if !first {
                qb.push(" UNION ALL ");
            }
            first = false;
            qb.push("SELECT COUNT(*) AS n FROM (SELECT 1 FROM notifications WHERE region = ")
                .push_bind(region)
                .push(" AND status = ")
                .push_bind(status)
                .push(" AND due_at <= UTC_TIMESTAMP(6)");
            if let Some(limit) = limit {
                qb.push(" LIMIT ").push_bind(limit);
            }
            qb.push(") t");
        }
    }
    qb.push(") parts");
    let total: u64 = qb.build_query_scalar().fetch_one(&mut *conn).await?;
    Ok(match limit {
        Some(limit) => total.min(limit),
        None => total,
    })
}

pub async fn report(pool: &MySqlPool) -> Result<StatusReport, sqlx::Error> {
    let mut counts: BTreeMap<String, u64> = Status::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, COUNT(*) FROM notifications GROUP BY status")
            .fetch_all(pool)
            .await?;
    for (status, n) in rows {
        counts.insert(status, n as u64);
    }
    let due_backlog = due_backlog(pool, None).await?;
    let (now, oldest): (DateTime<Utc>, Option<DateTime<Utc>>) = sqlx::query_as(
        "SELECT UTC_TIMESTAMP(6), MIN(due_at) FROM notifications \
         WHERE status IN ('pending', 'sending') AND due_at <= UTC_TIMESTAMP(6)",
    )
    .fetch_one(pool)
    .await?;
    let oldest_due_lag_s =
        oldest.map(|t| (now - t).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6);
    Ok(StatusReport {
        counts,
        due_backlog,
        oldest_due_lag_s,
        at: now,
    })
}
