//! Automatic bisection: from a good kernel G and a bad kernel B on one tree
//! to the first bad commit.
//!
//! A bisection is a row in `bisections`, its steps rows in `bisect_steps`;
//! the worker (`workers::bisect`, owned by `Server::run`) advances every running one:
//!
//! 1. **Calibrate** (unless the rate was given): test B until the failure
//!    shows at least [`MIN_CALIBRATION_FAILURES`] times; the per-cycle
//!    failure rate and the fatal finding's signature come from that.
//! 2. **Pick** the next commit with `git rev-list --bisect-all` on the
//!    tree's mirror (the best split that is not a skipped commit).
//! 3. **Build**: a commit that cannot be built is skipped, as
//!    `git bisect skip` would. There are no real builds yet; the simulation
//!    convention is a file [`BUILD_FAILS_FILE`] in the commit's tree.
//! 4. **Test** it on healthy (online) boards of the plan (and family) with
//!    `cycles_for_confidence(rate, confidence)` cycles: the commit is *bad*
//!    on any fatal finding with the regression's signature, *good* only
//!    after that many clean cycles; lab failures get top-up runs, and a
//!    commit that still cannot be tested is skipped.
//! 5. Repeat until one candidate is left (`found`), or only skipped ones
//!    (`ambiguous`, with the list), or the step budget is spent (`failed`).
//!
//! Simulated boards (the replay executor) take the kernel's behaviour from
//! the commit's tree: a file [`BUG_FILE`] holding a per-cycle abort
//! probability (e.g. `0.01`) makes it buggy. Real boards ignore it.
//!
//! Each step records its commit, verdict, cycles, failures, the confidence
//! of a good call, the board time and evidence (jobs, findings). The
//! result's confidence is the probability that none of the good calls
//! missed the bug, at the measured rate.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use sqlx::{PgPool, Row};

use crate::domain::Deps;
use crate::domain::audit;
use crate::domain::lifecycle::StateMachine;
use crate::domain::mirror::Mirror;

mod read;
mod step;

pub use read::{BisectionRow, BisectionView, StepRow, for_commit, show};
pub use step::advance;

use read::{load, steps};

/// Simulation convention: a commit whose tree has this file is buggy on
/// replay boards, aborting a cycle with the probability the file holds.
pub const BUG_FILE: &str = ".armfleet-replay/bug";
/// Simulation convention: a commit whose tree has this file does not build.
pub const BUILD_FAILS_FILE: &str = ".armfleet-replay/build-fails";

pub const MIN_CALIBRATION_FAILURES: i64 = 3;
const MAX_CALIBRATION_ROUNDS: usize = 10;
const MAX_TOPUPS: usize = 3;

/// A bisection runs until it ends one way; every end is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BisectionState {
    Running,
    /// One candidate is left: the first bad commit.
    Found,
    /// Only skipped commits are left; the candidates are listed.
    Ambiguous,
    /// The bad commit did not reproduce or could not be built, or the step
    /// budget was spent.
    Failed,
    /// Somebody stopped it.
    Stopped,
}

impl StateMachine for BisectionState {
    const ALL: &'static [BisectionState] = &[
        BisectionState::Running,
        BisectionState::Found,
        BisectionState::Ambiguous,
        BisectionState::Failed,
        BisectionState::Stopped,
    ];

    fn as_str(self) -> &'static str {
        match self {
            BisectionState::Running => "running",
            BisectionState::Found => "found",
            BisectionState::Ambiguous => "ambiguous",
            BisectionState::Failed => "failed",
            BisectionState::Stopped => "stopped",
        }
    }

    fn can_move_to(self, to: BisectionState) -> bool {
        self == BisectionState::Running && to != BisectionState::Running
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    pub tree: String,
    #[serde(default)]
    pub branch: Option<String>,
    pub good: String,
    pub bad: String,
    pub plan: String,
    #[serde(default)]
    pub family: Option<String>,
    /// The regression's per-cycle failure rate, when known (skips calibration).
    #[serde(default)]
    pub rate: Option<f64>,
    /// How sure a `good` call must be (default 0.99).
    #[serde(default)]
    pub confidence: Option<f64>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub max_steps: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum BisectError {
    #[error("{0}")]
    Invalid(String),
    #[error("bisection {0}")]
    NotFound(i64),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("git: {0}")]
    Git(String),
}

