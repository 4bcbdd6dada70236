//! HTTP: the JSON API under `/api/v1`, the dashboard pages, health.

pub mod api;
pub mod bisections;
pub mod builds;
pub mod error;
pub mod hooks;
pub mod live;
pub mod pages;
pub mod power;
pub mod ratelimit;

use axum::Router;
use axum::routing::get;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::wiring::state::AppState;

/// Largest request body accepted anywhere.
pub const MAX_BODY_BYTES: usize = 1 << 20;

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .nest("/api/v1", api::routes().layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES)))
        .route(
            "/api/v1/hooks/{forge}",
            axum::routing::post(hooks::receive).layer(axum::extract::DefaultBodyLimit::max(hooks::MAX_HOOK_BODY)),
        )
        .merge(pages::routes())
        .merge(live::routes())
        .layer(RequestBodyLimitLayer::new(hooks::MAX_HOOK_BODY))
        .layer(axum::middleware::from_fn_with_state(state.clone(), ratelimit::limit_writes))
        .layer(
            tower::ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
                    let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
                    tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
                }))
                .layer(PropagateRequestIdLayer::x_request_id())
                // Inside them: errors are logged and answered with the id.
                .layer(axum::middleware::from_fn(error::with_request_id)),
        )
        .with_state(state)
}

async fn healthz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<&'static str, error::ApiError> {
    sqlx::query("SELECT 1").execute(&state.pool).await?;
    Ok("ok\n")
}

async fn metrics(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<impl axum::response::IntoResponse, error::ApiError> {
    let body = state.metrics.render(&state.pool).await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    ))
}
