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
use sqlx::mysql::{MySql, MySqlConnection, MySqlRow};
use sqlx::pool::PoolConnection;
use std::fmt::Write;

use sqlx::{Executor, MySqlPool, Row};

use super::literal;

use crate::notification::ClaimedRow;
use crate::outcome::{Counts, Outcome};

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
    Ok(claim.run(pool, false).await?.0)
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
) -> Result<Vec<ClaimedRead>, sqlx::Error> {
    let claim = Claim {
        ids,
        regions,
        token,
        worker_id,
        lease_us,
    };
    Ok(claim.run(pool, true).await?.1)
}

struct Claim<'a> {
    ids: &'a [u64],
    regions: &'a [String],
    token: &'a [u8; 16],
    worker_id: &'a str,
    lease_us: i64,
}

/// A pooled connection inside a transaction: closed instead of pooled when
/// dropped before [`TxConn::done`].
struct TxConn(Option<PoolConnection<MySql>>);

impl TxConn {
    fn conn(&mut self) -> &mut MySqlConnection {
        self.0.as_mut().expect("connection taken")
    }

    /// The transaction ended (committed or rolled back): pool it again.
    fn done(mut self) {
        self.0.take();
    }
}

impl Drop for TxConn {
    fn drop(&mut self) {
        if let Some(mut conn) = self.0.take() {
            conn.close_on_drop();
        }
    }
}

