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
//! with a nanosecond timeout; every deadline that has passed is woken in
//! one go. The thread asks the kernel for 1 ns of timer slack instead of
//! the default 50 µs, which every wait overshot by (on the 2-core machine,
//! a 20 ms sleep of this thread overshoots ~45 µs at the median, ~100 µs
//! with the default slack). The thread is woken only for a deadline, or
//! for a new one earlier than all others (see `Timer`): the simulation
//! should cost the worker it measures as little as it can.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex, OnceLock};
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

/// The pending deadlines and the timer thread's doorbell.
///
/// A new deadline rings only when it is earlier than every pending one.
/// With one fixed latency that is almost never (each new deadline is the
/// latest), so the thread wakes once per due deadline rather than also once
/// per new one: handing each entry over a channel woke it twice per send,
/// 5,000 times a second per worker at 50 slots of 20 ms, all of it CPU the
/// simulation took from the worker it measures.
struct Timer {
    heap: Mutex<BinaryHeap<Reverse<Entry>>>,
    bell: Condvar,
}

static TIMER: OnceLock<Option<&'static Timer>> = OnceLock::new();

/// Starts the timer thread; `None` if it cannot be spawned (every
/// [`sleep`] then falls back to tokio's timer).
fn start() -> Option<&'static Timer> {
    let timer: &'static Timer = Box::leak(Box::new(Timer {
        heap: Mutex::new(BinaryHeap::new()),
        bell: Condvar::new(),
    }));
    std::thread::Builder::new()
        .name("herald-timer".into())
        .spawn(move || run(timer))
        .ok()
        .map(|_| timer)
}

/// Timer slack: how late the kernel may end a timed wait of this thread so
/// it can batch wake-ups; the waits here are the measurement.
fn fine_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK sets a number on the calling thread and
    // reads no memory; a failure leaves the default slack.
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

fn run(timer: &Timer) {
    fine_timer_slack();
    let mut due = Vec::new();
    let mut heap = timer.heap.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let now = Instant::now();
        while heap.peek().is_some_and(|Reverse(e)| e.at <= now) {
            if let Some(Reverse(e)) = heap.pop() {
                due.push(e.wake);
            }
        }
        if !due.is_empty() {
            // Woken outside the lock, so senders never wait on a wake-up.
            drop(heap);
            for wake in due.drain(..) {
                let _ = wake.send(());
            }
            heap = timer.heap.lock().unwrap_or_else(|e| e.into_inner());
            continue;
        }
        heap = match heap.peek() {
            Some(Reverse(e)) => {
                let wait = e.at - now;
                timer
                    .bell
                    .wait_timeout(heap, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => timer.bell.wait(heap).unwrap_or_else(|e| e.into_inner()),
        };
    }
}

/// Waits until `duration` has passed, to within the kernel's timer slack.
/// Falls back to tokio's timer if the timer thread cannot be started.
pub async fn sleep(duration: Duration) {
    let at = Instant::now() + duration;
    let Some(timer) = *TIMER.get_or_init(start) else {
        tokio::time::sleep_until(at.into()).await;
        return;
    };
    let (wake, woken) = oneshot::channel();
    let earliest = {
        let mut heap = timer.heap.lock().unwrap_or_else(|e| e.into_inner());
        let earliest = heap.peek().is_none_or(|Reverse(e)| at < e.at);
        heap.push(Reverse(Entry { at, wake }));
        earliest
    };
    if earliest {
        timer.bell.notify_one();
    }
    if woken.await.is_err() {
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
