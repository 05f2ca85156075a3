//! Senders: deliver claimed rows and turn each outcome into a [`Finish`],
//! with the [`Attempt`] it records (not for hand-backs, deferrals and rows
//! that expired before sending: those were not attempts).
//!
//! Each row follows its channel's policy ([`crate::policy::ChannelPolicy`]):
//! its send timeout (for the transport, the outer bound and the lock
//! check), its retry schedule (with the process-wide floors and caps), and
//! its concurrency cap (a [`super::caps`] permit taken before the process's
//! send permit).

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::caps::Refused;
use super::job::{ClaimBatch, Done, Job};
use super::Shared;
use super::{PAYLOAD_BUDGET_KIB, PAYLOAD_COPIES};
use crate::config::WorkerConfig;
use crate::policy::{ChannelPolicy, RetryPolicy};
use crate::store::attempts::Attempt;
use crate::store::claim::{self, INLINE_PAYLOAD_MAX};
use crate::store::finish::Finish;
use crate::transport::{AttemptReport, Delivery, SendOutcome};

/// What one row came to: the finish to write, the due-to-delivery lag of a
/// sent row, and the attempt to record.
type Decided = (Finish, Option<f64>, Option<Attempt>);

/// Item scope: one row, its own lock key released when it is finished.
pub(crate) async fn run_item(shared: Arc<Shared>, batch: Arc<ClaimBatch>, job: Job) {
    let decided = deliver(&shared, &batch, &job).await;
    report(&shared, batch, job, decided, true);
}

/// User scope: one user's rows in due order, never two at once; the user's
/// key is released after the last one.
/// Once one row is handed back, so are the user's later rows: sending them
/// would overtake it.
pub(crate) async fn run_user(shared: Arc<Shared>, batch: Arc<ClaimBatch>, jobs: Vec<Job>) {
    let count = jobs.len();
    let mut handing_back = false;
    for (i, job) in jobs.into_iter().enumerate() {
        let decided = match handing_back {
            true => (Finish::HandBack, None, None),
            false => deliver(&shared, &batch, &job).await,
        };
        handing_back |= decided.0 == Finish::HandBack;
        report(&shared, batch.clone(), job, decided, i + 1 == count);
    }
}

/// The retry policy of a channel: its own schedule, if it has one, with
/// the process-wide floor and `Retry-After` cap.
fn retry_policy<'a>(cfg: &'a WorkerConfig, policy: &ChannelPolicy) -> Cow<'a, RetryPolicy> {
    match &policy.retry {
        Some(schedule) => Cow::Owned(RetryPolicy {
            schedule: schedule.clone(),
            ..cfg.retry.clone()
        }),
        None => Cow::Borrowed(&cfg.retry),
    }
}

fn report(shared: &Shared, batch: Arc<ClaimBatch>, job: Job, decided: Decided, release: bool) {
    let (finish, lag, attempt) = decided;
    // A probe row that ends here without a delivery attempt frees the
    // probe (one that was sent has already reported).
    shared.admission.not_sent([job.id]);
    let done = Done::Row {
        batch,
        id: job.id,
        finish,
        release_key: release.then_some(job.key),
        lag_s: lag,
        attempt,
    };
    if shared.finish_tx.send(done).is_err() {
        // Only possible if the finisher died; the claim then runs out with
        // its lease and another instance delivers the row.
        tracing::error!(id = job.id, "finisher is gone; row left to its lease");
    }
}

