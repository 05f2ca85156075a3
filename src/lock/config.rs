//! Configuration, and the one rule for what counts as the same master.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use super::error::LockConfigError;
use crate::secret::SecretUrl;

/// Default of [`LockConfig::master_timeout`] and of
/// `HERALD_LOCK_MASTER_TIMEOUT_MS`: one place, so the library and the binary
/// cannot drift apart.
pub const DEFAULT_MASTER_TIMEOUT: Duration = Duration::from_millis(100);

/// Settings of one [`Redlock`](super::Redlock).
#[derive(Clone)]
pub struct LockConfig {
    /// `redis://` or `rediss://` URLs of independent masters; `user:password@`
    /// (ACL) allowed. Typed, so a password is never printed.
    pub masters: Vec<SecretUrl>,
    /// Prepended to every key given to the API, so several applications (and
    /// tests) can share masters without colliding.
    pub key_prefix: String,
    /// Budget for one request to one master, pool checkout included. The
    /// effective budget is also capped at a tenth of the TTL, so a slow master
    /// can never eat a meaningful share of the lock's validity.
    pub master_timeout: Duration,
    /// Multiplexed connections per master. Each is shared by all concurrent
    /// callers and pipelines their requests, and single-key requests are
    /// coalesced into batches before they reach it; one connection batches
    /// best (measured before coalescing: ~40k lock cycles/s with 1 vs ~25k
    /// with 4 on the 2-core bench machine), and with one a release always
    /// queues behind a timed-out `SET` it undoes. More only help once one
    /// connection's I/O task is CPU-bound.
    pub pool_size: u32,
    /// Consecutive failures (errors or timeouts) that open a master's breaker.
    pub breaker_failures: u32,
    /// How long an open breaker fails fast before one probe request is let through.
    pub breaker_cooldown: Duration,
    /// A granted lock whose validity is below this is released and reported
    /// as [`LockError::ValidityExhausted`](super::LockError::ValidityExhausted).
    pub min_validity: Duration,
    /// PEM of the CA(s) to trust for `rediss://` masters instead of the public
    /// web roots (managed Redis with a private CA, and tests).
    pub tls_root_ca: Option<Vec<u8>>,
    /// The longest TTL any client of these masters uses. A master that
    /// restarted less than this ago may have forgotten a lock someone still
    /// holds, so its votes do not count until then. A restart is seen as a
    /// changed `run_id`, and for that the largest TTL this `Redlock` has
    /// requested counts too. A master seen for the first time with an
    /// uptime below *this setting* is also kept out; zero (the default)
    /// trusts masters at first sight, since a freshly started server looks
    /// just like a restarted one. Set it when other processes use longer
    /// TTLs, or to be safe from a process's first lock on.
    pub longest_ttl: Duration,
}

impl Default for LockConfig {
    fn default() -> Self {
        Self {
            masters: Vec::new(),
            key_prefix: "herald:".into(),
            master_timeout: DEFAULT_MASTER_TIMEOUT,
            pool_size: 1,
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(1),
            min_validity: Duration::ZERO,
            tls_root_ca: None,
            longest_ttl: Duration::ZERO,
        }
    }
}

impl LockConfig {
    /// Defaults with the given masters.
    pub fn new(masters: Vec<SecretUrl>) -> Self {
        Self {
            masters,
            ..Self::default()
        }
    }

    /// Checks everything that can be checked without connecting.
    pub fn validate(&self) -> Result<(), LockConfigError> {
        self.check_masters()?;
        let invalid = |setting, reason| Err(LockConfigError::Invalid { setting, reason });
        if self.master_timeout.is_zero() {
            return invalid("master_timeout", "must be greater than zero");
        }
        if self.pool_size == 0 {
            return invalid("pool_size", "must be at least 1");
        }
        if self.breaker_failures == 0 {
            return invalid("breaker_failures", "must be at least 1");
        }
        Ok(())
    }

