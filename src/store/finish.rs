//! Step 5 of the delivery protocol (docs/design.md): the outcome writes.
//!
//! Every write after the claim is conditional on `claim_token` and
//! `status = 'sending'`: a worker that lost its claim (its lease expired and
//! someone else re-claimed the row) changes nothing, and the caller learns
//! that from the row count.
//!
//! A finish also records its attempt ([`super::attempts`]): the last
//! attempt's HTTP status and duration on the row, and a history row, in
//! the same transaction, for each attempt whose finish took effect.

use std::collections::BTreeMap;
use std::fmt::Write;

use sqlx::mysql::MySqlRow;
use sqlx::{Executor, MySqlPool, Row};

use super::attempts::{self, History, Insert};
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
    let reason = literal::fit(reason, 1024);
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

/// [`finish_recorded`] without attempts to record.
pub async fn finish_rows(
    pool: &MySqlPool,
    token: &[u8; 16],
    rows: &[(u64, Finish)],
    foreign: &ForeignLocks,
) -> Result<(FinishCounts, Vec<u64>), sqlx::Error> {
    finish_recorded(pool, token, rows, History::none(), foreign).await
}

/// Applies finishes for rows claimed under one token, with their attempts.
///
/// Like the claim, a finish never waits for a row another transaction has
/// locked (an application's `SELECT … FOR UPDATE` can lock rows we claimed
/// as easily as pending ones): it locks the rows that are free in one round
/// trip, writes those, and returns the ids of the rows that are still ours
/// but were busy, for the caller to write again later. `Sent` rows (the
/// common case) go out in one statement together with the `COMMIT`; the
/// rest, which carry per-row values, in one statement each.
///
/// History rows are written as one `INSERT` just before the `COMMIT`, for
/// the rows this transaction holds locked as ours: their writes cannot
/// fail to take effect, so history and finish commit (or vanish) together.
/// A batch of `sent` rows with no history to write (the default) takes the
/// one-round-trip path instead.
pub async fn finish_recorded(
    pool: &MySqlPool,
    token: &[u8; 16],
    rows: &[(u64, Finish)],
    history: History<'_>,
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
    let all_sent = rows.iter().all(|(_, f)| *f == Finish::Sent);
    if all_sent && !(history.record_sent && history.any(ids.iter().copied())) {
        // The common case, in one round trip when nothing is locked
        // elsewhere.
        let then = sent_sql(&ids, token, &history);
        if let Some(r) = fast_path(pool, &then, foreign).await? {
            let n = row_counts(&r);
            counts[Outcome::Sent] = n;
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
        let mut insert = Insert::new();
        for pair in rows
            .iter()
            .filter(|(id, f)| *f != Finish::Sent && locked.contains(id))
        {
            let (id, f) = pair;
            let attempt = history.get(*id);
            let changed = write_one(tx.conn(), token, *id, f, attempt).await?;
            counts[f.outcome()] += changed;
            if changed == 0 {
                unchanged.push(pair.clone());
                continue;
            }
            match (f, attempt) {
                (Finish::Retry { error, .. }, Some(a)) => {
                    insert.push(*id, a, attempts::RETRIED, Some(error), history.worker_id)
                }
                (Finish::Failed { error }, Some(a)) => {
                    insert.push(*id, a, attempts::FAILED, Some(error), history.worker_id)
                }
                _ => {}
            }
        }
        let sent: Vec<u64> = rows
            .iter()
            .filter(|(id, f)| *f == Finish::Sent && locked.contains(id))
            .map(|(id, _)| *id)
            .collect();
        if history.record_sent {
            // Locked as ours above, so the update below takes effect.
            for id in &sent {
                if let Some(a) = history.get(*id) {
                    insert.push(*id, a, attempts::SENT, None, history.worker_id);
                }
            }
        }
        let mut sql = String::new();
        if !insert.is_empty() {
            sql.push_str(insert.sql());
            sql.push_str("; ");
        }
        if !sent.is_empty() {
            sql.push_str(&sent_sql(&sent, token, &history));
            sql.push_str("; ");
        }
        sql.push_str("COMMIT");
        let done = tx.conn().fetch_all(sqlx::raw_sql(&sql)).await?;
        counts[Outcome::Sent] = row_counts(&done);
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

/// The status (and finish time) of a row going back to pending: an
/// operator's cancel request ends it `cancelled` instead.
const BACK_TO_PENDING: &str = "status = IF(cancel_requested_at IS NULL, 'pending', 'cancelled'), \
     finished_at = IF(cancel_requested_at IS NULL, finished_at, UTC_TIMESTAMP(6))";

/// The fenced write of one row that is not `sent`; returns the rows changed.
async fn write_one(
    conn: &mut sqlx::MySqlConnection,
    token: &[u8; 16],
    id: u64,
    f: &Finish,
    attempt: Option<&attempts::Attempt>,
) -> Result<u64, sqlx::Error> {
    // The last attempt's facts, when this finish follows one.
    let last = if attempt.is_some() {
        ", last_http_status = ?, last_duration_ms = ?"
    } else {
        ""
    };
    let fence = "WHERE id = ? AND claim_token = ? AND status = 'sending'";
    let sql = match f {
        Finish::Sent => unreachable!("sent rows are written together"),
        // An operator's cancel request (`herald cancel`) turns every way
        // back to pending into `cancelled`.
        Finish::Retry { .. } => format!(
            "UPDATE notifications SET {BACK_TO_PENDING}, due_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, \
             lease_until = NULL, last_error = ?{last} {fence}"
        ),
        Finish::Failed { .. } => format!(
            "UPDATE notifications SET status = 'failed', finished_at = UTC_TIMESTAMP(6), lease_until = NULL, \
             last_error = ?{last} {fence}"
        ),
        Finish::Expired => format!(
            "UPDATE notifications SET status = 'expired', finished_at = UTC_TIMESTAMP(6), lease_until = NULL, \
             attempts = GREATEST(attempts, 1) - 1 {fence}"
        ),
        Finish::Defer { .. } => format!(
            "UPDATE notifications SET {BACK_TO_PENDING}, due_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, \
             lease_until = NULL, attempts = GREATEST(attempts, 1) - 1 {fence}"
        ),
        Finish::HandBack => format!(
            "UPDATE notifications SET {BACK_TO_PENDING}, due_at = UTC_TIMESTAMP(6), lease_until = NULL, \
             attempts = GREATEST(attempts, 1) - 1 {fence}"
        ),
    };
    let mut q = sqlx::query(&sql);
    match f {
        Finish::Retry { delay_us, error } => {
            q = q.bind(*delay_us).bind(literal::fit(error, 1024));
        }
        Finish::Failed { error } => q = q.bind(literal::fit(error, 1024)),
        Finish::Defer { delay_us } => q = q.bind(*delay_us),
        _ => {}
    }
    if matches!(f, Finish::Retry { .. } | Finish::Failed { .. }) {
        if let Some(a) = attempt {
            q = q.bind(a.http_status).bind(a.duration_ms);
        }
    }
    Ok(q.bind(id)
        .bind(&token[..])
        .execute(conn)
        .await?
        .rows_affected())
}

/// The sum of the `SELECT ROW_COUNT()` rows a statement list answered.
fn row_counts(rows: &[MySqlRow]) -> u64 {
    rows.iter()
        .filter_map(|r| r.try_get::<i64, _>(0).ok())
        .map(|n| n.max(0) as u64)
        .sum()
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

/// The fenced `sent` write of `ids`, followed by `SELECT ROW_COUNT()`.
/// The last attempt's status and duration go on each row, in the same
/// statement (see [`set_per_row`]): one statement per batch, as before
/// they were recorded.
fn sent_sql(ids: &[u64], token: &[u8; 16], history: &History<'_>) -> String {
    sent_sql_of(&[SentClaim { token, ids }], history)
}

/// [`sent_sql`] for the rows of several claims: each row is fenced by its
/// own claim's token.
fn sent_sql_of(claims: &[SentClaim<'_>], history: &History<'_>) -> String {
    let ids: Vec<u64> = claims.iter().flat_map(|c| c.ids.iter().copied()).collect();
    let mut sql = String::with_capacity(ids.len() * 16 + claims.len() * 48 + 320);
    sql.push_str(
        "UPDATE notifications SET status = 'sent', finished_at = UTC_TIMESTAMP(6), lease_until = NULL, \
         last_error = NULL",
    );
    if history.any(ids.iter().copied()) {
        // A row without an attempt keeps its value (the column itself).
        set_per_row(&mut sql, "last_http_status", &ids, |id| {
            match history.get(id).map(|a| a.http_status) {
                None => Value::Keep,
                Some(None) => Value::Null,
                Some(Some(s)) => Value::Int(s.into()),
            }
        });
        set_per_row(&mut sql, "last_duration_ms", &ids, |id| {
            history
                .get(id)
                .map_or(Value::Keep, |a| Value::Int(a.duration_ms.into()))
        });
    }
    sql.push_str(" WHERE id IN (");
    literal::ids(&mut sql, &ids);
    sql.push_str(") AND claim_token = ");
    match claims {
        [one] => literal::bytes(&mut sql, one.token),
        [rest @ .., last] => {
            sql.push_str("CASE");
            for c in rest {
                sql.push_str(" WHEN id IN (");
                literal::ids(&mut sql, c.ids);
                sql.push_str(") THEN ");
                literal::bytes(&mut sql, c.token);
            }
            // The id list above leaves only the last claim's rows here.
            sql.push_str(" ELSE ");
            literal::bytes(&mut sql, last.token);
            sql.push_str(" END");
        }
        [] => sql.push_str("NULL"),
    }
    sql.push_str(" AND status = 'sending'; SELECT ROW_COUNT()");
    sql
}

/// The rows of one claim that were all delivered.
#[derive(Debug, Clone, Copy)]
pub struct SentClaim<'a> {
    pub token: &'a [u8; 16],
    pub ids: &'a [u64],
}

/// Records `sent` for the rows of several claims in one statement.
///
/// Rows finish in a steady trickle when sends are slow, so one finisher
/// round holds the rows of two or three claims; written per claim, that
/// was two or three statements (and commits) of ~20 rows each.
///
/// `Ok(true)`: every row was recorded. `Ok(false)`: some row did not
/// change (locked by another transaction, claim lost, or a foreign lock
/// was met lately) and the others may have: the caller then writes each
/// claim with [`finish_recorded`], which counts rows this statement
/// already recorded as recorded. Only for rows whose history (if any) is
/// written on the row alone (`HERALD_RECORD_ATTEMPTS` other than `all`).
pub async fn finish_sent_together(
    pool: &MySqlPool,
    claims: &[SentClaim<'_>],
    history: &History<'_>,
    foreign: &ForeignLocks,
) -> Result<bool, sqlx::Error> {
    let total: usize = claims.iter().map(|c| c.ids.len()).sum();
    if total == 0 {
        return Ok(true);
    }
    let sql = sent_sql_of(claims, history);
    Ok(match fast_path(pool, &sql, foreign).await? {
        Some(r) => row_counts(&r) as usize == total,
        None => false,
    })
}

/// A value [`set_per_row`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Value {
    Keep,
    Null,
    Int(u64),
}

/// Appends `, column = <expr>` giving each of `ids` its own value in one
/// statement: the most common value as the default, and `CASE WHEN id IN
/// (…) THEN v` for the others. The servers look constant `IN` lists up by
/// binary search, so this stays cheap for a large batch, and a batch of
/// instant sends (all 0 ms, no status) needs no `CASE` at all. Nothing is
/// appended when every row keeps its value.
fn set_per_row(sql: &mut String, column: &str, ids: &[u64], value: impl Fn(u64) -> Value) {
    let mut groups: BTreeMap<Value, Vec<u64>> = BTreeMap::new();
    for id in ids {
        groups.entry(value(*id)).or_default().push(*id);
    }
    let Some(common) = groups
        .iter()
        .max_by_key(|(_, ids)| ids.len())
        .map(|(v, _)| *v)
    else {
        return;
    };
    if groups.len() == 1 && common == Value::Keep {
        return;
    }
    let put = |sql: &mut String, v: Value| match v {
        Value::Keep => sql.push_str(column),
        Value::Null => sql.push_str("NULL"),
        Value::Int(n) => {
            let _ = write!(sql, "{n}");
        }
    };
    let _ = write!(sql, ", {column} = ");
    if groups.len() == 1 {
        put(sql, common);
        return;
    }
    sql.push_str("CASE");
    for (v, ids) in groups.iter().filter(|(v, _)| **v != common) {
        sql.push_str(" WHEN id IN (");
        literal::ids(sql, ids);
        sql.push_str(") THEN ");
        put(sql, *v);
    }
    sql.push_str(" ELSE ");
    put(sql, common);
    sql.push_str(" END");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_row_values_use_the_common_one_as_the_default() {
        let value = |id: u64| match id {
            1..=3 => Value::Int(0),
            4 => Value::Int(7),
            5 => Value::Null,
            _ => Value::Keep,
        };
        let mut sql = String::new();
        set_per_row(&mut sql, "c", &[1, 2, 3, 4, 5, 6], value);
        assert_eq!(
            sql,
            ", c = CASE WHEN id IN (6) THEN c WHEN id IN (5) THEN NULL WHEN id IN (4) THEN 7 ELSE 0 END"
        );
        let mut sql = String::new();
        set_per_row(&mut sql, "c", &[1, 2], value);
        assert_eq!(sql, ", c = 0");
        let mut sql = String::new();
        set_per_row(&mut sql, "c", &[6, 7], value);
        assert_eq!(sql, "", "every row keeps its value");
    }
}
