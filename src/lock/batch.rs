//! Many keys under one token, one pipelined round trip per master.
//!
//! The worker locks a whole poll batch at once: per master one pipeline of
//! `SET NX PX` (and one of owner-only releases), so locking 500 rows costs
//! three round trips, not 1,500. A key is granted iff a majority granted it;
//! a key granted only on a minority is deleted again on every master, and a
//! key a master grants after we stopped waiting for it is deleted as soon as
//! that answer arrives.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tracing::{debug, debug_span, warn, Instrument};

use super::error::{FailureKind, LockError, MasterFailure};
use super::held::Held;
use super::master::Grants;
use super::metrics::inc;
use super::round::{fan_out_granting, finish_in_background, InFlight, Round};
use super::scripts::set_nx_px;
use super::single::ReleaseOnDrop;
use super::token::Token;
use super::{ttl_ms, Inner, Redlock};

/// The keys of one [`Redlock::acquire_many`] call that a majority granted.
/// Token, TTL and validity (shared by every granted key) come from
/// [`Held`], which it derefs to.
pub struct BatchLock {
    granted: Vec<String>,
    granted_set: HashSet<String>,
    held: Held,
}

impl std::ops::Deref for BatchLock {
    type Target = Held;
    fn deref(&self) -> &Held {
        &self.held
    }
}

impl BatchLock {
    /// Granted keys as passed in (without prefix), in the order given.
    pub fn granted(&self) -> &[String] {
        &self.granted
    }

    pub fn is_granted(&self, key: &str) -> bool {
        self.granted_set.contains(key)
    }

    pub fn len(&self) -> usize {
        self.granted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.granted.is_empty()
    }
}

impl fmt::Debug for BatchLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchLock")
            .field("token", &self.token)
            .field("granted", &self.granted.len())
            .field("ttl", &self.ttl)
            .field("remaining_validity", &self.remaining_validity())
            .finish()
    }
}

/// Per-key yes/no counts of one batched round.
struct KeyTally {
    yes: Vec<u32>,
    answered: usize,
    causes: Vec<MasterFailure>,
}

/// Awaits a batched round until every key's outcome is certain (or a
/// majority of masters can no longer answer).
async fn tally_keys(inner: &Inner, mut round: Round<Vec<bool>>, nkeys: usize) -> KeyTally {
    let q = inner.quorum as u32;
    let mut t = KeyTally {
        yes: vec![0; nkeys],
        answered: 0,
        causes: Vec::new(),
    };
    let mut pending = inner.masters.len() as u32;
    while let Some((i, r)) = round.next().await {
        pending -= 1;
        match r {
            // A master in restart quarantine grants nothing; counted as not
            // answered, so whatever it set is deleted again.
            Ok(_) if !inner.votes(i) => t.causes.push(inner.failure(i, FailureKind::Restarted)),
            Ok(flags) => {
                t.answered += 1;
                for (j, yes) in t.yes.iter_mut().enumerate() {
                    if flags.get(j).copied().unwrap_or(false) {
                        *yes += 1;
                    }
                }
            }
            Err(kind) => t.causes.push(inner.failure(i, kind)),
        }
        if (t.answered as u32) + pending < q || t.yes.iter().all(|&y| y >= q || y + pending < q) {
            break;
        }
    }
    finish_in_background(round);
    t
}

