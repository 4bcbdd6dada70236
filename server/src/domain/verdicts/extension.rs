//! Sequential testing: the extra cycles an inconclusive verdict schedules,
//! and the board-confirmation checks (one board failing alone).

use armfleet_stats::{Evidence, VerdictReport};
use sqlx::PgPool;

use super::KernelRow;
use crate::domain::Deps;
use crate::domain::config::Plan;
use crate::domain::runs::{self, Extension, KernelInput};

pub(super) fn extension_cycles(
    report: &VerdictReport,
    cand: Evidence,
    plan: &Plan,
    boards: usize,
) -> u32 {
    let batch = plan.verdict.extension_cycles.max(1) as u64;
    let wanted =
        armfleet_stats::extra_cycles(report, cand, batch * boards as u64, u64::MAX / 2).max(batch);
    (wanted.div_ceil(boards.max(1) as u64)).clamp(1, 100_000) as u32
}

pub(super) async fn extend(
    deps: &Deps,
    k: &KernelRow,
    kernel: i64,
    plan: &Plan,
    boards: &[String],
    cycles: u32,
) -> anyhow::Result<()> {
    let pool = &deps.pool;
    let last_run: i64 = sqlx::query_scalar("SELECT max(id) FROM runs WHERE kernel_id = $1")
        .bind(kernel)
        .fetch_one(pool)
        .await?;
    let input = KernelInput {
        tree: k.tree.clone(),
        branch: k.branch.clone(),
        commit: k.commit.clone(),
        ..Default::default()
    };
    let mut tx = pool.begin().await?;
    let planned = runs::plan_run(
        &mut tx,
        kernel,
        &input,
        &[plan],
        "verdict-extension",
        Some(&plan.name),
        None,
        Some(Extension {
            boards,
            cycles,
            extends_run: last_run,
        }),
        None,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(
        kernel,
        run = planned.run_id,
        cycles,
        ?boards,
        "inconclusive: more cycles scheduled"
    );
    deps.work.work_arrived(&planned.boards).await;
    Ok(())
}

pub(super) async fn failing_boards(
    pool: &PgPool,
    kernel: i64,
    plan: &str,
    family: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT j.board FROM jobs j JOIN boards b ON b.name = j.board
         WHERE j.kernel_id = $1 AND j.plan = $2 AND b.family = $3 AND j.state = 'failed' ORDER BY j.board",
    )
    .bind(kernel)
    .bind(plan)
    .bind(family)
    .fetch_all(pool)
    .await
}

pub(super) async fn clean_cycles_on_siblings(
    pool: &PgPool,
    kernel: i64,
    plan: &str,
    family: &str,
    failing: &[String],
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COALESCE(sum(j.cycles_completed), 0)::int8 FROM jobs j JOIN boards b ON b.name = j.board
         WHERE j.kernel_id = $1 AND j.plan = $2 AND b.family = $3 AND NOT (j.board = ANY($4))
           AND j.state = 'passed'",
    )
    .bind(kernel)
    .bind(plan)
    .bind(family)
    .bind(failing)
    .fetch_one(pool)
    .await
}

pub(super) async fn previous_extensions(
    pool: &PgPool,
    kernel: i64,
    family: &str,
    plan: &str,
) -> Result<i32, sqlx::Error> {
    Ok(sqlx::query_scalar!(
        "SELECT extensions FROM verdicts WHERE kernel_id = $1 AND family = $2 AND plan = $3",
        kernel,
        family,
        plan,
    )
    .fetch_optional(pool)
    .await?
    .unwrap_or(0))
}

pub(super) async fn bump_extensions(
    pool: &PgPool,
    kernel: i64,
    family: &str,
    plan: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE verdicts SET extensions = extensions + 1 WHERE kernel_id = $1 AND family = $2 AND plan = $3",
        kernel,
        family,
        plan,
    )
        .execute(pool)
        .await
        .map(|_| ())
}
