//! Typed errors, so callers can branch on *why* a lock was not obtained:
//! contention means "someone else is working on it, move on", no quorum means
//! "Redis is unhealthy, back off and alert", and neither should be parsed from
//! a message string.

use std::fmt;
use std::time::Duration;

/// Why a lock operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Other owners hold the key on enough masters that a majority is impossible.
    #[error("lock is held by another owner")]
    Contended,
    /// Not enough masters answered (or granted) to form a majority.
    #[error(
        "no quorum: {granted} granted, {needed} needed ({})",
        CauseList(causes)
    )]
    NoQuorum {
        granted: usize,
        needed: usize,
        causes: Vec<MasterFailure>,
    },
    /// No master answered a request that needs only one (see
    /// [`Redlock::on_first_master`](super::Redlock::on_first_master)).
    #[error("no Redis master answered ({})", CauseList(causes))]
    NoMaster { causes: Vec<MasterFailure> },
    /// The TTL leaves no validity once the clock-drift allowance is taken off;
    /// rejected up front instead of spinning on attempts that can never succeed.
    #[error("ttl {ttl:?} is too short for the clock drift allowance {drift:?}")]
    TtlTooShort { ttl: Duration, drift: Duration },
    /// A majority granted, but acquiring took so long that the remaining
    /// validity was below the configured minimum; the lock was released.
    #[error("lock validity used up while acquiring ({elapsed:?} elapsed)")]
    ValidityExhausted { elapsed: Duration },
    /// We no longer own the lock (it expired, or a majority no longer holds
    /// our token).
    #[error("lock lost: no longer held by this owner")]
    Lost,
    /// The caller's deadline passed before the operation finished.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    #[error(transparent)]
    Config(#[from] LockConfigError),
    /// The OS random generator failed; tokens cannot be made safely.
    #[error("random token generation failed: {0}")]
    Random(String),
}

impl LockError {
    /// Failures a later attempt may not repeat (contention, unhealthy masters).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            LockError::Contended
                | LockError::NoQuorum { .. }
                | LockError::NoMaster { .. }
                | LockError::ValidityExhausted { .. }
        )
    }
}

struct CauseList<'a>(&'a [MasterFailure]);

impl fmt::Display for CauseList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no failures reported");
        }
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

/// What went wrong on one master. `master` is the redacted URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterFailure {
    pub master: String,
    pub kind: FailureKind,
}

impl fmt::Display for MasterFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.master, self.kind)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// The master answered: the key belongs to someone else.
    Contended,
    /// No answer within the per-master timeout (pool checkout included).
    Timeout,
    /// The master's circuit breaker is open; nothing was sent.
    BreakerOpen,
    /// Connection or server error, message only (never the URL).
    Error(String),
    /// The master granted, but it restarted recently and may have lost
    /// locks others hold, so its grant did not count.
    Restarted,
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureKind::Contended => f.write_str("held by another owner"),
            FailureKind::Timeout => f.write_str("timed out"),
            FailureKind::BreakerOpen => f.write_str("circuit breaker open"),
            FailureKind::Error(e) => write!(f, "error: {e}"),
            FailureKind::Restarted => {
                f.write_str("restarted recently; not counted until the longest TTL has passed")
            }
        }
    }
}

/// Invalid [`LockConfig`](super::LockConfig). Messages name the offending
/// setting and never repeat a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LockConfigError {
    #[error("lock masters: at least one Redis master URL is required")]
    NoMasters,
    #[error("lock masters: entry {index} is not a valid Redis URL: {reason}")]
    InvalidUrl { index: usize, reason: String },
    #[error("lock masters: {url} is listed more than once")]
    Duplicate { url: String },
    /// Two entries reach one server (same `run_id`), e.g. `localhost` and
    /// `127.0.0.1`: it would vote twice, and every lock would look contended.
    #[error("lock masters: {first} and {second} are the same Redis server (same run_id); list each independent master once")]
    SameServer { first: String, second: String },
    #[error("lock {setting}: {reason}")]
    Invalid {
        setting: &'static str,
        reason: &'static str,
    },
}
