//! The build worker: runs queued builds, one at a time per server (a
//! kernel build takes the whole host); several servers share the queue.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::Deps;
use crate::domain::builds::{build_one, claim, requeue_interrupted};

/// Runs queued builds until `shutdown`, one at a time per server (a kernel
/// build takes the whole host).
pub async fn worker(deps: Deps, shutdown: CancellationToken) {
    // Builds this server was running when it stopped start over.
    if let Err(e) = requeue_interrupted(&deps.pool, &deps.server_id).await {
        tracing::error!("requeueing interrupted builds: {e}");
    }
    let mut listener = sqlx::postgres::PgListener::connect_with(&deps.pool)
        .await
        .ok();
    if let Some(l) = listener.as_mut() {
        if let Err(e) = l.listen("armfleet_builds").await {
            tracing::warn!("LISTEN armfleet_builds failed; polling: {e}");
            listener = None;
        }
    }
    loop {
        match claim(&deps).await {
            Ok(Some((id, source, tree, commit, config))) => {
                let run = build_one(&deps, id, &source, &tree, &commit, config);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    () = run => {}
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("claiming a build: {e}"),
        }
        let wait = tokio::time::sleep(Duration::from_secs(5));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wait => {}
            n = async { match listener.as_mut() { Some(l) => l.recv().await.map(|_| ()), None => std::future::pending().await } } => {
                if n.is_err() { listener = None; }
            }
        }
    }
}
