//! Statements that never wait for a row another transaction holds.
//!
//! Applications that share the table may hold `SELECT … FOR UPDATE` on rows
//! for as long as they like; a claim or finish that waited would stall
//! every worker with it. Each statement first runs with a zero lock wait
//! ([`all_or_nothing`]); if a row is busy, the caller locks only the free
//! rows ([`lock_free`]) and writes those. Also here: which SQL errors are
//! about one row ([`is_row_error`]), so a batch can be split to isolate it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::mysql::{MySql, MySqlConnection, MySqlRow};
use sqlx::pool::PoolConnection;
use sqlx::{Executor, MySqlPool, Row};

/// A pooled connection inside a transaction: closed instead of pooled when
/// dropped before [`TxConn::done`].
pub(super) struct TxConn(Option<PoolConnection<MySql>>);

impl TxConn {
    pub(super) async fn new(pool: &MySqlPool) -> Result<TxConn, sqlx::Error> {
        Ok(TxConn(Some(pool.acquire().await?)))
    }

    pub(super) fn conn(&mut self) -> &mut MySqlConnection {
        self.0.as_mut().expect("connection taken")
    }

    /// The transaction ended (committed or rolled back): pool it again.
    pub(super) fn done(mut self) {
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
pub(super) async fn lock_free(
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

/// Whether rows were lately found locked by other transactions.
///
/// While an application holds locks on rows spread over the table, nearly
/// every batch meets one, and the one-round-trip path then fails after
/// doing (and undoing) most of its work before the locking read runs: in a
/// release build that cost a third of the drain rate. So after a statement
/// met a foreign lock, the next ones go straight to the skip-locked path for
/// [`ForeignLocks::MEMORY`]; then the fast path is tried again.
///
/// Also remembers whether the server takes the claim's one-round-trip
/// form (a locking read that collects ids in a session variable, then an
/// update prepared from it): MariaDB, asked once; see
/// [`super::claim::claim_rows`].
#[derive(Debug, Default)]
pub struct ForeignLocks {
    seen: Mutex<Option<Instant>>,
    one_trip_claim: tokio::sync::OnceCell<bool>,
}

impl ForeignLocks {
    pub const MEMORY: Duration = Duration::from_secs(5);

    /// Whether claims take the one-round-trip form. Decided by the
    /// server's version on first use; a failed question is asked again
    /// next time (the other path serves meanwhile).
    pub(super) async fn one_trip_claim(&self, pool: &MySqlPool) -> bool {
        let asked = self
            .one_trip_claim
            .get_or_try_init(|| async {
                sqlx::query_scalar::<_, String>("SELECT VERSION()")
                    .fetch_one(pool)
                    .await
                    .map(|v| v.contains("MariaDB"))
            })
            .await;
        asked.is_ok_and(|yes| *yes)
    }

    fn recently_seen(&self) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.is_some_and(|t| t.elapsed() < Self::MEMORY)
    }

    fn saw(&self) {
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }
}

/// [`all_or_nothing`], unless foreign locks were met lately (then `None`
/// at once, as if it had met one).
pub(super) async fn fast_path(
    pool: &MySqlPool,
    then: &str,
    foreign: &ForeignLocks,
) -> Result<Option<Vec<MySqlRow>>, sqlx::Error> {
    if foreign.recently_seen() {
        return Ok(None);
    }
    let rows = all_or_nothing(pool, then).await?;
    if rows.is_none() {
        foreign.saw();
    }
    Ok(rows)
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
pub(super) fn is_lock_busy(e: &sqlx::Error) -> bool {
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
