//! The retry schedule.
//!
//! Why a list and not `base × 2^n`: receivers fail in outages that last
//! from seconds (a deploy) to most of a day (a broken release, an expired
//! certificate), and the useful question is "how long do we keep trying",
//! which a list answers at a glance. The default covers a little more than
//! a day in eight attempts, like Svix's (8 attempts over ~27 h): a routine
//! deploy costs one retry after ~30 s, an hour-long outage five attempts,
//! and a notification is only given up once its receiver has been failing
//! for about 27 hours.

use std::time::Duration;

use rand::Rng;

/// Delays after the first, second, ... failed attempt. Eight attempts in
/// all (the first at once), spread over ~26.7 h.
pub const DEFAULT_SCHEDULE: &str = "30s,2m,10m,30m,2h,8h,16h";

/// More retries than this is a typo, not a policy.
pub const MAX_RETRIES: usize = 1_000;

/// The longest single delay a schedule may hold.
pub const MAX_DELAY: Duration = Duration::from_secs(30 * 86_400);

/// A bad schedule, naming the element at fault (1-based) so the settings
/// layer can point at it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("element {index} ({text:?}): {reason}")]
    Element {
        index: usize,
        text: String,
        reason: String,
    },
    #[error("{0} delays is too many (at most {MAX_RETRIES})")]
    TooMany(usize),
}

/// Delays between attempts; its length is the number of retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        RetrySchedule::parse(DEFAULT_SCHEDULE).expect("the default schedule parses")
    }
}

impl std::str::FromStr for RetrySchedule {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RetrySchedule::parse(s)
    }
}

impl RetrySchedule {
    /// Parses `30s,2m,1h30m,...`; `none` (or an empty string) means no
    /// retries at all. Each delay must be positive, at most [`MAX_DELAY`],
    /// and no shorter than the one before it: a schedule that shrinks would
    /// hit a struggling receiver harder the longer it struggles.
    pub fn parse(raw: &str) -> Result<Self, ScheduleError> {
        let raw = raw.trim();
        if raw.is_empty() || raw.eq_ignore_ascii_case("none") {
            return Ok(RetrySchedule { delays: Vec::new() });
        }
        let parts: Vec<&str> = raw.split(',').map(str::trim).collect();
        if parts.len() > MAX_RETRIES {
            return Err(ScheduleError::TooMany(parts.len()));
        }
        let mut delays: Vec<Duration> = Vec::with_capacity(parts.len());
        for (i, text) in parts.iter().enumerate() {
            let err = |reason: String| ScheduleError::Element {
                index: i + 1,
                text: (*text).to_owned(),
                reason,
            };
            if text.is_empty() {
                return Err(err("empty".into()));
            }
            let d = humantime::parse_duration(text)
                .map_err(|e| err(format!("not a duration like 30s, 2m or 8h ({e})")))?;
            if d.is_zero() {
                return Err(err("must be longer than zero".into()));
            }
            if d > MAX_DELAY {
                return Err(err("longer than 30 days".into()));
            }
            if let Some(prev) = delays.last() {
                if d < *prev {
                    return Err(err(format!(
                        "shorter than the delay before it ({})",
                        humantime::format_duration(*prev)
                    )));
                }
            }
            delays.push(d);
        }
        Ok(RetrySchedule { delays })
    }

    /// The schedule the older settings describe: `base × 2^n`, capped at
    /// `max`, for `attempts - 1` retries.
    pub fn exponential(base: Duration, max: Duration, attempts: u32) -> Self {
        let retries = (attempts.max(1) - 1) as usize;
        let delays = (0..retries.min(MAX_RETRIES))
            .map(|n| base.saturating_mul(1u32 << n.min(31)).min(max))
            .collect();
        RetrySchedule { delays }
    }

    /// Attempts in all, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.delays.len() as u32 + 1
    }

    pub fn delays(&self) -> &[Duration] {
        &self.delays
    }

    /// Time from the first attempt to the last, without jitter.
    pub fn span(&self) -> Duration {
        self.delays.iter().sum()
    }
}

impl std::fmt::Display for RetrySchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.delays.is_empty() {
            return f.write_str("none");
        }
        for (i, d) in self.delays.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}", humantime::format_duration(*d))?;
        }
        Ok(())
    }
}

/// Why an attempt failed, as far as the delay cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryCause {
    /// A 5xx, a refused connection, a reset.
    Error,
    /// The receiver did not answer in time: it is probably overloaded, and
    /// an early retry adds to its load.
    Timeout,
    /// 429 Too Many Requests: the receiver asked us to slow down.
    Throttled,
}

/// The schedule plus the rules around it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub schedule: RetrySchedule,
    /// The least delay after a timeout or a 429, whatever the schedule says.
    pub throttle_floor: Duration,
    /// `Retry-After` is honoured up to this; a receiver asking for a week
    /// is capped here rather than parking the row for a week.
    pub retry_after_cap: Duration,
}

