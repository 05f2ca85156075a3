//! `POST /notifications/retry`, `POST /notifications/cancel` (a selection
//! as JSON, plus `dry_run`, and for cancel `wait_s`) and `GET /counts`.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::Response;

use super::{body, json, reply, Shared};
use crate::admin::ApiError;
use crate::store::ops::cancel::{cancel as cancel_rows, Wait};
use crate::store::ops::counts::overview;
use crate::store::ops::retry::retry as retry_rows;
use crate::store::ops::spec::SelectionSpec;
use crate::store::ops::Selection;

/// Longest `wait_s` a cancel may ask for.
const MAX_WAIT_S: u64 = 120;

/// The selection of an action body, its `dry_run` and `wait_s`.
fn parse(bytes: &[u8]) -> Result<(Selection, bool, Option<u64>), ApiError> {
    let mut v = json(bytes)?;
    let Some(obj) = v.as_object_mut() else {
        return Err(ApiError::bad_request(
            "invalid_json",
            "the body must be a JSON object (a selection)",
        ));
    };
    let flag = |obj: &mut serde_json::Map<String, serde_json::Value>, k: &str| obj.remove(k);
    let dry_run = match flag(obj, "dry_run") {
        None => false,
        Some(serde_json::Value::Bool(b)) => b,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_selection",
                "dry_run: must be true or false",
            ))
        }
    };
    let wait_s = match flag(obj, "wait_s") {
        None => None,
        Some(w) => match w.as_u64() {
            Some(n) if n <= MAX_WAIT_S => Some(n),
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_selection",
                    format!("wait_s: must be 0-{MAX_WAIT_S} seconds"),
                ))
            }
        },
    };
    let spec: SelectionSpec = serde_json::from_value(v)
        .map_err(|e| ApiError::bad_request("invalid_selection", e.to_string()))?;
    let sel = spec
        .build(true)
        .map_err(|e| ApiError::bad_request("invalid_selection", e.to_string()))?;
    Ok((sel, dry_run, wait_s))
}

pub async fn retry(s: Shared, b: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let bytes = body(b, s.config.max_body_bytes)?;
    let (sel, dry_run, _) = parse(&bytes)?;
    let report = retry_rows(s.store.pool(), &sel, dry_run).await?;
    Ok(reply(StatusCode::OK, &report))
}

pub async fn cancel(s: Shared, b: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let bytes = body(b, s.config.max_body_bytes)?;
    let (sel, dry_run, wait_s) = parse(&bytes)?;
    let wait = Wait {
        max: Duration::from_secs(wait_s.unwrap_or(30)),
        ..Wait::default()
    };
    let report = cancel_rows(s.store.pool(), &sel, dry_run, wait).await?;
    Ok(reply(StatusCode::OK, &report))
}

pub async fn counts(s: Shared) -> Result<Response, ApiError> {
    let o = overview(s.store.pool(), 10).await?;
    Ok(reply(StatusCode::OK, &o))
}
