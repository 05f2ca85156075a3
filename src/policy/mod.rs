//! Delivery policy: how soon, and how many times, a notification whose
//! delivery failed is tried again.
//!
//! # Tour
//!
//! * [`schedule`] — the retry schedule (`HERALD_RETRY_SCHEDULE`): a list of
//!   delays whose length is the number of retries, with jitter, floors for
//!   timeouts and throttling, and bounded `Retry-After`.
//! * [`channel`] — what one channel may set differently from the rest
//!   (timeout, schedule, rate limit, concurrency cap, breaker).
//!
//! This module is a leaf: it knows nothing of the worker or the store, so
//! the settings layer can validate a schedule at start-up and the worker can
//! apply it without either importing the other.

pub mod channel;
pub mod schedule;

pub use channel::{BreakerPolicy, ChannelPolicies, ChannelPolicy, RateLimit};
pub use schedule::{RetryCause, RetryPolicy, RetrySchedule, ScheduleError};
