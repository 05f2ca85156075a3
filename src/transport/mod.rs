//! Delivering one notification, and saying whether a failure is worth retrying.
//!
//! The worker hands a [`Delivery`] to the [`Transport`] its channel maps to and
//! gets back a [`SendOutcome`]: `Sent`, `Transient` (retry later, honouring
//! `retry_after` when the receiver gave one) or `Permanent` (retrying cannot
//! help). Transports never retry themselves: backoff and attempt counting live
//! in the worker, where they are recorded in the database.
//!
//! # Transports
//!
//! * **webhook** — `POST` of `{"id","user_id","channel","payload","send_at","attempt"}`
//!   with the [Standard Webhooks](https://www.standardwebhooks.com/) headers
//!   `webhook-id` (the idempotency key: the dedupe key or the id, the same on
//!   every attempt), `webhook-timestamp` and, when `HERALD_WEBHOOK_SECRET` is
//!   set, `webhook-signature`. 2xx is sent; 408, 429, 5xx, timeouts and
//!   connection errors are transient (`Retry-After` honoured); redirects are
//!   not followed and, like other 4xx, are permanent.
//! * **log** — one JSON line per delivery on stdout, for development.
//! * **file** — one JSON line per delivery appended to a file, each line with a
//!   single `write(2)` on an `O_APPEND` descriptor, so many tasks and several
//!   processes can share one file. `HERALD_FILE_LATENCY_MS` makes it wait
//!   that long before each write, a stand-in for a slow receiver ([`file::latency`]).
//!   Used by the benchmark.
//!
//! # Channels: `HERALD_CHANNELS`
//!
//! A comma-separated list of `name=kind` or `name=kind:arg` entries:
//!
//! ```text
//! HERALD_CHANNELS=sms=webhook:https://sms.internal/hook,audit=file:/var/log/herald-audit.jsonl,dev=log
//! ```
//!
//! | kind | arg | without arg |
//! |---|---|---|
//! | `webhook` | an absolute `http`/`https` URL | `HERALD_WEBHOOK_URL` (must be set) |
//! | `log` | none allowed | — |
//! | `file` | a file path (created if missing, appended to) | `HERALD_FILE_PATH` (must be set) |
//!
//! Names use letters, digits, `_`, `-` and `.`; a name may appear once.
//! Whitespace around entries is ignored, and so are empty entries. The
//! argument runs to the next comma, so URLs and paths cannot contain commas.
//! All webhook channels share `HERALD_WEBHOOK_SECRET`, `HERALD_SEND_TIMEOUT_MS`
//! and one connection pool; channels of the config file (`HERALD_CONFIG`)
//! may set their own secrets and timeout ([`ChannelOptions`]) and still
//! share the pool. `HERALD_WEBHOOK_SECRET` may hold several secrets
//! (separated by spaces or commas) while one is rotated: each delivery then
//! carries one `v1,` signature per secret.
//!
//! Out of the box, unless `HERALD_CHANNELS` defines the same name:
//! `webhook` uses the webhook transport with `HERALD_WEBHOOK_URL` (when that is
//! unset the channel is not configured and its rows fail permanently, with a
//! reason saying so), `log` the log transport, and `file` the file transport
//! with `HERALD_FILE_PATH` (likewise only when set). Any other channel name is
//! unknown and its rows fail permanently.
//!
//! A bad entry is rejected at start-up with its position and text, e.g.
//! `HERALD_CHANNELS: entry 2 "sms=carrier-pigeon": unknown transport
//! "carrier-pigeon" (expected webhook, log, file)`; any URL credentials in
//! the echoed text are shown as `***`, whatever the URL's shape.
//!
//! # Modules
//!
//! * `channels` — parsing `HERALD_CHANNELS` and the webhook URL rule;
//! * `webhook`, `log`, [`file`](mod@file) — the transports (the file channel's
//!   simulated latency is [`file::latency`]);
//! * `signature` — Standard Webhooks signing and verification;
//! * `report` — [`AttemptReport`]: what one attempt looked like (status,
//!   the start of the body, duration), for the attempt history.

mod channels;
pub mod file;
mod log;
mod report;
mod signature;
mod webhook;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde_json::value::RawValue;

pub use crate::policy::RetryCause;
use crate::secret::SecretString;

