//! Putting a build on a board: the boot lifecycle.
//!
//! Architecture invariant: a job that names a build runs only on a board
//! whose agent reported running exactly that build (`boards.build_id`,
//! from the agent's facts after it reconnected). `jobs::claim_next` holds
//! such a job back and answers `Claim::NeedsBoot`; the dispatcher then
//! calls [`record_start`], which records a boot and sends `ServerMessage::Boot`.
//!
//! ```text
//! deploying ──(agent: Rebooting)──► booting ──(agent back on the build)──► booted
//!     │                                │
//!     │                                ├─(back on another kernel)──────────► boot_failed
//!     │                                └─(not back by the deadline)─► boot_failed + power cycle
//!     └─(agent: DeployFailed, or deadline)─► deploy_failed
//! ```
//!
//! A `boot_failed` boot is a result about the kernel: the board's queued jobs
//! for the build are cancelled, and the kernel's verdict for the board's
//! family is `boot_failed`. The board is power-cycled (its one-shot boot
//! entry falls back to the known-good kernel) and its agent later uploads
//! the console of the failed boot ([`attach_console`]). Every boot state
//! change goes through this module.

use armfleet_protocol::{BootOutcome, ServerMessage};
use serde::Serialize;
use sqlx::PgPool;

use crate::domain::builds;
use crate::domain::config::Fleet;
use crate::domain::lifecycle::StateMachine;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct BootRow {
    pub id: i64,
    pub board: String,
    pub build_id: i64,
    pub state: String,
    pub reason: Option<String>,
    pub method: Option<String>,
    pub console: Option<String>,
    pub console_source: Option<String>,
    pub power_cycled: bool,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub deadline: chrono::DateTime<chrono::Utc>,
    pub ended_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// `SELECT` with the columns of [`BootRow`] (a macro so that queries are
/// string literals).
macro_rules! boot_select {
    () => {
        "SELECT id, board, build_id, state, reason, method, console, console_source, power_cycled,
     started_at, deadline, ended_at"
    };
}

pub async fn boots_for_build(pool: &PgPool, build: i64) -> Result<Vec<BootRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        boot_select!(),
        " FROM boots WHERE build_id = $1 ORDER BY id"
    ))
    .bind(build)
    .fetch_all(pool)
    .await
}

pub async fn boots_for_kernel(pool: &PgPool, kernel: i64) -> Result<Vec<BootRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        boot_select!(),
        " FROM boots WHERE build_id IN
           (SELECT DISTINCT build_id FROM jobs WHERE kernel_id = $1 AND build_id IS NOT NULL)
         ORDER BY id"
    ))
    .bind(kernel)
    .fetch_all(pool)
    .await
}

pub async fn boots_for_board(
    pool: &PgPool,
    board: &str,
    limit: i64,
) -> Result<Vec<BootRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        boot_select!(),
        " FROM boots WHERE board = $1 ORDER BY id DESC LIMIT $2"
    ))
    .bind(board)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Records a boot of `build_id` on `board`; returns the message that tells
/// the agent, or None when the board already has a boot in progress
/// (another claim, or another server, started it).
pub async fn record_start(
    pool: &PgPool,
    fleet: &Fleet,
    board: &str,
    build_id: i64,
) -> anyhow::Result<Option<ServerMessage>> {
    let Some(build) = builds::get(pool, build_id).await? else {
        anyhow::bail!("build {build_id} does not exist");
    };
    let Some(spec) = builds::spec(&build) else {
        anyhow::bail!("build {build_id} has no artifacts to boot");
    };
    let wait = fleet.server.boot_wait_s() as f64;
    let boot_id: Option<i64> = sqlx::query_scalar!(
        "INSERT INTO boots (board, build_id, state, deadline)
         VALUES ($1, $2, 'deploying', now() + make_interval(secs => $3))
         ON CONFLICT (board) WHERE state IN ('deploying', 'booting') DO NOTHING
         RETURNING id",
        board,
        build_id,
        wait,
    )
    .fetch_optional(pool)
    .await?;
    let Some(boot_id) = boot_id else {
        return Ok(None);
    };
    tracing::info!(board, build = build_id, boot = boot_id, release = %spec.kernel_release, "deploying a build");
    Ok(Some(ServerMessage::Boot {
        boot_id,
        build: spec,
    }))
}

