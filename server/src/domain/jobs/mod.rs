//! The job state machine and the job queue.
//!
//! Architecture invariant: every change of `jobs.state` goes through
//! [`transition`] (one job: locks it, enforces the epoch fence) or
//! [`transition_locked`] (jobs the caller locked, e.g. a claim's batch) in
//! this module. Both check the move against [`JobState::can_move_to`] and
//! record it in `job_events`, in one statement. Nothing else writes
//! `jobs.state`.
//!
//! ```text
//! queued ──► assigned ──► running ──► passed | failed | infra_error | timed_out
//!   │           │            │
//!   └───────────┴────────────┴──────► lost | cancelled
//! ```

use armfleet_protocol::{CycleRecord, HostKind, JobResult, JobSpec, RunEnvironment, Task};
use serde::Serialize;
use sqlx::{PgPool, Postgres, Transaction};

mod reads;
pub use reads::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Assigned,
    Running,
    Passed,
    Failed,
    InfraError,
    TimedOut,
    Lost,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 9] = [
        JobState::Queued,
        JobState::Assigned,
        JobState::Running,
        JobState::Passed,
        JobState::Failed,
        JobState::InfraError,
        JobState::TimedOut,
        JobState::Lost,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Assigned => "assigned",
            JobState::Running => "running",
            JobState::Passed => "passed",
            JobState::Failed => "failed",
            JobState::InfraError => "infra_error",
            JobState::TimedOut => "timed_out",
            JobState::Lost => "lost",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|j| j.as_str() == s)
    }

    /// A lab failure: the lab, not the kernel, kept the job from a verdict
    /// (`infra_error`, `lost`, `timed_out`). Such a job says nothing about
    /// the kernel and may be retried.
    pub fn is_lab_failure(self) -> bool {
        matches!(
            self,
            JobState::InfraError | JobState::Lost | JobState::TimedOut
        )
    }

    /// Whether the stored state `s` is a lab failure (see
    /// [`JobState::is_lab_failure`]); unknown states are not.
    pub fn is_lab_failure_str(s: &str) -> bool {
        JobState::parse(s).is_some_and(JobState::is_lab_failure)
    }

    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            JobState::Queued | JobState::Assigned | JobState::Running
        )
    }

    /// The edges of the state machine.
    pub fn can_move_to(self, to: JobState) -> bool {
        use JobState::*;
        match (self, to) {
            (Queued, Assigned | Cancelled | Lost) => true,
            (Assigned, Running | Lost | Cancelled | TimedOut | InfraError) => true,
            // An agent may finish a job whose start message raced its end.
            (Assigned, Passed | Failed) => true,
            (Running, Passed | Failed | InfraError | TimedOut | Lost | Cancelled) => true,
            _ => false,
        }
    }

    pub fn from_result(result: &JobResult) -> JobState {
        match result {
            JobResult::Passed { .. } => JobState::Passed,
            JobResult::Failed { .. } => JobState::Failed,
            JobResult::InfraError { .. } => JobState::InfraError,
            JobResult::Cancelled { .. } => JobState::Cancelled,
            JobResult::TimedOut { .. } => JobState::TimedOut,
        }
    }
}

/// The lab-failure states ([`JobState::is_lab_failure`]) as an SQL list for
/// `state IN (...)`, to `concat!` into query literals.
macro_rules! lab_failure_states_sql {
    () => {
        "'infra_error', 'lost', 'timed_out'"
    };
}
pub(crate) use lab_failure_states_sql;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("job {0} does not exist")]
    NotFound(i64),
    #[error("job {job} cannot move from {from} to {to}")]
    IllegalTransition {
        job: i64,
        from: &'static str,
        to: &'static str,
    },
    #[error("job {job}: stale epoch {got} (current {current}); message refused")]
    StaleEpoch { job: i64, got: i64, current: i64 },
    #[error("job {job} does not belong to board {board}")]
    WrongBoard { job: i64, board: String },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Extra columns a transition sets along with the state.
