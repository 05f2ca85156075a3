//! Idle back-off between polls, jittered so a fleet that went idle together
//! does not poll in lock-step. (Retry delays of failed deliveries follow the
//! retry schedule in [`crate::policy`].)

use std::time::Duration;

use rand::Rng;

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
