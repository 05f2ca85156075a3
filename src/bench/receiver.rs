//! The webhook scenario's receiver: waits L ms (precisely, like the file
//! transport: see `transport::file::latency`), records the id, answers 200.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use serde::Deserialize;

#[derive(Debug, Default)]
struct Inner {
    latency: Duration,
    ids: Mutex<Vec<u64>>,
    count: AtomicU64,
}

/// An HTTP server on 127.0.0.1 (a free port), stopped on drop.
#[derive(Debug)]
pub struct Receiver {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Deserialize)]
struct Body {
    id: u64,
}

impl Receiver {
    pub async fn start(latency: Duration) -> anyhow::Result<Receiver> {
        let inner = Arc::new(Inner {
            latency,
            ..Inner::default()
        });
        let app = Router::new()
            .route("/hook", post(handle))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("bench: webhook receiver stopped: {e}");
            }
        });
        Ok(Receiver { addr, inner, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Requests answered 200 so far.
    pub fn count(&self) -> u64 {
        self.inner.count.load(Ordering::Relaxed)
    }

    /// Every id received, in arrival order.
    pub fn ids(&self) -> Vec<u64> {
        self.inner.ids.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(inner): State<Arc<Inner>>, body: Bytes) -> StatusCode {
    let Ok(body) = serde_json::from_slice::<Body>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    if !inner.latency.is_zero() {
        crate::transport::file::latency::sleep(inner.latency).await;
    }
    if let Ok(mut ids) = inner.ids.lock() {
        ids.push(body.id);
    }
    inner.count.fetch_add(1, Ordering::Relaxed);
    StatusCode::OK
}

/// A TCP port that accepts connections and never answers: a receiver that
/// is down behind a live load balancer, the costliest kind of dead (every
/// request waits for the whole send timeout). Stopped on drop.
#[derive(Debug)]
pub struct BlackHole {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl BlackHole {
    pub async fn start() -> anyhow::Result<BlackHole> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        Ok(BlackHole { addr, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}
