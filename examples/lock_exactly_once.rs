//! Process a message exactly once when every consumer receives it.
//!
//! When to use: a message reaches several consumers (a broadcast channel, a
//! webhook fanned out to every replica, an at-least-once queue redelivering
//! after a timeout) and its effect must happen once: charge a card, send an
//! e-mail. The lock keeps two consumers from working on the same message *at
//! the same time*; a durable "done" record, checked and written while the
//! lock is held, keeps a late duplicate from doing it *again* after the lock
//! is gone. The lock alone is not enough: it expires.
//!
//! Run: `cargo run --example lock_exactly_once` (Redis on 127.0.0.1:6379, or
//! comma-separated masters in `HERALD_REDIS_URLS`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald::lock::{Lock, LockConfig, LockError, Redlock};

/// Long enough for the work, short enough that a crashed consumer's messages
/// are picked up again soon.
const TTL: Duration = Duration::from_secs(5);

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

/// Stands for your database: the effects, and with them the record of
/// finished messages, which must outlive the lock (in real code, one
/// transaction writes both).
type Done = Mutex<HashMap<u64, u32>>;

/// Delivers each of `messages` to each of `consumers` consumers (each with
/// its own connections, as separate processes would have) and returns how
/// many times each message's effect happened.
pub async fn run(
    masters: Vec<String>,
    key_prefix: &str,
    consumers: usize,
    messages: u64,
) -> anyhow::Result<HashMap<u64, u32>> {
    let done = Arc::new(Done::default());
    let mut tasks = Vec::new();
    for c in 0..consumers {
        let locks = Redlock::new(lock_config(masters.clone(), key_prefix)).await?;
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            for id in 0..messages {
                consume(&locks, &done, c, id).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let effects = done.lock().unwrap().clone();
    Ok(effects)
}

async fn consume(locks: &Redlock, done: &Done, consumer: usize, id: u64) -> anyhow::Result<()> {
    // Wait for a consumer that holds the message instead of skipping it: if
    // that one crashes before recording "done", this one does the work.
    // Still held after two TTLs, or no quorum: leave the message for
    // redelivery (nack it); never process it without the lock.
    let lock = acquire_waiting(locks, &format!("msg:{id}"), TTL * 2).await?;
    let already_done = done.lock().unwrap().contains_key(&id);
    if !already_done {
        // The work. Keep it well inside the TTL, and check before committing:
        // past the validity another consumer may hold the key.
        tokio::task::yield_now().await;
        if lock.remaining_validity() > Duration::ZERO {
            *done.lock().unwrap().entry(id).or_default() += 1;
            println!("consumer {consumer} processed message {id}");
        }
    }
    locks.release(lock).await?;
    Ok(())
}

/// Retries a contended or quorum-less acquire with a short jittered pause
/// until `deadline`: the lock says "someone else has it now", and waiting
/// for them is this pattern's choice, not the lock's.
async fn acquire_waiting(locks: &Redlock, key: &str, deadline: Duration) -> anyhow::Result<Lock> {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        match locks.acquire(key, TTL).await {
            Ok(lock) => return Ok(lock),
            Err(e @ (LockError::Contended | LockError::NoQuorum { .. })) => {
                if tokio::time::Instant::now() >= until {
                    return Err(e.into());
                }
                let pause = 5 + rand::random::<u64>() % 20;
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
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
    let effects = run(masters_from_env(), &prefix, 3, 20).await?;
    let twice = effects.values().filter(|n| **n > 1).count();
    println!(
        "{} messages processed by 3 consumers, {twice} more than once",
        effects.len()
    );
    anyhow::ensure!(twice == 0, "a message was processed twice");
    Ok(())
}
