//! `with_lock`: hold a lock for as long as some work runs.
//!
//! A spawned watchdog renews the lock every ttl/3. If a renewal finds the lock
//! lost (or validity runs out while masters do not answer), it cancels the
//! token handed to the work, which should stop touching the guarded resource.
//! When the work finishes, or the `with_lock` future is dropped, the watchdog
//! releases the lock itself, so nothing ever blocks in `Drop`.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{warn, Instrument};

use super::single::Lock;
use super::token::Token;
use super::{LockError, Redlock};

/// Handed to the work inside [`Redlock::with_lock`].
#[derive(Debug, Clone)]
pub struct LockGuard {
    key: String,
    token: Token,
    lost: CancellationToken,
    valid_until: Arc<Mutex<Instant>>,
}

impl LockGuard {
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn token(&self) -> &Token {
        &self.token
    }

    /// Cancelled when the lock is lost; select on it around the work
    /// (clone it to move it into another task).
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Validity after the latest successful renewal.
    pub fn remaining_validity(&self) -> Duration {
        let until = *self.valid_until.lock().unwrap_or_else(|e| e.into_inner());
        until.saturating_duration_since(Instant::now())
    }
}

impl Redlock {
    /// Acquires `key` (one attempt), runs `f` while a watchdog renews the
    /// lock, then releases it. The work learns about a lost lock through
    /// [`LockGuard::lost`]; its result is returned either way.
    pub async fn with_lock<F, Fut, T>(&self, key: &str, ttl: Duration, f: F) -> Result<T, LockError>
    where
        F: FnOnce(LockGuard) -> Fut,
        Fut: Future<Output = T>,
    {
        let lock = self.acquire(key, ttl).await?;
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        let valid_until = Arc::new(Mutex::new(lock.valid_until));
        let guard = LockGuard {
            key: key.to_owned(),
            token: lock.token,
            lost: lost.clone(),
            valid_until: valid_until.clone(),
        };
        let span = tracing::debug_span!("lock.watchdog", key);
        let watchdog = tokio::spawn(
            watch(self.clone(), lock, ttl, lost, stop.clone(), valid_until).instrument(span),
        );
        // If this future is dropped mid-work, the watchdog still stops and releases.
        let stop_on_drop = stop.drop_guard();
        let out = f(guard).await;
        drop(stop_on_drop);
        let _ = watchdog.await;
        Ok(out)
    }
}

async fn watch(
    locks: Redlock,
    mut lock: Lock,
    ttl: Duration,
    lost: CancellationToken,
    stop: CancellationToken,
    valid_until: Arc<Mutex<Instant>>,
) {
    let period = ttl / 3;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(period) => {}
        }
        let renewed = tokio::select! {
            _ = stop.cancelled() => break,
            r = locks.extend(&mut lock, ttl) => r,
        };
        match renewed {
            Ok(()) => *valid_until.lock().unwrap_or_else(|e| e.into_inner()) = lock.valid_until,
            Err(e) => {
                warn!(error = %e, "lock lost while work was running; signalling the work");
                lost.cancel();
                stop.cancelled().await;
                // Owner-only, so harmless if truly lost; it also undoes any
                // renewal a stalled master applies late.
                break;
            }
        }
    }
    let _ = locks.release(lock).await;
}
