//! `herald bench`: the shared benchmark workload (see `DESIGN.md`, section
//! "Benchmark workload") run against real `herald worker` processes.
//!
//! Every run gets a fresh `herald_bench_<random>` database on the configured
//! server and its own Redis key prefix; M notifications for 10,000 users are
//! enqueued before timing; W worker child processes (this same binary) are
//! started and timed until all M rows are finished; then the workers get
//! SIGTERM and the delivered ids are checked for duplicates and losses.
//! Results go to stdout, one per run: a JSON line with `--json`, a short
//! summary without; progress goes to stderr.
//!
//! * [`args`] — the `herald bench` flags and scenarios.
//! * [`workload`] — the database of one run and the bulk inserts.
//! * [`fleet`] — the worker child processes (killed on drop).
//! * [`drain`] — S1/S2/webhook/cleanup: enqueue, start, time, stop, check.
//! * [`delivered`] — reading what the file transport wrote.
//! * [`receiver`] — the in-process webhook receiver.
//! * [`lag`] — steady enqueue, delivery lag percentiles.
//! * [`cleanup`] — S1 next to S1 with a cleanup backlog.
//! * [`breaker`] — a healthy channel's throughput beside a dead one
//!   (circuit breaker), against the channel alone.
//! * [`ceiling`] — the protocol's statements alone, no workers: the
//!   database's bound on S1.
//! * [`report`] — the JSON line.
//! * [`locks`] — `herald bench locks`: the lock library alone, as any
//!   caller uses it.
//! * [`redis_servers`], [`mariadb_server`] — local throwaway servers (also
//!   used by `herald demo` and the integration tests), found by
//!   [`programs`] on PATH or in /usr/sbin.

pub mod args;
pub mod breaker;
pub mod ceiling;
pub mod cleanup;
pub mod delivered;
pub mod drain;
pub mod fleet;
pub mod lag;
pub mod locks;
pub mod mariadb_server;
pub mod programs;
pub mod receiver;
pub mod redis_servers;
pub mod report;
pub mod workload;

use std::process::ExitCode;
use std::time::Duration;

use crate::config::Settings;
use crate::setting::ConfigError;

pub use args::{BenchArgs, BenchScenario};

/// The resolved parameters of one invocation.
#[derive(Debug, Clone)]
pub struct Params {
    pub scenario: BenchScenario,
    pub m: u64,
    /// One measurement per entry.
    pub ws: Vec<usize>,
    pub c: usize,
    pub l_ms: u64,
    pub users: u64,
    pub rate: u64,
    pub seconds: u64,
    pub old_rows: u64,
    pub cleanup_max_backlog: u64,
    pub timeout: Duration,
    /// breaker: alone / beside pairs, run alternately.
    pub pairs: u32,
    pub keep: bool,
    /// `--json`: one JSON line per run instead of a summary.
    pub json: bool,
}

