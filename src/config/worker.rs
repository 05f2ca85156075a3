//! `herald worker` settings: flags, then [`WorkerConfig`] after validation.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::RangedU64ValueParser;
use clap::{Args, ValueEnum};

use super::channels_file;
use crate::cleanup::config::{CleanupConfig, CleanupTaskArgs};
use crate::policy::{BreakerPolicy, ChannelPolicies, RetryPolicy, RetrySchedule};
use crate::secret::SecretString;
use crate::setting::ConfigError;
use crate::transport::{TransportConfigError, TransportSettings};

/// Default of `HERALD_BREAKER_FAILURES`. A healthy receiver with a 1 %
/// error rate fails ten times in a row about once in 10^20 deliveries, while
/// a dead one gets there within the first batch; fewer would open on
/// ordinary flakiness, many more would keep send slots tied up in timeouts
/// for longer. The default cool-down (30 s) is the first retry delay: a
/// routine deploy is over by the first probe, and a dead receiver gets one
/// request per 30 s from the whole fleet.
pub const DEFAULT_BREAKER_FAILURES: u32 = 10;

/// A breaker's cool-down: `30s`, `500ms`, `2m`; more than zero, at most a day.
fn parse_cool_down(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like 30s, 500ms or 2m ({e})"))?;
    if d.is_zero() || d > Duration::from_secs(86_400) {
        return Err(format!("{s:?} must be more than 0 and at most 1d"));
    }
    Ok(d)
}

/// Which key a worker locks before claiming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LockScope {
    /// One lock per notification: the most parallel.
    Item,
    /// One lock per user: a user's notifications go out one at a time, in due order.
    User,
}

impl LockScope {
    /// The setting's value, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            LockScope::Item => "item",
            LockScope::User => "user",
        }
    }
}

/// Which delivery attempts leave a row in `notification_attempts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum RecordAttempts {
    /// Failed attempts only (retried or failed): what operators need to
    /// see, at no cost for the deliveries that simply worked.
    #[default]
    Failures,
    /// Every attempt, sent ones included (one more row per delivery).
    All,
}

impl RecordAttempts {
    /// The setting's value, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordAttempts::Failures => "failures",
            RecordAttempts::All => "all",
        }
    }
}

