//! The audit trail: who triggered, cancelled or reloaded what, board power
//! cycles, key changes. Append-only.

use serde::Serialize;
use sqlx::PgPool;

pub async fn record(pool: &PgPool, actor: &str, action: &str, target: &str, detail: &str) {
    let r = sqlx::query!(
        "INSERT INTO audit_log (actor, action, target, detail) VALUES ($1, $2, $3, $4)",
        actor,
        action,
        target,
        detail,
    )
    .execute(pool)
    .await;
    if let Err(e) = r {
        // The action itself happened; losing its audit line must be loud.
        tracing::error!(actor, action, target, "cannot write the audit trail: {e}");
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AuditRow {
    pub id: i64,
    pub at: chrono::DateTime<chrono::Utc>,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

pub async fn recent(pool: &PgPool, limit: i64) -> Result<Vec<AuditRow>, sqlx::Error> {
    sqlx::query_as::<_, AuditRow>(
        "SELECT id, at, actor, action, target, detail FROM audit_log ORDER BY id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}
