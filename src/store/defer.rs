//! Rows held back without being sent: a channel over its rate limit or
//! behind an open circuit breaker (see `crate::gate`).
//!
//! Candidates are read in due order, so rows that may not go now would stay
//! at the head of the queue and be read again by every poll, crowding out
//! the channels that can go. [`defer`] moves their `due_at` to the time they
//! may go instead. It never counts an attempt, never waits for a row another
//! transaction holds (like the claim: zero lock wait first, then only the
//! free rows), and changes only rows that are still available to any
//! worker (pending and due, or sending with an expired lease), so it cannot
//! disturb a row another instance has claimed meanwhile.

use std::collections::HashMap;
use std::fmt::Write;
use std::time::Duration;

use sqlx::{Executor, MySqlPool, Row};

use super::guarded::{fast_path, lock_free, ForeignLocks};
use super::literal;

/// The channel of each of `ids` (rows deleted meanwhile are absent). Only
/// asked when some channel is gated: the candidate read stays on its
/// covering index, which has no channel.
pub async fn channels(pool: &MySqlPool, ids: &[u64]) -> Result<HashMap<u64, String>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut sql = String::with_capacity(ids.len() * 8 + 64);
    sql.push_str("SELECT id, channel FROM notifications WHERE id IN (");
    literal::ids(&mut sql, ids);
    sql.push(')');
    let rows = sqlx::raw_sql(&sql).fetch_all(pool).await?;
    let mut out = HashMap::with_capacity(rows.len());
    for r in &rows {
        out.insert(r.try_get::<u64, _>(0)?, r.try_get::<String, _>(1)?);
    }
    Ok(out)
}

/// Moves each row's `due_at` to now (the database's clock) plus its delay,
/// if it is still available; returns how many rows moved. Rows locked by
/// another transaction are left as they are (a later poll meets them
/// again).
pub async fn defer(
    pool: &MySqlPool,
    regions: &[String],
    rows: &[(u64, Duration)],
    foreign: &ForeignLocks,
) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let ids: Vec<u64> = rows.iter().map(|(id, _)| *id).collect();
    let then = update_sql(regions, rows, &ids) + "; SELECT ROW_COUNT()";
    if let Some(r) = fast_path(pool, &then, foreign).await? {
        return Ok(count(&r));
    }
    let mut cond = String::with_capacity(ids.len() * 8 + 256);
    condition(&mut cond, regions, &ids);
    let Some((mut tx, locked)) = lock_free(pool, &cond).await? else {
        return Ok(0);
    };
    let then = update_sql(regions, rows, &locked) + "; SELECT ROW_COUNT(); COMMIT";
    let r = tx.conn().fetch_all(sqlx::raw_sql(&then)).await?;
    tx.done();
    Ok(count(&r))
}

fn count(rows: &[sqlx::mysql::MySqlRow]) -> u64 {
    rows.first()
        .and_then(|r| r.try_get::<i64, _>(0).ok())
        .unwrap_or(0)
        .max(0) as u64
}

/// Available to any worker: the claim's own condition.
fn condition(sql: &mut String, regions: &[String], ids: &[u64]) {
    sql.push_str(" WHERE id IN (");
    literal::ids(sql, ids);
    sql.push_str(
        ") AND status IN ('pending', 'sending') AND due_at <= UTC_TIMESTAMP(6) AND region IN (",
    );
    literal::texts(sql, regions.iter().map(String::as_str));
    sql.push(')');
}

/// The update of `ids` (a subset of `rows`), each to its own delay; rows
/// sharing a delay (a breaker's) need no `CASE` arm each.
fn update_sql(regions: &[String], rows: &[(u64, Duration)], ids: &[u64]) -> String {
    let delays: HashMap<u64, i64> = rows
        .iter()
        .map(|(id, d)| (*id, i64::try_from(d.as_micros()).unwrap_or(i64::MAX)))
        .collect();
    let first = delays.get(&ids[0]).copied().unwrap_or(0);
    let mut sql = String::with_capacity(ids.len() * 40 + 512);
    sql.push_str(
        "UPDATE notifications SET status = 'pending', lease_until = NULL, \
         due_at = UTC_TIMESTAMP(6) + INTERVAL ",
    );
    if ids
        .iter()
        .all(|id| delays.get(id).copied().unwrap_or(0) == first)
    {
        let _ = write!(sql, "{first}");
    } else {
        sql.push_str("CASE id");
        for id in ids {
            let _ = write!(
                sql,
                " WHEN {id} THEN {}",
                delays.get(id).copied().unwrap_or(0)
            );
        }
        sql.push_str(" ELSE 0 END");
    }
    sql.push_str(" MICROSECOND");
    condition(&mut sql, regions, ids);
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_delay_needs_no_case() {
        let regions = vec!["eu".to_owned()];
        let same = [(1, Duration::from_secs(2)), (2, Duration::from_secs(2))];
        let sql = update_sql(&regions, &same, &[1, 2]);
        assert!(sql.contains("INTERVAL 2000000 MICROSECOND"), "{sql}");
        let spread = [
            (1, Duration::from_millis(5)),
            (2, Duration::from_millis(10)),
        ];
        let sql = update_sql(&regions, &spread, &[1, 2]);
        assert!(
            sql.contains("CASE id WHEN 1 THEN 5000 WHEN 2 THEN 10000 ELSE 0 END"),
            "{sql}"
        );
    }
}
