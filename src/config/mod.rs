//! Settings, as CLI flags with `HERALD_*` environment equivalents, split by
//! the command they belong to:
//!
//! * this module — the global settings every command shares ([`GlobalArgs`]
//!   → [`Settings`]);
//! * [`worker`] — `herald worker` ([`WorkerArgs`] → [`WorkerConfig`]);
//! * [`channels_file`] — the channel config file (`HERALD_CONFIG`), merged
//!   into the worker's transports and per-channel policies;
//! * [`enqueue`] — `herald enqueue`;
//! * [`admin`] — the admin API and console (`herald worker`, `herald admin`);
//! * [`ops`] — `herald show`, `list`, `retry`, `cancel`;
//! * cleanup's settings live beside the service they configure
//!   ([`crate::cleanup::config`]), the benchmark's in [`crate::bench::args`];
//! * [`crate::setting`] — the error type and duration syntax they all share.
//!
//! Parsing happens in two steps on purpose. clap reads raw values and checks
//! every numeric range (URLs stay plain strings there, because clap echoes a
//! rejected value in its error and a URL may hold a password); `validate`
//! then turns them into typed settings, and every failure names the setting
//! it is about as both its environment variable and its flag. The CLI exits
//! with code 2 on any of them.

pub mod admin;
pub mod channels_file;
pub mod enqueue;
pub mod ops;
pub mod worker;

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::lock::config::DEFAULT_MASTER_TIMEOUT;
use crate::lock::{LockConfig, LockConfigError};
use crate::secret::SecretUrl;

pub use crate::setting::{parse_duration, ConfigError};
pub use crate::telemetry::LogFormat;
pub use enqueue::EnqueueArgs;
pub use worker::{LockScope, RecordAttempts, WorkerArgs, WorkerConfig};

/// Settings every command shares. Listed under their own heading in every
/// command's help, apart from the command's own flags.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
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
    /// PEM file of the CA that signed the rediss:// masters' certificates (a private CA); default: the public web roots.
    #[arg(long, env = "HERALD_REDIS_CA_FILE", global = true)]
    pub redis_ca_file: Option<PathBuf>,
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
    #[arg(
        long,
        env = "HERALD_DB_POOL_SIZE",
        default_value_t = 10,
        global = true,
        value_parser = clap::value_parser!(u32).range(1..=1000)
    )]
    pub db_pool_size: u32,
    /// Per-master Redis timeout in milliseconds (pool checkout included).
    #[arg(
        long,
        env = "HERALD_LOCK_MASTER_TIMEOUT_MS",
        default_value_t = DEFAULT_MASTER_TIMEOUT.as_millis() as u64,
        global = true,
        value_parser = clap::value_parser!(u64).range(1..=60_000)
    )]
    pub lock_master_timeout_ms: u64,
}

/// [`GlobalArgs`] after validation.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: SecretUrl,
    pub redis_urls: Vec<SecretUrl>,
    pub redis_ca: Option<RedisCa>,
    pub key_prefix: String,
    pub regions: Vec<String>,
    pub log: String,
    pub log_format: LogFormat,
    pub db_pool_size: u32,
    pub lock_master_timeout: Duration,
}

impl Settings {
    /// Lock settings shared by every part of Herald that locks.
    pub fn lock_config(&self) -> LockConfig {
        LockConfig {
            masters: self.redis_urls.clone(),
            key_prefix: self.key_prefix.clone(),
            master_timeout: self.lock_master_timeout,
            tls_root_ca: self.redis_ca.as_ref().map(|ca| ca.pem.clone()),
            ..LockConfig::default()
        }
    }
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

        let redis_urls = parse_redis_urls(&self.redis_urls)?;
        let redis_ca = self
            .redis_ca_file
            .as_deref()
            .map(RedisCa::read)
            .transpose()?;

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

        let settings = Settings {
            database_url,
            redis_urls,
            redis_ca,
            key_prefix: self.key_prefix.clone(),
            regions,
            log: self.log.clone(),
            log_format: self.log_format,
            db_pool_size: self.db_pool_size,
            lock_master_timeout: Duration::from_millis(self.lock_master_timeout_ms),
        };
        // The lock's own rules (which URLs name the same master, above all)
        // are checked now, so a list it would refuse exits 2 at start-up.
        settings.lock_config().validate().map_err(|e| {
            let reason = match e {
                LockConfigError::Duplicate { url } => {
                    format!("{url} is listed twice; each master must be distinct")
                }
                other => other.to_string(),
            };
            ConfigError::new("HERALD_REDIS_URLS", "--redis-urls", reason)
        })?;
        Ok(settings)
    }
}

/// `HERALD_REDIS_CA_FILE`, read once at start-up so a missing or wrong
/// file is a settings error (exit 2) rather than a TLS failure on every
/// lock request later.
#[derive(Clone)]
pub struct RedisCa {
    pub path: PathBuf,
    pub pem: Vec<u8>,
}

impl std::fmt::Debug for RedisCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisCa({})", self.path.display())
    }
}

impl RedisCa {
    fn read(path: &std::path::Path) -> Result<RedisCa, ConfigError> {
        let err = |r: String| ConfigError::new("HERALD_REDIS_CA_FILE", "--redis-ca-file", r);
        let pem =
            std::fs::read(path).map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
        if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
            return Err(err(format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            )));
        }
        Ok(RedisCa {
            path: path.to_owned(),
            pem,
        })
    }
}

/// Each entry parsed and its scheme checked, with its position in errors;
/// duplicates are the lock's to judge ([`LockConfig::validate`]).
fn parse_redis_urls(raw: &str) -> Result<Vec<SecretUrl>, ConfigError> {
    let mut redis_urls = Vec::new();
    for (i, entry) in raw.split(',').map(str::trim).enumerate() {
        let err = |r: String| {
            ConfigError::new(
                "HERALD_REDIS_URLS",
                "--redis-urls",
                format!("entry {}: {r}", i + 1),
            )
        };
        if entry.is_empty() {
            return Err(err("empty entry".into()));
        }
        let url = SecretUrl::parse(entry).map_err(err)?;
        if url.scheme() != "redis" && url.scheme() != "rediss" {
            return Err(err(format!(
                "scheme must be redis:// or rediss://, got {}://",
                url.scheme()
            )));
        }
        redis_urls.push(url);
    }
    Ok(redis_urls)
}

fn parse_regions(raw: &str) -> Result<Vec<String>, ConfigError> {
    let mut out: Vec<String> = Vec::new();
    for r in raw.split(',').map(str::trim) {
        if !crate::name::is_valid(r) || r.len() > crate::notification::MAX_REGION_LEN {
            return Err(ConfigError::new(
                "HERALD_REGION",
                "--region",
                format!(
                    "{r:?} is not a region name (1-{} of {})",
                    crate::notification::MAX_REGION_LEN,
                    crate::name::ALLOWED
                ),
            ));
        }
        if !out.iter().any(|o| o == r) {
            out.push(r.to_owned());
        }
    }
    Ok(out)
}
