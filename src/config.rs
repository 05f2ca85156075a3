//! Every setting, as a CLI flag with a `HERALD_*` environment equivalent.
//!
//! Parsing happens in two steps on purpose. clap reads raw values (URLs stay
//! plain strings there, because clap echoes a rejected value in its error and
//! a URL may hold a password); [`validate`](GlobalArgs::validate) then turns
//! them into typed settings, and every failure names the setting it is about
//! as both its environment variable and its flag. `main` exits with code 2
//! on any of them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::secret::{SecretString, SecretUrl};
use crate::transport::{TransportConfigError, TransportSettings};

/// A configuration problem, naming the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {env} ({flag}): {reason}")]
pub struct ConfigError {
    pub env: &'static str,
    pub flag: &'static str,
    pub reason: String,
}

impl ConfigError {
    pub fn new(env: &'static str, flag: &'static str, reason: impl Into<String>) -> Self {
        Self {
            env,
            flag,
            reason: reason.into(),
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about = "Sends scheduled notifications from a MySQL table; run as many workers as you like."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database if missing and apply the migrations (idempotent).
    Migrate,
    /// Run a worker: poll, lock, claim, send, finish; plus cleanup, stats and HTTP.
    Worker(Box<WorkerArgs>),
    /// Insert notifications from JSON lines (stdin or --file).
    Enqueue(EnqueueArgs),
    /// Counts by status, due backlog and the oldest due lag.
    Status {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run one cleanup pass now (operators).
    Cleanup(CleanupCmdArgs),
    /// Benchmarks; print one JSON line on stdout.
    Bench(BenchArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Settings every command shares.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// MySQL URL, mysql://user:password@host:port/database.
    #[arg(
        long,
        env = "HERALD_DATABASE_URL",
        default_value = "mysql://root@127.0.0.1:3306/herald",
        global = true,
        hide_env_values = true
    )]
    pub database_url: String,
    /// Redis masters for Redlock, comma-separated (redis:// or rediss://, user:password@ allowed).
    #[arg(
        long,
        env = "HERALD_REDIS_URLS",
        default_value = "redis://127.0.0.1:6379",
        global = true,
        hide_env_values = true
    )]
    pub redis_urls: String,
    /// Prefix of every Redis key Herald writes.
    #[arg(
        long,
        env = "HERALD_KEY_PREFIX",
        default_value = "herald:",
        global = true
    )]
    pub key_prefix: String,
    /// Region(s) this instance serves, comma-separated; also the default region of enqueued rows (the first one).
    #[arg(long, env = "HERALD_REGION", default_value = "default", global = true)]
    pub region: String,
    /// Log filter (tracing EnvFilter syntax), e.g. info or herald=debug,sqlx=warn.
    #[arg(long, env = "HERALD_LOG", default_value = "info", global = true)]
    pub log: String,
    /// Log format.
    #[arg(
        long,
        env = "HERALD_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
    /// MySQL connections per process.
    #[arg(long, env = "HERALD_DB_POOL_SIZE", default_value_t = 10, global = true)]
    pub db_pool_size: u32,
    /// Per-master Redis timeout in milliseconds (pool checkout included).
    #[arg(
        long,
        env = "HERALD_LOCK_MASTER_TIMEOUT_MS",
        default_value_t = 100,
        global = true
    )]
    pub lock_master_timeout_ms: u64,
}

/// [`GlobalArgs`] after validation.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: SecretUrl,
    pub redis_urls: Vec<SecretUrl>,
    pub key_prefix: String,
    pub regions: Vec<String>,
    pub log: String,
    pub log_format: LogFormat,
    pub db_pool_size: u32,
    pub lock_master_timeout: Duration,
}

impl GlobalArgs {
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let database_url = SecretUrl::parse(&self.database_url)
            .map_err(|r| ConfigError::new("HERALD_DATABASE_URL", "--database-url", r))?;
        if database_url.scheme() != "mysql" && database_url.scheme() != "mariadb" {
            return Err(ConfigError::new(
                "HERALD_DATABASE_URL",
                "--database-url",
                format!("scheme must be mysql://, got {}://", database_url.scheme()),
            ));
        }
        crate::store::migrate::database_name(&database_url).map_err(|e| {
            ConfigError::new("HERALD_DATABASE_URL", "--database-url", e.to_string())
        })?;

