//! Inserting notifications: validated input, batched statements, idempotent
//! on `dedupe_key`.
//!
//! The functions take a `&mut MySqlConnection` so a service embedding Herald
//! can enqueue inside its own transaction (`&mut *tx`): the notification is
//! then committed or rolled back together with the business change that
//! caused it.
//!
//! Counts are what the database did, not what a pre-check guessed: the
//! `INSERT` has no `ON DUPLICATE KEY` clause, so a key another writer
//! committed between our check and our insert fails the statement (1062),
//! and the rows are then inserted one at a time to find out which.

use std::collections::{HashMap, HashSet};

use sqlx::mysql::MySqlDatabaseError;
use sqlx::{MySqlConnection, QueryBuilder};

use crate::notification::NewNotification;

/// Rows per INSERT statement: 8 placeholders each stays far below MySQL's
/// 65,535 limit while amortising the round trip.
pub const INSERT_CHUNK: usize = 500;

/// Bytes per INSERT statement when the server's `max_allowed_packet` is not
/// known: a quarter of MariaDB's default (16 MiB) and of MySQL 8's (64 MiB),
/// so large payloads never make a statement the server refuses outright
/// (1153 closes the connection).
pub const INSERT_CHUNK_BYTES: usize = 4 << 20;

/// Fixed per-row cost on the wire besides the strings: 8 parameter headers,
/// ids and three datetimes, rounded up generously.
const ROW_OVERHEAD: usize = 128;

/// What happened to one input of a batch, in input order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New,
    /// A row with this `dedupe_key` already existed (or appeared earlier in
    /// the same batch); nothing was written.
    Duplicate {
        existing_id: Option<u64>,
    },
}

/// What happened to one input of [`enqueue_tolerant`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowOutcome {
    Done(Inserted),
    /// The database refused this row alone (a CHECK, a trigger, a value it
    /// does not take); nothing was written for it.
    Refused {
        reason: String,
    },
}

/// Bytes one row adds to an INSERT statement, for sizing chunks.
pub fn row_bytes(n: &NewNotification) -> usize {
    n.payload.len()
        + n.channel.len()
        + n.region.len()
        + n.dedupe_key.as_ref().map_or(0, String::len)
        + ROW_OVERHEAD
}

/// The statement size to stay under on this server: a quarter of its
/// `max_allowed_packet`, at most [`INSERT_CHUNK_BYTES`]. Returns the packet
/// limit too, so callers can refuse a row that could never fit.
pub async fn statement_budget(conn: &mut MySqlConnection) -> Result<(usize, usize), sqlx::Error> {
    let packet: u64 = sqlx::query_scalar("SELECT CAST(@@max_allowed_packet AS UNSIGNED)")
        .fetch_one(conn)
        .await?;
    let packet = usize::try_from(packet).unwrap_or(usize::MAX);
    Ok(((packet / 4).clamp(1, INSERT_CHUNK_BYTES), packet))
}

/// Inserts one notification and returns its id, or the id of the row that
/// already holds its `dedupe_key`.
pub async fn enqueue_one(
    conn: &mut MySqlConnection,
    n: &NewNotification,
) -> Result<(u64, Inserted), sqlx::Error> {
    if let Some(key) = &n.dedupe_key {
        if let Some(id) = existing_ids(conn, std::slice::from_ref(key), false)
            .await?
            .get(pad_key(key))
        {
            return Ok((
                *id,
                Inserted::Duplicate {
                    existing_id: Some(*id),
                },
            ));
        }
    }
    match insert_rows(conn, std::slice::from_ref(&n)).await {
        Ok(result) => Ok((result.last_insert_id(), Inserted::New)),
        Err(e) if is_duplicate_key(&e) => {
            // A concurrent enqueue won the race on the dedupe key.
            let key = n.dedupe_key.as_deref().unwrap_or_default();
            let existing = locked_id(conn, key).await?;
            Ok((
                existing.unwrap_or(0),
                Inserted::Duplicate {
                    existing_id: existing,
                },
            ))
        }
        Err(e) => Err(e),
    }
}

