//! Reading jobs: one job, a run's or a board's jobs, their events and
//! cycles, and what the dashboard's pages and exports show. Read-only: the
//! writes are the state machine's, in [`super`].

use serde::Serialize;
use sqlx::{PgPool, Row};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct JobRow {
    pub id: i64,
    pub run_id: i64,
    pub board: String,
    pub plan: String,
    pub state: String,
    pub epoch: i64,
    pub executor: Option<String>,
    pub simulated: bool,
    /// `hardware`, `emulated` or `simulated`: where the guests ran.
    pub host_kind: Option<String>,
    /// `kvm`, `tcg` or `none`: the accelerator the guests really used.
    pub accel: Option<String>,
    /// Where the job ran, in words (host, kernel, KVM mode).
    pub run_detail: Option<String>,
    /// Why the agent fell back from what it was asked for (TCG or replay
    /// instead of `auto`'s first choice): such a job never counts.
    pub fallback: Option<String>,
    pub cycles_total: i32,
    pub cycles_completed: i32,
    pub failed_cycle: Option<i32>,
    pub reason: Option<String>,
    pub evidence: serde_json::Value,
    pub tree: String,
    pub branch: String,
    pub commit_sha: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

// Query texts are string literals, composed with `concat!` from the
// macros below: no query text is ever built at run time (values are bound).

/// The columns of [`JobRow`].
macro_rules! job_columns {
    () => {
        "SELECT j.id, j.run_id, j.board, j.plan, j.state, j.epoch, j.executor, j.simulated,
        j.host_kind, j.accel, j.run_detail, j.fallback, j.cycles_total, j.cycles_completed, j.failed_cycle, j.reason, j.evidence,
        k.tree, k.branch, k.commit_sha, j.created_at, j.started_at, j.finished_at"
    };
}

/// A [`JobRow`] query up to its `WHERE`.
macro_rules! job_select {
    () => {
        concat!(
            job_columns!(),
            "\n     FROM jobs j JOIN kernels k ON k.id = j.kernel_id"
        )
    };
}

pub async fn get(pool: &PgPool, id: i64) -> Result<Option<JobRow>, sqlx::Error> {
    sqlx::query_as::<_, JobRow>(concat!(job_select!(), " WHERE j.id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

pub async fn for_run(pool: &PgPool, run: i64) -> Result<Vec<JobRow>, sqlx::Error> {
    sqlx::query_as::<_, JobRow>(concat!(job_select!(), " WHERE j.run_id = $1 ORDER BY j.id"))
        .bind(run)
        .fetch_all(pool)
        .await
}

/// The job each board is busy with (newest active one).
pub async fn active_by_board(pool: &PgPool) -> Result<Vec<JobRow>, sqlx::Error> {
    sqlx::query_as::<_, JobRow>(concat!(
        job_select!(),
        " WHERE j.state IN ('assigned', 'running') ORDER BY j.id"
    ))
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct JobEvent {
    pub from_state: Option<String>,
    pub to_state: String,
    pub reason: Option<String>,
    pub at: chrono::DateTime<chrono::Utc>,
}

pub async fn events(pool: &PgPool, job: i64) -> Result<Vec<JobEvent>, sqlx::Error> {
    sqlx::query_as::<_, JobEvent>(
        "SELECT from_state, to_state, reason, at FROM job_events WHERE job_id = $1 ORDER BY id",
    )
    .bind(job)
    .fetch_all(pool)
    .await
}

pub async fn cycles(pool: &PgPool, job: i64) -> Result<Vec<serde_json::Value>, sqlx::Error> {
    sqlx::query_scalar("SELECT record FROM job_cycles WHERE job_id = $1 ORDER BY cycle")
        .bind(job)
        .fetch_all(pool)
        .await
}

/// A job as list pages show it: no spec, no evidence.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct JobBrief {
    pub id: i64,
    pub run_id: i64,
    pub kernel_id: i64,
    pub board: String,
    pub plan: String,
    pub state: String,
    pub simulated: bool,
    pub host_kind: Option<String>,
    pub cycles_total: i32,
    pub cycles_completed: i32,
    pub failed_cycle: Option<i32>,
    pub reason: Option<String>,
    pub commit_sha: String,
    pub branch: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The first finding's title, for failure lists (NULL elsewhere).
    pub finding: Option<String>,
}

/// A [`JobBrief`] query up to its `WHERE`, reading jobs from `$jobs`
/// (the `jobs` table, or a fixed subquery that pages it first).
macro_rules! job_brief_select {
    () => {
        job_brief_select!("jobs j")
    };
    ($jobs:literal) => {
        concat!(
            "SELECT j.id, j.run_id, j.kernel_id, j.board, j.plan, j.state, j.simulated, j.host_kind,
        j.cycles_total, j.cycles_completed, j.failed_cycle, j.reason, k.commit_sha, k.branch,
        j.created_at, j.finished_at, NULL::text AS finding
     FROM ",
            $jobs,
            " JOIN kernels k ON k.id = j.kernel_id"
        )
    };
}

/// The jobs of several runs in one query (no query per run).
pub async fn briefs_for_runs(pool: &PgPool, runs: &[i64]) -> Result<Vec<JobBrief>, sqlx::Error> {
    sqlx::query_as::<_, JobBrief>(concat!(
        job_brief_select!(),
        " WHERE j.run_id = ANY($1) ORDER BY j.run_id, j.id"
    ))
    .bind(runs)
    .fetch_all(pool)
    .await
}

/// A board's jobs, newest first.
pub async fn briefs_for_board(
    pool: &PgPool,
    board: &str,
    limit: i64,
    offset: i64,
) -> Result<Vec<JobBrief>, sqlx::Error> {
    sqlx::query_as::<_, JobBrief>(concat!(
        job_brief_select!(
            "(SELECT * FROM jobs WHERE board = $1 ORDER BY id DESC LIMIT $2 OFFSET $3) j"
        ),
        " ORDER BY j.id DESC"
    ))
    .bind(board)
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await
}

/// A kernel's jobs, newest first.
pub async fn briefs_for_kernel(
    pool: &PgPool,
    kernel: i64,
    limit: i64,
    offset: i64,
) -> Result<Vec<JobBrief>, sqlx::Error> {
    sqlx::query_as::<_, JobBrief>(concat!(
        job_brief_select!(
            "(SELECT * FROM jobs WHERE kernel_id = $1 ORDER BY id DESC LIMIT $2 OFFSET $3) j"
        ),
        " ORDER BY j.id DESC"
    ))
    .bind(kernel)
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await
}

/// A board's failures (kernel failures and lab failures), newest first,
/// each with its first finding's title.
pub async fn failures_for_board(
    pool: &PgPool,
    board: &str,
    limit: i64,
) -> Result<Vec<JobBrief>, sqlx::Error> {
    sqlx::query_as::<_, JobBrief>(
        "SELECT j.id, j.run_id, j.kernel_id, j.board, j.plan, j.state, j.simulated, j.host_kind,
                j.cycles_total, j.cycles_completed, j.failed_cycle, j.reason, k.commit_sha, k.branch,
                j.created_at, j.finished_at,
                (SELECT f.title FROM findings f WHERE f.job_id = j.id ORDER BY f.stream = 'guest_console' DESC, f.ordinal LIMIT 1) AS finding
         FROM jobs j JOIN kernels k ON k.id = j.kernel_id
         WHERE j.board = $1 AND j.state IN ('failed', 'infra_error', 'timed_out', 'lost')
         ORDER BY j.id DESC LIMIT $2",
    )
    .bind(board)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The job's spec as stored (the parameters it ran with).
pub async fn spec(pool: &PgPool, job: i64) -> Result<Option<serde_json::Value>, sqlx::Error> {
    sqlx::query_scalar("SELECT spec FROM jobs WHERE id = $1")
        .bind(job)
        .fetch_optional(pool)
        .await
}

/// Cycle records with `cycle > after`, in order, at most `limit`.
pub async fn cycles_after(
    pool: &PgPool,
    job: i64,
    after: i32,
    limit: i64,
) -> Result<Vec<serde_json::Value>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT record FROM job_cycles WHERE job_id = $1 AND cycle > $2 ORDER BY cycle LIMIT $3",
    )
    .bind(job)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Number of stored cycle records and the highest cycle number.
pub async fn cycle_extent(pool: &PgPool, job: i64) -> Result<(i64, i32), sqlx::Error> {
    sqlx::query_as("SELECT count(*), COALESCE(max(cycle), 0) FROM job_cycles WHERE job_id = $1")
        .bind(job)
        .fetch_one(pool)
        .await
}

/// One point of the per-cycle timing plot; with `step > 1` a bucket of
/// `step` cycles, keeping each bucket's worst (largest) timings.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct CyclePoint {
    pub cycle: i32,
    pub delay_ms: Option<f64>,
    pub cancel_ms: Option<f64>,
    pub progress_ms: Option<f64>,
    pub wall_ms: Option<f64>,
    pub all_alive: bool,
}

pub async fn cycle_series(
    pool: &PgPool,
    job: i64,
    step: i32,
) -> Result<Vec<CyclePoint>, sqlx::Error> {
    sqlx::query_as::<_, CyclePoint>(
        "SELECT min(cycle) AS cycle,
                max((record->>'delay_ms')::float8) AS delay_ms,
                max((record->>'cancel_to_cancelled_ms')::float8) AS cancel_ms,
                max((record->>'guest_progress_ms')::float8) AS progress_ms,
                max((record->>'wall_ms')::float8) AS wall_ms,
                COALESCE(bool_and((record->>'guest_alive')::bool), true) AS all_alive
         FROM job_cycles WHERE job_id = $1
         GROUP BY (cycle - 1) / $2 ORDER BY 1",
    )
    .bind(job)
    .bind(step.max(1))
    .fetch_all(pool)
    .await
}

/// What the live job page needs to notice a change.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct JobPulse {
    pub state: String,
    pub cycles_completed: i32,
    pub cycles_total: i32,
    pub failed_cycle: Option<i32>,
    pub reason: Option<String>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

pub async fn pulse(pool: &PgPool, job: i64) -> Result<Option<JobPulse>, sqlx::Error> {
    sqlx::query_as::<_, JobPulse>(
        "SELECT state, cycles_completed, cycles_total, failed_cycle, reason, updated_at FROM jobs WHERE id = $1",
    )
    .bind(job)
    .fetch_optional(pool)
    .await
}

/// The kernel a job tests.
pub async fn kernel_of(pool: &PgPool, job: i64) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT kernel_id FROM jobs WHERE id = $1")
        .bind(job)
        .fetch_optional(pool)
        .await
}

/// Finished jobs with their kernel id and board family, newest kernels
/// first, for exports.
pub async fn finished_for_export(
    pool: &PgPool,
    commit: Option<&str>,
    limit: i64,
) -> Result<Vec<(JobRow, i64, String)>, sqlx::Error> {
    use sqlx::FromRow;
    let rows = sqlx::query(concat!(
        job_columns!(),
        ", j.kernel_id AS x_kernel_id, b.family AS x_family
     FROM jobs j JOIN kernels k ON k.id = j.kernel_id JOIN boards b ON b.name = j.board
         WHERE j.state IN ('passed', 'failed', 'infra_error', 'timed_out', 'lost', 'cancelled')
           AND ($1::text IS NULL OR k.commit_sha LIKE $1 || '%')
         ORDER BY j.kernel_id DESC, j.id LIMIT $2"
    ))
    .bind(commit)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok((
                JobRow::from_row(row)?,
                row.try_get("x_kernel_id")?,
                row.try_get("x_family")?,
            ))
        })
        .collect()
}

