//! One row in full, with its attempt history, for `herald show`,
//! `GET /api/v1/notifications/{id}` and the console's notification page.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{MySqlPool, Row};

use super::list::{decode_summary, RowSummary, SUMMARY_COLUMNS};

/// A row and everything known about how it went.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Detail {
    #[serde(flatten)]
    pub row: RowSummary,
    /// The payload as stored (JSON text), or why it cannot be shown.
    pub payload: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub claimed_by: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub last_http_status: Option<u16>,
    pub last_duration_ms: Option<u32>,
    pub attempt_history: Vec<Attempt>,
}

/// One recorded delivery attempt (`notification_attempts`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Attempt {
    pub attempt: u32,
    pub started_at: Option<DateTime<Utc>>,
    pub duration_ms: u32,
    pub outcome: String,
    pub http_status: Option<u16>,
    pub error: Option<String>,
    pub response_body: Option<String>,
    pub worker_id: String,
}

/// Which row to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Id(u64),
    DedupeKey(String),
}

/// The row `key` names with its attempts, oldest first; `None` if there
/// is no such row.
pub async fn show(pool: &MySqlPool, key: &Key) -> Result<Option<Detail>, sqlx::Error> {
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS}, \
         CASE WHEN JSON_VALID(payload) THEN CAST(payload AS CHAR) ELSE NULL END AS payload_text, \
         expires_at, claimed_by, lease_until, created_at, updated_at, last_http_status, last_duration_ms \
         FROM notifications WHERE {} LIMIT 1",
        match key {
            Key::Id(_) => "id = ?",
            Key::DedupeKey(_) => "dedupe_key = ?",
        }
    );
    let q = sqlx::query(&sql);
    let q = match key {
        Key::Id(id) => q.bind(*id),
        Key::DedupeKey(k) => q.bind(k.clone()),
    };
    let Some(r) = q.fetch_optional(pool).await? else {
        return Ok(None);
    };
    let row = decode_summary(&r)?;
    let payload = r
        .try_get::<Option<String>, _>("payload_text")
        .ok()
        .flatten()
        .unwrap_or_else(|| "(not valid JSON text)".to_owned());
    let attempt_history = attempts(pool, row.id).await?;
    Ok(Some(Detail {
        payload,
        expires_at: r.try_get("expires_at").ok().flatten(),
        claimed_by: r.try_get("claimed_by")?,
        lease_until: r.try_get("lease_until").ok().flatten(),
        created_at: r.try_get("created_at").ok().flatten(),
        updated_at: r.try_get("updated_at").ok().flatten(),
        last_http_status: r.try_get("last_http_status")?,
        last_duration_ms: r.try_get("last_duration_ms")?,
        row,
        attempt_history,
    }))
}

/// The attempt history of one row, oldest first (at most the last 1,000).
pub async fn attempts(pool: &MySqlPool, id: u64) -> Result<Vec<Attempt>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT attempt, started_at, duration_ms, outcome, http_status, error, response_body, worker_id \
         FROM (SELECT * FROM notification_attempts WHERE notification_id = ? ORDER BY id DESC LIMIT 1000) t \
         ORDER BY id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Attempt {
                attempt: r.try_get("attempt")?,
                started_at: r.try_get("started_at").ok().flatten(),
                duration_ms: r.try_get("duration_ms")?,
                outcome: r.try_get("outcome")?,
                http_status: r.try_get("http_status")?,
                error: r.try_get("error")?,
                response_body: r.try_get("response_body")?,
                worker_id: r.try_get("worker_id")?,
            })
        })
        .collect()
}
