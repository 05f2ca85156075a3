//! The demo's progress line and final summary. Every figure is read back
//! from the table and cross-checked against what the receiver accepted, so
//! "duplicates 0, lost 0" is an observation, not an assumption.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use sqlx::Row;

use super::mix::Mix;
use super::receiver::{DemoReceiver, Tally};
use super::workers::Worker;
use crate::notification::NewNotification;
use crate::store::Store;

/// Rows per (worker, status), polled while the demo runs.
#[derive(Debug, Clone, Default)]
pub struct Shares {
    by: BTreeMap<(String, String), u64>,
}

impl Shares {
    pub async fn read(store: &Store) -> anyhow::Result<Shares> {
        let rows = sqlx::query(
            "SELECT COALESCE(claimed_by, ''), CAST(status AS CHAR), COUNT(*) \
             FROM notifications GROUP BY claimed_by, status",
        )
        .fetch_all(store.pool())
        .await?;
        let mut by = BTreeMap::new();
        for r in rows {
            by.insert(
                (r.try_get(0)?, r.try_get(1)?),
                r.try_get::<i64, _>(2)? as u64,
            );
        }
        Ok(Shares { by })
    }

    fn count(&self, status: &str) -> u64 {
        self.by
            .iter()
            .filter(|((_, s), _)| s == status)
            .map(|(_, n)| n)
            .sum()
    }

    pub fn finished(&self) -> u64 {
        ["sent", "failed", "expired"]
            .iter()
            .map(|s| self.count(s))
            .sum()
    }

