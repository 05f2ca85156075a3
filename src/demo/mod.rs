//! `herald demo`: Herald working end to end on a machine with nothing set
//! up but the build, in under 30 s.
//!
//! It finds or starts the servers ([`servers`]), migrates, enqueues a
//! realistic mix ([`mix`]), starts a signature-checking receiver that is
//! down for the first moments ([`receiver`]) and three worker processes
//! ([`workers`]), shows live progress with each worker's share, kills one
//! worker midway (the others take over its rows once their lease runs out),
//! runs `herald cleanup`, and prints a summary checked from both sides: the
//! table and what the receiver accepted ([`summary`]).

pub mod mix;
pub mod receiver;
pub mod servers;
pub mod summary;
pub mod workers;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::Settings;
use crate::store::Store;
use summary::{Shares, Summary};

/// How big the demo is.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    pub orders: u64,
    pub users: u64,
    pub concurrency: usize,
    /// The receiver's time per accepted request.
    pub latency: Duration,
    /// How long the receiver answers 503 after the workers start.
    pub outage: Duration,
    /// Give up waiting for the rows after this.
    pub limit: Duration,
}

impl Size {
    pub const FULL: Size = Size {
        orders: 4_000,
        users: 1_000,
        concurrency: 8,
        latency: Duration::from_millis(25),
        outage: Duration::from_millis(1_500),
        limit: Duration::from_secs(20),
    };
    /// `--short`: the same story with a tenth of the rows, for tests.
    pub const SHORT: Size = Size {
        orders: 400,
        users: 100,
        concurrency: 4,
        latency: Duration::from_millis(25),
        outage: Duration::from_millis(500),
        limit: Duration::from_secs(20),
    };
}

const WORKERS: usize = 3;
/// The worker killed midway, and when (share of rows finished).
const VICTIM: usize = 1;
const KILL_AT: f64 = 0.3;
/// The demo's webhook signing secret (`whsec_` + base64 of 24 bytes).
const SECRET: &str = "whsec_aGVyYWxkLWRlbW8tc2lnbmluZy1rZXk=";

