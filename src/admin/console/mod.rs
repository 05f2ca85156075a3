//! The web console at `/console`: server-rendered pages over the same
//! store calls as the commands and the API, with retry and cancel buttons
//! (plain POST forms, no JavaScript).
//!
//! * `html` — escaping, layout and stylesheet, the SVG bar chart.
//! * `pages` — the pages themselves.
//! * this file — routes, login, and the CSRF check of every POST.

mod html;
mod pages;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use super::auth::{self, NONCE_COOKIE, SESSION_COOKIE};
use super::AdminState;
use crate::store::ops::cancel::{cancel, Wait};
use crate::store::ops::counts::overview;
use crate::store::ops::list::list as list_rows;
use crate::store::ops::retry::retry;
use crate::store::ops::show::{show, Key};
use crate::store::ops::spec::SelectionSpec;
use crate::store::ops::Selection;

type Shared = State<Arc<AdminState>>;

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/console", get(dashboard))
        .route("/console/login", get(login_form).post(login))
        .route("/console/search", get(search))
        .route("/console/notifications", get(list))
        .route("/console/notifications/{id}", get(detail))
        .route("/console/notifications/{id}/{action}", post(act))
        .method_not_allowed_fallback(|| async {
            error_page(
                StatusCode::METHOD_NOT_ALLOWED,
                "This page does not take that method.",
            )
        })
        .with_state(state)
}

/// An error page, for checks outside the console's handlers.
pub(crate) fn error_response(status: StatusCode, message: &str) -> Response {
    error_page(status, message)
}

/// A malformed path or query string: an error page, not axum's plain text.
fn bad_url(e: impl std::fmt::Display) -> Response {
    error_page(StatusCode::BAD_REQUEST, &format!("Bad address: {e}"))
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // No framing (clickjacking of the buttons), no inline scripts.
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'",
            ),
        ],
        body,
    )
        .into_response()
}

fn error_page(status: StatusCode, message: &str) -> Response {
    let body = format!(
        "<div class=\"card\"><h1>{}</h1><p>{}</p></div>",
        status.as_u16(),
        html::esc(message)
    );
    html(status, pages_page(&body))
}

fn pages_page(body: &str) -> String {
    html::page("Error", body, true)
}

/// Not logged in (with a token configured): to the login page.
fn gate(s: &AdminState, headers: &HeaderMap) -> Option<Response> {
    (!auth::console_allowed(s, headers)).then(|| Redirect::to("/console/login").into_response())
}

/// The browser's nonce (for CSRF without a token), creating one if needed;
/// returns it and the `Set-Cookie` to send when new.
fn nonce(headers: &HeaderMap) -> (String, Option<HeaderValue>) {
    match auth::cookie(headers, NONCE_COOKIE) {
        Some(n) if n.len() == 32 => (n.to_owned(), None),
        _ => {
            let n = auth::new_nonce();
            let c = format!("{NONCE_COOKIE}={n}; Path=/console; HttpOnly; SameSite=Strict");
            (n, HeaderValue::from_str(&c).ok())
        }
    }
}

fn db_error(e: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "console request failed on the database");
    error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("The database failed: {e}"),
    )
}

async fn dashboard(State(s): Shared, headers: HeaderMap) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    let breakers = breaker_rows(s.breakers.as_ref()).await;
    match overview(s.store.pool(), 15).await {
        Ok(o) => html(StatusCode::OK, pages::dashboard(&o, &breakers)),
        Err(e) => db_error(e),
    }
}

/// The breakers as (channel, state) rows. Redis may be down while the
/// database answers: the page then says so instead of failing.
async fn breaker_rows(gate: Option<&crate::gate::Gate>) -> Vec<(String, String)> {
    use crate::gate::BreakerState;
    let Some(gate) = gate else {
        return Vec::new();
    };
    match tokio::time::timeout(std::time::Duration::from_secs(1), gate.board()).await {
        Ok(Ok(board)) if board.channels.is_empty() => {
            vec![("every channel".to_owned(), "closed".to_owned())]
        }
        Ok(Ok(board)) => board
            .channels
            .iter()
            .map(|(channel, b)| {
                let state = match b.state {
                    BreakerState::Open(left) => {
                        format!("open (probe in {:.0} s)", left.as_secs_f64().ceil())
                    }
                    st => format!("{} ({} consecutive failures)", st.name(), b.failures),
                };
                (channel.clone(), state)
            })
            .collect(),
        Ok(Err(e)) => vec![("—".to_owned(), format!("unknown: {e}"))],
        Err(_) => vec![(
            "—".to_owned(),
            "unknown: Redis did not answer within 1 s".to_owned(),
        )],
    }
}

async fn login_form(State(s): Shared) -> Response {
    if s.config.token.is_none() {
        return Redirect::to("/console").into_response();
    }
    html(StatusCode::OK, pages::login(false))
}

