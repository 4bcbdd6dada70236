//! Kernels and runs: recording a kernel under test and planning its jobs.

use armfleet_protocol::{JobSpec, KernelRef, Task};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Postgres, Row, Transaction};

use crate::domain::config::{Fleet, Plan};
use crate::domain::jobs::JobState;

/// A request to test a kernel.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerRequest {
    pub tree: String,
    pub branch: String,
    pub commit: String,
    /// Only this plan; default: every plan.
    pub plan: Option<String>,
    /// Compare against this commit instead of the nearest tested ancestor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// Boot these artifacts, built elsewhere, instead of building the
    /// kernel (checked against their sums before any board gets them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<crate::domain::builds::UrlBuild>,
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

fn valid_commit(c: &str) -> bool {
    (7..=64).contains(&c.len()) && c.chars().all(|c| c.is_ascii_hexdigit())
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
        if !valid_commit(&self.commit) {
            return bad("`commit` must be a hexadecimal commit id of 7 to 64 characters");
        }
        if self.baseline.as_deref().is_some_and(|b| !valid_commit(b)) {
            return bad("`baseline` must be a hexadecimal commit id of 7 to 64 characters");
        }
        if let Some(b) = &self.build {
            b.validate().map_err(TriggerError::Invalid)?;
        }
        Ok(())
    }
}

/// What is known of a kernel when it is recorded.
#[derive(Debug, Clone, Default)]
pub struct KernelInput {
    pub tree: String,
    pub branch: String,
    pub commit: String,
    pub parent: Option<String>,
    pub subject: Option<String>,
    pub author: Option<String>,
    pub committed_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedRun {
    pub run_id: i64,
    pub kernel_id: i64,
    pub jobs: Vec<i64>,
    /// Boards that received jobs (for the dispatcher to wake).
    pub boards: Vec<String>,
    /// The run already existed (an idempotent repeat).
    pub existing: bool,
}

/// Records the kernel and a run, and plans one job per (matching board, plan).
pub async fn create(
    pool: &PgPool,
    fleet: &Fleet,
    req: &TriggerRequest,
    requested_by: &str,
) -> Result<PlannedRun, TriggerError> {
    req.validate()?;
    let kernel = KernelInput {
        tree: req.tree.clone(),
        branch: req.branch.clone(),
        commit: req.commit.to_ascii_lowercase(),
        ..Default::default()
    };
    let plans = select_plans(
        fleet,
        req.plan
            .as_deref()
            .map(|p| vec![p.to_owned()])
            .unwrap_or_default(),
    )?;
    let mut tx = pool.begin().await?;
    let kernel_id = record_kernel(&mut tx, &kernel).await?;
    if let Some(b) = &req.build {
        let build =
            crate::domain::builds::request_urls(&mut tx, &kernel.tree, &kernel.commit, b).await?;
        sqlx::query("UPDATE kernels SET build_id = $2 WHERE id = $1")
            .bind(kernel_id)
            .bind(build)
            .execute(&mut *tx)
            .await?;
    }
    let baseline = match &req.baseline {
        Some(b) => Some(
            sqlx::query_scalar::<_, i64>("SELECT id FROM kernels WHERE tree = $1 AND commit_sha LIKE $2 || '%' ORDER BY id LIMIT 1")
                .bind(&req.tree)
                .bind(b.to_ascii_lowercase())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| TriggerError::Invalid(format!("baseline {b} is not a kernel armfleet has tested on this tree")))?,
        ),
        None => None,
    };
    let planned = plan_run(
        &mut tx,
        kernel_id,
        &kernel,
        &plans,
        requested_by,
        req.plan.as_deref(),
        baseline,
        None,
        None,
    )
    .await?;
    tx.commit().await?;
    Ok(planned)
}

/// The plans a request names (all when none).
pub fn select_plans<'a>(
    fleet: &'a Fleet,
    names: Vec<String>,
) -> Result<Vec<&'a Plan>, TriggerError> {
    let plans: Vec<&Plan> = if names.is_empty() {
        fleet.plans.iter().collect()
    } else {
        names
            .iter()
            .map(|n| {
                fleet
                    .plan(n)
                    .ok_or_else(|| TriggerError::UnknownPlan(n.clone()))
            })
            .collect::<Result<_, _>>()?
    };
    if plans.is_empty() {
        return Err(TriggerError::Invalid(
            "fleet.toml defines no test plan".into(),
        ));
    }
    Ok(plans)
}

