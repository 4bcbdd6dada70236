//! The per-kernel regression record: evidence per (kernel, board family,
//! plan), recomputed from the jobs whenever one of them is analysed.
//!
//! A job ends at its first failure, so the per-cycle failure rate is
//! failed jobs / cycles executed (the failing cycle included). Infra errors,
//! lost and timed-out jobs contribute their clean cycles but are counted
//! apart and never as kernel failures.

use serde::Serialize;
use sqlx::{PgPool, Postgres, Transaction};

pub async fn recompute(
    tx: &mut Transaction<'_, Postgres>,
    kernel: i64,
    plan: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO kernel_results (kernel_id, family, plan, jobs, boards, cycles_run, failed_cycles,
                                     infra_errors, simulated, board_seconds, updated_at)
         SELECT j.kernel_id, b.family, j.plan, count(*)::int, count(DISTINCT j.board)::int,
                COALESCE(sum(j.cycles_completed + CASE WHEN j.state = 'failed' THEN 1 ELSE 0 END), 0)::int8,
                count(*) FILTER (WHERE j.state = 'failed')::int8,
                count(*) FILTER (WHERE j.state IN ('infra_error', 'lost', 'timed_out'))::int,
                bool_or(j.simulated),
                COALESCE(sum(extract(epoch FROM j.finished_at - j.started_at)), 0)::float8,
                now()
         FROM jobs j JOIN boards b ON b.name = j.board
         WHERE j.kernel_id = $1 AND j.plan = $2
           AND j.state IN ('passed', 'failed', 'infra_error', 'timed_out', 'lost')
         GROUP BY j.kernel_id, b.family, j.plan
         ON CONFLICT (kernel_id, family, plan) DO UPDATE SET
            jobs = EXCLUDED.jobs, boards = EXCLUDED.boards, cycles_run = EXCLUDED.cycles_run,
            failed_cycles = EXCLUDED.failed_cycles, infra_errors = EXCLUDED.infra_errors,
            simulated = EXCLUDED.simulated, board_seconds = EXCLUDED.board_seconds, updated_at = now()",
    )
    .bind(kernel)
    .bind(plan)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct KernelResult {
    pub kernel_id: i64,
    pub family: String,
    pub plan: String,
    pub jobs: i32,
    pub boards: i32,
    pub cycles_run: i64,
    pub failed_cycles: i64,
    pub infra_errors: i32,
    pub simulated: bool,
    pub board_seconds: f64,
}

pub async fn for_kernel(pool: &PgPool, kernel: i64) -> Result<Vec<KernelResult>, sqlx::Error> {
    sqlx::query_as::<_, KernelResult>(
        "SELECT kernel_id, family, plan, jobs, boards, cycles_run, failed_cycles, infra_errors, simulated, board_seconds
         FROM kernel_results WHERE kernel_id = $1 ORDER BY plan, family",
    )
    .bind(kernel)
    .fetch_all(pool)
    .await
}

// ---- dashboard reads (appended for the web pages; read-only) ----

/// The results of several kernels in one query.
pub async fn for_kernels(
    pool: &PgPool,
    kernels: &[i64],
    plan: Option<&str>,
) -> Result<Vec<KernelResult>, sqlx::Error> {
    sqlx::query_as::<_, KernelResult>(
        "SELECT kernel_id, family, plan, jobs, boards, cycles_run, failed_cycles, infra_errors, simulated, board_seconds
         FROM kernel_results WHERE kernel_id = ANY($1) AND ($2::text IS NULL OR plan = $2)
         ORDER BY kernel_id, plan, family",
    )
    .bind(kernels)
    .bind(plan)
    .fetch_all(pool)
    .await
}

/// The verdicts of several kernels (one query for a whole page).
pub use crate::verdicts::{VerdictRow, for_kernels as verdicts_for_kernels};

/// Plans that have results, for validating filters.
pub async fn plans(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT DISTINCT plan FROM kernel_results ORDER BY 1")
        .fetch_all(pool)
        .await
}
