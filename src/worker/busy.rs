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
//!
//! Rows of a channel at its share of the send slots (see `share`) are held
//! until that channel answers, not for a fixed time: every channel starts
//! suspect, and at start-up a worker set aside about a batch of the head of
//! the queue for a whole second although the channel answered 20 ms later.
//! Until then each poll read that many more candidates (see
//! [`BusyRows::out_now`]): four workers with 20 ms sends spent their first
//! second in polls of 20–60 ms reading 2,000 candidates each.

use std::collections::{HashMap, HashSet};
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
    /// Out until its channel answers ([`BusyRows::hold_for_channel`]).
    for_channel: bool,
}

#[derive(Debug, Default)]
struct Rows {
    rows: HashMap<u64, Entry>,
    /// Rows held for each channel until it answers.
    by_channel: HashMap<String, HashSet<u64>>,
}

#[derive(Debug, Default)]
pub struct BusyRows {
    rows: Mutex<Rows>,
}

impl BusyRows {
    /// Rows a claim skipped.
    pub fn skipped(&self, ids: impl Iterator<Item = u64>) {
        self.skipped_at(ids, Instant::now());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rows> {
        self.rows.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn skipped_at(&self, ids: impl Iterator<Item = u64>, now: Instant) {
        let mut guard = self.lock();
        let rows = &mut guard.rows;
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
                    for_channel: false,
                },
            );
        }
    }

    /// Leaves rows out for a given time (a capped channel's rows handed
    /// back stay out until the channel has probably caught up).
    pub fn hold(&self, ids: impl Iterator<Item = u64>, time: Duration) {
        let mut guard = self.lock();
        Self::hold_in(&mut guard.rows, ids, Instant::now() + time, false);
    }

    /// Leaves rows of a channel at its share out until the channel answers
    /// ([`BusyRows::channel_answered`]), at most for `time`.
    pub fn hold_for_channel(&self, channel: &str, ids: &[u64], time: Duration) {
        let mut guard = self.lock();
        let Rows { rows, by_channel } = &mut *guard;
        Self::hold_in(rows, ids.iter().copied(), Instant::now() + time, true);
        let held = by_channel.entry(channel.to_owned()).or_default();
        held.extend(ids.iter().copied().filter(|id| rows.contains_key(id)));
    }

    /// `channel` answered: its rows held by [`BusyRows::hold_for_channel`]
    /// may be read again at once.
    pub fn channel_answered(&self, channel: &str) {
        let mut guard = self.lock();
        let Rows { rows, by_channel } = &mut *guard;
        let Some(held) = by_channel.remove(channel) else {
            return;
        };
        let now = Instant::now();
        for id in held {
            if let Some(e) = rows.get_mut(&id).filter(|e| e.for_channel) {
                e.until = e.until.min(now);
                e.for_channel = false;
            }
        }
    }

    fn hold_in(
        rows: &mut HashMap<u64, Entry>,
        ids: impl Iterator<Item = u64>,
        until: Instant,
        for_channel: bool,
    ) {
        let now = Instant::now();
        for id in ids {
            if rows.len() >= MAX_ROWS && !rows.contains_key(&id) {
                continue;
            }
            let strikes = rows.get(&id).map_or(0, |e| e.strikes);
            rows.insert(
                id,
                Entry {
                    until,
                    last_skip: now,
                    strikes,
                    for_channel,
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
        let mut guard = self.lock();
        let Rows { rows, by_channel } = &mut *guard;
        if rows.is_empty() {
            return 0;
        }
        rows.retain(|_, e| {
            e.until > now || now.saturating_duration_since(e.last_skip) < FORGET_AFTER
        });
        // A channel that never answers must not grow its set for ever.
        by_channel.retain(|_, held| {
            held.retain(|id| rows.get(id).is_some_and(|e| e.for_channel && e.until > now));
            !held.is_empty()
        });
        rows.values().filter(|e| e.until > now).count()
    }

    /// Removes the rows that are out from `candidates`.
    pub fn retain_free<T>(&self, candidates: &mut Vec<T>, id: impl Fn(&T) -> u64) {
        let guard = self.lock();
        let rows = &guard.rows;
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
    fn rows_held_for_a_channel_come_back_when_it_answers() {
        let busy = BusyRows::default();
        busy.hold_for_channel("a", &[1, 2], Duration::from_secs(1));
        busy.hold_for_channel("b", &[3], Duration::from_secs(1));
        busy.skipped([4].into_iter());
        assert_eq!(busy.out_now(), 4);
        busy.channel_answered("a");
        assert_eq!(busy.out_now(), 2);
        let mut c = vec![1u64, 2, 3, 4];
        busy.retain_free(&mut c, |id| *id);
        assert_eq!(c, vec![1, 2]);
        // A row skipped by a claim since is out for that reason, not the
        // channel's.
        busy.hold_for_channel("b", &[5], Duration::from_secs(1));
        busy.skipped([5].into_iter());
        busy.channel_answered("b");
        let mut c = vec![3u64, 5];
        busy.retain_free(&mut c, |id| *id);
        assert_eq!(c, vec![3]);
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
