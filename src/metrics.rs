//! Prometheus metrics of one process.
//!
//! One [`Metrics`] is created per worker and shared by its tasks; the HTTP
//! server renders it at `/metrics`. Names follow Prometheus conventions:
//! counters end in `_total` (prometheus-client appends it), durations are
//! in seconds.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::lock::{LockMetricsSnapshot, Redlock};

/// Label of per-master lock metrics: the master's index in
/// `HERALD_REDIS_URLS` and its redacted URL (two masters may share a host).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MasterLabel {
    pub index: String,
    pub master: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// Label of per-channel gate metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabel {
    pub channel: String,
}

/// Label of rows the gate held back: the channel and why (`rate_limit`,
/// `breaker`, `gate_unreachable`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeferLabel {
    pub channel: String,
    pub reason: String,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub claimed: Counter,
    pub sent: Counter,
    pub retried: Counter,
    pub failed: Counter,
    pub expired: Counter,
    pub handed_back: Counter,
    pub lost_ownership: Counter,
    pub lock_contended: Counter,
    pub poll_errors: Counter,
    pub cleanup_deleted: Counter,
    pub cleanup_batches: Counter,
    pub cleanup_skipped: Family<ReasonLabel, Counter>,
    pub cleanup_lock_waits: Counter,
    pub cleanup_errors: Counter,
    pub stats_windows: Counter,
    pub send_duration: Histogram,
    pub delivery_lag: Histogram,
    pub batch_duration: Histogram,
    pub lock_acquire_duration: Histogram,
    pub in_flight: Gauge,
    pub due_backlog: Gauge,
    pub breaker_open: Family<ChannelLabel, Gauge>,
    pub deferred: Family<DeferLabel, Counter>,
}

impl Metrics {
    /// A registry without the lock layer's counters (tests, one-off commands).
    pub fn new() -> Arc<Metrics> {
        Self::build(None)
    }

    /// A registry that also exposes `redlock`'s own counters. They are read
    /// at scrape time rather than mirrored, so the lock module stays free of
    /// any metrics library and the numbers can never drift apart.
    pub fn with_redlock(redlock: &Redlock) -> Arc<Metrics> {
        Self::build(Some(redlock.clone()))
    }