/// Inserts many notifications in chunks of at most [`INSERT_CHUNK`] rows and
/// [`INSERT_CHUNK_BYTES`]; returns one [`Inserted`] per input, in order.
///
/// Duplicates are detected before inserting (one `SELECT` per chunk); a key
/// another writer commits in between is found by the insert itself and
/// reported as a duplicate too. Any other database error is returned.
pub async fn enqueue_batch(
    conn: &mut MySqlConnection,
    items: &[NewNotification],
) -> Result<Vec<Inserted>, sqlx::Error> {
    let mut out = Vec::with_capacity(items.len());
    let mut seen = HashSet::new();
    for chunk in chunks(items, INSERT_CHUNK_BYTES) {
        for outcome in enqueue_chunk(conn, chunk, &mut seen, false).await? {
            match outcome {
                RowOutcome::Done(d) => out.push(d),
                RowOutcome::Refused { .. } => unreachable!("strict mode never refuses"),
            }
        }
    }
    Ok(out)
}

/// Like [`enqueue_batch`] for one chunk the caller sized (rows and bytes),
/// but a row the database refuses is reported as [`RowOutcome::Refused`]
/// with the database's reason while every other row goes in: a failing
/// statement is split in halves until the refused rows stand alone.
///
/// Errors that are not about one row (connection lost, table missing, lock
/// wait, deadlock) are returned; the caller should roll back. Run it inside
/// a transaction so such an error leaves nothing half-done.
pub async fn enqueue_tolerant(
    conn: &mut MySqlConnection,
    items: &[NewNotification],
) -> Result<Vec<RowOutcome>, sqlx::Error> {
    let mut seen = HashSet::new();
    enqueue_chunk(conn, items, &mut seen, true).await
}

/// Splits `items` into runs of at most [`INSERT_CHUNK`] rows and `max_bytes`
/// bytes (a row larger than `max_bytes` goes alone).
fn chunks(items: &[NewNotification], max_bytes: usize) -> Vec<&[NewNotification]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, n) in items.iter().enumerate() {
        let b = row_bytes(n);
        if i > start && (i - start >= INSERT_CHUNK || bytes + b > max_bytes) {
            out.push(&items[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += b;
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}

async fn enqueue_chunk<'a>(
    conn: &mut MySqlConnection,
    chunk: &'a [NewNotification],
    seen: &mut HashSet<&'a str>,
    tolerant: bool,
) -> Result<Vec<RowOutcome>, sqlx::Error> {
    let keys: Vec<String> = chunk.iter().filter_map(|n| n.dedupe_key.clone()).collect();
    let existing = existing_ids(conn, &keys, false).await?;
    let mut out = Vec::with_capacity(chunk.len());
    let mut to_insert = Vec::with_capacity(chunk.len());
    for (i, n) in chunk.iter().enumerate() {
        let verdict = match n.dedupe_key.as_deref() {
            Some(k) if existing.contains_key(pad_key(k)) => Inserted::Duplicate {
                existing_id: existing.get(pad_key(k)).copied(),
            },
            Some(k) if !seen.insert(pad_key(k)) => Inserted::Duplicate { existing_id: None },
            _ => {
                to_insert.push(i);
                Inserted::New
            }
        };
        out.push(RowOutcome::Done(verdict));
    }
    let rows: Vec<&NewNotification> = to_insert.iter().map(|&i| &chunk[i]).collect();
    let results = insert_split(conn, &rows, tolerant).await?;
    for (i, result) in to_insert.into_iter().zip(results) {
        out[i] = result;
    }
    Ok(out)
}

/// Inserts `rows`; on a row-level error splits them in halves (tolerant) or,
/// for a duplicate key only, one row at a time (strict).
async fn insert_split(
    conn: &mut MySqlConnection,
    rows: &[&NewNotification],
    tolerant: bool,
) -> Result<Vec<RowOutcome>, sqlx::Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let err = match insert_rows(conn, rows).await {
        Ok(_) => return Ok(vec![RowOutcome::Done(Inserted::New); rows.len()]),
        Err(e) => e,
    };
    if rows.len() == 1 {
        if is_duplicate_key(&err) && rows[0].dedupe_key.is_some() {
            let key = rows[0].dedupe_key.as_deref().unwrap_or_default();
            let existing_id = locked_id(conn, key).await?;
            return Ok(vec![RowOutcome::Done(Inserted::Duplicate { existing_id })]);
        }
        if tolerant && is_row_level(&err) {
            return Ok(vec![RowOutcome::Refused {
                reason: refusal(&err),
            }]);
        }
        return Err(err);
    }
    if is_duplicate_key(&err) && !tolerant {
        // Rare (a race with another writer): find the rows one by one.
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.extend(Box::pin(insert_split(conn, std::slice::from_ref(row), false)).await?);
        }
        return Ok(out);
    }
    if !(tolerant && is_row_level(&err)) {
        return Err(err);
    }
    let (left, right) = rows.split_at(rows.len() / 2);
    let mut out = Box::pin(insert_split(conn, left, tolerant)).await?;
    out.extend(Box::pin(insert_split(conn, right, tolerant)).await?);
    Ok(out)
}

