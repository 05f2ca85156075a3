//! The poll loop: candidates → batched lock → fenced claim → spawn senders.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::seq::SliceRandom;

use super::ahead::{claim_ahead, min_room};
use super::backoff::PollBackoff;
use super::job::{ClaimBatch, Job};
use super::send;
use super::spread::Spreader;
use super::{wait_for, Shared};
use crate::config::LockScope;
use crate::lock::BatchLock;
use crate::store::candidates::{self, Candidate, Slice};
use crate::store::claim::{self, ClaimedRead};
use crate::store::finish;

const MAX_WINDOW: usize = 10_000;

/// What one round found.
#[derive(Debug, Clone, Copy, Default)]
struct Round {
    candidates: usize,
    claimed: usize,
    /// Keys asked for and keys another owner held.
    keys: usize,
    contended: usize,
    /// Rows the gate moved out of the way (rate limit, breaker).
    deferred: usize,
}

pub(crate) async fn run(shared: Arc<Shared>) {
    let cfg = &shared.cfg;
    let mut backoff = PollBackoff::new(cfg.poll_interval);
    // Rounds where everything due was locked by other instances: usually a
    // passing collision (retry almost at once), sometimes a stalled
    // instance holding keys for a whole TTL (do not spin on it).
    let mut contended = PollBackoff::starting_at(Duration::from_millis(2), cfg.poll_interval);
    let mut spreader = Spreader::new(cfg.lock_scope);
    let mut poll_us = 0.0_f64;
    loop {
        shared.beat();
        if shared.stop.is_cancelled() {
            return;
        }
        let send_us = shared.send_ewma_us.load(Ordering::Relaxed) as f64;
        let ahead = claim_ahead(cfg.concurrency, cfg.batch_size, poll_us, send_us);
        let capacity = cfg.concurrency + ahead;
        let min_room = min_room(cfg.concurrency, cfg.batch_size, ahead);
        let room = || capacity.saturating_sub(shared.occupied()) >= min_room;
        if !room() {
            tokio::select! {
                _ = wait_for(&shared.room, room) => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shared.stop.cancelled() => return,
            }
            continue;
        }
        let want = cfg
            .batch_size
            .min(capacity.saturating_sub(shared.occupied()))
            .max(1);
        let started = Instant::now();
        let slice = spreader.next();
        // A database or Redis that hangs instead of failing must not stop
        // the loop for good: /livez watches this loop's heartbeat.
        let limit = cfg.lock_ttl.max(Duration::from_secs(10));
        let result = match tokio::time::timeout(limit, poll_once(&shared, want, slice)).await {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!(
                "poll round got no answer within {limit:?}; claims it may have made return when their lease expires"
            )),
        };
        shared.poll_result(result.as_ref().err().map(crate::cause::chain));
        if let Ok(round) = &result {
            if round.claimed > 0 {
                contended.reset();
                // A slowly decaying maximum rather than an average: the rows
                // claimed ahead must cover the slow rounds (a busy database,
                // a descheduled process), not the typical one, or the send
                // slots run dry exactly then.
                let took = started.elapsed().as_micros() as f64;
                poll_us = took.max(poll_us * 0.95);
            }
            spreader.observe(round.keys, round.contended);
        }
        let pause = match result {
            // More is due: poll again at once. Rows the gate deferred have
            // left the head of the queue, so the next read finds others.
            Ok(round) if (round.claimed > 0 || round.deferred > 0) && round.candidates >= want => {
                backoff.reset();
                None
            }
            // A sliced read saw only part of the backlog; its shortness
            // says nothing about the rest.
            Ok(round) if round.claimed > 0 && slice.is_some() => {
                backoff.reset();
                None
            }
            // An empty slice: look at everything before going idle.
            Ok(round) if round.candidates == 0 && slice.is_some() && spreader.widen() => None,
            Ok(round) if round.claimed > 0 => Some(backoff.partial()),
            Ok(round) if round.candidates > 0 => Some(contended.idle()),
            Ok(_) => Some(until_next_due(&shared, backoff.idle()).await),
            Err(e) => {
                shared.deps.metrics.poll_errors.inc();
                tracing::warn!(error = crate::cause::chain(&e), "poll failed; backing off");
                Some(backoff.idle().max(Duration::from_millis(100)))
            }
        };
        if let Some(pause) = pause {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shared.stop.cancelled() => return,
            }
        }
    }
}

