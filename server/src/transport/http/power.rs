//! `POST /api/v1/boards/{name}/power-cycle`.

use axum::Json;
use axum::extract::{Path as UrlPath, State};

use super::api::Caller;
use super::error::ApiError;
use crate::domain::config::Scope;
use crate::domain::power::{PowerError, PowerOutcome, power_cycle};
use crate::wiring::state::AppState;

/// `POST /api/v1/boards/{name}/power-cycle` (admin): runs the command now
/// and answers with its outcome (also when the command failed).
pub async fn api_power_cycle(
    caller: Caller,
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<PowerOutcome>, ApiError> {
    caller.require(Scope::Admin)?;
    let fleet = state.fleet.current();
    match power_cycle(
        &state.pool,
        &fleet,
        &state.server_id,
        &name,
        &format!("api:{}", caller.name),
        "requested through the API",
    )
    .await
    {
        Ok(outcome) => Ok(Json(outcome)),
        Err(PowerError::UnknownBoard(b)) => Err(ApiError::NotFound(format!("board `{b}`"))),
        Err(e @ PowerError::NotConfigured(_)) => Err(ApiError::Conflict(e.to_string())),
        Err(e @ PowerError::Busy(_)) => Err(ApiError::Conflict(e.to_string())),
    }
}
