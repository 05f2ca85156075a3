//! Redlock over 1..N independent Redis masters.
//!
//! Herald uses these locks to partition work between instances; MySQL claims
//! remain the correctness layer (see the delivery protocol in `DESIGN.md`).
//! The module is also a library API of its own: lock a resource, run a job
//! once per time window, check lock health.
//!
//! # Tour
//!
//! * [`Redlock`] (this file) — the handle; cheap to clone.
//! * `single` — acquire, extend and release of one key.
//! * `batch` — many keys in one pipelined round trip per master with one token.
//! * `held` — [`Held`]: token, TTL and validity, shared by [`Lock`] and
//!   [`BatchLock`].
//! * `watchdog` — [`Redlock::with_lock`]: renews while the work runs and tells
//!   the work when the lock is lost.
//! * `window` — [`Redlock::once_per_window`] and the health [`Redlock::probe`].
//! * `first` — [`Redlock::on_first_master`]: one request to the first master
//!   that answers, for state the fleet keeps in one place (the delivery
//!   gate's rate limits and breakers).
//! * `round` — one request per master, decided as early as possible.
//! * `coalesce` — concurrent single-key acquires and releases share one
//!   round trip per master.
//! * `master` — pool, per-request timeout and breaker of one master;
//!   `breaker` — the circuit breaker itself.
//!   A request its caller gave up on is still awaited; what it granted late
//!   is deleted again on arrival.
//! * `restart` — notices a master that (re)started recently (its `run_id`,
//!   its uptime) and keeps its votes out of quorums for the longest TTL.
//! * `scripts` — the `SET NX PX` command and owner-only release/extend in Lua
//!   (EVALSHA, NOSCRIPT fallback).
//! * [`config`], [`error`], [`metrics`], [`token`].
//!
//! The lock imports nothing from the rest of Herald except
//! [`crate::secret::SecretUrl`]; its benchmark lives in `bench::locks`.
//!
//! # The algorithm, and where it bends
//!
//! `SET key token NX PX ttl` goes to every master concurrently; the lock is
//! ours when a majority (N/2+1) granted it, for `ttl − elapsed − drift`
//! (drift = 1 % of the TTL + 2 ms), measured on the monotonic clock. Each
//! master gets at most `min(master_timeout, ttl/10)`, pool checkout included,
//! and the caller stops waiting once the outcome is certain. On failure, and
//! when an acquire future is dropped half-way, our token is deleted from
//! every master, including those that did not answer in time. A stalled
//! master executes the requests we gave up on when it resumes; each grant
//! that arrives that late is deleted as soon as it arrives (an extend's only
//! once its lock has been released or dropped, since the key is still the
//! holder's lock).
//!
//! A master that restarts without persistence forgets the locks it held. A
//! master seen with a new `run_id` does not count towards any quorum until
//! the longest TTL in use has passed since it started: the larger of
//! [`LockConfig::longest_ttl`] and the largest TTL this `Redlock` has
//! requested. At first sight only the setting applies (a fresh server looks
//! like a restarted one), so only it covers restarts before this process
//! first reached a master, and other processes' longer TTLs (see `restart`).
//!
//! Two entries that reach one server (`localhost` and `127.0.0.1`) would
//! vote twice; [`config::same_master`] is the one rule for URLs, and
//! [`Redlock::check_distinct`] compares the servers' `run_id`s at start-up.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use herald::lock::{LockConfig, LockError, Redlock};
//! use herald::secret::SecretUrl;
//!
//! # async fn demo() -> Result<(), LockError> {
//! let url = |u: &str| SecretUrl::parse(u).expect("valid URL");
//! let locks = Redlock::new(LockConfig {
//!     masters: vec![
//!         url("redis://10.0.0.1:6379"),
//!         url("redis://10.0.0.2:6379"),
//!         url("rediss://herald:secret@10.0.0.3:6380"),
//!     ],
//!     key_prefix: "herald:".into(),
//!     ..LockConfig::default()
//! })
//! .await?;
//!
//! match locks.acquire("n:42", Duration::from_secs(30)).await {
//!     Ok(mut lock) => {
//!         // ... work, checking lock.remaining_validity() ...
//!         locks.extend(&mut lock, Duration::from_secs(30)).await?;
//!         locks.release(lock).await?;
//!     }
//!     Err(LockError::Contended) => { /* another instance has it */ }
//!     Err(e) => return Err(e),
//! }
//!
//! // Renewed automatically; `guard.lost()` fires if the lock is lost.
//! let rows = locks
//!     .with_lock("cleanup", Duration::from_secs(10), |guard| async move {
//!         tokio::select! {
//!             _ = guard.lost().cancelled() => 0,
//!             n = async { 42 } => n,
//!         }
//!     })
//!     .await?;
//! # let _ = rows;
//! if locks.once_per_window("stats", Duration::from_secs(60)).await? {
//!     // only one instance gets here per minute
//! }
//! # Ok(()) }
//! ```