/// The agent's report about a boot (before its reboot, or after it came
/// back on the known-good kernel). `console` is the frame's payload.
/// True when a boot failed through it (for the failed-boots counter).
pub async fn agent_report(
    pool: &PgPool,
    fleet: &Fleet,
    board: &str,
    boot_id: i64,
    outcome: &BootOutcome,
    console: &[u8],
) -> anyhow::Result<bool> {
    let mut failed = false;
    match outcome {
        BootOutcome::Rebooting { method } => {
            let wait = fleet.server.boot_wait_s() as f64;
            sqlx::query!(
                "UPDATE boots SET state = $5, method = $3,
                        deadline = now() + make_interval(secs => $4)
                 WHERE id = $1 AND board = $2 AND state = ANY($6)",
                boot_id,
                board,
                method,
                wait,
                BootState::Booting.as_str(),
                &BootState::sources_of(BootState::Booting),
            )
            .execute(pool)
            .await?;
            tracing::info!(
                board,
                boot = boot_id,
                method,
                "board rebooting into a build"
            );
        }
        BootOutcome::DeployFailed { reason } => {
            let ended = end(
                pool,
                boot_id,
                board,
                &[BootState::Deploying],
                BootState::DeployFailed,
                reason,
            )
            .await?;
            if ended {
                tracing::warn!(board, boot = boot_id, reason, "deploy failed");
                end_waiting_jobs(
                    pool,
                    fleet,
                    boot_id,
                    &format!("the board could not install the build: {reason}"),
                    None,
                )
                .await?;
            }
        }
        BootOutcome::FellBack {
            kernel_release,
            console_source,
        } => {
            let why = format!(
                "the board came back on its known-good kernel {kernel_release}: the build did not boot"
            );
            let ended = end(
                pool,
                boot_id,
                board,
                &[BootState::Deploying, BootState::Booting],
                BootState::BootFailed,
                &why,
            )
            .await?;
            attach_console(pool, boot_id, board, console, console_source.as_deref()).await?;
            if ended {
                boot_failed(pool, fleet, boot_id, &why).await?;
                failed = true;
            }
        }
    }
    Ok(failed)
}

/// The agent connected and reported the build it runs: a boot waiting for
/// it has succeeded, or (back on something else) failed.
/// True when a boot failed through it (for the failed-boots counter).
pub async fn board_reported(
    pool: &PgPool,
    fleet: &Fleet,
    board: &str,
    running: Option<i64>,
    release: &str,
) -> anyhow::Result<bool> {
    let active: Option<(i64, i64, String)> = sqlx::query_as(
        "SELECT id, build_id, state FROM boots WHERE board = $1 AND state IN ('deploying', 'booting')",
    )
    .bind(board)
    .fetch_optional(pool)
    .await?;
    let Some((boot_id, build_id, boot_state)) = active else {
        return Ok(false);
    };
    if running == Some(build_id) {
        let why = format!("running {release}");
        if end(
            pool,
            boot_id,
            board,
            &[BootState::Deploying, BootState::Booting],
            BootState::Booted,
            &why,
        )
        .await?
        {
            tracing::info!(
                board,
                boot = boot_id,
                build = build_id,
                release,
                "board booted the build"
            );
        }
    } else if boot_state == "booting" {
        let why = format!(
            "the board came back running {release} (build {}), not build {build_id}: the build did not boot",
            running
                .map(|b| b.to_string())
                .unwrap_or_else(|| "none".into())
        );
        if end(
            pool,
            boot_id,
            board,
            &[BootState::Booting],
            BootState::BootFailed,
            &why,
        )
        .await?
        {
            boot_failed(pool, fleet, boot_id, &why).await?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// The boot lifecycle: `deploying` (the agent installs the build) →
/// `booting` (it rebooted into it) → `booted`, or `deploy_failed` /
/// `boot_failed`. The ends are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootState {
    Deploying,
    Booting,
    Booted,
    BootFailed,
    DeployFailed,
}

impl StateMachine for BootState {
    const ALL: &'static [BootState] = &[
        BootState::Deploying,
        BootState::Booting,
        BootState::Booted,
        BootState::BootFailed,
        BootState::DeployFailed,
    ];

    fn as_str(self) -> &'static str {
        match self {
            BootState::Deploying => "deploying",
            BootState::Booting => "booting",
            BootState::Booted => "booted",
            BootState::BootFailed => "boot_failed",
            BootState::DeployFailed => "deploy_failed",
        }
    }

    /// A board that went away while deploying may come back booted (its
    /// "rebooting" report was lost).
    fn can_move_to(self, to: BootState) -> bool {
        use BootState::*;
        matches!(
            (self, to),
            (Deploying, Booting | Booted | BootFailed | DeployFailed)
                | (Booting, Booted | BootFailed)
        )
    }
}

