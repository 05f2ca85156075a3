//! Helpers for the rest of Herald: once-per-window election and health probe.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{debug, debug_span, Instrument};

use super::coalesce::Op;
use super::error::LockError;
use super::round::{fan_out, fan_out_op, tally, InFlight, Stop};
use super::single::{jitter, release_round};
use super::token::Token;
use super::{ttl_ms, Redlock};

impl Redlock {
    /// True for exactly one caller per aligned time window (wall clock,
    /// `unix_time / window`), fleet-wide. The key `name:{window index}` is
    /// never released; it expires with its TTL (one window).
    ///
    /// Plain Redlock can leave *no* winner when concurrent callers split the
    /// masters between them. So a caller that fails releases its partial
    /// grants, looks whether another token holds a majority (then: false), and
    /// otherwise tries again after a short jittered pause, within half a
    /// window (at most 5 s).
    pub async fn once_per_window(&self, name: &str, window: Duration) -> Result<bool, LockError> {
        self.inner.check_ttl(window)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let index = now.as_millis() / window.as_millis().max(1);
        let key = format!("{name}:{index}");
        let token = Token::random().map_err(|e| LockError::Random(e.to_string()))?;
        let inner = &self.inner;
        let full = inner.full_key(&key);
        let span = debug_span!("lock.once_per_window", key = key.as_str());
        async move {
            let deadline = tokio::time::Instant::now()
                + (window / 2).clamp(Duration::from_millis(50), Duration::from_secs(5));
            let budget = inner.budget(window);
            let mut backoff = Duration::from_millis(2);
            // Every attempt uses the same token, so a late grant of one must
            // not be undone while a later one may count (see `Op::Set`).
            let holder = Arc::new(());
            loop {
                let op = Op::Set {
                    key: Arc::from(full.as_str()),
                    token,
                    ttl_ms: ttl_ms(window),
                    holder: Some(Arc::downgrade(&holder)),
                };
                let inflight = InFlight::new(inner.masters.len());
                let round = fan_out_op(inner, budget, Some(&inflight), None, op);
                let t = tally(inner, round, Stop::Decided, |b| *b).await;
                if t.yes >= inner.quorum {
                    debug!("won the window");
                    // The key is ours for the window: a late grant of an
                    // earlier attempt (same token) must not delete it.
                    tokio::spawn(async move {
                        tokio::time::sleep(window).await;
                        drop(holder);
                    });
                    return Ok(true);
                }
                // Undo our partial grants before looking, so they cannot block a winner.
                if t.yes > 0 || t.pending > 0 || t.no + t.yes < inner.masters.len() {
                    let _ = tally(
                        inner,
                        release_round(inner, vec![full.clone()], token, budget, Some(&inflight)),
                        Stop::Answered,
                        |b| *b,
                    )
                    .await;
                }
                let full2 = full.clone();
                let holders = fan_out(inner, budget, move |mut c| {
                    let k = full2.clone();
                    async move {
                        redis::cmd("GET")
                            .arg(&k)
                            .query_async::<Option<Vec<u8>>>(&mut c)
                            .await
                    }
                });
                let mut values: Vec<Vec<u8>> = Vec::new();
                let mut holders = holders;
                use futures::StreamExt;
                while let Some((_, r)) = holders.next().await {
                    if let Ok(Some(v)) = r {
                        values.push(v);
                    }
                }
                let other_majority = values.iter().any(|v| {
                    v.as_slice() != &token.as_bytes()[..]
                        && values.iter().filter(|w| *w == v).count() >= inner.quorum
                });
                if other_majority {
                    return Ok(false);
                }
                let pause = jitter(backoff);
                if tokio::time::Instant::now() + pause >= deadline {
                    return Err(match inner.classify(t) {
                        LockError::Contended => LockError::DeadlineExceeded,
                        e => e,
                    });
                }
                tokio::time::sleep(pause).await;
                backoff = (backoff * 2).min(Duration::from_millis(50));
            }
        }
        .instrument(span)
        .await
    }

    /// Health check: acquires and releases a random key within `deadline`.
    pub async fn probe(&self, deadline: Duration) -> Result<(), LockError> {
        let key = format!(
            "probe:{}",
            Token::random()
                .map_err(|e| LockError::Random(e.to_string()))?
                .to_hex()
        );
        let ttl = (deadline * 4).max(Duration::from_secs(1));
        let work = async {
            let lock = self.acquire(&key, ttl).await?;
            self.release(lock).await
        };
        tokio::time::timeout(deadline, work)
            .await
            .unwrap_or(Err(LockError::DeadlineExceeded))
    }
}