mod batch;
mod breaker;
mod coalesce;
pub mod config;
pub mod error;
mod first;
mod held;
mod master;
pub mod metrics;
mod restart;
mod round;
mod scripts;
mod single;
pub mod token;
mod watchdog;
mod window;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use batch::BatchLock;
pub use config::{drift, LockConfig};
pub use error::{FailureKind, LockConfigError, LockError, MasterFailure};
pub use held::Held;
pub use metrics::{LockMetrics, LockMetricsSnapshot, MasterMetrics, MasterMetricsSnapshot};
pub use single::Lock;
pub use token::Token;
pub use watchdog::LockGuard;

use master::Master;
use restart::LongestTtl;

/// Handle to a set of Redis masters. Clones share pools, breakers and metrics.
#[derive(Clone)]
pub struct Redlock {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) masters: Vec<Arc<Master>>,
    pub(crate) quorum: usize,
    pub(crate) prefix: String,
    pub(crate) master_timeout: Duration,
    pub(crate) min_validity: Duration,
    pub(crate) metrics: LockMetrics,
    /// See [`restart`]: how long a restarted master must sit out.
    pub(crate) longest: Arc<LongestTtl>,
}

impl fmt::Debug for Redlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redlock")
            .field("masters", &self.inner.masters)
            .field("quorum", &self.inner.quorum)
            .field("key_prefix", &self.inner.prefix)
            .field("master_timeout", &self.inner.master_timeout)
            .finish()
    }
}

impl Redlock {
    /// Validates `cfg` and sets up one pool per master. Does not wait for any
    /// connection, so a master that is down at start-up is not an error.
    pub async fn new(cfg: LockConfig) -> Result<Redlock, LockError> {
        cfg.validate()?;
        let urls = &cfg.masters;
        let longest = LongestTtl::new(cfg.longest_ttl);
        let mut masters = Vec::with_capacity(urls.len());
        for (index, url) in urls.iter().enumerate() {
            let m = Master::new(url, &cfg, longest.clone()).map_err(|e| {
                LockConfigError::InvalidUrl {
                    index,
                    reason: e.to_string().replace(url.expose(), &url.redacted()),
                }
            })?;
            masters.push(Arc::new(m));
        }
        let metrics = LockMetrics {
            masters: masters.iter().map(|m| m.metrics.clone()).collect(),
            ..LockMetrics::default()
        };
        Ok(Redlock {
            inner: Arc::new(Inner {
                quorum: masters.len() / 2 + 1,
                masters,
                prefix: cfg.key_prefix.clone(),
                master_timeout: cfg.master_timeout,
                min_validity: cfg.min_validity,
                metrics,
                longest,
            }),
        })
    }

    /// Masters that must agree: N/2 + 1.
    pub fn quorum(&self) -> usize {
        self.inner.quorum
    }