async fn git(dir: &Path, args: &[&str]) -> Result<(bool, String), BisectError> {
    let out = crate::domain::mirror::git_status(Some(dir), args, Duration::from_secs(120))
        .await
        .map_err(|e| BisectError::Git(e.to_string()))?;
    Ok((out.ok, out.stdout))
}

async fn rev_parse(mirror: &Mirror, rev: &str) -> Result<String, BisectError> {
    if rev.starts_with('-') || rev.is_empty() {
        return Err(BisectError::Invalid(format!("`{rev}` is not a commit")));
    }
    let (ok, out) = git(
        &mirror.path,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{rev}^{{commit}}"),
        ],
    )
    .await?;
    if !ok {
        return Err(BisectError::Invalid(format!(
            "`{rev}` is not a commit of {}",
            mirror.url
        )));
    }
    Ok(out.trim().to_owned())
}

/// The contents of `file` in `commit`'s tree, if it has one.
async fn tree_file(
    mirror: &Mirror,
    commit: &str,
    file: &str,
) -> Result<Option<String>, BisectError> {
    let (ok, out) = git(&mirror.path, &["show", &format!("{commit}:{file}")]).await?;
    Ok(ok.then_some(out))
}

/// What a confirmed regression brings to its bisection.
#[derive(Debug, Clone, Default)]
pub struct FromRegression {
    pub id: i64,
    pub signature: Option<String>,
    /// (cycles run, failed cycles) of the bad kernel: its measured rate.
    pub measured: Option<(i64, i64)>,
}

/// Starts a bisection; returns its id.
pub async fn start(deps: &Deps, req: &StartRequest, actor: &str) -> Result<i64, BisectError> {
    let id = start_for(deps, req, actor, None).await?;
    // Its first step is planned by the bisection worker's next round.
    deps.work.bisections_may_move();
    Ok(id)
}

async fn start_for(
    deps: &Deps,
    req: &StartRequest,
    actor: &str,
    regression: Option<&FromRegression>,
) -> Result<i64, BisectError> {
    let fleet = deps.fleet.current();
    let plan = fleet
        .plan(&req.plan)
        .ok_or_else(|| BisectError::Invalid(format!("unknown plan `{}`", req.plan)))?;
    if let Some(f) = &req.family
        && !plan
            .boards
            .iter()
            .any(|b| fleet.board(b).is_some_and(|b| b.family.as_str() == f))
    {
        return Err(BisectError::Invalid(format!(
            "plan `{}` has no board of family `{f}`",
            plan.name
        )));
    }
    if let Some(r) = req.rate
        && !(r > 0.0 && r <= 1.0)
    {
        return Err(BisectError::Invalid("rate must be within (0, 1]".into()));
    }
    let confidence = req.confidence.unwrap_or(0.99);
    if !(0.5..1.0).contains(&confidence) {
        return Err(BisectError::Invalid(
            "confidence must be within [0.5, 1)".into(),
        ));
    }
    let mirror = Mirror::for_url(&deps.data_dir, &req.tree);
    mirror
        .fetch()
        .await
        .map_err(|e| BisectError::Git(format!("mirroring {}: {e}", req.tree)))?;
    let good = rev_parse(&mirror, &req.good).await?;
    let bad = rev_parse(&mirror, &req.bad).await?;
    let (is_ancestor, _) = git(&mirror.path, &["merge-base", "--is-ancestor", &good, &bad]).await?;
    if !is_ancestor || good == bad {
        return Err(BisectError::Invalid(format!(
            "good {good} is not an ancestor of bad {bad}"
        )));
    }
    let (_, list) = git(
        &mirror.path,
        &["rev-list", "--count", &bad, &format!("^{good}")],
    )
    .await?;
    let n: f64 = list.trim().parse().unwrap_or(1.0);
    // Generous: skips and top-ups take steps too.
    let max_steps = req
        .max_steps
        .unwrap_or((n.max(2.0).log2().ceil() as u32) * 2 + 6) as i32;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO bisections (tree, branch, plan, family, good_sha, bad_sha, failure_rate, confidence, seed, max_steps, requested_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
    )
    .bind(&req.tree)
    .bind(req.branch.as_deref().unwrap_or("bisect"))
    .bind(&plan.name)
    .bind(&req.family)
    .bind(&good)
    .bind(&bad)
    .bind(req.rate)
    .bind(confidence)
    .bind(req.seed.unwrap_or(0) as i64)
    .bind(max_steps)
    .bind(actor)
    .fetch_one(&deps.pool)
    .await?;
    if let Some(r) = regression {
        let (cycles, failed) = r
            .measured
            .filter(|(c, f)| *c > 0 && *f > 0)
            .unwrap_or((0, 0));
        sqlx::query(
            "UPDATE bisections SET regression_id = $2, signature = $3, rate_cycles = $4, rate_failures = $5,
                    failure_rate = CASE WHEN $4 > 0 THEN $5::float8 / $4 ELSE NULL END
             WHERE id = $1",
        )
        .bind(id)
        .bind(r.id)
        .bind(&r.signature)
        .bind(cycles)
        .bind(failed)
        .execute(&deps.pool)
        .await?;
    }
    audit::record(
        &deps.pool,
        actor,
        "bisect-start",
        &format!("bisection {id}"),
        &format!("{} good {good} bad {bad} plan {}", req.tree, plan.name),
    )
    .await;
    tracing::info!(id, %good, %bad, plan = %plan.name, "bisection started");
    Ok(id)
}

