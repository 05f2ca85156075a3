//! The finisher: batches outcome writes and lock releases.
//!
//! Senders report each row here instead of writing it themselves: under load
//! many rows finish within one database round trip, so one `UPDATE … WHERE
//! id IN (…)` replaces hundreds. The finisher takes whatever has arrived,
//! writes it grouped by claim (token), then releases those rows' lock keys —
//! after the write, so no other instance can lock a row whose outcome is not
//! recorded yet. The rows' attempts (status, duration, history) are
//! recorded by the same writes ([`crate::store::attempts`]).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::job::{ClaimBatch, Done};
use super::Shared;
use crate::config::RecordAttempts;
use crate::metrics::Metrics;
use crate::outcome::Outcome;
use crate::store::attempts::{Attempt, History};
use crate::store::finish::{self as store_finish, Finish, FinishCounts, SentClaim};

/// Most rows written in one round.
const MAX_ROUND: usize = 2_000;
/// Rounds smaller than this may wait [`LINGER`] for more rows.
const LINGER_BELOW: usize = 128;
const LINGER: Duration = Duration::from_millis(1);
/// How soon rows that were locked by another transaction are written again.
const BUSY_RETRY: Duration = Duration::from_millis(200);
/// Longest one finish write may take before it is retried.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

struct Group {
    batch: Arc<ClaimBatch>,
    rows: Vec<(u64, Finish)>,
    keys: Vec<String>,
    lags: Vec<f64>,
    attempts: HashMap<u64, Attempt>,
}

pub(crate) async fn run(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Done>) {
    let mut closing = false;
    while !closing {
        let Some(first) = rx.recv().await else { break };
        let mut items = vec![first];
        drain(&mut rx, &mut items);
        // Many rows still in flight but few arrived: they are likely to
        // finish within a moment, and one statement for all of them costs
        // the database far less than one each. Linger once, briefly.
        let in_flight = shared.in_flight.load(Ordering::Acquire);
        if items.len() < LINGER_BELOW && in_flight > items.len() * 4 {
            tokio::time::sleep(LINGER).await;
            drain(&mut rx, &mut items);
        }
        let mut groups: HashMap<usize, Group> = HashMap::new();
        for item in items {
            match item {
                Done::Close => closing = true,
                Done::Row {
                    batch,
                    id,
                    finish,
                    release_key,
                    lag_s,
                    attempt,
                } => {
                    let g = groups
                        .entry(Arc::as_ptr(&batch) as usize)
                        .or_insert_with(|| Group {
                            batch: batch.clone(),
                            rows: Vec::new(),
                            keys: Vec::new(),
                            lags: Vec::new(),
                            attempts: HashMap::new(),
                        });
                    g.rows.push((id, finish));
                    if let Some(a) = attempt {
                        g.attempts.insert(id, a);
                    }
                    g.keys.extend(release_key);
                    g.lags.extend(lag_s);
                }
            }
        }
        let groups: Vec<Group> = groups.into_values().collect();
        if groups.len() > 1 && write_sent_together(&shared, &groups).await {
            let settled = groups.into_iter().map(|g| {
                let mut counts = FinishCounts::default();
                counts[Outcome::Sent] = g.rows.len() as u64;
                settle(&shared, g, counts, Vec::new())
            });
            futures::future::join_all(settled).await;
        } else {
            let writes = groups.into_iter().map(|g| write_group(&shared, g));
            futures::future::join_all(writes).await;
        }
    }
}

/// The history of a group's rows, as the finish writes record it.
fn history_of<'a>(shared: &'a Shared, g: &'a Group) -> History<'a> {
    History {
        worker_id: &shared.cfg.worker_id,
        record_sent: shared.cfg.record_attempts == RecordAttempts::All,
        attempts: &g.attempts,
    }
}

/// Writes the rows of several claims in one statement when all of them
/// were sent (and no history row is due for them): with slow sends, rows
/// finish in a trickle and one round holds the rows of two or three
/// claims. Returns whether every row was recorded; if not (or the write
/// failed), each group is written on its own, which sorts out what this
/// statement did.
async fn write_sent_together(shared: &Shared, groups: &[Group]) -> bool {
    let record_sent = shared.cfg.record_attempts == RecordAttempts::All;
    let sent_only = groups.iter().all(|g| {
        (!record_sent || g.attempts.is_empty()) && g.rows.iter().all(|(_, f)| *f == Finish::Sent)
    });
    if !sent_only {
        return false;
    }
    let ids: Vec<Vec<u64>> = groups
        .iter()
        .map(|g| g.rows.iter().map(|(id, _)| *id).collect())
        .collect();
    let tokens: Vec<[u8; 16]> = groups
        .iter()
        .map(|g| *g.batch.lock.token().as_bytes())
        .collect();
    let claims: Vec<SentClaim<'_>> = tokens
        .iter()
        .zip(&ids)
        .map(|(token, ids)| SentClaim { token, ids })
        .collect();
    // One map of every group's attempts: the statement sets each row's
    // last status and duration.
    let attempts: HashMap<u64, Attempt> = groups
        .iter()
        .flat_map(|g| g.attempts.iter().map(|(id, a)| (*id, a.clone())))
        .collect();
    let history = History {
        worker_id: &shared.cfg.worker_id,
        record_sent,
        attempts: &attempts,
    };
    let write = store_finish::finish_sent_together(
        shared.deps.store.pool(),
        &claims,
        &history,
        &shared.finish_foreign_locks,
    );
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(Ok(all)) => all,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "joint finish write failed; writing per claim");
            false
        }
        Err(_) => false,
    }
}

