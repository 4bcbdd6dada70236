//! Reading verdicts.

use serde::Serialize;
use sqlx::PgPool;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct VerdictRow {
    pub kernel_id: i64,
    pub family: String,
    pub plan: String,
    pub verdict: String,
    pub baseline_kernel_id: Option<i64>,
    pub baseline_commit: Option<String>,
    pub baseline_reason: String,
    pub p_value: Option<f64>,
    pub cycles_run: i64,
    pub failed_cycles: i64,
    pub rate: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub baseline_cycles: i64,
    pub baseline_failed: i64,
    pub explanation: String,
    pub board_seconds: f64,
    pub extensions: i32,
    pub decided_at: chrono::DateTime<chrono::Utc>,
    /// What the verdict rests on: `path`, `untraced`, `simulated`, `none`.
    pub basis: Option<String>,
}

pub async fn for_kernel(pool: &PgPool, kernel: i64) -> Result<Vec<VerdictRow>, sqlx::Error> {
    for_kernels(pool, &[kernel], None).await
}

/// The verdicts of several kernels, optionally of one plan.
pub async fn for_kernels(
    pool: &PgPool,
    kernels: &[i64],
    plan: Option<&str>,
) -> Result<Vec<VerdictRow>, sqlx::Error> {
    sqlx::query_as::<_, VerdictRow>(
        "SELECT v.kernel_id, v.family, v.plan, v.verdict, v.baseline_kernel_id, b.commit_sha AS baseline_commit,
                v.baseline_reason, v.p_value, v.cycles_run, v.failed_cycles, v.rate, v.ci_low, v.ci_high,
                v.baseline_cycles, v.baseline_failed, v.explanation, v.board_seconds, v.extensions, v.decided_at,
                v.basis
         FROM verdicts v LEFT JOIN kernels b ON b.id = v.baseline_kernel_id
         WHERE v.kernel_id = ANY($1) AND ($2::text IS NULL OR v.plan = $2)
         ORDER BY v.kernel_id, v.plan, v.family",
    )
    .bind(kernels)
    .bind(plan)
    .fetch_all(pool)
    .await
}
