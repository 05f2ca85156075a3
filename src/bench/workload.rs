//! The database of one run, and the bulk inserts done before timing.
//!
//! Rows are inserted with literal multi-row `INSERT`s (every value is a
//! number, a timestamp or an already validated name), a few thousand rows per
//! statement, so setting up 200,000 rows takes seconds.

use std::fmt::Write as _;

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::secret::SecretUrl;
use crate::store::Store;

/// Rows per INSERT statement.
const CHUNK: u64 = 2_000;

/// A fresh, migrated `herald_bench_<random>` database; dropped by
/// [`BenchDb::finish`] or, failing that, on drop (unless kept).
#[derive(Debug)]
pub struct BenchDb {
    pub name: String,
    pub url: SecretUrl,
    pub store: Store,
    server: SecretUrl,
    keep: bool,
    dropped: bool,
}

impl BenchDb {
    /// Creates and migrates a new database on the server of `base`.
    pub async fn create(base: &SecretUrl, keep: bool) -> anyhow::Result<BenchDb> {
        let name = format!(
            "herald_bench_{:012x}",
            rand::random::<u64>() & 0xffff_ffff_ffff
        );
        let mut url = base.url().clone();
        url.set_path(&format!("/{name}"));
        let url = SecretUrl::parse(url.as_str()).map_err(anyhow::Error::msg)?;
        let mut server = base.url().clone();
        server.set_path("");
        let server = SecretUrl::parse(server.as_str()).map_err(anyhow::Error::msg)?;
        if let Err(e) = crate::store::migrate::migrate(&url).await {
            let _ = drop_database(&server, &name).await;
            return Err(e.context(format!("creating the benchmark database {name}")));
        }
        let db = BenchDb {
            store: Store::connect(&url, 4).await?,
            name,
            url,
            server,
            keep,
            dropped: false,
        };
        if keep {
            eprintln!("bench: database {} (kept)", db.name);
        }
        Ok(db)
    }

    /// Closes the pool and drops the database (unless kept).
    pub async fn finish(mut self) -> anyhow::Result<()> {
        self.store.close().await;
        if !self.keep {
            drop_database(&self.server, &self.name).await?;
        }
        self.dropped = true;
        Ok(())
    }
}

impl Drop for BenchDb {
    fn drop(&mut self) {
        if self.dropped || self.keep {
            return;
        }
        // An error path: drop it from a plain thread with its own runtime,
        // so this works inside the async caller too.
        let (server, name) = (self.server.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let _ = rt.block_on(drop_database(&server, &name));
            }
        })
        .join();
    }
}

