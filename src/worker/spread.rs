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
//!
//! They do cost index entries: the database walks the due range in order
//! and skips the other slices' entries one by one, so a read of one slice
//! out of n examines about n entries per row it returns. An instance
//! therefore keeps its slice from poll to poll and picks another only
//! when it meets contention: two instances that landed on different
//! slices stay there, so the count need not grow until a random pick
//! rarely collides. Counted in S1 (two workers): candidate reads examined
//! about 6,500 index entries per 1,000 notifications with a fresh random
//! slice per poll, against the 1,000 an unsliced read needs.

use rand::Rng;

use crate::config::LockScope;
use crate::store::candidates::Slice;

const MAX_SLICES: u32 = 16;
/// Polls without contention before the slice count halves. Halving may
/// put two instances on one slice again, so it waits long enough that the
/// collision it may cause is rare next to the polls it saves.
const CALM_ROUNDS: u32 = 32;
/// Contended polls in a row (each followed by a move to a random slice)
/// before the slice count doubles.
const CROWDED_ROUNDS: u32 = 3;

#[derive(Debug, Clone)]
pub(crate) struct Spreader {
    slices: u32,
    calm: u32,
    by_user: bool,
    /// This instance's slice while `slices` > 1 (taken modulo `slices`).
    index: u32,
    /// Polls in a row that met contention.
    crowded: u32,
}

impl Spreader {
    pub(crate) fn new(scope: LockScope) -> Self {
        Self {
            slices: 1,
            calm: 0,
            by_user: scope == LockScope::User,
            index: 0,
            crowded: 0,
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
            index: self.index % self.slices,
            by_user: self.by_user,
        })
    }

    /// Learns from a poll's lock round: `keys` asked, `contended` held by
    /// another owner.
    pub(crate) fn observe(&mut self, keys: usize, contended: usize) {
        let crowded = keys > 0 && contended * 4 > keys;
        if crowded {
            // Another instance reads this slice too: move to a random
            // slice (two instances that collided both move, so staying is
            // allowed: each has even odds of parting), and spread wider
            // only when moving keeps failing (or there is nowhere to
            // move), so two instances need not climb to 16 slices (16
            // index entries examined per row) after a few collisions.
            self.crowded += 1;
            if self.crowded >= CROWDED_ROUNDS || self.slices == 1 {
                self.slices = (self.slices * 2).min(MAX_SLICES);
                self.crowded = 0;
            }
            self.index = rand::rng().random_range(0..self.slices);
            self.calm = 0;
        } else {
            self.crowded = 0;
            if contended == 0 {
                self.calm += 1;
                if self.calm >= CALM_ROUNDS {
                    self.slices = (self.slices / 2).max(1);
                    self.calm = 0;
                }
            }
        }
    }

    /// An empty slice says little about the others: fall back to reading
    /// everything. Returns whether that changed anything (re-poll at once).
    /// Keeps the slice index: if the backlog is deep after all, contention
    /// brings slicing back, at a fresh index.
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
        assert_eq!(s.slices(), 2, "unsliced instances collide: slice");
        for _ in 1..CROWDED_ROUNDS {
            s.observe(100, 60);
            assert_eq!(s.slices(), 2, "first move to another slice");
        }
        s.observe(100, 60);
        assert_eq!(s.slices(), 4, "moving did not help: spread wider");
        s.observe(100, 0);
        s.observe(100, 60);
        assert_eq!(s.slices(), 4, "one collision after calm: only move");
        let slice = s.next().unwrap();
        assert!(slice.index < 4 && !slice.by_user);
        // Without contention the instance stays on its slice.
        s.observe(100, 10);
        assert_eq!(s.next(), Some(slice));
        for _ in 0..CALM_ROUNDS {
            s.observe(100, 0);
        }
        assert_eq!(s.slices(), 2);
        assert!(s.widen());
        assert_eq!(s.slices(), 1);
        assert!(!s.widen());
    }
}
