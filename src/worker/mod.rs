//! The sender: poll → lock → claim → send → finish → release.
//!
//! One worker runs three kinds of task, connected by counters and a channel:
//!
//! * the **poller** ([`poll`]) reads due candidates, locks a batch of keys
//!   in one round trip per Redis master, claims the granted rows with one
//!   fenced `UPDATE`, and spawns senders. It keeps up to `concurrency +
//!   batch_size` rows claimed, so the next batch is ready before the
//!   current one finishes and the send slots never sit idle while it polls;
//! * **senders** ([`send`]) deliver one row (item scope) or one user's rows
//!   in due order (user scope), each delivery holding one of `concurrency`
//!   permits, and only while the lock still has enough validity left;
//! * the **finisher** ([`finish`]) batches the outcome writes, each
//!   conditional on the claim token, then releases the lock keys.
//!
//! # Module tour
//!
//! * [`poll`] — the loop and its round, in named steps: `read_candidates`,
//!   `lock_batch`, `claim_isolating` (splits a batch around a bad row),
//!   `dispatch`; plus `pick`.
//! * `ahead` — how many rows are claimed beyond the send slots, and when
//!   the poller tops them up.
//! * `job` — the types the three tasks hand each other (`ClaimBatch`,
//!   `Job`, `Done`); below all three, so they never import each other.
//! * [`send`] — one delivery: checks, the channel's policy (timeout,
//!   schedule), permits, lock validity, transport, and the
//!   [`crate::store::finish::Finish`] it results in.
//! * `caps` — per-channel concurrency caps (`max_in_flight`), taken before
//!   the process's send permits.
//! * [`finish`] — batched outcome writes, rows locked elsewhere written
//!   again shortly, counters by [`crate::outcome::Outcome`], key release.
//! * `cancel` — the batched check for cancel requests on rows that waited
//!   since their claim (`herald cancel`).
//! * `admission` — rate limits and circuit breakers at the poll stage (rows
//!   that may not go now are deferred before locking) and in senders;
//!   `board` — this worker's copy of the fleet's breakers, kept current by
//!   batched reports (see [`crate::gate`]).
//! * `share` — at most half the send slots for a channel that has not
//!   answered (a dead receiver's first rows cannot take every slot for a
//!   whole send timeout before its breaker opens).
//! * [`backoff`] — idle poll back-off (retry delays: [`crate::policy`]).
//! * `spread` — which slice of the candidates each round reads.
//! * `busy` — rows a claim skipped (held elsewhere, or not committed yet),
//!   left out of the candidates for a moment, or longer when skipped again.
//! * this file — [`Worker`], its [`WorkerHandle`] and the state the tasks
//!   share (`Shared`: in-flight count and gauge, unwritable rows,
//!   poll failures for `/readyz`).
//!
//! Shutdown ([`Worker::run`]): stop polling; senders that have not started
//! hand their rows back; in-flight sends get the grace period, after which
//! they are cut off and handed back too; the finisher writes everything,
//! releases every lock, and `run` returns. A second signal cuts the grace
//! short ([`WorkerHandle::abort_now`]).

pub(crate) mod admission;
mod ahead;
pub mod backoff;
pub(crate) mod board;
pub(crate) mod busy;
pub(crate) mod cancel;
pub(crate) mod caps;
pub mod finish;
pub(crate) mod job;
pub mod poll;
pub mod send;
pub(crate) mod share;
pub(crate) mod spread;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::WorkerConfig;
use crate::outcome::{AtomicCounts, Counts, Outcome};

pub use crate::services::Deps;

/// KiB of memory one worker spends on large payloads (above
/// [`crate::store::claim::INLINE_PAYLOAD_MAX`], read at send time) at once.
/// A send holds about [`PAYLOAD_COPIES`] copies of its payload (the read,
/// the checked JSON, the request body), so each is charged that many times
/// its size. With the inline cap this bounds the payload memory of a
/// worker: claimed rows × 16 KiB plus this budget, however large the rows
/// other services write. A payload larger than the whole budget is sent
/// alone.
pub const PAYLOAD_BUDGET_KIB: u32 = 32 * 1024;
/// See [`PAYLOAD_BUDGET_KIB`].
pub const PAYLOAD_COPIES: u64 = 4;

