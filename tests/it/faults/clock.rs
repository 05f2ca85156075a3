//! Clock skew: one worker's wall clock five minutes ahead, the other's five
//! minutes behind (libfaketime, wall clock only: an NTP step, not a faster
//! clock). Due-ness follows the database clock and lock validity follows the
//! monotonic clock, so neither may be fooled: nothing is claimed before it
//! is due, nothing is lost, nothing is sent twice.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::redis_procs::Masters;

const SKEW_S: i64 = 300;

fn libfaketime() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("faketime/libfaketimeMT.so.1"))
        .find(|p| p.exists());
    found.unwrap_or_else(|| {
        panic!(
            "libfaketime is missing: install Debian's `faketime` package \
             (apt-get install -y faketime; .ci/run does)"
        )
    })
}

fn skewed(offset_s: i64) -> Vec<(&'static str, String)> {
    vec![
        ("LD_PRELOAD", libfaketime().display().to_string()),
        ("FAKETIME", format!("{offset_s:+}")),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
        ("FAKETIME_NO_CACHE", "1".to_owned()),
    ]
}

/// Per delivered id, the writer's wall clock (`at_us`) at the write.
fn write_times(file: &Path) -> HashMap<u64, i64> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| Some((v["id"].as_u64()?, v["at_us"].as_i64()?)))
        .collect()
}

/// The median of (worker's wall clock at the write − database clock when
/// the row was recorded sent), for the rows `worker` sent: its skew.
async fn observed_skew_s(rig: &Rig, worker: &str) -> f64 {
    let times = write_times(&rig.file);
    let rows: Vec<(u64, i64)> = sqlx::query_as(
        "SELECT l.id, CAST(TIMESTAMPDIFF(MICROSECOND, '1970-01-01', l.at) AS SIGNED) \
         FROM fault_log l JOIN notifications n ON n.id = l.id \
         WHERE l.status = 'sent' AND n.claimed_by = ?",
    )
    .bind(worker)
    .fetch_all(rig.store.pool())
    .await
    .unwrap();
    let mut d: Vec<i64> = rows
        .iter()
        .filter_map(|(id, db_us)| Some(times.get(id)? - db_us))
        .collect();
    if d.is_empty() {
        return f64::NAN;
    }
    d.sort_unstable();
    d[d.len() / 2] as f64 / 1e6
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_clock_skew_five_minutes_each_way() {
    let size = size();
    let ahead = Duration::from_secs(if size.mode == "full" { 30 } else { 8 });
    let half = size.rows / 2;
    let masters = Masters::start(3);
    let mut rig = Rig::shared(Size { rows: half, ..size }).await;
    // The other half falls due `ahead` from now, by the database clock: the
    // worker five minutes ahead must not take them early.
    enqueue_file_rows(&rig.store, size.rows - half, ahead, half).await;
    rig.rows = size.rows;
    let url = rig.url.clone();
    let start = db_now();
    let mut workers = vec![
        rig.spawn("ahead", &url, &masters.urls(), &skewed(SKEW_S)),
        rig.spawn("behind", &url, &masters.urls(), &skewed(-SKEW_S)),
    ];
    wait_until(
        "the future half to fall due and go out",
        Duration::from_secs(180),
        || async { rig.sent().await >= rig.rows as i64 },
    )
    .await;
    let window = window_since(start);
    let observed = [
        ("ahead", SKEW_S, observed_skew_s(&rig, "ahead").await),
        ("behind", -SKEW_S, observed_skew_s(&rig, "behind").await),
    ];
    let figures = settle_and_report(
        &rig,
        "clock_skew",
        "libfaketime: worker A's wall clock +5 min, worker B's -5 min; half the rows due 8 s (full: 30 s) ahead by the database clock",
        window,
        &mut workers,
        // Skew stalls nothing, so no row may arrive twice.
        Some(&[]),
        json!({
            "observed_skew_s_a": observed[0].2,
            "observed_skew_s_b": observed[1].2,
        }),
    )
    .await;
    assert_eq!(figures["duplicates"], 0, "clock skew caused duplicates");
    // The skew really was in effect.
    for (w, want, got) in observed {
        assert!(
            (got - want as f64).abs() < 30.0,
            "worker {w}: wall clock off by {got} s, expected about {want} s"
        );
    }
}
