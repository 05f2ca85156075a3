//! A selection as callers write it (CLI flags, query strings, JSON), and
//! its validation into a [`Selection`]: one set of rules and messages for
//! the commands, the API and the console.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::select::{Order, Selection};
use crate::notification::Status;

/// Most ids one request may name (a batch of them is one statement).
pub const MAX_IDS: usize = 10_000;

/// The raw form; every field optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectionSpec {
    #[serde(default)]
    pub ids: Vec<u64>,
    pub dedupe_key: Option<String>,
    /// Comma-separated statuses.
    pub status: Option<String>,
    pub channel: Option<String>,
    pub user_id: Option<u64>,
    pub region: Option<String>,
    /// RFC 3339, or a duration ago (`90s`, `30m`, `12h`, `7d`).
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: Option<u64>,
    /// `newest_first` (default) or `oldest_first`.
    pub order: Option<String>,
    /// Allow a selection without any filter (every row).
    #[serde(default)]
    pub all: bool,
}

/// A field of a [`SelectionSpec`] that is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SpecError {
    pub field: &'static str,
    pub reason: String,
}

fn bad(field: &'static str, reason: impl Into<String>) -> SpecError {
    SpecError {
        field,
        reason: reason.into(),
    }
}

/// `2026-11-29T10:00:00Z` (any offset), or a duration ago (`2h`).
pub fn parse_time(raw: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let raw = raw.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(t.with_timezone(&Utc));
    }
    let ago = crate::setting::parse_duration(raw).map_err(|_| {
        format!("{raw:?} is neither an RFC 3339 time (2026-11-29T10:00:00Z) nor a duration ago (90s, 30m, 12h, 7d)")
    })?;
    chrono::Duration::from_std(ago)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .ok_or_else(|| format!("{raw:?} reaches too far back"))
}

impl SelectionSpec {
    /// Validates into a [`Selection`]. With `require_filter`, a spec that
    /// would select every row is refused unless `all` is set: a retry or
    /// cancel of everything should never be one forgotten flag away.
    pub fn build(&self, require_filter: bool) -> Result<Selection, SpecError> {
        let now = Utc::now();
        if self.ids.len() > MAX_IDS {
            return Err(bad(
                "ids",
                format!("{} ids; at most {MAX_IDS} per request", self.ids.len()),
            ));
        }
        let statuses = match &self.status {
            None => Vec::new(),
            Some(raw) => raw
                .split(',')
                .map(|s| s.trim().parse::<Status>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    bad(
                        "status",
                        format!("{e}; one of pending, sending, sent, failed, expired, cancelled"),
                    )
                })?,
        };
        let name = |field: &'static str, v: &Option<String>, max: usize| match v {
            Some(s) if !crate::name::is_valid(s) || s.len() > max => Err(bad(
                field,
                format!("{s:?} is not a name (1-{max} of {})", crate::name::ALLOWED),
            )),
            other => Ok(other.clone()),
        };
        let channel = name("channel", &self.channel, 64)?;
        let region = name("region", &self.region, crate::notification::MAX_REGION_LEN)?;
        if let Some(k) = &self.dedupe_key {
            if k.is_empty() || k.len() > 191 {
                return Err(bad("dedupe_key", "must be 1-191 characters"));
            }
        }
        let time = |field: &'static str, v: &Option<String>| {
            v.as_deref()
                .map(|raw| parse_time(raw, now).map_err(|r| bad(field, r)))
                .transpose()
        };
        let since = time("since", &self.since)?;
        let until = time("until", &self.until)?;
        if let (Some(a), Some(b)) = (since, until) {
            if a >= b {
                return Err(bad("until", "must be after since"));
            }
        }
        if self.limit == Some(0) {
            return Err(bad("limit", "must be at least 1"));
        }
        let order = match self.order.as_deref() {
            None | Some("newest_first") => Order::NewestFirst,
            Some("oldest_first") => Order::OldestFirst,
            Some(other) => {
                return Err(bad(
                    "order",
                    format!("{other:?}: newest_first or oldest_first"),
                ))
            }
        };
        let sel = Selection {
            ids: self.ids.clone(),
            dedupe_key: self.dedupe_key.clone(),
            statuses,
            channel,
            user_id: self.user_id,
            region,
            since,
            until,
            limit: self.limit,
            order,
        };
        if require_filter && sel.is_everything() && !self.all {
            return Err(bad(
                "selection",
                "no ids and no filter: this would select every row; \
                 give ids or a filter, or say all explicitly (--all, \"all\": true)",
            ));
        }
        Ok(sel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_and_refuses_everything() {
        let spec = SelectionSpec {
            status: Some("failed,expired".into()),
            channel: Some("sms".into()),
            since: Some("2h".into()),
            ..SelectionSpec::default()
        };
        let sel = spec.build(true).unwrap();
        assert_eq!(sel.statuses, vec![Status::Failed, Status::Expired]);
        assert!(sel.since.unwrap() < Utc::now());
        let err = SelectionSpec::default().build(true).unwrap_err();
        assert_eq!(err.field, "selection");
        let all = SelectionSpec {
            all: true,
            ..SelectionSpec::default()
        };
        assert!(all.build(true).unwrap().is_everything());
        let bad_status = SelectionSpec {
            status: Some("done".into()),
            ..SelectionSpec::default()
        };
        assert_eq!(bad_status.build(false).unwrap_err().field, "status");
        let bad_time = SelectionSpec {
            since: Some("yesterday".into()),
            ..SelectionSpec::default()
        };
        assert_eq!(bad_time.build(false).unwrap_err().field, "since");
    }
}
