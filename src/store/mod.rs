//! Everything that talks to MySQL.
//!
//! MySQL is Herald's correctness layer: Redis locks only decide who *tries*
//! to send a row, the fenced `UPDATE`s in [`claim`] decide who *may*. Each
//! submodule owns one group of statements:
//!
//! * [`connect`] — opens connections and names why one could not be opened.
//! * [`migrate`] — creates the database and applies the embedded migrations.
//! * [`enqueue`] — validated, batched, idempotent inserts.
//! * [`candidates`] — the due rows (protocol step 1).
//! * [`claim`] — the fenced claim and the read-back (step 3).
//! * [`ops`] — what operators do to rows: show, list, retry, cancel, counts.
//! * [`defer`] — rows of a rate-limited or broken channel moved out of the
//!   way (their `due_at` to when they may go), without an attempt.
//! * [`finish`] — the outcome writes, each fenced by the claim (step 5),
//!   and the isolated `failed` write of a row nothing else can write.
//! * [`attempts`] — the attempt history the finish writes record, and
//!   reading it back.
//! * `guarded` — statements that never wait for rows another transaction
//!   holds, and which errors are about one row.
//! * [`status`] — counts by status, backlog and lag.
//! * [`retrying`] — rows waiting for a retry and the latest error per
//!   channel, from bounded index walks.
//! * [`prune`] — the cleanup task's gated, batched deletes.
//! * `literal` — safe SQL literals for the hot statements sent as text.
//!
//! All time comparisons use the database clock (`UTC_TIMESTAMP(6)`), so
//! instances whose clocks drift still agree on when a lease expired.

pub mod attempts;
pub mod candidates;
pub mod claim;
pub mod connect;
pub mod defer;
pub mod enqueue;
pub mod finish;
mod guarded;
mod literal;
pub mod migrate;
pub mod ops;
pub mod prune;
pub mod retrying;
pub mod status;

pub use guarded::{is_row_error, ForeignLocks};

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};

use crate::secret::SecretUrl;

/// A handle on the notifications table; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: MySqlPool,
}

impl Store {
    /// Connects a pool. One connection is opened by hand first, so a server
    /// that is down, a wrong password or a missing database fails at once
    /// with its cause ([`connect::ConnectError`]) instead of the pool's
    /// "timed out" after retrying. The URL's password never appears in the
    /// error.
    pub async fn connect(url: &SecretUrl, max_connections: u32) -> anyhow::Result<Store> {
        let options = connect_options(url)?;
        let probe = connect::probe(url, &options).await?;
        sqlx::Connection::close(probe).await.ok();
        let pool = MySqlPoolOptions::new()
            .max_connections(max_connections)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(|conn, _| Box::pin(session_settings(conn)))
            .connect_with(options)
            .await
            .with_context(|| format!("connecting to MySQL at {url}"))?;
        Ok(Store { pool })
    }

    pub fn from_pool(pool: MySqlPool) -> Store {
        Store { pool }
    }

    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// A cheap round trip, for readiness checks.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Settings every pooled connection gets.
///
/// MariaDB rewrites an `IN` list of 1,000 values or more
/// (`in_predicate_conversion_threshold`) into a join with a derived table,
/// and then plans the hot statements' id lists, which are 1,000 ids long
/// with the default batch size, as full table scans: an update that reads
/// and locks every row of the table, and a skip-locked read that found no
/// row at all while another connection held some (`herald bench ceiling
/// --w 2` lost half its rows until this was set). Turned off, the lists stay
/// primary-key lookups. MySQL has neither the rewrite nor the variable; its
/// "unknown variable" is ignored.
pub async fn session_settings(conn: &mut sqlx::MySqlConnection) -> Result<(), sqlx::Error> {
    use sqlx::Executor;
    match conn
        .execute("SET SESSION in_predicate_conversion_threshold = 0")
        .await
    {
        Err(sqlx::Error::Database(e))
            if e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .is_some_and(|m| m.number() == 1193) =>
        {
            Ok(())
        }
        r => r.map(|_| ()),
    }
}

/// Parses a `mysql://` URL into options; statement logging is turned down
/// because the worker's statements are many and routine.
pub fn connect_options(url: &SecretUrl) -> anyhow::Result<MySqlConnectOptions> {
    use sqlx::ConnectOptions;
    let options = MySqlConnectOptions::from_str(url.expose())
        .map_err(|e| {
            anyhow::anyhow!(
                "HERALD_DATABASE_URL {url}: {}",
                redact_error(&e.to_string(), url)
            )
        })?
        .log_statements(log::LevelFilter::Trace)
        .log_slow_statements(log::LevelFilter::Warn, Duration::from_secs(2));
    Ok(options)
}

/// sqlx errors may quote the URL they failed on; strip the password out.
pub(crate) fn redact_error(message: &str, url: &SecretUrl) -> String {
    match url.url().password() {
        Some(pw) if !pw.is_empty() => message.replace(pw, "***"),
        _ => message.to_owned(),
    }
}
