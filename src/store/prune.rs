//! Cleanup statements: finished rows past their retention, deleted by
//! primary key in bounded batches.
//!
//! The cleanup index is `ix_notifications_finished (finished_at)` — without
//! `status`, so claiming a row (which changes its status) never touches it.
//! Cleanup therefore walks finished rows in `(finished_at, id)` order with a
//! keyset cursor and decides per row, from its status, whether it is past
//! its retention. Each statement reads at most one batch of index entries,
//! whatever lies in the range: rows kept longer (say `failed` rows inside
//! their longer retention) are stepped over once per pass, never re-read by
//! every batch. Only rows in a finished status are ever eligible, so no
//! code path can reach a `pending` or `sending` row.
//!
//! Deletes go by id (`WHERE id IN (…)`) rather than by a range condition, so
//! each one locks exactly the rows it removes and nothing around them that a
//! sender might be waiting for.
//!
//! A notification's attempt history (`notification_attempts`) goes with it,
//! in the same transaction. History whose notification was deleted some
//! other way (another service's `DELETE`) is found by [`sweep_orphans`], a
//! bounded walk over the history table, so it cannot pile up either.

use std::time::Duration;

use chrono::NaiveDateTime;
use sqlx::{Connection, MySqlConnection, QueryBuilder};

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

    /// Nothing finished more recently than this can be eligible.
    fn shortest(&self) -> Duration {
        self.sent.min(self.failed).min(self.expired)
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

/// Position in the `(finished_at, id)` walk: the last row looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub finished_at: NaiveDateTime,
    pub id: u64,
}

/// One step of the walk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    /// Rows read (eligible or not); fewer than asked = the walk is over.
    pub scanned: usize,
    /// Ids among them past their retention, in walk order.
    pub eligible: Vec<u64>,
    /// Where the next step starts, once this one's eligible rows are gone.
    pub next: Option<Cursor>,
}

fn push_cutoff(qb: &mut QueryBuilder<'_, sqlx::MySql>, retention: Duration) {
    qb.push("UTC_TIMESTAMP(6) - INTERVAL ")
        .push_bind(retention.as_secs())
        .push(" SECOND");
}

/// Reads the next `limit` rows of the walk after `after` (from the oldest
/// when `None`), up to the shortest retention's cutoff, and says which of
/// them are past their own status's retention.
pub async fn scan(
    conn: &mut MySqlConnection,
    retention: &Retention,
    after: Option<Cursor>,
    limit: u64,
) -> Result<Step, sqlx::Error> {
    let mut qb = QueryBuilder::new("SELECT id, finished_at, CAST(");
    for (i, status) in FINISHED.into_iter().enumerate() {
        if i > 0 {
            qb.push(" OR ");
        }
        qb.push("(status = ")
            .push_bind(status)
            .push(" AND finished_at < ");
        push_cutoff(&mut qb, retention.of(status));
        qb.push(")");
    }
    qb.push(" AS SIGNED) FROM notifications WHERE finished_at < ");
    push_cutoff(&mut qb, retention.shortest());
    if let Some(c) = after {
        // Spelled out rather than as a row comparison, which not every
        // MariaDB/MySQL version turns into an index range.
        qb.push(" AND finished_at >= ")
            .push_bind(c.finished_at)
            .push(" AND (finished_at > ")
            .push_bind(c.finished_at)
            .push(" OR id > ")
            .push_bind(c.id)
            .push(")");
    }
    qb.push(" ORDER BY finished_at, id LIMIT ").push_bind(limit);
    let rows: Vec<(u64, NaiveDateTime, i64)> = qb.build_query_as().fetch_all(conn).await?;
    Ok(Step {
        scanned: rows.len(),
        next: rows
            .last()
            .map(|&(id, finished_at, _)| Cursor { finished_at, id }),
        eligible: rows
            .into_iter()
            .filter(|&(_, _, eligible)| eligible != 0)
            .map(|(id, _, _)| id)
            .collect(),
    })
}

