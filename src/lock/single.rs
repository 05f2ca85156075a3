//! Acquire, extend and release of one key.

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tracing::{debug, debug_span, warn, Instrument};

use super::coalesce::Op;
use super::error::{FailureKind, LockError};
use super::held::Held;
use super::master::Grants;
use super::metrics::inc;
use super::round::{
    fan_out_granting, fan_out_op, fan_out_tracked, finish_in_background, tally, InFlight, Round,
    Stop, Tally,
};
use super::scripts::{eval_chunked, EXTEND, RELEASE};
use super::token::Token;
use super::{ttl_ms, Inner, Redlock};

/// A lock held on a majority of masters. Dropping it does not release it (it
/// expires after its TTL); call [`Redlock::release`].
/// Token, TTL and validity come from [`Held`], which it derefs to.
pub struct Lock {
    pub(crate) key: String,
    pub(crate) full_key: String,
    pub(crate) held: Held,
}

impl Lock {
    /// The key as passed in, without the prefix.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl std::ops::Deref for Lock {
    type Target = Held;
    fn deref(&self) -> &Held {
        &self.held
    }
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock")
            .field("key", &self.key)
            .field("token", &self.token)
            .field("ttl", &self.ttl)
            .field("remaining_validity", &self.remaining_validity())
            .finish()
    }
}

/// Deletes our token from every master unless disarmed. Armed before the
/// first request is sent, so an acquire that fails *or is dropped half-way*
/// leaves nothing behind (the release is spawned; drop never blocks).
pub(crate) struct ReleaseOnDrop {
    inner: Arc<Inner>,
    keys: Vec<String>,
    token: Token,
    armed: bool,
    after: Option<Arc<InFlight>>,
}

impl ReleaseOnDrop {
    pub(crate) fn new(
        inner: Arc<Inner>,
        keys: Vec<String>,
        token: Token,
        after: Option<Arc<InFlight>>,
    ) -> Self {
        Self {
            inner,
            keys,
            token,
            armed: true,
            after,
        }
    }

    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }

    /// Release only these keys when dropped (the rest were granted).
    pub(crate) fn retain(&mut self, keys: Vec<String>) {
        self.keys = keys;
    }
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        if self.armed && !self.keys.is_empty() {
            let keys = std::mem::take(&mut self.keys);
            let budget = self.inner.master_timeout;
            finish_in_background(release_round(
                &self.inner,
                keys,
                self.token,
                budget,
                self.after.as_ref(),
            ));
        }
    }
}

/// Owner-only delete of `keys` (full keys) on every master. Yes = this master
/// deleted at least one key.
pub(crate) fn release_round(
    inner: &Arc<Inner>,
    keys: Vec<String>,
    token: Token,
    budget: Duration,
    after: Option<&Arc<InFlight>>,
) -> Round<bool> {
    if let [key] = keys.as_slice() {
        let op = Op::Release {
            key: Arc::from(key.as_str()),
            token,
        };
        return fan_out_op(inner, budget, None, after, op);
    }
    let keys = Arc::new(keys);
    fan_out_tracked(inner, budget, None, after, move |mut c| {
        let keys = keys.clone();
        async move {
            let n: Vec<i64> =
                eval_chunked(&mut c, &RELEASE, &keys, &[&token.as_bytes()[..]]).await?;
            Ok(n.iter().sum::<i64>() > 0)
        }
    })
}

/// Owner-only PEXPIRE of `keys` on every master; one flag per key. A
/// PEXPIRE answered late re-armed a key for a full TTL; it is deleted again
/// if `holder` is gone by then.
pub(crate) fn extend_round(
    inner: &Arc<Inner>,
    keys: Arc<Vec<String>>,
    token: Token,
    ttl: Duration,
    budget: Duration,
    holder: Weak<()>,
) -> Round<Vec<bool>> {
    let ttl = ttl_ms(ttl).to_string();
    let grants = Grants {
        keys: keys.iter().map(|k| Arc::from(k.as_str())).collect(),
        token,
        holder: Some(holder),
    };
    fan_out_granting(inner, budget, None, grants, move |mut c| {
        let keys = keys.clone();
        let ttl = ttl.clone();
        async move {
            let chunks: Vec<Vec<i64>> = eval_chunked(
                &mut c,
                &EXTEND,
                &keys,
                &[&token.as_bytes()[..], ttl.as_bytes()],
            )
            .await?;
            Ok(chunks.into_iter().flatten().map(|v| v == 1).collect())
        }
    })
}

impl Inner {
    pub(crate) fn classify(&self, t: Tally) -> LockError {
        if t.no > self.masters.len() - self.quorum {
            inc(&self.metrics.contended);
            LockError::Contended
        } else {
            inc(&self.metrics.no_quorum);
            LockError::NoQuorum {
                granted: t.yes,
                needed: self.quorum,
                causes: t.causes,
            }
        }
    }

    /// Release of full keys, returning once a majority answered.
    pub(crate) async fn release_keys_now(
        self: &Arc<Self>,
        keys: Vec<String>,
        token: Token,
        budget: Duration,
        after: Option<&Arc<InFlight>>,
    ) -> Result<(), LockError> {
        if keys.is_empty() {
            return Ok(());
        }
        let round = release_round(self, keys, token, budget, after);
        let t = tally(self, round, Stop::Answered, |b| *b).await;
        if t.yes + t.no >= self.quorum {
            if t.yes > 0 {
                inc(&self.metrics.released);
                Ok(())
            } else {
                Err(LockError::Lost)
            }
        } else {
            Err(LockError::NoQuorum {
                granted: t.yes + t.no,
                needed: self.quorum,
                causes: t
                    .causes
                    .into_iter()
                    .filter(|c| c.kind != FailureKind::Contended)
                    .collect(),
            })
        }
    }
}

