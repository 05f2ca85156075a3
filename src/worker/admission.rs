//! The worker's side of the delivery gate (`crate::gate`): which rows of a
//! poll batch may be claimed, and what senders tell the breakers.
//!
//! At the poll stage, before claiming: when some channel has a rate limit,
//! some breaker is not closed or some channel is at its share of the send
//! slots (`super::share`), the candidates' channels are read (one
//! primary-key lookup) and rows behind an open breaker or of a channel at
//! its share are set aside before picking; once the batch is locked, one
//! [`Gate::admit`] call judges every gated channel among the locked rows,
//! and every row that may not go now is moved out of the way with one
//! [`defer`] write (its `due_at` to when it may go; no attempt used). With
//! no limits and every breaker closed, none of that runs: the poll is
//! exactly what it was.
//!
//! Senders check the breaker once more right before sending (a row claimed
//! just before its channel's breaker opened goes back, attempt returned,
//! instead of into a dead receiver) and tally each outcome on the
//! [`Board`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;

use super::board::{Board, Local};
use super::Shared;
use crate::config::WorkerConfig;
use crate::gate::rate::ProbeAsk;
use crate::gate::{Ask, Gate};
use crate::metrics::{DeferLabel, Metrics};
use crate::policy::BreakerPolicy;
use crate::store::candidates::Candidate;
use crate::store::defer::{channels, defer};

/// How long rows of a gated channel wait when the gate cannot be asked
/// (no Redis master answers): they are never sent unlimited.
pub(crate) const UNREACHABLE_WAIT: Duration = Duration::from_secs(1);

/// Longest deferral: a row behind a very slow limit (one a day, or a
/// backlog that needs years at its rate) comes back after a day and goes
/// through the gate again, rather than getting a `due_at` past what the
/// column holds.
const MAX_DEFER: Duration = Duration::from_secs(86_400);

/// A probe row this worker is sending.
#[derive(Debug, Clone)]
struct Probe {
    channel: String,
    token: String,
}

#[derive(Debug)]
pub(crate) struct Gatekeeper {
    pub(crate) board: Board,
    /// Some channel has a rate limit: every poll asks the gate.
    any_rate: bool,
    /// Some channel has a breaker: the board is kept current.
    pub(crate) any_breaker: bool,
    probes: Mutex<HashMap<u64, Probe>>,
    token_base: String,
    seq: AtomicU64,
    last_warned: Mutex<Option<Instant>>,
}

/// The breaker of `channel`, if it has one.
pub(crate) fn breaker_of(cfg: &WorkerConfig, channel: &str) -> Option<BreakerPolicy> {
    cfg.channel_policies
        .get(channel)
        .breaker
        .or(cfg.breaker)
        .filter(|b| b.failures > 0)
}

fn send_timeout_of(cfg: &WorkerConfig, channel: &str) -> Duration {
    cfg.channel_policies
        .get(channel)
        .send_timeout
        .unwrap_or(cfg.send_timeout)
}

impl Gatekeeper {
    pub(crate) fn new(
        gate: Gate,
        metrics: Arc<Metrics>,
        cfg: &WorkerConfig,
        channels: &[String],
    ) -> Gatekeeper {
        let mut policies: Vec<_> = cfg.channel_policies.named().map(|(_, p)| p).collect();
        policies.push(cfg.channel_policies.default_policy());
        let any_rate = policies.iter().any(|p| p.rate_limit.is_some());
        let any_breaker = cfg.breaker.is_some() || policies.iter().any(|p| p.breaker.is_some());
        let with_breaker: Vec<String> = channels
            .iter()
            .filter(|c| breaker_of(cfg, c).is_some())
            .cloned()
            .collect();
        Gatekeeper {
            board: Board::new(gate, metrics, &with_breaker),
            any_rate,
            any_breaker,
            probes: Mutex::new(HashMap::new()),
            token_base: cfg.worker_id.clone(),
            seq: AtomicU64::new(0),
            last_warned: Mutex::new(None),
        }
    }

    fn needs_screen(&self) -> bool {
        self.any_rate || self.board.active()
    }

    /// Sender, right before sending: how long to hold the row back instead
    /// (its channel's breaker is open and it is not the probe).
    pub(crate) fn hold(&self, cfg: &WorkerConfig, channel: &str, id: u64) -> Option<Duration> {
        if !self.board.active() {
            return None;
        }
        breaker_of(cfg, channel)?;
        if self.is_probe(id) {
            return None;
        }
        match self.board.state(channel) {
            Local::Closed => None,
            Local::OpenUntil(t) => Some(t.saturating_duration_since(Instant::now())),
            // The probe decides within one send.
            Local::HalfOpen => Some(send_timeout_of(cfg, channel)),
        }
    }

    /// Whether this worker holds a probe row right now.
    pub(crate) fn probing(&self) -> bool {
        let probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        !probes.is_empty()
    }

    fn is_probe(&self, id: u64) -> bool {
        let probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        probes.contains_key(&id)
    }

