//! Admission of a poll batch: GCRA rate limits and breaker verdicts for
//! every gated channel in the batch, in one Lua call (never one per row).
//!
//! GCRA ("generic cell rate algorithm") keeps one timestamp per channel,
//! the theoretical arrival time `tat` of the next row: a row conforms when
//! `tat − now ≤ τ` (τ = interval × (burst − 1)), and each admitted row moves
//! `tat` on by one interval. So a channel idle for a while may send `burst`
//! rows at once, then one per interval, whatever the number of instances.
//!
//! Rows over the limit are not claimed; the caller moves their `due_at` to
//! the time they could go (the next free token, then one interval apart),
//! so they leave the head of the queue instead of being read again by every
//! poll. A slot is a hint, not a reservation: when the row comes due it
//! goes through GCRA like any other.
//!
//! Why not hand out slots after a fleet-wide tail of slots already given
//! (an earlier version did): a row that came due at its slot and lost the
//! token to another instance's row went to the end of that tail, seconds
//! away, while the slots it skipped went unused; with three workers the
//! channel stalled for whole seconds (0 deliveries) and ran ~25 % under its
//! limit. Slots counted from the next free token keep rows due at every
//! moment, at the cost of re-deferring the ones that lose the race.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{micros, Gate, GateError};
use crate::policy::RateLimit;

/// One channel of a batch.
#[derive(Debug, Clone)]
pub struct Ask<'a> {
    pub channel: &'a str,
    /// Rows of this channel the batch would claim.
    pub rows: u32,
    pub rate: Option<RateLimit>,
    /// Set when the channel's breaker may be open: then rows pass only if
    /// it is closed, and after the cool-down one row (the probe) passes,
    /// holding the probe key with `token` for `probe_ttl`.
    pub probe: Option<ProbeAsk<'a>>,
}

#[derive(Debug, Clone, Copy)]
pub struct ProbeAsk<'a> {
    pub token: &'a str,
    pub ttl: Duration,
}

/// The verdict on one [`Ask`]. The batch's rows of the channel, oldest
/// first: the first `granted` go now; the next `rate_deferred` go at
/// `rate_start + i × spacing`; the rest (held by the breaker) after
/// `breaker_wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Admission {
    pub granted: u32,
    /// The one granted row is the breaker's probe.
    pub probe: bool,
    pub rate_deferred: u32,
    pub rate_start: Duration,
    pub spacing: Duration,
    pub breaker_wait: Duration,
}

/// KEYS[1]: the breaker board; then two per ask: its rate key, its probe key.
/// ARGV: six per ask: channel, rows, interval µs (0 = no limit), burst,
/// probe ttl ms (0 = no breaker), probe token.
/// Returns per ask {granted, probe, rate_deferred, rate_start µs, spacing µs,
/// breaker_wait µs}.
static ADMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
local asks = (#KEYS - 1) / 2
for i = 1, asks do
  local a = (i - 1) * 6
  local ch = ARGV[a + 1]
  local n = tonumber(ARGV[a + 2])
  local T = tonumber(ARGV[a + 3])
  local burst = tonumber(ARGV[a + 4])
  local ttl = tonumber(ARGV[a + 5])
  local token = ARGV[a + 6]
  local rkey = KEYS[2 * i]
  local pkey = KEYS[2 * i + 1]
  local allowed = n
  local probe = 0
  local bwait = 0
  if ttl > 0 then
    local o = tonumber(redis.call('HGET', KEYS[1], 'o:' .. ch) or '0')
    if o > now then
      allowed = 0
      bwait = o - now
    elseif o > 0 then
      if redis.call('SET', pkey, token, 'NX', 'PX', ttl) then
        allowed = math.min(n, 1)
        probe = allowed
      else
        allowed = 0
      end
      local left = redis.call('PTTL', pkey)
      if left < 0 then left = ttl end
      bwait = left * 1000
    end
  end
  local granted = allowed
  local deferred = 0
  local start = 0
  if T > 0 and allowed > 0 then
    local tau = T * (burst - 1)
    local st = redis.call('HMGET', rkey, 'tat', 'at')
    -- 'at' is the master's clock at the last call: a clock that went back
    -- since moves the whole schedule back with it, so the channel does not
    -- stall for the size of the jump. (A jump forward looks like idle time:
    -- at most one burst.) After a grant tat is at most now + tau + T;
    -- beyond that, clamp (another program wrote the key).
    local back = math.max((tonumber(st[2]) or now) - now, 0)
    local tat = math.max((tonumber(st[1]) or now) - back, now)
    tat = math.min(tat, now + tau + T)
    granted = 0
    if tat - now <= tau then
      granted = math.min(allowed, math.floor((now + tau - tat) / T) + 1)
    end
    tat = tat + granted * T
    deferred = allowed - granted
    start = math.max(tat - tau, now)
    redis.call('HSET', rkey, 'tat', string.format('%.0f', tat), 'at', string.format('%.0f', now))
    redis.call('PEXPIRE', rkey, math.min(math.ceil((tat - now) / 1000), 34560000000) + 60000)
    start = start - now
    if probe == 1 and granted == 0 then
      redis.call('DEL', pkey)
      probe = 0
    end
  end
  out[i] = {granted, probe, deferred, math.floor(start), math.floor(T), math.floor(bwait)}
end
return out
",
    )
});

