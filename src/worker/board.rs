//! The worker's copy of the fleet's breaker board, and the reports that
//! keep it current.
//!
//! Senders tally outcomes here (a map update, no I/O); a background task
//! sends them in one [`Gate::report`] call every [`FLUSH`] when there is
//! something to say (a transient failure, a probe's outcome, or an answer
//! on a channel whose fleet count is not zero), and reads the board at
//! least every [`REFRESH`] otherwise. So a healthy fleet costs Redis two
//! small calls per second per instance, and nothing per delivery.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::gate::{BreakerBoard, BreakerState, Gate, Report, Transition};
use crate::metrics::{ChannelLabel, Metrics};
use crate::policy::BreakerPolicy;

/// How often tallied outcomes are sent.
pub(crate) const FLUSH: Duration = Duration::from_millis(100);
/// Longest time between two reads of the board.
pub(crate) const REFRESH: Duration = Duration::from_millis(500);
/// Longest one report call may take (each master has its own budget).
const CALL_LIMIT: Duration = Duration::from_secs(2);

/// One channel's breaker, in this process's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Local {
    Closed,
    OpenUntil(Instant),
    HalfOpen,
}

#[derive(Debug, Default)]
struct Tally {
    answered: bool,
    trailing: u32,
}

/// A probe's fate, to report.
#[derive(Debug)]
struct ProbeEnd {
    channel: String,
    token: String,
    /// `None`: not sent after all (release the probe key).
    answered: Option<bool>,
    cool_down: Duration,
}

#[derive(Debug, Default)]
struct Pending {
    tallies: HashMap<String, (Tally, BreakerPolicy)>,
    probes: Vec<ProbeEnd>,
}

/// Each channel's consecutive failures and state, and when they were read.
type View = (HashMap<String, (u32, Local)>, Option<Instant>);

#[derive(Debug)]
pub(crate) struct Board {
    gate: Gate,
    metrics: Arc<Metrics>,
    view: Mutex<View>,
    /// Some breaker is not closed: polls must look at channels.
    active: AtomicBool,
    pending: Mutex<Pending>,
}

impl Board {
    pub(crate) fn new(gate: Gate, metrics: Arc<Metrics>, channels: &[String]) -> Board {
        for c in channels {
            metrics
                .breaker_open
                .get_or_create(&ChannelLabel { channel: c.clone() })
                .set(0);
        }
        Board {
            gate,
            metrics,
            view: Mutex::new((HashMap::new(), None)),
            active: AtomicBool::new(false),
            pending: Mutex::new(Pending::default()),
        }
    }

    pub(crate) fn gate(&self) -> &Gate {
        &self.gate
    }

    pub(crate) fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// The channel's breaker as last read.
    pub(crate) fn state(&self, channel: &str) -> Local {
        let view = self.view.lock().unwrap_or_else(|e| e.into_inner());
        match view.0.get(channel) {
            Some((_, Local::OpenUntil(t))) if *t <= Instant::now() => Local::HalfOpen,
            Some((_, s)) => *s,
            None => Local::Closed,
        }
    }

