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

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Once};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError};
use tracing::warn;

use super::breaker::{Breaker, Ticket, Transition};
use super::coalesce::{Coalescer, Op};
use super::config::LockConfig;
use super::error::FailureKind;
use super::metrics::{inc, MasterMetrics};
use crate::secret::SecretUrl;

pub(crate) struct Manager {
    client: redis::Client,
    config: AsyncConnectionConfig,
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
        let inner = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
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
    pub(crate) fn new(url: &SecretUrl, cfg: &LockConfig) -> Result<Self, RedisError> {
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
            .connection_timeout(Duration::from_secs(2).max(cfg.master_timeout * 2))
            .build_unchecked(Manager { client, config });
        let name = url.redacted();
        Ok(Self {
            metrics: Arc::new(MasterMetrics {
                master: name.clone(),
                ..MasterMetrics::default()
            }),
            name,
            coalescer: Coalescer::new(pool.clone()),
            pool,
            breaker: Breaker::new(cfg.breaker_failures, cfg.breaker_cooldown),
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
        self.account(ticket, tokio::time::timeout(budget, work).await)
    }

    /// One single-key request, coalesced with other callers' (see
    /// [`super::coalesce`]); same budget, breaker and counters as [`Master::run`].
    pub(crate) async fn run_op(&self, budget: Duration, op: Op) -> Result<bool, FailureKind> {
        let Some(ticket) = self.breaker.allow() else {
            inc(&self.metrics.breaker_rejections);
            return Err(FailureKind::BreakerOpen);
        };
        let deadline = tokio::time::Instant::now() + budget;
        let answer = self.coalescer.submit(op, deadline);
        let outcome = tokio::time::timeout_at(deadline, async {
            answer.await.unwrap_or_else(|_| {
                Err(RedisError::from((
                    redis::ErrorKind::Io,
                    "lock request dropped: its runtime shut down",
                )))
            })
        })
        .await;
        self.account(ticket, outcome)
    }

    /// Feeds one request's outcome to the breaker and the counters.
    fn account<T>(
        &self,
        ticket: Ticket<'_>,
        outcome: Result<Result<T, RedisError>, tokio::time::error::Elapsed>,
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
            Err(_) => {
                inc(&self.metrics.timeouts);
                (FailureKind::Timeout, ticket.failure())
            }
        };
        if transition == Transition::Opened {
            inc(&self.metrics.breaker_opened);
            warn!(master = %self.name, cause = %kind, "redis master failing; circuit breaker opened");
        }
        Err(kind)
    }

    /// Dials (or reuses) a connection and PINGs it, bypassing the breaker.
    pub(crate) async fn ping(&self) -> Result<(), RedisError> {
        let mut conn = checkout(&self.pool).await?;
        redis::cmd("PING").query_async::<()>(&mut conn.inner).await
    }
}