impl Redlock {
    /// Takes as many of `keys` as possible for `ttl` under one token: one
    /// pipelined round trip per master. Returns the granted subset (possibly
    /// empty when all are held elsewhere); fails only when fewer than a
    /// majority of masters answered. Duplicate keys count once. Cancel-safe.
    pub async fn acquire_many(
        &self,
        keys: &[String],
        ttl: Duration,
    ) -> Result<BatchLock, LockError> {
        let drift = self.inner.check_ttl(ttl)?;
        let token = Token::random().map_err(|e| LockError::Random(e.to_string()))?;
        let inner = &self.inner;
        let mut seen = HashSet::with_capacity(keys.len());
        let keys: Vec<&String> = keys.iter().filter(|k| seen.insert(k.as_str())).collect();
        let span = debug_span!("lock.acquire_many", keys = keys.len(), ttl_ms = ttl_ms(ttl));
        async move {
            let start = Instant::now();
            if keys.is_empty() {
                return Ok(BatchLock {
                    granted: Vec::new(),
                    granted_set: HashSet::new(),
                    held: Held::new(token, ttl, start + (ttl - drift), None, Arc::new(())),
                });
            }
            let full: Vec<String> = keys.iter().map(|k| inner.full_key(k)).collect();
            let inflight = InFlight::new(inner.masters.len());
            let mut guard =
                ReleaseOnDrop::new(inner.clone(), full.clone(), token, Some(inflight.clone()));
            // Dropped on failure: late grants are then undone on arrival.
            let holder = Arc::new(());
            let grants = Grants {
                keys: full.iter().map(|k| Arc::from(k.as_str())).collect(),
                token,
                holder: Some(Arc::downgrade(&holder)),
            };
            let px = ttl_ms(ttl);
            let round = {
                let keys = grants.keys.clone();
                fan_out_granting(
                    inner,
                    inner.budget(ttl),
                    Some(&inflight),
                    grants,
                    move |mut c| {
                        let keys = keys.clone();
                        async move {
                            let mut pipe = redis::pipe();
                            for k in keys.iter() {
                                set_nx_px(&mut pipe, k, &token, px);
                            }
                            let replies: Vec<Option<String>> = pipe.query_async(&mut c).await?;
                            Ok(replies.into_iter().map(|r| r.is_some()).collect())
                        }
                    },
                )
            };
            let t = tally_keys(inner, round, keys.len()).await;
            let q = inner.quorum as u32;
            let granted_idx: Vec<usize> = (0..keys.len()).filter(|&j| t.yes[j] >= q).collect();
            if t.answered < inner.quorum && granted_idx.is_empty() {
                inc(&inner.metrics.no_quorum);
                let err = LockError::NoQuorum {
                    granted: t.answered,
                    needed: inner.quorum,
                    causes: t.causes,
                };
                // The caller gets the error and decides how loud to be
                // (the worker logs one WARN per failed poll).
                debug!(error = %err, "batch not acquired");
                return Err(err);
            }
            let valid_until = start + (ttl - drift);
            let remaining = valid_until.saturating_duration_since(Instant::now());
            if remaining.is_zero() || remaining < inner.min_validity {
                let elapsed = start.elapsed();
                warn!(?elapsed, "batch granted too late to be useful; releasing");
                return Err(LockError::ValidityExhausted { elapsed });
            }
            // Keep granted keys; delete ours wherever a non-granted key may
            // have been set (a minority said yes, or a master did not answer).
            let all_answered = t.answered == inner.masters.len();
            let leftovers: Vec<String> = (0..keys.len())
                .filter(|&j| t.yes[j] < q && (t.yes[j] > 0 || !all_answered))
                .map(|j| full[j].clone())
                .collect();
            guard.retain(leftovers);
            drop(guard);
            let granted: Vec<String> = granted_idx.iter().map(|&j| keys[j].clone()).collect();
            inner
                .metrics
                .acquired
                .fetch_add(granted.len() as u64, std::sync::atomic::Ordering::Relaxed);
            debug!(granted = granted.len(), "batch acquired");
            Ok(BatchLock {
                granted_set: granted.iter().cloned().collect(),
                granted,
                held: Held::new(token, ttl, valid_until, Some(inflight), holder),
            })
        }
        .instrument(span)
        .await
    }

    /// Releases every granted key: one pipeline per master.
    pub async fn release_many(&self, batch: BatchLock) -> Result<(), LockError> {
        let span = debug_span!("lock.release_many", keys = batch.granted.len());
        let budget = self.inner.budget(batch.held.ttl);
        // From here on, a late grant is nobody's and gets undone.
        drop(batch.held.holder);
        let keys = batch
            .granted
            .iter()
            .map(|k| self.inner.full_key(k))
            .collect();
        self.inner
            .release_keys_now(keys, batch.held.token, budget, batch.held.inflight.as_ref())
            .instrument(span)
            .await
    }

    /// Releases only `keys` of `batch` (the worker releases per sub-batch as
    /// sends finish). Keys not granted in `batch` are ignored.
    pub async fn release_keys(&self, batch: &BatchLock, keys: &[String]) -> Result<(), LockError> {
        let span = debug_span!("lock.release_keys", keys = keys.len());
        let budget = self.inner.budget(batch.ttl);
        let keys = keys
            .iter()
            .filter(|k| batch.is_granted(k))
            .map(|k| self.inner.full_key(k))
            .collect();
        self.inner
            .release_keys_now(keys, batch.token, budget, batch.inflight.as_ref())
            .instrument(span)
            .await
    }
}
