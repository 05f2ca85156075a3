//! Prometheus metrics of one process.
//!
//! One [`Metrics`] is created per worker and shared by its tasks; the HTTP
//! server renders it at `/metrics`. Names follow Prometheus conventions:
//! counters end in `_total` (prometheus-client appends it), durations are
//! in seconds.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label of per-master lock metrics: the master's index in
/// `HERALD_REDIS_URLS` and its redacted URL.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MasterLabel {
    pub master: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
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
    pub lock_master_errors: Family<MasterLabel, Counter>,
    pub lock_master_timeouts: Family<MasterLabel, Counter>,
    pub poll_errors: Counter,
    pub cleanup_deleted: Counter,
    pub cleanup_skipped: Family<ReasonLabel, Counter>,
    pub stats_windows: Counter,
    pub send_duration: Histogram,
    pub delivery_lag: Histogram,
    pub batch_duration: Histogram,
    pub lock_acquire_duration: Histogram,
    pub in_flight: Gauge,
    pub due_backlog: Gauge,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
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
            lock_master_errors: Family::default(),
            lock_master_timeouts: Family::default(),
            poll_errors: Counter::default(),
            cleanup_deleted: Counter::default(),
            cleanup_skipped: Family::default(),
            stats_windows: Counter::default(),
            // 1 ms .. ~32 s
            send_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            // 1 ms .. ~9 h: lag includes retries' back-off
            delivery_lag: Histogram::new(exponential_buckets(0.001, 2.5, 20)),
            batch_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            lock_acquire_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            in_flight: Gauge::default(),
            due_backlog: Gauge::default(),
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
            "lock_master_errors",
            "Lock requests that failed on a Redis master",
            m.lock_master_errors.clone(),
        );
        registry.register(
            "lock_master_timeouts",
            "Lock requests that timed out on a Redis master",
            m.lock_master_timeouts.clone(),
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
            "cleanup_skipped",
            "Cleanup ticks skipped, by reason",
            m.cleanup_skipped.clone(),
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
            "Due rows seen by the last backlog count",
            m.due_backlog.clone(),
        );
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