/// The idle pause, cut short when a row becomes due before it ends, so a
/// scheduled row goes out on time rather than up to a poll interval late.
/// Failing to ask only costs that precision: the back-off stands.
async fn until_next_due(shared: &Shared, idle: Duration) -> Duration {
    match candidates::next_due(shared.deps.store.pool(), &shared.regions).await {
        // A millisecond at least: the timer's own resolution, and no spin
        // on a row that is due a few microseconds from now.
        Ok(Some(wait)) => idle.min(wait.max(Duration::from_millis(1))),
        Ok(None) => idle,
        Err(e) => {
            tracing::debug!(error = %e, "reading the next due time; keeping the idle back-off");
            idle
        }
    }
}

/// One round, in four steps: read candidates, lock a batch of them, claim
/// the granted rows, dispatch the claimed rows to senders.
async fn poll_once(
    shared: &Arc<Shared>,
    want: usize,
    slice: Option<Slice>,
) -> anyhow::Result<Round> {
    let started = Instant::now();
    // While a channel that has not answered is at its share of the send
    // slots, its rows at the head of the queue are set aside, not claimed:
    // read a whole batch's worth, so one round gets past many of them.
    let read = match shared.cfg.lock_scope == LockScope::Item && shared.shares.any_full() {
        true => want.max(shared.cfg.batch_size),
        false => want,
    };
    let mut candidates = read_candidates(shared, read, slice).await?;
    if candidates.is_empty() {
        return Ok(Round::default());
    }
    let seen = candidates.len();
    let screen = shared.admission.prepare(shared, &candidates).await?;
    let mut aside = 0;
    if let Some(s) = &screen {
        let out = s.set_aside();
        aside = s.full.len();
        if !s.full.is_empty() {
            let most = shared.cfg.send_timeout.min(Duration::from_secs(1));
            let mut by_channel: HashMap<&str, Vec<u64>> = HashMap::new();
            for (id, channel) in &s.full {
                by_channel.entry(channel).or_default().push(*id);
            }
            for (channel, ids) in by_channel {
                shared.busy.hold_for_channel(channel, &ids, most);
                // It may have answered since `prepare` looked.
                if !shared.shares.full(channel) {
                    shared.busy.channel_answered(channel);
                }
            }
        }
        if !out.is_empty() {
            candidates.retain(|c| !out.contains(&c.id));
        }
    }
    let picked = pick_with_keys(&candidates, want, shared.cfg.lock_scope);
    let mut round = Round {
        candidates: seen,
        ..Round::default()
    };
    let lock = if picked.is_empty() {
        None
    } else {
        let (lock, keys, contended) = lock_batch(shared, &picked).await?;
        round.keys = keys;
        round.contended = contended;
        Some(lock)
    };
    // The gate judges only rows this round holds the keys of.
    let mut picked = picked;
    if let Some(screen) = screen {
        let locked: Vec<&Candidate> = picked
            .iter()
            .filter(|(_, k)| lock.as_ref().is_some_and(|l| l.is_granted(k)))
            .map(|(c, _)| c)
            .collect();
        let (out, deferred) = shared.admission.admit(shared, screen, &locked).await;
        round.deferred = deferred + aside;
        if !out.is_empty() {
            picked.retain(|(c, _)| !out.contains(&c.id));
        }
    }
    let Some(lock) = lock else {
        return Ok(round);
    };
    if lock.granted().is_empty() {
        return Ok(round);
    }
    let result = claim_granted(shared, &lock, &picked).await;
    // A probe row that was not claimed frees the probe for the next poll.
    if shared.admission.probing() {
        let claimed: HashSet<u64> = match &result {
            Ok(jobs) => jobs.iter().map(|j| j.id).collect(),
            Err(_) => HashSet::new(),
        };
        shared.admission.not_sent(
            picked
                .iter()
                .map(|(c, _)| c.id)
                .filter(|id| !claimed.contains(id)),
        );
    }
    round.claimed = dispatch(shared, lock, started, result?);
    Ok(round)
}

