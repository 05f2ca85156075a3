//! Who may use the admin API and console, and protection of the console's
//! forms against cross-site requests.
//!
//! * API: `Authorization: Bearer <HERALD_ADMIN_TOKEN>`. Both sides are
//!   hashed and the digests compared in constant time, so neither the
//!   token's bytes nor its length leak through timing.
//! * Console: a login form takes the token and sets an HttpOnly,
//!   SameSite=Strict cookie holding an HMAC of it under a per-process key
//!   (the token itself never sits in the browser).
//! * CSRF: every form carries an HMAC of the session (or of a random
//!   per-browser nonce when there is no token) under the same key; a POST
//!   must bring it back, and its `Origin`/`Referer`, when present, must be
//!   this host.

use axum::http::{header, HeaderMap};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AdminState;

pub(crate) const SESSION_COOKIE: &str = "herald_session";
pub(crate) const NONCE_COOKIE: &str = "herald_nonce";

/// Whether `given` is the configured token (constant time).
pub(crate) fn token_matches(state: &AdminState, given: &str) -> bool {
    match &state.config.token {
        None => true,
        Some(t) => {
            let a = Sha256::digest(given.as_bytes());
            let b = Sha256::digest(t.expose().as_bytes());
            bool::from(a.ct_eq(&b))
        }
    }
}

/// Whether an API request may proceed: no token is configured, or it
/// brings the right bearer token.
pub(crate) fn api_allowed(state: &AdminState, headers: &HeaderMap) -> bool {
    if state.config.token.is_none() {
        return true;
    }
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(given) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
    else {
        return false;
    };
    token_matches(state, given.trim())
}

fn mac(state: &AdminState, purpose: &str, value: &[u8]) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(&state.secret).expect("any key length");
    m.update(purpose.as_bytes());
    m.update(b"\0");
    m.update(value);
    hex::encode(m.finalize().into_bytes())
}

fn ct_eq_str(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The session cookie's value for the configured token.
pub(crate) fn session_value(state: &AdminState) -> Option<String> {
    state
        .config
        .token
        .as_ref()
        .map(|t| mac(state, "session", t.expose().as_bytes()))
}

pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether a console request is logged in (always, without a token).
pub(crate) fn console_allowed(state: &AdminState, headers: &HeaderMap) -> bool {
    match session_value(state) {
        None => true,
        Some(expected) => cookie(headers, SESSION_COOKIE).is_some_and(|v| ct_eq_str(v, &expected)),
    }
}

/// The CSRF token for a browser: bound to the session (with a token) or
/// to its nonce cookie (without), `nonce` being that cookie's value.
pub(crate) fn csrf_for(state: &AdminState, nonce: Option<&str>) -> Option<String> {
    let basis = match session_value(state) {
        Some(s) => s,
        None => nonce?.to_owned(),
    };
    Some(mac(state, "csrf", basis.as_bytes()))
}

/// Checks a state-changing console request: the form's CSRF token and,
/// when the browser sent them, `Origin` / `Referer` naming this host.
pub(crate) fn csrf_ok(state: &AdminState, headers: &HeaderMap, form_token: &str) -> bool {
    let Some(expected) = csrf_for(state, cookie(headers, NONCE_COOKIE)) else {
        return false;
    };
    ct_eq_str(form_token, &expected) && same_origin(headers)
}

/// `Origin` and `Referer`, when present, must name this host (a browser
/// sends `Origin` on every cross-site POST; `null` is refused too).
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    origin_ok(headers, |v| {
        url::Url::parse(v).ok().is_some_and(|u| {
            let authority = match u.port() {
                Some(p) => format!("{}:{p}", u.host_str().unwrap_or_default()),
                None => u.host_str().unwrap_or_default().to_owned(),
            };
            host == Some(authority.as_str())
        })
    })
}

fn origin_ok(headers: &HeaderMap, same: impl Fn(&str) -> bool) -> bool {
    [header::ORIGIN, header::REFERER].iter().all(|name| {
        match headers.get(name).and_then(|v| v.to_str().ok()) {
            None => true,
            Some(v) => v != "null" && same(v),
        }
    })
}

/// A fresh random nonce for a browser without one.
pub(crate) fn new_nonce() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the OS random source");
    hex::encode(b)
}
