//! Server-rendered dashboard pages (askama templates in `web/templates`).
//!
//! Every page reads with a fixed number of queries whatever the size of the
//! lists (no query per row), pages its lists server-side, and works with
//! JavaScript off; `web/static/live.js` adds live updates from
//! [`crate::transport::http::live`] when it is on.

mod boards;
pub mod fleet;
pub mod jobs;
pub mod kernels;
pub mod logview;
pub mod plot;
mod regressions;
mod signatures;
pub mod util;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::wiring::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(fleet::fleet_page))
        .route("/boards/{name}", get(boards::board_page))
        .route("/kernels", get(kernels::kernels_page))
        .route("/kernels/{id}", get(kernels::kernel_page))
        .route("/matrix", get(kernels::matrix_page))
        .route("/jobs/{id}", get(jobs::job_page))
        .route("/jobs/{id}/log/{stream}", get(jobs::log_page))
        .route("/signatures", get(signatures::signatures_page))
        .route("/regressions/{id}", get(regressions::regression_page))
        .route("/static/style.css", get(stylesheet))
        .route("/static/live.js", get(script))
}

async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("../../../../../web/static/style.css"),
    )
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("../../../../../web/static/live.js"),
    )
}
