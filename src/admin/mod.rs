//! The admin HTTP API (`/api/v1`) and web console (`/console`), on
//! `HERALD_ADMIN_ADDR`: served by `herald worker` beside its health server
//! and by `herald admin` alone (no worker needed). Off by default.
//!
//! * [`api`] — JSON: enqueue, get, list, retry, cancel, counts
//!   (docs/admin-api.md, docs/openapi.yaml).
//! * [`console`] — server-rendered HTML pages over the same store calls.
//! * `auth` — the bearer token (compared in constant time), the console's
//!   session cookie and CSRF tokens.
//! * `error` — the one JSON error shape, `{"error":{"code","message"}}`.
//! * `guard` — checks before any route: no token in a URL, and without a
//!   token only loopback `Host`s (DNS rebinding).
//!
//! Everything here calls [`crate::store::ops`] and [`crate::store::enqueue`],
//! the same functions as the commands, so the rules are the same whichever
//! way an operator comes in.

pub mod api;
mod auth;
pub mod console;
mod error;
mod guard;

use std::sync::Arc;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{middleware, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use crate::config::admin::AdminConfig;
use crate::notification::Limits;
use crate::store::Store;
pub use error::ApiError;

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    pub store: Store,
    pub config: AdminConfig,
    pub limits: Limits,
    /// Per-process key of the console's session and CSRF tokens: a restart
    /// logs everyone out, which is fine for an operator console.
    secret: [u8; 32],
    /// Where the fleet's circuit breakers live (Redis), when this process
    /// has the masters configured.
    pub breakers: Option<crate::gate::Gate>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("addr", &self.config.addr)
            .finish_non_exhaustive()
    }
}

impl AdminState {
    /// `default_region` is where enqueued rows without a region go (the
    /// first of `HERALD_REGION`, as for `herald enqueue`).
    pub fn new(store: Store, config: AdminConfig, default_region: &str) -> AdminState {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).expect("the OS random source");
        AdminState {
            limits: Limits {
                max_payload_bytes: config.max_payload_bytes,
                default_region: default_region.to_owned(),
            },
            store,
            config,
            secret,
            breakers: None,
        }
    }
}

pub fn router(state: AdminState) -> Router {
    let limit = state.config.max_body_bytes;
    let state = Arc::new(state);
    Router::new()
        .nest("/api/v1", api::router(state.clone()))
        .merge(console::router(state.clone()))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state, guard::check))
        .layer(DefaultBodyLimit::max(limit))
}

/// A page for a person under `/console`, JSON elsewhere.
async fn not_found(uri: Uri) -> Response {
    if uri.path().starts_with("/console") {
        console::error_response(StatusCode::NOT_FOUND, "No such page.")
    } else {
        ApiError::not_found("no such route").into_response()
    }
}

/// Binds the admin address; a clash stops the process at start-up.
pub async fn bind(config: &AdminConfig) -> anyhow::Result<TcpListener> {
    TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("HERALD_ADMIN_ADDR {}: cannot listen", config.addr))
}

/// Serves until `stop` is cancelled.
pub async fn serve(listener: TcpListener, state: AdminState, stop: CancellationToken) {
    if let Ok(local) = listener.local_addr() {
        tracing::info!(addr = %local, auth = state.config.token.is_some(), "admin API /api/v1 and console /console listening");
    }
    let served = axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "admin HTTP server failed");
    }
}
