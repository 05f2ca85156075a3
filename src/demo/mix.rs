//! What the demo enqueues: what a shop's services would. Order
//! notifications for many users through the library's own validated
//! enqueue (idempotent, with dedupe keys), one the receiver rejects for
//! good (a user whose endpoint is gone), one enqueued too late to matter
//! (its `expires_at` has passed), and one row written straight into the
//! table by "another service" with a payload that is not a JSON object.

use anyhow::Context;
use chrono::{Duration as Age, Utc};
use serde_json::json;

use super::receiver::GONE_USER;
use crate::notification::{Limits, NewNotification};
use crate::store::enqueue::enqueue_batch;
use crate::store::Store;

/// How many rows of each kind went in.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mix {
    pub orders: u64,
    pub users: u64,
    /// Rows the receiver answers 410 for.
    pub gone: u64,
    pub expiring: u64,
    pub bad: u64,
}

impl Mix {
    pub fn total(&self) -> u64 {
        self.orders + self.gone + self.expiring + self.bad
    }
}

/// Enqueues `orders` order notifications for `users` users plus one row of
/// each special kind.
pub async fn enqueue(store: &Store, orders: u64, users: u64) -> anyhow::Result<Mix> {
    let limits = Limits::default();
    let now = Utc::now();
    let mut items = Vec::with_capacity(orders as usize + 2);
    for i in 0..orders {
        let user = 1 + (i * 7919) % users;
        let payload =
            json!({"text": format!("Your order #{} has shipped", 10_000 + i), "order": 10_000 + i});
        items.push(
            NewNotification::builder(user, "webhook", payload)
                .dedupe_key(format!("order-{}-shipped", 10_000 + i))
                .build(&limits)?,
        );
    }
    items.push(
        NewNotification::builder(GONE_USER, "webhook", json!({"text": "Welcome back!"}))
            .build(&limits)?,
    );
    items.push(
        NewNotification::builder(
            7,
            "webhook",
            json!({"text": "Flash sale ends in 5 minutes"}),
        )
        .send_at(now - Age::seconds(600))
        .expires_at(now - Age::seconds(300))
        .build(&limits)?,
    );
    let mut conn = store.pool().acquire().await?;
    enqueue_batch(&mut conn, &items)
        .await
        .context("enqueueing the demo's notifications")?;
    // Another service, bypassing `herald enqueue`, writes a payload that is
    // valid JSON but not an object: the worker fails that row alone.
    sqlx::query(
        "INSERT INTO notifications (user_id, channel, payload, send_at, due_at) \
         VALUES (42, 'webhook', '[\"not\", \"an\", \"object\"]', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))",
    )
    .execute(&mut *conn)
    .await
    .context("writing the other service's row")?;
    Ok(Mix {
        orders,
        users,
        gone: 1,
        expiring: 1,
        bad: 1,
    })
}
