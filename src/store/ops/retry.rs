//! Retry: rows that ended badly (or wait in a retry back-off) become due
//! now with a fresh set of attempts.
//!
//! Decisions, each for a reason:
//! * retryable: `failed`, `expired` (unless `expires_at` has passed: it
//!   would only expire again), `cancelled`, and `pending` rows that already
//!   had attempts (waiting in a back-off). A `pending` row that never had an
//!   attempt is scheduled, not failing: retrying it would send it early.
//! * `attempts` goes back to 0, so the whole retry schedule applies again;
//!   the attempt history (`notification_attempts`) is kept, and its
//!   numbering starts again at 1.
//! * `last_error` is kept: until the next attempt it is still the last
//!   error, and it says why the row was retried.
//! * a row being sent (`sending`) is never touched: its worker holds it.

use std::collections::HashSet;

use sqlx::MySqlPool;

use super::apply::apply;
use super::select::{Probe, Selection, Walk};
use super::{ChangeReport, BATCH};
use crate::notification::Status;

/// The condition a row must still meet under its row lock to be retried.
const RETRYABLE: &str = "(status IN ('failed', 'expired', 'cancelled') \
     OR (status = 'pending' AND attempts > 0)) \
     AND (expires_at IS NULL OR expires_at > UTC_TIMESTAMP(6))";

const RETRY_SET: &str = "status = 'pending', due_at = UTC_TIMESTAMP(6), attempts = 0, \
     finished_at = NULL, lease_until = NULL, cancel_requested_at = NULL";

/// Statuses a selection walk visits (ids are visited whatever their status,
/// so each gets its own reason).
const WALKED: [Status; 4] = [
    Status::Failed,
    Status::Expired,
    Status::Cancelled,
    Status::Pending,
];

/// Why a row cannot be retried, or `None` if it can.
fn refusal(p: &Probe) -> Option<String> {
    match p.status.as_str() {
        "sending" => Some("being sent by a worker; it is left to its claim".into()),
        "sent" => Some("already sent".into()),
        "pending" if p.attempts == 0 => {
            Some("pending and not waiting for a retry (never attempted)".into())
        }
        _ if p.past_expiry => Some("expires_at has passed; it would only expire again".into()),
        _ => None,
    }
}

/// Retries the rows of `sel` in pages of [`BATCH`], each its own short
/// transaction; with `dry_run`, changes nothing and reports what would be
/// retried.
pub async fn retry(
    pool: &MySqlPool,
    sel: &Selection,
    dry_run: bool,
) -> anyhow::Result<ChangeReport> {
    let mut report = ChangeReport {
        dry_run,
        ..ChangeReport::default()
    };
    let by_ids = !sel.ids.is_empty();
    let allowed = (!by_ids).then_some(&WALKED[..]);
    let mut seen = HashSet::new();
    let mut walk = Walk::default();
    while let Some(page) = walk.next(pool, sel, allowed, BATCH).await? {
        let mut take = Vec::new();
        for p in &page {
            seen.insert(p.id);
            match refusal(p) {
                // A selection reports only rows it could act on; ids each
                // get their reason.
                Some(_) if !by_ids => {}
                Some(why) => report.push(p.id, "skipped", Some(why)),
                None => take.push(p.id),
            }
        }
        if dry_run {
            for id in take {
                report.push(id, "would_retry", None);
                report.changed += 1;
            }
            continue;
        }
        let done: HashSet<u64> = apply(pool, &take, RETRYABLE, RETRY_SET)
            .await?
            .into_iter()
            .collect();
        for id in take {
            if done.contains(&id) {
                report.push(id, "retried", None);
                report.changed += 1;
            } else {
                report.push(
                    id,
                    "skipped",
                    Some("changed or locked by another transaction meanwhile; try again".into()),
                );
            }
        }
    }
    let matched = walk.visited;
    report.matched = matched;
    for id in &sel.ids {
        if !seen.contains(id) {
            report.push(*id, "not_found", Some("no such row matches".into()));
        }
    }
    Ok(report)
}
