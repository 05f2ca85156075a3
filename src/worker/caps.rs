//! Per-channel concurrency caps (`max_in_flight` in the channel file).
//!
//! A capped channel's rows wait for their channel's permit *before* they
//! take one of the process's send permits, so a slow, capped channel never
//! holds send slots it cannot use. Rows waiting here ("parked") do not
//! count against the poller's room either, so the rows of other channels
//! keep being claimed and sent while a capped channel works through its
//! share. Parking is bounded per channel: a row beyond the bound is handed
//! back at once and left out of this worker's polls until the channel has
//! probably caught up, rather than sitting claimed (out of other workers'
//! reach) for longer than its lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::policy::ChannelPolicies;

/// Rows of one channel that may wait for its permit, as a multiple of the
/// cap: enough that the channel never waits for a poll, few enough to be
/// sent well within a lock's validity.
const PARK_PER_PERMIT: usize = 4;
/// ...and at least this many, for caps of 1 or 2.
const PARK_MIN: usize = 8;

/// One capped channel.
#[derive(Debug)]
pub(crate) struct Gate {
    cap: usize,
    permits: Arc<Semaphore>,
    parked: AtomicUsize,
    /// Moving average of this channel's send duration, in microseconds:
    /// how long a handed-back row should stay out of the polls.
    ewma_us: AtomicU64,
}

/// Every capped channel's gate, created on first use (a `[defaults]` cap
/// applies to channels the file does not name, including ones only rows
/// know about).
#[derive(Debug)]
pub(crate) struct Gates {
    policies: ChannelPolicies,
    by_channel: Mutex<HashMap<String, Arc<Gate>>>,
    /// Rows parked over all channels; the poller does not count them.
    parked: AtomicUsize,
}

/// Why a row did not get its channel's permit.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The channel already has as many rows waiting as it may: hand the
    /// row back and leave it out of polls for this long.
    Full(Duration),
}

/// A row's place at its channel's gate: the permit, and the gate for the
/// send's duration afterwards.
#[derive(Debug)]
pub(crate) struct Pass {
    gate: Arc<Gate>,
    _permit: OwnedSemaphorePermit,
}

impl Pass {
    /// Feeds one send's duration into the channel's average.
    pub fn observe(&self, took: Duration) {
        let now = (took.as_micros() as u64).max(1);
        let prev = self.gate.ewma_us.load(Ordering::Relaxed);
        let next = if prev == 0 { now } else { (prev * 7 + now) / 8 };
        self.gate.ewma_us.store(next, Ordering::Relaxed);
    }
}

impl Gates {
    pub fn new(policies: ChannelPolicies) -> Gates {
        Gates {
            policies,
            by_channel: Mutex::new(HashMap::new()),
            parked: AtomicUsize::new(0),
        }
    }

    /// Rows waiting for a channel permit.
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::Acquire)
    }

    fn gate(&self, channel: &str) -> Option<Arc<Gate>> {
        let cap = self.policies.get(channel).max_in_flight? as usize;
        let mut map = self.by_channel.lock().unwrap_or_else(|e| e.into_inner());
        let gate = map.entry(channel.to_owned()).or_insert_with(|| {
            Arc::new(Gate {
                cap,
                permits: Arc::new(Semaphore::new(cap)),
                parked: AtomicUsize::new(0),
                ewma_us: AtomicU64::new(0),
            })
        });
        Some(gate.clone())
    }

    /// Waits for `channel`'s permit; `Ok(None)` for an uncapped channel.
    /// `on_park` runs once the row is counted as parked (the poller then
    /// has room for it).
    pub async fn enter(
        &self,
        channel: &str,
        on_park: impl FnOnce(),
    ) -> Result<Option<Pass>, Refused> {
        let Some(gate) = self.gate(channel) else {
            return Ok(None);
        };
        if let Ok(permit) = gate.permits.clone().try_acquire_owned() {
            return Ok(Some(Pass {
                gate,
                _permit: permit,
            }));
        }
        let bound = (gate.cap * PARK_PER_PERMIT).max(PARK_MIN);
        let parked = gate.parked.fetch_add(1, Ordering::AcqRel) + 1;
        if parked > bound {
            gate.parked.fetch_sub(1, Ordering::AcqRel);
            // Until the rows already waiting are probably through.
            let per_send = Duration::from_micros(gate.ewma_us.load(Ordering::Relaxed));
            let wait = per_send.saturating_mul((bound / gate.cap) as u32);
            return Err(Refused::Full(
                wait.clamp(Duration::from_millis(500), Duration::from_secs(30)),
            ));
        }
        self.parked.fetch_add(1, Ordering::AcqRel);
        // Counted down however the wait ends (a permit, or the caller
        // dropping this future at shutdown).
        let unpark = Unpark {
            gate: &gate,
            gates: self,
        };
        on_park();
        let permit = gate
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("gate semaphores are never closed");
        drop(unpark);
        Ok(Some(Pass {
            gate,
            _permit: permit,
        }))
    }
}

struct Unpark<'a> {
    gate: &'a Gate,
    gates: &'a Gates,
}

impl Drop for Unpark<'_> {
    fn drop(&mut self) {
        self.gate.parked.fetch_sub(1, Ordering::AcqRel);
        self.gates.parked.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ChannelPolicy;

    fn gates(cap: u32) -> Gates {
        let mut named = HashMap::new();
        named.insert(
            "capped".to_owned(),
            ChannelPolicy {
                max_in_flight: Some(cap),
                ..ChannelPolicy::default()
            },
        );
        Gates::new(ChannelPolicies::new(ChannelPolicy::default(), named))
    }

    #[tokio::test]
    async fn caps_park_and_refuse_beyond_the_bound() {
        let g = Arc::new(gates(1));
        assert!(g.enter("free", || {}).await.unwrap().is_none());
        let first = g.enter("capped", || {}).await.unwrap().unwrap();
        // PARK_MIN rows may wait behind it; the next is refused.
        let mut waiting = Vec::new();
        for _ in 0..PARK_MIN {
            let g = g.clone();
            waiting.push(tokio::spawn(async move {
                g.enter("capped", || {}).await.map(|p| p.is_some())
            }));
        }
        while g.parked() < PARK_MIN {
            tokio::task::yield_now().await;
        }
        assert!(matches!(
            g.enter("capped", || {}).await,
            Err(Refused::Full(_))
        ));
        drop(first);
        for w in waiting {
            assert_eq!(w.await.unwrap(), Ok(true));
        }
        assert_eq!(g.parked(), 0);
    }
}
