//! The one way this module changes rows: lock the free ones among a page
//! of ids (skipping rows other transactions hold), update exactly those
//! under a condition re-checked under the lock, commit. One short READ
//! COMMITTED transaction per page, never a wait on a foreign lock.

use sqlx::{Executor, MySqlPool};

use crate::store::guarded::lock_free;
use crate::store::literal;

/// Sets `set` on the rows among `ids` that satisfy `cond` and that no
/// other transaction holds; returns the ids it changed. Rows skipped
/// (locked elsewhere, or no longer matching `cond`) are for the caller to
/// report or try again.
pub(super) async fn apply(
    pool: &MySqlPool,
    ids: &[u64],
    cond: &str,
    set: &str,
) -> Result<Vec<u64>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut filter = String::with_capacity(ids.len() * 8 + cond.len() + 32);
    filter.push_str(" WHERE id IN (");
    literal::ids(&mut filter, ids);
    filter.push_str(") AND (");
    filter.push_str(cond);
    filter.push(')');
    let Some((mut tx, locked)) = lock_free(pool, &filter).await? else {
        return Ok(Vec::new());
    };
    let mut sql = format!("UPDATE notifications SET {set} WHERE id IN (");
    literal::ids(&mut sql, &locked);
    sql.push_str(") AND (");
    sql.push_str(cond);
    sql.push_str("); COMMIT");
    tx.conn().execute(sqlx::raw_sql(&sql)).await?;
    tx.done();
    Ok(locked)
}
