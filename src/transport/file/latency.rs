//! `HERALD_FILE_LATENCY_MS`: the `file` channel's simulated receiver
//! latency, slept before each write with a sleep accurate to tens of
//! microseconds.
//!
//! tokio's timer counts in whole milliseconds and rounds every deadline up,
//! and the driver's `epoll_wait` timeout is rounded up again: on this
//! machine `tokio::time::sleep(20 ms)` takes 21.1 ms on average. A benchmark
//! that simulates a 20 ms receiver would then measure a 21 ms one, 5 % of the
//! ideal lost to the simulation rather than to Herald. One thread per
//! process keeps the pending deadlines in a heap and waits for the earliest
//! with a nanosecond timeout (the kernel's timer slack, ~50 µs, is the
//! error); every deadline that has passed is woken in one go.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

struct Entry {
    at: Instant,
    wake: oneshot::Sender<()>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at.cmp(&other.at)
    }
}

static TIMER: OnceLock<mpsc::Sender<Entry>> = OnceLock::new();

/// Starts the timer thread. If it cannot be spawned, the returned sender's
/// receiver is gone and every [`sleep`] falls back to tokio's timer.
fn start() -> mpsc::Sender<Entry> {
    let (tx, rx) = mpsc::channel::<Entry>();
    let _ = std::thread::Builder::new()
        .name("herald-timer".into())
        .spawn(move || run(rx));
    tx
}

fn run(rx: mpsc::Receiver<Entry>) {
    let mut heap: BinaryHeap<Reverse<Entry>> = BinaryHeap::new();
    loop {
        let now = Instant::now();
        while heap.peek().is_some_and(|Reverse(e)| e.at <= now) {
            if let Some(Reverse(e)) = heap.pop() {
                let _ = e.wake.send(());
            }
        }
        let received = match heap.peek() {
            Some(Reverse(e)) => rx.recv_timeout(e.at - now),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(e) => heap.push(Reverse(e)),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Waits until `duration` has passed, to within the kernel's timer slack.
/// Falls back to tokio's timer if the timer thread cannot be started.
pub async fn sleep(duration: Duration) {
    let at = Instant::now() + duration;
    let (wake, woken) = oneshot::channel();
    let sent = TIMER.get_or_init(start).send(Entry { at, wake });
    if sent.is_err() || woken.await.is_err() {
        tokio::time::sleep_until(at.into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_in_deadline_order_and_never_early() {
        let t0 = Instant::now();
        let waits = [30u64, 10, 20, 10, 0];
        let ends = futures::future::join_all(waits.iter().map(|&ms| async move {
            sleep(Duration::from_millis(ms)).await;
            t0.elapsed()
        }))
        .await;
        for (ms, end) in waits.iter().zip(&ends) {
            assert!(
                *end >= Duration::from_millis(*ms),
                "{ms} ms woke at {end:?}"
            );
        }
        assert!(ends[1] <= ends[2] && ends[2] <= ends[0], "{ends:?}");
    }
}
