//! The webhook transport: an HTTP POST signed per Standard Webhooks.

use std::fmt;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use reqwest::header::{HeaderValue, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::value::RawValue;

use super::BODY_SNIPPET_BYTES;
use super::{body_snippet, AttemptReport, Delivery, RetryCause, SendOutcome, Signer, Transport};
use crate::secret::redact_url;

/// Idle connections kept per host. The worker runs up to `HERALD_CONCURRENCY`
/// sends at once against usually one host; a pool smaller than that would
/// close and reopen connections on every burst.
const POOL_MAX_IDLE_PER_HOST: usize = 256;

/// How much of an error body ends up in a reason (the rest is only drained).
const REASON_CHARS: usize = 200;
/// Bytes kept of a body: enough for `REASON_CHARS` of 4-byte UTF-8 in the
/// reason, and for the attempt history's snippet.
const KEEP_BYTES: usize = if REASON_CHARS * 4 > BODY_SNIPPET_BYTES {
    REASON_CHARS * 4
} else {
    BODY_SNIPPET_BYTES
};

/// The one HTTP client all webhook channels share (one connection pool).
/// Redirects are not followed: a receiver that moved must be reconfigured,
/// and following would re-send a signed payload to wherever `Location` says.
pub fn build_client(send_timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(send_timeout)
        .connect_timeout(send_timeout)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .tcp_nodelay(true)
        .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// POSTs each delivery to one URL.
#[derive(Clone)]
pub struct WebhookTransport {
    client: reqwest::Client,
    url: url::Url,
    signer: Option<Signer>,
    send_timeout: Duration,
    max_response_bytes: usize,
}

impl fmt::Debug for WebhookTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookTransport")
            .field("url", &redact_url(&self.url))
            .field("signed", &self.signer.is_some())
            .field("send_timeout", &self.send_timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish()
    }
}

#[derive(Serialize)]
struct Body<'a> {
    id: u64,
    user_id: u64,
    channel: &'a str,
    payload: &'a RawValue,
    send_at: DateTime<Utc>,
    attempt: u32,
}

impl WebhookTransport {
    /// `client` should come from [`build_client`], built with a timeout at
    /// least as long as `send_timeout`: each request carries its own
    /// timeout, so channels with different timeouts share one pool.
    pub fn new(
        client: reqwest::Client,
        url: url::Url,
        signer: Option<Signer>,
        send_timeout: Duration,
        max_response_bytes: usize,
    ) -> Self {
        Self {
            client,
            url,
            signer,
            send_timeout,
            max_response_bytes,
        }
    }

    /// Whether deliveries carry `webhook-signature`.
    pub fn has_secret(&self) -> bool {
        self.signer.is_some()
    }

    pub fn url(&self) -> &url::Url {
        &self.url
    }

    /// One attempt, timed from before the body is built to the outcome.
    async fn deliver(&self, d: &Delivery<'_>) -> AttemptReport {
        let started = Instant::now();
        let (outcome, http_status, body) = self.exchange(d).await;
        AttemptReport {
            outcome,
            http_status,
            response_body: body.as_deref().and_then(body_snippet),
            duration: started.elapsed(),
        }
    }