/// MySQL error number of a database error.
pub fn error_number(e: &sqlx::Error) -> Option<u16> {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<MySqlDatabaseError>()
            .map(MySqlDatabaseError::number),
        _ => None,
    }
}

fn is_duplicate_key(e: &sqlx::Error) -> bool {
    error_number(e) == Some(1062)
}

/// Whether an INSERT error may be about some of its rows only, so splitting
/// the statement can isolate them. Errors about the statement, the table,
/// the session or the connection are not: splitting would only repeat them.
pub fn is_row_level(e: &sqlx::Error) -> bool {
    match error_number(e) {
        // Table or column missing, no privilege, read-only server.
        Some(1146 | 1054 | 1142 | 1143 | 1044 | 1045 | 1290 | 1792 | 1836) => false,
        // Lock wait timeout and deadlock: about other transactions.
        Some(1205 | 1213) => false,
        // Packet too large (the server closes the connection), server gone,
        // query interrupted or killed.
        Some(1153 | 1317 | 1927 | 2006 | 2013 | 3024) => false,
        Some(_) => true,
        None => false,
    }
}

/// The database's reason, as the operator should read it.
fn refusal(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => match error_number(e) {
            Some(n) => format!("{n} {}", db.message()),
            None => db.message().to_owned(),
        },
        other => other.to_string(),
    }
}

async fn insert_rows(
    conn: &mut MySqlConnection,
    rows: &[&NewNotification],
) -> Result<sqlx::mysql::MySqlQueryResult, sqlx::Error> {
    let mut qb = QueryBuilder::new(
        "INSERT INTO notifications (user_id, channel, region, payload, dedupe_key, send_at, due_at, expires_at) ",
    );
    qb.push_values(rows, |mut b, n| {
        b.push_bind(n.user_id)
            .push_bind(&n.channel)
            .push_bind(&n.region)
            .push_bind(&n.payload)
            .push_bind(&n.dedupe_key)
            .push_bind(n.send_at)
            .push_bind(n.send_at)
            .push_bind(n.expires_at);
    });
    qb.build().execute(conn).await
}

/// The form of a key the unique index compares: `utf8mb4_bin` is a PAD
/// SPACE collation on MariaDB and MySQL alike, so trailing spaces do not
/// count. Keys read back (possibly written by another service) and keys
/// looked up meet in this form.
fn pad_key(k: &str) -> &str {
    k.trim_end_matches(' ')
}

/// The id holding `key`, read with a locking read so a row another
/// transaction committed after ours began is seen.
async fn locked_id(conn: &mut MySqlConnection, key: &str) -> Result<Option<u64>, sqlx::Error> {
    Ok(existing_ids(conn, &[key.to_owned()], true)
        .await?
        .get(pad_key(key))
        .copied())
}

async fn existing_ids(
    conn: &mut MySqlConnection,
    keys: &[String],
    locking: bool,
) -> Result<HashMap<String, u64>, sqlx::Error> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let mut qb =
        QueryBuilder::new("SELECT dedupe_key, id FROM notifications WHERE dedupe_key IN (");
    let mut sep = qb.separated(", ");
    for k in keys {
        sep.push_bind(k);
    }
    qb.push(")");
    if locking {
        qb.push(" LOCK IN SHARE MODE");
    }
    // dedupe_key has a binary collation, which the driver reports as bytes.
    let rows: Vec<(Vec<u8>, u64)> = qb.build_query_as().fetch_all(conn).await?;
    Ok(rows
        .into_iter()
        .map(|(k, id)| (pad_key(&String::from_utf8_lossy(&k)).to_owned(), id))
        .collect())
}
