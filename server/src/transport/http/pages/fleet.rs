//! `/`: the fleet, grouped by board family, and the recent runs.

use askama::Template;
use axum::extract::State;
use axum::response::Html;
use serde::Serialize;
use sqlx::PgPool;

use super::util::{PageError, Pager, Params, ago, family_name, offset, render, short};
use crate::domain::{boards, jobs, runs};
use crate::wiring::state::AppState;

const RUNS_PER_PAGE: i64 = 20;

#[derive(Serialize, Clone)]
pub struct CurrentJob {
    pub id: i64,
    pub state: String,
    pub done: i32,
    pub total: i32,
    pub pct: u32,
    pub plan: String,
    pub commit_short: String,
}

#[derive(Serialize, Clone)]
pub struct BoardView {
    pub name: String,
    pub family: String,
    pub state: String,
    pub simulated: bool,
    /// "emulated arm64 (nested KVM under TCG)" or empty.
    pub host: String,
    pub kernel: String,
    pub heartbeat: String,
    pub offline_reason: String,
    pub job: Option<CurrentJob>,
}

pub struct FamilyGroup {
    pub name: String,
    pub key: String,
    pub online: usize,
    pub boards: Vec<BoardView>,
}

#[derive(Serialize, Clone)]
pub struct RunJobView {
    pub id: i64,
    pub board: String,
    pub state: String,
}

#[derive(Serialize, Clone)]
pub struct RunView {
    pub id: i64,
    pub kernel_id: i64,
    pub commit_short: String,
    pub branch: String,
    pub tree: String,
    pub jobs_done: i64,
    pub jobs_total: i64,
    pub jobs_failed: i64,
    pub simulated: bool,
    pub created: String,
    pub jobs: Vec<RunJobView>,
}

pub fn progress_pct(done: i32, total: i32) -> u32 {
    if total <= 0 {
        0
    } else {
        ((done.max(0) as f64 / total as f64) * 100.0)
            .round()
            .clamp(0.0, 100.0) as u32
    }
}

/// Boards with their current jobs: two queries whatever the fleet size.
pub async fn board_views(pool: &PgPool) -> Result<Vec<BoardView>, sqlx::Error> {
    let rows = boards::list(pool).await?;
    let active = jobs::active_by_board(pool).await?;
    Ok(rows
        .into_iter()
        .map(|b| {
            let kernel = b
                .facts
                .as_ref()
                .and_then(|f| f.get("kernel_release"))
                .and_then(|v| v.as_str())
                .unwrap_or("–")
                .to_owned();
            // Newest active job of the board (the list is ordered by id).
            let job = active
                .iter()
                .rev()
                .find(|j| j.board == b.name)
                .map(|j| CurrentJob {
                    id: j.id,
                    state: j.state.clone(),
                    done: j.cycles_completed,
                    total: j.cycles_total,
                    pct: progress_pct(j.cycles_completed, j.cycles_total),
                    plan: j.plan.clone(),
                    commit_short: short(&j.commit_sha),
                });
            BoardView {
                family: b.family,
                state: b.state,
                simulated: b.simulated,
                host: super::util::host_label(Some(&b.host_kind)),
                kernel,
                heartbeat: ago(b.last_heartbeat),
                offline_reason: b.offline_reason.unwrap_or_default(),
                job,
                name: b.name,
            }
        })
        .collect())
}

/// A page of runs with their jobs: two queries whatever the page size.
pub async fn run_views(
    pool: &PgPool,
    limit: i64,
    offset: i64,
) -> Result<Vec<RunView>, sqlx::Error> {
    let runs = runs::summaries(pool, limit, offset).await?;
    let ids: Vec<i64> = runs.iter().map(|r| r.id).collect();
    let all_jobs = jobs::briefs_for_runs(pool, &ids).await?;
    Ok(runs
        .into_iter()
        .map(|r| RunView {
            jobs: all_jobs
                .iter()
                .filter(|j| j.run_id == r.id)
                .map(|j| RunJobView {
                    id: j.id,
                    board: j.board.clone(),
                    state: j.state.clone(),
                })
                .collect(),
            id: r.id,
            kernel_id: r.kernel_id,
            commit_short: short(&r.commit_sha),
            branch: r.branch,
            tree: r.tree,
            jobs_done: r.jobs_done,
            jobs_total: r.jobs_total,
            jobs_failed: r.jobs_failed,
            simulated: r.simulated,
            created: ago(Some(r.created_at)),
        })
        .collect())
}

#[derive(Template)]
#[template(path = "fleet.html")]
struct FleetPage {
    summary: String,
    groups: Vec<FamilyGroup>,
    runs: Vec<RunView>,
    pager: Pager,
    live_url: String,
}

pub async fn fleet_page(
    State(state): State<AppState>,
    params: Params,
) -> Result<Html<String>, PageError> {
    params.allow(&["runs"])?;
    let page = params.page("runs")?;
    let pool = &state.pool;
    let boards = board_views(pool).await?;
    let online = boards.iter().filter(|b| b.state != "offline").count();
    let busy = boards.iter().filter(|b| b.job.is_some()).count();
    let simulated = boards.iter().filter(|b| b.simulated).count();
    let summary = format!(
        "{online} of {} boards online, {busy} busy{}",
        boards.len(),
        if simulated > 0 {
            format!(", {simulated} simulated")
        } else {
            String::new()
        }
    );
    let mut groups: Vec<FamilyGroup> = Vec::new();
    for b in boards {
        match groups.last_mut() {
            Some(g) if g.key == b.family => g.boards.push(b),
            _ => groups.push(FamilyGroup {
                name: family_name(&b.family),
                key: b.family.clone(),
                online: 0,
                boards: vec![b],
            }),
        }
    }
    for g in &mut groups {
        g.online = g.boards.iter().filter(|b| b.state != "offline").count();
    }
    let mut runs = run_views(pool, RUNS_PER_PAGE + 1, offset(page, RUNS_PER_PAGE)).await?;
    let pager = Pager::new(&mut runs, page, RUNS_PER_PAGE, "runs", &[]);
    let live_url = format!("/live/fleet?runs={page}");
    render(&FleetPage {
        summary,
        groups,
        runs,
        pager,
        live_url,
    })
}
