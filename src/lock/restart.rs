//! Restart detection: a master that lost its data does not vote.
//!
//! A master restarted without persistence has forgotten every lock it held.
//! If it then voted at once, a second owner could gather a majority while the
//! first still holds the lock on the masters that kept it (the classic
//! Redlock warning). Every new connection therefore asks the master for its
//! `run_id` and `uptime_in_seconds` (`INFO server`). A master whose `run_id`
//! changed restarted `uptime` ago; until the longest TTL in use has passed
//! since then, its "yes" does not count towards a quorum. Requests are still
//! sent to it (its keys stay in step, releases still reach it).
//!
//! "Longest TTL in use" is the larger of [`LockConfig::longest_ttl`]
//! (what every client of these masters may use; only a setting can know
//! other processes' TTLs) and the largest TTL this `Redlock` has requested.
//!
//! A master seen for the first time cannot be told apart from one that just
//! restarted except by its uptime, and a freshly started server (a new
//! deployment, every test) looks exactly like that. So at first sight only
//! the *configured* `longest_ttl` applies: zero by default, which trusts
//! masters on first sight; set it to be safe also against restarts that
//! happened before this process first reached the master.
//!
//! [`LockConfig::longest_ttl`]: super::LockConfig::longest_ttl

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use tracing::{debug, warn};

/// The longest TTL in use, shared by every master of one `Redlock`.
#[derive(Debug, Default)]
pub(crate) struct LongestTtl {
    configured: Duration,
    ms: AtomicU64,
}

impl LongestTtl {
    pub(crate) fn new(configured: Duration) -> Arc<Self> {
        let s = Self {
            configured,
            ms: AtomicU64::new(0),
        };
        s.note(configured);
        Arc::new(s)
    }

    /// Records a TTL about to be requested.
    pub(crate) fn note(&self, ttl: Duration) {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.ms.fetch_max(ms, Relaxed);
    }

    pub(crate) fn get(&self) -> Duration {
        Duration::from_millis(self.ms.load(Relaxed))
    }
}

/// What one master told us about its process.
#[derive(Debug)]
pub(crate) struct Identity {
    /// Redacted URL, for logs.
    name: String,
    longest: Arc<LongestTtl>,
    run_id: Mutex<Option<String>>,
    epoch: Instant,
    /// Nanoseconds since `epoch` until which this master does not vote; 0 = none.
    quarantined_until: AtomicU64,
}

impl Identity {
    pub(crate) fn new(name: String, longest: Arc<LongestTtl>) -> Self {
        Self {
            name,
            longest,
            run_id: Mutex::new(None),
            epoch: Instant::now(),
            quarantined_until: AtomicU64::new(0),
        }
    }

    /// The `run_id` last seen, if any connection has reported one yet.
    pub(crate) fn run_id(&self) -> Option<String> {
        self.run_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether this master's votes count now.
    pub(crate) fn is_quarantined(&self) -> bool {
        let until = self.quarantined_until.load(Relaxed);
        until != 0 && self.now_ns() < until
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1
    }

    /// Asks a fresh connection who the master is. A master that does not
    /// answer INFO (an ACL without it) is not watched, and not refused.
    pub(crate) async fn check(&self, conn: &mut MultiplexedConnection) {
        match redis::cmd("INFO")
            .arg("server")
            .query_async::<String>(conn)
            .await
        {
            Ok(info) => match parse_info(&info) {
                Some((run_id, uptime)) => self.observe(run_id, uptime),
                None => debug!(master = %self.name, "INFO server without run_id/uptime"),
            },
            Err(e) => {
                debug!(master = %self.name, error = %e, "INFO server failed; restarts of this master go unnoticed")
            }
        }
    }

    fn observe(&self, run_id: &str, uptime: Duration) {
        let mut known = self.run_id.lock().unwrap_or_else(|p| p.into_inner());
        if known.as_deref() == Some(run_id) {
            return;
        }
        let longest = match *known {
            None => self.longest.configured,
            Some(_) => self.longest.get(),
        };
        if uptime < longest {
            let left = longest - uptime;
            let until = self
                .now_ns()
                .saturating_add(u64::try_from(left.as_nanos()).unwrap_or(u64::MAX / 2));
            self.quarantined_until.fetch_max(until, Relaxed);
            warn!(
                master = %self.name,
                first_sight = known.is_none(),
                uptime_s = uptime.as_secs(),
                quarantine_ms = left.as_millis() as u64,
                "redis master (re)started recently and may have lost locks; its votes do not count until the longest TTL has passed"
            );
        }
        *known = Some(run_id.to_owned());
    }
}

/// `run_id` and `uptime_in_seconds` from an `INFO server` reply.
fn parse_info(info: &str) -> Option<(&str, Duration)> {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let run_id = field("run_id")?;
    let uptime = field("uptime_in_seconds")?.parse().ok()?;
    Some((run_id, Duration::from_secs(uptime)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_info_and_quarantines_a_young_or_new_server() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:abc\r\nuptime_in_seconds:3\r\n";
        assert_eq!(parse_info(info), Some(("abc", Duration::from_secs(3))));
        let longest = LongestTtl::new(Duration::ZERO);
        let id = Identity::new("m".into(), longest.clone());
        longest.note(Duration::from_secs(10));
        id.observe("abc", Duration::from_secs(3));
        assert!(!id.is_quarantined(), "first sight: only the setting counts");
        id.observe("abc", Duration::from_secs(4));
        assert!(!id.is_quarantined(), "same process");
        id.observe("def", Duration::from_secs(20));
        assert!(!id.is_quarantined(), "restarted longer ago than the TTL");
        id.observe("ghi", Duration::from_secs(1));
        assert!(id.is_quarantined());
        assert_eq!(id.run_id().as_deref(), Some("ghi"));
        let configured = Identity::new("m".into(), LongestTtl::new(Duration::from_secs(10)));
        configured.observe("abc", Duration::from_secs(3));
        assert!(configured.is_quarantined(), "first sight, young server");
    }
}