#[derive(Default)]
pub struct TransitionEffects<'a> {
    pub reason: Option<&'a str>,
    pub result: Option<&'a JobResult>,
    /// For `assigned`: seconds until the assignment expires.
    pub assign_deadline_s: Option<u64>,
    /// For `assigned`: the executor the board runs jobs with, and the kind
    /// of host it is (shown with every result).
    pub executor: Option<(&'a str, HostKind)>,
    /// At the end: where the guests really ran, as the agent reported it
    /// (it overrides the board's kind taken at the claim).
    pub environment: Option<&'a RunEnvironment>,
}

/// Moves `job` to `to`, if the state machine allows it and, for a move an
/// agent asked for, `fence` (its board and the epoch its message carries)
/// names the job's board and current epoch. Returns the previous state.
pub async fn transition(
    tx: &mut Transaction<'_, Postgres>,
    job: i64,
    to: JobState,
    fence: Option<(&str, i64)>,
    effects: TransitionEffects<'_>,
) -> Result<JobState, JobError> {
    let row = sqlx::query!(
        "SELECT state, epoch, board FROM jobs WHERE id = $1 FOR UPDATE",
        job,
    )
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(JobError::NotFound(job))?;
    let from = JobState::parse(&row.state).unwrap_or(JobState::Lost);
    if let Some((board, epoch)) = fence {
        check_fence(job, (&row.board, row.epoch), board, epoch)?;
    }
    transition_locked(tx, &[job], from, to, effects).await?;
    Ok(from)
}

/// Moves `jobs`, which the caller has locked (`FOR UPDATE`, in `tx`) and
/// seen in state `from`, to `to`: the one statement that writes
/// `jobs.state`, with the job's other columns and its `job_events` row.
/// Returns `(job, epoch)` after the move.
pub async fn transition_locked(
    tx: &mut Transaction<'_, Postgres>,
    jobs: &[i64],
    from: JobState,
    to: JobState,
    effects: TransitionEffects<'_>,
) -> Result<Vec<(i64, i64)>, JobError> {
    if !from.can_move_to(to) {
        return Err(JobError::IllegalTransition {
            job: jobs.first().copied().unwrap_or_default(),
            from: from.as_str(),
            to: to.as_str(),
        });
    }
    let (cycles_completed, failed_cycle, evidence, result_reason) = match effects.result {
        Some(JobResult::Failed {
            cycles_completed,
            failed_cycle,
            reason,
            evidence,
        }) => (
            Some(*cycles_completed as i32),
            failed_cycle.map(|c| c as i32),
            Some(serde_json::json!(evidence)),
            Some(reason.clone()),
        ),
        Some(JobResult::InfraError {
            cycles_completed,
            reason,
        })
        | Some(JobResult::Cancelled {
            cycles_completed,
            reason,
        }) => (
            Some(*cycles_completed as i32),
            None,
            None,
            Some(reason.clone()),
        ),
        Some(r) => (Some(r.cycles_completed() as i32), None, None, None),
        None => (None, None, None, None),
    };
    let reason = effects.reason.map(str::to_owned).or(result_reason);
    // One round trip: the move and its event rows together.
    let host = effects
        .environment
        .map(|e| e.host)
        .or(effects.executor.map(|(_, h)| h));
    let moved = sqlx::query!(
        "WITH moved AS (
            UPDATE jobs SET
                state = $2,
                epoch = CASE WHEN $2 = 'assigned' THEN epoch + 1 ELSE epoch END,
                deadline = CASE WHEN $2 = 'assigned' THEN now() + make_interval(secs => $3)
                                WHEN $2 = 'running' THEN now() + make_interval(secs => (spec->>'timeout_s')::float8)
                                ELSE NULL END,
                started_at = CASE WHEN $2 = 'running' THEN now() ELSE started_at END,
                finished_at = CASE WHEN $4 THEN now() ELSE finished_at END,
                cycles_completed = GREATEST(cycles_completed, COALESCE($5, 0)),
                failed_cycle = COALESCE($6, failed_cycle),
                evidence = COALESCE($7, evidence),
                reason = COALESCE($8, reason),
                lease_expires_at = CASE WHEN $4 THEN NULL ELSE lease_expires_at END,
                executor = COALESCE($10, executor),
                simulated = COALESCE($11, simulated),
                host_kind = COALESCE($12, host_kind),
                accel = COALESCE($13, accel),
                run_detail = COALESCE($14, run_detail),
                fallback = COALESCE($15, fallback),
                updated_at = now()
             WHERE id = ANY($1)
             RETURNING id, epoch),
          logged AS (
            INSERT INTO job_events (job_id, from_state, to_state, reason)
            SELECT id, $9, $2, $8 FROM moved)
         SELECT id, epoch FROM moved",
        jobs,
        to.as_str(),
        effects.assign_deadline_s.unwrap_or(60) as f64,
        to.is_terminal(),
        cycles_completed,
        failed_cycle,
        evidence,
        reason.as_deref(),
        from.as_str(),
        effects.executor.map(|(e, _)| e),
        host.map(|h| h == HostKind::Simulated),
        host.map(HostKind::as_str),
        effects.environment.map(|e| e.accel.as_str()),
        effects.environment.map(|e| e.detail.as_str()),
        effects.environment.and_then(|e| e.fallback.as_deref()),
    )
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .map(|r| (r.id, r.epoch))
    .collect();
    Ok(moved)
}

