//! Step 3 of the delivery protocol (docs/design.md): the fenced claim and
//! the read-back of the rows it took.
//!
//! Only rows the claim's `UPDATE` changed are sent; every later write is
//! conditional on the claim's token (see [`super::finish`]).

use sqlx::mysql::MySqlRow;
use sqlx::{Executor, MySqlPool, Row};
use std::fmt::Write;

use super::guarded::{fast_path, lock_free, ForeignLocks, TxConn};
use super::literal;
use crate::notification::ClaimedRow;

/// Claims the rows among `ids` that are still available, fenced by `token`,
/// and reads them back.
///
/// The claim never waits for a row another transaction has locked (an
/// application's `SELECT … FOR UPDATE`, say): it would stall the whole batch
/// and, through it, every worker for as long as that transaction lives. A
/// plain `UPDATE … WHERE id IN (…)` waits, and neither server has `SKIP
/// LOCKED` for `UPDATE`, so:
///
/// * on MariaDB, one round trip: in a short transaction, a locking read
///   of the claimable rows that skips the held ones (`FOR UPDATE SKIP
///   LOCKED`) and returns them, then the claim's `UPDATE` of exactly the
///   rows it locked (see [`Claim::locked_read_sql`]). The same statements
///   whether or not anything is held elsewhere: with 1 % of the rows held
///   by another application the drain keeps its rate (`herald bench
///   foreign-locks`; the two-step path below kept 0.55–0.83 of it);
/// * on other servers (MySQL 8, which no test here runs): the fenced
///   `UPDATE` and the read-back with the session's lock wait at zero, so a
///   row locked elsewhere fails the statement at once; when it does, a
///   READ COMMITTED transaction locks the free rows with `SELECT id … FOR
///   UPDATE SKIP LOCKED`, then updates and reads back exactly those (three
///   round trips in all).
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
    claim.run(pool, foreign).await
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

    async fn run(
        &self,
        pool: &MySqlPool,
        foreign: &ForeignLocks,
    ) -> Result<Vec<ClaimedRead>, sqlx::Error> {
        if self.ids.is_empty() {
            return Ok(Vec::new());
        }
        if foreign.one_trip_claim(pool).await {
            let sql = self.locked_read_sql();
            let mut tx = TxConn::new(pool).await?;
            let rows = tx.conn().fetch_all(sqlx::raw_sql(&sql)).await?;
            tx.done();
            // The read saw the rows before the update, which counted one
            // more attempt (saturating, as the update does).
            let mut rows = decode_all(&rows);
            for r in rows.iter_mut().flatten() {
                r.attempts = r.attempts.min(u32::MAX - 1) + 1;
            }
            return Ok(rows);
        }
        // Usually no row is locked elsewhere: one round trip does it all.
        let then = self.then_sql(self.ids);
        if let Some(rows) = fast_path(pool, &then, foreign).await? {
            return Ok(decode_all(&rows));
        }
        let mut cond = String::with_capacity(self.ids.len() * 8 + 256);
        self.condition(&mut cond, self.ids);
        let Some((mut tx, locked)) = lock_free(pool, &cond).await? else {
            return Ok(Vec::new());
        };
        let then = self.then_sql(&locked) + "; COMMIT";
        let rows = tx.conn().fetch_all(sqlx::raw_sql(&then)).await?;
        tx.done();
        Ok(decode_all(&rows))
    }

    /// `UPDATE … SET` of the claim, up to (not including) its `WHERE`.
    fn update_head(&self, sql: &mut String) {
        sql.push_str("UPDATE notifications SET status = 'sending', claim_token = ");
        literal::bytes(sql, self.token);
        sql.push_str(", claimed_by = ");
        literal::text(sql, self.worker_id);
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
    }

    /// The one-round-trip claim that goes around rows other transactions
    /// hold (see [`claim_rows`]), as one text query:
    ///
    /// 1. in a READ COMMITTED transaction (no gap locks where a listed row
    ///    was deleted meanwhile, so an enqueue never waits on a claim), a
    ///    locking read of the claimable rows that skips the held ones,
    ///    returning the rows and collecting their ids in a
    ///    session variable as it goes;
    /// 2. the claim's `UPDATE` of exactly those ids, prepared from that
    ///    variable (no second read to find them, and no wait: they are
    ///    locked already); then `COMMIT`.
    ///
    /// Each row is read twice (the locking read, the update), as in the
    /// plain update and its read-back; an `UPDATE` joined to a derived
    /// skip-locked read reads it three times and was a quarter slower.
    fn locked_read_sql(&self) -> String {
        let mut sql = String::with_capacity(self.ids.len() * 8 + 2048);
        sql.push_str(
            "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION; \
             SET @herald_claimed = NULL; SELECT ",
        );
        read_columns(&mut sql);
        sql.push_str(
            ", (@herald_claimed := CONCAT_WS(',', @herald_claimed, id)) IS NOT NULL AS claimed \
             FROM notifications FORCE INDEX (PRIMARY)",
        );
        self.condition(&mut sql, self.ids);
        // No `DEALLOCATE` (the next `PREPARE` of the name replaces it) and
        // no clearing of the variables afterwards (the next claim sets
        // them): two statements fewer per claim, for nothing.
        sql.push_str(" FOR UPDATE SKIP LOCKED; PREPARE herald_claim FROM CONCAT(");
        let mut head = String::with_capacity(512);
        self.update_head(&mut head);
        head.push_str(" WHERE id IN (");
        literal::text(&mut sql, &head);
        sql.push_str(", COALESCE(@herald_claimed, 'NULL'), ')'); EXECUTE herald_claim; COMMIT");
        sql
    }

    /// The fenced update of `ids` and the read-back.
    fn then_sql(&self, ids: &[u64]) -> String {
        let mut sql = String::with_capacity(ids.len() * 16 + 1024);
        self.update_head(&mut sql);
        self.condition(&mut sql, ids);
        sql.push_str("; ");
        read_back_sql(&mut sql, ids, self.token);
        sql
    }
}