pub async fn stop(deps: &Deps, id: i64, actor: &str) -> Result<(), BisectError> {
    let r = sqlx::query("UPDATE bisections SET state = $3, reason = $2, finished_at = now() WHERE id = $1 AND state = ANY($4)")
        .bind(id)
        .bind(format!("stopped by {actor}"))
        .bind(BisectionState::Stopped.as_str())
        .bind(BisectionState::sources_of(BisectionState::Stopped))
        .execute(&deps.pool)
        .await?;
    if r.rows_affected() == 0 {
        sqlx::query_scalar::<_, i64>("SELECT id FROM bisections WHERE id = $1")
            .bind(id)
            .fetch_optional(&deps.pool)
            .await?
            .ok_or(BisectError::NotFound(id))?;
        return Ok(());
    }
    // Its queued jobs are of no use any more.
    let runs: Vec<i64> = sqlx::query_scalar(
        "SELECT unnest(runs) FROM bisect_steps WHERE bisection_id = $1 AND verdict IS NULL",
    )
    .bind(id)
    .fetch_all(&deps.pool)
    .await?;
    let jobs: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM jobs WHERE run_id = ANY($1) AND state = 'queued'")
            .bind(&runs)
            .fetch_all(&deps.pool)
            .await?;
    for job in jobs {
        let _ = crate::domain::jobs::cancel(&deps.pool, job, "the bisection was stopped").await;
    }
    audit::record(
        &deps.pool,
        actor,
        "bisect-stop",
        &format!("bisection {id}"),
        "",
    )
    .await;
    Ok(())
}

/// The bisections still running, oldest first.
pub async fn running(pool: &PgPool) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM bisections WHERE state = $1 ORDER BY id")
        .bind(BisectionState::Running.as_str())
        .fetch_all(pool)
        .await
}

