//! Where a drain's send slots went: of W × C × the time from the due
//! instant to the last delivery, the part spent sending at L ms, and the
//! four parts lost.
//!
//! `ideal_ratio` says how far a drain is from W·C/L, not why. The parts
//! say why, from what the run already records (each delivery line's time
//! and latency as slept, each row's `claimed_by`), so a slow run can be
//! told apart from a fast one without tracing the workers: S2 at W = 4
//! loses its bad runs in the tail (one worker still sending the rows it
//! claimed last while the others are done), its good ones spread evenly.

use std::collections::HashMap;

use serde::Serialize;

use super::delivered::Line;

/// Shares of W × C × (last delivery − due instant); they add up to 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SlotTime {
    /// Sending, at L ms per send.
    pub sent: f64,
    /// Sending beyond L ms: the simulated receiver woken late.
    pub simulation: f64,
    /// Before each worker's first send (its first poll, claim and, at
    /// the start, the wait for a channel's first answer).
    pub start: f64,
    /// After each worker's last delivery, while another still sends.
    pub tail: f64,
    /// Idle between a worker's first send and its last delivery.
    pub between: f64,
}

/// `owner` maps row ids to the worker that claimed them; `w` counts the
/// workers started (one that delivered nothing lost its whole share at
/// the start). `None` without lines or latencies to go by.
pub fn slot_time(
    lines: &[Line],
    owner: &HashMap<u64, String>,
    w: usize,
    c: usize,
    l_ms: u64,
) -> Option<SlotTime> {
    let t0 = lines.iter().map(|l| l.send_at.timestamp_micros()).min()? as f64;
    // Per worker: first send started, last delivery, time slept.
    let mut by_worker: HashMap<&str, (f64, f64, f64)> = HashMap::new();
    let (mut slept_total, mut sends) = (0.0, 0usize);
    for line in lines {
        let (Some(slept), Some(worker)) = (line.latency_us, owner.get(&line.id)) else {
            continue;
        };
        let (end, slept) = (line.at_us as f64, slept as f64);
        let e = by_worker
            .entry(worker.as_str())
            .or_insert((f64::MAX, f64::MIN, 0.0));
        e.0 = e.0.min(end - slept);
        e.1 = e.1.max(end);
        e.2 += slept;
        slept_total += slept;
        sends += 1;
    }
    let span = by_worker.values().map(|v| v.1).fold(f64::MIN, f64::max) - t0;
    if by_worker.is_empty() || span <= 0.0 {
        return None;
    }
    let slots = c as f64;
    let total = w.max(by_worker.len()) as f64 * slots * span;
    let idle_workers = w.saturating_sub(by_worker.len()) as f64;
    let start = by_worker
        .values()
        .map(|v| (v.0 - t0).max(0.0) * slots)
        .sum::<f64>()
        + idle_workers * slots * span;
    let tail = by_worker
        .values()
        .map(|v| (span - (v.1 - t0)) * slots)
        .sum::<f64>();
    let at_l = sends as f64 * l_ms as f64 * 1000.0;
    let sent = at_l.min(slept_total);
    let simulation = slept_total - sent;
    let between = (total - slept_total - start - tail).max(0.0);
    let share = |x: f64| super::report::round(x / total, 4);
    Some(SlotTime {
        sent: share(sent),
        simulation: share(simulation),
        start: share(start),
        tail: share(tail),
        between: share(between),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    fn line(id: u64, due_us: i64, end_us: u64, slept_us: u64) -> Line {
        Line {
            id,
            send_at: DateTime::from_timestamp_micros(due_us).unwrap(),
            at_us: end_us,
            latency_us: Some(slept_us),
        }
    }

    #[test]
    fn the_parts_add_up_and_name_where_the_time_went() {
        // Two workers of one slot each, 10 ms sends, due at t = 1 s.
        // Worker a starts 2 ms late and sends twice, 10.5 ms each, back to
        // back: done at 23 ms. Worker b sends at once (done at 10 ms),
        // idles 3 ms, then sends twice more: done at 33 ms.
        let t0 = 1_000_000;
        let t = |ms: f64| (t0 as f64 + ms * 1000.0) as u64;
        let lines = vec![
            line(1, t0, t(12.5), 10_500),
            line(2, t0, t(23.0), 10_500),
            line(3, t0, t(10.0), 10_000),
            line(4, t0, t(23.0), 10_000),
            line(5, t0, t(33.0), 10_000),
        ];
        let owner: HashMap<u64, String> = [(1, "a"), (2, "a"), (3, "b"), (4, "b"), (5, "b")]
            .into_iter()
            .map(|(id, w)| (id, w.to_string()))
            .collect();
        let s = slot_time(&lines, &owner, 2, 1, 10).unwrap();
        // 2 slots × 33 ms = 66 ms: 50 sending at L, 1 late wake-ups,
        // 2 before a's first send, 10 after a's last, 3 of b idle.
        assert_eq!(s.sent, round4(50.0 / 66.0));
        assert_eq!(s.simulation, round4(1.0 / 66.0));
        assert_eq!(s.start, round4(2.0 / 66.0));
        assert_eq!(s.tail, round4(10.0 / 66.0));
        assert_eq!(s.between, round4(3.0 / 66.0));
    }

    #[test]
    fn a_worker_that_sent_nothing_lost_its_whole_share_at_the_start() {
        let lines = vec![line(1, 0, 10_000, 10_000)];
        let owner: HashMap<u64, String> = [(1, "a".to_string())].into_iter().collect();
        let s = slot_time(&lines, &owner, 2, 1, 10).unwrap();
        assert_eq!((s.sent, s.start, s.tail), (0.5, 0.5, 0.0));
    }

    #[test]
    fn nothing_to_go_by_gives_nothing() {
        assert_eq!(slot_time(&[], &HashMap::new(), 1, 1, 10), None);
    }

    fn round4(x: f64) -> f64 {
        super::super::report::round(x, 4)
    }
}
