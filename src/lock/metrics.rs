//! Plain atomic counters. The lead's `/metrics` endpoint reads them through
//! [`LockMetrics::snapshot`]; keeping them dependency-free lets the lock
//! module be used without any particular metrics library.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct LockMetrics {
    /// Keys granted by a majority: one per single lock, one per granted key
    /// of a batch.
    pub acquired: AtomicU64,
    pub contended: AtomicU64,
    pub no_quorum: AtomicU64,
    pub released: AtomicU64,
    pub extended: AtomicU64,
    pub extend_failures: AtomicU64,
    pub masters: Vec<Arc<MasterMetrics>>,
}

/// Counters of one master; `master` is the redacted URL.
#[derive(Debug, Default)]
pub struct MasterMetrics {
    pub master: String,
    pub errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub breaker_rejections: AtomicU64,
    pub breaker_opened: AtomicU64,
}

#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct LockMetricsSnapshot {
    pub acquired: u64,
    pub contended: u64,
    pub no_quorum: u64,
    pub released: u64,
    pub extended: u64,
    pub extend_failures: u64,
    pub masters: Vec<MasterMetricsSnapshot>,
}

#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct MasterMetricsSnapshot {
    pub master: String,
    pub errors: u64,
    pub timeouts: u64,
    pub breaker_rejections: u64,
    pub breaker_opened: u64,
}

impl LockMetrics {
    pub fn snapshot(&self) -> LockMetricsSnapshot {
        LockMetricsSnapshot {
            acquired: self.acquired.load(Relaxed),
            contended: self.contended.load(Relaxed),
            no_quorum: self.no_quorum.load(Relaxed),
            released: self.released.load(Relaxed),
            extended: self.extended.load(Relaxed),
            extend_failures: self.extend_failures.load(Relaxed),
            masters: self
                .masters
                .iter()
                .map(|m| MasterMetricsSnapshot {
                    master: m.master.clone(),
                    errors: m.errors.load(Relaxed),
                    timeouts: m.timeouts.load(Relaxed),
                    breaker_rejections: m.breaker_rejections.load(Relaxed),
                    breaker_opened: m.breaker_opened.load(Relaxed),
                })
                .collect(),
        }
    }
}

pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}
