//! Cleanup statements: finished rows past their retention, deleted by
//! primary key in bounded batches.
//!
//! Every statement here names a finished status explicitly, so no code path
//! can reach a `pending` or `sending` row, and every read walks
//! `ix_notifications_finished (status, finished_at, id)` from its oldest end,
//! so a batch costs the same on a table of a thousand rows or a billion.
//! Deletes go by id (`WHERE id IN (…)`) rather than by a range condition, so
//! each one locks exactly the rows it removes and nothing around them that a
//! sender might be waiting for.

use std::time::Duration;

use sqlx::{MySqlConnection, QueryBuilder};

/// How long finished rows are kept, per status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub sent: Duration,
    pub failed: Duration,
    /// Expired and cancelled rows: both were never delivered.
    pub expired: Duration,
}

/// The statuses cleanup may delete, and nothing else.
pub const FINISHED: [&str; 4] = ["sent", "failed", "expired", "cancelled"];

impl Retention {
    /// Retention of one of [`FINISHED`].
    pub fn of(&self, status: &str) -> Duration {
        match status {
            "sent" => self.sent,
            "failed" => self.failed,
            _ => self.expired,
        }
    }
}

/// Rows that would be deleted now, per status (for `--dry-run`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Eligible {
    pub by_status: Vec<(&'static str, u64)>,
}

impl Eligible {
    pub fn total(&self) -> u64 {
        self.by_status.iter().map(|(_, n)| n).sum()
    }
}

fn push_older_than<'a>(
    qb: &mut QueryBuilder<'a, sqlx::MySql>,
    status: &'static str,
    retention: Duration,
) {
    qb.push("status = ")
        .push_bind(status)
        .push(" AND finished_at < UTC_TIMESTAMP(6) - INTERVAL ")
        .push_bind(retention.as_secs())
        .push(" SECOND");
}

/// Ids of at most `limit` finished rows past their retention, the oldest of
/// each status first. Each status is its own index range with its own
/// `LIMIT`, so the statement reads at most `4 × limit` index entries.
pub async fn eligible_ids(
    conn: &mut MySqlConnection,
    retention: &Retention,
    limit: u64,
) -> Result<Vec<u64>, sqlx::Error> {
    let mut qb = QueryBuilder::new("SELECT id FROM (");
    for (i, status) in FINISHED.into_iter().enumerate() {
        if i > 0 {
            qb.push(" UNION ALL ");
        }
        qb.push("(SELECT id FROM notifications WHERE ");
        push_older_than(&mut qb, status, retention.of(status));
        qb.push(" ORDER BY finished_at, id LIMIT ")
            .push_bind(limit)
            .push(")");
    }
    qb.push(") t LIMIT ").push_bind(limit);
    qb.build_query_scalar().fetch_all(conn).await
}

/// Deletes `ids`, re-checking that each is still finished (a belt to the
/// braces of [`eligible_ids`]: finished rows are final, but the table is a
/// contract other services write to). Returns the rows deleted.
pub async fn delete_ids(conn: &mut MySqlConnection, ids: &[u64]) -> Result<u64, sqlx::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut qb = QueryBuilder::new("DELETE FROM notifications WHERE id IN (");
    let mut list = qb.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
    qb.push(") AND status IN (");
    let mut list = qb.separated(", ");
    for status in FINISHED {
        list.push_bind(status);
    }
    qb.push(")");
    Ok(qb.build().execute(conn).await?.rows_affected())
}

/// Gives at most `limit` cancelled rows without a `finished_at` one: the
/// table contract lets services cancel by setting only `status`, and such
/// rows would otherwise never age out. `updated_at` (read before this
/// statement bumps it) is when the row was cancelled.
pub async fn stamp_cancelled(conn: &mut MySqlConnection, limit: u64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE notifications SET finished_at = updated_at \
         WHERE status = 'cancelled' AND finished_at IS NULL LIMIT ?",
    )
    .bind(limit)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Counts what a pass would delete now, deleting nothing. Cancelled rows
/// that a pass would stamp first count by their `updated_at`.
pub async fn count_eligible(
    conn: &mut MySqlConnection,
    retention: &Retention,
) -> Result<Eligible, sqlx::Error> {
    let mut out = Eligible::default();
    for status in FINISHED {
        let mut qb = QueryBuilder::new("SELECT COUNT(*) FROM notifications WHERE ");
        push_older_than(&mut qb, status, retention.of(status));
        let mut n: i64 = qb.build_query_scalar().fetch_one(&mut *conn).await?;
        if status == "cancelled" {
            let unstamped: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM notifications WHERE status = 'cancelled' \
                 AND finished_at IS NULL AND updated_at < UTC_TIMESTAMP(6) - INTERVAL ? SECOND",
            )
            .bind(retention.of(status).as_secs())
            .fetch_one(&mut *conn)
            .await?;
            n += unstamped;
        }
        out.by_status.push((status, n.max(0) as u64));
    }
    Ok(out)
}

/// InnoDB gave up waiting for a row lock (1205) or picked this statement as
/// a deadlock victim (1213): someone else, most likely a sender, needed
/// those rows more. Nothing was deleted; a smaller batch may get through.
pub fn is_lock_wait(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .is_some_and(|m| matches!(m.number(), 1205 | 1213)),
        _ => false,
    }
}

/// Makes this connection's statements give up on row locks after `wait`
/// instead of InnoDB's default 50 s, so a cleanup batch that collides with
/// senders fails fast and shrinks instead of holding its own locks.
pub async fn set_lock_wait(conn: &mut MySqlConnection, wait: Duration) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "SET SESSION innodb_lock_wait_timeout = {}",
        wait.as_secs().max(1)
    ))
    .execute(conn)
    .await
    .map(|_| ())
}

/// Undoes [`set_lock_wait`] before the connection goes back to the pool.
pub async fn reset_lock_wait(conn: &mut MySqlConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SET SESSION innodb_lock_wait_timeout = DEFAULT")
        .execute(conn)
        .await
        .map(|_| ())
}
