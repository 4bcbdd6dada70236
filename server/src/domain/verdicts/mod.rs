//! Per-kernel verdicts against a baseline, the sequential testing that
//! settles inconclusive ones, and the life of a regression.
//!
//! After every job is analysed, [`after_job`] (1) retries jobs that ended
//! with a lab failure, (2) once no job of the kernel and plan is pending,
//! decides one verdict per board family with `armfleet-stats` against the
//! baseline, (3) schedules more cycles while the verdict is inconclusive and
//! the plan's budget allows, and (4) opens, confirms or fixes regressions.
//!
//! Architecture invariant: verdicts are computed only from `kernel_results`,
//! whose failed cycles are kernel failures only; lab failures (infra_error,
//! lost, timed_out) never decide a verdict.

mod baseline;
mod extension;
mod read;
mod record;

pub use baseline::choose_baseline;
pub use read::{VerdictRow, for_kernel, for_kernels};
pub use record::{StrandedJob, end_stranded_jobs, record_lifecycle_failure};

use extension::{
    bump_extensions, clean_cycles_on_siblings, extend, extension_cycles, failing_boards,
    previous_extensions,
};
use record::{regression_lifecycle, store, upsert_waiting};

use armfleet_stats::{Evidence, Verdict, VerdictConfig};
use sqlx::{PgPool, Row};

use crate::domain::Deps;
use crate::domain::config::{Fleet, Plan};
use crate::domain::jobs::JobState;
use crate::domain::results::{self, Basis, KernelResult};
use crate::domain::runs::{self};

/// Called by the analysis worker for every analysed job.
pub async fn after_job(deps: &Deps, job: i64) -> anyhow::Result<()> {
    let pool = &deps.pool;
    let fleet = deps.fleet.current();
    let row = sqlx::query("SELECT kernel_id, plan, state FROM jobs WHERE id = $1")
        .bind(job)
        .fetch_one(pool)
        .await?;
    let kernel: i64 = row.get("kernel_id");
    let plan_name: String = row.get("plan");
    let job_state: String = row.get("state");
    let Some(plan) = fleet.plan(&plan_name) else {
        return Ok(());
    };

    if JobState::is_lab_failure_str(&job_state) {
        if let Some((retry, board)) =
            runs::retry_infra_failure(pool, job, plan.verdict.max_infra_retries).await?
        {
            tracing::warn!(job, retry, board, "lab failure: job queued again");
            deps.work.work_arrived(&[board]).await;
            return Ok(());
        }
    }
    decide(deps, &fleet, kernel, plan).await?;
    // Kernels judged against this one may have waited for its cycles.
    let dependents: Vec<i64> = sqlx::query_scalar(
        "SELECT DISTINCT kernel_id FROM verdicts WHERE baseline_kernel_id = $1 AND plan = $2 AND kernel_id <> $1",
    )
    .bind(kernel)
    .bind(&plan_name)
    .fetch_all(pool)
    .await?;
    for k in dependents {
        decide(deps, &fleet, k, plan).await?;
    }
    Ok(())
}

async fn pending_jobs(pool: &PgPool, kernel: i64, plan: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE kernel_id = $1 AND plan = $2 AND state IN ('queued', 'assigned', 'running')",
    )
    .bind(kernel)
    .bind(plan)
    .fetch_one(pool)
    .await
}

struct KernelRow {
    id: i64,
    tree: String,
    branch: String,
    commit: String,
}