fn drain(rx: &mut mpsc::UnboundedReceiver<Done>, items: &mut Vec<Done>) {
    while items.len() < MAX_ROUND {
        match rx.try_recv() {
            Ok(d) => items.push(d),
            Err(_) => break,
        }
    }
}

async fn write_group(shared: &Shared, g: Group) {
    let token = *g.batch.lock.token().as_bytes();
    let n = g.rows.len();
    // The rows were delivered (or decided); giving up on recording that
    // would let their leases run out and another instance send them again.
    // So keep trying for as long as the database is away, and stop only
    // when the shutdown grace is over.
    let history = history_of(shared, &g);
    let mut attempt = 0u32;
    let (counts, busy) = loop {
        attempt += 1;
        // A database that hangs (rather than fails) must not hold the rows
        // and their send slots forever: bound each attempt.
        let write = finish_isolating(
            shared.deps.store.pool(),
            &token,
            &g.rows,
            history,
            &shared.finish_foreign_locks,
        );
        let result = match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {WRITE_TIMEOUT:?}")),
        };
        match result {
            Ok(c) => {
                if attempt > 1 {
                    tracing::info!(rows = n, attempt, "finish write succeeded after retrying");
                }
                break c;
            }
            Err(e) => {
                if attempt == 1 || attempt % 10 == 0 {
                    tracing::warn!(error = %e, rows = n, attempt, "finish write failed; retrying");
                }
                if shared.abort.is_cancelled() {
                    tracing::error!(
                        rows = n,
                        "finish write impossible before exit; the rows stay claimed until their lease \
                         expires, then another instance sends them again (same webhook-id)"
                    );
                    break (FinishCounts::default(), Vec::new());
                }
                let pause = Duration::from_millis((100u64 << attempt.min(4)).min(1_000));
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shared.abort.cancelled() => {}
                }
            }
        }
    };
    settle(shared, g, counts, busy).await;
}

/// After a group's write: its metrics, its lock keys, its rows that were
/// busy, and the room they leave.
async fn settle(shared: &Shared, g: Group, counts: FinishCounts, busy: Vec<u64>) {
    let n = g.rows.len();
    record(shared, &g, counts);
    let busy = if shared.abort.is_cancelled() && !busy.is_empty() {
        tracing::warn!(
            rows = busy.len(),
            "rows locked by another transaction cannot be recorded before exit; they stay claimed until \
             their lease expires, then another instance sends them again (same webhook-id)"
        );
        Vec::new()
    } else {
        busy
    };
    let done = n - busy.len();

    if !g.keys.is_empty() {
        if let Err(e) = shared
            .deps
            .redlock
            .release_keys(&g.batch.lock, &g.keys)
            .await
        {
            tracing::debug!(error = %e, "releasing keys failed; they expire with their TTL");
        }
    }
    if !busy.is_empty() {
        requeue_busy(shared, &g, busy);
    }

    if done > 0 {
        let before = g.batch.remaining.fetch_sub(done, Ordering::AcqRel);
        if before == done {
            log_batch(shared, &g.batch);
        }
        shared.sub_in_flight(done);
    }
}

/// Rows another transaction holds locked are written again a moment later
/// instead of being waited for, so one foreign lock cannot stop the
/// finisher (and with it every send slot). They stay in flight until then;
/// their lock keys were released with the rest, which is safe: the rows
/// stay claimed (`sending`, lease in the future), and the claim is the
/// fence. After the shutdown grace they are left to their lease.
fn requeue_busy(shared: &Shared, g: &Group, busy: Vec<u64>) {
    tracing::info!(
        rows = busy.len(),
        "finish skipped rows locked by another transaction; writing them again shortly"
    );
    let rows: Vec<(u64, Finish)> = g
        .rows
        .iter()
        .filter(|(id, _)| busy.contains(id))
        .cloned()
        .collect();
    let mut attempts: HashMap<u64, Attempt> = busy
        .iter()
        .filter_map(|id| Some((*id, g.attempts.get(id)?.clone())))
        .collect();
    let tx = shared.finish_tx.clone();
    let batch = g.batch.clone();
    let abort = shared.abort.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(BUSY_RETRY) => {}
            _ = abort.cancelled() => {}
        }
        for (id, finish) in rows {
            let row = Done::Row {
                batch: batch.clone(),
                id,
                finish,
                release_key: None,
                lag_s: None,
                attempt: attempts.remove(&id),
            };
            if tx.send(row).is_err() {
                tracing::warn!(id, "finisher gone; row left to its lease");
            }
        }
    });
}

