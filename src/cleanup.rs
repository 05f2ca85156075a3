//! Cleanup: prune finished rows without ever starving the senders.
//!
//! Deleting is the one job that competes with sending for the same table,
//! so every choice here leans towards sending:
//!
//! * **One instance at a time**, fleet-wide: a lock renewed by a watchdog.
//!   Should the lock be lost (a stall, Redis trouble), the pass stops after
//!   the statement in progress.
//! * **Only while the queue is short**: before every batch, a bounded count
//!   of due rows (`LIMIT threshold + 1` per part) is compared with
//!   `HERALD_CLEANUP_MAX_BACKLOG`. A backlog means senders need the database
//!   more than cleanup does. Only the regions this process serves count:
//!   rows nobody here sends must not switch cleanup off.
//! * **Small, bounded statements**: the finished index is walked
//!   `HERALD_CLEANUP_BATCH` rows at a time (see [`prune`]), and the rows of
//!   each step that are past their retention are deleted by primary key,
//!   with a pause after every DELETE. A DELETE that hits a row-lock wait
//!   (1205) or a deadlock (1213) gives up after a short session lock-wait
//!   timeout, and the batch size halves. The end of the walk (a short step), the
//!   per-tick time cap, shutdown or a lost lock end the pass.
//! * **History without its notification** (deleted by another service) is
//!   swept after a pass that reached the end of its walk: a few batches of
//!   the history table per tick, resuming where this instance's last tick
//!   stopped ([`prune::sweep_orphans`]).
//!
//! Each tick logs one line (`cleanup: deleted N in M batches`, `cleanup:
//! skipped (backlog B > T)`, `cleanup: lock held elsewhere`). The start and
//! end of the work under the lock are logged at debug level, so a test (or
//! an operator chasing an overlap) can see exactly when the lock was used.
//!
//! Its settings ([`config`]) live beside it; `herald cleanup` (in the CLI)
//! runs one [`Cleanup::tick`] or a [`dry_run`].

pub mod config;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use sqlx::MySqlConnection;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::lock::{LockError, Redlock};
use crate::metrics::{Metrics, ReasonLabel};
use crate::store::prune::{self, Retention};
use crate::store::status::due_backlog_on;
use crate::store::Store;

pub use config::CleanupConfig;

/// The fleet-wide lock key (under `HERALD_KEY_PREFIX`).
pub const LOCK_KEY: &str = "cleanup";
/// Long enough that a renewal every TTL/3 survives a slow Redis round, short
/// enough that a crashed instance blocks cleanup only briefly.
const LOCK_TTL: Duration = Duration::from_secs(15);
/// Session `innodb_lock_wait_timeout` of the cleanup connection: a DELETE
/// that collides with senders should fail fast and shrink, not queue up.
const LOCK_WAIT: Duration = Duration::from_secs(2);
/// Lock-wait failures in a row after which the pass gives up until the next
/// tick: the rows are evidently busy.
const MAX_LOCK_WAITS_IN_A_ROW: u32 = 5;
/// Batches of the history table one tick looks at for orphans: the whole
/// table is covered over successive ticks, at a bounded cost per tick.
const ORPHAN_STEPS_PER_TICK: u32 = 20;

/// Why a pass that ran stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// A short batch: nothing more is old enough.
    Finished,
    TimeCap,
    /// The gate closed between batches.
    Backlog {
        backlog: u64,
        threshold: u64,
    },
    LockLost,
    Shutdown,
    LockWaits,
}

/// What one tick did; its `Display` is the tick's log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ran {
        deleted: u64,
        batches: u64,
        /// Cancelled rows given a `finished_at` (see [`prune::stamp_cancelled`]).
        stamped: u64,
        /// History rows whose notification was gone (see [`prune::sweep_orphans`]).
        orphans: u64,
        end: End,
    },
    Skipped {
        backlog: u64,
        threshold: u64,
    },
    LockHeld,
    LockUnavailable(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ran {
                deleted,
                batches,
                stamped,
                orphans,
                end,
            } => {
                write!(f, "deleted {deleted} in {batches} batches")?;
                if *stamped > 0 {
                    write!(f, ", stamped finished_at on {stamped} cancelled rows")?;
                }
                if *orphans > 0 {
                    write!(f, ", {orphans} history rows without a notification")?;
                }
                match end {
                    End::Finished => Ok(()),
                    End::TimeCap => f.write_str(", stopped at the time cap"),
                    End::Backlog { backlog, threshold } => {
                        write!(f, ", stopped (backlog {backlog} > {threshold})")
                    }
                    End::LockLost => f.write_str(", stopped: lock lost"),
                    End::Shutdown => f.write_str(", stopped: shutting down"),
                    End::LockWaits => f.write_str(", stopped: rows kept hitting lock waits"),
                }
            }
            Outcome::Skipped { backlog, threshold } => {
                write!(f, "skipped (backlog {backlog} > {threshold})")
            }
            Outcome::LockHeld => f.write_str("lock held elsewhere"),
            Outcome::LockUnavailable(e) => write!(f, "skipped, lock unavailable: {e}"),
        }
    }
}

