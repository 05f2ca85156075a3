//! Send slots for channels that have not answered: at most half of them.
//!
//! A breaker opens only after `failures` transient failures came back, and
//! a dead receiver's first failures come back only after a whole send
//! timeout. Until then every row of that channel that reaches a send slot
//! holds it for the timeout: at the head of the queue, a dead channel's
//! rows took every slot of every worker for the first timeout, and the
//! healthy channels beside it sent nothing (measured: a 1 s stall in a 3 s
//! drain). So a channel is *suspect* until one of its sends in this process
//! gets an answer, and again after each transient failure until the next
//! answer; a suspect channel may hold at most half of the send slots. Its
//! further rows wait here without counting as claimed work for the poller
//! (like rows at a `max_in_flight` cap), and the poller leaves its rows
//! alone while it is at its share (see `admission`). A healthy channel is
//! suspect only until its first answer, one send's time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Debug, Default)]
struct Channel {
    in_flight: usize,
    /// The last finished send got an answer.
    trusted: bool,
}

#[derive(Debug)]
pub(crate) struct Shares {
    /// Most sends a suspect channel may have at once.
    limit: usize,
    by_channel: Mutex<HashMap<String, Channel>>,
    parked: AtomicUsize,
    changed: Notify,
}

/// A send slot within the channel's share, given back on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    shares: Arc<Shares>,
    channel: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.shares.lock();
        if let Some(c) = map.get_mut(&self.channel) {
            c.in_flight = c.in_flight.saturating_sub(1);
        }
        drop(map);
        self.shares.changed.notify_waiters();
    }
}

struct Unpark<'a>(&'a AtomicUsize);

impl Drop for Unpark<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shares {
    /// Shares of `concurrency` send slots: a suspect channel gets half.
    pub(crate) fn new(concurrency: usize) -> Arc<Shares> {
        Arc::new(Shares {
            limit: (concurrency / 2).max(1),
            by_channel: Mutex::new(HashMap::new()),
            parked: AtomicUsize::new(0),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Channel>> {
        self.by_channel.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rows waiting for their channel's share; the poller does not count
    /// them.
    pub(crate) fn parked(&self) -> usize {
        self.parked.load(Ordering::Acquire)
    }

    /// Whether `channel` is suspect and at its share: the poller then
    /// leaves its rows alone.
    pub(crate) fn full(&self, channel: &str) -> bool {
        let map = self.lock();
        map.get(channel)
            .is_some_and(|c| !c.trusted && c.in_flight >= self.limit)
    }

    /// Whether any channel is [`Shares::full`].
    pub(crate) fn any_full(&self) -> bool {
        self.lock()
            .values()
            .any(|c| !c.trusted && c.in_flight >= self.limit)
    }

    /// Waits until `channel` may start one more send. `on_park` runs once
    /// if the row has to wait (the poller then has room for others).
    pub(crate) async fn enter(self: &Arc<Self>, channel: &str, on_park: impl FnOnce()) -> Slot {
        let mut on_park = Some(on_park);
        let mut _unpark = None;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut map = self.lock();
                let c = map.entry(channel.to_owned()).or_default();
                if c.trusted || c.in_flight < self.limit {
                    c.in_flight += 1;
                    return Slot {
                        shares: self.clone(),
                        channel: channel.to_owned(),
                    };
                }
            }
            if let Some(f) = on_park.take() {
                self.parked.fetch_add(1, Ordering::AcqRel);
                _unpark = Some(Unpark(&self.parked));
                f();
            }
            notified.await;
        }
    }

    /// A send of `channel` finished: `answered` is any answer from the
    /// receiver, as opposed to a transient failure. Returns whether this
    /// answer lifted the channel's share (the poller may take its rows
    /// again).
    pub(crate) fn outcome(&self, channel: &str, answered: bool) -> bool {
        let mut map = self.lock();
        let c = map.entry(channel.to_owned()).or_default();
        let woke = answered && !c.trusted;
        c.trusted = answered;
        drop(map);
        if woke {
            self.changed.notify_waiters();
        }
        woke
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_suspect_channel_gets_half_the_slots_until_it_answers() {
        let shares = Shares::new(4);
        let a1 = shares.enter("a", || {}).await;
        let _a2 = shares.enter("a", || {}).await;
        assert!(shares.full("a"));
        assert!(!shares.full("b"));
        let s = shares.clone();
        let waiter = tokio::spawn(async move { s.enter("a", || {}).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(shares.parked(), 1);
        assert!(!waiter.is_finished());
        // A slot given back lets one more through.
        drop(a1);
        let _a3 = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(shares.parked(), 0);
        // An answer lifts the share; a transient failure brings it back.
        shares.outcome("a", true);
        let _more: Vec<Slot> =
            futures::future::join_all((0..4).map(|_| shares.enter("a", || {}))).await;
        assert!(!shares.full("a"));
        shares.outcome("a", false);
        assert!(shares.full("a"));
    }
}