fn decode_all(rows: &[MySqlRow]) -> Vec<ClaimedRead> {
    rows.iter().map(decode_claimed).collect()
}

/// Payloads up to this size are read with the claim; larger ones at send
/// time ([`fetch_payload`]). Rows claimed ahead of their send then hold at
/// most this much payload each: 300 rows of 1 MB written by another service
/// once took a worker from 15 MB to 634 MB.
pub const INLINE_PAYLOAD_MAX: u64 = 16 * 1024;

/// The columns a claimed row is read with.
fn read_columns(sql: &mut String) {
    let _ = write!(
        sql,
        "id, user_id, channel, \
         CASE WHEN LENGTH(payload) > {INLINE_PAYLOAD_MAX} THEN NULL ELSE CAST(payload AS CHAR) END AS payload, \
         CAST(LENGTH(payload) AS SIGNED) AS payload_bytes, dedupe_key, send_at, due_at, expires_at, attempts, \
         (cancel_requested_at IS NOT NULL) AS cancel_requested"
    );
}

fn read_back_sql(sql: &mut String, ids: &[u64], token: &[u8; 16]) {
    sql.push_str("SELECT ");
    read_columns(sql);
    sql.push_str(" FROM notifications WHERE id IN (");
    literal::ids(sql, ids);
    sql.push_str(") AND claim_token = ");
    literal::bytes(sql, token);
    sql.push_str(" AND status = 'sending'");
}

/// One claimed row, or the reason it could not be read. Rows written badly
/// by another service (a zero date, a payload that is not text) must fail on
/// their own instead of failing the whole batch's decode.
pub type ClaimedRead = Result<ClaimedRow, (u64, String)>;

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
///
/// The connection's buffers are shrunk afterwards: sqlx keeps a connection's
/// read buffer at the largest packet it ever received, so without this
/// every pooled connection that once read a 1 MB payload would hold a
/// megabyte or more for the life of the process, outside the payload
/// budget.
pub async fn fetch_payload(
    pool: &MySqlPool,
    id: u64,
    token: &[u8; 16],
) -> Result<Option<Option<String>>, sqlx::Error> {
    let mut sql = String::from("SELECT CAST(payload AS CHAR) FROM notifications WHERE id = ");
    let _ = write!(sql, "{id} AND status = 'sending' AND claim_token = ");
    literal::bytes(&mut sql, token);
    let mut pooled = pool.acquire().await?;
    let conn: &mut sqlx::MySqlConnection = pooled.as_mut();
    let rows = conn.fetch_all(sqlx::raw_sql(&sql)).await;
    sqlx::Connection::shrink_buffers(conn);
    rows?
        .first()
        .map(|r| r.try_get::<Option<String>, _>(0))
        .transpose()
}
