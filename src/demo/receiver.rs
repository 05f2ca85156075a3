//! The demo's webhook receiver, written as a careful receiver would be: it
//! checks every Standard Webhooks signature (a bad one is a 401 and counted),
//! answers 503 during a short outage (so the workers retry), 410 for the
//! user that no longer exists (a permanent failure), and otherwise records
//! the `webhook-id` and answers 200 after a little latency. Counting ids is
//! what lets the summary say "duplicates" and "lost" from the receiving
//! side, not from Herald's own bookkeeping.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde::Deserialize;

use crate::transport::verify_signature;

/// The user whose endpoint is gone: their notifications fail with 410.
pub const GONE_USER: u64 = 999_999;

#[derive(Debug)]
struct Inner {
    key: Vec<u8>,
    latency: Duration,
    outage: Duration,
    started: Mutex<Option<Instant>>,
    /// Deliveries answered 200, per `webhook-id`.
    accepted: Mutex<HashMap<String, u32>>,
    unavailable: AtomicU64,
    gone: AtomicU64,
    bad_signature: AtomicU64,
}

/// Counts the summary reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Distinct `webhook-id`s answered 200.
    pub accepted: u64,
    /// `webhook-id`s answered 200 more than once.
    pub duplicates: u64,
    pub unavailable: u64,
    pub gone: u64,
    pub bad_signature: u64,
}

/// An HTTP server on 127.0.0.1 (a free port), stopped on drop.
#[derive(Debug)]
pub struct DemoReceiver {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Deserialize)]
struct Body {
    user_id: u64,
}

impl DemoReceiver {
    /// Serves with the signing `key`; the outage lasts `outage` from
    /// [`DemoReceiver::begin_outage`].
    pub async fn start(
        key: Vec<u8>,
        latency: Duration,
        outage: Duration,
    ) -> anyhow::Result<DemoReceiver> {
        let inner = Arc::new(Inner {
            key,
            latency,
            outage,
            started: Mutex::new(None),
            accepted: Mutex::new(HashMap::new()),
            unavailable: AtomicU64::new(0),
            gone: AtomicU64::new(0),
            bad_signature: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/hook", post(handle))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(DemoReceiver { addr, inner, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Starts the outage clock (when the workers start).
    pub fn begin_outage(&self) {
        *lock(&self.inner.started) = Some(Instant::now());
    }

    /// Whether `webhook-id` `id` was answered 200.
    pub fn accepted(&self, id: &str) -> bool {
        lock(&self.inner.accepted).contains_key(id)
    }

    pub fn tally(&self) -> Tally {
        let accepted = lock(&self.inner.accepted);
        Tally {
            accepted: accepted.len() as u64,
            duplicates: accepted.values().filter(|n| **n > 1).count() as u64,
            unavailable: self.inner.unavailable.load(Relaxed),
            gone: self.inner.gone.load(Relaxed),
            bad_signature: self.inner.bad_signature.load(Relaxed),
        }
    }
}

impl Drop for DemoReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn handle(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(ts), Some(sig)) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    ) else {
        inner.bad_signature.fetch_add(1, Relaxed);
        return StatusCode::UNAUTHORIZED;
    };
    if !verify_signature(&inner.key, id, ts, &body, sig) {
        inner.bad_signature.fetch_add(1, Relaxed);
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(body) = serde_json::from_slice::<Body>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let down = lock(&inner.started).is_none_or(|t| t.elapsed() < inner.outage);
    if down {
        inner.unavailable.fetch_add(1, Relaxed);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    if body.user_id == GONE_USER {
        inner.gone.fetch_add(1, Relaxed);
        return StatusCode::GONE;
    }
    tokio::time::sleep(inner.latency).await;
    *lock(&inner.accepted).entry(id.to_owned()).or_insert(0) += 1;
    StatusCode::OK
}
