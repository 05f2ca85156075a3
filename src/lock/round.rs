//! One request per master, sent concurrently, decided as early as possible.
//!
//! A round stops waiting as soon as its outcome is certain (a majority said
//! yes, or a majority can no longer say yes). Requests still in flight are
//! driven to completion by a background task, so their outcome still reaches
//! the breaker and the counters, and the caller never waits for a hung master
//! it does not need.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::{Stream, StreamExt};
use futures::FutureExt;
use redis::aio::MultiplexedConnection;
use redis::RedisResult;
use tokio::sync::Notify;

use super::coalesce::Op;
use super::error::{FailureKind, MasterFailure};
use super::master::{Grants, Master};
use super::Inner;

pub(crate) type MasterFut<R> =
    Pin<Box<dyn Future<Output = (usize, Result<R, FailureKind>)> + Send>>;

/// The requests of one round, one per master, answered in the order they
/// complete. A plain list polled in turn on every wake-up rather than a
/// `FuturesUnordered`: for a handful of masters, polling the others again
/// costs less than its task allocation and per-request wakers (about 7 %
/// of the client's CPU with 64 concurrent callers; 64-task lock cycles
/// +4–8 % in five of six alternating pairs).
pub(crate) struct Round<R>(Vec<MasterFut<R>>);

impl<R> Round<R> {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<R> FromIterator<MasterFut<R>> for Round<R> {
    fn from_iter<I: IntoIterator<Item = MasterFut<R>>>(iter: I) -> Self {
        Round(iter.into_iter().collect())
    }
}

impl<R> Stream for Round<R> {
    type Item = (usize, Result<R, FailureKind>);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let futs = &mut self.get_mut().0;
        if futs.is_empty() {
            return Poll::Ready(None);
        }
        for i in 0..futs.len() {
            if let Poll::Ready(out) = futs[i].as_mut().poll(cx) {
                drop(futs.swap_remove(i));
                return Poll::Ready(Some(out));
            }
        }
        Poll::Pending
    }
}

/// Which masters still have a `SET` of ours in flight.
///
/// A round returns before slow masters answered; their `SET` may still land.
/// A release that overtook it would leave a stale key behind, blocking that
/// master for the whole TTL (we saw exactly that under contention), so a
/// release to such a master first waits until our `SET` request has finished
/// (its own timeout bounds the wait). A `SET` that *timed out* may still be
/// queued at the master; with one connection per master (the default) the
/// release queues behind it on the same connection, with several it may not,
/// and the stray key then lives until its TTL.
#[derive(Debug)]
pub(crate) struct InFlight {
    pending: AtomicU64,
    notify: Notify,
}

impl InFlight {
    pub(crate) fn new(masters: usize) -> Arc<Self> {
        let bits = if masters >= 64 {
            u64::MAX
        } else {
            (1u64 << masters) - 1
        };
        Arc::new(Self {
            pending: AtomicU64::new(bits),
            notify: Notify::new(),
        })
    }

    fn done(&self, i: usize) {
        self.pending.fetch_and(!(1u64 << i), Ordering::AcqRel);
        self.notify.notify_waiters();
    }