/// `herald worker` settings.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Deliveries in flight per process.
    #[arg(long, env = "HERALD_CONCURRENCY", default_value_t = 64,
        value_parser = RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    pub concurrency: usize,
    /// Rows claimed per poll (at most).
    #[arg(long, env = "HERALD_BATCH_SIZE", default_value_t = 1000,
        value_parser = RangedU64ValueParser::<usize>::new().range(1..=5_000))]
    pub batch_size: usize,
    /// Lock time-to-live in milliseconds; also bounds the claim lease.
    #[arg(long, env = "HERALD_LOCK_TTL_MS", default_value_t = 30_000,
        value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub lock_ttl_ms: u64,
    /// Lock per notification (item) or per user (user).
    #[arg(long, env = "HERALD_LOCK_SCOPE", value_enum, default_value = "item")]
    pub lock_scope: LockScope,
    /// Longest idle back-off between polls, in milliseconds.
    #[arg(long, env = "HERALD_POLL_INTERVAL_MS", default_value_t = 500,
        value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub poll_interval_ms: u64,
    /// Per-delivery timeout in milliseconds (whole request).
    #[arg(long, env = "HERALD_SEND_TIMEOUT_MS", default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub send_timeout_ms: u64,
    /// Delays between delivery attempts, e.g. 30s,2m,10m,30m,2h,8h,16h (the
    /// default: eight attempts over ~27 h); the number of attempts is one more
    /// than the number of delays; `none` = no retries.
    #[arg(long, env = "HERALD_RETRY_SCHEDULE", value_name = "DELAYS")]
    pub retry_schedule: Option<String>,
    /// Least delay after a timeout or a 429, whatever the schedule says.
    #[arg(long, env = "HERALD_RETRY_THROTTLE_FLOOR", default_value = "10s",
        value_parser = crate::setting::parse_duration)]
    pub retry_throttle_floor: Duration,
    /// Longest `Retry-After` honoured; a receiver asking for more gets this.
    #[arg(long, env = "HERALD_RETRY_AFTER_MAX", default_value = "24h",
        value_parser = crate::setting::parse_duration)]
    pub retry_after_max: Duration,
    /// Older shape of the schedule: attempts in all (with HERALD_RETRY_BASE_MS
    /// and HERALD_RETRY_MAX_MS: base × 2^n, capped). Not with HERALD_RETRY_SCHEDULE.
    #[arg(long, env = "HERALD_MAX_ATTEMPTS",
        value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub max_attempts: Option<u32>,
    /// Older shape: first retry delay in milliseconds (default 1000).
    #[arg(long, env = "HERALD_RETRY_BASE_MS",
        value_parser = clap::value_parser!(u64).range(1..=30 * 86_400_000))]
    pub retry_base_ms: Option<u64>,
    /// Older shape: largest retry delay in milliseconds (default 3600000).
    #[arg(long, env = "HERALD_RETRY_MAX_MS",
        value_parser = clap::value_parser!(u64).range(1..=30 * 86_400_000))]
    pub retry_max_ms: Option<u64>,
    /// Circuit breaker of every channel (a channel's `breaker` in HERALD_CONFIG
    /// wins): consecutive transient failures, fleet-wide, that open it; 0 = off.
    #[arg(long, env = "HERALD_BREAKER_FAILURES", default_value_t = DEFAULT_BREAKER_FAILURES,
        value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub breaker_failures: u32,
    /// How long an open breaker holds its channel's rows before one probe
    /// delivery decides (e.g. 30s, 500ms, 2m; up to 1d).
    #[arg(long, env = "HERALD_BREAKER_COOL_DOWN", default_value = "30s",
        value_parser = parse_cool_down)]
    pub breaker_cool_down: Duration,
    /// Attempts kept in the attempt history: failures (retried or failed) or all.
    #[arg(
        long,
        env = "HERALD_RECORD_ATTEMPTS",
        value_enum,
        default_value = "failures"
    )]
    pub record_attempts: RecordAttempts,
    /// On SIGTERM/SIGINT, how long in-flight sends may take before their claims are handed back.
    #[arg(long, env = "HERALD_SHUTDOWN_GRACE_MS", default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub shutdown_grace_ms: u64,
    /// Name recorded in claimed_by; defaults to hostname-pid.
    #[arg(long, env = "HERALD_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Channel config file (TOML): per-channel receiver, secrets, send
    /// timeout, retry schedule, rate limit, concurrency cap and breaker.
    #[arg(long, env = "HERALD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// URL the `webhook` channel posts to.
    #[arg(long, env = "HERALD_WEBHOOK_URL", hide_env_values = true)]
    pub webhook_url: Option<String>,
    /// Standard Webhooks signing secret (whsec_ followed by base64, or raw).
    #[arg(long, env = "HERALD_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<SecretString>,
    /// Extra channel routes: name=kind or name=kind:arg, comma-separated (kinds: webhook, log, file).
    #[arg(
        long,
        env = "HERALD_CHANNELS",
        default_value = "",
        hide_env_values = true
    )]
    pub channels: String,
    /// File the `file` channel appends to.
    #[arg(long, env = "HERALD_FILE_PATH")]
    pub file_path: Option<PathBuf>,
    /// Latency the `file` channel simulates before each write, in milliseconds
    /// (a slow receiver, for benchmarks and demos).
    #[arg(long, env = "HERALD_FILE_LATENCY_MS", default_value_t = 0,
        value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub file_latency_ms: u64,
    /// Response bytes read from a webhook receiver (for error reasons).
    #[arg(long, env = "HERALD_MAX_RESPONSE_BYTES", default_value_t = 65_536,
        value_parser = RangedU64ValueParser::<usize>::new().range(1..=64 << 20))]
    pub max_response_bytes: usize,

    #[command(flatten)]
    pub cleanup: CleanupTaskArgs,

    #[command(flatten)]
    pub admin: crate::config::admin::AdminArgs,

    /// Stats window in seconds; one instance per window logs fleet statistics. 0 = off.
    #[arg(long, env = "HERALD_STATS_INTERVAL_S", default_value_t = 60)]
    pub stats_interval_s: u64,
    /// Address of /livez, /readyz and /metrics; empty = off.
    #[arg(long, env = "HERALD_HTTP_ADDR", default_value = "0.0.0.0:9090")]
    pub http_addr: String,
    /// Deadline of the /readyz checks in milliseconds.
    #[arg(long, env = "HERALD_HEALTH_TIMEOUT_MS", default_value_t = 1_000,
        value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub health_timeout_ms: u64,
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
    /// When and how often a failed delivery is tried again.
    pub retry: RetryPolicy,
    /// What a channel sets differently from the process-wide settings.
    pub channel_policies: ChannelPolicies,
    /// The breaker of channels that set none; `None`: off.
    pub breaker: Option<BreakerPolicy>,
    /// Which attempts go into `notification_attempts`.
    pub record_attempts: RecordAttempts,
    pub shutdown_grace: Duration,
    pub worker_id: String,
    pub cleanup: Option<CleanupConfig>,
    pub stats_interval: Option<Duration>,
    pub http_addr: Option<SocketAddr>,
    pub health_timeout: Duration,
    pub transport: TransportSettings,
    /// The admin API and console, when `HERALD_ADMIN_ADDR` is set.
    pub admin: Option<crate::config::admin::AdminConfig>,
}

