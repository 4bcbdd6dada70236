//! Reloading fleet.toml without a restart (`SIGHUP`, `armfleet reload`,
//! `POST /api/v1/admin/reload`). An invalid file is refused and the fleet in
//! force stays; a valid one replaces it whole, and agents whose key is no
//! longer listed for their board are disconnected at once.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::domain::config::{Fleet, key_bytes};
use crate::domain::{audit, boards};
use crate::wiring::state::AppState;

#[derive(Debug, Serialize)]
pub struct ReloadReport {
    pub boards_added: Vec<String>,
    pub boards_removed: Vec<String>,
    pub keys_changed: Vec<String>,
    pub sessions_closed: Vec<String>,
    pub plans: Vec<String>,
}

pub async fn reload(state: &AppState, actor: &str) -> anyhow::Result<ReloadReport> {
    let old = state.fleet.current();
    let new = match Fleet::load(&old.path) {
        Ok(f) => f,
        Err(e) => {
            audit::record(
                &state.pool,
                actor,
                "reload-refused",
                &old.path.display().to_string(),
                &e.to_string(),
            )
            .await;
            tracing::error!("reload refused, keeping the fleet in force: {e}");
            return Err(e.into());
        }
    };
    let names = |f: &Fleet| {
        f.boards
            .iter()
            .map(|b| b.name.clone())
            .collect::<BTreeSet<_>>()
    };
    let (before, after) = (names(&old), names(&new));
    let keys_changed: Vec<String> = new
        .boards
        .iter()
        .filter(|b| {
            old.board(&b.name).is_some_and(|o| {
                let k = |keys: &[russh::keys::PublicKey]| {
                    keys.iter().map(key_bytes).collect::<BTreeSet<_>>()
                };
                k(&o.keys) != k(&b.keys)
            })
        })
        .map(|b| b.name.clone())
        .collect();
    let report_plans = new.plans.iter().map(|p| p.name.clone()).collect();
    state.fleet.replace(new);
    let fleet = state.fleet.current();
    boards::sync_with_fleet(&state.pool, &fleet).await?;
    let sessions_closed = state.dispatcher.close_unauthorized(&fleet);
    let report = ReloadReport {
        boards_added: after.difference(&before).cloned().collect(),
        boards_removed: before.difference(&after).cloned().collect(),
        keys_changed,
        sessions_closed,
        plans: report_plans,
    };
    for board in &report.keys_changed {
        audit::record(
            &state.pool,
            actor,
            "keys-changed",
            board,
            "agent keys changed in fleet.toml",
        )
        .await;
    }
    audit::record(
        &state.pool,
        actor,
        "reload",
        &fleet.path.display().to_string(),
        &serde_json::to_string(&report)?,
    )
    .await;
    tracing::info!(?report, "fleet reloaded");
    state
        .work
        .send(crate::domain::work::Event::Everything)
        .await;
    Ok(report)
}
