//! Coalescing of single-key requests into one round trip per master.
//!
//! Under many concurrent callers, each acquire and release of one key used to
//! be its own Redis request: per request a pool checkout, a message to the
//! connection's I/O task, a reply channel, and on the server a separate
//! command (and for a release a separate Lua call). One task per master
//! instead takes whatever single-key requests are queued, sends their `SET`s
//! as one pipeline and their releases as one Lua call, and hands each caller
//! its own answer. Nothing waits to fill a batch: a lone request goes out at
//! once, and batches form only while an earlier one is on the wire.
//!
//! Callers keep their own deadline and breaker ticket (see
//! [`super::master::Master::run_op`]), so a hung master still costs each
//! caller at most its budget. The task sends one batch at a time, in queue
//! order, on one connection; that order is what keeps a release behind the
//! `SET` it undoes.
//!
//! A caller that stops waiting does not stop its `SET`: once written, a
//! stalled master executes it whenever it resumes. So a batch that outlives
//! its callers is still awaited (in the background, see
//! [`super::master::LATE_WATCH`]), and every `SET` granted to a caller that
//! is no longer there is deleted again at once, owner-only with its token.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, Weak};

use redis::{RedisError, RedisResult};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::master::{checkout, is_held, release_late, Conn, Manager, LATE_WATCH};
use super::scripts::{release_each, set_nx_px};
use super::token::Token;

/// Most requests one batch carries; more wait for the next round trip.
const MAX_BATCH: usize = 512;

/// One single-key request.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// `SET key token NX PX ttl_ms`; answers whether the key was set.
    Set {
        key: Arc<str>,
        token: Token,
        ttl_ms: u64,
        /// Alive while the lock this `SET` belongs to is held (see
        /// [`super::master::Grants::holder`]); `None`: never held.
        holder: Option<Weak<()>>,
    },
    /// Owner-only delete; answers whether the key was ours and is gone.
    Release { key: Arc<str>, token: Token },
}

struct Request {
    op: Op,
    /// The caller's own deadline; the batch waits for the latest of these.
    deadline: Instant,
    reply: oneshot::Sender<RedisResult<bool>>,
}

/// The queue of one master's coalescing task, started on first use (so a
/// `Redlock` built outside a runtime works) and again if the runtime that
/// ran it has gone.
pub(crate) struct Coalescer {
    pool: bb8::Pool<Manager>,
    tx: Mutex<Option<mpsc::UnboundedSender<Request>>>,
}

impl Coalescer {
    pub(crate) fn new(pool: bb8::Pool<Manager>) -> Self {
        Self {
            pool,
            tx: Mutex::new(None),
        }
    }

    /// Queues `op`; the answer arrives on the returned channel (dropped
    /// unanswered only if the task died with its runtime). A caller that
    /// gives up must `close()` the receiver before a last `try_recv()`: a
    /// `SET` granted after that is released by the task, one granted before
    /// it is the caller's.
    pub(crate) fn submit(&self, op: Op, deadline: Instant) -> oneshot::Receiver<RedisResult<bool>> {
        let (reply, rx) = oneshot::channel();
        let mut req = Request {
            op,
            deadline,
            reply,
        };
        let mut tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = tx.as_ref() {
            match sender.send(req) {
                Ok(()) => return rx,
                Err(mpsc::error::SendError(back)) => req = back,
            }
        }
        let (sender, queue) = mpsc::unbounded_channel();
        tokio::spawn(run(self.pool.clone(), queue));
        // A fresh channel's receiver is alive, so this cannot fail.
        let _ = sender.send(req);
        *tx = Some(sender);
        rx
    }
}