/// (kernel, board family) pairs with queued or running jobs, for kernels.
pub async fn active_families(
    pool: &PgPool,
    kernels: &[i64],
) -> Result<Vec<(i64, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT DISTINCT j.kernel_id, b.family FROM jobs j JOIN boards b ON b.name = j.board
         WHERE j.kernel_id = ANY($1) AND j.state IN ('queued', 'assigned', 'running')",
    )
    .bind(kernels)
    .fetch_all(pool)
    .await
}

/// A job's stage-2 path evidence summed over its cycles (the per-cycle
/// `path` of `job_cycles.record`), for exports. A counter is `None`
/// (unknown) unless every cycle that carries path evidence knows it: a sum
/// over some cycles only would pass an undercount off as a measurement.
#[derive(Debug, Clone, Default, PartialEq, Serialize, sqlx::FromRow)]
pub struct PathTotals {
    pub job_id: i64,
    /// Cycles recorded.
    pub cycles: i64,
    /// Cycles with path evidence (KVM/arm64 hosts with the probes armed).
    pub cycles_with_path: i64,
    pub page_maps: Option<i64>,
    pub block_maps: Option<i64>,
    pub block_maps_after_cancel: Option<i64>,
    pub perm_faults: Option<i64>,
    pub memslot_changes: Option<i64>,
}

