//! `/api/v1`: JSON over the store's operator calls. Every route needs the
//! bearer token when one is configured; POST bodies must be
//! `application/json` and are size-limited (`HERALD_ADMIN_MAX_BODY_BYTES`,
//! 413 `body_too_large`); a foreign `Origin` is refused; every error is
//! `{"error":{"code","message"}}` (docs/admin-api.md lists the codes).
//!
//! * [`enqueue`] — `POST /notifications`: one or a batch.
//! * [`rows`] — `GET /notifications/{id}`, `GET /notifications`.
//! * [`actions`] — `POST /notifications/retry|cancel`, `GET /counts`.

pub mod actions;
pub mod enqueue;
pub mod rows;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;

use super::{auth, AdminState, ApiError};

pub(crate) type Shared = State<Arc<AdminState>>;

/// Every route (method, path under `/api/v1`); docs/openapi.yaml must
/// describe each (a test checks).
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/notifications"),
    ("GET", "/notifications"),
    ("GET", "/notifications/{id}"),
    ("POST", "/notifications/retry"),
    ("POST", "/notifications/cancel"),
    ("GET", "/counts"),
];

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/notifications", post(enqueue::enqueue).get(rows::list))
        .route("/notifications/{id}", get(rows::get_one))
        .route("/notifications/retry", post(actions::retry))
        .route("/notifications/cancel", post(actions::cancel))
        .route("/counts", get(actions::counts))
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method (docs/openapi.yaml lists each route's)",
            )
        })
        .fallback(|| async { ApiError::not_found("no such API route") })
        .layer(middleware::from_fn_with_state(state.clone(), gate))
        .with_state(state)
}

async fn gate(State(s): Shared, req: Request, next: Next) -> Response {
    if !auth::api_allowed(&s, req.headers()) {
        let message = if req.headers().contains_key(header::AUTHORIZATION) {
            "the bearer token is not HERALD_ADMIN_TOKEN"
        } else {
            "missing `Authorization: Bearer <HERALD_ADMIN_TOKEN>`"
        };
        return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    }
    // A browser on another site can send a "simple" POST (text/plain, no
    // preflight) to a loopback API without a token; demanding JSON makes
    // it preflight, which fails (no CORS), and a foreign Origin is refused
    // outright.
    if !auth::same_origin(req.headers()) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_origin",
            "the request's Origin or Referer is another site than this host",
        )
        .into_response();
    }
    if req.method() == Method::POST && !is_json(req.headers()) {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be sent as `Content-Type: application/json`",
        )
        .into_response();
    }
    next.run(req).await
}

/// `application/json`, with or without parameters (`; charset=utf-8`).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// The request body, or the error for one too large or unreadable.
pub(crate) fn body(b: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    b.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "the request body is larger than HERALD_ADMIN_MAX_BODY_BYTES ({limit} bytes)"
                ),
            )
        } else {
            ApiError::bad_request("unreadable_body", e.body_text())
        }
    })
}

/// The body parsed as JSON.
pub(crate) fn json(bytes: &[u8]) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("the body is not JSON: {e}")))
}

pub(crate) fn reply<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            .into_response(),
    }
}