    /// Checks the master list: a count the quorum arithmetic supports,
    /// Redis schemes, URLs the client accepts, no master twice.
    fn check_masters(&self) -> Result<(), LockConfigError> {
        if self.masters.is_empty() {
            return Err(LockConfigError::NoMasters);
        }
        if self.masters.len() > 64 {
            return Err(LockConfigError::Invalid {
                setting: "masters",
                reason: "at most 64 masters are supported",
            });
        }
        let mut seen = HashSet::new();
        for (index, url) in self.masters.iter().enumerate() {
            if !matches!(url.scheme(), "redis" | "rediss") {
                return Err(LockConfigError::InvalidUrl {
                    index,
                    reason: format!("scheme must be redis or rediss, not {}", url.scheme()),
                });
            }
            if let Err(e) = redis::Client::open(url.expose()) {
                return Err(LockConfigError::InvalidUrl {
                    index,
                    reason: e.to_string().replace(url.expose(), &url.redacted()),
                });
            }
            // Same server reached twice would count twice towards the quorum.
            if !seen.insert(master_identity(url)) {
                return Err(LockConfigError::Duplicate {
                    url: url.redacted(),
                });
            }
        }
        Ok(())
    }
}

/// The one rule for "the same master listed twice", for every layer that
/// reads Redis URLs: same host (case-insensitive), same port (6379 if
/// none is given) and same database (0 if none is given), so
/// `redis://h:6379` and `redis://H/0` are one master. Different names of
/// one server (`localhost` and `127.0.0.1`) can only be told by asking it:
/// see [`Redlock::check_distinct`](super::Redlock::check_distinct).
pub fn same_master(a: &SecretUrl, b: &SecretUrl) -> bool {
    master_identity(a) == master_identity(b)
}

fn master_identity(url: &SecretUrl) -> (String, u16, u32) {
    let u = url.url();
    (
        u.host_str().unwrap_or_default().to_ascii_lowercase(),
        u.port().unwrap_or(6379),
        u.path().trim_matches('/').parse::<u32>().unwrap_or(0),
    )
}

impl fmt::Debug for LockConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockConfig")
            .field("masters", &self.masters)
            .field("key_prefix", &self.key_prefix)
            .field("master_timeout", &self.master_timeout)
            .field("pool_size", &self.pool_size)
            .field("breaker_failures", &self.breaker_failures)
            .field("breaker_cooldown", &self.breaker_cooldown)
            .field("min_validity", &self.min_validity)
            .field("tls_root_ca", &self.tls_root_ca.as_ref().map(|_| "<pem>"))
            .field("longest_ttl", &self.longest_ttl)
            .finish()
    }
}

/// Clock-drift allowance of the Redlock algorithm: 1 % of the TTL plus 2 ms
/// for the granularity of Redis expiry.
pub fn drift(ttl: Duration) -> Duration {
    ttl / 100 + Duration::from_millis(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(raw: &[&str]) -> Vec<SecretUrl> {
        raw.iter().map(|u| SecretUrl::parse(u).unwrap()).collect()
    }

    #[test]
    fn validation_names_the_problem_and_hides_passwords() {
        assert_eq!(
            LockConfig::default().validate(),
            Err(LockConfigError::NoMasters)
        );
        let dup = LockConfig::new(urls(&[
            "redis://u:hunter2@127.0.0.1:7000",
            "redis://u:hunter2@127.0.0.1:7000/",
        ]));
        let e = dup.validate().unwrap_err();
        assert!(matches!(e, LockConfigError::Duplicate { .. }), "{e}");
        assert!(!e.to_string().contains("hunter2"));
        assert!(!format!("{dup:?}").contains("hunter2"));
        let bad = LockConfig::new(urls(&["http://127.0.0.1:7000"]));
        assert!(matches!(
            bad.validate(),
            Err(LockConfigError::InvalidUrl { index: 0, .. })
        ));
        let same = |a: &str, b: &str| {
            same_master(&SecretUrl::parse(a).unwrap(), &SecretUrl::parse(b).unwrap())
        };
        assert!(same("redis://h:6379", "redis://h:6379/0"));
        assert!(same("redis://H", "rediss://u:pw@h:6379/"));
        assert!(!same("redis://h", "redis://h/1"));
        assert!(!same("redis://h", "redis://h:6380"));
        let zero = LockConfig::new(urls(&["redis://h:6379", "redis://h/0"]));
        assert!(matches!(
            zero.validate(),
            Err(LockConfigError::Duplicate { .. })
        ));
        let ok = LockConfig::new(urls(&[
            "redis://127.0.0.1:7000",
            "rediss://user:pw@127.0.0.1:7001",
            "redis://127.0.0.1:7000/1",
        ]));
        ok.validate().unwrap();
    }

    #[test]
    fn drift_is_one_percent_plus_two_ms() {
        assert_eq!(drift(Duration::from_secs(1)), Duration::from_millis(12));
    }
}
