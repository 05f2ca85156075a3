//! Keeping instances off each other's rows.
//!
//! Every instance wants the oldest due rows. If all of them read the same
//! oldest rows and try to lock them, one wins each key and the others waste
//! a round trip (and, worse, get small batches). A poll therefore reads one
//! *slice* of the candidates (`MOD(id DIV 128, n) = random`: blocks of
//! consecutive ids, so a batch's rows share table pages), so concurrent polls
//! mostly see disjoint rows. The number of slices adapts: it doubles while
//! many keys turn out held by another instance and halves after a run of
//! polls without contention, so a lone instance reads the plain oldest rows
//! and a large fleet spreads wide. Slicing happens on the covering index:
//! rows outside the slice cost neither row reads nor bytes on the wire,
//! unlike reading a wider window and sampling from it.

use rand::Rng;

use crate::config::LockScope;
use crate::store::candidates::Slice;

const MAX_SLICES: u32 = 16;
/// Polls without contention before the slice count halves.
const CALM_ROUNDS: u32 = 8;

#[derive(Debug, Clone)]
pub(crate) struct Spreader {
    slices: u32,
    calm: u32,
    by_user: bool,
}

impl Spreader {
    pub(crate) fn new(scope: LockScope) -> Self {
        Self {
            slices: 1,
            calm: 0,
            by_user: scope == LockScope::User,
        }
    }

    #[cfg(test)]
    fn slices(&self) -> u32 {
        self.slices
    }

    /// The slice the next poll reads, if the candidates are sliced at all.
    pub(crate) fn next(&self) -> Option<Slice> {
        (self.slices > 1).then(|| Slice {
            count: self.slices,
            index: rand::rng().random_range(0..self.slices),
            by_user: self.by_user,
        })
    }

    /// Learns from a poll's lock round: `keys` asked, `contended` held by
    /// another owner.
    pub(crate) fn observe(&mut self, keys: usize, contended: usize) {
        if keys > 0 && contended * 4 > keys {
            self.slices = (self.slices * 2).min(MAX_SLICES);
            self.calm = 0;
        } else if contended == 0 {
            self.calm += 1;
            if self.calm >= CALM_ROUNDS {
                self.slices = (self.slices / 2).max(1);
                self.calm = 0;
            }
        }
    }

    /// An empty slice says little about the others: fall back to reading
    /// everything. Returns whether that changed anything (re-poll at once).
    pub(crate) fn widen(&mut self) -> bool {
        let changed = self.slices > 1;
        self.slices = 1;
        self.calm = 0;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contention_widens_and_calm_narrows() {
        let mut s = Spreader::new(LockScope::Item);
        assert!(s.next().is_none(), "a lone instance reads the oldest rows");
        s.observe(100, 60);
        s.observe(100, 60);
        assert_eq!(s.slices(), 4);
        let slice = s.next().unwrap();
        assert!(slice.index < 4 && !slice.by_user);
        for _ in 0..CALM_ROUNDS {
            s.observe(100, 0);
        }
        assert_eq!(s.slices(), 2);
        assert!(s.widen());
        assert_eq!(s.slices(), 1);
        assert!(!s.widen());
    }
}
