//! The bisection worker: starts bisections for confirmed regressions and
//! advances every running one, round by round. A round starts when this
//! server recorded jobs' results or started a bisection, and at least every
//! `FALLBACK_ROUND` (results recorded by another server, mirrors fetched,
//! builds failed).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::Deps;
use crate::domain::bisect::{
    BisectError, BisectionState, adopt_regressions, advance, finish, running,
};
use crate::domain::leases::Round;

const FALLBACK_ROUND: Duration = Duration::from_secs(2);

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
        match lease
            .next_round_or(
                FALLBACK_ROUND,
                deps.work.until_bisections_may_move(),
                &shutdown,
            )
            .await
        {
            Round::Stop => return,
            Round::Skip => continue,
            Round::Work => {}
        }
        if let Err(e) = adopt_regressions(&deps, &mut asked_mirrors).await {
            tracing::warn!("starting bisections for confirmed regressions: {e}");
        }
        let running = match running(&deps.pool).await {
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
