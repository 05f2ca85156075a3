//! Delays: retry back-off for failed deliveries and idle back-off for polls.
//! Both are jittered, so a fleet that failed together (a receiver outage)
//! or went idle together does not come back in lock-step; see each
//! function for which jitter and why.

use std::time::Duration;

use rand::Rng;

/// Delay before attempt `attempt + 1` after `attempt` failed transiently.
///
/// With `ceiling = min(max, base * 2^(attempt-1))` the delay is uniform in
/// `[ceiling/2, ceiling]` ("equal jitter"): spread enough that a fleet which
/// failed together does not retry together, yet every delay is at least as
/// long as the previous one, so a struggling receiver really gets more room
/// each time (full jitter, `[0, ceiling]`, can retry sooner on the third
/// attempt than on the second). Never less than a `Retry-After` the receiver
/// asked for, itself capped at `max`.
pub fn retry_delay(
    attempt: u32,
    base: Duration,
    max: Duration,
    retry_after: Option<Duration>,
) -> Duration {
    let exp = attempt.saturating_sub(1).min(31);
    let ceiling = base.saturating_mul(1u32 << exp).min(max).as_micros() as u64;
    let jittered = Duration::from_micros(rand::rng().random_range(ceiling / 2..=ceiling));
    match retry_after {
        Some(asked) => jittered.max(asked.min(max)),
        None => jittered,
    }
}

/// Idle back-off between polls: starts small so a trickle of new rows is
/// picked up quickly, doubles on every empty poll up to `max`, and resets as
/// soon as a poll finds work.
#[derive(Debug, Clone)]
pub struct PollBackoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl PollBackoff {
    pub fn new(max: Duration) -> Self {
        Self::starting_at(Duration::from_millis(20), max)
    }

    /// A back-off whose first step is `min` (capped at `max`).
    pub fn starting_at(min: Duration, max: Duration) -> Self {
        let min = min.min(max);
        Self {
            min,
            max,
            current: min,
        }
    }

    /// The next idle sleep, jittered to 50-100% of the current step.
    pub fn idle(&mut self) -> Duration {
        let step = self.current;
        self.current = (self.current * 2).min(self.max);
        let micros = step.as_micros() as u64;
        Duration::from_micros(rand::rng().random_range(micros / 2..=micros.max(1)))
    }

    /// Short pause after a partial batch: the backlog is drained, new rows
    /// trickle in.
    pub fn partial(&mut self) -> Duration {
        self.current = self.min;
        self.min
    }

    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_is_capped_and_honours_retry_after() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(10);
        for attempt in 1..50 {
            assert!(retry_delay(attempt, base, max, None) <= max);
        }
        assert!(retry_delay(1, base, max, None) <= base);
        for _ in 0..100 {
            assert!(retry_delay(2, base, max, None) >= retry_delay(1, base, max, None));
        }
        assert!(retry_delay(1, base, max, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
        assert_eq!(
            retry_delay(1, base, max, Some(Duration::from_secs(3600))),
            max
        );
    }

    #[test]
    fn poll_backoff_grows_and_resets() {
        let mut b = PollBackoff::new(Duration::from_millis(500));
        let mut last = Duration::ZERO;
        for _ in 0..10 {
            last = b.idle();
        }
        assert!(last >= Duration::from_millis(250) && last <= Duration::from_millis(500));
        b.reset();
        assert!(b.idle() <= Duration::from_millis(20));
    }
}