/// The cleanup task of one process.
#[derive(Debug, Clone)]
pub struct Cleanup {
    store: Store,
    redlock: Redlock,
    metrics: Arc<Metrics>,
    cfg: CleanupConfig,
    /// The regions this process's worker serves: the backlog gate counts
    /// only these (a backlog nobody here sends must not stop cleanup).
    regions: Vec<String>,
    /// Where the next orphan sweep starts (a history id; 0 = the start).
    sweep_from: Arc<AtomicU64>,
}

impl Cleanup {
    pub fn new(
        store: Store,
        redlock: Redlock,
        metrics: Arc<Metrics>,
        cfg: CleanupConfig,
        regions: Vec<String>,
    ) -> Self {
        Cleanup {
            store,
            redlock,
            metrics,
            cfg,
            regions,
            sweep_from: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn retention(&self) -> Retention {
        self.cfg.retention
    }

    /// Ticks every interval until `shutdown`. The first tick comes after a
    /// random part of the interval, so a fleet started together does not
    /// race for the lock at the same instant every time.
    pub async fn run(self, shutdown: CancellationToken) {
        let interval = self.cfg.interval;
        let first = rand::rng().random_range(Duration::ZERO..interval);
        info!(
            interval_s = interval.as_secs(),
            first_tick_ms = first.as_millis() as u64,
            max_backlog = self.cfg.max_backlog,
            batch = self.cfg.batch,
            "cleanup scheduled"
        );
        let mut next = Instant::now() + first;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = shutdown.cancelled() => return,
            }
            let started = Instant::now();
            match self.tick(&shutdown).await {
                Ok(outcome) => info!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "cleanup: {outcome}"
                ),
                Err(e) => {
                    self.metrics.cleanup_errors.inc();
                    warn!(error = crate::cause::chain(&e), "cleanup: failed");
                }
            }
            // A tick that overran its slot starts the next one at once
            // rather than drifting the schedule.
            next = (next + interval).max(Instant::now());
        }
    }

    /// One tick: take the fleet-wide lock, then run a pass under it.
    pub async fn tick(&self, shutdown: &CancellationToken) -> anyhow::Result<Outcome> {
        let locked = self
            .redlock
            .with_lock(LOCK_KEY, LOCK_TTL, |guard| async move {
                debug!("cleanup tick started");
                let out = self.pass(shutdown, guard.lost()).await;
                // Logged while the lock is still held, unlike the summary line.
                debug!("cleanup tick finished");
                out
            })
            .await;
        let outcome = match locked {
            Ok(out) => out?,
            Err(LockError::Contended) => Outcome::LockHeld,
            Err(e) => Outcome::LockUnavailable(e.to_string()),
        };
        let reason = match &outcome {
            Outcome::Skipped { .. } => Some("backlog"),
            Outcome::LockHeld => Some("lock_held"),
            Outcome::LockUnavailable(_) => Some("lock_unavailable"),
            Outcome::Ran { .. } => None,
        };
        if let Some(reason) = reason {
            self.metrics
                .cleanup_skipped
                .get_or_create(&ReasonLabel {
                    reason: reason.into(),
                })
                .inc();
        }
        Ok(outcome)
    }

    /// One pass on a dedicated connection whose lock-wait timeout is short.
    async fn pass(
        &self,
        shutdown: &CancellationToken,
        lost: &CancellationToken,
    ) -> anyhow::Result<Outcome> {
        let mut conn = self.store.pool().acquire().await?;
        prune::set_lock_wait(&mut conn, LOCK_WAIT).await?;
        let out = self.batches(&mut conn, shutdown, lost).await;
        let reset = prune::reset_lock_wait(&mut conn).await;
        if out.is_err() || reset.is_err() {
            // Unknown session state must not go back to the senders' pool.
            conn.close_on_drop();
        }
        out
    }

    async fn batches(
        &self,
        conn: &mut MySqlConnection,
        shutdown: &CancellationToken,
        lost: &CancellationToken,
    ) -> anyhow::Result<Outcome> {
        let cfg = &self.cfg;
        let retention = self.retention();
        let started = Instant::now();
        let threshold = cfg.max_backlog;
        let mut size = cfg.batch;
        let (mut deleted, mut batches, mut stamped) = (0u64, 0u64, None);
        let mut waits_in_row = 0;
        // Only moves past rows that are gone or kept: after a lock-wait
        // failure the same rows are tried again, fewer at a time.
        let mut cursor = None;
        let end = loop {
            if shutdown.is_cancelled() {
                break End::Shutdown;
            }
            if lost.is_cancelled() {
                break End::LockLost;
            }
            if started.elapsed() >= cfg.max_tick {
                break End::TimeCap;
            }
            let limit = Some(threshold.saturating_add(1));
            let backlog = due_backlog_on(conn, Some(&self.regions), limit).await?;
            self.metrics.due_backlog.set(backlog as i64);
            if backlog > threshold {
                if batches == 0 && stamped.is_none() {
                    return Ok(Outcome::Skipped { backlog, threshold });
                }
                break End::Backlog { backlog, threshold };
            }
            if stamped.is_none() {
                stamped = Some(prune::stamp_cancelled(conn, cfg.batch).await?);
            }
            let step = prune::scan(conn, &retention, cursor, size).await?;
            let last = (step.scanned as u64) < size;
            if step.eligible.is_empty() {
                // Only rows still inside their retention here: step over
                // them; nothing was written, so no pause is owed.
                cursor = step.next;
                if last {
                    break End::Finished;
                }
                continue;
            }
            match prune::delete_ids(conn, &step.eligible).await {
                Ok(n) => {
                    waits_in_row = 0;
                    deleted += n;
                    batches += 1;
                    cursor = step.next;
                    self.metrics.cleanup_deleted.inc_by(n);
                    self.metrics.cleanup_batches.inc();
                    debug!(
                        deleted = n,
                        scanned = step.scanned,
                        batch = size,
                        "cleanup batch"
                    );
                    if last {
                        break End::Finished;
                    }
                }
                Err(e) if prune::is_lock_wait(&e) => {
                    waits_in_row += 1;
                    self.metrics.cleanup_lock_waits.inc();
                    let smaller = (size / 2).max(1);
                    warn!(
                        error = %e,
                        batch = size,
                        next_batch = smaller,
                        "cleanup: DELETE waited too long for row locks; shrinking the batch"
                    );
                    size = smaller;
                    if waits_in_row >= MAX_LOCK_WAITS_IN_A_ROW {
                        break End::LockWaits;
                    }
                }
                Err(e) => return Err(e.into()),
            }
            tokio::select! {
                _ = tokio::time::sleep(cfg.pause) => {}
                _ = shutdown.cancelled() => {}
                _ = lost.cancelled() => {}
            }
        };
        let orphans = if end == End::Finished {
            self.sweep(conn, shutdown, lost, started).await?
        } else {
            0
        };
        Ok(Outcome::Ran {
            deleted,
            batches,
            stamped: stamped.unwrap_or(0),
            orphans,
            end,
        })
    }

    /// Deletes attempt history whose notification is gone, a few batches
    /// per tick from where the last tick stopped; returns the rows deleted.
    async fn sweep(
        &self,
        conn: &mut MySqlConnection,
        shutdown: &CancellationToken,
        lost: &CancellationToken,
        started: Instant,
    ) -> anyhow::Result<u64> {
        let cfg = &self.cfg;
        let mut deleted = 0;
        for _ in 0..ORPHAN_STEPS_PER_TICK {
            if shutdown.is_cancelled() || lost.is_cancelled() || started.elapsed() >= cfg.max_tick {
                break;
            }
            let from = self.sweep_from.load(Ordering::Relaxed);
            let step = prune::sweep_orphans(conn, from, cfg.batch).await?;
            deleted += step.deleted;
            let end = step.scanned < cfg.batch;
            self.sweep_from
                .store(if end { 0 } else { step.next }, Ordering::Relaxed);
            if step.deleted > 0 {
                tokio::time::sleep(cfg.pause).await;
            }
            if end {
                break;
            }
        }
        Ok(deleted)
    }
}

/// What a pass now would delete, per status, and whether the backlog gate
/// would let it run: the line `herald cleanup --dry-run` prints. Takes no
/// lock: nothing is written.
pub async fn dry_run(
    store: &Store,
    cfg: &CleanupConfig,
    regions: &[String],
) -> anyhow::Result<String> {
    let mut conn = store.pool().acquire().await?;
    let eligible = prune::count_eligible(&mut conn, &cfg.retention).await?;
    let limit = Some(cfg.max_backlog.saturating_add(1));
    let backlog = due_backlog_on(&mut conn, Some(regions), limit).await?;
    let parts: Vec<String> = eligible
        .by_status
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    let gate = if backlog > cfg.max_backlog {
        format!(
            "a pass now would be skipped (backlog {backlog} > {})",
            cfg.max_backlog
        )
    } else {
        format!("backlog {backlog} <= {}", cfg.max_backlog)
    };
    Ok(format!(
        "dry run: would delete {} ({}); {gate}",
        eligible.total(),
        parts.join(", ")
    ))
}
