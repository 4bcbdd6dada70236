//! Kernels and runs: recording a kernel under test and planning its jobs.

use armfleet_protocol::{JobSpec, KernelRef, Task};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::config::Fleet;

/// A request to test a kernel.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerRequest {
    pub tree: String,
    pub branch: String,
    pub commit: String,
    /// Only this plan; default: every plan.
    pub plan: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("invalid trigger: {0}")]
    Invalid(String),
    #[error("unknown plan `{0}`")]
    UnknownPlan(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl TriggerRequest {
    pub fn validate(&self) -> Result<(), TriggerError> {
        let bad = |m: &str| Err(TriggerError::Invalid(m.to_owned()));
        if self.tree.trim().is_empty() || self.tree.len() > 512 {
            return bad("`tree` must be a non-empty URL of at most 512 characters");
        }
        if self.branch.is_empty()
            || self.branch.len() > 255
            || self.branch.contains("..")
            || self.branch.chars().any(|c| c.is_control() || c == ' ')
        {
            return bad("`branch` is not a valid git branch name");
        }
        if !(7..=64).contains(&self.commit.len()) || !self.commit.chars().all(|c| c.is_ascii_hexdigit()) {
            return bad("`commit` must be a hexadecimal commit id of 7 to 64 characters");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedRun {
    pub run_id: i64,
    pub kernel_id: i64,
    pub jobs: Vec<i64>,
    /// Boards that received jobs (for the dispatcher to wake).
    pub boards: Vec<String>,
}

/// Records the kernel and a run, and plans one job per (matching board, plan).
pub async fn create(
    pool: &PgPool,
    fleet: &Fleet,
    req: &TriggerRequest,
    requested_by: &str,
) -> Result<PlannedRun, TriggerError> {
    req.validate()?;
    let commit = req.commit.to_ascii_lowercase();
    let plans: Vec<_> = match &req.plan {
        Some(name) => vec![fleet.plan(name).ok_or_else(|| TriggerError::UnknownPlan(name.clone()))?],
        None => fleet.plans.iter().collect(),
    };
    if plans.is_empty() {
        return Err(TriggerError::Invalid("fleet.toml defines no test plan".into()));
    }
    let mut tx = pool.begin().await?;
    let kernel_id: i64 = sqlx::query_scalar(
        "INSERT INTO kernels (tree, branch, commit_sha) VALUES ($1, $2, $3)
         ON CONFLICT (tree, branch, commit_sha) DO UPDATE SET tree = EXCLUDED.tree
         RETURNING id",
    )
    .bind(&req.tree)
    .bind(&req.branch)
    .bind(&commit)
    .fetch_one(&mut *tx)
    .await?;
    let run_id: i64 = sqlx::query_scalar(
        "INSERT INTO runs (kernel_id, plan_filter, requested_by) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(kernel_id)
    .bind(&req.plan)
    .bind(requested_by)
    .fetch_one(&mut *tx)
    .await?;
    let mut jobs = Vec::new();
    let mut boards = Vec::new();
    for plan in plans {
        let params = plan.params_for(&commit);
        for board in &plan.boards {
            let spec = JobSpec {
                kernel: KernelRef { tree: req.tree.clone(), branch: req.branch.clone(), commit: commit.clone() },
                plan: plan.name.clone(),
                timeout_s: plan.timeout_s,
                task: Task::MigrateCancel(params.clone()),
            };
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO jobs (run_id, kernel_id, board, plan, spec, cycles_total)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            )
            .bind(run_id)
            .bind(kernel_id)
            .bind(board)
            .bind(&plan.name)
            .bind(serde_json::to_value(&spec).unwrap_or_default())
            .bind(params.cycles as i32)
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query("INSERT INTO job_events (job_id, to_state, reason) VALUES ($1, 'queued', $2)")
                .bind(id)
                .bind(format!("planned by run {run_id}"))
                .execute(&mut *tx)
                .await?;
            jobs.push(id);
            if !boards.contains(board) {
                boards.push(board.clone());
            }
        }
    }
    tx.commit().await?;
    Ok(PlannedRun { run_id, kernel_id, jobs, boards })
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RunRow {
    pub id: i64,
    pub kernel_id: i64,
    pub tree: String,
    pub branch: String,
    pub commit_sha: String,
    pub plan_filter: Option<String>,
    pub requested_by: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub jobs_total: i64,
    pub jobs_done: i64,
    pub jobs_failed: i64,
    pub simulated: bool,
}

const RUN_SELECT: &str = "SELECT r.id, r.kernel_id, k.tree, k.branch, k.commit_sha, r.plan_filter,
        r.requested_by, r.created_at,
        (SELECT count(*) FROM jobs j WHERE j.run_id = r.id) AS jobs_total,
        (SELECT count(*) FROM jobs j WHERE j.run_id = r.id
            AND j.state NOT IN ('queued', 'assigned', 'running')) AS jobs_done,
        (SELECT count(*) FROM jobs j WHERE j.run_id = r.id AND j.state = 'failed') AS jobs_failed,
        COALESCE((SELECT bool_or(j.simulated) FROM jobs j WHERE j.run_id = r.id), false) AS simulated
     FROM runs r JOIN kernels k ON k.id = r.kernel_id";

pub async fn get(pool: &PgPool, id: i64) -> Result<Option<RunRow>, sqlx::Error> {
    sqlx::query_as::<_, RunRow>(sqlx::AssertSqlSafe(format!("{RUN_SELECT} WHERE r.id = $1")))
        .bind(id)
        .fetch_optional(pool)
        .await
}

pub async fn list(pool: &PgPool, limit: i64) -> Result<Vec<RunRow>, sqlx::Error> {
    sqlx::query_as::<_, RunRow>(sqlx::AssertSqlSafe(format!("{RUN_SELECT} ORDER BY r.id DESC LIMIT $1")))
        .bind(limit)
        .fetch_all(pool)
        .await
}
