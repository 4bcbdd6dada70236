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
    sqlx::query(concat!(
        "WITH j AS (
            SELECT j.*, b.family,
                   -- Guests under KVM on a real arm64 host (a board or the
                   -- emulated one): the only runs that can show the bug.
                   (j.accel = 'kvm' AND j.host_kind IN ('hardware', 'emulated') AND b.arch = 'arm64') AS real_kvm
            FROM jobs j JOIN boards b ON b.name = j.board
            WHERE j.kernel_id = $1 AND j.plan = $2
              AND j.state IN ('passed', 'failed', 'infra_error', 'timed_out', 'lost'))
         INSERT INTO kernel_results (kernel_id, family, plan, jobs, boards, cycles_run, failed_cycles,
                                     infra_errors, simulated, board_seconds, kvm_cycles, traced_cycles,
                                     block_maps_after_cancel, perm_faults, host_kinds, path_cycles,
                                     untraced_cycles, kvm_failed, fallback_jobs, simulated_only, updated_at)
         SELECT j.kernel_id, j.family, j.plan, count(*)::int, count(DISTINCT j.board)::int,
                COALESCE(sum(j.cycles_completed + CASE WHEN j.state = 'failed' THEN 1 ELSE 0 END), 0)::int8,
                count(*) FILTER (WHERE j.state = 'failed')::int8,
                count(*) FILTER (WHERE j.state IN (",
        crate::domain::jobs::lab_failure_states_sql!(),
        "))::int,
                bool_or(j.simulated),
                COALESCE(sum(extract(epoch FROM j.finished_at - j.started_at)), 0)::float8,
                COALESCE(sum(j.cycles_completed) FILTER (WHERE j.real_kvm), 0)::int8,
                COALESCE(sum(p.traced), 0)::int8,
                COALESCE(sum(p.after_cancel), 0)::int8,
                COALESCE(sum(p.perm), 0)::int8,
                COALESCE(array_agg(DISTINCT j.host_kind) FILTER (WHERE j.host_kind IS NOT NULL), '{}'),
                COALESCE(sum(p.path_cycles), 0)::int8,
                COALESCE(sum(j.cycles_completed - COALESCE(p.traced, 0)) FILTER (WHERE j.real_kvm), 0)::int8,
                count(*) FILTER (WHERE j.real_kvm AND j.state = 'failed')::int8,
                count(*) FILTER (WHERE j.fallback IS NOT NULL)::int,
                COALESCE(bool_and(COALESCE(j.host_kind = 'simulated', j.simulated) AND j.fallback IS NULL), false),
                now()
         FROM j
         -- A cycle is traced when its block-map probe was armed; it reached
         -- the path when KVM re-installed at least one block after the cancel.
         LEFT JOIN LATERAL (
            SELECT count(*) AS traced, sum(after) AS after_cancel, sum(perm) AS perm,
                   count(*) FILTER (WHERE after > 0) AS path_cycles
            FROM (SELECT (c.record->'path'->>'block_maps_after_cancel')::int8 AS after,
                         (c.record->'path'->>'perm_faults')::int8 AS perm
                  FROM job_cycles c
                  WHERE c.job_id = j.id AND j.real_kvm AND c.cycle <= j.cycles_completed
                    AND jsonb_typeof(c.record->'path'->'block_maps_after_cancel') = 'number') x) p ON true
         GROUP BY j.kernel_id, j.family, j.plan
         ON CONFLICT (kernel_id, family, plan) DO UPDATE SET
            jobs = EXCLUDED.jobs, boards = EXCLUDED.boards, cycles_run = EXCLUDED.cycles_run,
            failed_cycles = EXCLUDED.failed_cycles, infra_errors = EXCLUDED.infra_errors,
            simulated = EXCLUDED.simulated, board_seconds = EXCLUDED.board_seconds,
            kvm_cycles = EXCLUDED.kvm_cycles, traced_cycles = EXCLUDED.traced_cycles,
            block_maps_after_cancel = EXCLUDED.block_maps_after_cancel,
            perm_faults = EXCLUDED.perm_faults, host_kinds = EXCLUDED.host_kinds,
            path_cycles = EXCLUDED.path_cycles, untraced_cycles = EXCLUDED.untraced_cycles,
            kvm_failed = EXCLUDED.kvm_failed, fallback_jobs = EXCLUDED.fallback_jobs,
            simulated_only = EXCLUDED.simulated_only, updated_at = now()"
    ))
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
    /// Cycles whose guests ran under KVM.
    pub kvm_cycles: i64,
    /// Of those, cycles traced on the host kernel's stage-2 code.
    pub traced_cycles: i64,
    /// Blocks KVM re-installed after the cancels of the traced cycles.
    pub block_maps_after_cancel: i64,
    pub perm_faults: i64,
    /// `hardware`, `emulated`, `simulated`: where the evidence came from.
    pub host_kinds: Vec<String>,
    /// Clean KVM cycles on a real arm64 host whose trace shows KVM
    /// re-installing blocks after the cancel.
    pub path_cycles: i64,
    /// Clean KVM cycles on a real arm64 host without a block-map trace.
    pub untraced_cycles: i64,
    /// Failed jobs under KVM on a real arm64 host.
    pub kvm_failed: i64,
    /// Jobs an agent ran on a fallback (`auto` became TCG or replay).
    pub fallback_jobs: i32,
    /// Every job replayed logs on a board meant to be simulated.
    pub simulated_only: bool,
}

