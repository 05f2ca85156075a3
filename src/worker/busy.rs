//! Rows this worker leaves out of its candidates for a while.
//!
//! A claim skips rows it cannot lock without waiting. Most such rows are
//! busy for a moment only: an insert not committed yet (the candidate read
//! sees uncommitted rows, see `store::candidates`), another instance's claim
//! in flight. Some are held for long by another application's `SELECT …
//! FOR UPDATE`; read again on every poll, those would sit at the front of
//! every window, crowding out rows that can go, and cost a lock and a
//! skipped claim each time. So a row skipped once stays out for a moment
//! ([`FIRST_SKIP`]); skipped again soon after, for [`HELD_FOR`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a row skipped once stays out: past the next poll or two.
pub const FIRST_SKIP: Duration = Duration::from_millis(100);
/// How long a row skipped again stays out.
pub const HELD_FOR: Duration = Duration::from_secs(3);
/// A row not skipped again within this long counts as skipped once.
const FORGET_AFTER: Duration = Duration::from_secs(10);
/// A bound, so a table full of held rows cannot grow memory.
const MAX_ROWS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    until: Instant,
    last_skip: Instant,
    strikes: u32,
}

#[derive(Debug, Default)]
pub struct BusyRows {
    rows: Mutex<HashMap<u64, Entry>>,
}

impl BusyRows {
    /// Rows a claim skipped.
    pub fn skipped(&self, ids: impl Iterator<Item = u64>) {
        self.skipped_at(ids, Instant::now());
    }

    fn skipped_at(&self, ids: impl Iterator<Item = u64>, now: Instant) {
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            let strikes = match rows.get(&id) {
                Some(e) if now.saturating_duration_since(e.last_skip) < FORGET_AFTER => {
                    e.strikes + 1
                }
                _ => 1,
            };
            if strikes == 1 && rows.len() >= MAX_ROWS {
                continue;
            }
            let out_for = if strikes > 1 { HELD_FOR } else { FIRST_SKIP };
            rows.insert(
                id,
                Entry {
                    until: now + out_for,
                    last_skip: now,
                    strikes,
                },
            );
        }
    }

    /// Leaves rows out for a given time (a capped channel's rows handed
    /// back stay out until the channel has probably caught up).
    pub fn hold(&self, ids: impl Iterator<Item = u64>, time: Duration) {
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        for id in ids {
            if rows.len() >= MAX_ROWS && !rows.contains_key(&id) {
                continue;
            }
            let strikes = rows.get(&id).map_or(0, |e| e.strikes);
            rows.insert(
                id,
                Entry {
                    until: now + time,
                    last_skip: now,
                    strikes,
                },
            );
        }
    }

    /// How many rows are out now (the poll reads that many more
    /// candidates, so they do not shrink its round); forgets old entries.
    pub fn out_now(&self) -> usize {
        self.out_at(Instant::now())
    }

    fn out_at(&self, now: Instant) -> usize {
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        if rows.is_empty() {
            return 0;
        }
        rows.retain(|_, e| {
            e.until > now || now.saturating_duration_since(e.last_skip) < FORGET_AFTER
        });
        rows.values().filter(|e| e.until > now).count()
    }

    /// Removes the rows that are out from `candidates`.
    pub fn retain_free<T>(&self, candidates: &mut Vec<T>, id: impl Fn(&T) -> u64) {
        let rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        if rows.is_empty() {
            return;
        }
        let now = Instant::now();
        candidates.retain(|c| rows.get(&id(c)).is_none_or(|e| e.until <= now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_is_a_moment_twice_is_held() {
        let busy = BusyRows::default();
        let t0 = Instant::now();
        busy.skipped_at([1, 2].into_iter(), t0);
        assert_eq!(busy.out_at(t0), 2);
        // Past the first skip's moment: back in.
        let t1 = t0 + FIRST_SKIP + Duration::from_millis(1);
        assert_eq!(busy.out_at(t1), 0);
        // Row 1 is skipped again: out for the long time.
        busy.skipped_at([1].into_iter(), t1);
        assert_eq!(busy.out_at(t1 + HELD_FOR - Duration::from_millis(1)), 1);
        assert_eq!(busy.out_at(t1 + HELD_FOR + Duration::from_millis(1)), 0);
        // Long after, a skip counts as the first again.
        let t2 = t1 + FORGET_AFTER + HELD_FOR;
        assert_eq!(busy.out_at(t2), 0);
        busy.skipped_at([1].into_iter(), t2);
        assert_eq!(busy.out_at(t2 + FIRST_SKIP + Duration::from_millis(1)), 0);
    }

    #[test]
    fn candidates_that_are_out_are_removed() {
        let busy = BusyRows::default();
        busy.hold([2].into_iter(), Duration::from_secs(60));
        let mut c = vec![1u64, 2, 3];
        busy.retain_free(&mut c, |id| *id);
        assert_eq!(c, vec![1, 3]);
    }
}
