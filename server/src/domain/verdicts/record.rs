//! The writes of `verdicts` and `verdict_history`, and what a verdict does
//! to regressions, in the verdict's own transaction.

use armfleet_stats::{Evidence, VerdictReport};
use sqlx::{PgPool, Postgres, Transaction};

use super::KernelRow;
use crate::domain::config::{Fleet, Plan};
use crate::domain::regressions;
use crate::domain::results::{self, Basis, KernelResult};
use armfleet_stats::Verdict;

/// The baseline is still gathering cycles: say so, and point at it, so its
/// end re-decides this kernel (see `after_job`'s dependents).
pub(super) async fn upsert_waiting(
    pool: &PgPool,
    kernel: i64,
    plan: &Plan,
    baseline: i64,
    reason: &str,
) -> Result<(), sqlx::Error> {
    for cand in results::for_kernel(pool, kernel)
        .await?
        .iter()
        .filter(|r| r.plan == plan.name)
    {
        let (low, high) = armfleet_stats::clopper_pearson(
            cand.failed_cycles as u64,
            cand.cycles_run as u64,
            0.95,
        );
        let rate = if cand.cycles_run > 0 {
            cand.failed_cycles as f64 / cand.cycles_run as f64
        } else {
            0.0
        };
        sqlx::query!(
            "INSERT INTO verdicts (kernel_id, family, plan, baseline_kernel_id, baseline_reason, verdict, cycles_run,
                                   failed_cycles, rate, ci_low, ci_high, explanation, board_seconds)
             VALUES ($1, $2, $3, $4, $5, 'inconclusive', $6, $7, $8, $9, $10,
                     'waiting for the baseline''s extra cycles', $11)
             ON CONFLICT (kernel_id, family, plan) DO UPDATE SET
                baseline_kernel_id = EXCLUDED.baseline_kernel_id, baseline_reason = EXCLUDED.baseline_reason,
                explanation = EXCLUDED.explanation, decided_at = now()",
            kernel,
            &cand.family,
            &plan.name,
            baseline,
            reason,
            cand.cycles_run,
            cand.failed_cycles,
            rate,
            low,
            high,
            cand.board_seconds,
        )
        .execute(pool)
        .await?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn store(
    tx: &mut Transaction<'_, Postgres>,
    kernel: i64,
    cand: &KernelResult,
    plan: &Plan,
    baseline: Option<i64>,
    baseline_reason: &str,
    verdict: &str,
    basis: Basis,
    report: &VerdictReport,
    base: Evidence,
    explanation: &str,
) -> Result<(), sqlx::Error> {
    let (counted_failed, counted_cycles, _) = cand.countable(plan.verdict.count_untraced_cycles);
    let previous: Option<String> = sqlx::query_scalar!(
        "SELECT verdict FROM verdicts WHERE kernel_id = $1 AND family = $2 AND plan = $3 FOR UPDATE",
        kernel,
        &cand.family,
        &plan.name,
    )
    .fetch_optional(&mut **tx)
    .await?;
    if matches!(previous.as_deref(), Some("build_failed" | "boot_failed")) {
        // A kernel that did not build or boot keeps that verdict: cycles
        // from other boards of the family do not make it a pass.
        return Ok(());
    }
    sqlx::query!(
        "INSERT INTO verdicts (kernel_id, family, plan, baseline_kernel_id, baseline_reason, verdict, p_value,
                               cycles_run, failed_cycles, rate, ci_low, ci_high, baseline_cycles, baseline_failed,
                               explanation, board_seconds, basis, decided_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, now())
         ON CONFLICT (kernel_id, family, plan) DO UPDATE SET
            baseline_kernel_id = EXCLUDED.baseline_kernel_id, baseline_reason = EXCLUDED.baseline_reason,
            verdict = EXCLUDED.verdict, p_value = EXCLUDED.p_value, cycles_run = EXCLUDED.cycles_run,
            failed_cycles = EXCLUDED.failed_cycles, rate = EXCLUDED.rate, ci_low = EXCLUDED.ci_low,
            ci_high = EXCLUDED.ci_high, baseline_cycles = EXCLUDED.baseline_cycles,
            baseline_failed = EXCLUDED.baseline_failed, explanation = EXCLUDED.explanation,
            board_seconds = EXCLUDED.board_seconds, basis = EXCLUDED.basis, decided_at = now()",
        kernel,
        &cand.family,
        &plan.name,
        baseline,
        baseline_reason,
        verdict,
        report.p_value,
        // The cycles the verdict counted (see KernelResult::countable).
        counted_cycles,
        counted_failed,
        report.candidate_rate,
        report.candidate_ci.0,
        report.candidate_ci.1,
        base.total_cycles as i64,
        base.failed_cycles as i64,
        explanation,
        cand.board_seconds,
        basis.as_str(),
    )
    .execute(&mut **tx)
    .await?;
    if previous.as_deref() != Some(verdict) {
        sqlx::query!(
            "INSERT INTO verdict_history (kernel_id, family, plan, verdict, explanation) VALUES ($1, $2, $3, $4, $5)",
            kernel,
            &cand.family,
            &plan.name,
            verdict,
            explanation,
        )
            .execute(&mut **tx)
            .await?;
    }
    tracing::info!(kernel, family = %cand.family, plan = %plan.name, verdict, "verdict");
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn regression_lifecycle(
    tx: &mut Transaction<'_, Postgres>,
    k: &KernelRow,
    cand: &KernelResult,
    plan: &Plan,
    baseline: Option<i64>,
    verdict: Verdict,
    report: &VerdictReport,
    failing_boards: usize,
    family_boards: usize,
) -> Result<(), sqlx::Error> {
    let evidence = format!(
        "{}/{} cycles failed on {} (p = {:.2e}); {}",
        cand.failed_cycles, cand.cycles_run, cand.family, report.p_value, report.explanation
    );
    let on_branch = regressions::BranchPlan {
        tree: &k.tree,
        branch: &k.branch,
        family: &cand.family,
        plan: &plan.name,
    };
    match verdict {
        Verdict::Regression => {
            let confirmed = failing_boards >= 2 || family_boards < 2;
            let signature: Option<String> = sqlx::query_scalar!(
                "SELECT f.signature FROM findings f JOIN jobs j ON j.id = f.job_id
                 WHERE j.kernel_id = $1 AND j.plan = $2 AND f.fatal ORDER BY f.id LIMIT 1",
                k.id,
                &plan.name,
            )
            .fetch_optional(&mut **tx)
            .await?;
            let key = regressions::RegressionKey {
                on: on_branch,
                bad_kernel_id: k.id,
            };
            regressions::record(
                tx,
                &key,
                baseline,
                signature.as_deref(),
                confirmed,
                &evidence,
            )
            .await?;
        }
        Verdict::Pass | Verdict::Fixed => {
            // A later kernel on the branch that passes with enough cycles
            // fixes the open regressions it descends from.
            regressions::fix_earlier(
                tx,
                &on_branch,
                k.id,
                &format!(
                    "kernel {} passes: {evidence}",
                    &k.commit[..12.min(k.commit.len())]
                ),
            )
            .await?;
        }
        _ => {}
    }
    Ok(())
}

/// A queued job its kernel's build or boot left with nothing to run
/// (selected as `id AS job, kernel_id AS kernel, plan, board`).
#[derive(sqlx::FromRow)]
pub struct StrandedJob {
    pub job: i64,
    pub kernel: i64,
    pub plan: String,
    pub board: String,
}

/// Cancels `stranded` jobs with `reason` and, when the kernel is at fault,
/// records `verdict` (`build_failed`, `boot_failed`) once per kernel ×
/// board family × plan. A lab failure (`verdict` None) cancels only.
pub async fn end_stranded_jobs(
    pool: &PgPool,
    fleet: &Fleet,
    stranded: Vec<StrandedJob>,
    reason: &str,
    verdict: Option<(&str, &str)>,
) -> anyhow::Result<()> {
    let mut decided = std::collections::HashSet::new();
    for s in stranded {
        if let Err(e) = crate::domain::jobs::cancel(pool, s.job, reason).await {
            tracing::warn!(
                job = s.job,
                "cancelling a job its kernel's build or boot stranded: {e}"
            );
        }
        let family = fleet
            .board(&s.board)
            .map(|b| b.family.as_str().to_owned())
            .unwrap_or_default();
        if let Some((verdict, explanation)) = verdict {
            if decided.insert((s.kernel, family.clone(), s.plan.clone())) {
                record_lifecycle_failure(pool, s.kernel, &family, &s.plan, verdict, explanation)
                    .await?;
            }
        }
    }
    Ok(())
}

/// The kernel did not build (`build_failed`) or did not boot on a board of
/// the family (`boot_failed`): a verdict of its own, not a test failure.
pub async fn record_lifecycle_failure(
    pool: &PgPool,
    kernel: i64,
    family: &str,
    plan: &str,
    verdict: &str,
    explanation: &str,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let previous: Option<String> = sqlx::query_scalar!(
        "SELECT verdict FROM verdicts WHERE kernel_id = $1 AND family = $2 AND plan = $3 FOR UPDATE",
        kernel,
        family,
        plan,
    )
    .fetch_optional(&mut *tx)
    .await?;
    sqlx::query!(
        "INSERT INTO verdicts (kernel_id, family, plan, baseline_reason, verdict, cycles_run, failed_cycles,
                               rate, ci_low, ci_high, explanation)
         VALUES ($1, $2, $3, 'none needed', $4, 0, 0, 0, 0, 1, $5)
         ON CONFLICT (kernel_id, family, plan) DO UPDATE SET
            verdict = EXCLUDED.verdict, explanation = EXCLUDED.explanation, decided_at = now()",
        kernel,
        family,
        plan,
        verdict,
        explanation,
    )
    .execute(&mut *tx)
    .await?;
    if previous.as_deref() != Some(verdict) {
        sqlx::query!(
            "INSERT INTO verdict_history (kernel_id, family, plan, verdict, explanation) VALUES ($1, $2, $3, $4, $5)",
            kernel,
            family,
            plan,
            verdict,
            explanation,
        )
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    tracing::warn!(kernel, family, plan, verdict, "verdict");
    Ok(())
}
