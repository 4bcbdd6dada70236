//! The analysis worker: after a job ends, triage its logs into findings and
//! refresh its kernel's record.
//!
//! Jobs are queued by id; at start-up every ended job without `analyzed_at`
//! is queued again, so a crash between "job ended" and "job analysed" loses
//! nothing.

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::domain::findings::{self, TRIAGED};
use crate::domain::{jobs, logs, results};

/// Jobs waiting for the worker. Bounded: when it is full a job is not
/// queued, and the worker's sweep (every 5 s, every ended job without
/// `analyzed_at`) takes it instead.
const QUEUE_CAPACITY: usize = 4096;

#[derive(Clone)]
pub struct AnalysisQueue {
    tx: mpsc::Sender<i64>,
}

impl AnalysisQueue {
    pub fn new() -> (AnalysisQueue, mpsc::Receiver<i64>) {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        (AnalysisQueue { tx }, rx)
    }

    pub fn push(&self, job: i64) {
        if let Err(mpsc::error::TrySendError::Full(job)) = self.tx.try_send(job) {
            tracing::debug!(job, "analysis queue full: the next sweep takes the job");
        }
    }
}

/// Runs until `shutdown`. Besides the queue it sweeps for ended jobs that
/// were never analysed (lost or timed out by the watchdog, or left over from
/// a crash). A failure is logged and retried at the next sweep.
pub async fn run(
    state: crate::wiring::state::AppState,
    mut rx: mpsc::Receiver<i64>,
    shutdown: CancellationToken,
) {
    let pool = state.pool.clone();
    let mut sweep = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        let mut jobs: Vec<i64> = tokio::select! {
            _ = shutdown.cancelled() => return,
            job = rx.recv() => match job { Some(j) => vec![j], None => return },
            _ = sweep.tick() => match unanalysed(&pool).await {
                Ok(jobs) => jobs,
                Err(e) => { tracing::error!("listing unanalysed jobs: {e}"); continue; }
            },
        };
        // Jobs that ended meanwhile join this batch: a kernel's record is
        // then recomputed once per batch, not once per job (a 1,000-board
        // run would otherwise aggregate its jobs a million times).
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        for chunk in jobs.chunks(MAX_BATCH) {
            match analyse_batch(&pool, chunk).await {
                Ok(done) => {
                    let any = !done.is_empty();
                    for job in done {
                        if let Err(e) = crate::domain::verdicts::after_job(&state.deps(), job).await
                        {
                            tracing::error!(job, "deciding verdicts: {e:#}");
                        }
                    }
                    if any {
                        state.work.bisections_may_move();
                    }
                }
                Err(e) => tracing::error!(jobs = ?chunk, "analysing jobs: {e:#}"),
            }
        }
    }
}

/// Most jobs analysed in one transaction.
const MAX_BATCH: usize = 256;

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
    Ok(!analyse_batch(pool, &[job]).await?.is_empty())
}

/// Triages the jobs' logs into findings and updates their kernels'
/// records, all in one transaction (a kernel's record always counts exactly
/// its analysed jobs). Returns the jobs analysed now (not already done).
pub async fn analyse_batch(pool: &PgPool, jobs: &[i64]) -> anyhow::Result<Vec<i64>> {
    let mut jobs = jobs.to_vec();
    // One lock order for every server analysing at once.
    jobs.sort_unstable();
    jobs.dedup();
    let owners: Vec<(i64, i64, String)> =
        sqlx::query_as("SELECT id, kernel_id, plan FROM jobs WHERE id = ANY($1) ORDER BY id")
            .bind(&jobs)
            .fetch_all(pool)
            .await?;
    let mut triaged = Vec::with_capacity(owners.len());
    for (job, kernel, plan) in owners {
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
        triaged.push((job, kernel, plan, found));
    }
    let mut tx = pool.begin().await?;
    // The jobs nobody analysed meanwhile (another server, a sweep), locked.
    let fresh: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE id = ANY($1) AND analyzed_at IS NULL ORDER BY id FOR UPDATE",
    )
    .bind(&jobs)
    .fetch_all(&mut *tx)
    .await?;
    let mut done = Vec::new();
    let mut dirty = std::collections::BTreeSet::new();
    for (job, kernel, plan, found) in &triaged {
        if fresh.binary_search(job).is_err() {
            continue;
        }
        findings::store(&mut tx, *job, found).await?;
        dirty.insert((*kernel, plan.clone()));
        done.push((*job, found.len()));
    }
    jobs::set_analyzed(&mut tx, &fresh, true).await?;
    for (kernel, plan) in &dirty {
        results::recompute(&mut tx, *kernel, plan).await?;
    }
    tx.commit().await?;
    for (job, n) in &done {
        tracing::info!(job, findings = n, "job analysed");
    }
    Ok(done.into_iter().map(|(j, _)| j).collect())
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
    findings::forget_job(&mut tx, job).await?;
    jobs::set_analyzed(&mut tx, &[job], false).await?;
    tx.commit().await?;
    tracing::info!(
        job,
        "a recovered kernel log arrived after the analysis: analysing the job again"
    );
    Ok(true)
}
