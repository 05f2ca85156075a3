//! What operators do to rows: look at them, list them, retry and cancel
//! them (`herald show|list|retry|cancel`, the admin API and the console).
//!
//! Every change here respects the claim fence the worker relies on: a row
//! another worker holds (`sending` with a live lease) is never changed
//! under its claim; a cancel on such a row only *requests* it
//! (`cancel_requested_at`), and the worker honours the request at its
//! finish. Selections are walked in pages by id, each page changed in its
//! own short transaction that skips rows other transactions hold locked
//! (`FOR UPDATE SKIP LOCKED`), so a large selection never holds a long
//! transaction and never waits on a foreign lock.
//!
//! * [`select`] — the typed [`Selection`] and the page walk by id.
//! * [`show`] — one row with its attempt history.
//! * [`list`] — cursor pages of rows.
//! * [`retry`] — failed, expired, cancelled or backing-off rows → due now.
//! * [`cancel`] — pending rows → cancelled; rows being sent → a request,
//!   then their real outcome.
//! * [`counts`] — the dashboard figures (counts, deliveries per minute,
//!   latest failures).
//! * [`spec`] — a selection as callers write it, validated the same way
//!   for the commands, the API and the console.
//! * `report` — what a retry or cancel did, row by row.

mod apply;
pub mod cancel;
pub mod counts;
pub mod list;
mod report;
pub mod retry;
pub mod select;
pub mod show;
pub mod spec;

pub use report::{Change, ChangeReport};
pub use select::{Order, Selection};

/// Rows changed per transaction: small enough that a transaction is over in
/// milliseconds, large enough that 10,000 rows take a few dozen.
pub const BATCH: usize = 500;