/// Moves a boot from one of `from` to `to` (edges the state machine has);
/// false when it was not in `from` (someone else ended it).
pub async fn end(
    pool: &PgPool,
    boot_id: i64,
    board: &str,
    from: &[BootState],
    to: BootState,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let from = BootState::sources_among(from, to);
    let n = sqlx::query!(
        "UPDATE boots SET state = $3, reason = $4, ended_at = now()
         WHERE id = $1 AND board = $2 AND state = ANY($5)",
        boot_id,
        board,
        to.as_str(),
        reason,
        &from,
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Keeps the console a failed boot printed (recovered by the agent later).
pub async fn attach_console(
    pool: &PgPool,
    boot_id: i64,
    board: &str,
    console: &[u8],
    source: Option<&str>,
) -> Result<(), sqlx::Error> {
    if console.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        "UPDATE boots SET console = $3, console_source = $4 WHERE id = $1 AND board = $2 AND console IS NULL",
        boot_id,
        board,
        String::from_utf8_lossy(console).into_owned(),
        source,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// A build did not boot on a board: a result about the kernel.
pub async fn boot_failed(
    pool: &PgPool,
    fleet: &Fleet,
    boot_id: i64,
    why: &str,
) -> anyhow::Result<()> {
    let (board, build_id): (String, i64) =
        sqlx::query_as("SELECT board, build_id FROM boots WHERE id = $1")
            .bind(boot_id)
            .fetch_one(pool)
            .await?;
    tracing::warn!(board, boot = boot_id, build = build_id, why, "boot failed");
    let explanation = format!("build {build_id} did not boot on {board}: {why}");
    end_waiting_jobs(
        pool,
        fleet,
        boot_id,
        &format!("boot_failed: {why}"),
        Some(("boot_failed", explanation.as_str())),
    )
    .await
}

/// Ends the board's queued jobs for the boot's build (see
/// `verdicts::end_stranded_jobs`).
pub async fn end_waiting_jobs(
    pool: &PgPool,
    fleet: &Fleet,
    boot_id: i64,
    reason: &str,
    verdict: Option<(&str, &str)>,
) -> anyhow::Result<()> {
    let stranded: Vec<crate::domain::verdicts::StrandedJob> = sqlx::query_as(
        "SELECT j.id AS job, j.kernel_id AS kernel, j.plan, j.board FROM jobs j JOIN boots b ON b.board = j.board AND b.build_id = j.build_id
         WHERE b.id = $1 AND j.state = 'queued'",
    )
    .bind(boot_id)
    .fetch_all(pool)
    .await?;
    crate::domain::verdicts::end_stranded_jobs(pool, fleet, stranded, reason, verdict).await
}

/// Whether the power cycle after a failed boot worked.
pub async fn record_power_cycle(pool: &PgPool, boot_id: i64, ok: bool) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE boots SET power_cycled = $2 WHERE id = $1",
        boot_id,
        ok,
    )
    .execute(pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod boot_state_tests {
    use super::BootState::{self, *};
    use crate::domain::lifecycle::{StateMachine, assert_well_formed};

    #[test]
    fn a_boot_ends_once_and_its_ends_are_final() {
        assert_well_formed::<BootState>();
        for &s in BootState::ALL {
            for end in [Booted, BootFailed, DeployFailed] {
                assert!(!end.can_move_to(s), "{end:?} is final");
            }
        }
        assert!(Deploying.can_move_to(Booting));
        assert!(Booting.can_move_to(BootFailed));
        assert!(
            !Booting.can_move_to(DeployFailed),
            "a build that rebooted was installed"
        );
        assert!(!Booting.can_move_to(Deploying));
    }
}