    /// Resolves once master `i` has no request of ours in flight.
    pub(crate) async fn settled(&self, i: usize) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.pending.load(Ordering::Acquire) & (1u64 << i) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Marks a master settled even if its request future is dropped.
struct Settle(Option<(Arc<InFlight>, usize)>);

impl Drop for Settle {
    fn drop(&mut self) {
        if let Some((f, i)) = self.0.take() {
            f.done(i);
        }
    }
}

/// Starts `make` on every master (each bounded by `budget`).
pub(crate) fn fan_out<R, F, Fut>(inner: &Arc<Inner>, budget: Duration, make: F) -> Round<R>
where
    R: Send + 'static,
    F: Fn(MultiplexedConnection) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = RedisResult<R>> + Send + 'static,
{
    fan_out_tracked(inner, budget, None, None, make)
}

/// [`fan_out`] that records completion in `track` (for requests that create
/// keys) and/or first waits for `after` (for requests that delete them).
pub(crate) fn fan_out_tracked<R, F, Fut>(
    inner: &Arc<Inner>,
    budget: Duration,
    track: Option<&Arc<InFlight>>,
    after: Option<&Arc<InFlight>>,
    make: F,
) -> Round<R>
where
    R: Send + 'static,
    F: Fn(MultiplexedConnection) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = RedisResult<R>> + Send + 'static,
{
    per_master(inner, track, after, move |m| {
        let make = make.clone();
        async move { m.run(budget, make).await }
    })
}

/// [`fan_out_tracked`] for requests answering one flag per key of `grants`,
/// whose late grants are deleted again (see [`Master::run_granting`]).
pub(crate) fn fan_out_granting<F, Fut>(
    inner: &Arc<Inner>,
    budget: Duration,
    track: Option<&Arc<InFlight>>,
    grants: Grants,
    make: F,
) -> Round<Vec<bool>>
where
    F: Fn(MultiplexedConnection) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = RedisResult<Vec<bool>>> + Send + 'static,
{
    per_master(inner, track, None, move |m| {
        let make = make.clone();
        let grants = grants.clone();
        async move { m.run_granting(budget, grants, make).await }
    })
}

/// [`fan_out_tracked`] for a single-key request, which each master
/// coalesces with other callers' (see [`super::coalesce`]).
pub(crate) fn fan_out_op(
    inner: &Arc<Inner>,
    budget: Duration,
    track: Option<&Arc<InFlight>>,
    after: Option<&Arc<InFlight>>,
    op: Op,
) -> Round<bool> {
    per_master(inner, track, after, move |m| {
        let op = op.clone();
        async move { m.run_op(budget, op).await }
    })
}

/// Starts `request` on every master, with the `track`/`after` bookkeeping.
fn per_master<R, F, Fut>(
    inner: &Arc<Inner>,
    track: Option<&Arc<InFlight>>,
    after: Option<&Arc<InFlight>>,
    request: F,
) -> Round<R>
where
    R: Send + 'static,
    F: Fn(Arc<Master>) -> Fut,
    Fut: Future<Output = Result<R, FailureKind>> + Send + 'static,
{
    inner
        .masters
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let work = request(m.clone());
            let settle = Settle(track.map(|t| (t.clone(), i)));
            let after = after.cloned();
            Box::pin(async move {
                if let Some(a) = after {
                    a.settled(i).await;
                }
                let r = work.await;
                drop(settle);
                (i, r)
            }) as MasterFut<R>
        })
        .collect()
}

/// Lets the requests still in flight finish without anyone waiting for them.
pub(crate) fn finish_in_background<R: Send + 'static>(mut round: Round<R>) {
    // A round usually stops at a majority with the last answer already in
    // (coalesced batches come back together): collect what is ready here
    // rather than spawn a task for it, two of which per lock and release
    // cycle were a measurable share of the client's CPU.
    while let Some(Some(_)) = round.next().now_or_never() {}
    if round.is_empty() {
        return;
    }
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(round.for_each(|_| async {}));
    }
}

/// Yes/no answers and failures of one round.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) yes: usize,
    /// Masters that answered "no" (held by someone else / not ours).
    pub(crate) no: usize,
    /// Every master that did not say yes, with why (a "no" included).
    pub(crate) causes: Vec<MasterFailure>,
    /// Masters whose answer was not awaited.
    pub(crate) pending: usize,
}

/// When a round may stop waiting.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stop {
    /// A majority said yes, or yes can no longer reach a majority. For
    /// grants: a master in restart quarantine (see [`super::restart`]) does
    /// not count as yes.
    Decided,
    /// A majority answered at all (yes or no), or can no longer answer.
    Answered,
}

/// Awaits a round of yes/no answers until its outcome is certain.
pub(crate) async fn tally<R: Send + 'static>(
    inner: &Inner,
    mut round: Round<R>,
    stop: Stop,
    is_yes: impl Fn(&R) -> bool,
) -> Tally {
    let q = inner.quorum;
    let mut t = Tally {
        pending: inner.masters.len(),
        ..Tally::default()
    };
    while let Some((i, r)) = round.next().await {
        t.pending -= 1;
        match r {
            // A grant decides nothing if the master may have lost others' locks.
            Ok(ref v) if is_yes(v) && matches!(stop, Stop::Decided) && !inner.votes(i) => {
                t.causes.push(inner.failure(i, FailureKind::Restarted));
            }
            Ok(ref v) if is_yes(v) => t.yes += 1,
            Ok(_) => {
                t.no += 1;
                t.causes.push(inner.failure(i, FailureKind::Contended));
            }
            Err(kind) => t.causes.push(inner.failure(i, kind)),
        }
        let done = match stop {
            Stop::Decided => t.yes >= q || t.yes + t.pending < q,
            Stop::Answered => t.yes + t.no >= q || t.yes + t.no + t.pending < q,
        };
        if done {
            break;
        }
    }
    finish_in_background(round);
    t
}