    /// Sender, after a delivery attempt: `answered` is any answer from the
    /// receiver (2xx or a permanent refusal), as opposed to a transient
    /// failure (timeout, connection error, 408/429/5xx).
    pub(crate) fn outcome(&self, cfg: &WorkerConfig, channel: &str, id: u64, answered: bool) {
        let Some(policy) = breaker_of(cfg, channel) else {
            return;
        };
        let probe = {
            let mut probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
            probes.remove(&id)
        };
        match probe {
            Some(p) => self
                .board
                .probe_end(channel, p.token, Some(answered), policy.cool_down),
            None => self.board.tally(channel, policy, answered),
        }
    }

    /// A row is done without a delivery attempt (or its claim failed): if
    /// it was a probe, the probe key is freed for the next poll.
    pub(crate) fn not_sent(&self, ids: impl IntoIterator<Item = u64>) {
        let mut probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        if probes.is_empty() {
            return;
        }
        for id in ids {
            if let Some(p) = probes.remove(&id) {
                self.board
                    .probe_end(&p.channel, p.token, None, Duration::ZERO);
            }
        }
    }

    /// Before picking: the channel of each candidate (only when some
    /// channel is gated or a channel is at its share of the send slots),
    /// the rows whose breaker is open (held back without asking Redis),
    /// and the rows of channels at their share (left alone for a moment).
    /// `None`: nothing is gated, the round goes on as if there were no
    /// gate.
    pub(crate) async fn prepare(
        &self,
        shared: &Shared,
        window: &[Candidate],
    ) -> anyhow::Result<Option<Screen>> {
        // In user scope a user's rows go together, in due order: setting
        // some aside would let later ones overtake them (the senders'
        // share still holds the channel to half the slots).
        let any_full =
            shared.cfg.lock_scope == crate::config::LockScope::Item && shared.shares.any_full();
        if !(self.needs_screen() || any_full) || window.is_empty() {
            return Ok(None);
        }
        let cfg = &shared.cfg;
        let ids: Vec<u64> = window.iter().map(|c| c.id).collect();
        let channel_of = channels(shared.deps.store.pool(), &ids).await?;
        let now = Instant::now();
        let mut held = Vec::new();
        let mut full = Vec::new();
        for c in window {
            let Some(channel) = channel_of.get(&c.id) else {
                continue;
            };
            if breaker_of(cfg, channel).is_some() {
                if let Local::OpenUntil(t) = self.board.state(channel) {
                    let wait = spread(t.saturating_duration_since(now));
                    held.push((c.id, wait.min(MAX_DEFER), channel.clone(), "breaker"));
                    continue;
                }
            }
            if any_full && shared.shares.full(channel) {
                full.push((c.id, channel.clone()));
            }
        }
        Ok(Some(Screen {
            channel_of,
            held,
            full,
        }))
    }

