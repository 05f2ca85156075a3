//! Cleanup settings, beside the service they configure: shared by
//! `herald worker` (the periodic task) and `herald cleanup` (one pass).

use std::time::Duration;

use clap::Args;

use crate::setting::{parse_duration, ConfigError};
use crate::store::prune::Retention;

/// Default of `HERALD_CLEANUP_INTERVAL_S`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// The periodic task's flags: `herald worker` only.
#[derive(Debug, Clone, Args)]
pub struct CleanupTaskArgs {
    /// Run the cleanup task in this worker (true/false).
    #[arg(long = "cleanup", env = "HERALD_CLEANUP", default_value_t = true, action = clap::ArgAction::Set)]
    pub enabled: bool,
    /// Seconds between cleanup ticks (first tick after a jittered delay).
    #[arg(long, env = "HERALD_CLEANUP_INTERVAL_S", default_value_t = DEFAULT_INTERVAL.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub cleanup_interval_s: u64,
    #[command(flatten)]
    pub pass: CleanupArgs,
}

/// What one pass does, flattened into `herald worker` and `herald cleanup`.
#[derive(Debug, Clone, Args)]
pub struct CleanupArgs {
    /// Skip cleanup while more rows than this are due.
    #[arg(long, env = "HERALD_CLEANUP_MAX_BACKLOG", default_value_t = 1_000)]
    pub cleanup_max_backlog: u64,
    /// Rows per DELETE.
    #[arg(long, env = "HERALD_CLEANUP_BATCH", default_value_t = 500,
        value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub cleanup_batch: u64,
    /// Pause between DELETE batches, in milliseconds.
    #[arg(long, env = "HERALD_CLEANUP_PAUSE_MS", default_value_t = 50,
        value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub cleanup_pause_ms: u64,
    /// Longest a cleanup tick may run, in seconds.
    #[arg(long, env = "HERALD_CLEANUP_MAX_TICK_S", default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub cleanup_max_tick_s: u64,
    /// Keep sent rows this long (e.g. 7d, 12h, 30m, 90s; at most 100 years).
    #[arg(long, env = "HERALD_RETENTION_SENT", default_value = "7d", value_parser = parse_duration)]
    pub retention_sent: Duration,
    /// Keep failed rows this long.
    #[arg(long, env = "HERALD_RETENTION_FAILED", default_value = "30d", value_parser = parse_duration)]
    pub retention_failed: Duration,
    /// Keep expired (and cancelled) rows this long.
    #[arg(long, env = "HERALD_RETENTION_EXPIRED", default_value = "7d", value_parser = parse_duration)]
    pub retention_expired: Duration,
}

/// `herald cleanup` flags.
#[derive(Debug, Clone, Args)]
pub struct CleanupCmdArgs {
    /// Accepted and ignored: one pass is the only mode (older scripts pass it).
    #[arg(long, hide = true)]
    pub once: bool,
    /// Count what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub cleanup: CleanupArgs,
}

/// Validated cleanup settings.
#[derive(Debug, Clone)]
pub struct CleanupConfig {
    pub interval: Duration,
    pub max_backlog: u64,
    pub batch: u64,
    pub pause: Duration,
    pub max_tick: Duration,
    pub retention: Retention,
}

impl CleanupTaskArgs {
    pub fn validate(&self) -> Result<CleanupConfig, ConfigError> {
        Ok(CleanupConfig {
            interval: Duration::from_secs(self.cleanup_interval_s),
            ..self.pass.validate()?
        })
    }
}

impl CleanupArgs {
    /// Ranges are checked by clap when the flags are read; this only builds
    /// the typed value (with the default interval: a single pass has none).
    /// The `Result` stays for settings that will need more.
    pub fn validate(&self) -> Result<CleanupConfig, ConfigError> {
        Ok(CleanupConfig {
            interval: DEFAULT_INTERVAL,
            max_backlog: self.cleanup_max_backlog,
            batch: self.cleanup_batch,
            pause: Duration::from_millis(self.cleanup_pause_ms),
            max_tick: Duration::from_secs(self.cleanup_max_tick_s),
            retention: Retention {
                sent: self.retention_sent,
                failed: self.retention_failed,
                expired: self.retention_expired,
            },
        })
    }
}
