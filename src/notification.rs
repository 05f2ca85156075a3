//! The notification row model and validation of what callers enqueue.
//!
//! The table is a contract other services write to directly, so validation
//! lives here (shared by `herald enqueue` and the library API) and the worker
//! re-checks what it reads: a row written badly by someone else must fail on
//! its own, never crash a worker.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration as ChronoDuration, TimeZone, Utc};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Lifecycle of a row. `pending` and `sending` are live; the rest are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    Pending,
    Sending,
    Sent,
    Failed,
    Expired,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Pending,
        Status::Sending,
        Status::Sent,
        Status::Failed,
        Status::Expired,
        Status::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Sending => "sending",
            Status::Sent => "sent",
            Status::Failed => "failed",
            Status::Expired => "expired",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        !matches!(self, Status::Pending | Status::Sending)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown status {s:?}"))
    }
}

/// Limits applied to enqueued input. Column sizes in the migration match.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Serialized payload size cap; a larger payload is a caller bug, and it
    /// would be copied through every poll and delivery.
    pub max_payload_bytes: usize,
    pub default_region: String,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 64 * 1024,
            default_region: "default".into(),
        }
    }
}

pub const MAX_CHANNEL_LEN: usize = 64;
pub const MAX_REGION_LEN: usize = 32;
pub const MAX_DEDUPE_KEY_LEN: usize = 191;
/// Deepest nesting of objects and arrays in a payload, the payload object
/// itself being level 1. MariaDB's `JSON_VALID` (the table's CHECK) refuses
/// 32 levels and more; MySQL 8 allows 100. Checking here names the line
/// instead of failing a whole INSERT.
pub const MAX_PAYLOAD_DEPTH: usize = 31;
/// Schedules further ahead than this are almost certainly unit mistakes
/// (milliseconds taken for seconds, a year typed wrong).
pub const MAX_SCHEDULE_AHEAD_DAYS: i64 = 3660;

/// A validated notification ready to insert.
#[derive(Debug, Clone, PartialEq)]
pub struct NewNotification {
    pub user_id: u64,
    pub channel: String,
    pub region: String,
    /// Compact JSON text of an object.
    pub payload: String,
    pub dedupe_key: Option<String>,
    pub send_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// One problem with one field of one input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: &'static str,
    pub reason: String,
}

impl FieldError {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

impl NewNotification {
    /// Builds and validates a notification from code (the library API).
    pub fn builder(user_id: u64, channel: &str, payload: Value) -> Builder {
        Builder {
            input: Map::from_iter([
                ("user_id".to_owned(), Value::from(user_id)),
                ("channel".to_owned(), Value::from(channel)),
                ("payload".to_owned(), payload),
            ]),
        }
    }

    /// Parses one JSON line of `herald enqueue` input.
    pub fn from_json_line(
        line: &str,
        limits: &Limits,
        now: DateTime<Utc>,
    ) -> Result<Self, FieldError> {
        let value: Value = serde_json::from_str(line)
            .map_err(|e| FieldError::new("(line)", format!("not valid JSON: {e}")))?;
        match value {
            Value::Object(map) => Self::from_map(map, limits, now),
            other => Err(FieldError::new(
                "(line)",
                format!("expected a JSON object, got {}", kind(&other)),
            )),
        }
    }

    /// Validates a decoded object; the first problem found is reported.
    pub fn from_map(
        mut map: Map<String, Value>,
        limits: &Limits,
        now: DateTime<Utc>,
    ) -> Result<Self, FieldError> {
        const KNOWN: [&str; 7] = [
            "user_id",
            "channel",
            "payload",
            "send_at",
            "expires_at",
            "dedupe_key",
            "region",
        ];
        if let Some(unknown) = map.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(FieldError {
                field: "(line)",
                reason: format!(
                    "unknown field {unknown:?} (expected one of {})",
                    KNOWN.join(", ")
                ),
            });
        }