        let mut redis_urls: Vec<SecretUrl> = Vec::new();
        for (i, raw) in self.redis_urls.split(',').map(str::trim).enumerate() {
            let err = |r: String| {
                ConfigError::new(
                    "HERALD_REDIS_URLS",
                    "--redis-urls",
                    format!("entry {}: {r}", i + 1),
                )
            };
            if raw.is_empty() {
                return Err(err("empty entry".into()));
            }
            let url = SecretUrl::parse(raw).map_err(err)?;
            if url.scheme() != "redis" && url.scheme() != "rediss" {
                return Err(err(format!(
                    "scheme must be redis:// or rediss://, got {}://",
                    url.scheme()
                )));
            }
            if redis_urls
                .iter()
                .any(|u| crate::lock::config::same_master(u, &url))
            {
                return Err(err(format!(
                    "{url} is listed twice; each master must be distinct"
                )));
            }
            redis_urls.push(url);
        }

        if self.key_prefix.is_empty()
            || self.key_prefix.len() > 64
            || self.key_prefix.chars().any(char::is_whitespace)
        {
            return Err(ConfigError::new(
                "HERALD_KEY_PREFIX",
                "--key-prefix",
                "must be 1-64 characters without whitespace",
            ));
        }

        let regions = parse_regions(&self.region)?;

        tracing_subscriber::EnvFilter::try_new(&self.log)
            .map_err(|e| ConfigError::new("HERALD_LOG", "--log", format!("{:?}: {e}", self.log)))?;

        range(
            "HERALD_DB_POOL_SIZE",
            "--db-pool-size",
            self.db_pool_size as u64,
            1,
            1000,
        )?;
        range(
            "HERALD_LOCK_MASTER_TIMEOUT_MS",
            "--lock-master-timeout-ms",
            self.lock_master_timeout_ms,
            1,
            60_000,
        )?;

        Ok(Settings {
            database_url,
            redis_urls,
            key_prefix: self.key_prefix.clone(),
            regions,
            log: self.log.clone(),
            log_format: self.log_format,
            db_pool_size: self.db_pool_size,
            lock_master_timeout: Duration::from_millis(self.lock_master_timeout_ms),
        })
    }
}

fn parse_regions(raw: &str) -> Result<Vec<String>, ConfigError> {
    let mut out: Vec<String> = Vec::new();
    for r in raw.split(',').map(str::trim) {
        let ok = !r.is_empty()
            && r.len() <= crate::notification::MAX_REGION_LEN
            && r.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !ok {
            return Err(ConfigError::new(
                "HERALD_REGION",
                "--region",
                format!("{r:?} is not a region name (1-32 letters, digits, '_', '-', '.')"),
            ));
        }
        if !out.iter().any(|o| o == r) {
            out.push(r.to_owned());
        }
    }
    Ok(out)
}

fn range(
    env: &'static str,
    flag: &'static str,
    v: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    if v < min || v > max {
        return Err(ConfigError::new(
            env,
            flag,
            format!("{v} is out of range {min}..={max}"),
        ));
    }
    Ok(v)
}

/// Which key a worker locks before claiming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LockScope {
    /// One lock per notification: the most parallel.
    Item,
    /// One lock per user: a user's notifications go out one at a time, in due order.
    User,
}

