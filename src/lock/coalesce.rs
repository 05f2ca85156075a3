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

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use redis::aio::MultiplexedConnection;
use redis::{RedisError, RedisResult};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::master::{checkout, Manager};
use super::scripts::RELEASE_EACH;
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
    /// unanswered only if the task died with its runtime).
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
        let answers = tokio::time::timeout_at(deadline, send(&pool, &batch)).await;
        match answers {
            Ok(Ok(answers)) => {
                for (r, a) in batch.drain(..).zip(answers) {
                    let _ = r.reply.send(Ok(a));
                }
            }
            Ok(Err(e)) => {
                for r in batch.drain(..) {
                    let _ = r.reply.send(Err(clone_error(&e)));
                }
            }
            // Every caller has given up by now; their own timeouts count it.
            Err(_) => batch.clear(),
        }
    }
}

/// Sends the batch's SETs as one pipeline and its releases as one chunked
/// Lua call, concurrently on one connection; answers in request order.
async fn send(pool: &bb8::Pool<Manager>, batch: &[Request]) -> RedisResult<Vec<bool>> {
    let conn = checkout(pool).await?;
    let broken = conn.broken.clone();
    let mut sets = redis::pipe();
    let mut rel_keys: Vec<&str> = Vec::new();
    let mut rel_tokens: Vec<&[u8]> = Vec::new();
    for r in batch {
        match &r.op {
            Op::Set { key, token, ttl_ms } => {
                sets.cmd("SET")
                    .arg(&**key)
                    .arg(&token.as_bytes()[..])
                    .arg("NX")
                    .arg("PX")
                    .arg(*ttl_ms);
            }
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
        .map(|r| match r.op {
            Op::Set { .. } => sets.next().flatten().is_some(),
            Op::Release { .. } => rels.next() == Some(1),
        })
        .collect())
}

/// Keys per Lua call: enough to amortise the call, few enough not to hold up
/// the Redis event loop noticeably.
const CHUNK: usize = 256;

/// Owner-only delete of each key with its own token; one 1/0 per key.
/// NOSCRIPT (a restarted master) loads the script and resends, which is safe
/// because the script is idempotent.
async fn release_each(
    conn: &mut MultiplexedConnection,
    keys: &[&str],
    tokens: &[&[u8]],
) -> RedisResult<Vec<i64>> {
    let build = || {
        let mut pipe = redis::pipe();
        for (ks, ts) in keys.chunks(CHUNK).zip(tokens.chunks(CHUNK)) {
            pipe.cmd("EVALSHA")
                .arg(RELEASE_EACH.get_hash())
                .arg(ks.len())
                .arg(ks)
                .arg(ts);
        }
        pipe
    };
    let chunks: Vec<Vec<i64>> = match build().query_async(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            RELEASE_EACH.load_async(conn).await?;
            build().query_async(conn).await?
        }
        other => other?,
    };
    Ok(chunks.into_iter().flatten().collect())
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
