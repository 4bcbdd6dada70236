//! The automatic power-cycler: a board that stays offline longer than
//! `[server] power_cycle_after_s` is power-cycled, at most once per
//! `power_cycle_interval_s` (the audit trail is the memory, so a restart
//! or a second server does not cycle a board again early).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::domain::power::{last_cycle_age_s, power_cycle};
use crate::wiring::state::AppState;

/// The automatic power-cycler. Runs until `shutdown`; the commands it
/// started are killed when it stops.
pub async fn worker(state: AppState, shutdown: CancellationToken) {
    let mut offline_since: HashMap<String, Instant> = HashMap::new();
    let mut running = tokio::task::JoinSet::new();
    // One server of a cluster power-cycles: two would cycle a board twice.
    let mut lease = crate::domain::leases::Lease::new(
        state.pool.clone(),
        "power",
        &state.server_id,
        Duration::from_secs(15),
    );
    loop {
        let fleet = state.fleet.current();
        let tick =
            Duration::from_millis((fleet.server.power_cycle_after_s * 1000 / 4).clamp(250, 5000));
        tokio::select! {
            _ = shutdown.cancelled() => {
                running.abort_all();
                lease.release().await;
                return;
            }
            _ = tokio::time::sleep(tick) => {}
            Some(_) = running.join_next(), if !running.is_empty() => continue,
        }
        if !lease.renew().await {
            // Whoever holds it keeps its own clocks; ours start afresh.
            offline_since.clear();
            continue;
        }
        let rows: Vec<(String, String)> = match sqlx::query_as("SELECT name, state FROM boards")
            .fetch_all(&state.pool)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("power worker: reading boards: {e}");
                continue;
            }
        };
        let after = Duration::from_secs(fleet.server.power_cycle_after_s);
        for (board, board_state) in rows {
            let configured = fleet.board(&board).is_some_and(|b| b.power_cycle.is_some());
            if board_state != "offline" || !configured {
                offline_since.remove(&board);
                continue;
            }
            let since = *offline_since
                .entry(board.clone())
                .or_insert_with(Instant::now);
            if since.elapsed() < after {
                continue;
            }
            match last_cycle_age_s(&state.pool, &board).await {
                Ok(Some(age)) if age < fleet.server.power_cycle_interval_s as f64 => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(board, "power worker: reading the audit trail: {e}");
                    continue;
                }
            }
            // Counted from now again: the board gets time to boot.
            offline_since.insert(board.clone(), Instant::now());
            let reason = format!("offline for more than {} s", after.as_secs());
            let st = state.clone();
            running.spawn(async move {
                let fleet = st.fleet.current();
                if let Err(e) = power_cycle(
                    &st.pool,
                    &fleet,
                    &st.server_id,
                    &board,
                    "power-worker",
                    &reason,
                )
                .await
                {
                    tracing::warn!(board, "automatic power cycle not run: {e}");
                }
            });
        }
    }
}