/// `herald worker` settings.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Deliveries in flight per process.
    #[arg(long, env = "HERALD_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,
    /// Rows claimed per poll (at most).
    #[arg(long, env = "HERALD_BATCH_SIZE", default_value_t = 1000)]
    pub batch_size: usize,
    /// Lock time-to-live in milliseconds; also bounds the claim lease.
    #[arg(long, env = "HERALD_LOCK_TTL_MS", default_value_t = 30_000)]
    pub lock_ttl_ms: u64,
    /// Lock per notification (item) or per user (user).
    #[arg(long, env = "HERALD_LOCK_SCOPE", value_enum, default_value = "item")]
    pub lock_scope: LockScope,
    /// Longest idle back-off between polls, in milliseconds.
    #[arg(long, env = "HERALD_POLL_INTERVAL_MS", default_value_t = 500)]
    pub poll_interval_ms: u64,
    /// Per-delivery timeout in milliseconds (whole request).
    #[arg(long, env = "HERALD_SEND_TIMEOUT_MS", default_value_t = 10_000)]
    pub send_timeout_ms: u64,
    /// Attempts before a transiently failing row is marked failed.
    #[arg(long, env = "HERALD_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,
    /// First retry delay cap in milliseconds (full jitter, doubling per attempt).
    #[arg(long, env = "HERALD_RETRY_BASE_MS", default_value_t = 1_000)]
    pub retry_base_ms: u64,
    /// Largest retry delay in milliseconds.
    #[arg(long, env = "HERALD_RETRY_MAX_MS", default_value_t = 3_600_000)]
    pub retry_max_ms: u64,
    /// On SIGTERM/SIGINT, how long in-flight sends may take before their claims are handed back.
    #[arg(long, env = "HERALD_SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,
    /// Name recorded in claimed_by; defaults to hostname-pid.
    #[arg(long, env = "HERALD_WORKER_ID")]
    pub worker_id: Option<String>,

    /// URL the `webhook` channel posts to.
    #[arg(long, env = "HERALD_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// Standard Webhooks signing secret (whsec_<base64> or raw).
    #[arg(long, env = "HERALD_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<SecretString>,
    /// Extra channel routes: name=kind[:arg],... (kinds: webhook, log, file).
    #[arg(long, env = "HERALD_CHANNELS", default_value = "")]
    pub channels: String,
    /// File the `file` channel appends to.
    #[arg(long, env = "HERALD_FILE_PATH")]
    pub file_path: Option<PathBuf>,
    /// Simulated latency of the `file` transport, in milliseconds (benchmarks).
    #[arg(long, env = "HERALD_FILE_LATENCY_MS", default_value_t = 0)]
    pub file_latency_ms: u64,
    /// Response bytes read from a webhook receiver (for error reasons).
    #[arg(long, env = "HERALD_MAX_RESPONSE_BYTES", default_value_t = 65_536)]
    pub max_response_bytes: usize,

    #[command(flatten)]
    pub cleanup: CleanupArgs,

    /// Stats window in seconds; one instance per window logs fleet statistics. 0 = off.
    #[arg(long, env = "HERALD_STATS_INTERVAL_S", default_value_t = 60)]
    pub stats_interval_s: u64,
    /// Address of /livez, /readyz and /metrics; empty = off.
    #[arg(long, env = "HERALD_HTTP_ADDR", default_value = "0.0.0.0:9090")]
    pub http_addr: String,
    /// Deadline of the /readyz checks in milliseconds.
    #[arg(long, env = "HERALD_HEALTH_TIMEOUT_MS", default_value_t = 1_000)]
    pub health_timeout_ms: u64,
}

