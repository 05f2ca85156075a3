//! Step 3 of the delivery protocol (docs/design.md): the fenced claim and
//! the read-back of the rows it took.
//!
//! Only rows the claim's `UPDATE` changed are sent; every later write is
//! conditional on the claim's token (see [`super::finish`]).

use sqlx::mysql::MySqlRow;
use sqlx::{Executor, MySqlPool, Row};
use std::fmt::Write;

use super::guarded::{fast_path, lock_free, ForeignLocks};
use super::literal;
use crate::notification::ClaimedRow;

/// Claims the rows among `ids` that are still available, fenced by `token`,
/// and returns how many it took. The worker uses [`claim_rows`], which also
/// reads them back in the same round trip; this form serves the ceiling
/// benchmark, which measures the read-back on its own.
pub async fn claim(
    pool: &MySqlPool,
    ids: &[u64],
    regions: &[String],
    token: &[u8; 16],
    worker_id: &str,
    lease_us: i64,
) -> Result<u64, sqlx::Error> {
    let claim = Claim {
        ids,
        regions,
        token,
        worker_id,
        lease_us,
    };
    Ok(claim.run(pool, false, &ForeignLocks::default()).await?.0)
}

/// Claims the rows among `ids` that are still available, fenced by `token`,
/// and reads them back.
///
/// The claim never waits for a row another transaction has locked (an
/// application's `SELECT … FOR UPDATE`, say): it would stall the whole batch
/// and, through it, every worker for as long as that transaction lives. A
/// plain `UPDATE … WHERE id IN (…)` waits, and MariaDB has no `SKIP LOCKED`
/// for `UPDATE`, so:
///
/// * usually one round trip: the fenced `UPDATE` and the read-back of the
///   rows now carrying our token as one multi-statement text query, with
///   the session's lock wait at zero, so a row locked elsewhere fails the
///   statement at once (one round trip fewer than the former `UPDATE` plus
///   read-back);
/// * when it does fail that way: a READ COMMITTED transaction locks the
///   free rows with `SELECT id … FOR UPDATE SKIP LOCKED`, then updates and
///   reads back exactly those (three round trips in all).
///
/// Rows skipped stay pending and are picked up by a later poll. A short
/// `innodb_lock_wait_timeout` instead would still stall each batch for the
/// timeout and then fail it whole.
///
/// The connection is closed rather than returned to the pool if anything
/// fails or the caller gives up between `START TRANSACTION` and `COMMIT`,
/// so no pooled connection ever carries an open transaction (and its row
/// locks); the server rolls back on disconnect.
pub async fn claim_rows(
    pool: &MySqlPool,
    ids: &[u64],
    regions: &[String],
    token: &[u8; 16],
    worker_id: &str,
    lease_us: i64,
    foreign: &ForeignLocks,
) -> Result<Vec<ClaimedRead>, sqlx::Error> {
    let claim = Claim {
        ids,
        regions,
        token,
        worker_id,
        lease_us,
    };
    Ok(claim.run(pool, true, foreign).await?.1)
}

struct Claim<'a> {
    ids: &'a [u64],
    regions: &'a [String],
    token: &'a [u8; 16],
    worker_id: &'a str,
    lease_us: i64,
}

