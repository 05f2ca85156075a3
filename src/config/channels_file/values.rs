//! The value syntaxes of the channel file: durations, rates, breakers and
//! counts. Each parser returns the reason only; the caller puts the file,
//! the channel and the key in front of it.

use std::time::Duration;

use super::raw::{BreakerTable, RateTable, TextOr};
use crate::policy::{BreakerPolicy, RateLimit};

/// The longest send timeout, as for `HERALD_SEND_TIMEOUT_MS`.
pub const MAX_SEND_TIMEOUT: Duration = Duration::from_secs(600);
/// The longest breaker cool-down: a channel left closed for longer than a
/// day is better switched off.
pub const MAX_COOL_DOWN: Duration = Duration::from_secs(86_400);
/// Most sends at once per channel, as for `HERALD_CONCURRENCY`.
pub const MAX_IN_FLIGHT: i64 = 10_000;
/// Largest breaker threshold and burst; beyond these they are typos.
pub const MAX_FAILURES: i64 = 1_000_000;
pub const MAX_BURST: i64 = 1_000_000;

/// `"5s"`, `"500ms"`, `"2m"`: positive and at most `max`.
pub fn duration(text: &str, max: Duration) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|_| format!("{text:?} is not a duration like 5s, 500ms or 2m"))?;
    if d.is_zero() {
        return Err(format!("{text:?} must be longer than zero"));
    }
    if d > max {
        return Err(format!(
            "{text:?} is longer than the limit of {}",
            humantime::format_duration(max)
        ));
    }
    Ok(d)
}

/// A whole number in `1..=max`.
pub fn count(n: i64, max: i64) -> Result<u32, String> {
    if !(1..=max).contains(&n) {
        return Err(format!("{n} is out of range 1..={max}"));
    }
    Ok(n as u32)
}

/// `"<n>/s"`, `"<n>/min"`, `"<n>/h"`, or `{ rate = "...", burst = n }`.
/// Without a burst, one second's worth (at least 1): enough to absorb the
/// unevenness of polling without letting a backlog out in one lump.
pub fn rate_limit(raw: &TextOr<RateTable>) -> Result<RateLimit, String> {
    let (text, burst) = match raw {
        TextOr::Text(t) => (t.as_str(), None),
        TextOr::Table(t) => (t.rate.as_str(), t.burst),
    };
    let per_second = rate(text)?;
    let burst = match burst {
        Some(b) => count(b, MAX_BURST).map_err(|e| format!("burst: {e}"))?,
        None => per_second.max(1.0).round().min(MAX_BURST as f64) as u32,
    };
    Ok(RateLimit { per_second, burst })
}

fn rate(text: &str) -> Result<f64, String> {
    let shape = || format!("{text:?} is not a rate like 100/s, 600/min or 1000/h");
    let (n, unit) = text.trim().split_once('/').ok_or_else(shape)?;
    let per: f64 = match unit.trim() {
        "s" => 1.0,
        "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("{text:?}: unknown unit (expected /s, /min, /h)")),
    };
    let n: f64 = n.trim().parse().map_err(|_| shape())?;
    if !n.is_finite() || n <= 0.0 {
        return Err(format!("{text:?}: the rate must be more than zero"));
    }
    if n / per > 1e6 {
        return Err(format!("{text:?}: more than 1,000,000/s"));
    }
    Ok(n / per)
}

/// `"off"` or `{ failures = n, cool_down = "30s" }`; `"off"` is
/// [`BreakerPolicy::OFF`].
pub fn breaker(raw: &TextOr<BreakerTable>) -> Result<BreakerPolicy, String> {
    match raw {
        TextOr::Text(t) if t.trim().eq_ignore_ascii_case("off") => Ok(BreakerPolicy::OFF),
        TextOr::Text(t) => Err(format!(
            "{t:?}: expected \"off\" or a table like {{ failures = 5, cool_down = \"30s\" }}"
        )),
        TextOr::Table(BreakerTable {
            failures,
            cool_down,
        }) => Ok(BreakerPolicy {
            failures: count(*failures, MAX_FAILURES).map_err(|e| format!("failures: {e}"))?,
            cool_down: duration(cool_down, MAX_COOL_DOWN).map_err(|e| format!("cool_down: {e}"))?,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_default_bursts() {
        let r = |t: &str| rate_limit(&TextOr::Text(t.into()));
        assert_eq!(
            r("100/s").unwrap(),
            RateLimit {
                per_second: 100.0,
                burst: 100
            }
        );
        assert_eq!(r("600/min").unwrap().per_second, 10.0);
        assert_eq!(r("1/h").unwrap().burst, 1);
        assert_eq!(r("2.5/s").unwrap().burst, 3);
        assert_eq!(
            r("100/x").unwrap_err(),
            "\"100/x\": unknown unit (expected /s, /min, /h)"
        );
        assert!(r("100").unwrap_err().contains("not a rate"));
        assert!(r("0/s").unwrap_err().contains("more than zero"));
        assert!(r("-3/s").is_err());
        assert!(r("abc/s").is_err());
        let t = rate_limit(&TextOr::Table(RateTable {
            rate: "100/s".into(),
            burst: Some(20),
        }))
        .unwrap();
        assert_eq!(t.burst, 20);
        let e = rate_limit(&TextOr::Table(RateTable {
            rate: "100/s".into(),
            burst: Some(0),
        }))
        .unwrap_err();
        assert!(e.starts_with("burst: 0 is out of range"), "{e}");
    }

    #[test]
    fn breakers_and_durations() {
        assert_eq!(
            breaker(&TextOr::Text("off".into())).unwrap(),
            BreakerPolicy::OFF
        );
        assert!(breaker(&TextOr::Text("on".into())).is_err());
        let b = breaker(&TextOr::Table(BreakerTable {
            failures: 5,
            cool_down: "30s".into(),
        }))
        .unwrap();
        assert_eq!(b.failures, 5);
        assert_eq!(b.cool_down, Duration::from_secs(30));
        assert_eq!(
            duration("500ms", MAX_SEND_TIMEOUT).unwrap(),
            Duration::from_millis(500)
        );
        assert!(duration("0s", MAX_SEND_TIMEOUT).is_err());
        assert!(duration("11m", MAX_SEND_TIMEOUT).is_err());
        assert!(duration("5x", MAX_SEND_TIMEOUT).is_err());
        assert!(count(0, 10).is_err());
        assert_eq!(count(10, 10).unwrap(), 10);
    }
}
