//! Settings of the admin HTTP API and console (`HERALD_ADMIN_*`), served by
//! `herald worker` when an address is set and by `herald admin`.

use std::net::SocketAddr;

use clap::builder::RangedU64ValueParser;
use clap::Args;

use crate::secret::SecretString;
use crate::setting::ConfigError;

/// Shortest token accepted: a guessable token on a network address is no
/// protection.
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Admin API and console")]
pub struct AdminArgs {
    /// Address of the admin API (/api/v1) and console (/console); empty = off.
    #[arg(long, env = "HERALD_ADMIN_ADDR", default_value = "")]
    pub admin_addr: String,
    /// Bearer token of the admin API and console; required on a non-loopback address.
    #[arg(long, env = "HERALD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<SecretString>,
    /// Largest admin request body, in bytes.
    #[arg(long, env = "HERALD_ADMIN_MAX_BODY_BYTES", default_value_t = 4 << 20,
        value_parser = RangedU64ValueParser::<usize>::new().range(1024..=256 << 20))]
    pub admin_max_body_bytes: usize,
    /// Largest payload enqueued over the API, in bytes of compact JSON (as for `herald enqueue`).
    #[arg(long = "admin-max-payload-bytes", env = "HERALD_MAX_PAYLOAD_BYTES", default_value_t = 65_536,
        value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_payload_bytes: usize,
}

/// Validated admin settings.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub addr: SocketAddr,
    pub token: Option<SecretString>,
    pub max_body_bytes: usize,
    pub max_payload_bytes: usize,
}

impl AdminArgs {
    /// `None` when no address is set (the API is off).
    pub fn validate(&self) -> Result<Option<AdminConfig>, ConfigError> {
        const ENV: &str = "HERALD_ADMIN_ADDR";
        const FLAG: &str = "--admin-addr";
        let raw = self.admin_addr.trim();
        if raw.is_empty() {
            return Ok(None);
        }
        let addr: SocketAddr = raw
            .parse()
            .map_err(|e| ConfigError::new(ENV, FLAG, format!("{raw:?} is not host:port ({e})")))?;
        let token = match self.admin_token.as_ref().map(|t| t.expose().trim()) {
            None | Some("") => None,
            Some(t) if t.len() < MIN_TOKEN_LEN => {
                return Err(ConfigError::new(
                    "HERALD_ADMIN_TOKEN",
                    "--admin-token",
                    format!(
                        "must be at least {MIN_TOKEN_LEN} characters (e.g. `openssl rand -hex 32`)"
                    ),
                ))
            }
            Some(t) => Some(SecretString::new(t.to_owned())),
        };
        if token.is_none() && !addr.ip().is_loopback() {
            return Err(ConfigError::new(
                "HERALD_ADMIN_TOKEN",
                "--admin-token",
                format!(
                    "required: the admin API can change and enqueue notifications, and \
                     HERALD_ADMIN_ADDR {addr} is not a loopback address"
                ),
            ));
        }
        Ok(Some(AdminConfig {
            addr,
            token,
            max_body_bytes: self.admin_max_body_bytes,
            max_payload_bytes: self.max_payload_bytes,
        }))
    }
}
