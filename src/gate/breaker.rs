//! Circuit breakers per channel, shared by the fleet.
//!
//! A channel's breaker counts consecutive transient failures fleet-wide
//! (any answer from the receiver resets the count). At `failures` it opens
//! for `cool_down`: its rows are not sent, and keep their attempts. After
//! the cool-down it is half-open: the next poll that meets one of its rows
//! takes the probe key ([`super::rate`]) and sends that one row; its
//! outcome, reported here, closes the breaker or opens it for another
//! cool-down. Only the instance whose report flipped the state learns of
//! the [`Transition`], so the fleet logs each one once.
//!
//! Reports are batched by the caller (the counts of many deliveries per
//! call); [`Gate::report`] always answers with the whole board, so one call
//! both writes and refreshes.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{Gate, GateError};

/// What to tell the board about one channel.
#[derive(Debug, Clone)]
pub enum Report<'a> {
    /// Deliveries since the last report: whether any got an answer (which
    /// resets the count), and how many transient failures came after the
    /// last answer (or in all, if none did).
    Counts {
        channel: &'a str,
        answered: bool,
        trailing_failures: u32,
        failures: u32,
        cool_down: Duration,
    },
    /// The probe's outcome: `answered` closes the breaker, otherwise it
    /// opens again for `cool_down`. Frees the probe key if it holds `token`.
    Probe {
        channel: &'a str,
        answered: bool,
        cool_down: Duration,
        token: &'a str,
    },
    /// The probe row was not sent after all (not claimed, expired, shut
    /// down): frees the probe key so the next poll can probe at once.
    Release { channel: &'a str, token: &'a str },
}

/// A change of state this report caused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Closed → open: the failures reached the threshold.
    Opened,
    /// The probe failed: open for another cool-down.
    Reopened,
    /// The probe got an answer.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    /// Open for this much longer.
    Open(Duration),
    /// The cool-down is over; the next row is the probe.
    HalfOpen,
}

impl BreakerState {
    pub fn name(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open(_) => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

/// One channel on the board.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelBreaker {
    /// Consecutive transient failures, fleet-wide.
    pub failures: u32,
    pub state: BreakerState,
}

/// Every channel with failures or a breaker not closed (channels absent
/// are closed with no failures), and what the report changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BreakerBoard {
    pub channels: BTreeMap<String, ChannelBreaker>,
    pub transitions: Vec<(String, Transition)>,
}

/// KEYS[1]: the board; KEYS[1 + i]: the probe key of report i.
/// ARGV: seven per report: channel, kind (c counts, p probe, x release),
/// answered (0/1), trailing failures, threshold, cool-down ms, token.
/// Returns {now µs, {channel, transition, ...}, HGETALL board}.
static REPORT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local trans = {}
local wrote = false
for i = 1, #KEYS - 1 do
  local a = (i - 1) * 7
  local ch = ARGV[a + 1]
  local kind = ARGV[a + 2]
  local answered = ARGV[a + 3] == '1'
  local trailing = tonumber(ARGV[a + 4])
  local threshold = tonumber(ARGV[a + 5])
  local cool = tonumber(ARGV[a + 6]) * 1000
  local token = ARGV[a + 7]
  local fk = 'f:' .. ch
  local ok = 'o:' .. ch
  local f = tonumber(redis.call('HGET', KEYS[1], fk) or '0')
  local o = tonumber(redis.call('HGET', KEYS[1], ok) or '0')
  if kind == 'c' then
    if answered then f = trailing else f = f + trailing end
    if f > 0 then redis.call('HSET', KEYS[1], fk, f) else redis.call('HDEL', KEYS[1], fk) end
    if o == 0 and threshold > 0 and f >= threshold then
      redis.call('HSET', KEYS[1], ok, string.format('%.0f', now + cool))
      table.insert(trans, ch)
      table.insert(trans, 'opened')
    end
    wrote = true
  else
    if redis.call('GET', KEYS[i + 1]) == token then redis.call('DEL', KEYS[i + 1]) end
    if kind == 'p' and o > 0 then
      if answered then
        redis.call('HDEL', KEYS[1], fk, ok)
        table.insert(trans, ch)
        table.insert(trans, 'closed')
      else
        redis.call('HSET', KEYS[1], ok, string.format('%.0f', now + cool))
        table.insert(trans, ch)
        table.insert(trans, 'reopened')
      end
      wrote = true
    end
  end
