//! The mirror worker: fetches the trees asked for (`domain::mirror::MirrorQueue`)
//! and fills in what git knows of their kernels.

use std::path::PathBuf;

use crate::domain::mirror::{Mirror, MirrorQueue};

/// Fetches requested trees one at a time (a kernel clone is big) and fills
/// in what git knows of the kernels recorded for them. Runs until `shutdown`.
pub async fn worker(
    pool: sqlx::PgPool,
    data_dir: PathBuf,
    queue: MirrorQueue,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        let pending = tokio::select! {
            _ = shutdown.cancelled() => return,
            batch = queue.next_batch() => batch,
        };
        for url in pending {
            let mirror = Mirror::for_url(&data_dir, &url);
            let fetched = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = mirror.fetch() => r,
            };
            if let Err(e) = fetched {
                tracing::warn!(tree = %url, "mirror fetch failed: {e}");
                continue;
            }
            if let Err(e) = fill_kernel_details(&pool, &mirror).await {
                tracing::warn!(tree = %url, "reading commits from the mirror: {e}");
            }
        }
    }
}

async fn fill_kernel_details(pool: &sqlx::PgPool, mirror: &Mirror) -> anyhow::Result<()> {
    let kernels: Vec<(i64, String)> = sqlx::query_as(
        "SELECT id, commit_sha FROM kernels WHERE tree = $1 AND (parent_sha IS NULL OR subject IS NULL OR committed_at IS NULL)",
    )
    .bind(&mirror.url)
    .fetch_all(pool)
    .await?;
    for (id, commit) in kernels {
        let Ok(info) = mirror.commit_info(&commit).await else {
            continue;
        };
        crate::domain::runs::fill_kernel_from_mirror(pool, id, &info).await?;
    }
    Ok(())
}