/// Inserts (or completes) the kernel row; returns its id.
pub async fn record_kernel(
    tx: &mut Transaction<'_, Postgres>,
    k: &KernelInput,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO kernels (tree, branch, commit_sha, parent_sha, subject, author, committed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (tree, branch, commit_sha) DO UPDATE SET
            parent_sha = COALESCE(kernels.parent_sha, EXCLUDED.parent_sha),
            subject = COALESCE(kernels.subject, EXCLUDED.subject),
            author = COALESCE(kernels.author, EXCLUDED.author),
            committed_at = COALESCE(kernels.committed_at, EXCLUDED.committed_at)
         RETURNING id",
    )
    .bind(&k.tree)
    .bind(&k.branch)
    .bind(&k.commit)
    .bind(&k.parent)
    .bind(&k.subject)
    .bind(&k.author)
    .bind(k.committed_at)
    .fetch_one(&mut **tx)
    .await
}

/// Which boards a job goes to, and with how many cycles.
pub struct Extension<'a> {
    pub boards: &'a [String],
    pub cycles: u32,
    pub extends_run: i64,
}

#[allow(clippy::too_many_arguments)]
pub async fn plan_run(
    tx: &mut Transaction<'_, Postgres>,
    kernel_id: i64,
    kernel: &KernelInput,
    plans: &[&Plan],
    origin: &str,
    plan_filter: Option<&str>,
    baseline: Option<i64>,
    extension: Option<Extension<'_>>,
    delivery: Option<&str>,
) -> Result<PlannedRun, sqlx::Error> {
    let _ = delivery;
    let run_id = insert_run(
        tx,
        kernel_id,
        plan_filter,
        origin,
        baseline,
        extension.as_ref().map(|e| e.extends_run),
    )
    .await?;
    let mut jobs = Vec::new();
    let mut boards = Vec::new();
    // Artifacts built elsewhere win over the plan's own build.
    let given_build: Option<i64> = sqlx::query_scalar("SELECT build_id FROM kernels WHERE id = $1")
        .bind(kernel_id)
        .fetch_one(&mut **tx)
        .await?;
    for plan in plans {
        let build_id = match (given_build, &plan.build) {
            (Some(b), _) => Some(b),
            (None, Some(cfg)) => {
                Some(crate::domain::builds::request(tx, &kernel.tree, &kernel.commit, cfg).await?)
            }
            (None, None) => None,
        };
        let targets: Vec<String> = match &extension {
            Some(e) => e
                .boards
                .iter()
                .filter(|b| plan.boards.contains(b))
                .cloned()
                .collect(),
            None => plan.boards.clone(),
        };
        for board in &targets {
            let mut params = plan.params_for(&kernel.commit, board);
            if let Some(e) = &extension {
                params.cycles = e.cycles;
                // Each extension job draws fresh replay/cancel-delay randomness.
                params.seed = params.seed.wrapping_add(run_id as u64);
            }
            let spec = JobSpec {
                kernel: KernelRef {
                    tree: kernel.tree.clone(),
                    branch: kernel.branch.clone(),
                    commit: kernel.commit.clone(),
                },
                plan: plan.name.clone(),
                timeout_s: plan.timeout_s,
                task: Task::MigrateCancel(params.clone()),
                build_id,
            };
            let id = crate::domain::jobs::insert_queued(
                tx, run_id, kernel_id, board, &plan.name, &spec, None, 1,
            )
            .await?;
            jobs.push(id);
            if !boards.contains(board) {
                boards.push(board.clone());
            }
        }
    }
    Ok(PlannedRun {
        run_id,
        kernel_id,
        jobs,
        boards,
        existing: false,
    })
}

/// A new `runs` row (the only place one is written).
pub async fn insert_run(
    tx: &mut Transaction<'_, Postgres>,
    kernel_id: i64,
    plan_filter: Option<&str>,
    origin: &str,
    baseline: Option<i64>,
    extends_run: Option<i64>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO runs (kernel_id, plan_filter, requested_by, origin, baseline_kernel_id, extends_run_id)
         VALUES ($1, $2, $3, $3, $4, $5) RETURNING id",
    )
    .bind(kernel_id)
    .bind(plan_filter)
    .bind(origin)
    .bind(baseline)
    .bind(extends_run)
    .fetch_one(&mut **tx)
    .await
}

/// Fills in what the mirror learnt about a kernel's commit, keeping what
/// the trigger said.
pub async fn fill_kernel_from_mirror(
    pool: &PgPool,
    kernel_id: i64,
    commit: &crate::domain::mirror::CommitInfo,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE kernels SET parent_sha = COALESCE(parent_sha, $2), subject = COALESCE(subject, $3),
            author = COALESCE(author, $4), committed_at = COALESCE(committed_at, $5) WHERE id = $1",
    )
    .bind(kernel_id)
    .bind(&commit.parent)
    .bind(Some(&commit.subject).filter(|s| !s.is_empty()))
    .bind(Some(&commit.author).filter(|s| !s.is_empty()))
    .bind(commit.committed_at)
    .execute(pool)
    .await?;
    Ok(())
}

