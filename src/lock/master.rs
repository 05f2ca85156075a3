//! One Redis master: its connection pool, per-request timeout and breaker.
//!
//! The pool hands out *multiplexed* connections, and every request clones the
//! connection and returns the pooled handle at once. That way any number of
//! callers share a few connections and nobody waits for a pool slot held by a
//! request stuck on a hung master; each request is bounded by its own timeout
//! (checkout included) and a hung master costs each caller at most that.
//!
//! `bb8-redis`'s manager never reports a connection as broken, so a master
//! that restarted would keep being served dead connections. Our manager marks
//! a connection broken when a request on it fails at the connection level;
//! the next checkout drops it and the pool dials a fresh one.
//!
//! A request that times out is not withdrawn: a stalled master (SIGSTOP, a
//! long fork, a saturated host) executes it whenever it resumes. Requests
//! that create or re-arm keys are therefore still awaited after their caller
//! gave up, for up to [`LATE_WATCH`], and whatever they granted late is
//! deleted again as soon as the answer arrives ([`release_late`]). Without
//! that, each such grant would hold a key nobody owns for a fresh full TTL.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Once, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError};
use tracing::{debug, warn};

use super::breaker::{Breaker, Ticket, Transition};
use super::coalesce::{Coalescer, Op};
use super::config::LockConfig;
use super::error::FailureKind;
use super::metrics::{inc, MasterMetrics};
use super::restart::{Identity, LongestTtl};
use super::scripts::release_each;
use super::token::Token;
use crate::secret::SecretUrl;

pub(crate) struct Manager {
    client: redis::Client,
    config: AsyncConnectionConfig,
    identity: Arc<Identity>,
    dial_error: DialError,
}

/// Why the pool last failed to dial this master, cleared by the next
/// successful dial. bb8 dials in the background and hands a waiting caller
/// only a timeout, so without this an unreachable master would be reported
/// as "timed out" (or as a dropped request) instead of, say, "Connection
/// refused" or a certificate error.
#[derive(Debug, Clone, Default)]
pub(crate) struct DialError(Arc<Mutex<Option<String>>>);

impl DialError {
    fn set(&self, cause: Option<String>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = cause;
    }

    pub(crate) fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl bb8::ErrorSink<RedisError> for DialError {
    fn sink(&self, error: RedisError) {
        self.set(Some(error.to_string()));
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<RedisError>> {
        Box::new(self.clone())
    }
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Manager(..)")
    }
}

/// A pooled multiplexed connection plus a flag shared by all its clones.
#[derive(Clone)]
pub(crate) struct Conn {
    pub(crate) inner: MultiplexedConnection,
    pub(crate) broken: Arc<AtomicBool>,
}

impl bb8::ManageConnection for Manager {
    type Connection = Conn;
    type Error = RedisError;

    async fn connect(&self) -> Result<Conn, RedisError> {
        let mut inner = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        self.dial_error.set(None);
        // Before any request uses it: a restarted master must not vote.
        self.identity.check(&mut inner).await;
        Ok(Conn {
            inner,
            broken: Arc::new(AtomicBool::new(false)),
        })
    }

