//! Step 5 of the delivery protocol (docs/design.md): the outcome writes.
//!
//! Every write after the claim is conditional on `claim_token` and
//! `status = 'sending'`: a worker that lost its claim (its lease expired and
//! someone else re-claimed the row) changes nothing, and the caller learns
//! that from the row count.

use sqlx::{Executor, MySqlPool, Row};

use super::guarded::{fast_path, is_row_error, lock_free, ForeignLocks};
use super::literal;
use crate::outcome::{Counts, Outcome};

/// Marks one row failed with `reason`, for a row that a claim or finish
/// cannot write. Touches only status, finish time and error; if even that
/// fails on the row's content (a `CHECK` on a column another service wrote
/// with checks off), retries once with MariaDB's `check_constraint_checks`
/// off for that statement (MariaDB only). Returns whether the row changed.
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
        // `SET STATEMENT … FOR` and `check_constraint_checks` are
        // MariaDB's; MySQL 8 has neither (nor the JSON CHECK that makes
        // this retry necessary), so there the row error stands.
        Err(e) if is_row_error(&e) && is_mariadb(pool).await => {
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

/// Whether the server is MariaDB (asked only on the rare paths that use
/// MariaDB-only syntax).
async fn is_mariadb(pool: &MySqlPool) -> bool {
    sqlx::query_scalar::<_, String>("SELECT VERSION()")
        .fetch_one(pool)
        .await
        .is_ok_and(|v| v.contains("MariaDB"))
}

/// The final or retry write for one claimed row.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    Sent,
    /// Back to pending, due again after `delay_us` (`cancelled` instead
    /// if a cancel was requested meanwhile: the send failed, so the row
    /// was not delivered).
    Retry {
        delay_us: i64,
        error: String,
    },
    Failed {
        error: String,
    },
    /// Past `expires_at` when its turn came: not attempted, so the
    /// attempt the claim counted is given back (a row that expired unsent
    /// shows `attempts = 0`).
    Expired,
    /// Not attempted (shutdown, the lock ran short, a cancel request):
    /// pending again now, and the attempt the claim counted is given back;
    /// `cancelled` instead if a cancel was requested.
    HandBack,
    /// Not attempted because the channel's circuit breaker opened after
    /// the claim: pending again after `delay_us` (when the breaker may
    /// let rows through), and the attempt the claim counted is given back.
    Defer {
        delay_us: i64,
    },
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
    Ok(finish_rows(pool, token, rows, &ForeignLocks::default())
        .await?
        .0)
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
    foreign: &ForeignLocks,
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
        if let Some(r) = fast_path(pool, &then, foreign).await? {
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
                        "UPDATE notifications SET status = IF(cancel_requested_at IS NULL, 'pending', 'cancelled'), \
                         finished_at = IF(cancel_requested_at IS NULL, finished_at, UTC_TIMESTAMP(6)), \
                         due_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, \
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
                        "UPDATE notifications SET status = 'expired', finished_at = UTC_TIMESTAMP(6), lease_until = NULL, \
                         attempts = GREATEST(attempts, 1) - 1 WHERE id = ? AND claim_token = ? AND status = 'sending'",
                    ),
                    &mut counts[Outcome::Expired],
                ),
                Finish::Defer { delay_us } => (
                    sqlx::query(
                        "UPDATE notifications SET status = IF(cancel_requested_at IS NULL, 'pending', 'cancelled'), \
                         finished_at = IF(cancel_requested_at IS NULL, finished_at, UTC_TIMESTAMP(6)), \
                         due_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, \
                         lease_until = NULL, attempts = GREATEST(attempts, 1) - 1 WHERE id = ? AND claim_token = ? AND status = 'sending'",
                    )
                    .bind(*delay_us),
                    &mut counts[Outcome::HandedBack],
                ),
                Finish::HandBack => (
                    sqlx::query(
                        "UPDATE notifications SET status = IF(cancel_requested_at IS NULL, 'pending', 'cancelled'), \
                         finished_at = IF(cancel_requested_at IS NULL, finished_at, UTC_TIMESTAMP(6)), \
                         due_at = UTC_TIMESTAMP(6), lease_until = NULL, \
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
            Finish::HandBack | Finish::Defer { .. } => Outcome::HandedBack,
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
        Finish::Retry { .. } | Finish::HandBack | Finish::Defer { .. } => "pending",
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
        // A retry or hand-back of a row with a cancel request ends it
        // `cancelled` (see `herald cancel`).
        let cancelled =
            status == Some("cancelled") && matches!(f, Finish::Retry { .. } | Finish::HandBack);
        if status != Some(final_status(f)) && !cancelled {
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
