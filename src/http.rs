//! `/livez`, `/readyz` and `/metrics` on `HERALD_HTTP_ADDR`.
//!
//! Liveness and readiness answer different questions on purpose. `/livez`
//! only asks whether this process's poll loop still turns (a restart would
//! help if not); it never touches MySQL or Redis, so an outage of either
//! does not get every instance restarted at once. `/readyz` asks whether the
//! dependencies answer in time: a database ping and an acquire-and-release of
//! a random lock key, both within `HERALD_HEALTH_TIMEOUT_MS`, and whether
//! this worker's polls have kept failing for more than a few poll intervals.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::services::Deps;
use crate::worker::WorkerHandle;

/// OpenMetrics is what prometheus-client writes (it ends with `# EOF`).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Shared by the handlers.
#[derive(Debug, Clone)]
pub struct HttpState {
    pub deps: Deps,
    pub worker: WorkerHandle,
    pub health_timeout: Duration,
    /// `/livez` fails once the poll loop has not completed a round for this
    /// long.
    pub stale_after: Duration,
    /// Cancelled at SIGTERM: `/readyz` then says so while the worker drains.
    pub shutdown: CancellationToken,
}

/// The poll loop beats at least every poll interval when idle and about
/// every second while waiting for send slots; a round itself is bounded by
/// the database and lock timeouts. Anything well past that is a stuck loop.
pub fn stale_after(poll_interval: Duration) -> Duration {
    (poll_interval * 4).max(Duration::from_secs(30))
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(state))
}

/// Serves until `stop` is cancelled.
pub async fn serve(listener: TcpListener, state: HttpState, stop: CancellationToken) {
    let app = router(state);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn livez(State(s): State<Arc<HttpState>>) -> Response {
    let since = s.worker.since_heartbeat();
    if since <= s.stale_after {
        text(
            StatusCode::OK,
            format!("ok: poll loop beat {} ms ago\n", since.as_millis()),
        )
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "poll loop stalled: last beat {} ms ago (limit {} ms)\n",
                since.as_millis(),
                s.stale_after.as_millis()
            ),
        )
    }
}

async fn readyz(State(s): State<Arc<HttpState>>) -> Response {
    if s.shutdown.is_cancelled() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into());
    }
    let deadline = s.health_timeout;
    let db = async {
        match tokio::time::timeout(deadline, s.deps.store.ping()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("database: {e}")),
            Err(_) => Some(format!(
                "database: no answer within {} ms",
                deadline.as_millis()
            )),
        }
    };
    let lock = async {
        s.deps
            .redlock
            .probe(deadline)
            .await
            .err()
            .map(|e| format!("lock: {e}"))
    };
    let (db, lock) = tokio::join!(db, lock);
    // Dependencies that answer a ping can still refuse the real work (a
    // row that breaks every poll, a permission): say so too.
    let polls = s.worker.poll_problem().map(|p| format!("worker: {p}"));
    let problems: Vec<String> = db.into_iter().chain(lock).chain(polls).collect();
    if problems.is_empty() {
        text(StatusCode::OK, "ready\n".into())
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", problems.join("; ")),
        )
    }
}

async fn metrics(State(s): State<Arc<HttpState>>) -> Response {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        s.deps.metrics.render(),
    )
        .into_response()
}