/// A job handed to a board.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub job_id: i64,
    pub epoch: i64,
    pub spec: JobSpec,
    pub queued_at: chrono::DateTime<chrono::Utc>,
}

/// What `jobs::claim_next` found at the head of a board's queue.
#[derive(Debug)]
pub enum Claim<A> {
    Assigned(A),
    /// The next job needs `build_id` running first and the board is idle.
    NeedsBoot {
        build_id: i64,
    },
    Nothing,
}

/// Claims the oldest queued jobs of `board`, as many as it has room for.
/// `SKIP LOCKED` lets several dispatchers (or servers) claim concurrently
/// without ever handing one job out twice; the board row, locked first,
/// keeps `max_active` true across servers.
///
/// A job that names a build waits until the build is built, and runs only
/// when the board runs that build: when it does not (and the board is idle,
/// with no boot in progress) the answer is [`Claim::NeedsBoot`] and nothing
/// is claimed (see `deploy`). Either way the board's idle/busy state is
/// brought up to date in the same transaction.
///
/// Five round trips and one commit for a whole batch: at thousands of jobs
/// a second this path is what PostgreSQL spends its time on.
pub async fn claim_next(
    pool: &PgPool,
    board: &str,
    max_active: u32,
    executor: &str,
    host: HostKind,
    assign_deadline_s: u64,
) -> Result<Claim<Vec<Assignment>>, JobError> {
    let mut tx = pool.begin().await?;
    let running_build: Option<i64> = sqlx::query_scalar!(
        "SELECT build_id FROM boards WHERE name = $1 FOR UPDATE",
        board,
    )
    .fetch_optional(&mut *tx)
    .await?
    .flatten();
    // A separate statement after the lock, so its snapshot sees every claim
    // committed by whoever held the lock before.
    let rows = sqlx::query!(
        r#"WITH active AS (
            SELECT count(*) AS n FROM jobs WHERE board = $1 AND state IN ('assigned', 'running'))
         SELECT j.id, j.spec, j.created_at, j.build_id, (SELECT n FROM active) AS "active!"
         FROM jobs j
         WHERE j.board = $1 AND j.state = 'queued'
           AND (j.build_id IS NULL OR EXISTS (SELECT 1 FROM builds b WHERE b.id = j.build_id AND b.state = 'built'))
           AND NOT EXISTS (SELECT 1 FROM boots WHERE board = $1 AND state IN ('deploying', 'booting'))
         ORDER BY j.id
         LIMIT GREATEST($2 - (SELECT n FROM active), 0)
         FOR UPDATE OF j SKIP LOCKED"#,
        board,
        max_active as i64,
    )
    .fetch_all(&mut *tx)
    .await?;
    // The head of the queue, up to the first job that needs another build.
    let mut batch = Vec::new();
    for row in &rows {
        if let Some(build_id) = row.build_id.filter(|w| running_build != Some(*w)) {
            if batch.is_empty() {
                // Never reboot a board under a running job.
                if row.active == 0 {
                    return Ok(Claim::NeedsBoot { build_id });
                }
            }
            break;
        }
        let job_id = row.id;
        let spec: JobSpec = serde_json::from_value(row.spec.clone()).map_err(|e| {
            sqlx::Error::Decode(format!("job {job_id} has an unreadable spec: {e}").into())
        })?;
        batch.push(Assignment {
            job_id,
            epoch: 0,
            spec,
            queued_at: row.created_at,
        });
    }
    if batch.is_empty() {
        crate::domain::boards::refresh_busy(&mut *tx, board).await?;
        tx.commit().await?;
        return Ok(Claim::Nothing);
    }
    let ids: Vec<i64> = batch.iter().map(|a| a.job_id).collect();
    let moved = transition_locked(
        &mut tx,
        &ids,
        JobState::Queued,
        JobState::Assigned,
        TransitionEffects {
            assign_deadline_s: Some(assign_deadline_s),
            executor: Some((executor, host)),
            ..Default::default()
        },
    )
    .await?;
    for (id, epoch) in moved {
        if let Some(a) = batch.iter_mut().find(|a| a.job_id == id) {
            a.epoch = epoch;
        }
    }
    crate::domain::boards::refresh_busy(&mut *tx, board).await?;
    tx.commit().await?;
    Ok(Claim::Assigned(batch))
}