/// Confirmed regressions on watched trees (whose mirror the server keeps)
/// get a bisection from their good to their bad kernel, on their family.
pub async fn adopt_regressions(
    deps: &Deps,
    asked: &mut std::collections::HashMap<String, std::time::Instant>,
) -> Result<(), BisectError> {
    let fleet = deps.fleet.current();
    if fleet.trees.is_empty() {
        return Ok(());
    }
    let rows = sqlx::query(
        "SELECT r.id, r.tree, r.branch, r.family, r.plan, r.signature, g.commit_sha AS good, k.commit_sha AS bad,
                kr.cycles_run, kr.failed_cycles
         FROM regressions r
         JOIN kernels k ON k.id = r.bad_kernel_id
         JOIN kernels g ON g.id = r.good_kernel_id
         LEFT JOIN kernel_results kr ON kr.kernel_id = r.bad_kernel_id AND kr.family = r.family AND kr.plan = r.plan
         WHERE r.state = 'confirmed' AND NOT EXISTS (SELECT 1 FROM bisections b WHERE b.regression_id = r.id)
         ORDER BY r.id",
    )
    .fetch_all(&deps.pool)
    .await?;
    for row in rows {
        let tree: String = row.get("tree");
        // Only watched trees, once the mirror worker has cloned them (a
        // first clone can take long; it is not done from here).
        if !fleet.trees.iter().any(|t| t.matches_url(&tree)) {
            continue;
        }
        if !Mirror::for_url(&deps.data_dir, &tree)
            .path
            .join("HEAD")
            .exists()
        {
            if asked
                .get(&tree)
                .is_none_or(|t| t.elapsed() > Duration::from_secs(600))
            {
                deps.mirrors.request(&tree);
                asked.insert(tree.clone(), std::time::Instant::now());
            }
            continue;
        }
        let regression = FromRegression {
            id: row.get("id"),
            signature: row.get("signature"),
            measured: row
                .get::<Option<i64>, _>("cycles_run")
                .zip(row.get::<Option<i64>, _>("failed_cycles")),
        };
        let req = StartRequest {
            tree: tree.clone(),
            branch: Some(row.get("branch")),
            good: row.get("good"),
            bad: row.get("bad"),
            plan: row.get("plan"),
            family: Some(row.get("family")),
            rate: None,
            confidence: None,
            seed: None,
            max_steps: None,
        };
        let actor = format!("auto:regression {}", regression.id);
        match start_for(deps, &req, &actor, Some(&regression)).await {
            Ok(id) => tracing::info!(
                regression = regression.id,
                bisection = id,
                "bisecting a confirmed regression"
            ),
            Err(BisectError::Db(e)) => return Err(BisectError::Db(e)),
            Err(e) => {
                // Recorded as a failed bisection, so it is not retried in a loop.
                tracing::warn!(
                    regression = regression.id,
                    "cannot bisect the regression: {e}"
                );
                sqlx::query(
                    "INSERT INTO bisections (tree, branch, plan, family, good_sha, bad_sha, state, confidence, max_steps, requested_by, reason, regression_id, finished_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $10, 0.99, 0, $7, $8, $9, now())",
                )
                .bind(&tree)
                .bind(req.branch.as_deref().unwrap_or(""))
                .bind(&req.plan)
                .bind(&req.family)
                .bind(&req.good)
                .bind(&req.bad)
                .bind(&actor)
                .bind(e.to_string())
                .bind(regression.id)
                .bind(BisectionState::Failed.as_str())
                .execute(&deps.pool)
                .await?;
            }
        }
    }
    Ok(())
}

pub async fn finish(
    pool: &PgPool,
    id: i64,
    to: BisectionState,
    first_bad: Option<&str>,
    candidates: &[String],
    reason: &str,
) -> Result<(), sqlx::Error> {
    // Probability that no good call missed the bug.
    let conf: Option<f64> = sqlx::query_scalar(
        "SELECT exp(sum(ln(GREATEST(confidence, 1e-12)))) FROM bisect_steps WHERE bisection_id = $1 AND verdict = 'good'",
    )
    .bind(id)
    .fetch_one(pool)
    .await?;
    let ended = sqlx::query(
        "UPDATE bisections SET state = $2, first_bad_sha = $3, candidates = $4, reason = $5, result_confidence = $6,
                finished_at = now()
         WHERE id = $1 AND state = ANY($7)",
    )
    .bind(id)
    .bind(to.as_str())
    .bind(first_bad)
    .bind(candidates)
    .bind(reason)
    .bind(conf.or(Some(1.0)))
    .bind(BisectionState::sources_of(to))
    .execute(pool)
    .await?
    .rows_affected();
    if ended == 0 {
        // Stopped (or ended by another server) meanwhile: its end stands.
        return Ok(());
    }
    if let (Some(first_bad), Some(regression)) = (
        first_bad,
        sqlx::query_scalar::<_, Option<i64>>("SELECT regression_id FROM bisections WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await?,
    ) {
        crate::domain::regressions::mark_bisected(
            pool,
            regression,
            &format!("bisection {id}: first bad commit {first_bad}"),
        )
        .await?;
    }
    tracing::info!(
        bisection = id,
        state = to.as_str(),
        first_bad,
        reason,
        "bisection ended"
    );
    audit::record(
        pool,
        "bisect-worker",
        "bisect-end",
        &format!("bisection {id}"),
        &format!("{}: {reason}", to.as_str()),
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod bisection_state_tests {
    use super::BisectionState::{self, *};
    use crate::domain::lifecycle::{StateMachine, assert_well_formed};

    #[test]
    fn a_bisection_ends_once() {
        assert_well_formed::<BisectionState>();
        for &to in BisectionState::ALL {
            for &end in &BisectionState::ALL[1..] {
                assert!(!end.can_move_to(to), "{end:?} is final");
            }
        }
        assert_eq!(BisectionState::sources_of(Stopped), ["running"]);
        assert!(BisectionState::sources_of(Running).is_empty());
    }
}