    /// A delivery of `channel` got an answer (`answered`) or failed
    /// transiently.
    pub(crate) fn tally(&self, channel: &str, policy: BreakerPolicy, answered: bool) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if !p.tallies.contains_key(channel) {
            p.tallies
                .insert(channel.to_owned(), (Tally::default(), policy));
        }
        let Some((t, _)) = p.tallies.get_mut(channel) else {
            return;
        };
        if answered {
            t.answered = true;
            t.trailing = 0;
            return;
        }
        t.trailing = t.trailing.saturating_add(1);
        let trailing = t.trailing;
        drop(p);
        // This worker alone has seen enough failures in a row: the fleet's
        // count is at least as high, so the breaker opens with the next
        // report. Hold the channel's rows from now on instead of sending
        // the ones waiting for a send slot into the same dead receiver
        // meanwhile; the next read of the board replaces this guess.
        if trailing >= policy.failures {
            let mut view = self.view.lock().unwrap_or_else(|e| e.into_inner());
            let entry = view
                .0
                .entry(channel.to_owned())
                .or_insert((trailing, Local::Closed));
            if entry.1 == Local::Closed {
                entry.1 = Local::OpenUntil(Instant::now() + policy.cool_down);
                self.active.store(true, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn probe_end(
        &self,
        channel: &str,
        token: String,
        answered: Option<bool>,
        cool_down: Duration,
    ) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.probes.push(ProbeEnd {
            channel: channel.to_owned(),
            token,
            answered,
            cool_down,
        });
    }

    /// Sends what is worth sending, or reads the board when it is due.
    pub(crate) async fn flush(&self) {
        let (tallies, probes) = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            (
                std::mem::take(&mut p.tallies),
                std::mem::take(&mut p.probes),
            )
        };
        let (stale, fleet_failures) = {
            let view = self.view.lock().unwrap_or_else(|e| e.into_inner());
            let stale = view.1.is_none_or(|t| t.elapsed() >= REFRESH);
            let failures: HashMap<String, u32> =
                view.0.iter().map(|(c, (f, _))| (c.clone(), *f)).collect();
            (stale, failures)
        };
        let mut reports: Vec<Report<'_>> = Vec::new();
        for (channel, (t, policy)) in &tallies {
            // An answer on a channel the fleet counts no failures for
            // changes nothing: the common case costs no write.
            let fleet = fleet_failures.get(channel).copied().unwrap_or(0);
            if t.trailing > 0 || (t.answered && fleet > 0) {
                reports.push(Report::Counts {
                    channel,
                    answered: t.answered,
                    trailing_failures: t.trailing,
                    failures: policy.failures,
                    cool_down: policy.cool_down,
                });
            }
        }
        for p in &probes {
            reports.push(match p.answered {
                Some(answered) => Report::Probe {
                    channel: &p.channel,
                    answered,
                    cool_down: p.cool_down,
                    token: &p.token,
                },
                None => Report::Release {
                    channel: &p.channel,
                    token: &p.token,
                },
            });
        }
        if reports.is_empty() && !stale {
            return;
        }
        match tokio::time::timeout(CALL_LIMIT, self.gate.report(&reports)).await {
            Ok(Ok(board)) => self.apply(board),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "breaker report failed; keeping the last known states")
            }
            Err(_) => tracing::debug!("breaker report timed out; keeping the last known states"),
        }
    }

    fn apply(&self, board: BreakerBoard) {
        let now = Instant::now();
        let fresh: HashMap<String, (u32, Local)> = board
            .channels
            .iter()
            .map(|(c, b)| {
                let local = match b.state {
                    BreakerState::Closed => Local::Closed,
                    BreakerState::Open(left) => Local::OpenUntil(now + left),
                    BreakerState::HalfOpen => Local::HalfOpen,
                };
                (c.clone(), (b.failures, local))
            })
            .collect();
        let mut view = self.view.lock().unwrap_or_else(|e| e.into_inner());
        for c in view.0.keys().filter(|c| !fresh.contains_key(*c)) {
            self.gauge(c, false);
        }
        for (c, (_, s)) in &fresh {
            self.gauge(c, *s != Local::Closed);
        }
        self.active.store(
            fresh.values().any(|(_, s)| *s != Local::Closed),
            Ordering::Relaxed,
        );
        view.0 = fresh;
        view.1 = Some(now);
        drop(view);
        for (channel, t) in board.transitions {
            let failures = board.channels.get(&channel).map(|b| b.failures);
            match t {
                Transition::Opened => tracing::warn!(
                    channel = %channel,
                    failures,
                    "circuit breaker opened: the channel's rows wait (keeping their attempts) until a probe delivery succeeds"
                ),
                Transition::Closed => tracing::info!(
                    channel = %channel,
                    "circuit breaker closed: the probe delivery got an answer; the channel's rows flow again"
                ),
                Transition::Reopened => {
                    tracing::debug!(channel = %channel, "probe failed; circuit breaker open again")
                }
            }
        }
    }

    fn gauge(&self, channel: &str, open: bool) {
        self.metrics
            .breaker_open
            .get_or_create(&ChannelLabel {
                channel: channel.to_owned(),
            })
            .set(i64::from(open));
    }
}