        let user_id = match map.remove("user_id") {
            None | Some(Value::Null) => return Err(FieldError::new("user_id", "missing")),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(id) if id <= i64::MAX as u64 => id,
                _ if n.as_i64().is_some_and(|v| v < 0) => {
                    return Err(FieldError::new(
                        "user_id",
                        format!("must not be negative, got {n}"),
                    ))
                }
                _ => {
                    return Err(FieldError::new(
                        "user_id",
                        format!("must be a whole number between 0 and {}, got {n}", i64::MAX),
                    ))
                }
            },
            Some(other) => {
                return Err(FieldError::new(
                    "user_id",
                    format!("expected a number, got {}", kind(&other)),
                ))
            }
        };

        let channel = required_string(&mut map, "channel")?;
        validate_name("channel", &channel, MAX_CHANNEL_LEN)?;

        let payload = match map.remove("payload") {
            None | Some(Value::Null) => return Err(FieldError::new("payload", "missing")),
            Some(Value::Object(obj)) => {
                let depth = 1 + obj.values().map(nesting).max().unwrap_or(0);
                if depth > MAX_PAYLOAD_DEPTH {
                    return Err(FieldError::new(
                        "payload",
                        format!(
                            "nested {depth} levels deep; at most {MAX_PAYLOAD_DEPTH} levels of \
                             objects and arrays are accepted (the database's JSON limit)"
                        ),
                    ));
                }
                let text = serde_json::to_string(&obj)
                    .map_err(|e| FieldError::new("payload", e.to_string()))?;
                if text.len() > limits.max_payload_bytes {
                    return Err(FieldError::new(
                        "payload",
                        format!(
                            "{} bytes is larger than the limit of {} bytes",
                            text.len(),
                            limits.max_payload_bytes
                        ),
                    ));
                }
                text
            }
            Some(other) => {
                return Err(FieldError::new(
                    "payload",
                    format!("expected a JSON object, got {}", kind(&other)),
                ))
            }
        };

        let send_at = match optional_string(&mut map, "send_at")? {
            None => now,
            Some(s) => parse_time("send_at", &s, now)?,
        };
        let expires_at = match optional_string(&mut map, "expires_at")? {
            None => None,
            Some(s) => {
                let t = parse_time("expires_at", &s, now)?;
                if t <= send_at {
                    return Err(FieldError::new(
                        "expires_at",
                        format!("{} is not after send_at {}", rfc3339(t), rfc3339(send_at)),
                    ));
                }
                Some(t)
            }
        };

        let dedupe_key = optional_string(&mut map, "dedupe_key")?;
        if let Some(k) = &dedupe_key {
            if k.is_empty() {
                return Err(FieldError::new(
                    "dedupe_key",
                    "must not be empty (omit it instead)",
                ));
            }
            // It becomes the `webhook-id` header, so it must be a valid
            // header value: printable ASCII.
            if let Some(c) = k.chars().find(|c| !(' '..='~').contains(c)) {
                return Err(FieldError::new(
                    "dedupe_key",
                    format!("contains {c:?}; use printable ASCII only"),
                ));
            }
            // The unique index ignores trailing spaces (PAD SPACE collation on
            // MariaDB and MySQL), and HTTP drops leading and trailing
            // whitespace from the `webhook-id` header the key becomes: such a
            // key would silently equal its trimmed form.
            if k.starts_with(' ') || k.ends_with(' ') {
                return Err(FieldError::new(
                    "dedupe_key",
                    format!(
                        "{k:?} starts or ends with a space; the table and receivers compare \
                         keys without them, so remove them"
                    ),
                ));
            }
            if k.len() > MAX_DEDUPE_KEY_LEN {
                return Err(FieldError::new(
                    "dedupe_key",
                    format!("{} bytes is longer than {MAX_DEDUPE_KEY_LEN}", k.len()),
                ));
            }
        }

        let region = match optional_string(&mut map, "region")? {
            None => limits.default_region.clone(),
            Some(r) => {
                validate_name("region", &r, MAX_REGION_LEN)?;
                r
            }
        };

