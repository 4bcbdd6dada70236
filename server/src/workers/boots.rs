//! Boot deadlines: a boot that did not end in time failed, and a board
//! that did not come back is power-cycled to its known-good kernel.

use tokio_util::sync::CancellationToken;

use crate::domain::deploy::{BootState, boot_failed, end, end_waiting_jobs, record_power_cycle};
use crate::domain::leases::Round;
use crate::wiring::state::AppState;

/// Ends boots past their deadline: the build did not come up (or the
/// board never got to reboot). Boards that did not come back are
/// power-cycled back to their known-good kernel. Runs until `shutdown`,
/// on one server of a cluster at a time (the `boot-deadlines` lease).
pub async fn watchdog(state: AppState, shutdown: CancellationToken) {
    let mut lease = crate::domain::leases::Lease::new(
        state.pool.clone(),
        "boot-deadlines",
        &state.server_id,
        std::time::Duration::from_secs(10),
    );
    loop {
        match lease
            .next_round(std::time::Duration::from_secs(1), &shutdown)
            .await
        {
            Round::Stop => return,
            Round::Skip => continue,
            Round::Work => {}
        }
        if let Err(e) = expire(&state).await {
            tracing::warn!("checking boot deadlines: {e}");
        }
    }
}

async fn expire(state: &AppState) -> anyhow::Result<()> {
    let overdue: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT id, board, state FROM boots WHERE state IN ('deploying', 'booting') AND deadline < now()",
    )
    .fetch_all(&state.pool)
    .await?;
    let fleet = state.fleet.current();
    for (boot_id, board, boot_state) in overdue {
        let wait = fleet.server.boot_wait_s();
        // A board that went away while deploying rebooted (its report may
        // have been lost with the connection): judge it as a boot.
        if boot_state == "deploying" && state.dispatcher.is_connected(&board) {
            let why = format!("the board did not install the build within {wait} s");
            if end(
                &state.pool,
                boot_id,
                &board,
                &[BootState::Deploying],
                BootState::DeployFailed,
                &why,
            )
            .await?
            {
                end_waiting_jobs(&state.pool, &fleet, boot_id, &why, None).await?;
            }
            continue;
        }
        let why = format!("the board did not come back running the build within {wait} s");
        if !end(
            &state.pool,
            boot_id,
            &board,
            &[BootState::Booting, BootState::Deploying],
            BootState::BootFailed,
            &why,
        )
        .await?
        {
            continue;
        }
        boot_failed(&state.pool, &fleet, boot_id, &why).await?;
        state.metrics.boots_failed.inc();
        // Only a board that is still away needs its power cycled.
        if !state.dispatcher.is_connected(&board) {
            match crate::domain::power::power_cycle(
                &state.pool,
                &fleet,
                &state.server_id,
                &board,
                "armfleet",
                &format!("boot {boot_id}: {why}"),
            )
            .await
            {
                Ok(outcome) => {
                    record_power_cycle(&state.pool, boot_id, outcome.ok).await?;
                }
                Err(e) => tracing::error!(
                    board,
                    boot = boot_id,
                    "cannot power-cycle the board after a failed boot: {e}"
                ),
            }
        }
    }
    Ok(())
}
