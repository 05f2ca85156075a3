//! The statements of the delivery protocol (DESIGN.md, steps 1, 3 and 5).
//!
//! Every write after the claim is conditional on `claim_token` and
//! `status = 'sending'`: a worker that lost its claim (its lease expired and
//! someone else re-claimed the row) changes nothing, and the caller learns
//! that from the row count.
//!
//! While a row is claimed its `due_at` equals `lease_until`. That lets one
//! index range (`region, status, due_at`) serve both halves of the candidate
//! condition of DESIGN.md: pending rows that are due, and sending rows whose
//! lease expired (their worker crashed).

use chrono::{DateTime, Utc};
use sqlx::mysql::MySqlRow;
use std::fmt::Write;

use sqlx::{MySqlPool, Row};

use super::literal;

use crate::notification::ClaimedRow;

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
    let mut first = true;
    for region in regions {
        for status in ["pending", "sending"] {
            if !first {
                sql.push_str(" UNION ALL ");
            }
            first = false;
            sql.push_str("(SELECT id, user_id, due_at FROM notifications WHERE region = ");
            literal::text(&mut sql, region);
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
        }
    }
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

/// Claims the rows among `ids` that are still available, fenced by `token`.
/// Returns how many rows the claim took; the caller reads them back with
/// [`fetch_claimed`] when that is fewer than it asked for.
pub async fn claim(
    pool: &MySqlPool,
    ids: &[u64],
    regions: &[String],
    token: &[u8; 16],
    worker_id: &str,
    lease_us: i64,
) -> Result<u64, sqlx::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut sql = String::with_capacity(ids.len() * 8 + 512);
    sql.push_str("UPDATE notifications SET status = 'sending', claim_token = ");
    literal::bytes(&mut sql, token);
    sql.push_str(", claimed_by = ");
    literal::text(&mut sql, worker_id);
    // due_at repeats the expression rather than `due_at = lease_until`, which
    // would depend on assignment order (MariaDB's SIMULTANEOUS_ASSIGNMENT
    // mode changes it).
    let _ = write!(
        sql,
        ", lease_until = UTC_TIMESTAMP(6) + INTERVAL {lease_us} MICROSECOND, \
         due_at = UTC_TIMESTAMP(6) + INTERVAL {lease_us} MICROSECOND, \
         attempts = attempts + 1 WHERE id IN ("
    );
    literal::ids(&mut sql, ids);
    sql.push_str(
        ") AND status IN ('pending', 'sending') AND due_at <= UTC_TIMESTAMP(6) AND region IN (",
    );
    literal::texts(&mut sql, regions.iter().map(String::as_str));
    sql.push(')');
    Ok(sqlx::raw_sql(&sql).execute(pool).await?.rows_affected())
}

/// One claimed row, or the reason it could not be read. Rows written badly
/// by another service (a zero date, a payload that is not text) must fail on
/// their own instead of failing the whole batch's decode.
pub type ClaimedRead = Result<ClaimedRow, (u64, String)>;

/// Reads back the rows this claim took.
pub async fn fetch_claimed(
    pool: &MySqlPool,
    ids: &[u64],
    token: &[u8; 16],
) -> Result<Vec<ClaimedRead>, sqlx::Error> {
    let mut sql = String::with_capacity(ids.len() * 8 + 256);
    sql.push_str(
        "SELECT id, user_id, channel, CAST(payload AS CHAR) AS payload, dedupe_key, send_at, due_at, expires_at, attempts \
         FROM notifications WHERE id IN (",
    );
    literal::ids(&mut sql, ids);
    sql.push_str(") AND claim_token = ");
    literal::bytes(&mut sql, token);
    sql.push_str(" AND status = 'sending'");
    let rows = sqlx::raw_sql(&sql).fetch_all(pool).await?;
    Ok(rows.iter().map(decode_claimed).collect())
}

fn decode_claimed(row: &MySqlRow) -> ClaimedRead {
    let id: u64 = row.try_get("id").map_err(|e| (0, e.to_string()))?;
    let bad = |col: &str, e: sqlx::Error| (id, format!("{col} is unreadable: {e}"));
    let dedupe_key: Option<Vec<u8>> = row
        .try_get("dedupe_key")
        .map_err(|e| bad("dedupe_key", e))?;
    Ok(ClaimedRow {
        id,
        user_id: row.try_get("user_id").map_err(|e| bad("user_id", e))?,
        channel: row.try_get("channel").map_err(|e| bad("channel", e))?,
        payload: row.try_get("payload").map_err(|e| bad("payload", e))?,
        dedupe_key: dedupe_key.map(|k| String::from_utf8_lossy(&k).into_owned()),
        send_at: row.try_get("send_at").map_err(|e| bad("send_at", e))?,
        due_at: row.try_get("due_at").map_err(|e| bad("due_at", e))?,
        expires_at: row
            .try_get("expires_at")
            .map_err(|e| bad("expires_at", e))?,
        attempts: row.try_get("attempts").map_err(|e| bad("attempts", e))?,
    })
}