/// Queues another attempt of a job that ended with a lab failure, unless
/// it was retried already or has used up `max_retries`. Returns the new
/// job and its board.
pub async fn retry_infra_failure(
    pool: &PgPool,
    job: i64,
    max_retries: u32,
) -> Result<Option<(i64, String)>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(
        "SELECT run_id, kernel_id, board, plan, spec, attempt, state FROM jobs WHERE id = $1 FOR UPDATE",
    )
    .bind(job)
    .fetch_one(&mut *tx)
    .await?;
    let state: String = row.get("state");
    let attempt: i32 = row.get("attempt");
    let already: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM jobs WHERE retry_of = $1)")
            .bind(job)
            .fetch_one(&mut *tx)
            .await?;
    if already || attempt as u32 > max_retries || !JobState::is_lab_failure_str(&state) {
        return Ok(None);
    }
    let spec: JobSpec = match serde_json::from_value(row.get("spec")) {
        Ok(s) => s,
        Err(_) => return Ok(None),
    };
    let board: String = row.get("board");
    let id = crate::domain::jobs::insert_queued(
        &mut tx,
        row.get("run_id"),
        row.get("kernel_id"),
        &board,
        &row.get::<String, _>("plan"),
        &spec,
        Some(job),
        attempt + 1,
    )
    .await?;
    tx.commit().await?;
    Ok(Some((id, board)))
}

/// A run with its job counts (see [`RunSummary`]).
pub type RunRow = RunSummary;

// Query texts are string literals, composed with `concat!` from the
// macros below: no query text is ever built at run time (values are bound).

/// A [`RunSummary`] query up to its `WHERE`, reading runs from `$runs` (the
/// `runs` table, or a fixed subquery that pages it first).
macro_rules! run_select {
    () => {
        run_select!("runs r")
    };
    ($runs:literal) => {
        concat!(
            "SELECT r.id, r.kernel_id, k.tree, k.branch, k.commit_sha, r.plan_filter,
        r.requested_by, r.created_at, a.jobs_total, a.jobs_done, a.jobs_failed, a.simulated
     FROM ",
            $runs,
            " JOIN kernels k ON k.id = r.kernel_id
     CROSS JOIN LATERAL (
        SELECT count(*) AS jobs_total,
               count(*) FILTER (WHERE j.state NOT IN ('queued', 'assigned', 'running')) AS jobs_done,
               count(*) FILTER (WHERE j.state = 'failed') AS jobs_failed,
               COALESCE(bool_or(j.simulated), false) AS simulated
        FROM jobs j WHERE j.run_id = r.id) a"
        )
    };
}