    /// After locking, for the rows whose keys were granted (oldest first):
    /// one admission call for every gated channel among them, then one
    /// write deferring every row held back (these and those `prepare` set
    /// aside). Returns the rows not to claim and how many were deferred.
    ///
    /// Admission comes after the lock so that each row is judged by one
    /// instance only: judged before it, two instances reading the same due
    /// rows both spent the limit on them, and one deferred rows the other
    /// was claiming (measured: 135/s delivered on a 200/s limit).
    pub(crate) async fn admit(
        &self,
        shared: &Shared,
        screen: Screen,
        locked: &[&Candidate],
    ) -> (HashSet<u64>, usize) {
        let cfg = &shared.cfg;
        let Screen {
            channel_of,
            mut held,
            ..
        } = screen;
        // Rows per gated channel, oldest first, and whether its breaker is
        // half-open (then one row may probe).
        let mut order: Vec<(&str, bool)> = Vec::new();
        let mut rows: HashMap<&str, Vec<u64>> = HashMap::new();
        let set_aside: HashSet<u64> = held.iter().map(|h| h.0).collect();
        for c in locked {
            let Some(channel) = channel_of.get(&c.id) else {
                continue;
            };
            if set_aside.contains(&c.id) {
                continue;
            }
            let channel = channel.as_str();
            let rate = cfg.channel_policies.get(channel).rate_limit;
            let local = match breaker_of(cfg, channel) {
                Some(_) => self.board.state(channel),
                None => Local::Closed,
            };
            if rate.is_none() && local == Local::Closed {
                continue;
            }
            rows.entry(channel)
                .or_insert_with(|| {
                    order.push((channel, local != Local::Closed));
                    Vec::new()
                })
                .push(c.id);
        }
        let tokens: Vec<String> = order
            .iter()
            .map(|(_, probe)| match probe {
                true => format!(
                    "{}:{}",
                    self.token_base,
                    self.seq.fetch_add(1, Ordering::Relaxed)
                ),
                false => String::new(),
            })
            .collect();
        let asks: Vec<Ask<'_>> = order
            .iter()
            .zip(&tokens)
            .map(|((channel, probe), token)| Ask {
                channel,
                rows: rows[channel].len() as u32,
                rate: cfg.channel_policies.get(channel).rate_limit,
                probe: probe.then_some(ProbeAsk {
                    token,
                    ttl: cfg.lock_ttl,
                }),
            })
            .collect();
        if !asks.is_empty() {
            match self.board.gate().admit(&asks).await {
                Ok(verdicts) => {
                    for (a, v) in asks.iter().zip(verdicts) {
                        let ids = &rows[a.channel];
                        let granted = v.granted as usize;
                        if v.probe {
                            if let (Some(&id), Some(p)) = (ids.first(), a.probe) {
                                let mut probes =
                                    self.probes.lock().unwrap_or_else(|e| e.into_inner());
                                probes.insert(
                                    id,
                                    Probe {
                                        channel: a.channel.to_owned(),
                                        token: p.token.to_owned(),
                                    },
                                );
                            }
                        }
                        let rated = v.rate_deferred as usize;
                        // Behind a probe, rows wait for its outcome: one
                        // send at most, not the probe key's whole TTL.
                        let wait = match a.probe {
                            Some(_) => v
                                .breaker_wait
                                .min(send_timeout_of(cfg, a.channel) + Duration::from_secs(1)),
                            None => v.breaker_wait,
                        };
                        for (j, id) in ids.iter().enumerate().skip(granted) {
                            let channel = a.channel.to_owned();
                            if j < granted + rated {
                                let k = (j - granted) as u32;
                                let at = v.rate_start.saturating_add(v.spacing.saturating_mul(k));
                                held.push((*id, at.min(MAX_DEFER), channel, "rate_limit"));
                            } else {
                                held.push((*id, spread(wait).min(MAX_DEFER), channel, "breaker"));
                            }
                        }
                    }
                }
                Err(e) => {
                    self.warn_unreachable(&e);
                    for (channel, _) in &order {
                        for id in &rows[channel] {
                            let c = (*channel).to_owned();
                            held.push((*id, UNREACHABLE_WAIT, c, "gate_unreachable"));
                        }
                    }
                }
            }
        }
        if held.is_empty() {
            return (HashSet::new(), 0);
        }
        let out: HashSet<u64> = held.iter().map(|h| h.0).collect();
        let writes: Vec<(u64, Duration)> = held.iter().map(|h| (h.0, h.1)).collect();
        match defer(
            shared.deps.store.pool(),
            &shared.regions,
            &writes,
            &shared.claim_foreign_locks,
        )
        .await
        {
            Ok(_) => count_deferred(&shared.deps.metrics, &held),
            Err(e) => {
                // They stay out of the next polls for a moment instead.
                tracing::warn!(error = %e, rows = held.len(), "deferring rows held back by the gate failed");
                shared.busy.skipped(out.iter().copied());
            }
        }
        let n = out.len();
        (out, n)
    }

    fn warn_unreachable(&self, e: &crate::gate::GateError) {
        let mut last = self.last_warned.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
            *last = Some(Instant::now());
            tracing::warn!(
                error = %e,
                wait_ms = UNREACHABLE_WAIT.as_millis() as u64,
                "rate limits and breakers cannot be read; rows of gated channels wait"
            );
        }
    }
}

/// A breaker's wait plus up to a tenth (at most 1 s) more, so rows held
/// together do not all come due in the same instant.
fn spread(wait: Duration) -> Duration {
    let extra = (wait / 10).min(Duration::from_secs(1));
    if extra.is_zero() {
        return wait;
    }
    wait + extra.mul_f64(rand::rng().random::<f64>())
}

/// Rows held back: id, how long, channel, reason (the metric's label).
type Held = (u64, Duration, String, &'static str);

/// What [`Gatekeeper::prepare`] found, for [`Gatekeeper::admit`].
#[derive(Debug)]
pub(crate) struct Screen {
    channel_of: HashMap<u64, String>,
    held: Vec<Held>,
    /// Rows of channels at their share of the send slots: not claimed,
    /// not deferred (the channel may answer any moment), left out of this
    /// worker's polls until it does.
    pub(crate) full: Vec<(u64, String)>,
}

impl Screen {
    /// Rows set aside before locking (their breaker is open, or their
    /// channel is at its share).
    pub(crate) fn set_aside(&self) -> HashSet<u64> {
        self.held
            .iter()
            .map(|h| h.0)
            .chain(self.full.iter().map(|(id, _)| *id))
            .collect()
    }
}

fn count_deferred(metrics: &Metrics, held: &[Held]) {
    let mut n: HashMap<(&str, &str), u64> = HashMap::new();
    for (_, _, channel, reason) in held {
        *n.entry((channel.as_str(), reason)).or_default() += 1;
    }
    for ((channel, reason), k) in n {
        metrics
            .deferred
            .get_or_create(&DeferLabel {
                channel: channel.to_owned(),
                reason: reason.to_owned(),
            })
            .inc_by(k);
    }
}

/// Keeps the board current while the worker runs; a last flush once
/// `stop` fires reports the final outcomes.
pub(crate) async fn run_board(shared: Arc<Shared>, stop: tokio_util::sync::CancellationToken) {
    if !shared.admission.any_breaker {
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(super::board::FLUSH) => {}
            _ = stop.cancelled() => break,
        }
        shared.admission.board.flush().await;
    }
    shared.admission.board.flush().await;
}