/// Cleanup settings, shared by `herald worker` and `herald cleanup`.
#[derive(Debug, Clone, Args)]
pub struct CleanupArgs {
    /// Run the cleanup task in this worker (true/false).
    #[arg(long = "cleanup", env = "HERALD_CLEANUP", default_value_t = true, action = clap::ArgAction::Set)]
    pub enabled: bool,
    /// Seconds between cleanup ticks (first tick after a jittered delay).
    #[arg(long, env = "HERALD_CLEANUP_INTERVAL_S", default_value_t = 60)]
    pub cleanup_interval_s: u64,
    /// Skip cleanup while more rows than this are due.
    #[arg(long, env = "HERALD_CLEANUP_MAX_BACKLOG", default_value_t = 1_000)]
    pub cleanup_max_backlog: u64,
    /// Rows per DELETE.
    #[arg(long, env = "HERALD_CLEANUP_BATCH", default_value_t = 500)]
    pub cleanup_batch: u64,
    /// Pause between DELETE batches, in milliseconds.
    #[arg(long, env = "HERALD_CLEANUP_PAUSE_MS", default_value_t = 50)]
    pub cleanup_pause_ms: u64,
    /// Longest a cleanup tick may run, in seconds.
    #[arg(long, env = "HERALD_CLEANUP_MAX_TICK_S", default_value_t = 30)]
    pub cleanup_max_tick_s: u64,
    /// Keep sent rows this long (e.g. 7d, 12h, 30m, 90s).
    #[arg(long, env = "HERALD_RETENTION_SENT", default_value = "7d", value_parser = parse_duration)]
    pub retention_sent: Duration,
    /// Keep failed rows this long.
    #[arg(long, env = "HERALD_RETENTION_FAILED", default_value = "30d", value_parser = parse_duration)]
    pub retention_failed: Duration,
    /// Keep expired (and cancelled) rows this long.
    #[arg(long, env = "HERALD_RETENTION_EXPIRED", default_value = "7d", value_parser = parse_duration)]
    pub retention_expired: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct CleanupCmdArgs {
    /// Run one pass and exit (the only mode; required for clarity).
    #[arg(long, required = true)]
    pub once: bool,
    /// Count what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub cleanup: CleanupArgs,
}

#[derive(Debug, Clone, Args)]
pub struct EnqueueArgs {
    /// Read JSON lines from this file instead of stdin.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Largest accepted payload, in bytes of compact JSON.
    #[arg(long, env = "HERALD_MAX_PAYLOAD_BYTES", default_value_t = 65_536)]
    pub max_payload_bytes: usize,
}

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
    /// The database alone: the protocol's statements for M rows on --w connections (1,2), no workers, no Redis.
    Ceiling,
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
        }
    }
}

/// `herald bench` options. Every override is optional; the scenario gives the defaults.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub what: Option<BenchScenario>,
    /// Same as the positional argument.
    #[arg(long, value_enum)]
    pub scenario: Option<BenchScenario>,
    /// Accepted for clarity: the result is always one JSON line per run on stdout.
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
    /// lag: notifications enqueued per second (default 1000).
    #[arg(long)]
    pub rate: Option<u64>,
    /// lag: seconds of steady enqueueing (default 30); cleanup: seconds the workers keep
    /// running after the drain to measure deletion alone (default 5); locks: seconds per phase (default 3).
    #[arg(long)]
    pub seconds: Option<u64>,
    /// cleanup: old sent rows inserted before timing.
    #[arg(long, default_value_t = 200_000)]
    pub old_rows: u64,
    /// cleanup: HERALD_CLEANUP_MAX_BACKLOG given to the workers.
    #[arg(long, default_value_t = 1_000)]
    pub cleanup_max_backlog: u64,
    /// Give up (exit 1) when a run has not finished after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_s: u64,
    /// Keep the benchmark databases (their names are printed on stderr).
    #[arg(long)]
    pub keep: bool,
    /// locks: benchmark the masters in HERALD_REDIS_URLS instead of three local
    /// redis-server processes (skips the hung-master phase).
    #[arg(long)]
    pub use_redis_urls: bool,
}

/// Validated worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub concurrency: usize,
    pub batch_size: usize,
    pub lock_ttl: Duration,
    pub lock_scope: LockScope,
    pub poll_interval: Duration,
    pub send_timeout: Duration,
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub shutdown_grace: Duration,
    pub worker_id: String,
    pub cleanup: Option<CleanupConfig>,
    pub stats_interval: Option<Duration>,
    pub http_addr: Option<SocketAddr>,
    pub health_timeout: Duration,
    pub transport: TransportSettings,
}

/// Validated cleanup settings.
#[derive(Debug, Clone)]
pub struct CleanupConfig {
    pub interval: Duration,
    pub max_backlog: u64,
    pub batch: u64,
    pub pause: Duration,
    pub max_tick: Duration,
    pub retention_sent: Duration,
    pub retention_failed: Duration,
    pub retention_expired: Duration,
}