impl Params {
    /// Scenario defaults, then the overrides.
    pub fn resolve(args: &BenchArgs) -> Result<Params, ConfigError> {
        let scenario = args.scenario;
        // (M, W, C, L) of each scenario.
        let (m, ws, c, l_ms, seconds) = match scenario {
            BenchScenario::S2 => (20_000, vec![1, 2, 4], 50, 20, 0),
            BenchScenario::Lag => (0, vec![2], 64, 0, 30),
            BenchScenario::Cleanup => (50_000, vec![2], 64, 0, 5),
            BenchScenario::Ceiling => (50_000, vec![1, 2], 1, 0, 0),
            BenchScenario::Locks => (0, vec![1], 64, 0, 3),
            BenchScenario::S1 | BenchScenario::Webhook => (50_000, vec![2], 64, 0, 0),
            BenchScenario::Breaker => (20_000, vec![2], 64, 0, 0),
        };
        let ws = match &args.w {
            None => ws,
            Some(raw) => {
                let parsed: Result<Vec<usize>, _> =
                    raw.split(',').map(|p| p.trim().parse::<usize>()).collect();
                match parsed {
                    Ok(v) if !v.is_empty() && v.iter().all(|w| (1..=64).contains(w)) => v,
                    _ => {
                        return Err(ConfigError::new(
                            "herald bench",
                            "--w",
                            format!("{raw:?} is not a comma-separated list of 1..=64"),
                        ))
                    }
                }
            }
        };
        let c = args.c.unwrap_or(c);
        if !(1..=10_000).contains(&c) {
            return Err(ConfigError::new(
                "herald bench",
                "--c",
                format!("{c} is out of range 1..=10000"),
            ));
        }
        let m = args.m.unwrap_or(m);
        if scenario != BenchScenario::Lag && scenario != BenchScenario::Locks && m == 0 {
            return Err(ConfigError::new("herald bench", "--m", "must be positive"));
        }
        let rate = args.rate.unwrap_or(1_000);
        if scenario == BenchScenario::Lag && !(1..=1_000_000).contains(&rate) {
            return Err(ConfigError::new(
                "herald bench",
                "--rate",
                "must be 1..=1000000",
            ));
        }
        if args.users == 0 {
            return Err(ConfigError::new(
                "herald bench",
                "--users",
                "must be positive",
            ));
        }
        Ok(Params {
            scenario,
            m,
            ws,
            c,
            l_ms: args.l_ms.unwrap_or(l_ms),
            users: args.users,
            rate,
            seconds: args.seconds.unwrap_or(seconds),
            old_rows: args.old_rows,
            cleanup_max_backlog: args.cleanup_max_backlog,
            timeout: Duration::from_secs(args.timeout_s.max(1)),
            pairs: match args.pairs {
                None => 3,
                Some(n @ 1..=100) => n,
                Some(n) => {
                    return Err(ConfigError::new(
                        "herald bench",
                        "--pairs",
                        format!("{n} is out of range 1..=100"),
                    ))
                }
            },
            keep: args.keep,
            json: args.json,
        })
    }
}

/// Runs `herald bench`. Exit code 1 when a run saw duplicates or losses
/// (the JSON line is printed anyway).
pub async fn run(settings: Settings, args: BenchArgs) -> anyhow::Result<ExitCode> {
    let params = Params::resolve(&args)?;
    let clean = match params.scenario {
        BenchScenario::Locks => {
            locks(&settings, &params, args.use_redis_urls).await?;
            true
        }
        BenchScenario::S1 | BenchScenario::S2 | BenchScenario::Webhook => {
            let mut clean = true;
            for &w in &params.ws {
                let out = drain::run(&settings, &params, w, &drain::Extras::default()).await?;
                clean &= out.report.is_clean();
                report::emit(&out.report, params.json)?;
            }
            clean
        }
        BenchScenario::Lag => {
            let mut clean = true;
            for &w in &params.ws {
                let r = lag::run(&settings, &params, w).await?;
                clean &= r.is_clean();
                report::emit(&r, params.json)?;
            }
            clean
        }
        BenchScenario::Ceiling => {
            let mut clean = true;
            for &streams in &params.ws {
                let r = ceiling::run(&settings, &params, streams).await?;
                clean &= r.is_clean();
                report::emit(&r, params.json)?;
            }
            clean
        }
        BenchScenario::Breaker => {
            let mut clean = true;
            for &w in &params.ws {
                let r = breaker::run(&settings, &params, w).await?;
                clean &= r.is_clean();
                report::emit(&r, params.json)?;
            }
            clean
        }
        BenchScenario::Cleanup => {
            let mut clean = true;
            for &w in &params.ws {
                let r = cleanup::run(&settings, &params, w).await?;
                clean &= r.is_clean();
                report::emit(&r, params.json)?;
            }
            clean
        }
    };
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn locks(settings: &Settings, params: &Params, external: bool) -> anyhow::Result<()> {
    use locks::LockBenchOpts;
    let urls = if external {
        settings.redis_urls.clone()
    } else {
        Vec::new()
    };
    let opts = LockBenchOpts {
        phase: Duration::from_secs(params.seconds.max(1)),
        concurrency: params.c,
        ..LockBenchOpts::default()
    };
    eprintln!(
        "bench locks: {} ({}s per phase)",
        if external {
            "HERALD_REDIS_URLS"
        } else {
            "three local redis-server processes"
        },
        opts.phase.as_secs()
    );
    let report = locks::run_lock_bench(urls, opts).await?;
    #[derive(serde::Serialize)]
    struct Line<'a> {
        system: &'static str,
        scenario: &'static str,
        #[serde(flatten)]
        report: &'a locks::LockBenchReport,
    }
    report::print_line(&Line {
        system: "herald",
        scenario: "locks",
        report: &report,
    })
}