impl Claim<'_> {
    /// The claimable condition, shared by the locking read and the update.
    fn condition(&self, sql: &mut String, ids: &[u64]) {
        sql.push_str(" WHERE id IN (");
        literal::ids(sql, ids);
        sql.push_str(
            ") AND status IN ('pending', 'sending') AND due_at <= UTC_TIMESTAMP(6) AND region IN (",
        );
        literal::texts(sql, self.regions.iter().map(String::as_str));
        sql.push(')');
    }

    /// Returns how many rows were claimed and, with `read_back`, the rows.
    async fn run(
        &self,
        pool: &MySqlPool,
        read_back: bool,
        foreign: &ForeignLocks,
    ) -> Result<(u64, Vec<ClaimedRead>), sqlx::Error> {
        if self.ids.is_empty() {
            return Ok((0, Vec::new()));
        }
        // Usually no row is locked elsewhere: one round trip does it all.
        let then = self.then_sql(self.ids, read_back);
        if let Some(rows) = fast_path(pool, &then, foreign).await? {
            return Ok(self.result(rows, read_back));
        }
        let mut cond = String::with_capacity(self.ids.len() * 8 + 256);
        self.condition(&mut cond, self.ids);
        let Some((mut tx, locked)) = lock_free(pool, &cond).await? else {
            return Ok((0, Vec::new()));
        };
        let then = self.then_sql(&locked, read_back) + "; COMMIT";
        let rows = tx.conn().fetch_all(sqlx::raw_sql(&then)).await?;
        tx.done();
        Ok(self.result(rows, read_back))
    }

    /// The fenced update of `ids` and the read-back (or the count).
    fn then_sql(&self, ids: &[u64], read_back: bool) -> String {
        let mut sql = String::with_capacity(ids.len() * 16 + 1024);
        sql.push_str("UPDATE notifications SET status = 'sending', claim_token = ");
        literal::bytes(&mut sql, self.token);
        sql.push_str(", claimed_by = ");
        literal::text(&mut sql, self.worker_id);
        // due_at repeats the expression rather than `due_at = lease_until`,
        // which would depend on assignment order (MariaDB's
        // SIMULTANEOUS_ASSIGNMENT mode changes it). attempts saturates: a
        // count another service set to the column's maximum must not make
        // the claim of the whole batch fail with "out of range".
        let lease_us = self.lease_us;
        let _ = write!(
            sql,
            ", lease_until = UTC_TIMESTAMP(6) + INTERVAL {lease_us} MICROSECOND, \
             due_at = UTC_TIMESTAMP(6) + INTERVAL {lease_us} MICROSECOND, \
             attempts = LEAST(attempts, {}) + 1",
            u32::MAX - 1
        );
        self.condition(&mut sql, ids);
        sql.push_str("; ");
        if read_back {
            read_back_sql(&mut sql, ids, self.token);
        } else {
            sql.push_str("SELECT ROW_COUNT()");
        }
        sql
    }

    fn result(&self, rows: Vec<MySqlRow>, read_back: bool) -> (u64, Vec<ClaimedRead>) {
        if read_back {
            let rows: Vec<ClaimedRead> = rows.iter().map(decode_claimed).collect();
            (rows.len() as u64, rows)
        } else {
            let n = rows
                .first()
                .and_then(|r| r.try_get::<i64, _>(0).ok())
                .unwrap_or(0);
            (n.max(0) as u64, Vec::new())
        }
    }
}

/// Payloads up to this size are read with the claim; larger ones at send
/// time ([`fetch_payload`]). Rows claimed ahead of their send then hold at
/// most this much payload each: 300 rows of 1 MB written by another service
/// once took a worker from 15 MB to 634 MB.
pub const INLINE_PAYLOAD_MAX: u64 = 16 * 1024;

fn read_back_sql(sql: &mut String, ids: &[u64], token: &[u8; 16]) {
    let _ = write!(
        sql,
        "SELECT id, user_id, channel, \
         CASE WHEN LENGTH(payload) > {INLINE_PAYLOAD_MAX} THEN NULL ELSE CAST(payload AS CHAR) END AS payload, \
         CAST(LENGTH(payload) AS SIGNED) AS payload_bytes, dedupe_key, send_at, due_at, expires_at, attempts, \
         (cancel_requested_at IS NOT NULL) AS cancel_requested \
         FROM notifications WHERE id IN ("
    );
    literal::ids(sql, ids);
    sql.push_str(") AND claim_token = ");
    literal::bytes(sql, token);
    sql.push_str(" AND status = 'sending'");
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
    read_back_sql(&mut sql, ids, token);
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
        payload_bytes: row
            .try_get::<Option<i64>, _>("payload_bytes")
            .map_err(|e| bad("payload", e))?
            .unwrap_or(0)
            .max(0) as u64,
        cancel_requested: row
            .try_get::<Option<i64>, _>("cancel_requested")
            .map_err(|e| bad("cancel_requested", e))?
            .unwrap_or(0)
            != 0,
    })
}

/// Reads a large payload at send time, while the row is still claimed
/// under `token`; `None` if the claim is gone.
pub async fn fetch_payload(
    pool: &MySqlPool,
    id: u64,
    token: &[u8; 16],
) -> Result<Option<Option<String>>, sqlx::Error> {
    let mut sql = String::from("SELECT CAST(payload AS CHAR) FROM notifications WHERE id = ");
    let _ = write!(sql, "{id} AND status = 'sending' AND claim_token = ");
    literal::bytes(&mut sql, token);
    let rows = sqlx::raw_sql(&sql).fetch_all(pool).await?;
    rows.first()
        .map(|r| r.try_get::<Option<String>, _>(0))
        .transpose()
}