/// Step 1: due candidates, without rows this worker is leaving alone
/// (unwritable, or skipped by a recent claim). Reads that many more, so
/// they do not shrink the round.
async fn read_candidates(
    shared: &Shared,
    want: usize,
    slice: Option<Slice>,
) -> anyhow::Result<Vec<Candidate>> {
    let window = (want + shared.busy.out_now()).min(MAX_WINDOW);
    let mut candidates =
        candidates::candidates(shared.deps.store.pool(), &shared.regions, window, slice)
            .await
            .context("reading due candidates")?;
    shared.drop_skipped(&mut candidates);
    Ok(candidates)
}

/// The rows to try this round, each with its lock key (computed once).
fn pick_with_keys(
    candidates: &[Candidate],
    want: usize,
    scope: LockScope,
) -> Vec<(Candidate, String)> {
    pick(candidates, want, scope)
        .into_iter()
        .map(|c| {
            let key = match scope {
                LockScope::Item => format!("n:{}", c.id),
                LockScope::User => format!("u:{}", c.user_id),
            };
            (c, key)
        })
        .collect()
}

/// Step 2: one batched acquire of the picked rows' keys. Returns the lock,
/// how many keys were asked for and how many another owner held.
async fn lock_batch(
    shared: &Shared,
    picked: &[(Candidate, String)],
) -> anyhow::Result<(BatchLock, usize, usize)> {
    let metrics = &shared.deps.metrics;
    let mut seen = HashSet::new();
    let keys: Vec<String> = picked
        .iter()
        .filter(|(_, k)| seen.insert(k.as_str()))
        .map(|(_, k)| k.clone())
        .collect();
    let t = Instant::now();
    let lock = shared
        .deps
        .redlock
        .acquire_many(&keys, shared.cfg.lock_ttl)
        .await
        .context("locking the batch")?;
    metrics
        .lock_acquire_duration
        .observe(t.elapsed().as_secs_f64());
    let contended = keys.len() - lock.granted().len();
    metrics.lock_contended.inc_by(contended as u64);
    Ok((lock, keys.len(), contended))
}

/// Step 3: claims the rows whose keys were granted and turns them into
/// jobs. Rows the claim skipped are left out of the next polls for a
/// moment; keys granted but not claimed (another instance finished or
/// claimed the row between our read and our claim, or another transaction
/// holds it) are released at once.
async fn claim_granted(
    shared: &Shared,
    lock: &BatchLock,
    picked: &[(Candidate, String)],
) -> anyhow::Result<Vec<Job>> {
    let granted: HashMap<u64, &(Candidate, String)> = picked
        .iter()
        .filter(|(_, k)| lock.is_granted(k))
        .map(|p| (p.0.id, p))
        .collect();
    let ids: Vec<u64> = granted.keys().copied().collect();
    let rows = match claim_isolating(shared, lock, &ids).await {
        Ok(rows) => rows,
        Err(e) => {
            // Whatever this round claimed stays claimed until its lease
            // expires; then any instance picks the rows up again.
            release_all(shared, lock).await;
            return Err(e).context("claiming the batch");
        }
    };
    let mut jobs: Vec<Job> = Vec::with_capacity(rows.len());
    for row in rows {
        let id = match &row {
            Ok(r) => r.id,
            Err((id, _)) => *id,
        };
        let Some((candidate, key)) = granted.get(&id).copied() else {
            continue; // not asked for: cannot happen, the read is by these ids
        };
        jobs.push(Job {
            id,
            user_id: candidate.user_id,
            due_at: candidate.due_at,
            row,
            key: key.clone(),
        });
    }
    if jobs.len() < ids.len() {
        let got: HashSet<u64> = jobs.iter().map(|j| j.id).collect();
        shared
            .busy
            .skipped(ids.iter().copied().filter(|id| !got.contains(id)));
    }
    let used: HashSet<&str> = jobs.iter().map(|j| j.key.as_str()).collect();
    let unused: Vec<String> = lock
        .granted()
        .iter()
        .filter(|k| !used.contains(k.as_str()))
        .cloned()
        .collect();
    if !unused.is_empty() {
        if let Err(e) = shared.deps.redlock.release_keys(lock, &unused).await {
            tracing::debug!(error = %e, "releasing unclaimed keys failed; they expire with their TTL");
        }
    }
    Ok(jobs)
}

