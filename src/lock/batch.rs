//! Many keys under one token, one pipelined round trip per master.
//!
//! The worker locks a whole poll batch at once: per master one pipeline of
//! `SET NX PX` (and one of owner-only releases), so locking 500 rows costs
//! three round trips, not 1,500. A key is granted iff a majority granted it;
//! a key granted only on a minority is deleted again on every master.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tracing::{debug, debug_span, warn, Instrument};

use super::error::{LockError, MasterFailure};
use super::metrics::inc;
use super::round::{fan_out_tracked, finish_in_background, InFlight, Round};
use super::single::{extend_round, jitter, ReleaseOnDrop};
use super::token::Token;
use super::{check_ttl, ttl_ms, Inner, Redlock};

/// The keys of one [`Redlock::acquire_many`] call that a majority granted.
pub struct BatchLock {
    token: Token,
    ttl: Duration,
    granted: Vec<String>,
    granted_set: HashSet<String>,
    valid_until: Instant,
    inflight: Option<Arc<InFlight>>,
}

impl BatchLock {
    pub fn token(&self) -> &Token {
        &self.token
    }

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

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Validity shared by every granted key (monotonic clock, drift deducted).
    pub fn remaining_validity(&self) -> Duration {
        self.valid_until.saturating_duration_since(Instant::now())
    }

    pub fn valid_until(&self) -> Instant {
        self.valid_until
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
    no: Vec<u32>,
    answered: usize,
    causes: Vec<MasterFailure>,
}

/// Awaits a batched round until every key's outcome is certain (or a
/// majority of masters can no longer answer).
async fn tally_keys(inner: &Inner, mut round: Round<Vec<bool>>, nkeys: usize) -> KeyTally {
    let q = inner.quorum as u32;
    let mut t = KeyTally {
        yes: vec![0; nkeys],
        no: vec![0; nkeys],
        answered: 0,
        causes: Vec::new(),
    };
    let mut pending = inner.masters.len() as u32;
    while let Some((i, r)) = round.next().await {
        pending -= 1;
        match r {
            Ok(flags) => {
                t.answered += 1;
                for j in 0..nkeys {
                    if flags.get(j).copied().unwrap_or(false) {
                        t.yes[j] += 1;
                    } else {
                        t.no[j] += 1;
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
        let drift = check_ttl(ttl)?;
        let token = Token::random().map_err(|e| LockError::Random(e.to_string()))?;
        let inner = &self.inner;
        let mut seen = HashSet::with_capacity(keys.len());
        let keys: Vec<&String> = keys.iter().filter(|k| seen.insert(k.as_str())).collect();
        let span = debug_span!("lock.acquire_many", keys = keys.len(), ttl_ms = ttl_ms(ttl));
        async move {
            let start = Instant::now();
            if keys.is_empty() {
                return Ok(BatchLock {
                    token,
                    ttl,
                    granted: Vec::new(),
                    granted_set: HashSet::new(),
                    valid_until: start + (ttl - drift),
                    inflight: None,
                });
            }
            let full: Vec<String> = keys.iter().map(|k| inner.full_key(k)).collect();
            let inflight = InFlight::new(inner.masters.len());
            let mut guard =
                ReleaseOnDrop::new(inner.clone(), full.clone(), token, Some(inflight.clone()));
            let full = Arc::new(full);
            let px = ttl_ms(ttl);
            let round = {
                let full = full.clone();
                fan_out_tracked(
                    inner,
                    inner.budget(ttl),
                    Some(&inflight),
                    None,
                    move |mut c| {
                        let full = full.clone();
                        async move {
                            let mut pipe = redis::pipe();
                            for k in full.iter() {
                                pipe.cmd("SET")
                                    .arg(k)
                                    .arg(&token.as_bytes()[..])
                                    .arg("NX")
                                    .arg("PX")
                                    .arg(px);
                            }
                            let replies: Vec<Option<String>> = pipe.query_async(&mut c).await?;
                            Ok(replies
                                .into_iter()
                                .map(|r| r.is_some())
                                .collect::<Vec<bool>>())
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
                warn!(error = %err, "batch not acquired");
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
                token,
                ttl,
                granted_set: granted.iter().cloned().collect(),
                granted,
                valid_until,
                inflight: Some(inflight),
            })
        }
        .instrument(span)
        .await
    }

    /// Re-arms every granted key for `ttl`. Keys a majority no longer holds
    /// are removed from `batch` and reported as [`LockError::Lost`] (the
    /// others stay extended); unanswered masters are retried within validity.
    pub async fn extend_many(&self, batch: &mut BatchLock, ttl: Duration) -> Result<(), LockError> {
        let drift = check_ttl(ttl)?;
        let inner = &self.inner;
        let span = debug_span!(
            "lock.extend_many",
            keys = batch.granted.len(),
            ttl_ms = ttl_ms(ttl)
        );
        async move {
            let q = inner.quorum as u32;
            let mut todo: Vec<usize> = (0..batch.granted.len()).collect();
            let mut lost: Vec<usize> = Vec::new();
            let mut first_start = None;
            let mut backoff = Duration::from_millis(5);
            while !todo.is_empty() {
                let remaining = batch.remaining_validity();
                if remaining.is_zero() {
                    lost.append(&mut todo);
                    break;
                }
                let start = Instant::now();
                first_start.get_or_insert(start);
                let keys: Vec<String> = todo
                    .iter()
                    .map(|&j| inner.full_key(&batch.granted[j]))
                    .collect();
                let round = extend_round(
                    inner,
                    Arc::new(keys),
                    batch.token,
                    ttl,
                    inner.budget(ttl).min(remaining),
                );
                let t = tally_keys(inner, round, todo.len()).await;
                let mut again = Vec::new();
                for (pos, &j) in todo.iter().enumerate() {
                    if t.yes[pos] >= q {
                        continue;
                    }
                    if t.no[pos] as usize > inner.masters.len() - inner.quorum {
                        lost.push(j);
                    } else {
                        again.push(j);
                    }
                }
                todo = again;
                if !todo.is_empty() {
                    tokio::time::sleep(jitter(backoff).min(batch.remaining_validity())).await;
                    backoff = (backoff * 2).min(Duration::from_millis(100));
                }
            }
            if let Some(start) = first_start {
                if lost.len() < batch.granted.len() {
                    batch.valid_until = start + (ttl - drift);
                    batch.ttl = ttl;
                }
            }
            if lost.is_empty() {
                inc(&inner.metrics.extended);
                return Ok(());
            }
            inc(&inner.metrics.extend_failures);
            warn!(lost = lost.len(), "batch extend lost keys");
            let lost: HashSet<usize> = lost.into_iter().collect();
            let mut j = 0;
            batch.granted.retain(|_| {
                let keep = !lost.contains(&j);
                j += 1;
                keep
            });
            batch.granted_set = batch.granted.iter().cloned().collect();
            Err(LockError::Lost)
        }
        .instrument(span)
        .await
    }

    /// Releases every granted key: one pipeline per master.
    pub async fn release_many(&self, batch: BatchLock) -> Result<(), LockError> {
        let span = debug_span!("lock.release_many", keys = batch.granted.len());
        let budget = self.inner.budget(batch.ttl);
        let keys = batch
            .granted
            .iter()
            .map(|k| self.inner.full_key(k))
            .collect();
        self.inner
            .release_keys_now(keys, batch.token, budget, batch.inflight.as_ref())
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
