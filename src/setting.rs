//! What every setting shares: the error that names it, and the duration
//! syntax. A leaf module, so the settings of each command (in `config`, in
//! `cleanup`, in `bench`) can use it without importing one another.

use std::time::Duration;

/// A configuration problem, naming the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {env} ({flag}): {reason}")]
pub struct ConfigError {
    pub env: &'static str,
    pub flag: &'static str,
    pub reason: String,
}

impl ConfigError {
    pub fn new(env: &'static str, flag: &'static str, reason: impl Into<String>) -> Self {
        Self {
            env,
            flag,
            reason: reason.into(),
        }
    }
}

/// The longest duration [`parse_duration`] accepts. Retention is subtracted
/// from the database clock, so a value past any row's age is already
/// "forever"; the bound keeps that arithmetic far from overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Parses `90s`, `30m`, `12h`, `7d` (or plain seconds), up to
/// [`MAX_DURATION`] (100 years).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let too_long = || format!("{s:?} is longer than the limit of 100 years (36500d)");
    let n: u64 = match num.parse() {
        Ok(n) => n,
        Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => return Err(too_long()),
        Err(_) => return Err(format!("{s:?} is not a duration like 90s, 30m, 12h or 7d")),
    };
    let unit_secs: u64 = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use s, m, h or d)")),
    };
    let secs = n.checked_mul(unit_secs).ok_or_else(too_long)?;
    if secs > MAX_DURATION.as_secs() {
        return Err(too_long());
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("7w").is_err());
        assert_eq!(parse_duration("36500d").unwrap(), MAX_DURATION);
        for huge in ["36501d", "213503982334602d", "99999999999999999999999s"] {
            let e = parse_duration(huge).unwrap_err();
            assert!(e.contains("100 years"), "{huge}: {e}");
        }
    }
}