    async fn is_valid(&self, conn: &mut Conn) -> Result<(), RedisError> {
        redis::cmd("PING").query_async::<()>(&mut conn.inner).await
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.broken.load(Relaxed)
    }
}

pub(crate) struct Master {
    /// Redacted URL, safe for logs and errors.
    pub(crate) name: String,
    pool: bb8::Pool<Manager>,
    coalescer: Coalescer,
    pub(crate) breaker: Breaker,
    pub(crate) metrics: Arc<MasterMetrics>,
    pub(crate) identity: Arc<Identity>,
    dial_error: DialError,
}

/// How long the answer to a request its caller gave up on is still awaited.
/// A master stalled longer than this executes our late `SET`s unwatched, and
/// those keys then live one TTL after it resumes.
pub(crate) const LATE_WATCH: Duration = Duration::from_secs(600);

/// Budget of one late release; it goes to a master that has just answered.
const LATE_RELEASE_BUDGET: Duration = Duration::from_secs(2);

/// Keys a request may create or re-arm on one master, to delete again if it
/// is answered only after its caller gave up.
#[derive(Clone)]
pub(crate) struct Grants {
    pub(crate) keys: Arc<[Arc<str>]>,
    pub(crate) token: Token,
    /// Alive while the lock these keys belong to is held: a late grant is
    /// deleted only once the holder is gone (the acquire failed, or the lock
    /// was released or dropped). Deleting a held lock's key behind its back
    /// would be unsafe for an extend (same token, the key *is* the lock) and
    /// would needlessly thin out an acquired lock. `None`: nobody holds it.
    pub(crate) holder: Option<Weak<()>>,
}

/// Whether the lock a grant belongs to is still held (see [`Grants::holder`]).
pub(crate) fn is_held(holder: Option<&Weak<()>>) -> bool {
    holder.is_some_and(|h| h.strong_count() > 0)
}

/// Deletes late grants (owner-only, each with its own token) on the master
/// behind `pool`, in the background and bypassing the breaker: that master
/// has just answered.
pub(crate) fn release_late(pool: &bb8::Pool<Manager>, grants: Vec<(Arc<str>, Token)>) {
    if grants.is_empty() {
        return;
    }
    let pool = pool.clone();
    tokio::spawn(async move {
        let work = async {
            let mut conn = checkout(&pool).await?;
            let keys: Vec<&str> = grants.iter().map(|(k, _)| &**k).collect();
            let tokens: Vec<&[u8]> = grants.iter().map(|(_, t)| &t.as_bytes()[..]).collect();
            release_each(&mut conn.inner, &keys, &tokens).await
        };
        match tokio::time::timeout(LATE_RELEASE_BUDGET, work).await {
            Ok(Ok(_)) => debug!(keys = grants.len(), "released late grants"),
            Ok(Err(e)) => warn!(error = %e, "releasing late lock grants failed"),
            Err(_) => warn!("releasing late lock grants timed out"),
        }
    });
}

/// A sent request that creates or re-arms keys. Dropped before it was
/// answered (its caller timed out or was cancelled), it hands itself to a
/// background task that awaits the answer and releases what was granted.
struct Watched<Fut: Future<Output = Result<Vec<bool>, RedisError>> + Send + 'static> {
    work: Option<Pin<Box<Fut>>>,
    grants: Option<(Grants, bb8::Pool<Manager>)>,
}

impl<Fut: Future<Output = Result<Vec<bool>, RedisError>> + Send + 'static> Drop for Watched<Fut> {
    fn drop(&mut self) {
        let (Some(work), Some((grants, pool))) = (self.work.take(), self.grants.take()) else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let Ok(Ok(flags)) = tokio::time::timeout(LATE_WATCH, work).await else {
                return;
            };
            if is_held(grants.holder.as_ref()) {
                return;
            }
            let late = grants
                .keys
                .iter()
                .zip(flags)
                .filter(|(_, granted)| *granted)
                .map(|(k, _)| (k.clone(), grants.token))
                .collect();
            release_late(&pool, late);
        });
    }
}

/// A connection from `pool`; one found broken is handed back so the pool
/// drops it and dials anew.
pub(crate) async fn checkout(pool: &bb8::Pool<Manager>) -> Result<Conn, RedisError> {
    let mut attempts = 0;
    loop {
        let pooled = pool.get().await.map_err(|e| match e {
            bb8::RunError::User(e) => e,
            bb8::RunError::TimedOut => RedisError::from((
                redis::ErrorKind::Io,
                "timed out waiting for a pooled connection",
            )),
        })?;
        attempts += 1;
        if pooled.broken.load(Relaxed) && attempts < 4 {
            // Returning it lets the pool see it is broken, drop it and dial anew.
            drop(pooled);
            continue;
        }
        return Ok(pooled.clone());
    }
}

