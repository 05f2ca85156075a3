//! A real HTTP webhook receiver for worker tests: records every request
//! (id, headers, timing) and answers as the test scripts it.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Hit {
    pub id: u64,
    pub user_id: u64,
    pub attempt: u64,
    pub webhook_id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Bytes,
    pub start: Instant,
    pub end: Instant,
    pub status: u16,
}

/// How to answer the `n`-th request (0-based) for a notification id.
pub type Script = dyn Fn(u64, usize) -> (u16, Option<u64>) + Send + Sync;
/// The response body for a status.
pub type Body = dyn Fn(u16) -> String + Send + Sync;

struct Inner {
    in_progress: std::sync::atomic::AtomicUsize,
    hits: Mutex<Vec<Hit>>,
    seen: Mutex<HashMap<u64, usize>>,
    latency: Duration,
    script: Box<Script>,
    /// While set, requests are accepted and not answered (a dead receiver
    /// behind a live load balancer); the client's timeout ends them.
    hold: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// The response body for a status.
    body: Box<Body>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Answers 200 after `latency`.
    pub async fn ok(latency: Duration) -> Receiver {
        Self::scripted(latency, |_, _| (200, None)).await
    }

    /// Answers per `script(id, n)`: (status, Retry-After seconds).
    pub async fn scripted(
        latency: Duration,
        script: impl Fn(u64, usize) -> (u16, Option<u64>) + Send + Sync + 'static,
    ) -> Receiver {
        Self::serve(None, latency, script, |_| "ok".to_owned()).await
    }

    /// [`Receiver::scripted`] on a given address (none: a free port), with
    /// the response body per status.
    pub async fn serve(
        addr: Option<SocketAddr>,
        latency: Duration,
        script: impl Fn(u64, usize) -> (u16, Option<u64>) + Send + Sync + 'static,
        body: impl Fn(u16) -> String + Send + Sync + 'static,
    ) -> Receiver {
        Self::build(addr, latency, Box::new(script), Box::new(body), None).await
    }

    /// Answers 200 at once, except while `down` is set: then it accepts
    /// each request and never answers it.
    pub async fn hanging_while(down: Arc<std::sync::atomic::AtomicBool>) -> Receiver {
        Self::build(
            None,
            Duration::ZERO,
            Box::new(|_, _| (200, None)),
            Box::new(|_| "ok".to_owned()),
            Some(down),
        )
        .await
    }

    async fn build(
        addr: Option<SocketAddr>,
        latency: Duration,
        script: Box<Script>,
        body: Box<Body>,
        hold: Option<Arc<std::sync::atomic::AtomicBool>>,
    ) -> Receiver {
        let inner = Arc::new(Inner {
            in_progress: Default::default(),
            hits: Mutex::new(Vec::new()),
            seen: Mutex::new(HashMap::new()),
            latency,
            script,
            hold,
            body,
        });
        let app = Router::new()
            .route("/hook", post(handle))
            .with_state(inner.clone());
        let addr = addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { addr, inner, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.inner.hits.lock().unwrap().clone()
    }

    /// Requests received and not yet answered.
    pub fn in_progress(&self) -> usize {
        self.inner
            .in_progress
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Requests received so far, answered or not.
    pub fn started(&self) -> usize {
        self.inner.seen.lock().unwrap().values().sum()
    }

    pub fn count(&self) -> usize {
        self.inner.hits.lock().unwrap().len()
    }

    /// Successful deliveries per id.
    pub fn delivered(&self) -> HashMap<u64, usize> {
        let mut out = HashMap::new();
        for h in self.hits().iter().filter(|h| h.status < 300) {
            *out.entry(h.id).or_default() += 1;
        }
        out
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let start = Instant::now();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let id = v["id"].as_u64().unwrap_or(0);
    let n = {
        let mut seen = inner.seen.lock().unwrap();
        let n = seen.entry(id).or_default();
        *n += 1;
        *n - 1
    };
    inner
        .in_progress
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    if !inner.latency.is_zero() {
        tokio::time::sleep(inner.latency).await;
    }
    if let Some(hold) = &inner.hold {
        while hold.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    inner
        .in_progress
        .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    let (status, retry_after) = (inner.script)(id, n);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    inner.hits.lock().unwrap().push(Hit {
        id,
        user_id: v["user_id"].as_u64().unwrap_or(0),
        attempt: v["attempt"].as_u64().unwrap_or(0),
        webhook_id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body: body.clone(),
        start,
        end: Instant::now(),
        status,
    });
    let mut resp = (StatusCode::from_u16(status).unwrap(), (inner.body)(status)).into_response();
    if let Some(s) = retry_after {
        resp.headers_mut()
            .insert("retry-after", s.to_string().parse().unwrap());
    }
    resp
}
