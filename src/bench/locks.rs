//! Lock benchmark behind `herald bench locks --json`.
//!
//! Measures what the worker relies on: uncontended acquire+release cycles
//! (sequential and from many tasks), batched locking of 500 keys per call,
//! and acquire latency while one of three masters is hung (SIGSTOP). Given no
//! URLs it starts its own three `redis-server` processes on free ports (and
//! kills them afterwards); the hung-master phase needs those, because it has
//! to stop a server process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use super::redis_servers::LocalRedis;
use crate::lock::{LockConfig, LockMetricsSnapshot, Redlock, Token};
use crate::secret::SecretUrl;

/// Knobs of [`run_lock_bench`].
#[derive(Debug, Clone)]
pub struct LockBenchOpts {
    /// Duration of each throughput phase.
    pub phase: Duration,
    /// Tasks of the concurrent phase.
    pub concurrency: usize,
    /// Keys per call of the batched phase.
    pub batch_size: usize,
    /// Concurrent callers of the batched phase (each with its own keys).
    pub batch_tasks: usize,
    /// Acquires timed in each hung-master phase.
    pub hung_samples: usize,
    pub master_timeout: Duration,
    /// Connections per master (`LockConfig::pool_size`).
    pub pool_size: u32,
    pub ttl: Duration,
}

