//! Per-channel delivery policy: what may differ from one channel to the next
//! (an SMS provider allows 100/s and wants 20 retries; an internal webhook
//! wants 3).
//!
//! The worker looks a channel's policy up once per row; anything a channel
//! leaves unset falls back to the process-wide setting, so the simple case
//! (environment variables only) needs no channel entries at all.

use std::collections::HashMap;
use std::time::Duration;

use super::schedule::RetrySchedule;

/// A fleet-wide rate: at most `per_second` deliveries per second on average,
/// with bursts of up to `burst` back to back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

/// When a channel's breaker opens and how long it stays open before one
/// probe delivery decides whether it closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive transient failures (fleet-wide) that open the breaker;
    /// 0 means the breaker is off ([`BreakerPolicy::OFF`]).
    pub failures: u32,
    pub cool_down: Duration,
}

impl BreakerPolicy {
    /// `breaker = "off"`: this channel never opens, whatever the
    /// process-wide setting. A value rather than another `Option` layer so
    /// that "not set" (`None` in [`ChannelPolicy::breaker`]) and "set to
    /// off" stay distinct without a second type.
    pub const OFF: BreakerPolicy = BreakerPolicy {
        failures: 0,
        cool_down: Duration::ZERO,
    };

    pub fn is_off(&self) -> bool {
        self.failures == 0
    }
}

/// One channel's overrides; `None` means "the process-wide setting".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChannelPolicy {
    pub send_timeout: Option<Duration>,
    pub retry: Option<RetrySchedule>,
    pub rate_limit: Option<RateLimit>,
    /// Sends of this channel at once in one process.
    pub max_in_flight: Option<u32>,
    /// `None`: the process-wide breaker setting applies;
    /// [`BreakerPolicy::OFF`]: none for this channel.
    pub breaker: Option<BreakerPolicy>,
}

impl ChannelPolicy {
    /// This policy's keys, and `defaults`' where this one leaves a key
    /// unset (a channel's own key wins).
    pub fn or(&self, defaults: &ChannelPolicy) -> ChannelPolicy {
        ChannelPolicy {
            send_timeout: self.send_timeout.or(defaults.send_timeout),
            retry: self.retry.clone().or_else(|| defaults.retry.clone()),
            rate_limit: self.rate_limit.or(defaults.rate_limit),
            max_in_flight: self.max_in_flight.or(defaults.max_in_flight),
            breaker: self.breaker.or(defaults.breaker),
        }
    }
}

/// Every channel's policy, with the policy of channels not named.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChannelPolicies {
    default: ChannelPolicy,
    by_name: HashMap<String, ChannelPolicy>,
}

impl ChannelPolicies {
    pub fn new(default: ChannelPolicy, by_name: HashMap<String, ChannelPolicy>) -> Self {
        ChannelPolicies { default, by_name }
    }

    /// The policy of `channel`: its own, or the default one.
    pub fn get(&self, channel: &str) -> &ChannelPolicy {
        self.by_name.get(channel).unwrap_or(&self.default)
    }

    /// The policy of channels without one of their own.
    pub fn default_policy(&self) -> &ChannelPolicy {
        &self.default
    }

    /// The channels with a policy of their own.
    pub fn named(&self) -> impl Iterator<Item = (&str, &ChannelPolicy)> {
        self.by_name.iter().map(|(k, v)| (k.as_str(), v))
    }
}