pub use channels::{parse_channels, parse_webhook_url, ChannelKind, ChannelSpec};
pub use file::FileTransport;
pub use log::LogTransport;
pub use report::{body_snippet, AttemptReport, BODY_SNIPPET_BYTES};
pub use signature::{decode_secret, verify_signature, SecretError, Signer, SECRET_PREFIX};
pub use webhook::{build_client, parse_retry_after, WebhookTransport};

/// What a transport needs to deliver one notification. Borrowed so the worker
/// does not clone payloads.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    pub id: u64,
    pub user_id: u64,
    pub channel: &'a str,
    /// Already validated as a JSON object by the worker; embedded verbatim.
    pub payload: &'a RawValue,
    pub send_at: chrono::DateTime<chrono::Utc>,
    /// 1 on the first try.
    pub attempt: u32,
    /// `dedupe_key` if set, else the id in decimal; the same on every attempt
    /// so receivers can drop duplicates after a crash mid-send.
    pub idempotency_key: &'a str,
}

/// The result of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    Sent,
    /// Worth retrying: 408, 429, 5xx, timeouts, connection errors.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
        /// Timeouts and 429 get a floor under their retry delay: the
        /// receiver is struggling, and an early retry adds to its load.
        cause: RetryCause,
    },
    /// Retrying cannot help: other 4xx, redirects, bad configuration.
    Permanent {
        reason: String,
    },
}

impl SendOutcome {
    pub fn transient(reason: impl Into<String>) -> Self {
        SendOutcome::Transient {
            reason: reason.into(),
            retry_after: None,
            cause: RetryCause::Error,
        }
    }

    /// The receiver did not answer in time.
    pub fn timeout(reason: impl Into<String>) -> Self {
        SendOutcome::Transient {
            reason: reason.into(),
            retry_after: None,
            cause: RetryCause::Timeout,
        }
    }

    pub fn permanent(reason: impl Into<String>) -> Self {
        SendOutcome::Permanent {
            reason: reason.into(),
        }
    }

    pub fn is_sent(&self) -> bool {
        matches!(self, SendOutcome::Sent)
    }
}

/// A way of delivering notifications. Object-safe so the registry can hold
/// different kinds behind one `Arc<dyn Transport>`.
pub trait Transport: Send + Sync + std::fmt::Debug {
    fn send<'a>(&'a self, d: &'a Delivery<'a>) -> BoxFuture<'a, SendOutcome>;
    /// [`Transport::send`], with what the attempt history keeps about it.
    /// The worker calls this one. Transports that have an HTTP status or a
    /// response body to tell override it; the rest get the outcome and the
    /// time `send` took.
    fn attempt<'a>(&'a self, d: &'a Delivery<'a>) -> BoxFuture<'a, AttemptReport> {
        Box::pin(async move {
            let started = Instant::now();
            let outcome = self.send(d).await;
            AttemptReport::new(outcome, started.elapsed())
        })
    }
    /// `"webhook"`, `"log"` or `"file"`, for logs and metrics labels.
    fn kind(&self) -> &'static str;
    /// How many secrets sign each delivery (0: unsigned), for the start-up
    /// log line: during a rotation the operator sees both are in use.
    fn signing_keys(&self) -> usize {
        0
    }
}

/// Everything the transports are configured from (CLI flags / `HERALD_*`).
#[derive(Debug, Clone)]
pub struct TransportSettings {
    /// `HERALD_WEBHOOK_URL`, used by channel `webhook` and by `name=webhook` entries.
    pub webhook_url: Option<url::Url>,
    /// `HERALD_WEBHOOK_SECRET`: `whsec_` + base64, or raw bytes otherwise.
    pub webhook_secret: Option<SecretString>,
    /// `HERALD_SEND_TIMEOUT_MS`: the whole request, including reading the body.
    pub send_timeout: Duration,
    /// Cap on the response body read; bodies only feed error reasons.
    pub max_response_bytes: usize,
    /// `HERALD_FILE_PATH` for channel `file`.
    pub file_path: Option<PathBuf>,
    /// `HERALD_FILE_LATENCY_MS`: simulated latency before each file write.
    pub file_latency: Duration,
    /// `HERALD_CHANNELS`, parsed, and the channels of the config file.
    pub channels: Vec<ChannelSpec>,
    /// What a channel sets for itself (from the config file); channels
    /// not listed use the settings above.
    pub channel_options: HashMap<String, ChannelOptions>,
}

