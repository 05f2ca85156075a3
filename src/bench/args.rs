//! `herald bench` flags: benchmark settings live with the benchmarks, not
//! among the production settings.

use clap::{Args, ValueEnum};

/// What `herald bench` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchScenario {
    /// The Redlock implementation alone (acquire/release cycles, batches, a hung master).
    Locks,
    /// Queue mechanics: M=50,000, W=2, C=64, L=0, file transport.
    S1,
    /// Scale-out: M=20,000, C=50, L=20 ms, W=1,2,4, file transport; reports the ratio to W·C/L.
    S2,
    /// S1's shape through the real webhook transport to an in-process receiver that waits L ms.
    Webhook,
    /// Steady enqueue at --rate per second for --seconds while the workers run; delivery lag percentiles.
    Lag,
    /// S1 while cleanup deletes a backlog of old sent rows, next to a plain S1 run.
    Cleanup,
    /// A healthy channel's throughput while another channel's receiver never answers,
    /// against the same channel alone (circuit breaker): M=20,000 on the healthy one, W=2.
    Breaker,
    /// S1's drain while another connection holds row locks on 1 % of the due rows, against the same drain
    /// without them: M=50,000, W=2 (--pairs alternating pairs; the lock is held at most --seconds, default 30).
    ForeignLocks,
    /// The database alone: the protocol's statements for M rows on --w connections (1,2), no workers, no Redis.
    Ceiling,
    /// S1 and a steady phase with the table already holding --finished rows, vs an empty table; and a --backlog drain timed per tenth.
    Scale,
    /// --rate per second for --duration (10 min) with cleanup on: lag p99 and worker RSS per --window-s, lost, duplicates.
    Soak,
}

impl BenchScenario {
    pub fn name(self) -> &'static str {
        match self {
            BenchScenario::Locks => "locks",
            BenchScenario::S1 => "s1",
            BenchScenario::S2 => "s2",
            BenchScenario::Webhook => "webhook",
            BenchScenario::Lag => "lag",
            BenchScenario::Cleanup => "cleanup",
            BenchScenario::Ceiling => "ceiling",
            BenchScenario::Breaker => "breaker",
            BenchScenario::ForeignLocks => "foreign-locks",
            BenchScenario::Scale => "scale",
            BenchScenario::Soak => "soak",
        }
    }
}

/// `herald bench` options. Every override is optional; the scenario gives the defaults.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub scenario: BenchScenario,
    /// Print each result as one JSON line on stdout (for scripts); without
    /// it, a short summary per run.
    #[arg(long)]
    pub json: bool,
    /// Notifications enqueued before timing (M).
    #[arg(long)]
    pub m: Option<u64>,
    /// Worker processes (W); comma-separated runs one measurement per value, e.g. 1,2,4.
    #[arg(long)]
    pub w: Option<String>,
    /// Concurrency per worker (C).
    #[arg(long)]
    pub c: Option<usize>,
    /// Simulated send latency in milliseconds (L).
    #[arg(long)]
    pub l_ms: Option<u64>,
    /// Distinct users the notifications are spread over.
    #[arg(long, default_value_t = 10_000)]
    pub users: u64,
    /// lag, scale, soak: notifications enqueued per second (default 1000; soak 2000).
    #[arg(long)]
    pub rate: Option<u64>,
    /// lag: seconds of steady enqueueing (default 30); scale: of its steady phase (10); cleanup: seconds the workers keep
    /// running after the drain to measure deletion alone (default 5); locks: seconds per phase (default 3);
    /// foreign-locks: longest the rows are held (default 30).
    #[arg(long)]
    pub seconds: Option<u64>,
    /// cleanup: old sent rows inserted before timing.
    #[arg(long, default_value_t = 200_000)]
    pub old_rows: u64,
    /// cleanup: HERALD_CLEANUP_MAX_BACKLOG given to the workers.
    #[arg(long, default_value_t = 1_000)]
    pub cleanup_max_backlog: u64,
    /// scale: finished rows already in the table, comma-separated: one run
    /// per value, after a run on the empty table.
    #[arg(long, default_value = "1000000,10000000")]
    pub finished: String,
    /// scale: due rows of the backlog drain (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    pub backlog: u64,
    /// soak: how long to enqueue (e.g. 600, 90s, 10m); default 10 minutes.
    #[arg(long, value_parser = crate::setting::parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// soak: seconds per reported window (lag percentiles, worker RSS).
    #[arg(long, default_value_t = 60)]
    pub window_s: u64,
    /// Give up (exit 1) when a run has not finished after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_s: u64,
    /// breaker, foreign-locks: alternating pairs (default 3);
    /// the JSON line gives each pair and the medians.
    #[arg(long)]
    pub pairs: Option<u32>,
    /// Run the workers from this `herald` executable instead of this one:
    /// two builds compared under the same harness, run after run.
    #[arg(long, value_name = "PATH")]
    pub worker_exe: Option<std::path::PathBuf>,
    /// Keep the benchmark databases (their names are printed on stderr).
    #[arg(long)]
    pub keep: bool,
    /// Add `db_per_1000_rows` to each result: the database server's work
    /// during the timed part (global status deltas, per-statement digests
    /// with performance_schema on, server CPU when local), per 1,000 rows.
    #[arg(long)]
    pub db_counters: bool,
    /// locks: benchmark the masters in HERALD_REDIS_URLS instead of three local
    /// redis-server processes (skips the hung-master phase).
    #[arg(long)]
    pub use_redis_urls: bool,
}
