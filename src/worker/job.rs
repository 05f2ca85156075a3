//! The types the poller, senders and finisher hand each other. They live
//! here, below all three, so those modules import this one and not each
//! other.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::lock::BatchLock;
use crate::outcome::AtomicCounts;
use crate::store::attempts::Attempt;
use crate::store::claim::ClaimedRead;
use crate::store::finish::Finish;

/// Rows of one poll round that were locked and claimed together: they share
/// the lock (one token) and one log line when the last of them finishes.
#[derive(Debug)]
pub(crate) struct ClaimBatch {
    pub lock: BatchLock,
    pub started: Instant,
    pub remaining: AtomicUsize,
    pub claimed: u64,
    pub counts: AtomicCounts,
}

/// One claimed row on its way to a transport.
#[derive(Debug)]
pub(crate) struct Job {
    pub id: u64,
    pub user_id: u64,
    /// Due time before the claim moved it, for the lag metric.
    pub due_at: DateTime<Utc>,
    pub row: ClaimedRead,
    /// The lock key this row was claimed under.
    pub key: String,
}

/// A sender's report to the finisher.
#[derive(Debug)]
pub(crate) enum Done {
    Row {
        batch: Arc<ClaimBatch>,
        id: u64,
        finish: Finish,
        /// The lock key to release with this row (the last row of a user
        /// group in user scope, every row in item scope).
        release_key: Option<String>,
        lag_s: Option<f64>,
        /// The delivery attempt this finish records, if the row had one.
        attempt: Option<Attempt>,
    },
    /// Sent by `Worker::run` once nothing is in flight.
    Close,
}