/// Deletes `ids` and their attempt history, re-checking that each is still
/// finished (a belt to the braces of [`scan`]: finished rows are final, but
/// the table is a contract other services write to). Returns the
/// notifications deleted. One transaction: history never outlives its
/// notification, nor goes before it.
pub async fn delete_ids(conn: &mut MySqlConnection, ids: &[u64]) -> Result<u64, sqlx::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let finished_ids = |qb: &mut QueryBuilder<'_, sqlx::MySql>| {
        qb.push("id IN (");
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
    };
    let mut tx = conn.begin().await?;
    let mut history = QueryBuilder::new(
        "DELETE FROM notification_attempts WHERE notification_id IN \
         (SELECT id FROM notifications WHERE ",
    );
    finished_ids(&mut history);
    history.push(")");
    history.build().execute(&mut *tx).await?;
    let mut rows = QueryBuilder::new("DELETE FROM notifications WHERE ");
    finished_ids(&mut rows);
    let deleted = rows.build().execute(&mut *tx).await?.rows_affected();
    tx.commit().await?;
    Ok(deleted)
}

/// One step of [`sweep_orphans`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sweep {
    /// History rows looked at; fewer than asked = the end of the table.
    pub scanned: u64,
    pub deleted: u64,
    /// The last history id looked at: where the next step starts.
    pub next: u64,
}

/// Looks at the next `limit` history rows after id `after` and deletes
/// those whose notification no longer exists. Each step reads one bounded
/// range of the history table's primary key and one primary-key lookup per
/// row, so a sweep costs little even when there is nothing to delete.
pub async fn sweep_orphans(
    conn: &mut MySqlConnection,
    after: u64,
    limit: u64,
) -> Result<Sweep, sqlx::Error> {
    let rows: Vec<(u64, i64)> = sqlx::query_as(
        "SELECT a.id, CAST(n.id IS NULL AS SIGNED) FROM \
         (SELECT id, notification_id FROM notification_attempts WHERE id > ? ORDER BY id LIMIT ?) a \
         LEFT JOIN notifications n ON n.id = a.notification_id ORDER BY a.id",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let orphans: Vec<u64> = rows
        .iter()
        .filter(|(_, orphan)| *orphan != 0)
        .map(|(id, _)| *id)
        .collect();
    let mut deleted = 0;
    if !orphans.is_empty() {
        // Re-checked: a notification may have been inserted with that id
        // meanwhile (ids are only reused after a server restart forgot
        // the counter, but the table is not ours alone).
        let mut qb = QueryBuilder::new("DELETE FROM notification_attempts WHERE id IN (");
        let mut list = qb.separated(", ");
        for id in &orphans {
            list.push_bind(*id);
        }
        qb.push(
            ") AND NOT EXISTS (SELECT 1 FROM notifications n \
             WHERE n.id = notification_attempts.notification_id)",
        );
        deleted = qb.build().execute(&mut *conn).await?.rows_affected();
    }
    Ok(Sweep {
        scanned: rows.len() as u64,
        deleted,
        next: rows.last().map_or(after, |(id, _)| *id),
    })
}

/// Gives at most `limit` cancelled rows without a `finished_at` one: the
/// table contract lets services cancel by setting only `status`, and such
/// rows would otherwise never age out. `updated_at` (read before this
/// statement bumps it) is when the row was cancelled. Found per region
/// through `ix_notifications_due (region, status, …)`: the finished index
/// cannot tell these rows from the unfinished ones.
pub async fn stamp_cancelled(conn: &mut MySqlConnection, limit: u64) -> Result<u64, sqlx::Error> {
    let regions = super::status::regions(&mut *conn).await?;
    let mut stamped = 0;
    for region in regions {
        if stamped >= limit {
            break;
        }
        let done = sqlx::query(
            "UPDATE notifications SET finished_at = updated_at \
             WHERE region = ? AND status = 'cancelled' AND finished_at IS NULL LIMIT ?",
        )
        .bind(region)
        .bind(limit - stamped)
        .execute(&mut *conn)
        .await?;
        stamped += done.rows_affected();
    }
    Ok(stamped)
}

/// Counts what a pass would delete now, deleting nothing. Cancelled rows
/// that a pass would stamp first count by their `updated_at`.
pub async fn count_eligible(
    conn: &mut MySqlConnection,
    retention: &Retention,
) -> Result<Eligible, sqlx::Error> {
    let mut out = Eligible::default();
    for status in FINISHED {
        let secs = retention.of(status).as_secs();
        let mut n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM notifications \
             WHERE finished_at < UTC_TIMESTAMP(6) - INTERVAL ? SECOND AND status = ?",
        )
        .bind(secs)
        .bind(status)
        .fetch_one(&mut *conn)
        .await?;
        if status == "cancelled" {
            let unstamped: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM notifications WHERE status = 'cancelled' \
                 AND finished_at IS NULL AND updated_at < UTC_TIMESTAMP(6) - INTERVAL ? SECOND",
            )
            .bind(secs)
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
