//! The delivery gate: fleet-wide rate limits and circuit breakers per
//! channel, kept in Redis so N workers together stay under a channel's
//! rate and stop sending into a dead receiver together.
//!
//! # Where the state lives
//!
//! On the first master of `HERALD_REDIS_URLS` that answers
//! ([`Redlock::on_first_master`]), not on a quorum: a rate and a failure
//! count are counters, and keeping them on a majority would mean N writes
//! per call and a merge rule for masters that disagree. Every instance
//! lists the masters in the same order, so while the first one is up they
//! all share it. When it fails, callers move to the next one together; that
//! master starts with no state, so each limited channel may get one extra
//! burst (its `burst`) and breakers start closed (they reopen after
//! `failures` more failures). During a partition in which instances reach
//! different first masters, each group has its own limiter (a rate of up to
//! k times the limit for k groups). When no master answers, [`Gate`] calls
//! fail and the worker defers the rows of limited channels (it never sends
//! them unlimited) and keeps its last known breaker states.
//!
//! All times are the Redis master's (`TIME` inside the scripts), so
//! instances whose clocks disagree still agree on a channel's schedule;
//! callers get durations relative to that clock, never timestamps.
//!
//! # Tour
//!
//! * [`rate`] — [`Gate::admit`]: for every gated channel of a poll batch at
//!   once, how many rows may go now (GCRA), when the others may go, and the
//!   breaker's verdict (closed, open for how long, or one probe row), in
//!   one Lua call.
//! * [`breaker`] — [`Gate::report`]: consecutive failures, opening,
//!   probe results and the fleet's breaker board, in one Lua call.
//!
//! This module imports only [`crate::lock`] and [`crate::policy`]; the
//! worker's adapter is `crate::worker::admission`.

pub mod breaker;
pub mod rate;

use crate::lock::{LockError, Redlock};

pub use breaker::{BreakerBoard, BreakerState, ChannelBreaker, Report, Transition};
pub use rate::{Admission, Ask};

/// A gate call that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// No Redis master answered.
    #[error("delivery gate: {0}")]
    Redis(#[from] LockError),
    /// A master answered something the scripts never return (another
    /// program writing our keys).
    #[error("delivery gate: unexpected answer from Redis: {0}")]
    Reply(String),
}

/// Handle on the gate's state in Redis; cheap to clone.
#[derive(Debug, Clone)]
pub struct Gate {
    redlock: Redlock,
}

impl Gate {
    /// Uses `redlock`'s masters, pools, breakers and key prefix.
    pub fn new(redlock: Redlock) -> Gate {
        Gate { redlock }
    }

    fn key(&self, kind: &str, channel: &str) -> String {
        format!("{}gate:{kind}:{channel}", self.redlock.key_prefix())
    }

    /// The one hash that holds every channel's breaker (`f:<channel>`:
    /// consecutive failures, `o:<channel>`: open until, in µs of the
    /// master's clock), so one read returns the whole board.
    fn board_key(&self) -> String {
        format!("{}gate:breakers", self.redlock.key_prefix())
    }
}

/// Microseconds, for script arguments and answers.
pub(crate) fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}
