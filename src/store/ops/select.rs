//! A typed selection of rows, and the walk over it in pages by id.
//!
//! Commands, the API and the console all say which rows they mean with a
//! [`Selection`]; nothing here builds SQL from text a caller wrote (every
//! value is bound). The walk goes by primary key, one short statement per
//! page, so it holds no transaction between pages and sees rows as they
//! are now, not as they were when it began.

use chrono::{DateTime, Utc};
use sqlx::{MySql, MySqlPool, QueryBuilder, Row};

use crate::notification::Status;

/// Which end of the id range a walk starts from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Order {
    /// Highest id first: what an operator usually wants to see.
    #[default]
    NewestFirst,
    OldestFirst,
}

/// Which rows an operation is about. Filters combine with AND; an empty
/// list or `None` does not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub ids: Vec<u64>,
    pub dedupe_key: Option<String>,
    pub statuses: Vec<Status>,
    pub channel: Option<String>,
    pub user_id: Option<u64>,
    pub region: Option<String>,
    /// `send_at` (the scheduled time, which never moves) at or after this.
    pub since: Option<DateTime<Utc>>,
    /// `send_at` before this.
    pub until: Option<DateTime<Utc>>,
    /// Most rows the walk visits.
    pub limit: Option<u64>,
    pub order: Order,
}

/// What a retry or cancel needs to know about a row to decide its fate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub id: u64,
    pub status: String,
    pub attempts: u32,
    /// `sending` under a lease that has not run out: another worker holds
    /// it.
    pub live_claim: bool,
    /// `expires_at` has passed.
    pub past_expiry: bool,
    /// A cancel was requested while it was being sent.
    pub cancel_requested: bool,
}

impl Selection {
    /// Nothing narrows it: it means every row. Callers refuse that unless
    /// asked explicitly (`--all`).
    pub fn is_everything(&self) -> bool {
        self.ids.is_empty()
            && self.dedupe_key.is_none()
            && self.statuses.is_empty()
            && self.channel.is_none()
            && self.user_id.is_none()
            && self.region.is_none()
            && self.since.is_none()
            && self.until.is_none()
    }

    /// Appends ` WHERE …` for this selection, restricted to `allowed`
    /// statuses when given (a retry only ever touches retryable rows,
    /// whatever else the selection says), and to ids past `after` in the
    /// walk's order.
    pub(crate) fn push_where(
        &self,
        qb: &mut QueryBuilder<'_, MySql>,
        allowed: Option<&[Status]>,
        after: Option<u64>,
    ) {
        qb.push(" WHERE 1 = 1");
        if !self.ids.is_empty() {
            qb.push(" AND id IN (");
            let mut sep = qb.separated(", ");
            for id in &self.ids {
                sep.push_bind(*id);
            }
            qb.push(")");
        }
        let statuses: Vec<Status> = match allowed {
            Some(allowed) if self.statuses.is_empty() => allowed.to_vec(),
            Some(allowed) => self
                .statuses
                .iter()
                .copied()
                .filter(|s| allowed.contains(s))
                .collect(),
            None => self.statuses.clone(),
        };
        if allowed.is_some() || !statuses.is_empty() {
            if statuses.is_empty() {
                qb.push(" AND 1 = 0");
            } else {
                qb.push(" AND status IN (");
                let mut sep = qb.separated(", ");
                for s in &statuses {
                    sep.push_bind(s.as_str());
                }
                qb.push(")");
            }
        }
        if let Some(k) = &self.dedupe_key {
            qb.push(" AND dedupe_key = ").push_bind(k.clone());
        }
        if let Some(c) = &self.channel {
            qb.push(" AND channel = ").push_bind(c.clone());
        }
        if let Some(u) = self.user_id {
            qb.push(" AND user_id = ").push_bind(u);
        }
        if let Some(r) = &self.region {
            qb.push(" AND region = ").push_bind(r.clone());
        }
        if let Some(t) = self.since {
            qb.push(" AND send_at >= ").push_bind(t);
        }
        if let Some(t) = self.until {
            qb.push(" AND send_at < ").push_bind(t);
        }
        if let Some(after) = after {
            match self.order {
                Order::NewestFirst => qb.push(" AND id < ").push_bind(after),
                Order::OldestFirst => qb.push(" AND id > ").push_bind(after),
            };
        }
    }

    /// Appends the walk's `ORDER BY … LIMIT n`.
    pub(crate) fn push_order(&self, qb: &mut QueryBuilder<'_, MySql>, n: usize) {
        match self.order {
            Order::NewestFirst => qb.push(" ORDER BY id DESC"),
            Order::OldestFirst => qb.push(" ORDER BY id ASC"),
        };
        qb.push(" LIMIT ").push_bind(n as u64);
    }
}

/// The next page of at most `n` rows of `sel` (restricted to `allowed`
/// statuses) after id `after`, as [`Probe`]s. One autocommit statement.
pub async fn probe_page(
    pool: &MySqlPool,
    sel: &Selection,
    allowed: Option<&[Status]>,
    after: Option<u64>,
    n: usize,
) -> Result<Vec<Probe>, sqlx::Error> {
    let mut qb = QueryBuilder::new(
        "SELECT id, CAST(status AS CHAR) AS status, attempts, \
         (status = 'sending' AND due_at > UTC_TIMESTAMP(6)) AS live_claim, \
         (expires_at IS NOT NULL AND expires_at <= UTC_TIMESTAMP(6)) AS past_expiry, \
         (cancel_requested_at IS NOT NULL) AS cancel_requested \
         FROM notifications",
    );
    sel.push_where(&mut qb, allowed, after);
    sel.push_order(&mut qb, n);
    let rows = qb.build().fetch_all(pool).await?;
    rows.iter()
        .map(|r| {
            Ok(Probe {
                id: r.try_get("id")?,
                status: r.try_get("status")?,
                attempts: r.try_get("attempts")?,
                live_claim: r.try_get::<Option<i64>, _>("live_claim")?.unwrap_or(0) != 0,
                past_expiry: r.try_get::<Option<i64>, _>("past_expiry")?.unwrap_or(0) != 0,
                cancel_requested: r
                    .try_get::<Option<i64>, _>("cancel_requested")?
                    .unwrap_or(0)
                    != 0,
            })
        })
        .collect()
}

/// Walks a selection page by page (see [`Walk::next`]), up to its limit.
#[derive(Debug, Default)]
pub struct Walk {
    after: Option<u64>,
    /// Rows visited so far.
    pub visited: u64,
    done: bool,
}

impl Walk {
    /// The next page of at most `page_size` rows of `sel` (restricted to
    /// `allowed`), or `None` when the selection or its limit is exhausted.
    pub async fn next(
        &mut self,
        pool: &MySqlPool,
        sel: &Selection,
        allowed: Option<&[Status]>,
        page_size: usize,
    ) -> Result<Option<Vec<Probe>>, sqlx::Error> {
        let room = sel.limit.map_or(page_size as u64, |l| {
            l.saturating_sub(self.visited).min(page_size as u64)
        });
        if self.done || room == 0 {
            return Ok(None);
        }
        let page = probe_page(pool, sel, allowed, self.after, room as usize).await?;
        let Some(last) = page.last() else {
            self.done = true;
            return Ok(None);
        };
        self.after = Some(last.id);
        self.visited += page.len() as u64;
        self.done = (page.len() as u64) < room;
        Ok(Some(page))
    }
}
