//! How many rows a worker claims beyond its send slots, and when it tops
//! them up: the two numbers the poll loop (`poll`) sizes each
//! claim by.

/// How many rows beyond the send slots a worker keeps claimed.
///
/// Enough to cover about four poll rounds of sending: the next poll starts
/// when half of them are gone ([`min_room`]), and the half left must
/// outlast a slow round, not a typical one (four workers with 20 ms sends
/// on two cores: rounds of 5 ms at the median, 13 ms at p90; with cover
/// for two rounds the slots ran dry in about one round in ten, and claims
/// were half the size, each a statement and a commit). No more, because
/// rows claimed ahead are rows other instances cannot take (with slow
/// sends a deep prefetch makes one instance hoard the tail of a backlog
/// while the others idle). With instant sends this is the whole batch
/// size, so polls stay large.
pub(super) fn claim_ahead(
    concurrency: usize,
    batch_size: usize,
    poll_us: f64,
    send_us: f64,
) -> usize {
    let floor = concurrency.min(batch_size).max(1);
    if send_us <= 0.0 {
        // Nothing sent yet: start modestly, a slow receiver would otherwise
        // let the first instance up claim a whole batch of the backlog.
        return floor;
    }
    let rows = concurrency as f64 * (4.0 * poll_us / send_us).ceil();
    (rows as usize).clamp(floor, batch_size.max(floor))
}

/// How much room (free slots plus rows not claimed ahead) a poll waits for.
///
/// Half the rows claimed ahead, at least half the slots: the other half
/// still covers a poll round, and one large claim costs the database far
/// less per row than many small ones. Polling whenever a few slots were
/// free made four workers with 20 ms sends claim ~30 rows at a time, a
/// hundred times a second each; this makes it ~140 (S2 at W = 4: commits
/// per row down a third).
pub(super) fn min_room(concurrency: usize, batch_size: usize, ahead: usize) -> usize {
    (batch_size.min(concurrency) / 2).max(ahead / 2).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_ahead_follows_send_speed() {
        // Before the first send: the slots' worth.
        assert_eq!(claim_ahead(64, 1000, 5_000.0, 0.0), 64);
        // Instant sends: whole batches.
        assert_eq!(claim_ahead(64, 1000, 5_000.0, 50.0), 1000);
        // 20 ms sends, 10 ms polls: two rounds of slots, not the batch.
        assert_eq!(claim_ahead(50, 1000, 10_000.0, 20_000.0), 100);
        // 20 ms sends, 5 ms polls: one round of slots.
        assert_eq!(claim_ahead(50, 1000, 5_000.0, 20_000.0), 50);
        // 1 s sends: the slots' worth.
        assert_eq!(claim_ahead(50, 1000, 10_000.0, 1_000_000.0), 50);
        // Never below the slots (or the batch, if smaller).
        assert_eq!(claim_ahead(50, 20, 1.0, 1_000_000.0), 20);
    }

    #[test]
    fn polls_wait_until_half_the_rows_claimed_ahead_are_gone() {
        // 50 slots, 250 rows claimed ahead: the next claim is >= 125 rows.
        assert_eq!(min_room(50, 1000, 250), 125);
        // Before the first send (claim-ahead = the slots): half the slots.
        assert_eq!(min_room(64, 1000, 64), 32);
        // A batch smaller than the slots bounds it from below, never 0.
        assert_eq!(min_room(64, 10, 10), 5);
        assert_eq!(min_room(1, 1, 1), 1);
    }
}