pub async fn get(pool: &PgPool, id: i64) -> Result<Option<RunRow>, sqlx::Error> {
    sqlx::query_as::<_, RunRow>(concat!(run_select!(), " WHERE r.id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

pub async fn list(pool: &PgPool, limit: i64) -> Result<Vec<RunRow>, sqlx::Error> {
    sqlx::query_as::<_, RunRow>(concat!(run_select!(), " ORDER BY r.id DESC LIMIT $1"))
        .bind(limit)
        .fetch_all(pool)
        .await
}

// ---- dashboard reads (appended for the web pages; read-only) ----

/// A run with its job counts, aggregated in one pass over its jobs.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RunSummary {
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

/// Runs, newest first, one page.
pub async fn summaries(
    pool: &PgPool,
    limit: i64,
    offset: i64,
) -> Result<Vec<RunSummary>, sqlx::Error> {
    sqlx::query_as::<_, RunSummary>(concat!(
        run_select!("(SELECT * FROM runs ORDER BY id DESC LIMIT $1 OFFSET $2) r"),
        " ORDER BY r.id DESC"
    ))
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await
}

/// The runs of one kernel, newest first.
pub async fn summaries_for_kernel(
    pool: &PgPool,
    kernel: i64,
    limit: i64,
) -> Result<Vec<RunSummary>, sqlx::Error> {
    sqlx::query_as::<_, RunSummary>(concat!(
        run_select!(),
        " WHERE r.kernel_id = $1 ORDER BY r.id DESC LIMIT $2"
    ))
    .bind(kernel)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// A tested kernel with its evidence summed over board families (and over
/// plans unless one is asked for) and its job counts.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct KernelSummary {
    pub id: i64,
    pub tree: String,
    pub branch: String,
    pub commit_sha: String,
    pub parent_sha: Option<String>,
    pub subject: Option<String>,
    pub author: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub cycles_run: i64,
    pub failed_cycles: i64,
    pub infra_errors: i64,
    pub simulated: bool,
    pub jobs_total: i64,
    pub jobs_active: i64,
}

/// A [`KernelSummary`] query up to its `WHERE`, reading kernels from
/// `$kernels` (the `kernels` table, or a fixed subquery that pages it
/// first); `$1` is the plan to sum results over (NULL: all plans).
macro_rules! kernel_summary_select {
    () => {
        kernel_summary_select!("kernels k")
    };
    ($kernels:literal) => {
        concat!(
            "SELECT k.id, k.tree, k.branch, k.commit_sha, k.parent_sha, k.subject, k.author,
        k.created_at,
        COALESCE(r.cycles_run, 0)::int8 AS cycles_run, COALESCE(r.failed_cycles, 0)::int8 AS failed_cycles,
        COALESCE(r.infra_errors, 0)::int8 AS infra_errors,
        COALESCE(r.simulated, false) OR EXISTS (SELECT 1 FROM jobs js WHERE js.kernel_id = k.id AND js.simulated) AS simulated,
        (SELECT count(*) FROM jobs j WHERE j.kernel_id = k.id) AS jobs_total,
        (SELECT count(*) FROM jobs j WHERE j.kernel_id = k.id AND j.state IN ('queued', 'assigned', 'running')) AS jobs_active
     FROM ",
            $kernels,
            "
     LEFT JOIN LATERAL (
        SELECT sum(kr.cycles_run) AS cycles_run, sum(kr.failed_cycles) AS failed_cycles,
               sum(kr.infra_errors) AS infra_errors, bool_or(kr.simulated) AS simulated
        FROM kernel_results kr WHERE kr.kernel_id = k.id AND ($1::text IS NULL OR kr.plan = $1)) r ON true"
        )
    };
}

/// Tested kernels, newest first, optionally of one tree and/or branch.
pub async fn kernel_summaries(
    pool: &PgPool,
    tree: Option<&str>,
    branch: Option<&str>,
    plan: Option<&str>,
    limit: i64,
    offset: i64,
) -> Result<Vec<KernelSummary>, sqlx::Error> {
    sqlx::query_as::<_, KernelSummary>(concat!(
        // Page first, then aggregate: OFFSET must not evaluate the
        // per-kernel subqueries of the rows it skips.
        kernel_summary_select!(
            "(SELECT * FROM kernels WHERE ($2::text IS NULL OR tree = $2) AND ($3::text IS NULL OR branch = $3)
                   ORDER BY id DESC LIMIT $4 OFFSET $5) k"
        ),
        "
         ORDER BY k.id DESC"
    ))
    .bind(plan)
    .bind(tree)
    .bind(branch)
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await
}

pub async fn kernel_summary(pool: &PgPool, id: i64) -> Result<Option<KernelSummary>, sqlx::Error> {
    sqlx::query_as::<_, KernelSummary>(concat!(kernel_summary_select!(), " WHERE k.id = $2"))
        .bind(None::<&str>)
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// The (tree, branch) pairs kernels were tested on, with their kernel counts.
pub async fn branches(pool: &PgPool) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT tree, branch, count(*) FROM kernels GROUP BY tree, branch ORDER BY max(id) DESC LIMIT 200",
    )
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct KernelRow {
    pub id: i64,
    pub tree: String,
    pub branch: String,
    pub commit_sha: String,
    pub parent_sha: Option<String>,
    pub subject: Option<String>,
    pub author: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

pub async fn kernels_by_commit(pool: &PgPool, prefix: &str) -> Result<Vec<KernelRow>, sqlx::Error> {
    sqlx::query_as::<_, KernelRow>(
        "SELECT id, tree, branch, commit_sha, parent_sha, subject, author, created_at FROM kernels
         WHERE commit_sha LIKE $1 || '%' ORDER BY id LIMIT 20",
    )
    .bind(prefix)
    .fetch_all(pool)
    .await
}

pub async fn for_kernel(pool: &PgPool, kernel: i64) -> Result<Vec<RunRow>, sqlx::Error> {
    sqlx::query_as::<_, RunRow>(concat!(
        run_select!(),
        " WHERE r.kernel_id = $1 ORDER BY r.id"
    ))
    .bind(kernel)
    .fetch_all(pool)
    .await
}
