//! Pages of rows for `herald list`, `GET /api/v1/notifications` and the
//! console, with an opaque cursor (the last id of the page), so paging is
//! stable while rows are added and never re-reads skipped rows.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::mysql::MySqlRow;
use sqlx::{MySqlPool, QueryBuilder, Row};

use super::select::Selection;

/// One row as lists show it (no payload: pages stay small).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RowSummary {
    pub id: u64,
    pub user_id: u64,
    pub channel: String,
    pub region: String,
    pub status: String,
    pub attempts: u32,
    pub dedupe_key: Option<String>,
    pub send_at: Option<DateTime<Utc>>,
    pub due_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub cancel_requested_at: Option<DateTime<Utc>>,
}

/// One page and where the next one starts.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Page {
    pub rows: Vec<RowSummary>,
    /// Pass as `cursor` to get the next page; `None` on the last page.
    pub next_cursor: Option<u64>,
}

/// Largest page a caller may ask for.
pub const MAX_PAGE: u64 = 1_000;

/// Columns of [`RowSummary`]. Dates are read as text-checked values: a
/// zero date another service wrote reads as `None`, not as an error that
/// would hide the whole page.
pub(crate) const SUMMARY_COLUMNS: &str =
    "id, user_id, channel, region, CAST(status AS CHAR) AS status, \
     attempts, dedupe_key, \
     IF(send_at >= '1000-01-01' AND MONTH(send_at) > 0, send_at, NULL) AS send_at, \
     IF(due_at >= '1000-01-01' AND MONTH(due_at) > 0, due_at, NULL) AS due_at, \
     finished_at, last_error, cancel_requested_at";

pub(crate) fn decode_summary(r: &MySqlRow) -> Result<RowSummary, sqlx::Error> {
    let key: Option<Vec<u8>> = r.try_get("dedupe_key")?;
    Ok(RowSummary {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        channel: r.try_get("channel")?,
        region: r.try_get("region")?,
        status: r.try_get("status")?,
        attempts: r.try_get("attempts")?,
        dedupe_key: key.map(|k| String::from_utf8_lossy(&k).into_owned()),
        send_at: r.try_get("send_at").ok().flatten(),
        due_at: r.try_get("due_at").ok().flatten(),
        finished_at: r.try_get("finished_at").ok().flatten(),
        last_error: r.try_get("last_error")?,
        cancel_requested_at: r.try_get("cancel_requested_at").ok().flatten(),
    })
}

/// Up to `sel.limit` (default 50, at most [`MAX_PAGE`]) rows of `sel`
/// after `cursor`, in the selection's order.
pub async fn list(
    pool: &MySqlPool,
    sel: &Selection,
    cursor: Option<u64>,
) -> Result<Page, sqlx::Error> {
    let n = sel.limit.unwrap_or(50).clamp(1, MAX_PAGE) as usize;
    let mut qb = QueryBuilder::new(format!("SELECT {SUMMARY_COLUMNS} FROM notifications"));
    sel.push_where(&mut qb, None, cursor);
    // One more than asked: whether another page exists.
    sel.push_order(&mut qb, n + 1);
    let fetched = qb.build().fetch_all(pool).await?;
    let mut rows = fetched
        .iter()
        .map(decode_summary)
        .collect::<Result<Vec<_>, _>>()?;
    let more = rows.len() > n;
    rows.truncate(n);
    let next_cursor = if more {
        rows.last().map(|r| r.id)
    } else {
        None
    };
    Ok(Page { rows, next_cursor })
}