/// Totals over a worker's life, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub claimed: u64,
    pub outcomes: Counts,
}

#[derive(Debug, Default)]
pub(crate) struct AtomicTotals {
    pub claimed: AtomicU64,
    pub outcomes: AtomicCounts,
}

impl AtomicTotals {
    fn snapshot(&self) -> Totals {
        Totals {
            claimed: self.claimed.load(Ordering::Relaxed),
            outcomes: self.outcomes.snapshot(),
        }
    }
}

/// State shared by the poller, senders and finisher of one worker.
#[derive(Debug)]
pub(crate) struct Shared {
    pub deps: Deps,
    pub cfg: WorkerConfig,
    pub regions: Vec<String>,
    /// One permit per concurrent delivery.
    pub send_permits: Semaphore,
    /// Per-channel caps, taken before a send permit.
    pub gates: caps::Gates,
    /// Half the send slots at most for channels that have not answered.
    pub shares: Arc<share::Shares>,
    /// KiB of large payloads being sent at once (see [`PAYLOAD_BUDGET_KIB`]).
    pub payload_budget: Semaphore,
    /// Rows claimed and not yet finished.
    pub in_flight: AtomicUsize,
    /// Woken by the finisher when claimed rows are done, so a poller that
    /// waits for room continues at once.
    pub room: Notify,
    /// First signal: no more polling; unstarted sends hand back.
    pub stop: CancellationToken,
    /// Grace period over: in-flight sends are cut off and handed back.
    pub abort: CancellationToken,
    pub finish_tx: mpsc::UnboundedSender<job::Done>,
    pub totals: AtomicTotals,
    /// Moving average of one delivery's duration in microseconds; sizes
    /// how far ahead the poller claims.
    pub send_ewma_us: AtomicU64,
    /// Last time the poll loop completed a round; `/livez` reads it.
    pub heartbeat: AtomicU64,
    pub started: Instant,
    /// Rows that could neither be claimed nor marked failed (their content
    /// breaks every write): left alone so the rest keeps flowing.
    pub skipped: Mutex<HashSet<u64>>,
    /// Rows the last claims skipped or handed back, left out of the
    /// candidates for a while.
    pub busy: busy::BusyRows,
    /// Since when polls have failed without a success in between, and the
    /// last error; `/readyz` reports it once it lasts.
    pub poll_failing: Mutex<Option<(Instant, String)>>,
    /// Whether claims lately met rows another transaction holds (then
    /// they go straight to the skip-locked path for a while).
    pub claim_foreign_locks: crate::store::ForeignLocks,
    /// The same for finishes, apart: claims meet foreign locks on pending
    /// rows, which says nothing about the rows a finish writes.
    pub finish_foreign_locks: crate::store::ForeignLocks,
    /// Asks whether rows that waited since their claim were cancelled.
    pub cancels: cancel::CancelCheck,
    /// Rate limits and circuit breakers.
    pub admission: admission::Gatekeeper,
}

impl Shared {
    pub(crate) fn skip_row(&self, id: u64) {
        let mut skipped = self.skipped.lock().unwrap_or_else(|e| e.into_inner());
        // A bound, so a table full of unwritable rows cannot grow memory.
        if skipped.len() < 100_000 {
            skipped.insert(id);
        }
    }

    pub(crate) fn drop_skipped(&self, candidates: &mut Vec<crate::store::candidates::Candidate>) {
        {
            let skipped = self.skipped.lock().unwrap_or_else(|e| e.into_inner());
            if !skipped.is_empty() {
                candidates.retain(|c| !skipped.contains(&c.id));
            }
        }
        self.busy.retain_free(candidates, |c| c.id);
    }