impl CleanupArgs {
    pub fn validate(&self) -> Result<CleanupConfig, ConfigError> {
        range(
            "HERALD_CLEANUP_INTERVAL_S",
            "--cleanup-interval-s",
            self.cleanup_interval_s,
            1,
            86_400,
        )?;
        range(
            "HERALD_CLEANUP_BATCH",
            "--cleanup-batch",
            self.cleanup_batch,
            1,
            10_000,
        )?;
        range(
            "HERALD_CLEANUP_PAUSE_MS",
            "--cleanup-pause-ms",
            self.cleanup_pause_ms,
            0,
            60_000,
        )?;
        range(
            "HERALD_CLEANUP_MAX_TICK_S",
            "--cleanup-max-tick-s",
            self.cleanup_max_tick_s,
            1,
            86_400,
        )?;
        Ok(CleanupConfig {
            interval: Duration::from_secs(self.cleanup_interval_s),
            max_backlog: self.cleanup_max_backlog,
            batch: self.cleanup_batch,
            pause: Duration::from_millis(self.cleanup_pause_ms),
            max_tick: Duration::from_secs(self.cleanup_max_tick_s),
            retention_sent: self.retention_sent,
            retention_failed: self.retention_failed,
            retention_expired: self.retention_expired,
        })
    }
}

impl WorkerArgs {
    pub fn validate(&self) -> Result<WorkerConfig, ConfigError> {
        range(
            "HERALD_CONCURRENCY",
            "--concurrency",
            self.concurrency as u64,
            1,
            10_000,
        )?;
        range(
            "HERALD_BATCH_SIZE",
            "--batch-size",
            self.batch_size as u64,
            1,
            5_000,
        )?;
        range(
            "HERALD_LOCK_TTL_MS",
            "--lock-ttl-ms",
            self.lock_ttl_ms,
            100,
            3_600_000,
        )?;
        range(
            "HERALD_POLL_INTERVAL_MS",
            "--poll-interval-ms",
            self.poll_interval_ms,
            1,
            600_000,
        )?;
        range(
            "HERALD_SEND_TIMEOUT_MS",
            "--send-timeout-ms",
            self.send_timeout_ms,
            1,
            600_000,
        )?;
        range(
            "HERALD_MAX_ATTEMPTS",
            "--max-attempts",
            self.max_attempts as u64,
            1,
            1_000,
        )?;
        range(
            "HERALD_RETRY_MAX_MS",
            "--retry-max-ms",
            self.retry_max_ms,
            1,
            30 * 86_400_000,
        )?;
        range(
            "HERALD_RETRY_BASE_MS",
            "--retry-base-ms",
            self.retry_base_ms,
            1,
            self.retry_max_ms,
        )?;
        range(
            "HERALD_SHUTDOWN_GRACE_MS",
            "--shutdown-grace-ms",
            self.shutdown_grace_ms,
            0,
            3_600_000,
        )?;
        range(
            "HERALD_HEALTH_TIMEOUT_MS",
            "--health-timeout-ms",
            self.health_timeout_ms,
            1,
            60_000,
        )?;
        if self.send_timeout_ms * 2 > self.lock_ttl_ms {
            return Err(ConfigError::new(
                "HERALD_LOCK_TTL_MS",
                "--lock-ttl-ms",
                format!(
                    "{} ms must be at least twice HERALD_SEND_TIMEOUT_MS ({} ms), so a send always fits in the lock",
                    self.lock_ttl_ms, self.send_timeout_ms
                ),
            ));
        }
        let worker_id = match &self.worker_id {
            Some(id) if id.is_empty() || id.len() > 128 => {
                return Err(ConfigError::new(
                    "HERALD_WORKER_ID",
                    "--worker-id",
                    "must be 1-128 characters",
                ))
            }
            Some(id) => id.clone(),
            None => default_worker_id(),
        };
        let http_addr = if self.http_addr.trim().is_empty() {
            None
        } else {
            Some(self.http_addr.trim().parse().map_err(|e| {
                ConfigError::new(
                    "HERALD_HTTP_ADDR",
                    "--http-addr",
                    format!("{:?} is not host:port ({e})", self.http_addr),
                )
            })?)
        };
        let transport = self.transport_settings()?;
        Ok(WorkerConfig {
            transport,
            concurrency: self.concurrency,
            batch_size: self.batch_size,
            lock_ttl: Duration::from_millis(self.lock_ttl_ms),
            lock_scope: self.lock_scope,
            poll_interval: Duration::from_millis(self.poll_interval_ms),
            send_timeout: Duration::from_millis(self.send_timeout_ms),
            max_attempts: self.max_attempts,
            retry_base: Duration::from_millis(self.retry_base_ms),
            retry_max: Duration::from_millis(self.retry_max_ms),
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
            worker_id,
            cleanup: if self.cleanup.enabled {
                Some(self.cleanup.validate()?)
            } else {
                None
            },
            stats_interval: (self.stats_interval_s > 0)
                .then(|| Duration::from_secs(self.stats_interval_s)),
            http_addr,
            health_timeout: Duration::from_millis(self.health_timeout_ms),
        })
    }
}

