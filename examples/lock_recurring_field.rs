//! Lock one field of a recurring record while it is recalculated.
//!
//! When to use: a record repeats on a schedule (a subscription's next
//! renewal, a recurring invoice's next due date) and a derived field is
//! recomputed from the current state by whichever instance notices first: a
//! timer firing on every replica, or a user's edit racing the scheduler. Two
//! recalculations at once would both read the old value and advance it
//! twice. Lock only that field (`record:{id}:next_run_at`), so edits of other
//! fields of the same record go on meanwhile, and re-read the state *under*
//! the lock: whoever comes second finds nothing left to do. `with_lock`
//! renews the lock while the work runs and tells the work if it is lost, so
//! a slow recalculation never writes without holding it.
//!
//! Run: `cargo run --example lock_recurring_field` (Redis on 127.0.0.1:6379,
//! or comma-separated masters in `HERALD_REDIS_URLS`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald::lock::{LockConfig, LockError, Redlock};
use rand::Rng;

const TTL: Duration = Duration::from_secs(3);

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

/// A recurring record as your database holds it (times in days, for brevity).
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub id: u64,
    pub title: String,
    pub period_days: u32,
    pub next_run_day: u32,
}

/// What happened: how often `next_run_day` was advanced, how often an
/// instance found the field locked and tried again, and the final record.
#[derive(Debug)]
pub struct Outcome {
    pub advanced: u32,
    pub contended: u32,
    pub record: Subscription,
}

/// `instances` instances notice at once that the subscription is due on
/// `today` and try to advance it, while another edits its title.
pub async fn run(
    masters: Vec<String>,
    key_prefix: &str,
    instances: usize,
    today: u32,
) -> anyhow::Result<Outcome> {
    let db = Arc::new(Mutex::new(Subscription {
        id: 7,
        title: "weekly digest".into(),
        period_days: 7,
        next_run_day: today,
    }));
    let advanced = Arc::new(Mutex::new(0u32));
    let mut tasks = Vec::new();
    for _ in 0..instances {
        let locks = Redlock::new(lock_config(masters.clone(), key_prefix)).await?;
        let (db, advanced) = (db.clone(), advanced.clone());
        tasks.push(tokio::spawn(async move {
            recalculate(&locks, &db, &advanced, today).await
        }));
    }
    // A different field of the same record, under its own key: not blocked.
    let locks = Redlock::new(lock_config(masters.clone(), key_prefix)).await?;
    let title_db = db.clone();
    locks
        .with_lock("record:7:title", TTL, |_guard| async move {
            title_db.lock().unwrap().title = "weekly digest (renamed)".into();
        })
        .await?;
    let mut contended = 0;
    for t in tasks {
        contended += t.await??;
    }
    let record = db.lock().unwrap().clone();
    let advanced = *advanced.lock().unwrap();
    Ok(Outcome {
        advanced,
        contended,
        record,
    })
}

/// Tries a few times: concurrent callers can split the masters so that
/// nobody gets a majority (each sees `Contended`), and the one holding the
/// lock may finish any moment, after which a retry finds nothing to do.
async fn recalculate(
    locks: &Redlock,
    db: &Mutex<Subscription>,
    advanced: &Mutex<u32>,
    today: u32,
) -> Result<u32, LockError> {
    let mut contended = 0;
    loop {
        match recalculate_once(locks, db, advanced, today).await {
            Err(LockError::Contended) if contended < 20 => {
                contended += 1;
                let pause = rand::rng().random_range(5..=50);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            other => return other.map(|()| contended),
        }
    }
}

async fn recalculate_once(
    locks: &Redlock,
    db: &Mutex<Subscription>,
    advanced: &Mutex<u32>,
    today: u32,
) -> Result<(), LockError> {
    locks
        .with_lock("record:7:next_run_at", TTL, |guard| async move {
            // Re-read under the lock: an instance that got here first has
            // already moved the date past today.
            let current = db.lock().unwrap().clone();
            if current.next_run_day > today {
                return;
            }
            // ... the real recalculation (calendar rules, time zones, a
            // remote price lookup) happens here and may take a while ...
            tokio::time::sleep(Duration::from_millis(20)).await;
            let next = current.next_run_day + current.period_days;
            // Write only while still holding the lock.
            if !guard.is_lost() {
                db.lock().unwrap().next_run_day = next;
                *advanced.lock().unwrap() += 1;
                println!("record {} next run moved to day {next}", current.id);
            }
        })
        .await
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
    let out = run(masters_from_env(), &prefix, 4, 100).await?;
    println!(
        "advanced {} time(s), the field was found locked {} time(s); record now {:?}",
        out.advanced, out.contended, out.record
    );
    anyhow::ensure!(out.advanced == 1, "the date was advanced more than once");
    Ok(())
}
