//! The analysis worker: after a job ends, triage its logs into findings and
//! refresh its kernel's record.
//!
//! Jobs are queued by id; at start-up every ended job without `analyzed_at`
//! is queued again, so a crash between "job ended" and "job analysed" loses
//! nothing.

use sqlx::{PgPool, Row};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::findings::{self, TRIAGED};
use crate::{logs, results};

#[derive(Clone)]
pub struct AnalysisQueue {
    tx: mpsc::UnboundedSender<i64>,
}

impl AnalysisQueue {
    pub fn new() -> (AnalysisQueue, mpsc::UnboundedReceiver<i64>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (AnalysisQueue { tx }, rx)
    }

    pub fn push(&self, job: i64) {
        let _ = self.tx.send(job);
    }
}

/// Runs until `shutdown`. Besides the queue it sweeps for ended jobs that
/// were never analysed (lost or timed out by the watchdog, or left over from
/// a crash). A failure is logged and retried at the next sweep.
pub async fn run(
    state: crate::state::AppState,
    mut rx: mpsc::UnboundedReceiver<i64>,
    shutdown: CancellationToken,
) {
    let pool = state.pool.clone();
    let mut sweep = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        let jobs: Vec<i64> = tokio::select! {
            _ = shutdown.cancelled() => return,
            job = rx.recv() => match job { Some(j) => vec![j], None => return },
            _ = sweep.tick() => match unanalysed(&pool).await {
                Ok(jobs) => jobs,
                Err(e) => { tracing::error!("listing unanalysed jobs: {e}"); continue; }
            },
        };
        for job in jobs {
            match analyse(&pool, job).await {
                Ok(true) => {
                    if let Err(e) = crate::verdicts::after_job(&state, job).await {
                        tracing::error!(job, "deciding verdicts: {e:#}");
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::error!(job, "analysing job: {e:#}"),
            }
        }
    }
}

async fn unanalysed(pool: &PgPool) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM jobs WHERE analyzed_at IS NULL
           AND state IN ('passed', 'failed', 'infra_error', 'timed_out', 'lost', 'cancelled')
         ORDER BY id LIMIT 500",
    )
    .fetch_all(pool)
    .await
}

/// Returns whether the job was analysed now (false: it already was).
pub async fn analyse(pool: &PgPool, job: i64) -> anyhow::Result<bool> {
    let row = sqlx::query("SELECT kernel_id, plan FROM jobs WHERE id = $1")
        .bind(job)
        .fetch_one(pool)
        .await?;
    let kernel: i64 = row.get("kernel_id");
    let plan: String = row.get("plan");
    let mut found = Vec::new();
    for (stream, source) in TRIAGED {
        let log = logs::read_stream(pool, job, stream).await?;
        if log.is_empty() {
            continue;
        }
        let mut f =
            tokio::task::spawn_blocking(move || findings::triage_stream(stream, source, &log))
                .await?;
        found.append(&mut f);
    }
    let mut tx = pool.begin().await?;
    let done: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT analyzed_at FROM jobs WHERE id = $1 FOR UPDATE")
            .bind(job)
            .fetch_one(&mut *tx)
            .await?;
    if done.is_some() {
        return Ok(false);
    }
    findings::store(&mut tx, job, &found).await?;
    results::recompute(&mut tx, kernel, &plan).await?;
    sqlx::query("UPDATE jobs SET analyzed_at = now() WHERE id = $1")
        .bind(job)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(job, findings = found.len(), "job analysed");
    Ok(true)
}

/// A log arrived after the job was analysed — a board that came back after
/// its job was declared lost uploads the previous boot's kernel log: its
/// findings are dropped (and their signature counts taken back) so that the
/// job is analysed again with the new log. Returns whether it was.
pub async fn reanalyse(pool: &PgPool, job: i64) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let done: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT analyzed_at FROM jobs WHERE id = $1 FOR UPDATE")
            .bind(job)
            .fetch_one(&mut *tx)
            .await?;
    if done.is_none() {
        return Ok(false); // not analysed yet: it will see the log anyway
    }
    let gone: Vec<String> =
        sqlx::query_scalar("DELETE FROM findings WHERE job_id = $1 RETURNING signature")
            .bind(job)
            .fetch_all(&mut *tx)
            .await?;
    for sig in gone {
        sqlx::query("UPDATE signatures SET count = GREATEST(count - 1, 0) WHERE signature = $1")
            .bind(sig)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("UPDATE jobs SET analyzed_at = NULL WHERE id = $1")
        .bind(job)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(
        job,
        "a recovered kernel log arrived after the analysis: analysing the job again"
    );
    Ok(true)
}