async fn login(
    State(s): Shared,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Ok(body) = body else {
        return error_page(StatusCode::PAYLOAD_TOO_LARGE, "The form is too large.");
    };
    if !auth::same_origin(&headers) {
        return error_page(StatusCode::FORBIDDEN, "Cross-site request refused.");
    }
    let token = form_value(&body, "token").unwrap_or_default();
    match auth::session_value(&s) {
        Some(session) if auth::token_matches(&s, &token) => {
            let cookie =
                format!("{SESSION_COOKIE}={session}; Path=/console; HttpOnly; SameSite=Strict");
            let mut r = Redirect::to("/console").into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Some(_) => html(StatusCode::UNAUTHORIZED, pages::login(true)),
        None => Redirect::to("/console").into_response(),
    }
}

fn form_value(body: &[u8], name: &str) -> Option<String> {
    url::form_urlencoded::parse(body)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[derive(Debug, Deserialize)]
struct SearchQuery {
    by: Option<String>,
    q: Option<String>,
}

async fn search(
    State(s): Shared,
    headers: HeaderMap,
    q: Result<Query<SearchQuery>, QueryRejection>,
) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return bad_url(e.body_text()),
    };
    let text = q.q.unwrap_or_default().trim().to_owned();
    match q.by.as_deref().unwrap_or("id") {
        "user" => Redirect::to(&format!(
            "/console/notifications?user_id={}",
            html::url_value(&text)
        ))
        .into_response(),
        "dedupe" => match show(s.store.pool(), &Key::DedupeKey(text.clone())).await {
            Ok(Some(d)) => {
                Redirect::to(&format!("/console/notifications/{}", d.row.id)).into_response()
            }
            Ok(None) => error_page(
                StatusCode::NOT_FOUND,
                &format!("No notification has dedupe key {text:?}."),
            ),
            Err(e) => db_error(e),
        },
        "id" => match text.parse::<u64>() {
            Ok(id) => Redirect::to(&format!("/console/notifications/{id}")).into_response(),
            Err(_) => error_page(
                StatusCode::BAD_REQUEST,
                &format!("{text:?} is not a notification id."),
            ),
        },
        other => error_page(
            StatusCode::BAD_REQUEST,
            &format!("Search by id, dedupe or user, not {other:?}."),
        ),
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    status: Option<String>,
    channel: Option<String>,
    user_id: Option<String>,
    cursor: Option<u64>,
}

async fn list(
    State(s): Shared,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return bad_url(e.body_text()),
    };
    let user_id = match q
        .user_id
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty())
    {
        None => None,
        Some(u) => match u.parse::<u64>() {
            Ok(u) => Some(u),
            Err(_) => {
                return error_page(StatusCode::BAD_REQUEST, &format!("{u:?} is not a user id."))
            }
        },
    };
    let spec = SelectionSpec {
        status: q.status.clone().filter(|v| !v.is_empty()),
        channel: q.channel.clone().filter(|v| !v.is_empty()),
        user_id,
        limit: Some(50),
        ..SelectionSpec::default()
    };
    let sel = match spec.build(false) {
        Ok(sel) => sel,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let mut query = Vec::new();
    let mut title = String::from("Notifications");
    if let Some(v) = &spec.status {
        query.push(format!("status={}", html::url_value(v)));
        title = format!("{title} · {v}");
    }
    if let Some(v) = &spec.channel {
        query.push(format!("channel={}", html::url_value(v)));
        title = format!("{title} · channel {v}");
    }
    if let Some(v) = user_id {
        query.push(format!("user_id={v}"));
        title = format!("{title} · user {v}");
    }
    match list_rows(s.store.pool(), &sel, q.cursor).await {
        Ok(page) => html(StatusCode::OK, pages::list(&title, &page, &query.join("&"))),
        Err(e) => db_error(e),
    }
}

#[derive(Debug, Deserialize)]
struct DetailQuery {
    done: Option<String>,
}

async fn detail(
    State(s): Shared,
    headers: HeaderMap,
    id: Result<Path<u64>, PathRejection>,
    q: Result<Query<DetailQuery>, QueryRejection>,
) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    let (Path(id), Query(q)) = match (id, q) {
        (Ok(id), Ok(q)) => (id, q),
        (Err(e), _) => return bad_url(e.body_text()),
        (_, Err(e)) => return bad_url(e.body_text()),
    };
    let (nonce, set_cookie) = nonce(&headers);
    let csrf = auth::csrf_for(&s, Some(&nonce)).unwrap_or_default();
    let mut r = match show(s.store.pool(), &Key::Id(id)).await {
        Ok(Some(d)) => html(StatusCode::OK, pages::detail(&d, &csrf, q.done.as_deref())),
        Ok(None) => error_page(StatusCode::NOT_FOUND, &format!("No notification {id}.")),
        Err(e) => db_error(e),
    };
    if let Some(c) = set_cookie {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}

/// Retry or cancel one notification from its page, then back to it with
/// what happened.
async fn act(
    State(s): Shared,
    headers: HeaderMap,
    path: Result<Path<(u64, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    let Path((id, action)) = match path {
        Ok(p) => p,
        Err(e) => return bad_url(e.body_text()),
    };
    let Ok(body) = body else {
        return error_page(StatusCode::PAYLOAD_TOO_LARGE, "The form is too large.");
    };
    let token = form_value(&body, "csrf").unwrap_or_default();
    if !auth::csrf_ok(&s, &headers, &token) {
        return error_page(
            StatusCode::FORBIDDEN,
            "This form is stale or came from another site; reload the page and try again.",
        );
    }
    let sel = Selection {
        ids: vec![id],
        ..Selection::default()
    };
    let report = match action.as_str() {
        "retry" => retry(s.store.pool(), &sel, false).await,
        "cancel" => {
            let wait = Wait {
                max: Duration::from_secs(30),
                ..Wait::default()
            };
            cancel(s.store.pool(), &sel, false, wait).await
        }
        _ => return error_page(StatusCode::NOT_FOUND, "No such action."),
    };
    let report = match report {
        Ok(r) => r,
        Err(e) => return db_error(format!("{e:#}")),
    };
    let done = report
        .rows
        .first()
        .map(|c| match &c.detail {
            Some(d) => format!("{action}: {} ({d})", c.outcome),
            None => format!("{action}: {}", c.outcome),
        })
        .unwrap_or_else(|| format!("{action}: nothing to do"));
    Redirect::to(&format!(
        "/console/notifications/{id}?done={}",
        html::url_value(&done)
    ))
    .into_response()
}