impl Default for LockBenchOpts {
    fn default() -> Self {
        Self {
            phase: Duration::from_secs(3),
            concurrency: 64,
            batch_size: 500,
            batch_tasks: 2,
            hung_samples: 2000,
            master_timeout: Duration::from_millis(50),
            pool_size: LockConfig::default().pool_size,
            ttl: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LockBenchReport {
    /// CPUs available to this process, and the 1-minute load average when
    /// the run started: lock throughput on a shared machine is bounded by
    /// what the Redis processes and the client get of it.
    pub cpus: usize,
    pub load_avg_1m: Option<f64>,
    pub masters: usize,
    /// True when the benchmark started its own local masters.
    pub own_masters: bool,
    pub master_timeout_ms: f64,
    pub pool_size: u32,
    pub sequential_cycles_per_s: f64,
    pub concurrent_tasks: usize,
    pub concurrent_cycles_per_s: f64,
    pub batch_size: usize,
    pub batch_tasks: usize,
    /// Keys locked and released per second (each key: one SET and one
    /// release on every master).
    pub batched_keys_per_s: f64,
    /// Per-master timeouts and errors during the throughput phases (all
    /// masters healthy): non-zero means the machine was too loaded for the
    /// per-master timeout at times.
    pub healthy_timeouts: u64,
    pub healthy_errors: u64,
    /// Lock calls of the throughput phases that failed (not counted above).
    pub healthy_failed_calls: u64,
    /// One of three masters SIGSTOPped, circuit breaker as configured.
    pub hung_master: Option<HungReport>,
    /// Same, breaker disabled: every acquire still sends to the hung master.
    pub hung_master_no_breaker: Option<HungReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HungReport {
    pub samples: usize,
    pub failures: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub hung_master_timeouts: u64,
    pub hung_master_breaker_rejections: u64,
}

/// Runs all phases against `urls`, or against three local masters it starts
/// itself when `urls` is empty. Keys live under a random prefix and are
/// released; nothing else on the masters is touched.
pub async fn run_lock_bench(
    urls: Vec<SecretUrl>,
    opts: LockBenchOpts,
) -> anyhow::Result<LockBenchReport> {
    let load_avg_1m = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok());
    let own: Vec<LocalRedis> = if urls.is_empty() {
        (0..3)
            .map(|_| LocalRedis::start())
            .collect::<std::io::Result<_>>()
            .context("starting local redis-server masters")?
    } else {
        Vec::new()
    };
    let urls = if own.is_empty() {
        urls
    } else {
        own.iter()
            .map(|r| SecretUrl::parse(&r.url()).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<_>>()?
    };
    let prefix = format!("bench-{}:", &Token::random()?.to_hex()[..12]);
    let cfg = LockConfig {
        masters: urls.clone(),
        key_prefix: prefix,
        master_timeout: opts.master_timeout,
        pool_size: opts.pool_size,
        ..LockConfig::default()
    };
    let rl = Redlock::new(cfg.clone()).await?;
    let ttl = opts.ttl;

    // Warm-up: connections dialled, scripts loaded.
    let ready = rl.warm_up(Duration::from_secs(5)).await;
    if ready < urls.len() {
        bail!("only {ready} of {} masters answered PING", urls.len());
    }
    for i in 0..200 {
        if let Ok(l) = rl.acquire(&format!("warm:{i}"), ttl).await {
            let _ = rl.release(l).await;
        }
    }
    // Failed cycles (a loaded machine can exceed the per-master timeout)
    // are counted, not fatal, and not counted as throughput.
    let failed = Arc::new(AtomicU64::new(0));

    let sequential = {
        let t0 = Instant::now();
        let mut n = 0u64;
        let mut i = 0u64;
        while t0.elapsed() < opts.phase {
            i += 1;
            if cycle(&rl, &format!("seq:{i}"), ttl).await {
                n += 1;
            } else {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        n as f64 / t0.elapsed().as_secs_f64()
    };

    let concurrent = {
        let done = Arc::new(AtomicU64::new(0));
        let t0 = Instant::now();
        let end = t0 + opts.phase;
        let mut tasks = Vec::new();
        for t in 0..opts.concurrency {
            let rl = rl.clone();
            let done = done.clone();
            let failed = failed.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while Instant::now() < end {
                    i += 1;
                    let ok = cycle(&rl, &format!("c:{t}:{i}"), ttl).await;
                    let counter = if ok { &done } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64()
    };

    let batched = {
        let done = Arc::new(AtomicU64::new(0));
        let t0 = Instant::now();
        let end = t0 + opts.phase;
        let mut tasks = Vec::new();
        for t in 0..opts.batch_tasks.max(1) {
            let rl = rl.clone();
            let done = done.clone();
            let keys: Vec<String> = (0..opts.batch_size).map(|i| format!("b:{t}:{i}")).collect();
            let failed = failed.clone();
            tasks.push(tokio::spawn(async move {
                while Instant::now() < end {
                    match rl.acquire_many(&keys, ttl).await {
                        Ok(b) => {
                            let n = b.len() as u64;
                            if rl.release_many(b).await.is_ok() {
                                done.fetch_add(n, Ordering::Relaxed);
                            } else {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64()
    };

    let healthy = rl.metrics().snapshot();
    let healthy_timeouts = healthy.masters.iter().map(|m| m.timeouts).sum();
    let healthy_errors = healthy.masters.iter().map(|m| m.errors).sum();
    let (hung, hung_nb) = if own.len() == 3 {
        own[2].pause()?;
        let with_breaker = hung_phase(&rl, "h1", ttl, opts.hung_samples).await;
        let no_breaker = Redlock::new(LockConfig {
            breaker_failures: u32::MAX,
            ..cfg.clone()
        })
        .await?;
        no_breaker.warm_up(Duration::from_millis(200)).await;
        // This instance meets the third master already hung, as a freshly
        // started process would.
        let without = hung_phase(&no_breaker, "h2", ttl, opts.hung_samples).await;
        own[2].resume()?;
        (Some(with_breaker), Some(without))
    } else {
        (None, None)
    };

    Ok(LockBenchReport {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_avg_1m,
        masters: urls.len(),
        own_masters: !own.is_empty(),
        master_timeout_ms: opts.master_timeout.as_secs_f64() * 1e3,
        pool_size: opts.pool_size,
        sequential_cycles_per_s: sequential.round(),
        concurrent_tasks: opts.concurrency,
        concurrent_cycles_per_s: concurrent.round(),
        batch_size: opts.batch_size,
        batch_tasks: opts.batch_tasks.max(1),
        batched_keys_per_s: batched.round(),
        healthy_timeouts,
        healthy_errors,
        healthy_failed_calls: failed.load(Ordering::Relaxed),
        hung_master: hung,
        hung_master_no_breaker: hung_nb,
    })
}

/// One acquire + release; true if both succeeded.
async fn cycle(rl: &Redlock, key: &str, ttl: Duration) -> bool {
    match rl.acquire(key, ttl).await {
        Ok(l) => rl.release(l).await.is_ok(),
        Err(_) => false,
    }
}

async fn hung_phase(rl: &Redlock, tag: &str, ttl: Duration, samples: usize) -> HungReport {
    let before = rl.metrics().snapshot();
    let mut lat = Vec::with_capacity(samples);
    let mut failures = 0;
    for i in 0..samples {
        let t0 = Instant::now();
        let r = rl.acquire(&format!("{tag}:{i}"), ttl).await;
        lat.push(t0.elapsed());
        match r {
            Ok(l) => {
                let _ = rl.release(l).await;
            }
            Err(_) => failures += 1,
        }
    }
    lat.sort();
    let pct = |p: f64| {
        let idx = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len().max(1)) - 1;
        lat.get(idx).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    let after = rl.metrics().snapshot();
    let hung = |s: &LockMetricsSnapshot| {
        s.masters
            .get(2)
            .map_or((0, 0), |m| (m.timeouts, m.breaker_rejections))
    };
    let (t0, r0) = hung(&before);
    let (t1, r1) = hung(&after);
    HungReport {
        samples,
        failures,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
        hung_master_timeouts: t1 - t0,
        hung_master_breaker_rejections: r1 - r0,
    }
}