        Ok(Self {
            user_id,
            channel,
            region,
            payload,
            dedupe_key,
            send_at,
            expires_at,
        })
    }

    /// The key a receiver deduplicates on: stable over retries and re-claims.
    pub fn idempotency_key(id: u64, dedupe_key: Option<&str>) -> String {
        dedupe_key.map_or_else(|| id.to_string(), str::to_owned)
    }
}

/// Fluent construction for the library API; `build` applies the same
/// validation as `herald enqueue`.
#[derive(Debug, Clone)]
pub struct Builder {
    input: Map<String, Value>,
}

impl Builder {
    pub fn send_at(mut self, t: DateTime<Utc>) -> Self {
        self.input.insert("send_at".into(), Value::from(rfc3339(t)));
        self
    }
    pub fn expires_at(mut self, t: DateTime<Utc>) -> Self {
        self.input
            .insert("expires_at".into(), Value::from(rfc3339(t)));
        self
    }
    pub fn dedupe_key(mut self, k: impl Into<String>) -> Self {
        self.input
            .insert("dedupe_key".into(), Value::from(k.into()));
        self
    }
    pub fn region(mut self, r: impl Into<String>) -> Self {
        self.input.insert("region".into(), Value::from(r.into()));
        self
    }
    pub fn build(self, limits: &Limits) -> Result<NewNotification, FieldError> {
        NewNotification::from_map(self.input, limits, Utc::now())
    }
}

/// RFC 3339 with microseconds, the precision the table keeps.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn parse_time(
    field: &'static str,
    s: &str,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, FieldError> {
    let t = DateTime::parse_from_rfc3339(s)
        .map_err(|e| FieldError::new(field, format!("{s:?} is not an RFC 3339 time ({e})")))?
        .with_timezone(&Utc);
    let earliest = Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap();
    let latest = now + ChronoDuration::days(MAX_SCHEDULE_AHEAD_DAYS);
    if t < earliest || t > latest {
        return Err(FieldError::new(
            field,
            format!(
                "{s} is out of range (must be between 2000-01-01 and {} days from now)",
                MAX_SCHEDULE_AHEAD_DAYS
            ),
        ));
    }
    // The table keeps microseconds; truncate here so what we return equals
    // what a later read gives back.
    Ok(DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t))
}

fn required_string(
    map: &mut Map<String, Value>,
    field: &'static str,
) -> Result<String, FieldError> {
    optional_string(map, field)?.ok_or_else(|| FieldError::new(field, "missing"))
}

fn optional_string(
    map: &mut Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, FieldError> {
    match map.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(FieldError::new(
            field,
            format!("expected a string, got {}", kind(&other)),
        )),
    }
}

fn validate_name(field: &'static str, v: &str, max: usize) -> Result<(), FieldError> {
    if v.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if v.len() > max {
        return Err(FieldError::new(
            field,
            format!("{} bytes is longer than {max}", v.len()),
        ));
    }
    if let Some(c) = crate::name::first_bad_char(v) {
        return Err(FieldError::new(
            field,
            format!("{v:?} contains {c:?}; use {}", crate::name::ALLOWED),
        ));
    }
    Ok(())
}

/// Levels of objects and arrays in `v` (a scalar is 0). Recursion is
/// bounded: serde_json refuses input nested deeper than 128.
fn nesting(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(nesting).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(nesting).max().unwrap_or(0),
        _ => 0,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A row as the worker reads it after claiming. Fields another service may
/// have written badly are kept raw and checked by [`ClaimedRow::check`].
#[derive(Debug, Clone)]
pub struct ClaimedRow {
    pub id: u64,
    pub user_id: u64,
    pub channel: String,
    pub payload: Option<String>,
    pub dedupe_key: Option<String>,
    pub send_at: Option<DateTime<Utc>>,
    pub due_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub attempts: u32,
    /// The payload's stored size. A large payload is not read with the
    /// claim (`payload` is then `None`) but at send time, under the
    /// worker's byte budget.
    pub payload_bytes: u64,
    /// An operator asked to cancel it (`herald cancel`) while it was
    /// being sent by an earlier claim: it is handed back, which ends it
    /// `cancelled`, instead of being sent.
    pub cancel_requested: bool,
}

/// Why a claimed row cannot be delivered at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    #[error("payload is missing")]
    NoPayload,
    #[error("payload is not a JSON object: {0}")]
    BadPayload(String),
    #[error("send_at is missing")]
    NoSendAt,
}

