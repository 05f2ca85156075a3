//! Cancel: withdraw rows that should not go out.
//!
//! * A `pending` row (and a `sending` row whose lease ran out: its worker
//!   is gone, and no send can still be on the wire, since a send starts
//!   only while the lease outlives it) becomes `cancelled` at once.
//! * A row being sent under a live claim cannot be changed under it. It
//!   gets `cancel_requested_at`, which its worker honours: before sending
//!   (it re-checks rows that waited since their claim) and at the finish (a
//!   row handed back or failed transiently ends `cancelled`, not
//!   `pending`). A send already on the wire cannot be recalled; such a row
//!   ends with its real outcome.
//! * [`cancel`] then waits (bounded) for those rows and reports each one's
//!   real final state, so a row is reported `cancelled` only once the
//!   database says so, and a row in that state is never sent afterwards
//!   (the claim only takes `pending` rows and expired `sending` ones).

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use sqlx::{MySqlPool, Row};

use super::apply::apply;
use super::select::{probe_page, Probe, Selection, Walk};
use super::{ChangeReport, BATCH};
use crate::notification::Status;

/// Rows that can be cancelled now, re-checked under the row lock.
const NOW: &str = "status = 'pending' OR (status = 'sending' AND due_at <= UTC_TIMESTAMP(6))";
const NOW_SET: &str = "status = 'cancelled', finished_at = UTC_TIMESTAMP(6), lease_until = NULL, \
     cancel_requested_at = COALESCE(cancel_requested_at, UTC_TIMESTAMP(6))";
/// Rows that get a request instead.
const REQUEST: &str = "status = 'sending'";
const REQUEST_SET: &str = "cancel_requested_at = COALESCE(cancel_requested_at, UTC_TIMESTAMP(6))";

const LIVE: [Status; 2] = [Status::Pending, Status::Sending];

/// How long to wait for rows being sent.
#[derive(Debug, Clone, Copy)]
pub struct Wait {
    /// Longest wait for rows being sent to finish (their lease is at most
    /// the lock TTL, 30 s by default).
    pub max: Duration,
    pub poll: Duration,
}

impl Default for Wait {
    fn default() -> Self {
        Wait {
            max: Duration::from_secs(60),
            poll: Duration::from_millis(100),
        }
    }
}

/// Cancels the rows of `sel`; see the module docs. With `dry_run`, changes
/// nothing and reports what would happen.
pub async fn cancel(
    pool: &MySqlPool,
    sel: &Selection,
    dry_run: bool,
    wait: Wait,
) -> anyhow::Result<ChangeReport> {
    let mut report = ChangeReport {
        dry_run,
        ..ChangeReport::default()
    };
    let by_ids = !sel.ids.is_empty();
    let allowed = (!by_ids).then_some(&LIVE[..]);
    let mut seen = HashSet::new();
    // Rows being sent (or skipped as busy): settled after the walk.
    let mut open: BTreeSet<u64> = BTreeSet::new();
    let mut walk = Walk::default();
    while let Some(page) = walk.next(pool, sel, allowed, BATCH).await? {
        let mut now = Vec::new();
        let mut request = Vec::new();
        for p in &page {
            seen.insert(p.id);
            match p.status.as_str() {
                "pending" => now.push(p.id),
                "sending" if !p.live_claim => now.push(p.id),
                "sending" => request.push(p.id),
                other => report.push(p.id, "skipped", Some(format!("already {other}"))),
            }
        }
        if dry_run {
            for id in now {
                report.push(id, "would_cancel", None);
                report.changed += 1;
            }
            for id in request {
                report.push(
                    id,
                    "would_request",
                    Some("being sent: its worker would be asked to cancel it if the send has not started".into()),
                );
            }
            continue;
        }
        let done: HashSet<u64> = apply(pool, &now, NOW, NOW_SET).await?.into_iter().collect();
        for id in now {
            if done.contains(&id) {
                report.push(id, "cancelled", None);
                report.changed += 1;
            } else {
                open.insert(id);
            }
        }
        apply(pool, &request, REQUEST, REQUEST_SET).await?;
        open.extend(request);
    }
    report.matched = walk.visited;
    if !open.is_empty() {
        settle(pool, open, wait, &mut report).await?;
    }
    for id in &sel.ids {
        if !seen.contains(id) {
            report.push(*id, "not_found", Some("no such row matches".into()));
        }
    }
    Ok(report)
}

/// Waits for rows being sent (or that were busy) to reach a final state,
/// cancelling those that come back `pending` or whose claim runs out, and
/// reports each one's real outcome.
async fn settle(
    pool: &MySqlPool,
    mut open: BTreeSet<u64>,
    wait: Wait,
    report: &mut ChangeReport,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let ids: Vec<u64> = open.iter().copied().collect();
        for chunk in ids.chunks(BATCH) {
            let sel = Selection {
                ids: chunk.to_vec(),
                ..Selection::default()
            };
            let probes = probe_page(pool, &sel, None, None, chunk.len()).await?;
            let found: HashSet<u64> = probes.iter().map(|p| p.id).collect();
            for id in chunk.iter().filter(|id| !found.contains(id)) {
                // Deleted meanwhile (cleanup, another service).
                open.remove(id);
                report.push(
                    *id,
                    "not_found",
                    Some("deleted while being cancelled".into()),
                );
            }
            let mut now = Vec::new();
            let mut request = Vec::new();
            for p in probes {
                match p.status.as_str() {
                    "pending" => now.push(p.id),
                    "sending" if !p.live_claim => now.push(p.id),
                    "sending" if !p.cancel_requested => request.push(p.id),
                    "sending" => {}
                    _ => {
                        open.remove(&p.id);
                        final_outcome(&p, report);
                    }
                }
            }
            for id in apply(pool, &now, NOW, NOW_SET).await? {
                open.remove(&id);
                report.push(id, "cancelled", None);
                report.changed += 1;
            }
            apply(pool, &request, REQUEST, REQUEST_SET).await?;
        }
        if open.is_empty() || started.elapsed() >= wait.max {
            break;
        }
        tokio::time::sleep(wait.poll).await;
    }
    for id in open {
        report.push(
            id,
            "sending",
            Some(format!(
                "still being sent after {} s; cancel requested: it ends cancelled if its send \
                 has not started, else with the send's outcome",
                wait.max.as_secs()
            )),
        );
    }
    Ok(())
}

/// Reports a row that reached a final state while a cancel was pending.
fn final_outcome(p: &Probe, report: &mut ChangeReport) {
    match p.status.as_str() {
        "cancelled" => {
            report.push(p.id, "cancelled", None);
            report.changed += 1;
        }
        "sent" => report.push(
            p.id,
            "sent",
            Some("the send had already started and cannot be recalled".into()),
        ),
        "expired" => report.push(p.id, "expired", Some("expired before it was sent".into())),
        other => report.push(
            p.id,
            other,
            Some("the send had already started; this is its outcome".into()),
        ),
    }
}

/// Which of `ids` (rows this worker holds) have a cancel request: the
/// worker's batched check before sending rows that waited since their
/// claim. Primary-key lookups, one statement for the whole batch.
pub async fn requested_among(pool: &MySqlPool, ids: &[u64]) -> Result<HashSet<u64>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    let mut sql = String::from("SELECT id FROM notifications WHERE id IN (");
    crate::store::literal::ids(&mut sql, ids);
    sql.push_str(") AND cancel_requested_at IS NOT NULL");
    let rows = sqlx::raw_sql(&sql).fetch_all(pool).await?;
    rows.iter().map(|r| r.try_get::<u64, _>(0)).collect()
}
