//! Checks every admin request meets before any route: the ones that
//! protect the API and console as a whole rather than one handler.
//!
//! * A token in the query string is refused (`token_in_query`), never
//!   used: URLs end up in proxy logs, shell history and browser history,
//!   so accepting one there would teach people to leak it. The request is
//!   refused before anything logs or parses it further.
//! * Without a token (allowed only on loopback), the `Host` must be a
//!   loopback name: a web page on a DNS name re-pointed at 127.0.0.1 (DNS
//!   rebinding) would otherwise be same-origin with the console and the
//!   API, and could read and change everything (`wrong_host`, 421).
//!
//! Errors are JSON under `/api`, and an HTML page under `/console`.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{auth, console, AdminState, ApiError};

/// Query parameter names that only ever carry credentials.
const CREDENTIAL_PARAMS: &[&str] = &[
    "token",
    "access_token",
    "admin_token",
    "api_key",
    "apikey",
    "auth",
    "authorization",
    "bearer",
];

pub(crate) async fn check(State(s): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    let console = req.uri().path().starts_with("/console");
    let refuse = |status: StatusCode, code: &'static str, message: &str| {
        if console {
            console::error_response(status, message)
        } else {
            ApiError::new(status, code, message).into_response()
        }
    };
    if req
        .uri()
        .query()
        .is_some_and(|q| token_in_query(&s, q.as_bytes()))
    {
        return refuse(
            StatusCode::BAD_REQUEST,
            "token_in_query",
            "a credential was given in the URL's query string; send the token as \
             `Authorization: Bearer …` (the console: its sign-in form), since URLs end up in \
             logs and browser history, and rotate it if it was the real one",
        );
    }
    if s.config.token.is_none() && !loopback_host(req.headers()) {
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            "wrong_host",
            "without HERALD_ADMIN_TOKEN the admin API answers only requests addressed to \
             localhost or a loopback address (the Host header)",
        );
    }
    next.run(req).await
}

/// Whether the query names a credential parameter, or carries the
/// configured token as any value (compared in constant time).
fn token_in_query(s: &AdminState, query: &[u8]) -> bool {
    url::form_urlencoded::parse(query).any(|(k, v)| {
        CREDENTIAL_PARAMS
            .iter()
            .any(|name| k.eq_ignore_ascii_case(name))
            || (s.config.token.is_some() && !v.is_empty() && auth::token_matches(s, &v))
    })
}

/// A missing `Host` (HTTP/1.0 tools) passes: browsers, which rebinding
/// needs, always send one.
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    is_loopback_authority(host)
}

/// `localhost`, `127.0.0.1:8080`, `[::1]:8080`…
fn is_loopback_authority(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::is_loopback_authority;

    #[test]
    fn loopback_authorities() {
        for ok in [
            "localhost",
            "LOCALHOST:80",
            "127.0.0.1:8080",
            "127.9.9.9",
            "[::1]:8080",
            "[::1]",
        ] {
            assert!(is_loopback_authority(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "10.0.0.1:80",
            "[::2]:80",
            "",
        ] {
            assert!(!is_loopback_authority(bad), "{bad}");
        }
    }
}
