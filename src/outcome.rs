//! What became of a claimed row, and one set of counters keyed by it.
//!
//! A leaf module: the store reports finish results in these terms and the
//! worker adds them up (per batch, per worker, into the metrics) with the
//! same type, so a new outcome is added in one place.

use std::fmt;
use std::ops::{Index, IndexMut};
use std::sync::atomic::{AtomicU64, Ordering};

/// The outcome of one finish write for one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Sent,
    /// Back to pending for a later attempt.
    Retried,
    Failed,
    Expired,
    /// Not attempted; pending again at once.
    HandedBack,
    /// The write changed nothing: the claim had passed to another owner.
    Lost,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Sent,
        Outcome::Retried,
        Outcome::Failed,
        Outcome::Expired,
        Outcome::HandedBack,
        Outcome::Lost,
    ];

    /// The name used in logs.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Retried => "retried",
            Outcome::Failed => "failed",
            Outcome::Expired => "expired",
            Outcome::HandedBack => "handed_back",
            Outcome::Lost => "lost",
        }
    }
}

/// A count per outcome.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts([u64; 6]);

impl Counts {
    pub fn add(&mut self, o: Outcome, n: u64) {
        self[o] += n;
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &Counts) {
        for o in Outcome::ALL {
            self[o] += other[o];
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (Outcome, u64)> + '_ {
        Outcome::ALL.into_iter().map(|o| (o, self[o]))
    }
}

impl Index<Outcome> for Counts {
    type Output = u64;
    fn index(&self, o: Outcome) -> &u64 {
        &self.0[o as usize]
    }
}

impl IndexMut<Outcome> for Counts {
    fn index_mut(&mut self, o: Outcome) -> &mut u64 {
        &mut self.0[o as usize]
    }
}

/// `sent: 3, retried: 0, …`: the log format tests and operators read.
impl fmt::Debug for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Counts");
        for (o, n) in self.iter() {
            s.field(o.name(), &n);
        }
        s.finish()
    }
}

/// [`Counts`] that tasks add to concurrently.
#[derive(Debug, Default)]
pub struct AtomicCounts([AtomicU64; 6]);

impl AtomicCounts {
    pub fn add(&self, o: Outcome, n: u64) {
        self.0[o as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Counts {
        let mut c = Counts::default();
        for o in Outcome::ALL {
            c[o] = self.0[o as usize].load(Ordering::Relaxed);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_merge_and_print_by_name() {
        let mut a = Counts::default();
        a.add(Outcome::Sent, 2);
        let mut b = Counts::default();
        b.add(Outcome::Lost, 1);
        a.merge(&b);
        assert_eq!((a[Outcome::Sent], a[Outcome::Lost]), (2, 1));
        let text = format!("{a:?}");
        assert!(
            text.contains("sent: 2") && text.contains("lost: 1"),
            "{text}"
        );
        let atomic = AtomicCounts::default();
        atomic.add(Outcome::HandedBack, 3);
        assert_eq!(atomic.snapshot()[Outcome::HandedBack], 3);
    }
}
