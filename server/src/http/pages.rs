//! Server-rendered dashboard pages (askama templates in `web/templates`).

use askama::Template;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;

use super::error::ApiError;
use crate::state::AppState;
use crate::{boards, jobs, logs, runs};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(fleet_page))
        .route("/jobs/{id}", get(job_page))
        .route("/static/style.css", get(stylesheet))
}

async fn stylesheet() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "max-age=300")],
        include_str!("../../../web/static/style.css"),
    )
}

fn render(t: &impl Template) -> Result<Html<String>, ApiError> {
    t.render().map(Html).map_err(|e| ApiError::Internal(format!("rendering page: {e}")))
}

fn ago(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    let Some(t) = t else { return "never".into() };
    let secs = (chrono::Utc::now() - t).num_seconds().max(0);
    match secs {
        0..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        _ => t.format("%Y-%m-%d %H:%M UTC").to_string(),
    }
}

struct CurrentJob {
    id: i64,
    progress: String,
}

struct BoardView {
    name: String,
    family: String,
    state: String,
    simulated: bool,
    kernel: String,
    last_heartbeat: String,
    current_job: Option<CurrentJob>,
}

struct RunJobView {
    id: i64,
    board: String,
    state: String,
}

struct RunView {
    id: i64,
    commit_short: String,
    branch: String,
    tree: String,
    jobs_done: i64,
    jobs_total: i64,
    simulated: bool,
    created: String,
    jobs: Vec<RunJobView>,
}

#[derive(Template)]
#[template(path = "fleet.html")]
struct FleetPage {
    summary: String,
    boards: Vec<BoardView>,
    runs: Vec<RunView>,
}

async fn fleet_page(State(state): State<AppState>) -> Result<Html<String>, ApiError> {
    let pool = &state.pool;
    let board_rows = boards::list(pool).await?;
    let active = jobs::active_by_board(pool).await?;
    let online = board_rows.iter().filter(|b| b.state != "offline").count();
    let boards = board_rows
        .into_iter()
        .map(|b| {
            let kernel = b
                .facts
                .as_ref()
                .and_then(|f| f.get("kernel_release"))
                .and_then(|v| v.as_str())
                .unwrap_or("–")
                .to_owned();
            let current_job = active.iter().rev().find(|j| j.board == b.name).map(|j| CurrentJob {
                id: j.id,
                progress: format!("cycle {} of {}", j.cycles_completed, j.cycles_total),
            });
            BoardView {
                family: b.family.clone(),
                state: b.state.clone(),
                simulated: b.simulated,
                kernel,
                last_heartbeat: ago(b.last_heartbeat),
                current_job,
                name: b.name,
            }
        })
        .collect::<Vec<_>>();
    let mut runs_view = Vec::new();
    for r in runs::list(pool, 20).await? {
        let jobs = jobs::for_run(pool, r.id)
            .await?
            .into_iter()
            .map(|j| RunJobView { id: j.id, board: j.board, state: j.state })
            .collect();
        runs_view.push(RunView {
            id: r.id,
            commit_short: r.commit_sha.chars().take(12).collect(),
            branch: r.branch,
            tree: r.tree,
            jobs_done: r.jobs_done,
            jobs_total: r.jobs_total,
            simulated: r.simulated,
            created: ago(Some(r.created_at)),
            jobs,
        });
    }
    let summary = format!("{online} of {} boards online", boards.len());
    render(&FleetPage { summary, boards, runs: runs_view })
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    job: jobs::JobRow,
    executor: String,
    reason: String,
    evidence: Vec<String>,
    events: Vec<EventView>,
    logs: Vec<(String, i64)>,
}

struct EventView {
    at: String,
    to_state: String,
    reason: String,
}

async fn job_page(State(state): State<AppState>, Path(id): Path<String>) -> Result<Html<String>, ApiError> {
    let id: i64 = id.parse().map_err(|_| ApiError::BadRequest(format!("`{id}` is not a job id")))?;
    let pool = &state.pool;
    let job = jobs::get(pool, id).await?.ok_or_else(|| ApiError::NotFound(format!("job {id}")))?;
    let events = jobs::events(pool, id)
        .await?
        .into_iter()
        .map(|e| EventView {
            at: e.at.format("%H:%M:%S%.3f").to_string(),
            to_state: e.to_state,
            reason: e.reason.unwrap_or_default(),
        })
        .collect();
    let logs = logs::sizes(pool, id).await?.into_iter().map(|(s, raw, _)| (s, raw)).collect();
    let evidence = job
        .evidence
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let executor = match (&job.executor, job.simulated) {
        (Some(e), true) => format!("{e} (simulated board: replayed logs)"),
        (Some(e), false) => e.clone(),
        (None, _) => "not assigned yet".into(),
    };
    render(&JobPage {
        reason: job.reason.clone().unwrap_or_else(|| "–".into()),
        executor,
        evidence,
        events,
        logs,
        job,
    })
}