/// One channel's own transport settings, from the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelOptions {
    /// Signing secrets instead of `HERALD_WEBHOOK_SECRET`: one signature
    /// per secret on every delivery (rotation).
    pub secrets: Option<Vec<SecretString>>,
    /// Instead of `HERALD_SEND_TIMEOUT_MS`.
    pub send_timeout: Option<Duration>,
}

impl TransportSettings {
    pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 * 1024;
}

impl Default for TransportSettings {
    fn default() -> Self {
        Self {
            webhook_url: None,
            webhook_secret: None,
            send_timeout: Self::DEFAULT_SEND_TIMEOUT,
            max_response_bytes: Self::DEFAULT_MAX_RESPONSE_BYTES,
            file_path: None,
            file_latency: Duration::ZERO,
            channels: Vec::new(),
            channel_options: HashMap::new(),
        }
    }
}

/// Configuration that cannot work; each message names the setting.
#[derive(Debug, thiserror::Error)]
pub enum TransportConfigError {
    #[error("HERALD_CHANNELS: entry {entry} \"{text}\": {problem}")]
    Channels {
        entry: usize,
        text: String,
        problem: String,
    },
    #[error("HERALD_WEBHOOK_SECRET: {0}")]
    Secret(#[from] SecretError),
    #[error("HERALD_WEBHOOK_URL: {0}")]
    WebhookUrl(String),
    #[error("channel \"{channel}\": {problem}")]
    Channel { channel: String, problem: String },
    #[error("channel \"{channel}\": secrets: {source}")]
    ChannelSecret {
        channel: String,
        #[source]
        source: SecretError,
    },
    #[error("channel \"{channel}\": cannot open {path} for appending")]
    File {
        channel: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("building the HTTP client")]
    HttpClient(#[source] reqwest::Error),
}

/// Channel name → transport. Built once at start-up; cheap to clone.
#[derive(Clone, Debug)]
pub struct Transports {
    inner: Arc<Registry>,
}

#[derive(Debug)]
struct Registry {
    by_channel: HashMap<String, Arc<dyn Transport>>,
    /// Built-in channels that are off because a setting is missing, with the
    /// reason rows on them fail with.
    unconfigured: HashMap<String, String>,
    unsigned_webhooks: bool,
}

impl Transports {
    pub fn from_settings(s: &TransportSettings) -> Result<Transports, TransportConfigError> {
        let signer = s
            .webhook_secret
            .as_ref()
            .map(Signer::from_secret)
            .transpose()?;
        if let Some(url) = &s.webhook_url {
            channels::parse_webhook_url(url.as_str()).map_err(TransportConfigError::WebhookUrl)?;
        }
        // One client (one pool) for all webhook channels, built lazily so
        // deployments without webhooks do not pay for it. Its timeouts are
        // the longest any channel uses; each request carries its own.
        let longest = s
            .channel_options
            .values()
            .filter_map(|o| o.send_timeout)
            .fold(s.send_timeout, Duration::max);
        let mut client: Option<reqwest::Client> = None;
        let mut webhook = |name: &str,
                           url: url::Url|
         -> Result<(Arc<dyn Transport>, bool), TransportConfigError> {
            let c = match &client {
                Some(c) => c.clone(),
                None => {
                    let c = build_client(longest).map_err(TransportConfigError::HttpClient)?;
                    client = Some(c.clone());
                    c
                }
            };
            let own = s.channel_options.get(name);
            let signer = match own.and_then(|o| o.secrets.as_deref()) {
                Some(secrets) => Some(Signer::from_secrets(secrets).map_err(|source| {
                    TransportConfigError::ChannelSecret {
                        channel: name.to_owned(),
                        source,
                    }
                })?),
                None => signer.clone(),
            };
            let signed = signer.is_some();
            let timeout = own.and_then(|o| o.send_timeout).unwrap_or(s.send_timeout);
            let t = WebhookTransport::new(c, url, signer, timeout, s.max_response_bytes);
            Ok((Arc::new(t), signed))
        };
        let file = |channel: &str, path: &PathBuf| -> Result<Arc<dyn Transport>, _> {
            FileTransport::open(path, s.file_latency)
                .map(|t| Arc::new(t) as Arc<dyn Transport>)
                .map_err(|source| TransportConfigError::File {
                    channel: channel.to_owned(),
                    path: path.clone(),
                    source,
                })
        };

        let mut by_channel: HashMap<String, Arc<dyn Transport>> = HashMap::new();
        let mut unconfigured = HashMap::new();
        let mut unsigned_webhooks = false;
        let defined = |name: &str| s.channels.iter().any(|c| c.name == name);

        if !defined("webhook") {
            match &s.webhook_url {
                Some(url) => {
                    let (t, signed) = webhook("webhook", url.clone())?;
                    by_channel.insert("webhook".into(), t);
                    unsigned_webhooks |= !signed;
                }
                None => {
                    unconfigured.insert(
                        "webhook".into(),
                        "channel \"webhook\" is not configured: HERALD_WEBHOOK_URL is unset".into(),
                    );
                }
            }
        }
        if !defined("log") {
            by_channel.insert("log".into(), Arc::new(LogTransport::stdout()));
        }
        if !defined("file") {
            match &s.file_path {
                Some(path) => {
                    by_channel.insert("file".into(), file("file", path)?);
                }
                None => {
                    unconfigured.insert(
                        "file".into(),
                        "channel \"file\" is not configured: HERALD_FILE_PATH is unset".into(),
                    );
                }
            }
        }

        for spec in &s.channels {
            let missing = |setting: &str| TransportConfigError::Channel {
                channel: spec.name.clone(),
                problem: format!(
                    "HERALD_CHANNELS gives no {} argument and {setting} is unset",
                    spec.kind.kind_name()
                ),
            };
            let t = match &spec.kind {
                ChannelKind::Webhook { url } => {
                    let url = url
                        .clone()
                        .or_else(|| s.webhook_url.clone())
                        .ok_or_else(|| missing("HERALD_WEBHOOK_URL"))?;
                    let (t, signed) = webhook(&spec.name, url)?;
                    unsigned_webhooks |= !signed;
                    t
                }
                ChannelKind::Log => Arc::new(LogTransport::stdout()),
                ChannelKind::File { path } => {
                    let path = path
                        .as_ref()
                        .or(s.file_path.as_ref())
                        .ok_or_else(|| missing("HERALD_FILE_PATH"))?;
                    file(&spec.name, path)?
                }
            };
            by_channel.insert(spec.name.clone(), t);
        }

        Ok(Transports {
            inner: Arc::new(Registry {
                by_channel,
                unconfigured,
                unsigned_webhooks,
            }),
        })
    }

    /// A registry with exactly these channels, for tests and embedders.
    pub fn from_map(by_channel: HashMap<String, Arc<dyn Transport>>) -> Transports {
        Transports {
            inner: Arc::new(Registry {
                by_channel,
                unconfigured: HashMap::new(),
                unsigned_webhooks: false,
            }),
        }
    }

    /// `None` means the worker fails the row permanently, with
    /// [`Transports::missing_reason`] as the reason.
    pub fn for_channel(&self, channel: &str) -> Option<&Arc<dyn Transport>> {
        self.inner.by_channel.get(channel)
    }

    /// [`Transports::for_channel`], with the reason to record when it is missing.
    pub fn resolve(&self, channel: &str) -> Result<&Arc<dyn Transport>, String> {
        self.for_channel(channel)
            .ok_or_else(|| self.missing_reason(channel))
    }

    /// Why `channel` has no transport: a built-in channel whose setting is
    /// unset says which one; anything else is an unknown channel.
    pub fn missing_reason(&self, channel: &str) -> String {
        if let Some(reason) = self.inner.unconfigured.get(channel) {
            return reason.clone();
        }
        let shown: String = channel.chars().take(64).collect();
        format!(
            "unknown channel \"{shown}\" (configured: {})",
            self.channel_names().join(", ")
        )
    }

    /// Configured channel names, sorted, for start-up logs and error reasons.
    pub fn channel_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.inner.by_channel.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// `(channel, kind)` pairs, sorted by channel, for the start-up log line.
    pub fn describe(&self) -> Vec<(&str, &'static str)> {
        self.channel_names()
            .into_iter()
            .map(|n| (n, self.inner.by_channel[n].kind()))
            .collect()
    }

    /// Secrets signing `channel`'s deliveries (0 for unsigned or unknown).
    pub fn signing_keys(&self, channel: &str) -> usize {
        self.for_channel(channel).map_or(0, |t| t.signing_keys())
    }

    /// True when some webhook channel sends without `webhook-signature`
    /// (no `HERALD_WEBHOOK_SECRET`): the caller warns once at start-up.
    pub fn has_unsigned_webhooks(&self) -> bool {
        self.inner.unsigned_webhooks
    }
}