/// The final or retry write for one claimed row.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    Sent,
    /// Back to pending, due again after `delay_us`.
    Retry {
        delay_us: i64,
        error: String,
    },
    Failed {
        error: String,
    },
    Expired,
    /// Not attempted (shutdown, or the lock ran short): pending again now,
    /// and the attempt the claim counted is given back.
    HandBack,
}

/// How many rows each kind of finish changed. `lost` counts writes that
/// changed nothing because the claim was lost: those rows were left as the
/// new owner has them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FinishCounts {
    pub sent: u64,
    pub retried: u64,
    pub failed: u64,
    pub expired: u64,
    pub handed_back: u64,
    pub lost: u64,
}

/// Applies finishes for rows claimed under one token.
///
/// `Sent` rows (the common case) go out in one statement; the rest, which
/// carry per-row values, in one statement each inside a transaction.
pub async fn finish(
    pool: &MySqlPool,
    token: &[u8; 16],
    rows: &[(u64, Finish)],
) -> Result<FinishCounts, sqlx::Error> {
    let mut counts = FinishCounts::default();
    let sent: Vec<u64> = rows
        .iter()
        .filter(|(_, f)| *f == Finish::Sent)
        .map(|(id, _)| *id)
        .collect();
    if !sent.is_empty() {
        let mut sql = String::with_capacity(sent.len() * 8 + 256);
        sql.push_str(
            "UPDATE notifications SET status = 'sent', finished_at = UTC_TIMESTAMP(6), lease_until = NULL, \
             last_error = NULL WHERE id IN (",
        );
        literal::ids(&mut sql, &sent);
        sql.push_str(") AND claim_token = ");
        literal::bytes(&mut sql, token);
        sql.push_str(" AND status = 'sending'");
        counts.sent = sqlx::raw_sql(&sql).execute(pool).await?.rows_affected();
        counts.lost += sent.len() as u64 - counts.sent;
    }
    let others: Vec<&(u64, Finish)> = rows.iter().filter(|(_, f)| *f != Finish::Sent).collect();
    if others.is_empty() {
        return Ok(counts);
    }
    let mut tx = pool.begin().await?;
    for (id, f) in others {
        let (q, slot) = match f {
            Finish::Sent => unreachable!("filtered above"),
            Finish::Retry { delay_us, error } => (
                sqlx::query(
                    "UPDATE notifications SET status = 'pending', due_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, \
                     lease_until = NULL, last_error = ? WHERE id = ? AND claim_token = ? AND status = 'sending'",
                )
                .bind(*delay_us)
                .bind(truncate(error)),
                &mut counts.retried,
            ),
            Finish::Failed { error } => (
                sqlx::query(
                    "UPDATE notifications SET status = 'failed', finished_at = UTC_TIMESTAMP(6), lease_until = NULL, \
                     last_error = ? WHERE id = ? AND claim_token = ? AND status = 'sending'",
                )
                .bind(truncate(error)),
                &mut counts.failed,
            ),
            Finish::Expired => (
                sqlx::query(
                    "UPDATE notifications SET status = 'expired', finished_at = UTC_TIMESTAMP(6), lease_until = NULL \
                     WHERE id = ? AND claim_token = ? AND status = 'sending'",
                ),
                &mut counts.expired,
            ),
            Finish::HandBack => (
                sqlx::query(
                    "UPDATE notifications SET status = 'pending', due_at = UTC_TIMESTAMP(6), lease_until = NULL, \
                     attempts = GREATEST(attempts, 1) - 1 WHERE id = ? AND claim_token = ? AND status = 'sending'",
                ),
                &mut counts.handed_back,
            ),
        };
        let changed = q
            .bind(*id)
            .bind(&token[..])
            .execute(&mut *tx)
            .await?
            .rows_affected();
        *slot += changed;
        counts.lost += 1 - changed.min(1);
    }
    tx.commit().await?;
    Ok(counts)
}

/// `last_error` is VARCHAR(1024); cut on a character boundary.
fn truncate(s: &str) -> &str {
    if s.len() <= 1024 {
        return s;
    }
    let mut end = 1024;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