/// Checks that a message about `job` comes from its board with its epoch.
pub async fn check_owner(pool: &PgPool, job: i64, board: &str, epoch: i64) -> Result<(), JobError> {
    let row = sqlx::query!("SELECT board, epoch FROM jobs WHERE id = $1", job,)
        .fetch_optional(pool)
        .await?
        .ok_or(JobError::NotFound(job))?;
    check_fence(job, (&row.board, row.epoch), board, epoch)
}

/// The fence every agent message about a job passes: it must come from the
/// job's board (`owner`) and carry its `current` epoch.
fn check_fence(
    job: i64,
    (owner, current): (&str, i64),
    board: &str,
    epoch: i64,
) -> Result<(), JobError> {
    if owner != board {
        return Err(JobError::WrongBoard {
            job,
            board: board.to_owned(),
        });
    }
    if current != epoch {
        return Err(JobError::StaleEpoch {
            job,
            got: epoch,
            current,
        });
    }
    Ok(())
}

pub async fn mark_running(
    pool: &PgPool,
    job: i64,
    board: &str,
    epoch: i64,
) -> Result<(), JobError> {
    let mut tx = pool.begin().await?;
    transition(
        &mut tx,
        job,
        JobState::Running,
        Some((board, epoch)),
        TransitionEffects::default(),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

pub async fn finish(
    pool: &PgPool,
    job: i64,
    board: &str,
    epoch: i64,
    result: &JobResult,
    environment: Option<&RunEnvironment>,
) -> Result<JobState, JobError> {
    let to = JobState::from_result(result);
    let mut tx = pool.begin().await?;
    transition(
        &mut tx,
        job,
        to,
        Some((board, epoch)),
        TransitionEffects {
            result: Some(result),
            environment,
            ..Default::default()
        },
    )
    .await?;
    tx.commit().await?;
    Ok(to)
}

/// Stores one cycle record (idempotent: a resent record is ignored). One
/// statement: the ownership check, the record and the job's count.
pub async fn record_cycle(
    pool: &PgPool,
    job: i64,
    board: &str,
    epoch: i64,
    record: &CycleRecord,
) -> Result<(), JobError> {
    let completed = if record.guest_alive {
        record.cycle
    } else {
        record.cycle.saturating_sub(1)
    };
    let updated = sqlx::query!(
        "WITH owned AS (
            SELECT id FROM jobs WHERE id = $1 AND board = $4 AND epoch = $5),
          stored AS (
            INSERT INTO job_cycles (job_id, cycle, record)
            SELECT id, $2, $3 FROM owned
            ON CONFLICT (job_id, cycle) DO NOTHING)
         UPDATE jobs SET cycles_completed = GREATEST(cycles_completed, $6), updated_at = now()
         WHERE id IN (SELECT id FROM owned)",
        job,
        record.cycle as i32,
        serde_json::to_value(record).unwrap_or_default(),
        board,
        epoch,
        completed as i32,
    )
    .execute(pool)
    .await?;
    if updated.rows_affected() == 0 {
        // Not the board's job, or a stale epoch: say which.
        check_owner(pool, job, board, epoch).await?;
    }
    Ok(())
}

/// The board's connection ended: its in-flight jobs keep their state for
/// `grace_s`, in case the agent comes back with them (a network blip, a
/// server restart); after that the watchdog declares them lost.
pub async fn lease_board_jobs(
    pool: &PgPool,
    board: &str,
    grace_s: f64,
) -> Result<u64, sqlx::Error> {
    let r = sqlx::query!(
        "UPDATE jobs SET lease_expires_at = now() + make_interval(secs => $2)
         WHERE board = $1 AND state IN ('assigned', 'running') AND lease_expires_at IS NULL",
        board,
        grace_s,
    )
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

/// The agent came back: the jobs it still has keep running (their leases
/// are renewed); the board's other in-flight jobs died with the old agent.
/// Returns the jobs the agent listed that are no longer its to run.
pub async fn reconcile_leases(
    pool: &PgPool,
    board: &str,
    held: &[(i64, i64)],
) -> Result<Vec<i64>, JobError> {
    let in_flight: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT id, epoch FROM jobs WHERE board = $1 AND state IN ('assigned', 'running')",
    )
    .bind(board)
    .fetch_all(pool)
    .await?;
    for (id, epoch) in &in_flight {
        if held.contains(&(*id, *epoch)) {
            sqlx::query!("UPDATE jobs SET lease_expires_at = NULL WHERE id = $1", *id,)
                .execute(pool)
                .await?;
        } else {
            let mut tx = pool.begin().await?;
            match transition(
                &mut tx,
                *id,
                JobState::Lost,
                None,
                TransitionEffects {
                    reason: Some("the board's agent came back without the job (it restarted)"),
                    ..Default::default()
                },
            )
            .await
            {
                Ok(_) => tx.commit().await?,
                Err(JobError::IllegalTransition { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(held
        .iter()
        .filter(|h| !in_flight.contains(h))
        .map(|(id, _)| *id)
        .collect())
}

/// At start-up: what a previous server process left in flight gets a
/// grace period for its agent to reconnect with it; the watchdog ends the
/// rest as lost.
pub async fn resolve_after_restart(
    pool: &PgPool,
    server_id: &str,
    grace_s: f64,
) -> Result<Vec<i64>, JobError> {
    Ok(sqlx::query_scalar!(
        "UPDATE jobs SET lease_expires_at = now() + make_interval(secs => $1)
         WHERE state IN ('assigned', 'running') AND lease_expires_at IS NULL
           AND board IN (SELECT name FROM boards WHERE server_id IS NULL OR server_id = $2)
         RETURNING id",
        grace_s,
        server_id,
    )
    .fetch_all(pool)
    .await?)
}

/// Jobs whose deadline passed: assigned but never started, or running past
/// their timeout. Returns (job, board, new state).
pub async fn expire_deadlines(
    pool: &PgPool,
    queue_deadline_s: u64,
) -> Result<Vec<(i64, String, JobState)>, JobError> {
    let rows = sqlx::query!(
        r#"SELECT id, board, state, (lease_expires_at IS NOT NULL AND lease_expires_at < now()) AS "lease_gone!"
         FROM jobs
         WHERE (state IN ('assigned', 'running')
                AND ((deadline IS NOT NULL AND deadline < now())
                     OR (lease_expires_at IS NOT NULL AND lease_expires_at < now())))
            OR (state = 'queued' AND created_at < now() - make_interval(secs => $1))"#,
        queue_deadline_s as f64,
    )
    .fetch_all(pool)
    .await?;
    let mut out = Vec::new();
    for row in rows {
        let (id, board) = (row.id, row.board);
        let state = JobState::parse(&row.state).unwrap_or(JobState::Running);
        let (to, reason) = match state {
            _ if row.lease_gone => (
                JobState::Lost,
                "board went offline and did not come back with the job in time",
            ),
            JobState::Queued => (
                JobState::Lost,
                "no board took the job before the queue deadline",
            ),
            JobState::Assigned => (JobState::Lost, "the board never started the job"),
            _ => (JobState::TimedOut, "the job ran past its timeout"),
        };
        let mut tx = pool.begin().await?;
        match transition(
            &mut tx,
            id,
            to,
            None,
            TransitionEffects {
                reason: Some(reason),
                ..Default::default()
            },
        )
        .await
        {
            Ok(_) => {
                tx.commit().await?;
                out.push((id, board, to));
            }
            Err(JobError::IllegalTransition { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Cancels a job at the user's request. Returns the state it was in, so
/// the caller knows whether an agent must be told.
pub async fn cancel(pool: &PgPool, job: i64, reason: &str) -> Result<(JobState, String), JobError> {
    let mut tx = pool.begin().await?;
    let from = transition(
        &mut tx,
        job,
        JobState::Cancelled,
        None,
        TransitionEffects {
            reason: Some(reason),
            ..Default::default()
        },
    )
    .await?;
    let board: String = sqlx::query_scalar!("SELECT board FROM jobs WHERE id = $1", job,)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((from, board))
}

#[allow(clippy::too_many_arguments)]
pub async fn insert_queued(
    tx: &mut Transaction<'_, Postgres>,
    run_id: i64,
    kernel_id: i64,
    board: &str,
    plan: &str,
    spec: &JobSpec,
    retry_of: Option<i64>,
    attempt: i32,
) -> Result<i64, sqlx::Error> {
    let Task::MigrateCancel(params) = &spec.task;
    let id: i64 = sqlx::query_scalar!(
        "INSERT INTO jobs (run_id, kernel_id, board, plan, spec, cycles_total, retry_of, attempt, build_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
        run_id,
        kernel_id,
        board,
        plan,
        serde_json::to_value(spec).unwrap_or_default(),
        params.cycles as i32,
        retry_of,
        attempt,
        spec.build_id,
    )
    .fetch_one(&mut **tx)
    .await?;
    let why = match retry_of {
        Some(j) => format!("retry {attempt} of job {j}, which ended with a lab failure"),
        None => format!("planned by run {run_id}"),
    };
    sqlx::query!(
        "INSERT INTO job_events (job_id, to_state, reason) VALUES ($1, 'queued', $2)",
        id,
        why,
    )
    .execute(&mut **tx)
    .await?;
    Ok(id)
}

/// The job's logs went over the per-job limit; the rest is dropped.
pub async fn mark_log_truncated(pool: &PgPool, job: i64) -> Result<(), sqlx::Error> {
    sqlx::query!("UPDATE jobs SET log_truncated = TRUE WHERE id = $1", job,)
        .execute(pool)
        .await?;
    Ok(())
}

/// Records that the analysis of these jobs is done (`Some`) or must run
/// again (`None`: a recovered kernel log arrived after it).
pub async fn set_analyzed(
    tx: &mut Transaction<'_, Postgres>,
    jobs: &[i64],
    done: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE jobs SET analyzed_at = CASE WHEN $2 THEN now() END WHERE id = ANY($1)",
        jobs,
        done,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::JobState::*;

    #[test]
    fn terminal_states_have_no_way_out() {
        for from in super::JobState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in super::JobState::ALL {
                assert!(!from.can_move_to(to), "{from:?} -> {to:?} must be illegal");
            }
        }
    }

    #[test]
    fn the_sql_list_of_lab_failures_matches_is_lab_failure() {
        let listed: Vec<&str> = lab_failure_states_sql!()
            .split(", ")
            .map(|s| s.trim_matches('\''))
            .collect();
        let lab: Vec<&str> = super::JobState::ALL
            .into_iter()
            .filter(|s| s.is_lab_failure())
            .map(|s| s.as_str())
            .collect();
        assert_eq!(listed.len(), lab.len(), "{listed:?} vs {lab:?}");
        for s in &lab {
            assert!(listed.contains(s), "{s} missing from {listed:?}");
        }
        assert!(super::JobState::is_lab_failure_str("timed_out"));
        assert!(!super::JobState::is_lab_failure_str("failed"));
        assert!(!super::JobState::is_lab_failure_str("nonsense"));
    }

    #[test]
    fn every_live_state_can_be_lost_or_cancelled() {
        for from in [Queued, Assigned, Running] {
            assert!(
                from.can_move_to(Lost) && from.can_move_to(Cancelled),
                "{from:?}"
            );
        }
        assert!(
            !Queued.can_move_to(Running),
            "a job must be assigned before it runs"
        );
        assert!(!Queued.can_move_to(Passed));
    }
}