/// Opens a READ COMMITTED transaction and locks the rows `WHERE {cond}`
/// that no other transaction holds, skipping the rest (one round trip).
/// READ COMMITTED takes no gap locks, and the primary key (the id list is
/// the selective part) keeps a covering-index scan from locking every due
/// row, so nothing beyond these rows is held.
/// Returns `None`, with the transaction ended, when no row was free.
async fn lock_free(
    pool: &MySqlPool,
    cond: &str,
) -> Result<Option<(TxConn, Vec<u64>)>, sqlx::Error> {
    let mut tx = TxConn(Some(pool.acquire().await?));
    let sql = format!(
        "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION; \
         SELECT id FROM notifications FORCE INDEX (PRIMARY){cond} FOR UPDATE SKIP LOCKED"
    );
    let locked: Vec<u64> = tx
        .conn()
        .fetch_all(sqlx::raw_sql(&sql))
        .await?
        .iter()
        .map(|r| r.try_get::<u64, _>(0))
        .collect::<Result<_, _>>()?;
    if locked.is_empty() {
        tx.conn().execute(sqlx::raw_sql("ROLLBACK")).await?;
        tx.done();
        return Ok(None);
    }
    Ok(Some((tx, locked)))
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
    ) -> Result<(u64, Vec<ClaimedRead>), sqlx::Error> {
        if self.ids.is_empty() {
            return Ok((0, Vec::new()));
        }
        // Usually no row is locked elsewhere: one round trip does it all.
        let then = self.then_sql(self.ids, read_back);
        if let Some(rows) = all_or_nothing(pool, &then).await? {
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

/// The one-round-trip path: runs `then` (autocommit statements) with this
/// session's lock wait set to zero, so a row another transaction holds
/// fails the statement at once (and rolls it back whole) instead of
/// waiting. Returns `None` when that happened; the caller then takes the
/// [`lock_free`] path. Costs the database nothing beyond the statements
/// themselves (MySQL's minimum wait is 1 s, MariaDB's is 0).
///
/// The wait is set back before the connection returns to the pool; if
/// that cannot be done, the connection is closed instead.
async fn all_or_nothing(
    pool: &MySqlPool,
    then: &str,
) -> Result<Option<Vec<MySqlRow>>, sqlx::Error> {
    let mut tx = TxConn(Some(pool.acquire().await?));
    let sql = format!(
        "SET SESSION innodb_lock_wait_timeout = 0; {then}; SET SESSION innodb_lock_wait_timeout = DEFAULT"
    );
    match tx.conn().fetch_all(sqlx::raw_sql(&sql)).await {
        Ok(rows) => {
            tx.done();
            Ok(Some(rows))
        }
        Err(e) if is_lock_busy(&e) => {
            tx.conn()
                .execute(sqlx::raw_sql(
                    "SET SESSION innodb_lock_wait_timeout = DEFAULT",
                ))
                .await?;
            tx.done();
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// A statement met a row another transaction holds and would not wait
/// (lock wait timeout; MySQL's `NOWAIT` has its own code).
fn is_lock_busy(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    matches!(
        db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .map(|m| m.number()),
        Some(1205 | 3572)
    )
}

/// Whether a statement failed because of what one row holds (a value out
/// of range, a failed `CHECK`, a trigger's `SIGNAL`, …) rather than because
/// of the connection, the server or a lock. Only such failures are worth
/// splitting a batch for: the same statement on fewer rows may succeed.
pub fn is_row_error(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    let code = db
        .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .map(|m| m.number());
    // Lock waits, deadlocks, interruptions and read-only servers are about
    // the moment, not the row.
    if matches!(code, Some(1205 | 1213 | 1317 | 1290 | 1792 | 1927 | 1053)) {
        return false;
    }
    let class = db.code().map(|c| c.chars().take(2).collect::<String>());
    // 22: data exception; 23: integrity constraint (CHECK, NOT NULL, keys);
    // 45: a trigger's SIGNAL; HY/01 carry MySQL's value errors in strict mode.
    matches!(class.as_deref(), Some("22" | "23" | "45"))
        || matches!(
            code,
            Some(1264 | 1265 | 1292 | 1366 | 1367 | 1406 | 1411 | 1690 | 3140 | 3819 | 4025 | 1644)
        )
}

/// Marks one row failed with `reason`, for a row that a claim or finish
/// cannot write. Touches only status, finish time and error; if even that
/// fails on the row's content (a `CHECK` on a column another service wrote
/// with checks off), retries once with MariaDB's `check_constraint_checks`
/// off for that statement. Returns whether the row changed.
///
/// With `token`, only while the row is still claimed under it (a finish);
/// without, only while it is pending or sending (a claim that failed).
pub async fn mark_failed(
    pool: &MySqlPool,
    id: u64,
    token: Option<&[u8; 16]>,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let mut write = String::from(
        "UPDATE notifications SET status = 'failed', finished_at = UTC_TIMESTAMP(6), \
         lease_until = NULL, last_error = ? WHERE id = ? AND ",
    );
    match token {
        Some(t) => {
            write.push_str("status = 'sending' AND claim_token = ");
            literal::bytes(&mut write, t);
        }
        None => write.push_str("status IN ('pending', 'sending')"),
    }
    let reason = truncate(reason);
    match sqlx::query(&write)
        .bind(reason)
        .bind(id)
        .execute(pool)
        .await
    {
        Ok(r) => Ok(r.rows_affected() > 0),
        Err(e) if is_row_error(&e) => {
            let r = sqlx::query(&format!(
                "SET STATEMENT check_constraint_checks = 0 FOR {write}"
            ))
            .bind(reason)
            .bind(id)
            .execute(pool)
            .await?;
            Ok(r.rows_affected() > 0)
        }
        Err(e) => Err(e),
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
         CAST(LENGTH(payload) AS SIGNED) AS payload_bytes, dedupe_key, send_at, due_at, expires_at, attempts \
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

/// How many rows each kind of finish recorded (now, or in an earlier
/// attempt of the same write). [`Outcome::Lost`] counts writes that changed
/// nothing because the claim was lost: those rows were left as the new
/// owner has them.
pub type FinishCounts = Counts;

/// Applies finishes for rows claimed under one token; returns how many of
/// each kind were recorded (see [`finish_rows`] for rows that were busy).
pub async fn finish(
    pool: &MySqlPool,
    token: &[u8; 16],
    rows: &[(u64, Finish)],
) -> Result<FinishCounts, sqlx::Error> {
    Ok(finish_rows(pool, token, rows).await?.0)
}

/// Applies finishes for rows claimed under one token.
///
/// Like the claim, a finish never waits for a row another transaction has
/// locked (an application's `SELECT … FOR UPDATE` can lock rows we claimed
/// as easily as pending ones): it locks the rows that are free in one round
/// trip, writes those, and returns the ids of the rows that are still ours
/// but were busy, for the caller to write again later. `Sent` rows (the
/// common case) go out in one statement together with the `COMMIT`; the
/// rest, which carry per-row values, in one statement each.
pub async fn finish_rows(
    pool: &MySqlPool,
    token: &[u8; 16],
    rows: &[(u64, Finish)],
) -> Result<(FinishCounts, Vec<u64>), sqlx::Error> {
    let mut counts = FinishCounts::default();
    if rows.is_empty() {
        return Ok((counts, Vec::new()));
    }
    let ids: Vec<u64> = rows.iter().map(|(id, _)| *id).collect();
    let mut cond = String::with_capacity(ids.len() * 8 + 128);
    cond.push_str(" WHERE id IN (");
    literal::ids(&mut cond, &ids);
    cond.push_str(") AND claim_token = ");
    literal::bytes(&mut cond, token);
    cond.push_str(" AND status = 'sending'");
    if rows.iter().all(|(_, f)| *f == Finish::Sent) {
        // The common case, in one round trip when nothing is locked
        // elsewhere.
        let then = sent_sql(&ids, token) + "; SELECT ROW_COUNT()";
        if let Some(r) = all_or_nothing(pool, &then).await? {
            let n = r
                .first()
                .and_then(|r| r.try_get::<i64, _>(0).ok())
                .unwrap_or(0);
            counts[Outcome::Sent] = n.max(0) as u64;
            if (n as usize) < ids.len() {
                counts[Outcome::Sent] = 0;
                let mut busy = Vec::new();
                recount_unchanged(pool, token, rows, &mut counts, &mut busy).await?;
                return Ok((counts, busy));
            }
            return Ok((counts, Vec::new()));
        }
    }
    let (mut tx, locked) = match lock_free(pool, &cond).await? {
        Some((tx, locked)) => (Some(tx), locked),
        None => (None, Vec::new()),
    };
    let locked: std::collections::HashSet<u64> = locked.into_iter().collect();
    let mut unchanged: Vec<(u64, Finish)> = Vec::new();
    if let Some(tx) = tx.as_mut() {
        for pair in rows
            .iter()
            .filter(|(id, f)| *f != Finish::Sent && locked.contains(id))
        {
            let (id, f) = pair;
            let (q, slot) = match f {
                Finish::Sent => unreachable!("filtered above"),
                Finish::Retry { delay_us, error } => (
                    sqlx::query(
                        "UPDATE notifications SET status = 'pending', due_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, \
                         lease_until = NULL, last_error = ? WHERE id = ? AND claim_token = ? AND status = 'sending'",
                    )
                    .bind(*delay_us)
                    .bind(truncate(error)),
                    &mut counts[Outcome::Retried],
                ),
                Finish::Failed { error } => (
                    sqlx::query(
                        "UPDATE notifications SET status = 'failed', finished_at = UTC_TIMESTAMP(6), lease_until = NULL, \
                         last_error = ? WHERE id = ? AND claim_token = ? AND status = 'sending'",
                    )
                    .bind(truncate(error)),
                    &mut counts[Outcome::Failed],
                ),
                Finish::Expired => (
                    sqlx::query(
                        "UPDATE notifications SET status = 'expired', finished_at = UTC_TIMESTAMP(6), lease_until = NULL \
                         WHERE id = ? AND claim_token = ? AND status = 'sending'",
                    ),
                    &mut counts[Outcome::Expired],
                ),
                Finish::HandBack => (
                    sqlx::query(
                        "UPDATE notifications SET status = 'pending', due_at = UTC_TIMESTAMP(6), lease_until = NULL, \
                         attempts = GREATEST(attempts, 1) - 1 WHERE id = ? AND claim_token = ? AND status = 'sending'",
                    ),
                    &mut counts[Outcome::HandedBack],
                ),
            };
            let changed = q
                .bind(*id)
                .bind(&token[..])
                .execute(tx.conn())
                .await?
                .rows_affected();
            *slot += changed;
            if changed == 0 {
                unchanged.push(pair.clone());
            }
        }
        let sent: Vec<u64> = rows
            .iter()
            .filter(|(id, f)| *f == Finish::Sent && locked.contains(id))
            .map(|(id, _)| *id)
            .collect();
        let mut sql = String::new();
        if !sent.is_empty() {
            sql = sent_sql(&sent, token) + "; ";
        }
        sql.push_str("COMMIT");
        counts[Outcome::Sent] = tx
            .conn()
            .execute(sqlx::raw_sql(&sql))
            .await?
            .rows_affected();
        if counts[Outcome::Sent] < sent.len() as u64 {
            // Cannot happen (the rows were locked as ours); recount to be sure.
            counts[Outcome::Sent] = 0;
            unchanged.extend(sent.iter().map(|id| (*id, Finish::Sent)));
        }
    }
    if let Some(tx) = tx {
        tx.done();
    }
    unchanged.extend(rows.iter().filter(|(id, _)| !locked.contains(id)).cloned());
    let mut busy = Vec::new();
    if !unchanged.is_empty() {
        recount_unchanged(pool, token, &unchanged, &mut counts, &mut busy).await?;
    }
    Ok((counts, busy))
}

impl Finish {
    /// The outcome this finish records when it takes effect.
    pub fn outcome(&self) -> Outcome {
        match self {
            Finish::Sent => Outcome::Sent,
            Finish::Retry { .. } => Outcome::Retried,
            Finish::Failed { .. } => Outcome::Failed,
            Finish::Expired => Outcome::Expired,
            Finish::HandBack => Outcome::HandedBack,
        }
    }
}

/// The fenced `sent` write of `ids`.
fn sent_sql(ids: &[u64], token: &[u8; 16]) -> String {
    let mut sql = String::with_capacity(ids.len() * 8 + 256);
    sql.push_str(
        "UPDATE notifications SET status = 'sent', finished_at = UTC_TIMESTAMP(6), lease_until = NULL, \
         last_error = NULL WHERE id IN (",
    );
    literal::ids(&mut sql, ids);
    sql.push_str(") AND claim_token = ");
    literal::bytes(&mut sql, token);
    sql.push_str(" AND status = 'sending'");
    sql
}

/// The status a finish leaves a row in.
fn final_status(f: &Finish) -> &'static str {
    match f {
        Finish::Sent => "sent",
        Finish::Failed { .. } => "failed",
        Finish::Expired => "expired",
        Finish::Retry { .. } | Finish::HandBack => "pending",
    }
}

/// Sorts rows a finish write did not change into "already recorded",
/// "busy" (still ours, locked by another transaction) and "claim lost".
///
/// A write changes nothing when the claim was lost (the lease expired and
/// another instance re-claimed the row), but also when it is a retry of a
/// write that did commit and whose reply never arrived (a killed
/// connection, a timeout). Counting the latter as lost misreports rows that
/// were recorded exactly once and inflates `herald_lost_ownership_total`.
/// A row that still carries our token and already has the status we meant
/// to write is ours and done: another owner would have replaced the token.
/// Costs one read, only when something did not change.
async fn recount_unchanged(
    pool: &MySqlPool,
    token: &[u8; 16],
    rows: &[(u64, Finish)],
    counts: &mut FinishCounts,
    busy: &mut Vec<u64>,
) -> Result<(), sqlx::Error> {
    let ids: Vec<u64> = rows.iter().map(|(id, _)| *id).collect();
    let mut sql = String::with_capacity(ids.len() * 8 + 128);
    sql.push_str("SELECT id, CAST(status AS CHAR) AS status FROM notifications WHERE id IN (");
    literal::ids(&mut sql, &ids);
    sql.push_str(") AND claim_token = ");
    literal::bytes(&mut sql, token);
    let found: std::collections::HashMap<u64, String> = sqlx::raw_sql(&sql)
        .fetch_all(pool)
        .await?
        .iter()
        .filter_map(|r| {
            Some((
                r.try_get::<u64, _>(0).ok()?,
                r.try_get::<String, _>(1).ok()?,
            ))
        })
        .collect();
    for (id, f) in rows {
        let status = found.get(id).map(String::as_str);
        if status == Some("sending") {
            busy.push(*id);
            continue;
        }
        if status != Some(final_status(f)) {
            counts[Outcome::Lost] += 1;
            continue;
        }
        counts.add(f.outcome(), 1);
    }
    Ok(())
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
