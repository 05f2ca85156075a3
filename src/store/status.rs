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
    /// Seconds since the oldest due row with a valid `due_at` became due;
    /// `None` when there is none.
    pub oldest_due_lag_s: Option<f64>,
    /// Live rows (pending or sending) whose `due_at` is a zero or invalid
    /// date, which another service can write when its `sql_mode` allows.
    /// They count as due (the database compares them as earliest of all)
    /// but have no lag to report, so they are counted here instead of
    /// hiding the lag of the others.
    pub invalid_due_at: u64,
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
    due_backlog_on(&mut conn, None, limit).await
}

/// [`due_backlog`] on a given connection, for callers that already hold one
/// (cleanup must not need a second connection from a pool of one), counting
/// only `regions` when given: cleanup yields to the senders it competes
/// with, and a backlog in a region no local worker serves is not theirs.
pub async fn due_backlog_on(
    conn: &mut MySqlConnection,
    regions: Option<&[String]>,
    limit: Option<u64>,
) -> Result<u64, sqlx::Error> {
    let regions = match regions {
        Some(r) => r.to_vec(),
        None => self::regions(&mut *conn).await?,
    };
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
    // The lag is computed by the database: a zero date cannot be decoded
    // as a time, and one such row must not hide the lag of the others.
    let (now, lag_us): (DateTime<Utc>, Option<i64>) = sqlx::query_as(
        "SELECT UTC_TIMESTAMP(6), TIMESTAMPDIFF(MICROSECOND, MIN(due_at), UTC_TIMESTAMP(6)) \
         FROM notifications \
         WHERE status IN ('pending', 'sending') AND due_at <= UTC_TIMESTAMP(6) \
         AND due_at >= '1000-01-01' AND MONTH(due_at) > 0 AND DAYOFMONTH(due_at) > 0",
    )
    .fetch_one(pool)
    .await?;
    let invalid_due_at: u64 = sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS UNSIGNED) FROM notifications \
         WHERE status IN ('pending', 'sending') AND due_at < '1000-01-01' \
         OR status IN ('pending', 'sending') AND (MONTH(due_at) = 0 OR DAYOFMONTH(due_at) = 0)",
    )
    .fetch_one(pool)
    .await?;
    Ok(StatusReport {
        counts,
        due_backlog,
        oldest_due_lag_s: lag_us.map(|us| us as f64 / 1e6),
        invalid_due_at,
        at: now,
    })
}
