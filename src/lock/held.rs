//! What every held lock knows about itself, single key or batch: one type,
//! so [`Lock`](super::Lock) and [`BatchLock`](super::BatchLock) answer
//! `token()`, `ttl()`, `remaining_validity()` and `valid_until()` the same way
//! (both deref to it).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::round::InFlight;
use super::token::Token;

/// The token, TTL and validity of a held lock.
pub struct Held {
    pub(crate) token: Token,
    pub(crate) ttl: Duration,
    pub(crate) valid_until: Instant,
    /// Our `SET`s still in flight, which a release must wait for.
    pub(crate) inflight: Option<Arc<InFlight>>,
    /// Alive while the lock is held: late grants wait for it to go (see
    /// `master::Grants::holder`).
    pub(crate) holder: Arc<()>,
}

impl Held {
    pub(crate) fn new(
        token: Token,
        ttl: Duration,
        valid_until: Instant,
        inflight: Option<Arc<InFlight>>,
        holder: Arc<()>,
    ) -> Self {
        Self {
            token,
            ttl,
            valid_until,
            inflight,
            holder,
        }
    }

    pub fn token(&self) -> &Token {
        &self.token
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How long the lock is still certainly ours (monotonic clock, drift
    /// already deducted). Zero once expired.
    pub fn remaining_validity(&self) -> Duration {
        self.valid_until.saturating_duration_since(Instant::now())
    }

    pub fn valid_until(&self) -> Instant {
        self.valid_until
    }
}

impl fmt::Debug for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Held")
            .field("token", &self.token)
            .field("ttl", &self.ttl)
            .field("remaining_validity", &self.remaining_validity())
            .finish()
    }
}