end
-- A day past the latest open-until: a breaker open for longer than a day
-- (a library caller's 30-day cool-down) must not be forgotten meanwhile.
if wrote then
  local keep = 86400000
  local all = redis.call('HGETALL', KEYS[1])
  for j = 1, #all, 2 do
    if string.sub(all[j], 1, 2) == 'o:' then
      keep = math.max(keep, math.ceil((tonumber(all[j + 1]) - now) / 1000) + 86400000)
    end
  end
  redis.call('PEXPIRE', KEYS[1], keep)
end
return {string.format('%.0f', now), trans, redis.call('HGETALL', KEYS[1])}
",
    )
});

impl Gate {
    /// Applies `reports` and returns the whole board (with no reports: just
    /// reads it). One call to the first master that answers.
    pub async fn report(&self, reports: &[Report<'_>]) -> Result<BreakerBoard, GateError> {
        let mut keys = vec![self.board_key()];
        let mut args: Vec<String> = Vec::with_capacity(reports.len() * 7);
        for r in reports {
            let (channel, kind, answered, trailing, threshold, cool, token) = match r {
                Report::Counts {
                    channel,
                    answered,
                    trailing_failures,
                    failures,
                    cool_down,
                } => (
                    *channel,
                    "c",
                    *answered,
                    *trailing_failures,
                    *failures,
                    *cool_down,
                    "",
                ),
                Report::Probe {
                    channel,
                    answered,
                    cool_down,
                    token,
                } => (*channel, "p", *answered, 0, 0, *cool_down, *token),
                Report::Release { channel, token } => {
                    (*channel, "x", false, 0, 0, Duration::ZERO, *token)
                }
            };
            keys.push(self.key("probe", channel));
            args.extend([
                channel.to_owned(),
                kind.to_owned(),
                if answered { "1" } else { "0" }.to_owned(),
                trailing.to_string(),
                threshold.to_string(),
                cool.as_millis().to_string(),
                token.to_owned(),
            ]);
        }
        let (_, (now, trans, flat)) = self
            .redlock
            .on_first_master(|mut conn| {
                let mut inv = REPORT.prepare_invoke();
                for k in &keys {
                    inv.key(k);
                }
                for a in &args {
                    inv.arg(a);
                }
                async move {
                    inv.invoke_async::<(String, Vec<String>, Vec<String>)>(&mut conn)
                        .await
                }
            })
            .await?;
        parse_board(&now, &trans, &flat)
    }

    /// The board, read only (for `herald status` and refreshes).
    pub async fn board(&self) -> Result<BreakerBoard, GateError> {
        self.report(&[]).await
    }
}

fn parse_board(now: &str, trans: &[String], flat: &[String]) -> Result<BreakerBoard, GateError> {
    let bad = || GateError::Reply(format!("{now:?} {trans:?} {flat:?}"));
    let now: i64 = now.parse().map_err(|_| bad())?;
    let mut board = BreakerBoard::default();
    for pair in trans.chunks(2) {
        let [channel, what] = pair else {
            return Err(bad());
        };
        let t = match what.as_str() {
            "opened" => Transition::Opened,
            "reopened" => Transition::Reopened,
            "closed" => Transition::Closed,
            _ => return Err(bad()),
        };
        board.transitions.push((channel.clone(), t));
    }
    for pair in flat.chunks(2) {
        let [field, value] = pair else {
            return Err(bad());
        };
        let Some((kind, channel)) = field.split_once(':') else {
            continue;
        };
        let value: i64 = value.parse().unwrap_or(0);
        let entry = board
            .channels
            .entry(channel.to_owned())
            .or_insert(ChannelBreaker {
                failures: 0,
                state: BreakerState::Closed,
            });
        match kind {
            "f" => entry.failures = value.clamp(0, u32::MAX as i64) as u32,
            "o" if value > now => {
                entry.state = BreakerState::Open(Duration::from_micros((value - now) as u64))
            }
            "o" if value > 0 => entry.state = BreakerState::HalfOpen,
            _ => {}
        }
    }
    Ok(board)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn board_parses_states_relative_to_the_masters_clock() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let b = parse_board(
            "1000000000",
            &s(&["sms", "opened"]),
            &s(&[
                "f:sms",
                "12",
                "o:sms",
                "1002000000",
                "f:mail",
                "3",
                "o:push",
                "999000000",
            ]),
        )
        .unwrap();
        assert_eq!(b.transitions, vec![("sms".to_owned(), Transition::Opened)]);
        assert_eq!(
            b.channels["sms"].state,
            BreakerState::Open(Duration::from_secs(2))
        );
        assert_eq!(b.channels["sms"].failures, 12);
        assert_eq!(b.channels["mail"].state, BreakerState::Closed);
        assert_eq!(b.channels["push"].state, BreakerState::HalfOpen);
        assert!(parse_board("x", &[], &[]).is_err());
    }
}