    /// Records the outcome of a poll round for `/readyz`.
    pub(crate) fn poll_result(&self, error: Option<String>) {
        let mut failing = self.poll_failing.lock().unwrap_or_else(|e| e.into_inner());
        match (error, failing.as_mut()) {
            (None, _) => *failing = None,
            (Some(e), Some((_, last))) => *last = e,
            (Some(e), None) => *failing = Some((Instant::now(), e)),
        }
    }

    /// Rows claimed: the count and its gauge, written only here and in
    /// [`Shared::sub_in_flight`].
    pub(crate) fn add_in_flight(&self, n: usize) {
        let now = self.in_flight.fetch_add(n, Ordering::AcqRel) + n;
        self.deps.metrics.in_flight.set(now as i64);
    }

    /// Claimed rows that take up room: those parked at a channel's gate
    /// or share do not (see [`caps`], [`share`]).
    pub(crate) fn occupied(&self) -> usize {
        self.in_flight
            .load(Ordering::Acquire)
            .saturating_sub(self.gates.parked() + self.shares.parked())
    }

    /// Rows finished: lowers the count and wakes a poller waiting for room.
    pub(crate) fn sub_in_flight(&self, n: usize) {
        let now = self.in_flight.fetch_sub(n, Ordering::AcqRel) - n;
        self.deps.metrics.in_flight.set(now as i64);
        self.room.notify_waiters();
    }

