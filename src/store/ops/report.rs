//! What a retry or cancel did, row by row, in a form the commands print as
//! a table or JSON and the API returns as is.

use serde::Serialize;

/// One row's part in a retry or cancel.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Change {
    pub id: u64,
    /// `retried`, `cancelled`, `sent`, `failed`, … — the row's state after
    /// the command (or, with `--dry-run`, `would_retry` / `would_cancel`),
    /// `skipped` or `not_found`.
    pub outcome: String,
    /// Why, when the outcome is not the one asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The rows a retry or cancel touched or had to leave, plus totals.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ChangeReport {
    pub dry_run: bool,
    /// Rows the selection matched.
    pub matched: u64,
    /// Rows changed as asked (retried, cancelled); with `dry_run`, rows
    /// that would be.
    pub changed: u64,
    pub rows: Vec<Change>,
}

impl ChangeReport {
    pub fn push(&mut self, id: u64, outcome: &str, detail: Option<String>) {
        self.rows.push(Change {
            id,
            outcome: outcome.to_owned(),
            detail,
        });
    }

    /// How many rows ended with `outcome`.
    pub fn count(&self, outcome: &str) -> usize {
        self.rows.iter().filter(|c| c.outcome == outcome).count()
    }
}
