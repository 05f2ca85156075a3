//! Inserting notifications: validated input, batched statements, idempotent
//! on `dedupe_key`.
//!
//! The functions take a `&mut MySqlConnection` so a service embedding Herald
//! can enqueue inside its own transaction (`&mut *tx`): the notification is
//! then committed or rolled back together with the business change that
//! caused it.

use std::collections::{HashMap, HashSet};

use sqlx::{MySqlConnection, QueryBuilder};

use crate::notification::NewNotification;

/// Rows per INSERT statement: 8 placeholders each stays far below MySQL's
/// 65,535 limit while amortising the round trip.
pub const INSERT_CHUNK: usize = 500;

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

/// Inserts one notification and returns its id, or the id of the row that
/// already holds its `dedupe_key`.
pub async fn enqueue_one(
    conn: &mut MySqlConnection,
    n: &NewNotification,
) -> Result<(u64, Inserted), sqlx::Error> {
    if let Some(key) = &n.dedupe_key {
        if let Some(id) = existing_ids(conn, std::slice::from_ref(key))
            .await?
            .get(key)
        {
            return Ok((
                *id,
                Inserted::Duplicate {
                    existing_id: Some(*id),
                },
            ));
        }
    }
    let result = insert_rows(conn, std::slice::from_ref(&n)).await?;
    let id = result.last_insert_id();
    if id == 0 {
        // A concurrent enqueue won the race on the dedupe key.
        if let Some(key) = &n.dedupe_key {
            if let Some(existing) = existing_ids(conn, std::slice::from_ref(key))
                .await?
                .get(key)
            {
                return Ok((
                    *existing,
                    Inserted::Duplicate {
                        existing_id: Some(*existing),
                    },
                ));
            }
        }
    }
    Ok((id, Inserted::New))
}

/// Inserts many notifications in chunks of [`INSERT_CHUNK`]; returns one
/// [`Inserted`] per input, in order.
///
/// Duplicates are detected before inserting (one `SELECT` per chunk); the
/// insert itself also tolerates a concurrent duplicate (`ON DUPLICATE KEY
/// UPDATE id = id`), in which case that input is reported as new although
/// the other writer's row is the one kept: the row exists exactly once either
/// way.
pub async fn enqueue_batch(
    conn: &mut MySqlConnection,
    items: &[NewNotification],
) -> Result<Vec<Inserted>, sqlx::Error> {
    let mut out = Vec::with_capacity(items.len());
    let mut seen: HashSet<&str> = HashSet::new();
    for chunk in items.chunks(INSERT_CHUNK) {
        let keys: Vec<String> = chunk.iter().filter_map(|n| n.dedupe_key.clone()).collect();
        let existing = existing_ids(conn, &keys).await?;
        let mut to_insert = Vec::with_capacity(chunk.len());
        for n in chunk {
            let verdict = match n.dedupe_key.as_deref() {
                Some(k) if existing.contains_key(k) => Inserted::Duplicate {
                    existing_id: existing.get(k).copied(),
                },
                Some(k) if !seen.insert(k) => Inserted::Duplicate { existing_id: None },
                _ => {
                    to_insert.push(n);
                    Inserted::New
                }
            };
            out.push(verdict);
        }
        if !to_insert.is_empty() {
            insert_rows(conn, &to_insert).await?;
        }
    }
    Ok(out)
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
    qb.push(" ON DUPLICATE KEY UPDATE id = id");
    qb.build().execute(conn).await
}

async fn existing_ids(
    conn: &mut MySqlConnection,
    keys: &[String],
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
    // dedupe_key has a binary collation, which the driver reports as bytes.
    let rows: Vec<(Vec<u8>, u64)> = qb.build_query_as().fetch_all(conn).await?;
    Ok(rows
        .into_iter()
        .map(|(k, id)| (String::from_utf8_lossy(&k).into_owned(), id))
        .collect())
}
