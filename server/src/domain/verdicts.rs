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

use armfleet_stats::{Evidence, Verdict, VerdictConfig, VerdictReport};
use serde::Serialize;
use sqlx::{PgPool, Row};

use crate::domain::Deps;
use crate::domain::config::{Fleet, Plan};
use crate::domain::jobs::JobState;
use crate::domain::mirror::Mirror;
use crate::domain::regressions;
use crate::domain::results::{self, Basis, KernelResult};
use crate::domain::runs::{self, Extension, KernelInput};

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

/// The kernel to compare against, and why that one.
pub async fn choose_baseline(
    pool: &PgPool,
    data_dir: &std::path::Path,
    kernel: i64,
    plan: &str,
) -> anyhow::Result<(Option<i64>, String)> {
    let k = kernel_row(pool, kernel).await?;
    if let Some(named) = sqlx::query_scalar::<_, Option<i64>>(
        "SELECT baseline_kernel_id FROM runs WHERE kernel_id = $1 AND baseline_kernel_id IS NOT NULL ORDER BY id DESC LIMIT 1",
    )
    .bind(kernel)
    .fetch_optional(pool)
    .await?
    .flatten()
    {
        return Ok((Some(named), "named in the trigger".into()));
    }
    let tested_on_branch = |commit: String| {
        let (tree, branch, plan) = (k.tree.clone(), k.branch.clone(), plan.to_owned());
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT k.id FROM kernels k WHERE k.tree = $1 AND k.branch = $2 AND k.commit_sha = $3
                   AND EXISTS (SELECT 1 FROM kernel_results r WHERE r.kernel_id = k.id AND r.plan = $4)",
            )
            .bind(tree)
            .bind(branch)
            .bind(commit)
            .bind(plan)
            .fetch_optional(pool)
            .await
        }
    };
    let mirror = Mirror::for_url(data_dir, &k.tree);
    if mirror.path.join("HEAD").exists() {
        match mirror.first_parent_ancestors(&k.commit, 1000).await {
            Ok(ancestors) => {
                for (depth, a) in ancestors.into_iter().enumerate() {
                    if let Some(id) = tested_on_branch(a).await? {
                        return Ok((
                            Some(id),
                            format!(
                                "nearest tested first-parent ancestor on {} ({} commit{} back)",
                                k.branch,
                                depth + 1,
                                if depth == 0 { "" } else { "s" }
                            ),
                        ));
                    }
                }
                return Ok((
                    None,
                    format!(
                        "no tested ancestor on {}: judged on its own cycles",
                        k.branch
                    ),
                ));
            }
            Err(e) => tracing::warn!(kernel, "mirror lookup failed, falling back: {e}"),
        }
    }
    let earlier: Option<i64> = sqlx::query_scalar(
        "SELECT k.id FROM kernels k WHERE k.tree = $1 AND k.branch = $2 AND k.id < $3
           AND EXISTS (SELECT 1 FROM kernel_results r WHERE r.kernel_id = k.id AND r.plan = $4)
         ORDER BY k.id DESC LIMIT 1",
    )
    .bind(&k.tree)
    .bind(&k.branch)
    .bind(kernel)
    .bind(plan)
    .fetch_optional(pool)
    .await?;
    Ok(match earlier {
        Some(id) => (
            Some(id),
            format!(
                "no mirror of the tree: the latest earlier tested kernel on {}",
                k.branch
            ),
        ),
        None => (
            None,
            format!(
                "no earlier tested kernel on {}: judged on its own cycles",
                k.branch
            ),
        ),
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
            store(
                pool,
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
                store(pool, kernel, cand, plan, baseline, &baseline_reason, "board-suspect", basis, &report, base_ev, &format!(
                    "only {} failed; its siblings ran {clean} clean cycles: a board suspect, not a kernel regression",
                    failing.join(", ")
                ))
                .await?;
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
                store(
                    pool,
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
                bump_extensions(pool, kernel, &cand.family, &plan.name).await?;
                continue;
            }
            explanation = format!(
                "{explanation} The plan's budget is spent ({:.1} board-minutes, {previous} extensions): left inconclusive.",
                cand.board_seconds / 60.0
            );
        }
        store(
            pool,
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
            pool,
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

fn extension_cycles(report: &VerdictReport, cand: Evidence, plan: &Plan, boards: usize) -> u32 {
    let batch = plan.verdict.extension_cycles.max(1) as u64;
    let wanted =
        armfleet_stats::extra_cycles(report, cand, batch * boards as u64, u64::MAX / 2).max(batch);
    (wanted.div_ceil(boards.max(1) as u64)).clamp(1, 100_000) as u32
}

async fn extend(
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

async fn failing_boards(
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

async fn clean_cycles_on_siblings(
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

async fn previous_extensions(
    pool: &PgPool,
    kernel: i64,
    family: &str,
    plan: &str,
) -> Result<i32, sqlx::Error> {
    Ok(sqlx::query_scalar(
        "SELECT extensions FROM verdicts WHERE kernel_id = $1 AND family = $2 AND plan = $3",
    )
    .bind(kernel)
    .bind(family)
    .bind(plan)
    .fetch_optional(pool)
    .await?
    .unwrap_or(0))
}

async fn bump_extensions(
    pool: &PgPool,
    kernel: i64,
    family: &str,
    plan: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE verdicts SET extensions = extensions + 1 WHERE kernel_id = $1 AND family = $2 AND plan = $3")
        .bind(kernel)
        .bind(family)
        .bind(plan)
        .execute(pool)
        .await
        .map(|_| ())
}

/// The baseline is still gathering cycles: say so, and point at it, so its
/// end re-decides this kernel (see `after_job`'s dependents).
async fn upsert_waiting(
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
        sqlx::query(
            "INSERT INTO verdicts (kernel_id, family, plan, baseline_kernel_id, baseline_reason, verdict, cycles_run,
                                   failed_cycles, rate, ci_low, ci_high, explanation, board_seconds)
             VALUES ($1, $2, $3, $4, $5, 'inconclusive', $6, $7, $8, $9, $10,
                     'waiting for the baseline''s extra cycles', $11)
             ON CONFLICT (kernel_id, family, plan) DO UPDATE SET
                baseline_kernel_id = EXCLUDED.baseline_kernel_id, baseline_reason = EXCLUDED.baseline_reason,
                explanation = EXCLUDED.explanation, decided_at = now()",
        )
        .bind(kernel)
        .bind(&cand.family)
        .bind(&plan.name)
        .bind(baseline)
        .bind(reason)
        .bind(cand.cycles_run)
        .bind(cand.failed_cycles)
        .bind(rate)
        .bind(low)
        .bind(high)
        .bind(cand.board_seconds)
        .execute(pool)
        .await?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn store(
    pool: &PgPool,
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
    let mut tx = pool.begin().await?;
    let previous: Option<String> = sqlx::query_scalar(
        "SELECT verdict FROM verdicts WHERE kernel_id = $1 AND family = $2 AND plan = $3 FOR UPDATE",
    )
    .bind(kernel)
    .bind(&cand.family)
    .bind(&plan.name)
    .fetch_optional(&mut *tx)
    .await?;
    if matches!(previous.as_deref(), Some("build_failed" | "boot_failed")) {
        // A kernel that did not build or boot keeps that verdict: cycles
        // from other boards of the family do not make it a pass.
        return Ok(());
    }
    sqlx::query(
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
    )
    .bind(kernel)
    .bind(&cand.family)
    .bind(&plan.name)
    .bind(baseline)
    .bind(baseline_reason)
    .bind(verdict)
    .bind(report.p_value)
    // The cycles the verdict counted (see KernelResult::countable).
    .bind(counted_cycles)
    .bind(counted_failed)
    .bind(report.candidate_rate)
    .bind(report.candidate_ci.0)
    .bind(report.candidate_ci.1)
    .bind(base.total_cycles as i64)
    .bind(base.failed_cycles as i64)
    .bind(explanation)
    .bind(cand.board_seconds)
    .bind(basis.as_str())
    .execute(&mut *tx)
    .await?;
    if previous.as_deref() != Some(verdict) {
        sqlx::query("INSERT INTO verdict_history (kernel_id, family, plan, verdict, explanation) VALUES ($1, $2, $3, $4, $5)")
            .bind(kernel)
            .bind(&cand.family)
            .bind(&plan.name)
            .bind(verdict)
            .bind(explanation)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    tracing::info!(kernel, family = %cand.family, plan = %plan.name, verdict, "verdict");
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn regression_lifecycle(
    pool: &PgPool,
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
    match verdict {
        Verdict::Regression => {
            let confirmed = failing_boards >= 2 || family_boards < 2;
            let signature: Option<String> = sqlx::query_scalar(
                "SELECT f.signature FROM findings f JOIN jobs j ON j.id = f.job_id
                 WHERE j.kernel_id = $1 AND j.plan = $2 AND f.fatal ORDER BY f.id LIMIT 1",
            )
            .bind(k.id)
            .bind(&plan.name)
            .fetch_optional(pool)
            .await?;
            let key = regressions::RegressionKey {
                tree: &k.tree,
                branch: &k.branch,
                family: &cand.family,
                plan: &plan.name,
                bad_kernel_id: k.id,
            };
            regressions::record(
                pool,
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
                pool,
                &k.tree,
                &k.branch,
                &cand.family,
                &plan.name,
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

// ---- reading ----

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
    let previous: Option<String> = sqlx::query_scalar(
        "SELECT verdict FROM verdicts WHERE kernel_id = $1 AND family = $2 AND plan = $3 FOR UPDATE",
    )
    .bind(kernel)
    .bind(family)
    .bind(plan)
    .fetch_optional(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO verdicts (kernel_id, family, plan, baseline_reason, verdict, cycles_run, failed_cycles,
                               rate, ci_low, ci_high, explanation)
         VALUES ($1, $2, $3, 'none needed', $4, 0, 0, 0, 0, 1, $5)
         ON CONFLICT (kernel_id, family, plan) DO UPDATE SET
            verdict = EXCLUDED.verdict, explanation = EXCLUDED.explanation, decided_at = now()",
    )
    .bind(kernel)
    .bind(family)
    .bind(plan)
    .bind(verdict)
    .bind(explanation)
    .execute(&mut *tx)
    .await?;
    if previous.as_deref() != Some(verdict) {
        sqlx::query("INSERT INTO verdict_history (kernel_id, family, plan, verdict, explanation) VALUES ($1, $2, $3, $4, $5)")
            .bind(kernel)
            .bind(family)
            .bind(plan)
            .bind(verdict)
            .bind(explanation)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    tracing::warn!(kernel, family, plan, verdict, "verdict");
    Ok(())
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
