//! `POST /notifications`: one notification (a JSON object) or a batch (an
//! array), with exactly `herald enqueue`'s validation, limits and messages
//! per item. Good items are inserted, bad ones answered item by item; a
//! repeated `dedupe_key` is a duplicate, not an error, so a retried request
//! inserts nothing twice.
//!
//! The whole request is one transaction (the body limit bounds it), so a
//! database failure leaves nothing half-inserted and the client can simply
//! send it again.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::Utc;
use serde::Serialize;
use serde_json::Value;
use sqlx::Connection;

use super::{body, json, reply, Shared};
use crate::admin::ApiError;
use crate::notification::NewNotification;
use crate::store::enqueue::{
    enqueue_tolerant, error_number, row_bytes, statement_budget, Inserted, RowOutcome, INSERT_CHUNK,
};

/// Most items in one request.
pub const MAX_ITEMS: usize = 10_000;
/// Attempts of a request that met a lock wait or deadlock.
const ATTEMPTS: u32 = 3;

/// One item's result, in request order.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ItemResult {
    pub index: usize,
    /// `inserted`, `duplicate` or `rejected`.
    pub status: &'static str,
    /// The row's id: known for duplicates, for items with a `dedupe_key`,
    /// and for a request of one item.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// For `rejected`: `<field>: <reason>` (as `herald enqueue` says it);
    /// for `duplicate`: which row holds the key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EnqueueResponse {
    pub inserted: usize,
    pub duplicates: usize,
    pub rejected: usize,
    pub results: Vec<ItemResult>,
}

pub async fn enqueue(s: Shared, b: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let bytes = body(b, s.config.max_body_bytes)?;
    let (items, single) = match json(&bytes)? {
        Value::Array(items) => (items, false),
        obj @ Value::Object(_) => (vec![obj], true),
        _ => {
            return Err(ApiError::bad_request(
                "invalid_json",
                "the body must be a notification (a JSON object) or an array of them",
            ))
        }
    };
    if items.len() > MAX_ITEMS {
        return Err(ApiError::bad_request(
            "too_many_items",
            format!("{} items; at most {MAX_ITEMS} per request", items.len()),
        ));
    }
    let mut conn = s.store.pool().acquire().await?;
    let (_, packet) = statement_budget(&mut conn).await?;
    let now = Utc::now();
    let mut results: Vec<ItemResult> = Vec::with_capacity(items.len());
    let mut valid: Vec<(usize, NewNotification)> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        // The same parser as each line of `herald enqueue`.
        let checked = NewNotification::from_json_line(&item.to_string(), &s.limits, now)
            .map_err(|e| e.to_string())
            .and_then(|n| {
                if row_bytes(&n) > packet / 2 {
                    Err(format!(
                        "payload: {} bytes do not fit the server's max_allowed_packet of {packet} bytes",
                        n.payload.len()
                    ))
                } else {
                    Ok(n)
                }
            });
        match checked {
            Ok(n) => valid.push((index, n)),
            Err(error) => results.push(ItemResult {
                index,
                status: "rejected",
                id: None,
                error: Some(error),
            }),
        }
    }
    let mut attempt = 0;
    let outcomes = loop {
        attempt += 1;
        match insert(&mut conn, &valid, single).await {
            Ok(o) => break o,
            Err(e) if matches!(error_number(&e), Some(1205 | 1213)) && attempt < ATTEMPTS => {}
            Err(e) => return Err(e.into()),
        }
    };
    results.extend(outcomes);
    results.sort_by_key(|r| r.index);
    let count = |st: &str| results.iter().filter(|r| r.status == st).count();
    let response = EnqueueResponse {
        inserted: count("inserted"),
        duplicates: count("duplicate"),
        rejected: count("rejected"),
        results,
    };
    let status = match (single, response.rejected, response.inserted) {
        (true, 1, _) => StatusCode::UNPROCESSABLE_ENTITY,
        (true, _, 1) => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    Ok(reply(status, &response))
}

/// Inserts the valid items in one transaction; one result each.
async fn insert(
    conn: &mut sqlx::MySqlConnection,
    valid: &[(usize, NewNotification)],
    single: bool,
) -> Result<Vec<ItemResult>, sqlx::Error> {
    let mut out = Vec::with_capacity(valid.len());
    if valid.is_empty() {
        return Ok(out);
    }
    let mut tx = conn.begin().await?;
    for chunk in valid.chunks(INSERT_CHUNK) {
        let items: Vec<NewNotification> = chunk.iter().map(|(_, n)| n.clone()).collect();
        let outcomes = enqueue_tolerant(&mut tx, &items).await?;
        // A lone new row's id is the connection's last insert id.
        let last_id: Option<u64> = if single {
            Some(
                sqlx::query_scalar("SELECT LAST_INSERT_ID()")
                    .fetch_one(&mut *tx)
                    .await?,
            )
        } else {
            None
        };
        for ((index, n), outcome) in chunk.iter().zip(outcomes) {
            out.push(match outcome {
                RowOutcome::Done(Inserted::New) => ItemResult {
                    index: *index,
                    status: "inserted",
                    id: last_id.filter(|id| *id > 0),
                    error: None,
                },
                RowOutcome::Done(Inserted::Duplicate { existing_id }) => {
                    let key = n.dedupe_key.as_deref().unwrap_or_default();
                    ItemResult {
                        index: *index,
                        status: "duplicate",
                        id: existing_id,
                        error: Some(match existing_id {
                            Some(id) => format!(
                                "duplicate dedupe_key {key:?} (already enqueued as id {id})"
                            ),
                            None => {
                                format!("duplicate dedupe_key {key:?} (repeated in this request)")
                            }
                        }),
                    }
                }
                RowOutcome::Refused { reason } => ItemResult {
                    index: *index,
                    status: "rejected",
                    id: None,
                    error: Some(format!("refused by the database: {reason}")),
                },
            });
        }
    }
    // Ids of new rows that carry a dedupe key, read inside the transaction.
    let keyed: Vec<&str> = valid
        .iter()
        .zip(&out)
        .filter(|(_, r)| r.status == "inserted" && r.id.is_none())
        .filter_map(|((_, n), _)| n.dedupe_key.as_deref())
        .collect();
    if !keyed.is_empty() {
        let mut qb = sqlx::QueryBuilder::new(
            "SELECT dedupe_key, id FROM notifications WHERE dedupe_key IN (",
        );
        let mut sep = qb.separated(", ");
        for k in &keyed {
            sep.push_bind(*k);
        }
        qb.push(")");
        let found: std::collections::HashMap<String, u64> = qb
            .build_query_as::<(Vec<u8>, u64)>()
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|(k, id)| {
                (
                    String::from_utf8_lossy(&k).trim_end_matches(' ').to_owned(),
                    id,
                )
            })
            .collect();
        for ((_, n), r) in valid.iter().zip(out.iter_mut()) {
            if r.status == "inserted" && r.id.is_none() {
                if let Some(k) = &n.dedupe_key {
                    r.id = found.get(k.trim_end_matches(' ')).copied();
                }
            }
        }
    }
    tx.commit().await?;
    Ok(out)
}
