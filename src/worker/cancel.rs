//! Honouring cancel requests before a send, without a database round trip
//! per row.
//!
//! `herald cancel` cannot change a row under a worker's claim; it sets
//! `cancel_requested_at` instead. The finish honours that in any case (a
//! hand-back or a transient failure ends the row `cancelled`); this check
//! also stops the *send* of a row that was claimed ahead and waited for a
//! send slot. Rows sent within [`RECHECK_AFTER`] of their claim skip it
//! (the claim's read-back already carried the flag), so a fast-flowing
//! worker makes no extra query; rows that waited longer are checked in
//! batches: whatever requests arrive while one query is out go into the
//! next, one primary-key lookup statement for all of them.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use sqlx::MySqlPool;
use tokio::sync::{mpsc, oneshot};

use crate::store::ops::cancel::requested_among;

/// Rows sent sooner than this after their claim are not re-checked: a
/// request that lands in this window is honoured at the finish if the
/// send fails, and otherwise reported as "the send had already started".
pub(crate) const RECHECK_AFTER: Duration = Duration::from_secs(1);
/// Most rows checked in one statement.
const MAX_CHECK: usize = 1_000;
/// A check slower than this lets the rows go (sent as if no request).
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

type Request = (u64, oneshot::Sender<bool>);

/// The senders' side of the batched check.
#[derive(Debug)]
pub(crate) struct CancelCheck {
    tx: mpsc::UnboundedSender<Request>,
}

/// The checking task's side, started by [`run`].
pub(crate) type CancelRx = mpsc::UnboundedReceiver<Request>;

impl CancelCheck {
    pub(crate) fn new() -> (CancelCheck, CancelRx) {
        let (tx, rx) = mpsc::unbounded_channel();
        (CancelCheck { tx }, rx)
    }

    /// Whether row `id`, claimed at `claimed`, has a cancel request.
    pub(crate) async fn requested(&self, id: u64, claimed: Instant) -> bool {
        if claimed.elapsed() < RECHECK_AFTER {
            return false;
        }
        let (reply, answer) = oneshot::channel();
        if self.tx.send((id, reply)).is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }
}

/// Answers checks in batches until every [`CancelCheck`] is gone.
pub(crate) async fn run(pool: MySqlPool, mut rx: CancelRx) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_CHECK {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let ids: Vec<u64> = batch.iter().map(|(id, _)| *id).collect();
        let flagged = match tokio::time::timeout(CHECK_TIMEOUT, requested_among(&pool, &ids)).await
        {
            Ok(Ok(set)) => set,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, rows = ids.len(), "cancel check failed; sending as usual");
                HashSet::new()
            }
            Err(_) => HashSet::new(),
        };
        for (id, reply) in batch {
            let _ = reply.send(flagged.contains(&id));
        }
    }
}