impl WorkerArgs {
    /// The retry policy from `HERALD_RETRY_SCHEDULE`, or from the older
    /// `HERALD_MAX_ATTEMPTS` / `HERALD_RETRY_BASE_MS` / `HERALD_RETRY_MAX_MS`
    /// (translated into a schedule, so the worker knows one shape only).
    /// Both at once is an error: one of them would be silently ignored.
    fn retry_policy(&self) -> Result<RetryPolicy, ConfigError> {
        const ENV: &str = "HERALD_RETRY_SCHEDULE";
        const FLAG: &str = "--retry-schedule";
        let legacy = self.max_attempts.is_some()
            || self.retry_base_ms.is_some()
            || self.retry_max_ms.is_some();
        let schedule = match (&self.retry_schedule, legacy) {
            (Some(_), true) => {
                return Err(ConfigError::new(
                    ENV,
                    FLAG,
                    "set either the schedule or HERALD_MAX_ATTEMPTS/HERALD_RETRY_BASE_MS/HERALD_RETRY_MAX_MS, not both",
                ))
            }
            (Some(raw), false) => RetrySchedule::parse(raw)
                .map_err(|e| ConfigError::new(ENV, FLAG, e.to_string()))?,
            (None, true) => {
                let base = self.retry_base_ms.unwrap_or(1_000);
                let max = self.retry_max_ms.unwrap_or(3_600_000);
                if base > max {
                    return Err(ConfigError::new(
                        "HERALD_RETRY_BASE_MS",
                        "--retry-base-ms",
                        format!("{base} is out of range 1..={max} (HERALD_RETRY_MAX_MS)"),
                    ));
                }
                RetrySchedule::exponential(
                    Duration::from_millis(base),
                    Duration::from_millis(max),
                    self.max_attempts.unwrap_or(5),
                )
            }
            (None, false) => RetrySchedule::default(),
        };
        Ok(RetryPolicy {
            schedule,
            throttle_floor: self.retry_throttle_floor,
            retry_after_cap: self.retry_after_max,
        })
    }

    /// What clap cannot check: relations between settings and parsed
    /// values. Ranges are checked by clap when the flags are read.
    pub fn validate(&self) -> Result<WorkerConfig, ConfigError> {
        let retry = self.retry_policy()?;
        let file = match self.config.as_deref() {
            Some(path) if !path.as_os_str().is_empty() => Some(channels_file::load(path)?),
            _ => None,
        };
        let lock_ttl = Duration::from_millis(self.lock_ttl_ms);
        let env_timeout = Duration::from_millis(self.send_timeout_ms);
        // The file's [defaults] send_timeout replaces the variable; only
        // the timeout in use has to fit in the lock.
        let send_timeout = file
            .as_ref()
            .map_or(env_timeout, |f| f.default_send_timeout(env_timeout));
        if let Some(f) = &file {
            f.check_lock_ttl(lock_ttl)?;
        }
        if send_timeout == env_timeout && self.send_timeout_ms * 2 > self.lock_ttl_ms {
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
        let mut transport = self.transport_settings()?;
        let channel_policies = match &file {
            Some(f) => f.apply(&mut transport)?,
            None => ChannelPolicies::default(),
        };
        Ok(WorkerConfig {
            transport,
            concurrency: self.concurrency,
            batch_size: self.batch_size,
            lock_ttl,
            lock_scope: self.lock_scope,
            poll_interval: Duration::from_millis(self.poll_interval_ms),
            send_timeout,
            retry,
            channel_policies,
            breaker: (self.breaker_failures > 0).then_some(BreakerPolicy {
                failures: self.breaker_failures,
                cool_down: self.breaker_cool_down,
            }),
            record_attempts: self.record_attempts,
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
            admin: self.admin.validate()?,
        })
    }

    fn transport_settings(&self) -> Result<TransportSettings, ConfigError> {
        let webhook_url = match self.webhook_url.as_deref().map(str::trim) {
            None | Some("") => None,
            // The transports' own rule, so the URL is judged the same way
            // here (exit 2 at start-up) and by library callers of
            // `Transports::from_settings`. Its errors never echo the URL.
            Some(raw) => Some(
                crate::transport::parse_webhook_url(raw)
                    .map_err(|r| ConfigError::new("HERALD_WEBHOOK_URL", "--webhook-url", r))?,
            ),
        };
        let channels =
            crate::transport::parse_channels(&self.channels).map_err(transport_config_error)?;
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
            channel_options: Default::default(),
        })
    }
}

/// Maps a transport set-up error to the setting it is about.
pub fn transport_config_error(e: TransportConfigError) -> ConfigError {
    let (env, flag) = match &e {
        TransportConfigError::Secret(_) => ("HERALD_WEBHOOK_SECRET", "--webhook-secret"),
        TransportConfigError::WebhookUrl(_) => ("HERALD_WEBHOOK_URL", "--webhook-url"),
        TransportConfigError::File { .. } => ("HERALD_FILE_PATH", "--file-path"),
        TransportConfigError::ChannelSecret { .. } => ("HERALD_CONFIG", "--config"),
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