/// A request that got no answer in its budget, or was never sent because
/// no connection came up in time.
pub(crate) struct Unanswered;

impl std::fmt::Debug for Master {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Master")
            .field("url", &self.name)
            .field("breaker_open", &self.breaker.is_open())
            .finish()
    }
}

static TLS_PROVIDER: Once = Once::new();

/// rustls needs a process-wide crypto provider before the first TLS
/// connection; another part of the program may already have installed one,
/// which is fine.
fn install_tls_provider() {
    TLS_PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl Master {
    /// Never connects: the pool dials in the background, so a master that is
    /// down at start-up does not prevent the service from starting.
    pub(crate) fn new(
        url: &SecretUrl,
        cfg: &LockConfig,
        longest: Arc<LongestTtl>,
    ) -> Result<Self, RedisError> {
        if url.scheme() == "rediss" {
            install_tls_provider();
        }
        let client = match (&cfg.tls_root_ca, url.scheme()) {
            (Some(ca), "rediss") => redis::Client::build_with_tls(
                url.expose(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            )?,
            _ => redis::Client::open(url.expose())?,
        };
        // Our own per-request timeout governs; the connect timeout only stops
        // background dialling of a black-holed master from piling up.
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(Some(Duration::from_secs(1).max(cfg.master_timeout)));
        let pool = bb8::Pool::builder()
            .max_size(cfg.pool_size)
            .min_idle(Some(cfg.pool_size))
            .test_on_check_out(false)
            .retry_connection(false)
            .connection_timeout(Duration::from_secs(2).max(cfg.master_timeout * 2));
        let name = url.redacted();
        let identity = Arc::new(Identity::new(name.clone(), longest));
        let dial_error = DialError::default();
        let pool = pool
            .error_sink(Box::new(dial_error.clone()))
            .build_unchecked(Manager {
                client,
                config,
                identity: identity.clone(),
                dial_error: dial_error.clone(),
            });
        Ok(Self {
            metrics: Arc::new(MasterMetrics {
                master: name.clone(),
                ..MasterMetrics::default()
            }),
            name,
            coalescer: Coalescer::new(pool.clone()),
            pool,
            breaker: Breaker::new(cfg.breaker_failures, cfg.breaker_cooldown),
            identity,
            dial_error,
        })
    }

    /// Runs one request against this master within `budget`, checkout
    /// included, and feeds the outcome to the breaker and the counters.
    pub(crate) async fn run<T, F, Fut>(&self, budget: Duration, f: F) -> Result<T, FailureKind>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let Some(ticket) = self.breaker.allow() else {
            inc(&self.metrics.breaker_rejections);
            return Err(FailureKind::BreakerOpen);
        };
        let work = async {
            let conn = checkout(&self.pool).await?;
            let broken = conn.broken.clone();
            f(conn.inner).await.inspect_err(|e| {
                if e.is_unrecoverable_error() || e.is_connection_dropped() || e.is_io_error() {
                    broken.store(true, Relaxed);
                }
            })
        };
        let outcome = tokio::time::timeout(budget, work).await;
        self.account(ticket, outcome.map_err(|_| Unanswered))
    }

    /// [`Master::run`] for a request answering one flag per key of `grants`
    /// (a batch of `SET`s, or re-arming PEXPIREs): if it times out after it
    /// was sent, it is still awaited in the background and every key it
    /// granted late is deleted again (see [`Grants`]).
    pub(crate) async fn run_granting<F, Fut>(
        &self,
        budget: Duration,
        grants: Grants,
        f: F,
    ) -> Result<Vec<bool>, FailureKind>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<Vec<bool>, RedisError>> + Send + 'static,
    {
        let Some(ticket) = self.breaker.allow() else {
            inc(&self.metrics.breaker_rejections);
            return Err(FailureKind::BreakerOpen);
        };
        // Checkout first, within the budget: a request never sent needs no watching.
        let deadline = tokio::time::Instant::now() + budget;
        let conn = match tokio::time::timeout_at(deadline, checkout(&self.pool)).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return self.account(ticket, Ok(Err(e))),
            Err(_) => return self.account::<Vec<bool>>(ticket, Err(Unanswered)),
        };
        let broken = conn.broken.clone();
        // Watched from here on: dropped or timed out, it is still awaited.
        let mut watched = Watched {
            work: Some(Box::pin(f(conn.inner))),
            grants: Some((grants, self.pool.clone())),
        };
        let work = watched.work.as_mut().expect("just set");
        let outcome = tokio::time::timeout_at(deadline, work).await;
        if outcome.is_ok() {
            watched.work = None;
        }
        drop(watched);
        let outcome = outcome.map_err(|_| Unanswered).map(|r| {
            r.inspect_err(|e| {
                if e.is_unrecoverable_error() || e.is_connection_dropped() || e.is_io_error() {
                    broken.store(true, Relaxed);
                }
            })
        });
        self.account(ticket, outcome)
    }

    /// One single-key request, coalesced with other callers' (see
    /// [`super::coalesce`]); same budget, breaker and counters as [`Master::run`].
    pub(crate) async fn run_op(&self, budget: Duration, op: Op) -> Result<bool, FailureKind> {
        let Some(ticket) = self.breaker.allow() else {
            inc(&self.metrics.breaker_rejections);
            return Err(FailureKind::BreakerOpen);
        };
        let deadline = tokio::time::Instant::now() + budget;
        let mut answer = self.coalescer.submit(op, deadline);
        // An unanswered request (no connection before the deadline, which
        // makes the coalescer drop it, or no answer in time) is accounted
        // as a timeout or, when the master cannot be dialled, as that cause.
        let outcome = match tokio::time::timeout_at(deadline, &mut answer).await {
            Ok(r) => r.map_err(|_| Unanswered),
            Err(_) => {
                // Closing first makes the hand-over exact: an answer sent
                // before this is ours, one sent after is a late grant the
                // coalescer releases.
                answer.close();
                answer.try_recv().map_err(|_| Unanswered)
            }
        };
        self.account(ticket, outcome)
    }

    /// Feeds one request's outcome to the breaker and the counters.
    fn account<T>(
        &self,
        ticket: Ticket<'_>,
        outcome: Result<Result<T, RedisError>, Unanswered>,
    ) -> Result<T, FailureKind> {
        let (kind, transition) = match outcome {
            Ok(Ok(v)) => {
                ticket.success();
                return Ok(v);
            }
            Ok(Err(e)) => {
                inc(&self.metrics.errors);
                (FailureKind::Error(e.to_string()), ticket.failure())
            }
            Err(Unanswered) => match self.undialled() {
                Some(cause) => {
                    inc(&self.metrics.errors);
                    (
                        FailureKind::Error(format!("cannot connect: {cause}")),
                        ticket.failure(),
                    )
                }
                None => {
                    inc(&self.metrics.timeouts);
                    (FailureKind::Timeout, ticket.failure())
                }
            },
        };
        if transition == Transition::Opened {
            inc(&self.metrics.breaker_opened);
            warn!(master = %self.name, cause = %kind, "redis master failing; circuit breaker opened");
        }
        Err(kind)
    }

    /// The last dial error, while the pool has no connection at all: then
    /// an unanswered request never left this process, and that error, not
    /// a timeout, is why.
    fn undialled(&self) -> Option<String> {
        if self.pool.state().connections > 0 {
            return None;
        }
        self.dial_error.get()
    }

    /// Dials (or reuses) a connection and PINGs it, bypassing the breaker.
    pub(crate) async fn ping(&self) -> Result<(), RedisError> {
        let mut conn = checkout(&self.pool).await?;
        redis::cmd("PING").query_async::<()>(&mut conn.inner).await
    }
}