async fn drop_database(server: &SecretUrl, name: &str) -> anyhow::Result<()> {
    let admin = Store::connect(server, 1).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS `{name}`"))
        .execute(admin.pool())
        .await
        .with_context(|| format!("dropping {name}"))?;
    admin.close().await;
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS.ffffff`, the literal form of a DATETIME(6).
pub fn sql_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

/// Inserts `count` pending notifications numbered `first..first+count`
/// (user = number mod `users`), due at `send_at`. `channel` and `region`
/// must be plain names (they are validated names in every caller).
pub async fn enqueue(
    store: &Store,
    first: u64,
    count: u64,
    users: u64,
    channel: &str,
    region: &str,
    send_at: DateTime<Utc>,
) -> anyhow::Result<()> {
    debug_assert!(crate::name::is_valid(channel) && crate::name::is_valid(region));
    let at = sql_time(send_at);
    let mut n = first;
    let end = first + count;
    while n < end {
        let stop = (n + CHUNK).min(end);
        let mut sql = String::with_capacity(80 * (stop - n) as usize + 128);
        sql.push_str(
            "INSERT INTO notifications (user_id, channel, region, payload, send_at, due_at) VALUES ",
        );
        for i in n..stop {
            if i > n {
                sql.push(',');
            }
            let _ = write!(
                sql,
                "({},'{channel}','{region}','{{\"n\":{i}}}','{at}','{at}')",
                i % users
            );
        }
        sqlx::query(&sql)
            .execute(store.pool())
            .await
            .context("inserting benchmark notifications")?;
        n = stop;
    }
    Ok(())
}

/// The drain scenarios' backlog: `m` rows on the `file` channel for `users`
/// users, due a second ago (so a database clock slightly behind ours still
/// sees them due), flushed ([`settle`]). Returns their ids, ascending.
pub async fn due_backlog(
    store: &Store,
    m: u64,
    users: u64,
    region: &str,
    after_id: u64,
) -> anyhow::Result<Vec<u64>> {
    let send_at = chrono::Utc::now() - chrono::Duration::seconds(1);
    enqueue(store, 0, m, users, "file", region, send_at).await?;
    let ids = ids_after(store, after_id).await?;
    settle(store).await?;
    Ok(ids)
}

/// Flushes the table's dirty pages before the clock starts. Without this
/// the timed run shares the disk and CPU with the server writing back what
/// the (untimed) set-up just inserted, and a scenario with more set-up rows
/// looks slower for a reason that has nothing to do with it.
/// `FLUSH TABLES … FOR EXPORT` does this for one table only, without
/// touching server-wide settings.
pub async fn settle(store: &Store) -> anyhow::Result<()> {
    let mut conn = store.pool().acquire().await?;
    sqlx::raw_sql("FLUSH TABLES notifications FOR EXPORT")
        .execute(&mut *conn)
        .await
        .context("flushing the table before timing")?;
    sqlx::raw_sql("UNLOCK TABLES").execute(&mut *conn).await?;
    Ok(())
}

/// Inserts `count` rows already `sent` long ago (finished two days before
/// now), for the cleanup scenario. Returns the largest id they got.
pub async fn insert_old_sent(store: &Store, count: u64, region: &str) -> anyhow::Result<u64> {
    debug_assert!(crate::name::is_valid(region));
    let finished = Utc::now() - chrono::Duration::days(2);
    let (sent, fin) = (
        sql_time(finished - chrono::Duration::seconds(1)),
        sql_time(finished),
    );
    let mut n = 0;
    while n < count {
        let stop = (n + CHUNK).min(count);
        let mut sql = String::with_capacity(120 * (stop - n) as usize + 160);
        sql.push_str(
            "INSERT INTO notifications (user_id, channel, region, payload, send_at, due_at, \
             status, attempts, finished_at, created_at) VALUES ",
        );
        for i in n..stop {
            if i > n {
                sql.push(',');
            }
            let _ = write!(
                sql,
                "({},'file','{region}','{{\"old\":{i}}}','{sent}','{sent}','sent',1,'{fin}','{sent}')",
                i % 10_000
            );
        }
        sqlx::query(&sql)
            .execute(store.pool())
            .await
            .context("inserting old sent rows")?;
        n = stop;
    }
    let max: Option<u64> = sqlx::query_scalar("SELECT MAX(id) FROM notifications")
        .fetch_one(store.pool())
        .await?;
    Ok(max.unwrap_or(0))
}

/// Ids of the rows above `after_id`, ascending.
pub async fn ids_after(store: &Store, after_id: u64) -> anyhow::Result<Vec<u64>> {
    Ok(
        sqlx::query_scalar("SELECT id FROM notifications WHERE id > ? ORDER BY id")
            .bind(after_id)
            .fetch_all(store.pool())
            .await?,
    )
}

/// Rows of `region` above `after_id` not finished yet. Counts through the
/// due index, so it reads only the unfinished rows' entries; for a timeout
/// message. The drain's end is watched with [`any_unfinished`].
pub async fn unfinished_count(store: &Store, region: &str, after_id: u64) -> anyhow::Result<u64> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM notifications FORCE INDEX (ix_notifications_due) \
         WHERE region = ? AND status IN ('pending','sending') AND id > ?",
    )
    .bind(region)
    .bind(after_id)
    .fetch_one(store.pool())
    .await?;
    Ok(n as u64)
}

/// Whether any row of `region` above `after_id` is not finished yet.
///
/// The drain's end is checked every 500 ms, and every 2 ms once all rows
/// are delivered. A count of the unfinished rows walks every one of their
/// index entries: at the start of a 50,000-row S1 that is 50,000 entries
/// per check, which the database counters showed as a third of all index
/// entries S1 read (the benchmark measuring itself). Stopping at the first
/// unfinished row costs one entry while the queue is full.
pub async fn any_unfinished(store: &Store, region: &str, after_id: u64) -> anyhow::Result<bool> {
    let row: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM notifications FORCE INDEX (ix_notifications_due) \
         WHERE region = ? AND status IN ('pending','sending') AND id > ? LIMIT 1",
    )
    .bind(region)
    .bind(after_id)
    .fetch_optional(store.pool())
    .await?;
    Ok(row.is_some())
}

/// Ids above `after_id` whose row is not `sent`.
pub async fn not_sent(store: &Store, after_id: u64) -> anyhow::Result<Vec<u64>> {
    Ok(
        sqlx::query_scalar("SELECT id FROM notifications WHERE id > ? AND status <> 'sent'")
            .bind(after_id)
            .fetch_all(store.pool())
            .await?,
    )
}

/// Which worker claimed each row above `after_id` (rows never claimed are
/// left out).
pub async fn claimed_by(
    store: &Store,
    after_id: u64,
) -> anyhow::Result<std::collections::HashMap<u64, String>> {
    let rows: Vec<(u64, String)> = sqlx::query_as(
        "SELECT id, claimed_by FROM notifications WHERE id > ? AND claimed_by IS NOT NULL",
    )
    .bind(after_id)
    .fetch_all(store.pool())
    .await?;
    Ok(rows.into_iter().collect())
}

/// Rows with an id up to `max_id` (the cleanup backlog still present).
pub async fn count_up_to(store: &Store, max_id: u64) -> anyhow::Result<u64> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM notifications WHERE id <= ?")
        .bind(max_id)
        .fetch_one(store.pool())
        .await?;
    Ok(n as u64)
}
