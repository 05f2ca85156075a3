//! `GET /notifications/{id}` (the row and its attempts) and
//! `GET /notifications` (filters as query parameters, cursor paging).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::{reply, Shared};
use crate::admin::ApiError;
use crate::store::ops::list::list as list_rows;
use crate::store::ops::show::{show, Key};
use crate::store::ops::spec::SelectionSpec;

pub async fn get_one(
    s: Shared,
    id: Result<Path<u64>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::bad_request("invalid_id", e.body_text()))?;
    match show(s.store.pool(), &Key::Id(id)).await? {
        Some(d) => Ok(reply(StatusCode::OK, &d)),
        None => Err(ApiError::not_found(format!("no notification {id}"))),
    }
}

/// The query parameters of `GET /notifications`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub status: Option<String>,
    pub channel: Option<String>,
    pub user_id: Option<u64>,
    pub region: Option<String>,
    pub dedupe_key: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: Option<u64>,
    pub order: Option<String>,
    pub cursor: Option<u64>,
}

pub async fn list(
    s: Shared,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let spec = SelectionSpec {
        status: q.status,
        channel: q.channel,
        user_id: q.user_id,
        region: q.region,
        dedupe_key: q.dedupe_key,
        since: q.since,
        until: q.until,
        limit: q.limit,
        order: q.order,
        ..SelectionSpec::default()
    };
    if spec
        .limit
        .is_some_and(|l| l > crate::store::ops::list::MAX_PAGE)
    {
        return Err(ApiError::bad_request(
            "invalid_selection",
            format!("limit: at most {}", crate::store::ops::list::MAX_PAGE),
        ));
    }
    let sel = spec
        .build(false)
        .map_err(|e| ApiError::bad_request("invalid_selection", e.to_string()))?;
    let page = list_rows(s.store.pool(), &sel, q.cursor).await?;
    Ok(reply(StatusCode::OK, &page))
}