/// Decides what to do with one row and, if it is deliverable, delivers it.
/// A row that fails or is retried without reaching a transport (an unusable
/// payload, an unknown channel, a payload the database would not give)
/// still used up an attempt, so it records one, of no duration.
async fn deliver(shared: &Shared, batch: &ClaimBatch, job: &Job) -> Decided {
    let cfg = &shared.cfg;
    let row = match &job.row {
        Ok(row) => row,
        Err((_, reason)) => {
            tracing::warn!(id = job.id, reason = %reason, "unusable row marked failed");
            // The row could not be read: not even its attempt number is known.
            return (failed(format!("unusable row: {reason}")), None, None);
        }
    };
    if shared.stop.is_cancelled() {
        return (Finish::HandBack, None, None);
    }
    let policy = cfg.channel_policies.get(&row.channel);
    let send_timeout = policy.send_timeout.unwrap_or(cfg.send_timeout);
    if row.expires_at.is_some_and(|t| t <= Utc::now()) {
        tracing::debug!(id = row.id, "expired before sending");
        return (Finish::Expired, None, None);
    }
    let unsent = || Some(no_send(row.attempts));
    // A large payload is read now, under the byte budget, and held only
    // for this send.
    let mut loaded;
    let mut _budget = None;
    let row = if row.payload.is_none() && row.payload_bytes > INLINE_PAYLOAD_MAX {
        let kib = (row.payload_bytes * PAYLOAD_COPIES)
            .div_ceil(1024)
            .min(PAYLOAD_BUDGET_KIB as u64) as u32;
        _budget = tokio::select! {
            p = shared.payload_budget.acquire_many(kib) => p.ok(),
            _ = shared.stop.cancelled() => return (Finish::HandBack, None, None),
        };
        let token = *batch.lock.token().as_bytes();
        match claim::fetch_payload(shared.deps.store.pool(), row.id, &token).await {
            Ok(Some(p)) => {
                loaded = row.clone();
                loaded.payload = p;
                &loaded
            }
            Ok(None) => {
                tracing::debug!(id = row.id, "claim gone before the payload was read");
                return (Finish::HandBack, None, None);
            }
            Err(e) => {
                tracing::warn!(id = row.id, error = %e, "reading the payload failed; retrying later");
                // The database failed us, not the receiver: retry on the
                // schedule, or soon if it is used up.
                let delay = retry_policy(cfg, policy)
                    .delay_after(row.attempts, crate::policy::RetryCause::Error, None)
                    .unwrap_or(Duration::from_secs(1));
                return (
                    Finish::Retry {
                        delay_us: delay.as_micros() as i64,
                        error: format!("reading the payload failed: {e}"),
                    },
                    None,
                    unsent(),
                );
            }
        }
    } else {
        row
    };
    let payload = match row.check() {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(id = row.id, reason = %e, "unusable row marked failed");
            return (failed(format!("unusable row: {e}")), None, unsent());
        }
    };
    let transport = match shared.deps.transports.resolve(&row.channel) {
        Ok(t) => t.clone(),
        Err(reason) => {
            tracing::warn!(id = row.id, channel = %row.channel, reason = %reason, "row marked failed");
            return (failed(reason), None, unsent());
        }
    };

    // The channel's permit first: a capped channel's rows wait without
    // holding one of the process's send permits.
    let pass = tokio::select! {
        r = shared.gates.enter(&row.channel, || shared.room.notify_waiters()) => match r {
            Ok(pass) => pass,
            Err(Refused::Full(out_for)) => {
                tracing::debug!(id = row.id, channel = %row.channel, "channel at its cap; handing back");
                shared.busy.hold(std::iter::once(row.id), out_for);
                return (Finish::HandBack, None, None);
            }
        },
        _ = shared.stop.cancelled() => return (Finish::HandBack, None, None),
    };
    // A channel that has not answered yet (or failed since) may hold at
    // most half of the send slots, so a dead receiver's rows cannot take
    // them all for a send timeout before its breaker opens.
    let _slot = tokio::select! {
        s = shared.shares.enter(&row.channel, || shared.room.notify_waiters()) => s,
        _ = shared.stop.cancelled() => return (Finish::HandBack, None, None),
    };
    let _permit = tokio::select! {
        p = shared.send_permits.acquire() => match p {
            Ok(p) => p,
            Err(_) => return (Finish::HandBack, None, None),
        },
        _ = shared.stop.cancelled() => return (Finish::HandBack, None, None),
    };
    if shared.stop.is_cancelled() {
        return (Finish::HandBack, None, None);
    }
    // Step 4 of the protocol: send only while the lock outlives the send.
    let margin = cfg.lock_ttl / 20;
    if batch.lock.remaining_validity() < send_timeout + margin {
        tracing::debug!(
            id = row.id,
            "lock validity too short for another send; handing back"
        );
        return (Finish::HandBack, None, None);
    }

    // An operator's cancel request (`herald cancel`): handing the row
    // back ends it `cancelled`.
    if row.cancel_requested || shared.cancels.requested(row.id, batch.started).await {
        tracing::info!(id = row.id, "cancel requested before the send; not sending");
        return (Finish::HandBack, None, None);
    }

    // The channel's breaker may have opened since the claim: hand the row
    // back (attempt returned) until it may let rows through, rather than
    // send it into a receiver the fleet has found dead.
    if let Some(wait) = shared.admission.hold(cfg, &row.channel, row.id) {
        tracing::debug!(id = row.id, channel = %row.channel, "breaker open; row deferred unsent");
        shared
            .deps
            .metrics
            .deferred
            .get_or_create(&crate::metrics::DeferLabel {
                channel: row.channel.clone(),
                reason: "breaker".into(),
            })
            .inc();
        return (
            Finish::Defer {
                delay_us: wait.as_micros().min(i64::MAX as u128) as i64,
            },
            None,
            None,
        );
    }

    let key = row.idempotency_key();
    let send_at = row.send_at.unwrap_or(row.due_at);
    let delivery = Delivery {
        id: row.id,
        user_id: row.user_id,
        channel: &row.channel,
        payload: &payload,
        send_at,
        attempt: row.attempts,
        idempotency_key: &key,
    };
    let started_at = Utc::now();
    let started = Instant::now();
    // The transport enforces the send timeout itself; this outer bound only
    // guards against a transport that does not.
    let outer = send_timeout + Duration::from_secs(1);
    let report = tokio::select! {
        o = tokio::time::timeout(outer, transport.attempt(&delivery)) => o.unwrap_or_else(|_| {
            AttemptReport::new(SendOutcome::timeout(format!("timeout after {outer:?}")), outer)
        }),
        _ = shared.abort.cancelled() => {
            tracing::warn!(id = row.id, "send cut off by shutdown; handing back");
            return (Finish::HandBack, None, None);
        }
    };
    let took = started.elapsed();
    let (outcome, attempt) = split(row.attempts, started_at, report);
    let attempt = Some(attempt);
    if let Some(pass) = &pass {
        pass.observe(took);
    }
    shared
        .deps
        .metrics
        .send_duration
        .observe(took.as_secs_f64());
    // A racy read-modify-write is fine for a moving average.
    let prev = shared.send_ewma_us.load(Ordering::Relaxed);
    let now_us = (took.as_micros() as u64).max(1);
    let next = if prev == 0 {
        now_us
    } else {
        (prev * 7 + now_us) / 8
    };
    shared.send_ewma_us.store(next, Ordering::Relaxed);
    let answered = !matches!(outcome, SendOutcome::Transient { .. });
    if shared.shares.outcome(&row.channel, answered) {
        shared.busy.channel_answered(&row.channel);
    }
    shared
        .admission
        .outcome(cfg, &row.channel, row.id, answered);

    match outcome {
        SendOutcome::Sent => {
            let lag = (Utc::now() - job.due_at)
                .num_microseconds()
                .unwrap_or(0)
                .max(0) as f64
                / 1e6;
            tracing::debug!(id = row.id, attempt = row.attempts, "sent");
            (Finish::Sent, Some(lag), attempt)
        }
        SendOutcome::Transient {
            reason,
            retry_after,
            cause,
        } => {
            let retry = retry_policy(cfg, policy);
            let Some(delay) = retry.delay_after(row.attempts, cause, retry_after) else {
                tracing::warn!(id = row.id, attempts = row.attempts, reason = %reason, "giving up: retry schedule used up");
                return (
                    failed(format!("gave up after {} attempts: {reason}", row.attempts)),
                    None,
                    attempt,
                );
            };
            tracing::info!(
                id = row.id,
                attempt = row.attempts,
                delay_ms = delay.as_millis() as u64,
                reason = %reason,
                "retrying later"
            );
            (
                Finish::Retry {
                    delay_us: delay.as_micros() as i64,
                    error: reason,
                },
                None,
                attempt,
            )
        }
        SendOutcome::Permanent { reason } => {
            tracing::info!(id = row.id, reason = %reason, "permanent failure");
            (failed(reason), None, attempt)
        }
    }
}

fn failed(error: String) -> Finish {
    Finish::Failed { error }
}

/// A transport's report as the outcome to act on and the attempt to record.
fn split(attempt: u32, started_at: DateTime<Utc>, r: AttemptReport) -> (SendOutcome, Attempt) {
    let a = Attempt {
        attempt,
        started_at,
        duration_ms: u32::try_from(r.duration.as_millis()).unwrap_or(u32::MAX),
        http_status: r.http_status,
        response_body: r.response_body,
    };
    (r.outcome, a)
}

/// An attempt decided without a send (the reason is the finish's error).
fn no_send(attempt: u32) -> Attempt {
    Attempt {
        attempt,
        started_at: Utc::now(),
        duration_ms: 0,
        http_status: None,
        response_body: None,
    }
}