    /// Number of configured masters.
    pub fn masters(&self) -> usize {
        self.inner.masters.len()
    }

    /// The configured key prefix.
    pub fn key_prefix(&self) -> &str {
        &self.inner.prefix
    }

    pub fn metrics(&self) -> &LockMetrics {
        &self.inner.metrics
    }

    /// Connects to every master and PINGs it, waiting at most `deadline`;
    /// returns how many answered. `new` never waits for connections, so the
    /// first locks after start-up would otherwise pay for dialling (and on a
    /// busy machine could time out and trip breakers). Call it at start-up
    /// when that matters; it does not touch the breakers.
    pub async fn warm_up(&self, deadline: Duration) -> usize {
        let pings = self
            .inner
            .masters
            .iter()
            .map(|m| tokio::time::timeout(deadline, m.ping()));
        futures::future::join_all(pings)
            .await
            .into_iter()
            .filter(|r| matches!(r, Ok(Ok(()))))
            .count()
    }
}

impl Redlock {
    /// Connects to every master (waiting at most `deadline`, like
    /// [`Redlock::warm_up`]) and fails with
    /// [`LockConfigError::SameServer`] if two entries reach the same server
    /// (same `run_id`): URLs alone cannot tell that `localhost` and
    /// `127.0.0.1` are one master. Masters that do not answer (or do not
    /// allow `INFO`) are not judged. Call it at start-up, before locking.
    pub async fn check_distinct(&self, deadline: Duration) -> Result<(), LockConfigError> {
        self.warm_up(deadline).await;
        let ids: Vec<Option<String>> = self
            .inner
            .masters
            .iter()
            .map(|m| m.identity.run_id())
            .collect();
        for (i, id) in ids.iter().enumerate() {
            let Some(id) = id else { continue };
            if let Some(j) = ids[..i].iter().position(|o| o.as_ref() == Some(id)) {
                return Err(LockConfigError::SameServer {
                    first: self.inner.masters[j].name.clone(),
                    second: self.inner.masters[i].name.clone(),
                });
            }
        }
        Ok(())
    }
}

impl Inner {
    pub(crate) fn full_key(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + key.len());
        k.push_str(&self.prefix);
        k.push_str(key);
        k
    }

    /// Per-master budget: never more than a tenth of the TTL, so waiting for
    /// one slow master cannot eat the validity of the lock.
    pub(crate) fn budget(&self, ttl: Duration) -> Duration {
        self.master_timeout
            .min(ttl / 10)
            .max(Duration::from_millis(1))
    }

    /// [`check_ttl`], and remembers `ttl` as in use (see [`restart`]).
    pub(crate) fn check_ttl(&self, ttl: Duration) -> Result<Duration, LockError> {
        let drift = check_ttl(ttl)?;
        self.longest.note(ttl);
        Ok(drift)
    }

    /// Whether master `index` may vote now (see [`restart`]).
    pub(crate) fn votes(&self, index: usize) -> bool {
        !self.masters[index].identity.is_quarantined()
    }

    pub(crate) fn failure(&self, index: usize, kind: FailureKind) -> MasterFailure {
        MasterFailure {
            master: self.masters[index].name.clone(),
            kind,
        }
    }
}

const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Rejects TTLs whose validity would be (nearly) eaten by the drift allowance,
/// before anything is sent.
pub(crate) fn check_ttl(ttl: Duration) -> Result<Duration, LockError> {
    // Far beyond any sensible lock, and keeps `Instant + ttl` from overflowing.
    if ttl > MAX_TTL {
        return Err(LockConfigError::Invalid {
            setting: "ttl",
            reason: "must be at most 30 days",
        }
        .into());
    }
    let drift = drift(ttl);
    if ttl < drift * 2 || ttl.as_millis() == 0 {
        return Err(LockError::TtlTooShort { ttl, drift });
    }
    Ok(drift)
}

pub(crate) fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}
