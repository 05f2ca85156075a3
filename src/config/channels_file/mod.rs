//! The channel config file, `HERALD_CONFIG=herald.toml`: what differs from
//! one channel to the next (receiver, secrets, timeout, retry schedule,
//! rate limit, concurrency cap, breaker). Environment variables stay for
//! the simple case; the file is for deployments with several channels.
//! The format is documented in `docs/delivery-policy.md` and shown by
//! `examples/herald.toml`.
//!
//! * this module — reading the file, turning it into a [`ChannelsFile`],
//!   and [`ChannelsFile::apply`], which merges it into the transport
//!   settings and yields the [`ChannelPolicies`];
//! * `raw` — the serde shape of the file (unknown keys refused everywhere);
//! * `values` — the syntaxes of its values (durations, rates, breakers).
//!
//! Every error names the file, the channel and the key
//! (`herald.toml: channels.sms.rate_limit: "100/x": unknown unit …`) and is
//! a [`ConfigError`] of `HERALD_CONFIG`, so the worker exits 2. Secrets
//! never appear in one: TOML's own messages are used without the source
//! line they normally quote, and any secret text that still reaches a
//! message is masked.

mod raw;
mod values;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::policy::{ChannelPolicies, ChannelPolicy, RetrySchedule};
use crate::secret::SecretString;
use crate::setting::ConfigError;
use crate::transport::{
    decode_secret, parse_webhook_url, ChannelKind, ChannelOptions, ChannelSpec, TransportSettings,
};

const ENV: &str = "HERALD_CONFIG";
const FLAG: &str = "--config";

/// One channel of the file.
#[derive(Debug, Clone, PartialEq)]
pub struct FileChannel {
    pub name: String,
    /// A missing `url` / `path` is `None`: the global setting applies.
    pub kind: ChannelKind,
    pub secrets: Option<Vec<SecretString>>,
    /// The channel's own keys only; [`ChannelsFile::apply`] adds the defaults.
    pub policy: ChannelPolicy,
}

/// A parsed and checked channel file.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelsFile {
    /// The path as the operator gave it, for messages.
    pub shown: String,
    /// `[defaults]`.
    pub defaults: ChannelPolicy,
    /// `[channels.*]`, sorted by name.
    pub channels: Vec<FileChannel>,
}

/// Reads and checks `path`.
pub fn load(path: &Path) -> Result<ChannelsFile, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(ENV, FLAG, format!("{shown}: cannot read the file: {e}")))?;
    parse(&shown, &text)
}

/// Checks `text` as the content of a file shown as `shown` in messages.
pub fn parse(shown: &str, text: &str) -> Result<ChannelsFile, ConfigError> {
    let fail = |key: &str, reason: String| {
        ConfigError::new(ENV, FLAG, format!("{shown}: {key}: {reason}"))
    };
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        // Position and message only: TOML's own rendering quotes the line,
        // which may hold a secret.
        let at = e
            .span()
            .map_or_else(String::new, |s| position(text, s.start));
        ConfigError::new(ENV, FLAG, format!("{shown}: {at}{}", e.message().trim()))
    })?;
    let secrets = secret_texts(&table);
    let doc: raw::Doc = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| {
            let (key, reason) = describe(&e);
            let mut reason = reason;
            if key.split('.').any(|k| k == "secrets") {
                // Whatever the type error quotes may be a secret.
                reason = "must be a list of strings, e.g. secrets = [\"whsec_...\"]".into();
            }
            for s in &secrets {
                reason = reason.replace(s.as_str(), "***");
            }
            fail(&key, reason)
        })?;

    let defaults = match &doc.defaults {
        Some(d) => policy(
            "defaults",
            &Keys {
                send_timeout: &d.send_timeout,
                retry_schedule: &d.retry_schedule,
                rate_limit: &d.rate_limit,
                max_in_flight: d.max_in_flight,
                breaker: &d.breaker,
            },
        )
        .map_err(|(k, r)| fail(&k, r))?,
        None => ChannelPolicy::default(),
    };
    let mut channels = Vec::with_capacity(doc.channels.len());
    for (name, ch) in &doc.channels {
        channels.push(channel(name, ch).map_err(|(k, r)| fail(&k, r))?);
    }
    Ok(ChannelsFile {
        shown: shown.to_owned(),
        defaults,
        channels,
    })
}

/// `line L, column C: `, 1-based, for a byte offset of `text`.
fn position(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}: ")
}