impl Redlock {
    /// One attempt to take `key` for `ttl`. Fails with
    /// [`LockError::Contended`] if another owner holds it; never waits longer
    /// than the per-master budget. Cancel-safe: dropping the future releases
    /// whatever it took.
    pub async fn acquire(&self, key: &str, ttl: Duration) -> Result<Lock, LockError> {
        let drift = self.inner.check_ttl(ttl)?;
        let token = Token::random().map_err(|e| LockError::Random(e.to_string()))?;
        let inner = &self.inner;
        let full_key = inner.full_key(key);
        let span = debug_span!("lock.acquire", key, ttl_ms = ttl_ms(ttl));
        async move {
            let inflight = InFlight::new(inner.masters.len());
            let mut guard = ReleaseOnDrop::new(
                inner.clone(),
                vec![full_key.clone()],
                token,
                Some(inflight.clone()),
            );
            let start = Instant::now();
            // Dropped on failure: late grants are then undone on arrival.
            let holder = Arc::new(());
            let op = Op::Set {
                key: Arc::from(full_key.as_str()),
                token,
                ttl_ms: ttl_ms(ttl),
                holder: Some(Arc::downgrade(&holder)),
            };
            let round = fan_out_op(inner, inner.budget(ttl), Some(&inflight), None, op);
            let t = tally(inner, round, Stop::Decided, |b| *b).await;
            if t.yes >= inner.quorum {
                let valid_until = start + (ttl - drift);
                let remaining = valid_until.saturating_duration_since(Instant::now());
                if remaining.is_zero() || remaining < inner.min_validity {
                    let elapsed = start.elapsed();
                    warn!(?elapsed, "lock granted too late to be useful; releasing");
                    return Err(LockError::ValidityExhausted { elapsed });
                }
                guard.disarm();
                inc(&inner.metrics.acquired);
                debug!(validity_ms = remaining.as_millis() as u64, "acquired");
                return Ok(Lock {
                    key: key.to_owned(),
                    full_key,
                    held: Held::new(token, ttl, valid_until, Some(inflight), holder),
                });
            }
            if t.no == inner.masters.len() {
                guard.disarm(); // every master refused: nothing of ours to delete
            }
            let err = inner.classify(t);
            debug!(error = %err, "not acquired");
            Err(err)
        }
        .instrument(span)
        .await
    }

    /// Re-arms the lock for `ttl` on a majority, owner-only. Returns
    /// [`LockError::Lost`] when a majority no longer holds our token. If
    /// masters merely do not answer, it retries while the lock is still valid;
    /// it never deletes anything, so a lock that is still valid survives a
    /// failed extend.
    pub async fn extend(&self, lock: &mut Lock, ttl: Duration) -> Result<(), LockError> {
        let drift = self.inner.check_ttl(ttl)?;
        let inner = &self.inner;
        let span = debug_span!("lock.extend", key = lock.key.as_str(), ttl_ms = ttl_ms(ttl));
        async move {
            let keys = Arc::new(vec![lock.full_key.clone()]);
            let mut backoff = Duration::from_millis(5);
            loop {
                let remaining = lock.remaining_validity();
                if remaining.is_zero() {
                    inc(&inner.metrics.extend_failures);
                    warn!("lock expired before it could be extended");
                    return Err(LockError::Lost);
                }
                let start = Instant::now();
                let round = extend_round(
                    inner,
                    keys.clone(),
                    lock.token,
                    ttl,
                    inner.budget(ttl).min(remaining),
                    Arc::downgrade(&lock.held.holder),
                );
                let t = tally(inner, round, Stop::Decided, |v: &Vec<bool>| {
                    v.first() == Some(&true)
                })
                .await;
                if t.yes >= inner.quorum {
                    lock.held.valid_until = start + (ttl - drift);
                    lock.held.ttl = ttl;
                    inc(&inner.metrics.extended);
                    return Ok(());
                }
                if t.no > inner.masters.len() - inner.quorum {
                    inc(&inner.metrics.extend_failures);
                    warn!("lock lost: a majority no longer holds our token");
                    return Err(LockError::Lost);
                }
                debug!(
                    granted = t.yes,
                    "extend short of a majority; retrying within validity"
                );
                let pause = jitter(backoff).min(lock.remaining_validity());
                tokio::time::sleep(pause).await;
                backoff = (backoff * 2).min(Duration::from_millis(100));
            }
        }
        .instrument(span)
        .await
    }

    /// Owner-only release on every master; returns once a majority answered
    /// (the rest finish in the background). [`LockError::Lost`] if none of
    /// them held our token any more.
    pub async fn release(&self, lock: Lock) -> Result<(), LockError> {
        let span = debug_span!("lock.release", key = lock.key.as_str());
        let budget = self.inner.budget(lock.ttl);
        // From here on, a late extend grant is nobody's and gets undone.
        drop(lock.held.holder);
        self.inner
            .release_keys_now(
                vec![lock.full_key],
                lock.held.token,
                budget,
                lock.held.inflight.as_ref(),
            )
            .instrument(span)
            .await
    }
}

pub(crate) fn jitter(d: Duration) -> Duration {
    use rand::Rng;
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::rng().random_range(ns / 2..=ns.max(1)))
}