/// Writes the finishes; when the write fails because of what one row holds
/// (a trigger or constraint another service added), splits the rows until
/// that row is alone, then writes it without its attempt (history and
/// `last_*` columns), then marks it failed with the reason, so the others
/// are recorded and one row cannot hold its batch's rows (and send slots)
/// forever. Returns the counts and the rows that were busy (locked by
/// another transaction).
async fn finish_isolating(
    pool: &sqlx::MySqlPool,
    token: &[u8; 16],
    rows: &[(u64, Finish)],
    history: History<'_>,
    foreign: &crate::store::ForeignLocks,
) -> Result<(FinishCounts, Vec<u64>), sqlx::Error> {
    let mut total = FinishCounts::default();
    let mut busy = Vec::new();
    // Each part with whether its attempts are still written.
    let mut parts: Vec<(&[(u64, Finish)], bool)> = vec![(rows, true)];
    while let Some((part, recorded)) = parts.pop() {
        let h = if recorded { history } else { History::none() };
        match store_finish::finish_recorded(pool, token, part, h, foreign).await {
            Ok((c, b)) => {
                busy.extend(b);
                total.merge(&c);
            }
            Err(e) if crate::store::is_row_error(&e) && part.len() > 1 => {
                let (a, b) = part.split_at(part.len() / 2);
                parts.push((b, recorded));
                parts.push((a, recorded));
            }
            Err(e)
                if crate::store::is_row_error(&e)
                    && recorded
                    && history.any(part.iter().map(|(id, _)| *id)) =>
            {
                tracing::warn!(id = part[0].0, error = %e, "recording the attempt failed; finishing the row without it");
                parts.push((part, false));
            }
            Err(e) if crate::store::is_row_error(&e) => {
                let (id, finish) = &part[0];
                let reason = format!("recording the outcome ({finish:?}) failed: {e}");
                tracing::warn!(id, reason = %reason, "row cannot be finished; marking it failed");
                if store_finish::mark_failed(pool, *id, Some(token), &reason).await? {
                    total.add(Outcome::Failed, 1);
                } else {
                    total.add(Outcome::Lost, 1);
                }
            }
            // Parts already written are recognised as done when the whole
            // write is retried (see `store::finish::finish_rows`).
            Err(e) => return Err(e),
        }
    }
    Ok((total, busy))
}

fn record(shared: &Shared, g: &Group, c: FinishCounts) {
    let m = &shared.deps.metrics;
    for (o, n) in c.iter() {
        metric(m, o).inc_by(n);
        shared.totals.outcomes.add(o, n);
        g.batch.counts.add(o, n);
    }
    let lost = c[Outcome::Lost];
    if lost > 0 {
        tracing::warn!(
            lost,
            "finish changed nothing for rows whose claim was lost (lease expired and re-claimed); left untouched"
        );
    }
    // Lag only for rows whose `sent` write took effect.
    if lost == 0 {
        for lag in &g.lags {
            m.delivery_lag.observe(*lag);
        }
    }
}

/// The Prometheus counter of each outcome.
fn metric(m: &Metrics, o: Outcome) -> &prometheus_client::metrics::counter::Counter {
    match o {
        Outcome::Sent => &m.sent,
        Outcome::Retried => &m.retried,
        Outcome::Failed => &m.failed,
        Outcome::Expired => &m.expired,
        Outcome::HandedBack => &m.handed_back,
        Outcome::Lost => &m.lost_ownership,
    }
}

fn log_batch(shared: &Shared, b: &ClaimBatch) {
    let c = b.counts.snapshot();
    let elapsed = b.started.elapsed();
    shared
        .deps
        .metrics
        .batch_duration
        .observe(elapsed.as_secs_f64());
    tracing::info!(
        claimed = b.claimed,
        sent = c[Outcome::Sent],
        retried = c[Outcome::Retried],
        failed = c[Outcome::Failed],
        expired = c[Outcome::Expired],
        handed_back = c[Outcome::HandedBack],
        lost = c[Outcome::Lost],
        duration_ms = elapsed.as_millis() as u64,
        "batch done"
    );
}
