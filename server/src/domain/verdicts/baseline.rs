//! Which kernel a verdict compares against, and why that one.

use sqlx::PgPool;

use super::kernel_row;
use crate::domain::mirror::Mirror;

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
