//! Per-master circuit breaker.
//!
//! A dead master refuses connections quickly, but a pool waiting for a
//! connection that will never come does not: without a breaker every request
//! to it would cost the full per-master timeout. After `threshold`
//! consecutive failures the breaker fails fast for `cooldown`, then lets
//! exactly one probe through; its outcome closes or re-opens the breaker.
//! Lock-free, because it sits on every request's path.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::*};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cooldown: Duration,
    epoch: Instant,
    failures: AtomicU32,
    /// Nanoseconds since `epoch` until which the breaker is open; 0 = closed.
    open_until: AtomicU64,
    probing: AtomicBool,
}

/// Permission to send one request. Report its outcome with
/// [`Ticket::success`] or [`Ticket::failure`]; a ticket dropped without an
/// outcome (the request was cancelled) frees the probe slot.
#[derive(Debug)]
pub(crate) struct Ticket<'a> {
    breaker: &'a Breaker,
    probe: bool,
    done: bool,
}

/// What a failure did to the breaker, for logging and metrics.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Transition {
    None,
    Opened,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            epoch: Instant::now(),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    fn now_ns(&self) -> u64 {
        // +1 so that "open until" is never the closed marker 0.
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1
    }

    pub(crate) fn allow(&self) -> Option<Ticket<'_>> {
        let until = self.open_until.load(Acquire);
        if until == 0 {
            return Some(Ticket {
                breaker: self,
                probe: false,
                done: false,
            });
        }
        if self.now_ns() < until {
            return None;
        }
        // Cooldown over: one caller becomes the probe, the rest keep failing fast.
        if self
            .probing
            .compare_exchange(false, true, AcqRel, Acquire)
            .is_ok()
        {
            Some(Ticket {
                breaker: self,
                probe: true,
                done: false,
            })
        } else {
            None
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        self.open_until.load(Acquire) != 0
    }

    fn open(&self) {
        let until = self
            .now_ns()
            .saturating_add(u64::try_from(self.cooldown.as_nanos()).unwrap_or(u64::MAX / 2));
        self.open_until.store(until, Release);
    }
}

impl Ticket<'_> {
    pub(crate) fn success(mut self) {
        self.done = true;
        let b = self.breaker;
        b.failures.store(0, Release);
        if b.open_until.load(Acquire) != 0 {
            b.open_until.store(0, Release);
        }
        if self.probe {
            b.probing.store(false, Release);
        }
    }

    pub(crate) fn failure(mut self) -> Transition {
        self.done = true;
        let b = self.breaker;
        let n = b.failures.fetch_add(1, AcqRel).saturating_add(1);
        if self.probe {
            b.open();
            b.probing.store(false, Release);
            return Transition::None;
        }
        if n >= b.threshold && b.open_until.load(Acquire) == 0 {
            b.open();
            return Transition::Opened;
        }
        Transition::None
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.done && self.probe {
            self.breaker.probing.store(false, Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_lets_one_probe_through() {
        let b = Breaker::new(2, Duration::from_millis(20));
        b.allow().unwrap().failure();
        assert!(!b.is_open());
        assert_eq!(b.allow().unwrap().failure(), Transition::Opened);
        assert!(b.allow().is_none());
        std::thread::sleep(Duration::from_millis(25));
        let probe = b.allow().unwrap();
        assert!(b.allow().is_none(), "only one probe");
        probe.failure();
        assert!(b.allow().is_none(), "re-opened");
        std::thread::sleep(Duration::from_millis(25));
        let probe = b.allow().unwrap();
        drop(probe); // cancelled probe frees the slot
        b.allow().unwrap().success();
        assert!(!b.is_open());
        assert!(b.allow().is_some());
    }
}