    /// Rows `worker` holds claimed right now.
    pub fn sending_of(&self, worker: &str) -> u64 {
        self.by
            .get(&(worker.to_owned(), "sending".to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Rows each worker marked sent.
    pub fn sent_by(&self, worker: &str) -> u64 {
        self.by
            .get(&(worker.to_owned(), "sent".to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// `worker-1 34% · worker-2 31% (killed) · …`, shares of the sent rows.
    pub fn line(&self, fleet: &[Worker]) -> String {
        let sent = self.count("sent").max(1);
        fleet
            .iter()
            .map(|w| {
                let pct = 100 * self.sent_by(&w.id) / sent;
                let killed = if w.killed { " (killed)" } else { "" };
                format!("{} {pct}%{killed}", w.id)
            })
            .collect::<Vec<_>>()
            .join(" · ")
    }
}

/// The outcome, as printed.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub rows: u64,
    pub users: u64,
    pub sent: u64,
    /// Rows that needed more than one attempt.
    pub retried: u64,
    pub failed: u64,
    pub expired: u64,
    /// `webhook-id`s the receiver accepted more than once. Delivery is
    /// at least once: a send the killed worker had made, but not yet
    /// recorded, goes out again from another worker.
    pub duplicates: u64,
    /// Rows the killed worker held claimed when it was killed: the most
    /// that can be delivered twice.
    pub killed_with_claims: u64,
    /// Rows neither finished nor accepted, or marked sent but never
    /// accepted by the receiver.
    pub lost: u64,
    pub unavailable_answers: u64,
    pub bad_signatures: u64,
    /// Rows sent by each worker.
    pub sent_by: BTreeMap<String, u64>,
    pub drain_s: f64,
    pub throughput_per_s: f64,
    pub cleanup: String,
    pub total_s: f64,
    /// The expected failures: the other service's bad row and the gone user.
    pub expected_failed: u64,
    pub expected_expired: u64,
}

impl Summary {
    pub async fn collect(
        store: &Store,
        rcv: &DemoReceiver,
        mix: &Mix,
        shares: &Shares,
        drained: Duration,
    ) -> anyhow::Result<Summary> {
        let rows = sqlx::query(
            "SELECT id, dedupe_key, CAST(status AS CHAR), CAST(attempts AS SIGNED) FROM notifications",
        )
        .fetch_all(store.pool())
        .await?;
        let (mut sent, mut retried, mut failed, mut expired, mut lost) = (0, 0, 0, 0, 0);
        for r in &rows {
            let id: u64 = r.try_get(0)?;
            // The key's column is binary-collated: bytes to sqlx.
            let key: Option<Vec<u8>> = r.try_get(1)?;
            let key = key.map(|k| String::from_utf8_lossy(&k).into_owned());
            let status: String = r.try_get(2)?;
            let attempts: i64 = r.try_get(3)?;
            let webhook_id = NewNotification::idempotency_key(id, key.as_deref());
            if attempts > 1 {
                retried += 1;
            }
            match status.as_str() {
                "sent" if rcv.accepted(&webhook_id) => sent += 1,
                "failed" => failed += 1,
                "expired" => expired += 1,
                _ => lost += 1,
            }
        }
        let Tally {
            duplicates,
            unavailable,
            bad_signature,
            ..
        } = rcv.tally();
        let sent_by = ["worker-1", "worker-2", "worker-3"]
            .iter()
            .map(|w| (w.to_string(), shares.sent_by(w)))
            .collect();
        Ok(Summary {
            rows: rows.len() as u64,
            users: mix.users,
            sent,
            retried,
            failed,
            expired,
            duplicates,
            killed_with_claims: 0,
            lost,
            unavailable_answers: unavailable,
            bad_signatures: bad_signature,
            sent_by,
            drain_s: drained.as_secs_f64(),
            throughput_per_s: sent as f64 / drained.as_secs_f64().max(1e-3),
            cleanup: String::new(),
            total_s: 0.0,
            expected_failed: mix.bad + mix.gone,
            expected_expired: mix.expiring,
        })
    }

    /// Everything as the demo meant it: nothing lost, nothing twice, only
    /// the planted failures.
    pub fn is_clean(&self) -> bool {
        self.lost == 0
            && self.duplicates <= self.killed_with_claims
            && self.bad_signatures == 0
            && self.failed == self.expected_failed
            && self.expired == self.expected_expired
            && self.sent + self.failed + self.expired == self.rows
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        let shares: Vec<String> = self
            .sent_by
            .iter()
            .map(|(w, n)| format!("{w} {n}"))
            .collect();
        let _ = writeln!(s, "\nsummary ({} rows, {} users)", self.rows, self.users);
        let _ = writeln!(
            s,
            "  sent        {:>6}  accepted by the receiver, signature checked ({})",
            self.sent,
            shares.join(", ")
        );
        let _ = writeln!(
            s,
            "  retried     {:>6}  rows that needed more than one attempt (the receiver's outage: {} answers 503; the killed worker's claims)",
            self.retried, self.unavailable_answers
        );
        let _ = writeln!(
            s,
            "  failed      {:>6}  the row another service wrote with a non-object payload; the user whose endpoint answers 410",
            self.failed
        );
        let _ = writeln!(
            s,
            "  expired     {:>6}  its expires_at had passed before its turn (attempts stay 0)",
            self.expired
        );
        let _ = writeln!(
            s,
            "  duplicates  {:>6}  webhook-ids accepted twice: sends the killed worker made but never recorded \
             (at most the {} rows it held; receivers dedupe on webhook-id)",
            self.duplicates, self.killed_with_claims
        );
        let _ = writeln!(
            s,
            "  lost        {:>6}  rows neither finished nor accepted",
            self.lost
        );
        let _ = writeln!(
            s,
            "  throughput  {:>6.0}/s  ({} sent in {:.1} s, 3 workers, one killed midway)",
            self.throughput_per_s, self.sent, self.drain_s
        );
        let _ = writeln!(s, "  cleanup     {}", self.cleanup);
        let verdict = if self.is_clean() {
            "everything accounted for"
        } else {
            "SOMETHING IS OFF: see the figures above"
        };
        let _ = writeln!(s, "{verdict}; the demo took {:.1} s", self.total_s);
        s
    }
}