impl ClaimedRow {
    /// The payload as raw JSON, checked to be an object, so transports can
    /// embed it without re-encoding.
    pub fn check(&self) -> Result<Box<RawValue>, Unusable> {
        let text = self.payload.as_deref().ok_or(Unusable::NoPayload)?;
        if self.send_at.is_none() {
            return Err(Unusable::NoSendAt);
        }
        let trimmed = text.trim_start();
        if !trimmed.starts_with('{') {
            return Err(Unusable::BadPayload("expected an object".into()));
        }
        RawValue::from_string(trimmed.to_owned()).map_err(|e| Unusable::BadPayload(e.to_string()))
    }

    pub fn idempotency_key(&self) -> String {
        NewNotification::idempotency_key(self.id, self.dedupe_key.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<NewNotification, FieldError> {
        NewNotification::from_json_line(line, &Limits::default(), Utc::now())
    }

    #[test]
    fn good_line_defaults() {
        let n = parse(r#"{"user_id":7,"channel":"webhook","payload":{"a":1}}"#).unwrap();
        assert_eq!(n.user_id, 7);
        assert_eq!(n.region, "default");
        assert_eq!(n.payload, r#"{"a":1}"#);
    }

    #[test]
    fn offsets_become_utc() {
        let n = parse(r#"{"user_id":7,"channel":"c","payload":{},"send_at":"2030-01-01T12:00:00.123456+02:00"}"#).unwrap();
        assert_eq!(rfc3339(n.send_at), "2030-01-01T10:00:00.123456Z");
    }

    #[test]
    fn payload_depth_and_key_spaces() {
        let nested = |d: usize| {
            format!(
                r#"{{"user_id":1,"channel":"c","payload":{}1{}}}"#,
                r#"{"a":"#.repeat(d),
                "}".repeat(d)
            )
        };
        assert!(parse(&nested(MAX_PAYLOAD_DEPTH)).is_ok());
        let err = parse(&nested(MAX_PAYLOAD_DEPTH + 1)).unwrap_err();
        assert_eq!(err.field, "payload", "{err}");
        assert!(err.reason.contains("nested 32 levels"), "{err}");
        for key in ["order-17 ", " order-17"] {
            let line =
                format!(r#"{{"user_id":1,"channel":"c","payload":{{}},"dedupe_key":"{key}"}}"#);
            assert_eq!(parse(&line).unwrap_err().field, "dedupe_key");
        }
        assert!(parse(r#"{"user_id":1,"channel":"c","payload":{},"dedupe_key":"a b"}"#).is_ok());
    }

    #[test]
    fn each_class_names_its_field() {
        let cases = [
            ("nope", "(line)"),
            (r#"{"channel":"c","payload":{}}"#, "user_id"),
            (r#"{"user_id":"7","channel":"c","payload":{}}"#, "user_id"),
            (r#"{"user_id":-1,"channel":"c","payload":{}}"#, "user_id"),
            (r#"{"user_id":1,"channel":"","payload":{}}"#, "channel"),
            (r#"{"user_id":1,"channel":"c","payload":[1]}"#, "payload"),
            (
                r#"{"user_id":1,"channel":"c","payload":{},"send_at":"tomorrow"}"#,
                "send_at",
            ),
            (
                r#"{"user_id":1,"channel":"c","payload":{},"send_at":"9999-01-01T00:00:00Z"}"#,
                "send_at",
            ),
            (
                r#"{"user_id":1,"channel":"c","payload":{},"send_at":"2030-01-01T00:00:00Z","expires_at":"2029-01-01T00:00:00Z"}"#,
                "expires_at",
            ),
        ];
        for (line, field) in cases {
            let err = parse(line).unwrap_err();
            assert_eq!(err.field, field, "{line}: {err}");
        }
    }
}