/// Step 4: counts the claimed rows in flight and spawns their senders: one
/// per row in item scope, one per user (rows in due order) in user scope.
/// Returns how many rows were dispatched.
fn dispatch(shared: &Arc<Shared>, lock: BatchLock, started: Instant, jobs: Vec<Job>) -> usize {
    let n = jobs.len();
    if n == 0 {
        return 0;
    }
    shared.add_in_flight(n);
    shared.deps.metrics.claimed.inc_by(n as u64);
    shared.totals.claimed.fetch_add(n as u64, Ordering::Relaxed);
    let batch = Arc::new(ClaimBatch {
        lock,
        started,
        remaining: AtomicUsize::new(n),
        claimed: n as u64,
        counts: Default::default(),
    });
    match shared.cfg.lock_scope {
        LockScope::Item => {
            for job in jobs {
                tokio::spawn(send::run_item(shared.clone(), batch.clone(), job));
            }
        }
        LockScope::User => {
            let mut groups: HashMap<u64, Vec<Job>> = HashMap::new();
            for job in jobs {
                groups.entry(job.user_id).or_default().push(job);
            }
            for (_, mut group) in groups {
                group.sort_by_key(|j| (j.due_at, j.id));
                tokio::spawn(send::run_user(shared.clone(), batch.clone(), group));
            }
        }
    }
    n
}

/// Claims `ids` under `lock` and reads them back. When the claim fails
/// because of what one row holds, splits the batch until that row is alone,
/// marks it failed with the reason (or, if even that write fails, skips it
/// from now on), and claims the rest: one bad row must never stop delivery.
async fn claim_isolating(
    shared: &Shared,
    lock: &BatchLock,
    ids: &[u64],
) -> anyhow::Result<Vec<ClaimedRead>> {
    let cfg = &shared.cfg;
    let pool = shared.deps.store.pool();
    let token = *lock.token().as_bytes();
    let margin = cfg.lock_ttl / 20;
    let mut out = Vec::new();
    let mut parts = vec![ids.to_vec()];
    while let Some(part) = parts.pop() {
        // The lease may never outlive the lock: once the lock could have
        // expired, another instance may lock these keys and must then be
        // able to claim the rows. Recomputed per statement, as splitting
        // takes time.
        let lease = lock.remaining_validity().saturating_sub(margin);
        if lease < cfg.send_timeout + margin {
            if out.is_empty() {
                anyhow::bail!(
                    "lock validity {:?} left is too short for a send (timeout {:?}); is Redis slow?",
                    lock.remaining_validity(),
                    cfg.send_timeout
                );
            }
            break;
        }
        let lease_us = lease.as_micros() as i64;
        match claim::claim_rows(
            pool,
            &part,
            &shared.regions,
            &token,
            &cfg.worker_id,
            lease_us,
            &shared.claim_foreign_locks,
        )
        .await
        {
            Ok(rows) => out.extend(rows),
            Err(e) if crate::store::is_row_error(&e) && part.len() > 1 => {
                let (a, b) = part.split_at(part.len() / 2);
                parts.push(b.to_vec());
                parts.push(a.to_vec());
            }
            Err(e) if crate::store::is_row_error(&e) => {
                let id = part[0];
                let reason = format!("claiming the row failed: {e}");
                shared.skip_row(id);
                match finish::mark_failed(pool, id, None, &reason).await {
                    Ok(_) => {
                        tracing::warn!(id, reason = %reason, "row cannot be claimed; marked failed")
                    }
                    Err(e2) => tracing::error!(
                        id,
                        reason = %reason,
                        error = %e2,
                        "row cannot be claimed nor marked failed; this worker skips it until restarted"
                    ),
                }
            }
            Err(e) if out.is_empty() => return Err(e.into()),
            Err(e) => {
                tracing::warn!(error = %e, "claiming part of a split batch failed; the rest goes ahead");
                break;
            }
        }
    }
    Ok(out)
}