/// What a verdict may count, and what it rests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// Traced cycles that reached the stage-2 path (and KVM failures).
    Path,
    /// KVM cycles without a trace, counted because the plan allows it.
    Untraced,
    /// Replayed logs on a simulated board: a demonstration, labelled so.
    Simulated,
    /// Nothing that could show the bug.
    None,
}

impl Basis {
    pub fn as_str(self) -> &'static str {
        match self {
            Basis::Path => "path",
            Basis::Untraced => "untraced",
            Basis::Simulated => "simulated",
            Basis::None => "none",
        }
    }
}

impl KernelResult {
    /// The evidence a verdict may use: (failed cycles, cycles, basis).
    /// Architecture invariant: TCG cycles, fallbacks and KVM cycles whose
    /// trace shows no block re-install never reach a verdict; simulated
    /// cycles do only where every job of the record is simulated by design.
    pub fn countable(&self, count_untraced: bool) -> (i64, i64, Basis) {
        let untraced = if count_untraced {
            self.untraced_cycles
        } else {
            0
        };
        let real = self.path_cycles + untraced + self.kvm_failed;
        if real > 0 {
            let basis = if self.path_cycles > 0 || untraced == 0 {
                Basis::Path
            } else {
                Basis::Untraced
            };
            return (self.kvm_failed, real, basis);
        }
        if self.simulated_only {
            return (self.failed_cycles, self.cycles_run, Basis::Simulated);
        }
        (0, 0, Basis::None)
    }
}

pub async fn for_kernel(pool: &PgPool, kernel: i64) -> Result<Vec<KernelResult>, sqlx::Error> {
    sqlx::query_as::<_, KernelResult>(
        "SELECT kernel_id, family, plan, jobs, boards, cycles_run, failed_cycles, infra_errors, simulated, board_seconds,
                kvm_cycles, traced_cycles, block_maps_after_cancel, perm_faults, host_kinds,
                path_cycles, untraced_cycles, kvm_failed, fallback_jobs, simulated_only
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
        "SELECT kernel_id, family, plan, jobs, boards, cycles_run, failed_cycles, infra_errors, simulated, board_seconds,
                kvm_cycles, traced_cycles, block_maps_after_cancel, perm_faults, host_kinds,
                path_cycles, untraced_cycles, kvm_failed, fallback_jobs, simulated_only
         FROM kernel_results WHERE kernel_id = ANY($1) AND ($2::text IS NULL OR plan = $2)
         ORDER BY kernel_id, plan, family",
    )
    .bind(kernels)
    .bind(plan)
    .fetch_all(pool)
    .await
}

/// The verdicts of several kernels (one query for a whole page).

/// Plans that have results, for validating filters.
pub async fn plans(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT DISTINCT plan FROM kernel_results ORDER BY 1")
        .fetch_all(pool)
        .await
}