    /// The request and its classification, with the status and the first
    /// [`KEEP_BYTES`] of the body when an answer came.
    async fn exchange(&self, d: &Delivery<'_>) -> (SendOutcome, Option<u16>, Option<Vec<u8>>) {
        let Ok(webhook_id) = HeaderValue::from_str(d.idempotency_key) else {
            let reason = "idempotency key is not a valid webhook-id header value";
            return (SendOutcome::permanent(reason), None, None);
        };
        let body = match serde_json::to_vec(&Body {
            id: d.id,
            user_id: d.user_id,
            channel: d.channel,
            payload: d.payload,
            send_at: d.send_at,
            attempt: d.attempt,
        }) {
            Ok(b) => b,
            Err(e) => {
                let reason = format!("encoding the body: {e}");
                return (SendOutcome::permanent(reason), None, None);
            }
        };
        // Fresh per attempt, as the standard wants: receivers reject stale
        // timestamps to stop replays, and a retry may come hours later.
        let timestamp = Utc::now().timestamp();
        let mut req = self
            .client
            .post(self.url.clone())
            .timeout(self.send_timeout)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("webhook-id", webhook_id)
            .header("webhook-timestamp", timestamp);
        if let Some(signer) = &self.signer {
            req = req.header(
                "webhook-signature",
                signer.sign(d.idempotency_key, timestamp, &body),
            );
        }
        let mut resp = match req.body(body).send().await {
            Ok(r) => r,
            Err(e) => return (self.classify_error(e), None, None),
        };
        let status = resp.status();
        let code = Some(status.as_u16());
        if status.is_success() {
            // Draining a small body lets the connection go back to the pool;
            // a body larger than the cap is not worth reading, so the
            // connection is dropped instead.
            let mut kept = None;
            if resp
                .content_length()
                .is_none_or(|n| n <= self.max_response_bytes as u64)
            {
                kept = Some(read_capped(&mut resp, self.max_response_bytes).await);
            }
            return (SendOutcome::Sent, code, kept);
        }
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now()));
        let location = resp.headers().contains_key(LOCATION);
        let limit = match resp.content_length() {
            Some(n) if n > self.max_response_bytes as u64 => KEEP_BYTES,
            _ => self.max_response_bytes,
        };
        let kept = read_capped(&mut resp, limit).await;
        let snippet = snippet(&kept);
        let kept = Some(kept);
        let mut reason = format!("HTTP {}", status.as_u16());
        if status.is_redirection() {
            reason.push_str(": redirect not followed");
            if !location {
                reason.push_str(" (no Location)");
            }
            return (SendOutcome::Permanent { reason }, code, kept);
        }
        if snippet.is_empty() {
            if let Some(canonical) = status.canonical_reason() {
                reason.push(' ');
                reason.push_str(canonical);
            }
        } else {
            reason.push_str(": ");
            reason.push_str(&snippet);
        }
        if is_transient(status) {
            let cause = match status.as_u16() {
                429 => RetryCause::Throttled,
                408 => RetryCause::Timeout,
                _ => RetryCause::Error,
            };
            let outcome = SendOutcome::Transient {
                reason,
                retry_after,
                cause,
            };
            (outcome, code, kept)
        } else {
            (SendOutcome::Permanent { reason }, code, kept)
        }
    }

    fn classify_error(&self, e: reqwest::Error) -> SendOutcome {
        // The URL may carry a token; reasons end up in the database.
        let e = e.without_url();
        if e.is_timeout() {
            return SendOutcome::timeout(format!(
                "timeout after {}",
                fmt_duration(self.send_timeout)
            ));
        }
        if e.is_connect() {
            return SendOutcome::transient(format!("connect: {}", root_cause(&e)));
        }
        if e.is_builder() {
            return SendOutcome::permanent(format!("building the request: {}", cause_chain(&e)));
        }
        SendOutcome::transient(cause_chain(&e))
    }
}

impl Transport for WebhookTransport {
    fn send<'a>(&'a self, d: &'a Delivery<'a>) -> BoxFuture<'a, SendOutcome> {
        Box::pin(async move { self.deliver(d).await.outcome })
    }

    fn attempt<'a>(&'a self, d: &'a Delivery<'a>) -> BoxFuture<'a, AttemptReport> {
        Box::pin(self.deliver(d))
    }

    fn kind(&self) -> &'static str {
        "webhook"
    }

    fn signing_keys(&self) -> usize {
        self.signer.as_ref().map_or(0, Signer::key_count)
    }
}

/// 408 and 429 are the receiver asking us to come back; 5xx (and anything
/// non-standard above) is its own failure, which may pass.
fn is_transient(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429) || status.as_u16() >= 500
}

/// Reads at most about `limit` bytes of the body and keeps the first
/// [`KEEP_BYTES`]. Stops at the limit instead of reading on: a receiver that
/// streams an endless error page must not hold a send slot until the timeout.
async fn read_capped(resp: &mut reqwest::Response, limit: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut total = 0usize;
    while total < limit {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                total += chunk.len();
                let room = KEEP_BYTES.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            // A body that fails mid-way only costs us some reason text.
            Ok(None) | Err(_) => break,
        }
    }
    kept
}

/// The first [`REASON_CHARS`] characters of a body, on one line.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let mut out: String = text
        .chars()
        .take(REASON_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(REASON_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// `Retry-After` as delta-seconds or an HTTP-date (IMF-fixdate), relative to
/// `now`. A date in the past means "now"; anything unparsable is ignored and
/// the worker's own backoff applies.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// The innermost error: for connect failures that is the useful part
/// ("Connection refused", a DNS failure), not reqwest's generic wrapper.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// `a: b: c` over the source chain, skipping repeats (wrappers often
/// include their source's text).
fn cause_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }

    #[test]
    fn snippets_are_short_and_single_line() {
        assert_eq!(
            snippet(b"  down\nfor maintenance \n"),
            "down for maintenance"
        );
        let long = "x".repeat(500);
        let s = snippet(long.as_bytes());
        assert_eq!(s.chars().count(), REASON_CHARS + 1);
        assert!(s.ends_with('…'));
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(fmt_duration(Duration::from_secs(10)), "10s");
        assert_eq!(fmt_duration(Duration::from_millis(250)), "250ms");
    }
}