async fn release_all(shared: &Shared, lock: &BatchLock) {
    let keys = lock.granted().to_vec();
    if let Err(e) = shared.deps.redlock.release_keys(lock, &keys).await {
        tracing::debug!(error = %e, "releasing the batch failed; keys expire with their TTL");
    }
}

/// Chooses up to `want` rows from the window (oldest first in the result).
///
/// Item scope: a random sample. User scope: whole users at random (all of a
/// user's rows in the window go together, so they are sent in due order by
/// one sender), until `want` rows are reached.
fn pick(window: &[Candidate], want: usize, scope: LockScope) -> Vec<Candidate> {
    let mut rng = rand::rng();
    let mut out: Vec<Candidate> = match scope {
        LockScope::Item => {
            if window.len() <= want {
                window.to_vec()
            } else {
                rand::seq::index::sample(&mut rng, window.len(), want)
                    .into_iter()
                    .map(|i| window[i])
                    .collect()
            }
        }
        LockScope::User => {
            let mut order: Vec<u64> = Vec::new();
            let mut by_user: HashMap<u64, Vec<Candidate>> = HashMap::new();
            for c in window {
                by_user
                    .entry(c.user_id)
                    .or_insert_with(|| {
                        order.push(c.user_id);
                        Vec::new()
                    })
                    .push(*c);
            }
            order.shuffle(&mut rng);
            let mut out = Vec::with_capacity(want);
            for user in order {
                let rows = &by_user[&user];
                if !out.is_empty() && out.len() + rows.len() > want {
                    continue;
                }
                out.extend_from_slice(rows);
                if out.len() >= want {
                    break;
                }
            }
            out
        }
    };
    out.sort_by_key(|c| (c.due_at, c.id));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    fn cand(id: u64, user_id: u64) -> Candidate {
        Candidate {
            id,
            user_id,
            due_at: DateTime::from_timestamp(id as i64, 0).unwrap(),
        }
    }

    #[test]
    fn user_scope_keeps_a_users_rows_together() {
        let window: Vec<_> = (0..40).map(|i| cand(i, i % 5)).collect();
        for _ in 0..20 {
            let picked = pick(&window, 10, LockScope::User);
            let users: std::collections::HashSet<u64> = picked.iter().map(|c| c.user_id).collect();
            for u in users {
                assert_eq!(picked.iter().filter(|c| c.user_id == u).count(), 8);
            }
        }
    }

    #[test]
    fn item_scope_samples_without_repeats() {
        let window: Vec<_> = (0..40).map(|i| cand(i, i)).collect();
        let picked = pick(&window, 10, LockScope::Item);
        assert_eq!(picked.len(), 10);
        let mut ids: Vec<u64> = picked.iter().map(|c| c.id).collect();
        ids.dedup();
        assert_eq!(ids.len(), 10);
    }
}
