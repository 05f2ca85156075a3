//! The attempt history (`notification_attempts`): one row per delivery
//! attempt whose outcome was recorded, so an operator can answer "what did
//! the receiver say on attempt 2?" after `last_error` has moved on.
//!
//! Written by [`super::finish`], in the transaction of the finish writes
//! themselves and as one multi-row `INSERT` per finish batch: a history row
//! exists exactly when its attempt's fenced finish took effect. An attempt
//! whose claim was lost (its worker stalled past the lease and another
//! instance took the row over) leaves no history row, because nothing it
//! says could be trusted to be the row's story; the attempt numbers of such
//! a row then have a gap. Deleted with its notification by cleanup
//! ([`super::prune`]).

use std::collections::HashMap;
use std::fmt::Write;

use chrono::{DateTime, Utc};
use sqlx::MySqlPool;

use super::literal;

/// One attempt as the worker saw it, waiting to be recorded with its
/// finish. The error is the finish's own (`last_error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The row's attempt number (1 on the first try).
    pub attempt: u32,
    pub started_at: DateTime<Utc>,
    pub duration_ms: u32,
    pub http_status: Option<u16>,
    /// The first <= 1 KiB of the response body (see
    /// [`crate::transport::body_snippet`]).
    pub response_body: Option<String>,
}

/// What a finish write records beside the outcome: each row's attempt
/// (`last_http_status`, `last_duration_ms` always; a history row for
/// failed attempts, and for sent ones with `record_sent`).
#[derive(Debug, Clone, Copy)]
pub struct History<'a> {
    pub worker_id: &'a str,
    /// `HERALD_RECORD_ATTEMPTS=all`.
    pub record_sent: bool,
    pub attempts: &'a HashMap<u64, Attempt>,
}

impl History<'_> {
    /// No attempts to record (finishes written without a send, and tests).
    pub fn none() -> History<'static> {
        static EMPTY: std::sync::OnceLock<HashMap<u64, Attempt>> = std::sync::OnceLock::new();
        History {
            worker_id: "",
            record_sent: false,
            attempts: EMPTY.get_or_init(HashMap::new),
        }
    }

    pub fn get(&self, id: u64) -> Option<&Attempt> {
        self.attempts.get(&id)
    }

    /// Whether any of `ids` has an attempt.
    pub fn any(&self, ids: impl IntoIterator<Item = u64>) -> bool {
        !self.attempts.is_empty() && ids.into_iter().any(|id| self.attempts.contains_key(&id))
    }
}

/// The `outcome` column's values.
pub const SENT: &str = "sent";
pub const RETRIED: &str = "retried";
pub const FAILED: &str = "failed";

/// The history rows of one finish batch, as one `INSERT`.
#[derive(Debug, Default)]
pub(super) struct Insert {
    sql: String,
    rows: usize,
}

impl Insert {
    pub(super) fn new() -> Self {
        Insert::default()
    }

    /// Adds the attempt of row `id`, which ended with `outcome` (and
    /// `error`, cut to the column's size).
    pub(super) fn push(
        &mut self,
        id: u64,
        a: &Attempt,
        outcome: &str,
        error: Option<&str>,
        worker_id: &str,
    ) {
        let sql = &mut self.sql;
        if self.rows == 0 {
            sql.push_str(
                "INSERT INTO notification_attempts (notification_id, attempt, started_at, \
                 duration_ms, outcome, http_status, error, response_body, worker_id) VALUES ",
            );
        } else {
            sql.push(',');
        }
        let _ = write!(
            sql,
            "({id},{},'{}',{},'{outcome}',",
            a.attempt,
            a.started_at.format("%Y-%m-%d %H:%M:%S%.6f"),
            a.duration_ms
        );
        match a.http_status {
            Some(s) => {
                let _ = write!(sql, "{s},");
            }
            None => sql.push_str("NULL,"),
        }
        for text in [error, a.response_body.as_deref()] {
            match text {
                Some(t) => literal::text(sql, literal::fit(t, 1024)),
                None => sql.push_str("NULL"),
            }
            sql.push(',');
        }
        literal::text(sql, literal::fit(worker_id, 128));
        sql.push(')');
        self.rows += 1;
    }

    pub(super) fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The statement (empty when nothing was pushed).
    pub(super) fn sql(&self) -> &str {
        &self.sql
    }
}

/// One history row as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AttemptRow {
    pub id: u64,
    pub notification_id: u64,
    pub attempt: u32,
    pub started_at: DateTime<Utc>,
    pub duration_ms: u32,
    pub outcome: String,
    pub http_status: Option<u16>,
    pub error: Option<String>,
    pub response_body: Option<String>,
    pub worker_id: String,
}

/// The history of one notification, oldest attempt first.
pub async fn of(pool: &MySqlPool, notification_id: u64) -> Result<Vec<AttemptRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, notification_id, attempt, started_at, duration_ms, outcome, http_status, \
         error, response_body, worker_id FROM notification_attempts \
         WHERE notification_id = ? ORDER BY id",
    )
    .bind(notification_id)
    .fetch_all(pool)
    .await
}