/// Default of [`RetryPolicy::throttle_floor`].
pub const DEFAULT_THROTTLE_FLOOR: Duration = Duration::from_secs(10);
/// Default of [`RetryPolicy::retry_after_cap`].
pub const DEFAULT_RETRY_AFTER_CAP: Duration = Duration::from_secs(86_400);

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            schedule: RetrySchedule::default(),
            throttle_floor: DEFAULT_THROTTLE_FLOOR,
            retry_after_cap: DEFAULT_RETRY_AFTER_CAP,
        }
    }
}

impl RetryPolicy {
    pub fn max_attempts(&self) -> u32 {
        self.schedule.max_attempts()
    }

    /// The wait before the next attempt after `attempts` attempts (this
    /// one included) failed transiently, or `None` when the schedule is
    /// used up and the row should fail.
    ///
    /// The delay is drawn from `[max(d/2, previous d), d]` for the
    /// schedule's entry `d`: jittered, so a fleet that failed together does
    /// not retry together, yet never shorter than any delay drawn before
    /// it. Then the floor for timeouts and 429, then `Retry-After` (capped).
    pub fn delay_after(
        &self,
        attempts: u32,
        cause: RetryCause,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        let delays = self.schedule.delays();
        let k = attempts.max(1) as usize - 1;
        let d = *delays.get(k)?;
        let previous = k.checked_sub(1).map(|p| delays[p]).unwrap_or_default();
        let low = (d / 2).max(previous).min(d).as_micros() as u64;
        let high = d.as_micros() as u64;
        let mut delay = Duration::from_micros(rand::rng().random_range(low..=high));
        if matches!(cause, RetryCause::Timeout | RetryCause::Throttled) {
            delay = delay.max(self.throttle_floor);
        }
        if let Some(asked) = retry_after {
            delay = delay.max(asked.min(self.retry_after_cap));
        }
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn default_rides_out_a_day() {
        let d = RetrySchedule::default();
        assert_eq!(d.max_attempts(), 8);
        assert!(d.span() > s(86_400), "{:?}", d.span());
        assert_eq!(d.to_string(), "30s,2m,10m,30m,2h,8h,16h");
    }

    #[test]
    fn parse_names_the_bad_element() {
        let e = RetrySchedule::parse("30s,2x,1h").unwrap_err();
        assert!(
            matches!(&e, ScheduleError::Element { index: 2, text, .. } if text == "2x"),
            "{e}"
        );
        let e = RetrySchedule::parse("1m,30s").unwrap_err();
        assert!(e.to_string().contains("element 2 (\"30s\")"), "{e}");
        assert!(e.to_string().contains("shorter"), "{e}");
        assert!(RetrySchedule::parse("1s,,2s").is_err());
        assert!(RetrySchedule::parse("0s").is_err());
        assert!(RetrySchedule::parse("31days").is_err());
        assert!(RetrySchedule::parse(&vec!["1s"; 1_001].join(",")).is_err());
        assert_eq!(RetrySchedule::parse("none").unwrap().max_attempts(), 1);
        assert_eq!(
            RetrySchedule::parse(" 100ms , 1s,1h 30m").unwrap().delays(),
            &[Duration::from_millis(100), s(1), s(5400)]
        );
    }

    #[test]
    fn delays_grow_and_give_up_at_the_end() {
        let p = RetryPolicy {
            schedule: RetrySchedule::parse("1s,2s,3s").unwrap(),
            throttle_floor: Duration::ZERO,
            retry_after_cap: s(60),
        };
        for _ in 0..200 {
            let d1 = p.delay_after(1, RetryCause::Error, None).unwrap();
            let d2 = p.delay_after(2, RetryCause::Error, None).unwrap();
            let d3 = p.delay_after(3, RetryCause::Error, None).unwrap();
            assert!(d1 >= Duration::from_millis(500) && d1 <= s(1));
            assert!(d2 >= s(1) && d2 <= s(2));
            assert!(d3 >= s(2) && d3 <= s(3));
        }
        assert_eq!(p.delay_after(4, RetryCause::Error, None), None);
        assert_eq!(p.max_attempts(), 4);
    }

    #[test]
    fn floor_and_retry_after_are_bounded() {
        let p = RetryPolicy {
            schedule: RetrySchedule::parse("1s,2s").unwrap(),
            throttle_floor: s(10),
            retry_after_cap: s(60),
        };
        assert!(p.delay_after(1, RetryCause::Timeout, None).unwrap() >= s(10));
        assert!(p.delay_after(1, RetryCause::Throttled, None).unwrap() >= s(10));
        assert!(p.delay_after(1, RetryCause::Error, None).unwrap() <= s(1));
        assert_eq!(
            p.delay_after(1, RetryCause::Error, Some(s(3600))),
            Some(s(60))
        );
        assert!(p.delay_after(1, RetryCause::Error, Some(s(5))).unwrap() >= s(5));
        // Retry-After never buys attempts beyond the schedule.
        assert_eq!(p.delay_after(3, RetryCause::Error, Some(s(5))), None);
    }

    #[test]
    fn exponential_matches_the_old_settings() {
        let e = RetrySchedule::exponential(Duration::from_millis(600), s(3600), 3);
        assert_eq!(
            e.delays(),
            &[Duration::from_millis(600), Duration::from_millis(1200)]
        );
        assert_eq!(e.max_attempts(), 3);
    }
}
