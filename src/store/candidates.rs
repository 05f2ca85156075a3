//! Step 1 of the delivery protocol (docs/design.md): the due candidates.
//!
//! While a row is claimed its `due_at` equals `lease_until`. That lets one
//! index range (`region, status, due_at`) serve both halves of the candidate
//! condition: pending rows that are due, and sending rows whose lease
//! expired (their worker crashed).

use chrono::{DateTime, Utc};
use sqlx::{MySqlPool, Row};
use std::fmt::Write;
use std::time::Duration;

use super::literal;

/// A row that may be claimed, as read from the covering index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub id: u64,
    pub user_id: u64,
    pub due_at: DateTime<Utc>,
}

/// Consecutive ids that fall into the same slice. Slicing single ids
/// (`MOD(id, n)`) spread every claim and finish over n times as many table
/// pages, each page then touched by n different statements; blocks of about
/// one page keep a batch's rows together. In alternating S1 runs this was
/// ~10 % faster (9 pairs: 35,500 vs 32,300/s on average).
pub const SLICE_BLOCK: u64 = 128;

/// A slice of the candidates: rows whose id block (`id DIV SLICE_BLOCK`),
/// or user id in user lock scope, is `index` modulo `count`. Instances that
/// poll at the same time mostly read different slices, so they do not all
/// lock the same oldest rows; the condition is
/// evaluated on the covering index, so a slice costs the database no row
/// reads and sends nothing over the wire for the rows it skips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slice {
    pub count: u32,
    pub index: u32,
    /// Slice by `user_id` (user lock scope keeps a user's rows together).
    pub by_user: bool,
}

/// Due candidates of the given regions, oldest first, at most `limit`.
///
/// A non-locking read: nothing is held between this and the claim, so
/// instances never block each other here. One index range per (region,
/// status) part, merged in memory.
pub async fn candidates(
    pool: &MySqlPool,
    regions: &[String],
    limit: usize,
    slice: Option<Slice>,
) -> Result<Vec<Candidate>, sqlx::Error> {
    let mut sql = String::with_capacity(256 * regions.len());
    // READ UNCOMMITTED: a consistent read of a secondary index entry must
    // look the row up in the primary key whenever the entry's page was
    // changed after the oldest transaction still open began, and the hot
    // pages of the due index always are. While another application keeps
    // a transaction open (row locks held for seconds), that was every entry
    // read: the candidate read took four times as long and the drain lost
    // a third of its rate. Candidates are only hints: the claim checks
    // every condition again under its row locks, so a row seen in a state
    // that is then rolled back costs at most a skipped row.
    sql.push_str("SET TRANSACTION ISOLATION LEVEL READ UNCOMMITTED; ");
    union_of_parts(&mut sql, regions, |sql, region, status| {
        sql.push_str("(SELECT id, user_id, due_at FROM notifications WHERE region = ");
        literal::text(sql, region);
        let _ = write!(
            sql,
            " AND status = '{status}' AND due_at <= UTC_TIMESTAMP(6)"
        );
        if let Some(sl) = slice.filter(|sl| sl.count > 1) {
            let column = if sl.by_user {
                "user_id".to_owned()
            } else {
                format!("id DIV {SLICE_BLOCK}")
            };
            let _ = write!(
                sql,
                " AND MOD({column}, {}) = {}",
                sl.count,
                sl.index % sl.count
            );
        }
        let _ = write!(sql, " ORDER BY due_at, id LIMIT {limit})");
    });
    let rows = sqlx::raw_sql(&sql).fetch_all(pool).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        // A due_at another service wrote badly (a zero date) must not make
        // every poll fail: treat it as due now; the claimed row then fails
        // on its own with the reason.
        let due_at = row
            .try_get::<DateTime<Utc>, _>("due_at")
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        out.push(Candidate {
            id: row.try_get("id")?,
            user_id: row.try_get("user_id")?,
            due_at,
        });
    }
    out.sort_by_key(|c| (c.due_at, c.id));
    out.truncate(limit);
    Ok(out)
}

/// How long until the earliest row of these regions that is not due yet
/// becomes due (a scheduled row, a retry, a deferred row, or a lease that
/// runs out), by the database's clock; `None` when there is none.
///
/// An idle worker backs off up to the poll interval between reads, so a row
/// scheduled for 09:00:00 used to go out up to that much later, and a
/// fleet that went idle together was late on every scheduled burst. One
/// index dive per (region, status) part tells the idle poller when to look
/// again. The database's own clock measures the wait, so a worker whose
/// clock runs ahead or behind still wakes when the row is due there.
pub async fn next_due(
    pool: &MySqlPool,
    regions: &[String],
) -> Result<Option<Duration>, sqlx::Error> {
    if regions.is_empty() {
        return Ok(None);
    }
    let mut sql = String::with_capacity(160 * regions.len() + 64);
    sql.push_str("SELECT TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), MIN(due_at)) FROM (");
    union_of_parts(&mut sql, regions, |sql, region, status| {
        sql.push_str("(SELECT MIN(due_at) AS due_at FROM notifications WHERE region = ");
        literal::text(sql, region);
        let _ = write!(
            sql,
            " AND status = '{status}' AND due_at > UTC_TIMESTAMP(6))"
        );
    });
    sql.push_str(") AS next");
    let wait: Option<i64> = sqlx::query_scalar(&sql).fetch_one(pool).await?;
    Ok(wait
        .filter(|us| *us > 0)
        .map(|us| Duration::from_micros(us as u64)))
}

/// `(part) UNION ALL (part) …`: one part per (region, status) range of the
/// due index `(region, status, due_at, …)`, each written by `part`.
fn union_of_parts(
    sql: &mut String,
    regions: &[String],
    mut part: impl FnMut(&mut String, &str, &str),
) {
    let mut first = true;
    for region in regions {
        for status in ["pending", "sending"] {
            if !first {
                sql.push_str(" UNION ALL ");
            }
            first = false;
            part(sql, region, status);
        }
    }
}