impl WorkerArgs {
    fn transport_settings(&self) -> Result<TransportSettings, ConfigError> {
        let webhook_url = match self.webhook_url.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(raw) => {
                // Parsed through SecretUrl so a bad value's error never
                // echoes credentials embedded in it.
                let url = SecretUrl::parse(raw)
                    .map_err(|r| ConfigError::new("HERALD_WEBHOOK_URL", "--webhook-url", r))?;
                if url.scheme() != "http" && url.scheme() != "https" {
                    return Err(ConfigError::new(
                        "HERALD_WEBHOOK_URL",
                        "--webhook-url",
                        format!(
                            "scheme must be http:// or https://, got {}://",
                            url.scheme()
                        ),
                    ));
                }
                Some(url.url().clone())
            }
        };
        let channels =
            crate::transport::parse_channels(&self.channels).map_err(transport_config_error)?;
        range(
            "HERALD_MAX_RESPONSE_BYTES",
            "--max-response-bytes",
            self.max_response_bytes as u64,
            1,
            64 << 20,
        )?;
        range(
            "HERALD_FILE_LATENCY_MS",
            "--file-latency-ms",
            self.file_latency_ms,
            0,
            600_000,
        )?;
        Ok(TransportSettings {
            webhook_url,
            // An empty variable (a template left blank) means "no secret".
            webhook_secret: self
                .webhook_secret
                .clone()
                .filter(|s| !s.expose().is_empty()),
            send_timeout: Duration::from_millis(self.send_timeout_ms),
            max_response_bytes: self.max_response_bytes,
            file_path: self.file_path.clone().filter(|p| !p.as_os_str().is_empty()),
            file_latency: Duration::from_millis(self.file_latency_ms),
            channels,
        })
    }
}

/// Maps a transport set-up error to the setting it is about.
pub fn transport_config_error(e: TransportConfigError) -> ConfigError {
    let (env, flag) = match &e {
        TransportConfigError::Secret(_) => ("HERALD_WEBHOOK_SECRET", "--webhook-secret"),
        TransportConfigError::WebhookUrl(_) => ("HERALD_WEBHOOK_URL", "--webhook-url"),
        TransportConfigError::File { .. } => ("HERALD_FILE_PATH", "--file-path"),
        _ => ("HERALD_CHANNELS", "--channels"),
    };
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    let reason = text
        .strip_prefix(&format!("{env}: "))
        .map(str::to_owned)
        .unwrap_or(text);
    ConfigError::new(env, flag, reason)
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "herald".into());
    format!("{host}-{}", std::process::id())
}

/// Parses `90s`, `30m`, `12h`, `7d` (or plain seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 30m, 12h or 7d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use s, m, h or d)")),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("7w").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
