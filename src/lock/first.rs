//! One request to the first master that answers, in the configured order.
//!
//! Some shared state does not need a quorum but must be in one place for
//! the whole fleet: the delivery gate's rate limits and circuit breakers
//! (`crate::gate`) keep theirs on the first master of `HERALD_REDIS_URLS`
//! that answers. Every instance lists the masters in the same order, so
//! they all meet on the same one while it is up; when it fails, they move
//! to the next together. Requests go through the master's breaker and
//! per-request budget like lock requests, so a dead first master costs
//! each call at most one budget before its breaker opens, then nothing.

use std::future::Future;

use redis::aio::MultiplexedConnection;
use redis::RedisResult;

use super::error::{LockError, MasterFailure};
use super::Redlock;

impl Redlock {
    /// Runs `f` on the first master, in configured order, that answers
    /// within the per-master budget (`HERALD_LOCK_MASTER_TIMEOUT_MS`);
    /// returns its index and answer, or [`LockError::NoMaster`] with every
    /// master's failure. `f` may run on several masters in turn, so it must
    /// be safe to repeat (a Lua script is: it runs whole or not at all on
    /// each master).
    pub async fn on_first_master<T, F, Fut>(&self, f: F) -> Result<(usize, T), LockError>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let inner = &self.inner;
        let mut causes = Vec::new();
        for (index, master) in inner.masters.iter().enumerate() {
            match master.run(inner.master_timeout, &f).await {
                Ok(v) => return Ok((index, v)),
                Err(kind) => causes.push(MasterFailure {
                    master: master.name.clone(),
                    kind,
                }),
            }
        }
        Err(LockError::NoMaster { causes })
    }
}