/// The key path and the reason of a serde error, with serde's phrasing of
/// unknown and missing keys turned into ours (the key goes into the path).
fn describe(e: &toml::de::Error) -> (String, String) {
    // Without source text, the error's rendering ends with the path of
    // keys it happened under: "in `channels.sms`".
    let mut e = e.clone();
    e.set_input(None);
    let rendered = e.to_string();
    let parent = rendered
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("in `").and_then(|r| r.strip_suffix('`')))
        .unwrap_or("")
        .to_owned();
    let join = |key: &str| match parent.as_str() {
        "" => key.to_owned(),
        p => format!("{p}.{key}"),
    };
    let message = e.message().trim();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((key, expected)) = rest.split_once('`') {
            let expected = expected.trim_start_matches(", ").replace('`', "");
            return (join(key), format!("unknown key ({expected})"));
        }
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        if let Some((key, _)) = rest.split_once('`') {
            return (join(key), "missing (this key is required)".into());
        }
    }
    (
        parent,
        message.replace("expected i64", "expected an integer"),
    )
}

/// Every string under a `secrets` key, to mask in messages.
fn secret_texts(table: &toml::Table) -> Vec<String> {
    fn strings(v: &toml::Value, out: &mut Vec<String>) {
        match v {
            toml::Value::String(s) if !s.is_empty() => out.push(s.clone()),
            toml::Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
            toml::Value::Table(t) => t.values().for_each(|v| strings(v, out)),
            _ => {}
        }
    }
    fn walk(t: &toml::Table, out: &mut Vec<String>) {
        for (k, v) in t {
            if k == "secrets" {
                strings(v, out);
            } else if let toml::Value::Table(inner) = v {
                walk(inner, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(table, &mut out);
    // Longest first, so a secret that contains another is masked whole.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out
}

/// A key path and what is wrong there.
type KeyError = (String, String);

/// The policy keys `[defaults]` and `[channels.*]` share.
struct Keys<'a> {
    send_timeout: &'a Option<String>,
    retry_schedule: &'a Option<String>,
    rate_limit: &'a Option<raw::TextOr<raw::RateTable>>,
    max_in_flight: Option<i64>,
    breaker: &'a Option<raw::TextOr<raw::BreakerTable>>,
}

fn policy(at: &str, k: &Keys<'_>) -> Result<ChannelPolicy, KeyError> {
    let key = |name: &str| format!("{at}.{name}");
    Ok(ChannelPolicy {
        send_timeout: k
            .send_timeout
            .as_deref()
            .map(|t| values::duration(t, values::MAX_SEND_TIMEOUT))
            .transpose()
            .map_err(|r| (key("send_timeout"), r))?,
        retry: k
            .retry_schedule
            .as_deref()
            .map(RetrySchedule::parse)
            .transpose()
            .map_err(|e| (key("retry_schedule"), e.to_string()))?,
        rate_limit: k
            .rate_limit
            .as_ref()
            .map(values::rate_limit)
            .transpose()
            .map_err(|r| (key("rate_limit"), r))?,
        max_in_flight: k
            .max_in_flight
            .map(|n| values::count(n, values::MAX_IN_FLIGHT))
            .transpose()
            .map_err(|r| (key("max_in_flight"), r))?,
        breaker: k
            .breaker
            .as_ref()
            .map(values::breaker)
            .transpose()
            .map_err(|r| (key("breaker"), r))?,
    })
}

fn channel(name: &str, ch: &raw::Channel) -> Result<FileChannel, KeyError> {
    let at = format!("channels.{name}");
    let key = |k: &str| format!("{at}.{k}");
    if name.is_empty() || name.len() > crate::notification::MAX_CHANNEL_LEN {
        return Err((
            at.clone(),
            format!(
                "a channel name has 1-{} characters",
                crate::notification::MAX_CHANNEL_LEN
            ),
        ));
    }
    if let Some(c) = crate::name::first_bad_char(name) {
        return Err((
            at.clone(),
            format!(
                "the channel name contains {c:?} (allowed: {})",
                crate::name::ALLOWED
            ),
        ));
    }
    let only = |k: &str, present: bool, kind: &str| -> Result<(), KeyError> {
        match present {
            true => Err((key(k), format!("only {kind} channels take this key"))),
            false => Ok(()),
        }
    };
    let transport = ch.transport.as_deref().ok_or_else(|| {
        (
            key("transport"),
            "missing (webhook, log or file)".to_owned(),
        )
    })?;
    let kind = match transport {
        "webhook" => {
            only("path", ch.path.is_some(), "file")?;
            ChannelKind::Webhook {
                url: ch
                    .url
                    .as_deref()
                    .map(|u| parse_webhook_url(u.trim()))
                    .transpose()
                    .map_err(|r| (key("url"), r))?,
            }
        }
        "log" => {
            only("url", ch.url.is_some(), "webhook")?;
            only("path", ch.path.is_some(), "file")?;
            ChannelKind::Log
        }
        "file" => {
            only("url", ch.url.is_some(), "webhook")?;
            ChannelKind::File {
                path: match ch.path.as_deref().map(str::trim) {
                    Some("") => return Err((key("path"), "empty".into())),
                    Some(p) => Some(PathBuf::from(p)),
                    None => None,
                },
            }
        }
        other => {
            return Err((
                key("transport"),
                format!("unknown transport {other:?} (expected webhook, log, file)"),
            ))
        }
    };
    if transport != "webhook" {
        only("secrets", ch.secrets.is_some(), "webhook")?;
    }
    let secrets = match &ch.secrets {
        None => None,
        Some(list) if list.is_empty() => {
            return Err((
                key("secrets"),
                "empty (leave the key out to use HERALD_WEBHOOK_SECRET)".into(),
            ))
        }
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for (i, s) in list.iter().enumerate() {
                let secret = SecretString::new(s.clone());
                decode_secret(&secret)
                    .map_err(|e| (format!("{at}.secrets[{}]", i + 1), e.to_string()))?;
                out.push(secret);
            }
            Some(out)
        }
    };
    let policy = policy(
        &at,
        &Keys {
            send_timeout: &ch.send_timeout,
            retry_schedule: &ch.retry_schedule,
            rate_limit: &ch.rate_limit,
            max_in_flight: ch.max_in_flight,
            breaker: &ch.breaker,
        },
    )?;
    Ok(FileChannel {
        name: name.to_owned(),
        kind,
        secrets,
        policy,
    })
}

impl ChannelsFile {
    fn error(&self, key: &str, reason: impl std::fmt::Display) -> ConfigError {
        ConfigError::new(ENV, FLAG, format!("{}: {key}: {reason}", self.shown))
    }

    /// The send timeout of channels without their own: `[defaults]`, else
    /// `HERALD_SEND_TIMEOUT_MS` (`env`).
    pub fn default_send_timeout(&self, env: Duration) -> Duration {
        self.defaults.send_timeout.unwrap_or(env)
    }

    /// Adds the file's channels to `transport` (which holds the environment
    /// settings) and returns every channel's policy. A channel defined both
    /// here and in `HERALD_CHANNELS` is an error: one of the two would be
    /// silently ignored.
    pub fn apply(&self, transport: &mut TransportSettings) -> Result<ChannelPolicies, ConfigError> {
        if let Some(t) = self.defaults.send_timeout {
            transport.send_timeout = t;
        }
        let mut named = HashMap::new();
        for ch in &self.channels {
            let at = format!("channels.{}", ch.name);
            if transport.channels.iter().any(|c| c.name == ch.name) {
                return Err(self.error(
                    &at,
                    "also defined in HERALD_CHANNELS; define each channel in one place",
                ));
            }
            match &ch.kind {
                ChannelKind::Webhook { url: None } if transport.webhook_url.is_none() => {
                    return Err(self.error(
                        &format!("{at}.url"),
                        "missing, and HERALD_WEBHOOK_URL (the default) is unset",
                    ))
                }
                ChannelKind::File { path: None } if transport.file_path.is_none() => {
                    return Err(self.error(
                        &format!("{at}.path"),
                        "missing, and HERALD_FILE_PATH (the default) is unset",
                    ))
                }
                _ => {}
            }
            let policy = ch.policy.or(&self.defaults);
            transport.channels.push(ChannelSpec {
                name: ch.name.clone(),
                kind: ch.kind.clone(),
            });
            transport.channel_options.insert(
                ch.name.clone(),
                ChannelOptions {
                    secrets: ch.secrets.clone(),
                    send_timeout: policy.send_timeout,
                },
            );
            named.insert(ch.name.clone(), policy);
        }
        Ok(ChannelPolicies::new(self.defaults.clone(), named))
    }

    /// Every send must fit in the lock (the same rule as for
    /// `HERALD_SEND_TIMEOUT_MS`): checked per channel, naming the key that
    /// set the timeout.
    pub fn check_lock_ttl(&self, lock_ttl: Duration) -> Result<(), ConfigError> {
        let too_long = |t: Duration| t * 2 > lock_ttl;
        let explain = |t: Duration| {
            format!(
                "{} is too long for HERALD_LOCK_TTL_MS ({} ms): a send must fit twice in the lock",
                humantime::format_duration(t),
                lock_ttl.as_millis()
            )
        };
        if let Some(t) = self.defaults.send_timeout.filter(|t| too_long(*t)) {
            return Err(self.error("defaults.send_timeout", explain(t)));
        }
        for ch in &self.channels {
            if let Some(t) = ch.policy.send_timeout.filter(|t| too_long(*t)) {
                return Err(self.error(&format!("channels.{}.send_timeout", ch.name), explain(t)));
            }
        }
        Ok(())
    }
}