impl Gate {
    /// The verdict for each ask, in order; one call to the first master
    /// that answers. Asks with neither a rate nor a probe are granted
    /// without asking Redis.
    pub async fn admit(&self, asks: &[Ask<'_>]) -> Result<Vec<Admission>, GateError> {
        let mut out = vec![Admission::default(); asks.len()];
        let gated: Vec<usize> = (0..asks.len())
            .filter(|&i| asks[i].rate.is_some() || asks[i].probe.is_some())
            .collect();
        for (i, a) in asks.iter().enumerate() {
            out[i].granted = a.rows;
        }
        if gated.is_empty() {
            return Ok(out);
        }
        let board = self.board_key();
        let mut keys: Vec<String> = vec![board];
        let mut args: Vec<String> = Vec::with_capacity(gated.len() * 6);
        for &i in &gated {
            let a = &asks[i];
            keys.push(self.key("rate", a.channel));
            keys.push(self.key("probe", a.channel));
            let (interval, burst) = match a.rate {
                Some(r) => (interval_us(r), r.burst.max(1)),
                None => (0.0, 1),
            };
            let (ttl, token) = match a.probe {
                Some(p) => (p.ttl.as_millis().max(1) as u64, p.token),
                None => (0, ""),
            };
            args.extend([
                a.channel.to_owned(),
                a.rows.to_string(),
                format!("{interval:.3}"),
                burst.to_string(),
                ttl.to_string(),
                token.to_owned(),
            ]);
        }
        let (_, answers) = self
            .redlock
            .on_first_master(|mut conn| {
                let mut inv = ADMIT.prepare_invoke();
                for k in &keys {
                    inv.key(k);
                }
                for a in &args {
                    inv.arg(a);
                }
                async move { inv.invoke_async::<Vec<Vec<i64>>>(&mut conn).await }
            })
            .await?;
        if answers.len() != gated.len() || answers.iter().any(|a| a.len() != 6) {
            return Err(GateError::Reply(format!("{answers:?}")));
        }
        let us = |v: i64| Duration::from_micros(v.max(0) as u64);
        for (&i, a) in gated.iter().zip(&answers) {
            let rows = asks[i].rows as i64;
            out[i] = Admission {
                granted: a[0].clamp(0, rows) as u32,
                probe: a[1] == 1,
                rate_deferred: a[2].clamp(0, rows) as u32,
                rate_start: us(a[3]),
                spacing: us(a[4]),
                breaker_wait: us(a[5]),
            };
        }
        Ok(out)
    }
}

/// The longest emission interval: one row a year. A zero (or absurdly
/// small, 1e-300/s) rate lets nothing through in practice, while every
/// time the script computes stays far inside what Redis and Lua numbers
/// hold exactly.
const MAX_INTERVAL: Duration = Duration::from_secs(365 * 86_400);

/// The emission interval of `rate`, in µs (at least 1: a rate above
/// 1,000,000/s is as good as unlimited).
fn interval_us(rate: RateLimit) -> f64 {
    let max = micros(MAX_INTERVAL) as f64;
    if rate.per_second > 0.0 {
        (1e6 / rate.per_second).clamp(1.0, max)
    } else {
        max
    }
}