/// The task: one batch on the wire at a time, the rest queue behind it.
async fn run(pool: bb8::Pool<Manager>, mut queue: mpsc::UnboundedReceiver<Request>) {
    let mut batch = Vec::with_capacity(64);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // A SET whose caller stopped waiting is not sent: it could only leave
        // a key nobody will release. Releases go out regardless.
        batch.retain(|r| !(matches!(r.op, Op::Set { .. }) && r.reply.is_closed()));
        if batch.is_empty() {
            continue;
        }
        let deadline = batch
            .iter()
            .map(|r| r.deadline)
            .max()
            .unwrap_or_else(Instant::now);
        let ops: Arc<[Op]> = batch.iter().map(|r| r.op.clone()).collect();
        let replies: Vec<_> = batch.drain(..).map(|r| r.reply).collect();
        // Only a request on the wire is watched past its deadline: one still
        // waiting for a connection is dropped, or it would be sent late.
        let conn = match tokio::time::timeout_at(deadline, checkout(&pool)).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                for r in replies {
                    let _ = r.send(Err(clone_error(&e)));
                }
                continue;
            }
            Err(_) => continue,
        };
        let mut answers = Box::pin(send(conn, ops.clone()));
        match tokio::time::timeout_at(deadline, &mut answers).await {
            Ok(Ok(answers)) => {
                let mut late = Vec::new();
                for ((op, reply), a) in ops.iter().zip(replies).zip(answers) {
                    if reply.send(Ok(a)).is_err() && a {
                        late.extend(granted_set(op));
                    }
                }
                release_late(&pool, late);
            }
            Ok(Err(e)) => {
                for r in replies {
                    let _ = r.send(Err(clone_error(&e)));
                }
            }
            // Every caller has given up by now (their own timeouts count
            // it), but the SETs are on the wire: watch for late grants.
            Err(_) => {
                drop(replies);
                let pool = pool.clone();
                tokio::spawn(async move {
                    if let Ok(Ok(answers)) = tokio::time::timeout(LATE_WATCH, answers).await {
                        let late = ops
                            .iter()
                            .zip(answers)
                            .filter(|(_, a)| *a)
                            .filter_map(|(op, _)| granted_set(op))
                            .collect();
                        release_late(&pool, late);
                    }
                });
            }
        }
    }
}

/// The key and token a granted `op` created, if it is a `SET` whose lock
/// nobody holds: a late grant to a lock still held is part of that lock and
/// goes with its release.
fn granted_set(op: &Op) -> Option<(Arc<str>, Token)> {
    match op {
        Op::Set {
            key, token, holder, ..
        } if !is_held(holder.as_ref()) => Some((key.clone(), *token)),
        Op::Set { .. } | Op::Release { .. } => None,
    }
}

/// Sends the batch's SETs as one pipeline and its releases as one chunked
/// Lua call, concurrently on one connection; answers in request order.
async fn send(conn: Conn, batch: Arc<[Op]>) -> RedisResult<Vec<bool>> {
    let broken = conn.broken.clone();
    let mut sets = redis::pipe();
    let mut rel_keys: Vec<&str> = Vec::new();
    let mut rel_tokens: Vec<&[u8]> = Vec::new();
    for op in batch.iter() {
        match op {
            Op::Set {
                key, token, ttl_ms, ..
            } => set_nx_px(&mut sets, key, token, *ttl_ms),
            Op::Release { key, token } => {
                rel_keys.push(key);
                rel_tokens.push(&token.as_bytes()[..]);
            }
        }
    }
    let n_sets = batch.len() - rel_keys.len();
    let mut c1 = conn.inner.clone();
    let mut c2 = conn.inner;
    let set_fut = async {
        if n_sets == 0 {
            return Ok(Vec::new());
        }
        sets.query_async::<Vec<Option<String>>>(&mut c1).await
    };
    let rel_fut = async {
        if rel_keys.is_empty() {
            return Ok(Vec::new());
        }
        release_each(&mut c2, &rel_keys, &rel_tokens).await
    };
    let (set_res, rel_res) = tokio::join!(set_fut, rel_fut);
    let result = set_res.and_then(|s| rel_res.map(|r| (s, r)));
    let (set_answers, rel_answers) = result.inspect_err(|e| {
        if e.is_unrecoverable_error() || e.is_connection_dropped() || e.is_io_error() {
            broken.store(true, Relaxed);
        }
    })?;
    let mut sets = set_answers.into_iter();
    let mut rels = rel_answers.into_iter();
    Ok(batch
        .iter()
        .map(|op| match op {
            Op::Set { .. } => sets.next().flatten().is_some(),
            Op::Release { .. } => rels.next() == Some(1),
        })
        .collect())
}

/// `RedisError` is not `Clone`; every caller of a failed batch gets an
/// error of the same kind and text.
fn clone_error(e: &RedisError) -> RedisError {
    if e.is_io_error() || e.is_connection_dropped() {
        RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            e.to_string(),
        ))
    } else {
        RedisError::from((e.kind(), "batched request failed", e.to_string()))
    }
}