    pub(crate) fn beat(&self) {
        self.heartbeat
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// A handle to observe a running worker (liveness, totals).
#[derive(Debug, Clone)]
pub struct WorkerHandle {
    shared: Arc<Shared>,
}

impl WorkerHandle {
    /// Time since the poll loop last completed a round.
    pub fn since_heartbeat(&self) -> std::time::Duration {
        let now = self.shared.started.elapsed().as_millis() as u64;
        let last = self.shared.heartbeat.load(Ordering::Relaxed);
        std::time::Duration::from_millis(now.saturating_sub(last))
    }

    pub fn totals(&self) -> Totals {
        self.shared.totals.snapshot()
    }

    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// Cuts a drain short (a second signal): no more polls, in-flight sends
    /// are cut off, and every claim not delivered is handed back. Returns
    /// once nothing is claimed any more; the caller bounds the wait, since
    /// an unreachable database keeps the claims until their leases end.
    pub async fn abort_now(&self) {
        let s = &self.shared;
        s.stop.cancel();
        s.abort.cancel();
        s.room.notify_waiters();
        wait_drained(s).await;
    }

    /// Why polls keep failing, once they have failed without a success for
    /// longer than a few poll intervals (one failure is a blip, a run of
    /// them means this instance delivers nothing).
    pub fn poll_problem(&self) -> Option<String> {
        let failing = self
            .shared
            .poll_failing
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (since, error) = failing.as_ref()?;
        let limit = (self.shared.cfg.poll_interval * 3).max(std::time::Duration::from_secs(1));
        let lasted = since.elapsed();
        (lasted > limit).then(|| format!("polls failing for {} ms: {error}", lasted.as_millis()))
    }
}

/// One worker instance.
#[derive(Debug)]
pub struct Worker {
    shared: Arc<Shared>,
    finish_rx: mpsc::UnboundedReceiver<job::Done>,
    cancel_rx: cancel::CancelRx,
}

impl Worker {
    pub fn new(deps: Deps, cfg: WorkerConfig, regions: Vec<String>) -> Worker {
        let (finish_tx, finish_rx) = mpsc::unbounded_channel();
        let (cancels, cancel_rx) = cancel::CancelCheck::new();
        let channels: Vec<String> = deps
            .transports
            .describe()
            .into_iter()
            .map(|(c, _)| c.to_string())
            .collect();
        let admission = admission::Gatekeeper::new(
            crate::gate::Gate::new(deps.redlock.clone()),
            deps.metrics.clone(),
            &cfg,
            &channels,
        );
        let shared = Arc::new(Shared {
            admission,
            send_permits: Semaphore::new(cfg.concurrency),
            gates: caps::Gates::new(cfg.channel_policies.clone()),
            shares: share::Shares::new(cfg.concurrency),
            payload_budget: Semaphore::new(PAYLOAD_BUDGET_KIB as usize),
            deps,
            cfg,
            regions,
            in_flight: AtomicUsize::new(0),
            room: Notify::new(),
            stop: CancellationToken::new(),
            abort: CancellationToken::new(),
            finish_tx,
            totals: AtomicTotals::default(),
            send_ewma_us: AtomicU64::new(0),
            heartbeat: AtomicU64::new(0),
            started: Instant::now(),
            skipped: Mutex::new(HashSet::new()),
            busy: Default::default(),
            poll_failing: Mutex::new(None),
            claim_foreign_locks: Default::default(),
            finish_foreign_locks: Default::default(),
            cancels,
        });
        Worker {
            shared,
            finish_rx,
            cancel_rx,
        }
    }

    pub fn handle(&self) -> WorkerHandle {
        WorkerHandle {
            shared: self.shared.clone(),
        }
    }

    /// Runs until `shutdown` is cancelled, then drains as described in the
    /// module docs and returns the totals.
    pub async fn run(self, shutdown: CancellationToken) -> Totals {
        let Worker {
            shared,
            finish_rx,
            cancel_rx,
        } = self;
        tokio::spawn(cancel::run(shared.deps.store.pool().clone(), cancel_rx));
        let finisher = tokio::spawn(finish::run(shared.clone(), finish_rx));
        let board_stop = CancellationToken::new();
        let board = tokio::spawn(admission::run_board(shared.clone(), board_stop.clone()));
        let poller = tokio::spawn(poll::run(shared.clone()));

        shutdown.cancelled().await;
        tracing::info!(
            in_flight = shared.in_flight.load(Ordering::Relaxed),
            grace_ms = shared.cfg.shutdown_grace.as_millis() as u64,
            "shutdown: stopped polling, waiting for in-flight sends"
        );
        shared.stop.cancel();
        shared.room.notify_waiters();
        if let Err(e) = poller.await {
            tracing::error!(error = %e, "poller task failed");
        }
        let drained = tokio::time::timeout(shared.cfg.shutdown_grace, wait_drained(&shared)).await;
        if drained.is_err() {
            tracing::warn!(
                in_flight = shared.in_flight.load(Ordering::Relaxed),
                "shutdown: grace period over, cutting off in-flight sends and handing their rows back"
            );
            shared.abort.cancel();
            wait_drained(&shared).await;
        }
        let totals = shared.totals.snapshot();
        // The finisher ends once every sender (and this handle's sender
        // clone, held by `shared`) is gone; close explicitly instead.
        shared.finish_tx.send(job::Done::Close).ok();
        if let Err(e) = finisher.await {
            tracing::error!(error = %e, "finisher task failed");
        }
        board_stop.cancel();
        if let Err(e) = board.await {
            tracing::error!(error = %e, "breaker board task failed");
        }
        let count = |o| totals.outcomes[o];
        tracing::info!(
            claimed = totals.claimed,
            sent = count(Outcome::Sent),
            retried = count(Outcome::Retried),
            failed = count(Outcome::Failed),
            expired = count(Outcome::Expired),
            handed_back = count(Outcome::HandedBack),
            lost = count(Outcome::Lost),
            "worker stopped"
        );
        totals
    }
}

async fn wait_drained(shared: &Shared) {
    wait_for(&shared.room, || {
        shared.in_flight.load(Ordering::Acquire) == 0
    })
    .await;
}

/// Waits until `ready()` holds, re-checking whenever `notify` fires. The
/// waiter is registered before the check, so a wake-up between the check
/// and the wait is not lost.
pub(crate) async fn wait_for(notify: &Notify, ready: impl Fn() -> bool) {
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if ready() {
            return;
        }
        notified.await;
    }
}
