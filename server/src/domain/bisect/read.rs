//! Reading bisections and their steps.

use serde::Serialize;
use sqlx::PgPool;

use super::BisectError;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct BisectionRow {
    pub id: i64,
    pub regression_id: Option<i64>,
    pub tree: String,
    pub branch: String,
    pub plan: String,
    pub family: Option<String>,
    pub good_sha: String,
    pub bad_sha: String,
    pub state: String,
    pub failure_rate: Option<f64>,
    pub rate_cycles: i64,
    pub rate_failures: i64,
    pub signature: Option<String>,
    pub confidence: f64,
    pub seed: i64,
    pub max_steps: i32,
    pub first_bad_sha: Option<String>,
    pub candidates: Vec<String>,
    pub result_confidence: Option<f64>,
    pub board_seconds: f64,
    pub reason: Option<String>,
    pub requested_by: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct StepRow {
    pub step: i32,
    pub commit_sha: String,
    pub kind: String,
    pub verdict: Option<String>,
    pub runs: Vec<i64>,
    pub cycles_needed: i64,
    pub cycles_run: i64,
    pub failures: i64,
    pub confidence: Option<f64>,
    pub board_seconds: f64,
    pub evidence: serde_json::Value,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub decided_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A bisection with its steps, for the kernel page and API.
#[derive(Debug, Clone, Serialize)]
pub struct BisectionView {
    pub bisection: BisectionRow,
    pub steps: Vec<StepRow>,
}

/// The bisections that involve `commit`: as their good or bad end, their
/// result, or one of their steps.
pub async fn for_commit(pool: &PgPool, commit: &str) -> Result<Vec<BisectionView>, sqlx::Error> {
    let rows: Vec<BisectionRow> = sqlx::query_as(
        "SELECT * FROM bisections WHERE good_sha = $1 OR bad_sha = $1 OR first_bad_sha = $1
            OR id IN (SELECT bisection_id FROM bisect_steps WHERE commit_sha = $1)
         ORDER BY id DESC LIMIT 20",
    )
    .bind(commit)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::new();
    for b in rows {
        let steps = steps(pool, b.id).await?;
        out.push(BisectionView {
            bisection: b,
            steps,
        });
    }
    Ok(out)
}

pub(super) async fn load(pool: &PgPool, id: i64) -> Result<Option<BisectionRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM bisections WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

pub(super) async fn steps(pool: &PgPool, id: i64) -> Result<Vec<StepRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT step, commit_sha, kind, verdict, runs, cycles_needed, cycles_run, failures, confidence, board_seconds,
                evidence, started_at, decided_at
         FROM bisect_steps WHERE bisection_id = $1 ORDER BY step",
    )
    .bind(id)
    .fetch_all(pool)
    .await
}

/// The bisection and its steps, as the API and `armfleet bisect show` give it.
pub async fn show(pool: &PgPool, id: i64) -> Result<serde_json::Value, BisectError> {
    let b = load(pool, id).await?.ok_or(BisectError::NotFound(id))?;
    let s = steps(pool, id).await?;
    let tested = s.iter().filter(|s| s.kind == "test").count();
    Ok(serde_json::json!({
        "bisection": b,
        "steps": s,
        "tested_steps": tested,
        "board_minutes": b.board_seconds / 60.0,
    }))
}
