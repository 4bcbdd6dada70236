//! `/api/v1/bisections/…`.

use axum::Json;
use axum::extract::{Path as UrlPath, State};

use super::api::Caller;
use super::error::ApiError;
use crate::domain::bisect;
use crate::domain::config::Scope;
use crate::wiring::state::AppState;

pub async fn api_start(
    caller: Caller,
    State(state): State<AppState>,
    Json(req): Json<bisect::StartRequest>,
) -> Result<(axum::http::StatusCode, Json<serde_json::Value>), ApiError> {
    caller.require(Scope::Trigger)?;
    let id = bisect::start(&state.deps(), &req, &format!("api:{}", caller.name)).await?;
    Ok((
        axum::http::StatusCode::CREATED,
        Json(serde_json::json!({ "id": id })),
    ))
}

pub async fn api_show(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("`{id}` is not a valid bisection id")))?;
    Ok(Json(bisect::show(&state.pool, id).await?))
}

pub async fn api_stop(
    caller: Caller,
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Scope::Trigger)?;
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("`{id}` is not a valid bisection id")))?;
    bisect::stop(&state.deps(), id, &format!("api:{}", caller.name)).await?;
    Ok(Json(bisect::show(&state.pool, id).await?))
}