impl PathTotals {
    /// (name, value) of the counters, in a fixed order.
    pub fn counters(&self) -> [(&'static str, Option<i64>); 5] {
        [
            ("page_maps", self.page_maps),
            ("block_maps", self.block_maps),
            ("block_maps_after_cancel", self.block_maps_after_cancel),
            ("perm_faults", self.perm_faults),
            ("memslot_changes", self.memslot_changes),
        ]
    }
}

pub async fn path_totals(pool: &PgPool, jobs: &[i64]) -> Result<Vec<PathTotals>, sqlx::Error> {
    // The sum of counter `$f` when every cycle with path evidence has it.
    macro_rules! total {
        ($f:literal) => {
            concat!(
                "CASE WHEN count(record->'path'->'",
                $f,
                "') FILTER (WHERE jsonb_typeof(record->'path'->'",
                $f,
                "') = 'number')
                       = count(record->'path') AND count(record->'path') > 0
                  THEN sum((record->'path'->>'",
                $f,
                "')::int8)::int8 END AS ",
                $f
            )
        };
    }
    const SQL: &str = concat!(
        "SELECT job_id, count(*) AS cycles, count(record->'path') AS cycles_with_path, ",
        total!("page_maps"),
        ", ",
        total!("block_maps"),
        ", ",
        total!("block_maps_after_cancel"),
        ", ",
        total!("perm_faults"),
        ", ",
        total!("memslot_changes"),
        "
         FROM job_cycles WHERE job_id = ANY($1) GROUP BY job_id ORDER BY job_id"
    );
    sqlx::query_as::<_, PathTotals>(SQL)
        .bind(jobs)
        .fetch_all(pool)
        .await
}
