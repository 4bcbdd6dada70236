//! The bisection worker: starts bisections for confirmed regressions and
//! advances every running one, round by round.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::Deps;
use crate::domain::bisect::{BisectError, BisectionState, adopt_regressions, advance, finish};

/// Advances every running bisection, until `shutdown`. One server of a
/// cluster at a time (the `bisect` lease): two would plan a step twice.
pub async fn worker(deps: Deps, shutdown: CancellationToken) {
    let mut asked_mirrors = std::collections::HashMap::new();
    let mut lease = crate::domain::leases::Lease::new(
        deps.pool.clone(),
        "bisect",
        &deps.server_id,
        Duration::from_secs(10),
    );
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                lease.release().await;
                return;
            }
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
        if !lease.renew().await {
            continue;
        }
        if let Err(e) = adopt_regressions(&deps, &mut asked_mirrors).await {
            tracing::warn!("starting bisections for confirmed regressions: {e}");
        }
        let running: Vec<i64> = match sqlx::query_scalar(
            "SELECT id FROM bisections WHERE state = 'running' ORDER BY id",
        )
        .fetch_all(&deps.pool)
        .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("bisect worker: {e}");
                continue;
            }
        };
        for id in running {
            if let Err(e) = advance(&deps, id).await {
                tracing::error!(bisection = id, "advancing the bisection: {e}");
                if matches!(e, BisectError::Git(_) | BisectError::Invalid(_)) {
                    let _ = finish(
                        &deps.pool,
                        id,
                        BisectionState::Failed,
                        None,
                        &[],
                        &format!("{e}"),
                    )
                    .await;
                }
            }
        }
    }
}
