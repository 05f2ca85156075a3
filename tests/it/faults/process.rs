//! Process faults for the figures: a worker killed mid-drain (and restarted
//! by its supervisor after the fault length), and a worker stalled past its
//! lock (SIGSTOP, then SIGCONT). These are the faults the duplicate bound is
//! about: rows on the wire, or delivered but not yet recorded, when the
//! worker died or froze.

use std::time::Duration;

use serde_json::json;

use super::*;
use crate::redis_procs::Masters;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_worker_killed_then_restarted() {
    let size = size();
    let masters = Masters::start(3);
    let mut rig = Rig::shared(size).await;
    let url = rig.url.clone();
    let mut a = rig.spawn("a", &url, &masters.urls(), &[]);
    let b = rig.spawn("b", &url, &masters.urls(), &[]);
    rig.wait_sent(rig.strike_at()).await;

    let start = db_now();
    a.signal("KILL");
    let _ = a.wait_exit(Duration::from_secs(30)).await;
    tokio::time::sleep(size.fault).await;
    let window = window_since(start);
    // Its supervisor starts it again, under the same id.
    let a = rig.spawn("a", &url, &masters.urls(), &[]);
    let mut workers = vec![a, b];
    settle_and_report(
        &rig,
        "worker_sigkill",
        "SIGKILL worker A mid-drain, restarted after the fault length (B runs on)",
        window,
        &mut workers,
        Some(&["a"]),
        json!({}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_worker_stalled_past_its_lock() {
    let size = size();
    // Longer than the 4 s lock TTL, or nothing expires.
    let stall = size.fault.max(Duration::from_secs(6));
    let masters = Masters::start(3);
    let mut rig = Rig::shared(size).await;
    let url = rig.url.clone();
    let a = rig.spawn("a", &url, &masters.urls(), &[]);
    let b = rig.spawn("b", &url, &masters.urls(), &[]);
    let mut workers = vec![a, b];
    rig.wait_sent(rig.strike_at()).await;

    let start = db_now();
    workers[0].signal("STOP");
    tokio::time::sleep(stall).await;
    workers[0].signal("CONT");
    let window = window_since(start);
    settle_and_report(
        &rig,
        "worker_sigstop",
        "SIGSTOP worker A mid-drain for 1.5 x the lock TTL (full: 20 s), then SIGCONT (B runs on)",
        window,
        &mut workers,
        Some(&["a"]),
        json!({}),
    )
    .await;
}
