//! Run a job once per time window across a fleet.
//!
//! When to use: every instance runs the same timer, but the job must run
//! once per window fleet-wide: a nightly report, an hourly reconciliation, a
//! stats line per minute (Herald's own fleet statistics work this way).
//! `once_per_window` is true for exactly one caller per aligned wall-clock
//! window; its key is never released, it expires with the window, so a
//! caller that comes late in the same window still gets false. There is no
//! leader to elect or hand over: an instance that dies simply stops
//! competing. Wake a little after the window starts (with jitter), so
//! clocks that differ by a few milliseconds still agree on the window.
//!
//! Run: `cargo run --example lock_once_per_window` (Redis on 127.0.0.1:6379,
//! or comma-separated masters in `HERALD_REDIS_URLS`).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald::lock::{LockConfig, Redlock};
use rand::Rng;

/// The one place the lock configuration is built.
fn lock_config(masters: Vec<String>, key_prefix: &str) -> LockConfig {
    LockConfig {
        // SecretUrl keeps a password in the URL out of logs and errors.
        masters: masters
            .iter()
            .map(|m| {
                m.parse()
                    .expect("each master is a redis:// or rediss:// URL")
            })
            .collect(),
        key_prefix: key_prefix.to_owned(),
        master_timeout: Duration::from_millis(200),
        ..LockConfig::default()
    }
}

fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// `instances` instances each try once per window for `windows` windows;
/// returns the winners of each window (window index → instance numbers).
pub async fn run(
    masters: Vec<String>,
    key_prefix: &str,
    instances: usize,
    window: Duration,
    windows: u32,
) -> anyhow::Result<BTreeMap<u128, Vec<usize>>> {
    let mut tasks = Vec::new();
    for instance in 0..instances {
        let locks = Redlock::new(lock_config(masters.clone(), key_prefix)).await?;
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            for _ in 0..windows {
                // Sleep to 10-20 % into the next window.
                let w = window.as_millis();
                let next = (now().as_millis() / w + 1) * w;
                let offset = rand::rng().random_range(w / 10..w / 5);
                let wake = (next + offset).saturating_sub(now().as_millis());
                tokio::time::sleep(Duration::from_millis(wake as u64)).await;
                let index = now().as_millis() / w;
                if locks.once_per_window("nightly-report", window).await? {
                    println!("window {index}: instance {instance} runs the job");
                    won.push(index);
                }
            }
            anyhow::Ok((instance, won))
        }));
    }
    let mut winners: BTreeMap<u128, Vec<usize>> = BTreeMap::new();
    for t in tasks {
        let (instance, won) = t.await??;
        for index in won {
            winners.entry(index).or_default().push(instance);
        }
    }
    Ok(winners)
}

fn masters_from_env() -> Vec<String> {
    std::env::var("HERALD_REDIS_URLS")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
        .split(',')
        .map(|s| s.trim().to_owned())
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let prefix = format!("herald-example:{}:", std::process::id());
    let windows = run(masters_from_env(), &prefix, 3, Duration::from_secs(1), 5).await?;
    for (index, who) in &windows {
        println!("window {index}: {} winner(s) {who:?}", who.len());
    }
    anyhow::ensure!(
        windows.len() == 5 && windows.values().all(|w| w.len() == 1),
        "expected exactly one winner in each of 5 windows"
    );
    Ok(())
}