    fn build(redlock: Option<Redlock>) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("herald");
        let m = Metrics {
            claimed: Counter::default(),
            sent: Counter::default(),
            retried: Counter::default(),
            failed: Counter::default(),
            expired: Counter::default(),
            handed_back: Counter::default(),
            lost_ownership: Counter::default(),
            lock_contended: Counter::default(),
            poll_errors: Counter::default(),
            cleanup_deleted: Counter::default(),
            cleanup_batches: Counter::default(),
            cleanup_skipped: Family::default(),
            cleanup_lock_waits: Counter::default(),
            cleanup_errors: Counter::default(),
            stats_windows: Counter::default(),
            // 1 ms .. ~32 s
            send_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            // 1 ms .. ~9 h: lag includes retries' back-off
            delivery_lag: Histogram::new(exponential_buckets(0.001, 2.5, 20)),
            batch_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            lock_acquire_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            in_flight: Gauge::default(),
            due_backlog: Gauge::default(),
            breaker_open: Family::default(),
            deferred: Family::default(),
            registry: Registry::default(),
        };
        registry.register("claimed", "Rows claimed for sending", m.claimed.clone());
        registry.register("sent", "Rows delivered and marked sent", m.sent.clone());
        registry.register(
            "retried",
            "Transient failures scheduled for another attempt",
            m.retried.clone(),
        );
        registry.register(
            "failed",
            "Rows marked failed (permanent error, unusable row or attempts exhausted)",
            m.failed.clone(),
        );
        registry.register(
            "expired",
            "Rows whose expires_at passed before sending",
            m.expired.clone(),
        );
        registry.register(
            "handed_back",
            "Claimed rows returned to pending unsent (shutdown, short lock)",
            m.handed_back.clone(),
        );
        registry.register(
            "lost_ownership",
            "Finish writes that changed nothing because the claim was lost",
            m.lost_ownership.clone(),
        );
        registry.register(
            "lock_contended",
            "Lock keys not granted because another owner holds them",
            m.lock_contended.clone(),
        );
        registry.register(
            "poll_errors",
            "Poll rounds that failed (database or lock errors)",
            m.poll_errors.clone(),
        );
        registry.register(
            "cleanup_deleted",
            "Finished rows deleted by cleanup",
            m.cleanup_deleted.clone(),
        );
        registry.register(
            "cleanup_batches",
            "DELETE batches run by cleanup",
            m.cleanup_batches.clone(),
        );
        registry.register(
            "cleanup_skipped",
            "Cleanup ticks that deleted nothing, by reason (backlog, lock_held, lock_unavailable)",
            m.cleanup_skipped.clone(),
        );
        registry.register(
            "cleanup_lock_waits",
            "Cleanup DELETEs that hit a MySQL lock-wait timeout or deadlock (the batch shrinks)",
            m.cleanup_lock_waits.clone(),
        );
        registry.register(
            "cleanup_errors",
            "Cleanup ticks that failed on a database error",
            m.cleanup_errors.clone(),
        );
        registry.register(
            "stats_windows",
            "Stats windows this instance won and logged",
            m.stats_windows.clone(),
        );
        registry.register(
            "send_duration_seconds",
            "Time spent in one delivery attempt",
            m.send_duration.clone(),
        );
        registry.register(
            "delivery_lag_seconds",
            "From due time to successful delivery",
            m.delivery_lag.clone(),
        );
        registry.register(
            "batch_duration_seconds",
            "From poll to the last finish of a claimed batch",
            m.batch_duration.clone(),
        );
        registry.register(
            "lock_acquire_duration_seconds",
            "Batched lock acquire round trip",
            m.lock_acquire_duration.clone(),
        );
        registry.register(
            "in_flight",
            "Claimed rows not yet finished",
            m.in_flight.clone(),
        );
        registry.register(
            "due_backlog",
            "Due rows seen by the last backlog count (the cleanup gate counts at most threshold + 1)",
            m.due_backlog.clone(),
        );
        registry.register(
            "breaker_open",
            "1 while a channel's circuit breaker is open or half-open (fleet-wide state, as this instance last read it), else 0",
            m.breaker_open.clone(),
        );
        registry.register(
            "deferred",
            "Rows held back unsent without using an attempt, by channel and reason (rate_limit, breaker, gate_unreachable)",
            m.deferred.clone(),
        );
        if let Some(redlock) = redlock {
            registry.register_collector(Box::new(LockCollector { redlock }));
        }
        Arc::new(Metrics { registry, ..m })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Renders [`Redlock::metrics`] on each scrape.
#[derive(Debug)]
struct LockCollector {
    redlock: Redlock,
}

type MasterField = fn(&crate::lock::MasterMetricsSnapshot) -> u64;
type LockField = fn(&LockMetricsSnapshot) -> u64;

const PER_MASTER: [(&str, &str, MasterField); 4] = [
    (
        "lock_master_errors",
        "Lock requests that failed on a Redis master (connection or server error).",
        |m| m.errors,
    ),
    (
        "lock_master_timeouts",
        "Lock requests that got no answer from a Redis master within its timeout.",
        |m| m.timeouts,
    ),
    (
        "lock_master_breaker_rejections",
        "Lock requests not sent to a Redis master because its circuit breaker was open.",
        |m| m.breaker_rejections,
    ),
    (
        "lock_master_breaker_opened",
        "Times a Redis master's circuit breaker opened.",
        |m| m.breaker_opened,
    ),
];

const WHOLE: [(&str, &str, LockField); 3] = [
    (
        "lock_acquired",
        "Lock keys granted by a majority of masters: single locks, and each key of a batch.",
        |s| s.acquired,
    ),
    (
        "lock_no_quorum",
        "Lock attempts that failed because too few masters answered or granted.",
        |s| s.no_quorum,
    ),
    (
        "lock_extend_failures",
        "Lock renewals that failed (the lock was lost or masters did not answer).",
        |s| s.extend_failures,
    ),
];

impl Collector for LockCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = self.redlock.metrics().snapshot();
        for (name, help, field) in WHOLE {
            let c = ConstCounter::new(field(&snap));
            let m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            c.encode(m)?;
        }
        for (name, help, field) in PER_MASTER {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (i, m) in snap.masters.iter().enumerate() {
                let label = MasterLabel {
                    index: i.to_string(),
                    master: m.master.clone(),
                };
                ConstCounter::new(field(m)).encode(family.encode_family(&label)?)?;
            }
        }
        Ok(())
    }
}