/// Runs the demo; `json` prints the summary as one JSON line instead of text.
pub async fn run(settings: &Settings, size: Size, json: bool) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let db_name = format!("herald_demo_{:08x}", rand::random::<u32>());
    say(json, "Herald demo: starting servers, migrating…");
    let servers = servers::Servers::prepare(settings, &db_name).await?;
    for note in &servers.notes {
        say(json, &format!("  {note}"));
    }
    // Ctrl-C must not skip the clean-up: dropping the run kills the
    // workers, and dropping `servers` the private servers and their files.
    let result = tokio::select! {
        r = run_on(&servers, size, json, started) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if servers.shared_database {
        drop_database(&servers).await;
    }
    drop(servers);
    let summary = result?;
    if json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print!("{}", summary.text());
    }
    Ok(if summary.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn run_on(
    servers: &servers::Servers,
    size: Size,
    json: bool,
    started: Instant,
) -> anyhow::Result<Summary> {
    let store = Store::connect(&servers.database_url, 4).await?;
    let mix = mix::enqueue(&store, size.orders, size.users).await?;
    let key = crate::transport::decode_secret(&crate::secret::SecretString::new(SECRET.into()))?;
    let rcv = receiver::DemoReceiver::start(key, size.latency, size.outage).await?;
    say(
        json,
        &format!(
            "  enqueued {} notifications for {} users; receiver at {} (checks every signature, down for the first {:.1} s)",
            mix.total(),
            mix.users,
            rcv.url(),
            size.outage.as_secs_f64()
        ),
    );
    let logs = tempfile::Builder::new()
        .prefix("herald-demo-logs-")
        .tempdir()?;
    let prefix = format!("herald-demo-{:08x}:", rand::random::<u32>());
    let env = workers::WorkerEnv {
        database_url: servers.database_url.expose(),
        redis_urls: &servers.redis_urls,
        key_prefix: &prefix,
        webhook_url: &rcv.url(),
        webhook_secret: SECRET,
        concurrency: size.concurrency,
        log_dir: logs.path(),
    };
    let mut fleet = workers::start(WORKERS, &env)?;
    rcv.begin_outage();
    let t0 = Instant::now();
    let total = mix.total();
    let mut killed_with_claims = 0;
    let bar = progress_bar(total, json);
    let shares = loop {
        let shares = Shares::read(&store).await?;
        bar.set_position(shares.finished());
        bar.set_message(shares.line(&fleet));
        if shares.finished() >= total {
            break shares;
        }
        // Midway, while it holds claims (so the take-over shows), or late
        // in any case.
        let done = shares.finished() as f64 / total as f64;
        let holding = shares.sending_of(&fleet[VICTIM].id) > 0;
        if !fleet[VICTIM].killed && (done >= KILL_AT && holding || done >= 2.0 * KILL_AT) {
            fleet[VICTIM].kill().await;
            // Read after the kill: its claims cannot change any more.
            let in_flight = Shares::read(&store).await?.sending_of(&fleet[VICTIM].id);
            killed_with_claims = in_flight;
            line(
                &bar,
                json,
                &format!(
                    "  killed {} (SIGKILL) with {in_flight} rows claimed; the others take them over when their 2 s lease ends",
                    fleet[VICTIM].id
                ),
            );
        }
        for w in fleet.iter_mut() {
            if let Some(status) = w.exited() {
                let log = std::fs::read_to_string(logs.path().join(format!("{}.log", w.id)))
                    .unwrap_or_default();
                bail!("{} exited ({status}):\n{log}", w.id);
            }
        }
        if t0.elapsed() > size.limit {
            line(&bar, json, "  giving up waiting for the remaining rows");
            break shares;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let drained = t0.elapsed();
    bar.finish();
    for w in fleet.iter_mut() {
        w.stop(Duration::from_secs(5)).await;
    }
    let mut summary = Summary::collect(&store, &rcv, &mix, &shares, drained).await?;
    summary.killed_with_claims = killed_with_claims;
    store.close().await;
    summary.cleanup = cleanup(servers, &prefix).await?;
    summary.total_s = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Runs `herald cleanup` as an operator would, with retentions short
/// enough that the demo's rows qualify.
async fn cleanup(servers: &servers::Servers, prefix: &str) -> anyhow::Result<String> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let exe = std::env::current_exe()?;
    let out = tokio::process::Command::new(exe)
        .arg("cleanup")
        .env("HERALD_DATABASE_URL", servers.database_url.expose())
        .env("HERALD_REDIS_URLS", servers.redis_urls.join(","))
        .env("HERALD_KEY_PREFIX", prefix)
        .env("HERALD_RETENTION_SENT", "1s")
        .env("HERALD_RETENTION_FAILED", "1s")
        .env("HERALD_RETENTION_EXPIRED", "1s")
        .env("HERALD_LOG", "warn")
        .output()
        .await
        .context("running herald cleanup")?;
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() {
        bail!(
            "herald cleanup failed: {said} {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(said)
}

async fn drop_database(servers: &servers::Servers) {
    let Ok(name) = crate::store::migrate::database_name(&servers.database_url) else {
        return;
    };
    if let Ok(store) = Store::connect(&servers.database_url, 1).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{name}`"))
            .execute(store.pool())
            .await;
        store.close().await;
    }
}

/// The header lines go to stderr with `--json`, so stdout is the summary.
fn say(json: bool, text: &str) {
    if json {
        eprintln!("{text}");
    } else {
        println!("{text}");
    }
}

/// A line above the bar, or a plain line when the bar is hidden (no
/// terminal).
fn line(bar: &ProgressBar, json: bool, text: &str) {
    if bar.is_hidden() {
        say(json, text);
    } else {
        bar.println(text);
    }
}

fn progress_bar(total: u64, json: bool) -> ProgressBar {
    if json {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("  [{bar:30}] {pos}/{len} finished  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}