async fn kernel_row(pool: &PgPool, id: i64) -> Result<KernelRow, sqlx::Error> {
    let r = sqlx::query("SELECT id, tree, branch, commit_sha FROM kernels WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await?;
    Ok(KernelRow {
        id: r.get("id"),
        tree: r.get("tree"),
        branch: r.get("branch"),
        commit: r.get("commit_sha"),
    })
}

fn verdict_config(plan: &Plan) -> VerdictConfig {
    VerdictConfig {
        alpha: plan.verdict.alpha,
        min_detectable_rate: plan.verdict.min_detectable_rate,
        power: plan.verdict.power,
        ..VerdictConfig::default()
    }
}

/// Decides (or re-decides) the verdicts of `kernel` for `plan`.
pub async fn decide(deps: &Deps, fleet: &Fleet, kernel: i64, plan: &Plan) -> anyhow::Result<()> {
    let pool = &deps.pool;
    if pending_jobs(pool, kernel, &plan.name).await? > 0 {
        return Ok(());
    }
    let (baseline, baseline_reason) =
        choose_baseline(pool, &deps.data_dir, kernel, &plan.name).await?;
    if let Some(b) = baseline {
        if pending_jobs(pool, b, &plan.name).await? > 0 {
            // The baseline is gathering cycles; its end re-decides us.
            upsert_waiting(pool, kernel, plan, b, &baseline_reason).await?;
            return Ok(());
        }
    }
    let cfg = verdict_config(plan);
    let count_untraced = plan.verdict.count_untraced_cycles;
    let candidate_rows = results::for_kernel(pool, kernel).await?;
    let baseline_rows = match baseline {
        Some(b) => results::for_kernel(pool, b).await?,
        None => Vec::new(),
    };
    let k = kernel_row(pool, kernel).await?;
    for cand in candidate_rows.iter().filter(|r| r.plan == plan.name) {
        let base = baseline_rows
            .iter()
            .find(|r| r.family == cand.family && r.plan == plan.name);
        let (cand_failed, cand_cycles, basis) = cand.countable(count_untraced);
        if basis == Basis::None {
            let report = armfleet_stats::verdict(Evidence::default(), Evidence::default(), &cfg);
            let why = not_exercised(cand, count_untraced);
            let mut tx = pool.begin().await?;
            store(
                &mut tx,
                kernel,
                cand,
                plan,
                baseline,
                &baseline_reason,
                "not-exercised",
                basis,
                &report,
                Evidence::default(),
                &why,
            )
            .await?;
            tx.commit().await?;
            continue;
        }
        // The baseline counts only evidence of the same kind: real cycles
        // against real, simulated against simulated.
        let base_ev = base
            .map(|b| b.countable(count_untraced))
            .filter(|(_, _, b)| {
                (*b == Basis::Simulated) == (basis == Basis::Simulated) && *b != Basis::None
            })
            .map(|(f, n, _)| Evidence::new(f as u64, n as u64))
            .unwrap_or_default();
        let cand_ev = Evidence::new(cand_failed as u64, cand_cycles as u64);
        let report = armfleet_stats::verdict(base_ev, cand_ev, &cfg);
        let family_boards: Vec<String> = fleet
            .boards
            .iter()
            .filter(|b| b.family.as_str() == cand.family && plan.boards.contains(&b.name))
            .map(|b| b.name.clone())
            .collect();
        let mut verdict = report.verdict;
        let mut explanation = format!(
            "{} {}",
            report.explanation,
            rests_on(cand, basis, cand_cycles)
        );
        let mut extend_on = family_boards.clone();
        let failing = failing_boards(pool, kernel, &plan.name, &cand.family).await?;
        if verdict == Verdict::Regression && family_boards.len() >= 2 && failing.len() < 2 {
            // One board failing alone: the kernel, or that board?
            let clean =
                clean_cycles_on_siblings(pool, kernel, &plan.name, &cand.family, &failing).await?;
            if clean >= cfg.required_clean_cycles() as i64 {
                let mut tx = pool.begin().await?;
                store(&mut tx, kernel, cand, plan, baseline, &baseline_reason, "board-suspect", basis, &report, base_ev, &format!(
                    "only {} failed; its siblings ran {clean} clean cycles: a board suspect, not a kernel regression",
                    failing.join(", ")
                ))
                .await?;
                tx.commit().await?;
                continue;
            }
            verdict = Verdict::Inconclusive;
            explanation = format!(
                "{explanation} Seen on {} only: confirming on another {} board before calling it a regression.",
                failing.join(", "),
                cand.family
            );
            extend_on.retain(|b| !failing.contains(b));
        }
        let previous = previous_extensions(pool, kernel, &cand.family, &plan.name).await?;
        if verdict == Verdict::Inconclusive {
            let budget_left = cand.board_seconds / 60.0 < plan.verdict.budget_board_minutes;
            if previous < plan.verdict.max_extensions as i32 && budget_left && !extend_on.is_empty()
            {
                let per_board = extension_cycles(&report, cand_ev, plan, extend_on.len());
                extend(deps, &k, kernel, plan, &extend_on, per_board).await?;
                // The baseline needs cycles too, or no difference can be significant.
                if let Some(b) = baseline {
                    if base_ev.total_cycles
                        < cand_ev.total_cycles + per_board as u64 * extend_on.len() as u64
                    {
                        let bk = kernel_row(pool, b).await?;
                        extend(deps, &bk, b, plan, &extend_on, per_board).await?;
                    }
                }
                explanation = format!(
                    "{explanation} Scheduled {per_board} more cycles on {} board(s) (extension {} of at most {}).",
                    extend_on.len(),
                    previous + 1,
                    plan.verdict.max_extensions
                );
                let mut tx = pool.begin().await?;
                store(
                    &mut tx,
                    kernel,
                    cand,
                    plan,
                    baseline,
                    &baseline_reason,
                    "inconclusive",
                    basis,
                    &report,
                    base_ev,
                    &explanation,
                )
                .await?;
                tx.commit().await?;
                bump_extensions(pool, kernel, &cand.family, &plan.name).await?;
                continue;
            }
            explanation = format!(
                "{explanation} The plan's budget is spent ({:.1} board-minutes, {previous} extensions): left inconclusive.",
                cand.board_seconds / 60.0
            );
        }
        // The verdict and the regression it opens (or the ones it fixes)
        // are one transaction: no reader sees one without the other.
        let mut tx = pool.begin().await?;
        store(
            &mut tx,
            kernel,
            cand,
            plan,
            baseline,
            &baseline_reason,
            verdict.as_str(),
            basis,
            &report,
            base_ev,
            &explanation,
        )
        .await?;
        regression_lifecycle(
            &mut tx,
            &k,
            cand,
            plan,
            baseline,
            verdict,
            &report,
            failing.len(),
            family_boards.len(),
        )
        .await?;
        tx.commit().await?;
    }
    Ok(())
}

/// Why a record gives no verdict: what ran, and why none of it counts.
fn not_exercised(r: &KernelResult, count_untraced: bool) -> String {
    let mut parts = vec![];
    let other = r.cycles_run - r.kvm_cycles - r.kvm_failed;
    if r.kvm_cycles > 0 {
        parts.push(format!(
            "{} under KVM on arm64, {} of them traced, none with a block re-installed after the cancel{}",
            r.kvm_cycles,
            r.traced_cycles,
            if r.untraced_cycles > 0 && !count_untraced {
                " (untraced cycles do not count in this plan)"
            } else {
                ""
            }
        ));
    }
    if other > 0 {
        parts.push(format!(
            "{other} under TCG, on a non-arm64 host or replayed{}",
            if r.fallback_jobs > 0 {
                format!(" ({} job(s) on a fallback)", r.fallback_jobs)
            } else {
                String::new()
            }
        ));
    }
    format!(
        "Not exercised: {} cycle(s) ran, none could show the bug ({}). A verdict needs cycles under KVM on an arm64 host whose trace shows stage-2 blocks re-installed after the cancel.",
        r.cycles_run,
        if parts.is_empty() {
            "nothing finished".into()
        } else {
            parts.join("; ")
        }
    )
}

/// The sentence that says what a verdict rests on.
fn rests_on(r: &KernelResult, basis: Basis, counted: i64) -> String {
    let skipped = r.cycles_run - counted;
    let skipped = if skipped > 0 && basis != Basis::Simulated {
        format!(
            " {skipped} other cycle(s) ran but do not count (TCG, fallback, or no block re-install seen)."
        )
    } else {
        String::new()
    };
    match basis {
        Basis::Path => format!(
            "Rests on {counted} cycle(s) under KVM that reached the stage-2 path ({} block re-install(s) after the cancels; failures under KVM count as such).{skipped}",
            r.block_maps_after_cancel
        ),
        Basis::Untraced => format!(
            "Rests on {counted} KVM cycle(s) whose host could not be traced (counted because the plan allows it).{skipped}"
        ),
        Basis::Simulated => {
            format!("Rests on {counted} simulated cycle(s): replayed logs, not a kernel.")
        }
        Basis::None => String::new(),
    }
}
