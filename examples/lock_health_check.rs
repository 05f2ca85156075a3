//! A health check that takes and releases a random lock.
//!
//! When to use: a readiness probe (or a monitoring job) of a service that
//! cannot work without its locks. PING on each Redis says little: the lock
//! needs a *majority* of masters to grant a `SET NX PX` and run the release
//! script within a deadline. `probe` does exactly that with a fresh random
//! key (`probe:<random>`), so it never contends with real work and leaves
//! nothing behind; its error says why (no quorum, naming each master's
//! failure, or the deadline). Herald's `/readyz` uses it. Keep it out of
//! liveness: a Redis outage should stop traffic, not restart every instance.
//!
//! Run: `cargo run --example lock_health_check` (Redis on 127.0.0.1:6379, or
//! comma-separated masters in `HERALD_REDIS_URLS`); exit code 1 when unhealthy.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use herald::lock::{LockConfig, LockError, Redlock};

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

/// One probe with `deadline`; how long it took, or why it failed.
pub async fn run(
    masters: Vec<String>,
    key_prefix: &str,
    deadline: Duration,
) -> Result<Duration, LockError> {
    let locks = Redlock::new(lock_config(masters, key_prefix)).await?;
    let start = Instant::now();
    locks.probe(deadline).await?;
    Ok(start.elapsed())
}

fn masters_from_env() -> Vec<String> {
    std::env::var("HERALD_REDIS_URLS")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
        .split(',')
        .map(|s| s.trim().to_owned())
        .collect()
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(
        masters_from_env(),
        "herald-example:",
        Duration::from_millis(500),
    )
    .await
    {
        Ok(took) => {
            println!("lock: ok ({} ms)", took.as_millis());
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("lock: unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}
