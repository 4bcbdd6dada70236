//! `/api/v1/builds/…` and `/api/v1/artifacts/…`.

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::response::IntoResponse;

use super::error::ApiError;
use crate::domain::builds;
use crate::wiring::state::AppState;

/// `GET /api/v1/artifacts/{sha256}`: open, like a package mirror; the sum
/// names the content, and boards check it after the download.
pub async fn api_artifact(
    State(state): State<AppState>,
    UrlPath(sha256): UrlPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let store = builds::ArtifactStore::for_fleet(&state.fleet.current(), &state.data_dir);
    let path = store.path(&sha256).ok_or_else(|| {
        ApiError::BadRequest(format!("`{sha256}` is not a lower-case hex SHA-256"))
    })?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|_| ApiError::NotFound(format!("artifact {sha256}")))?;
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/octet-stream".to_owned(),
            ),
            (axum::http::header::CONTENT_LENGTH, len.to_string()),
            (axum::http::header::ETAG, format!("\"{sha256}\"")),
        ],
        body,
    ))
}

/// `GET /api/v1/builds/{id}`: the build, its artifacts and its boots.
pub async fn api_show(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<i64>,
) -> Result<impl IntoResponse, ApiError> {
    let build = builds::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("build {id}")))?;
    let boots = crate::domain::deploy::boots_for_build(&state.pool, id).await?;
    Ok(Json(serde_json::json!({ "build": build, "boots": boots })))
}

/// `GET /api/v1/builds/{id}/log`: the build log, as text.
pub async fn api_log(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<i64>,
) -> Result<impl IntoResponse, ApiError> {
    let build = builds::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("build {id}")))?;
    let sum = build
        .log_sha256
        .ok_or_else(|| ApiError::NotFound(format!("build {id}'s log (it has not run yet)")))?;
    let store = builds::ArtifactStore::for_fleet(&state.fleet.current(), &state.data_dir);
    let path = store
        .path(&sum)
        .ok_or_else(|| ApiError::Internal("bad log sum".into()))?;
    let text = tokio::fs::read(&path)
        .await
        .map_err(|e| ApiError::Internal(format!("reading build log: {e}")))?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        text,
    ))
}
