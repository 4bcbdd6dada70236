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

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use armfleet_protocol::{JobSpec, KernelRef, Task};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Row};

use crate::domain::Deps;
use crate::domain::audit;
use crate::domain::jobs::JobState;
use crate::domain::lifecycle::StateMachine;
use crate::domain::mirror::Mirror;
use crate::domain::runs::{self, KernelInput};

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
    start_for(deps, req, actor, None).await
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

async fn load(pool: &PgPool, id: i64) -> Result<Option<BisectionRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM bisections WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

async fn steps(pool: &PgPool, id: i64) -> Result<Vec<StepRow>, sqlx::Error> {
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

/// The rate used to plan cycles: a conservative (lower) estimate, so that
/// a good call is at least as sure as stated.
///
/// The bound is one-sided at the bisection's own confidence. Calibration
/// stops as soon as the bug has shown a few times, which biases the raw
/// estimate upwards; a loose bound (it was the two-sided 90% one) let a
/// lucky calibration of a 1% bug at 4/85 plan 321 cycles per good call,
/// and a bad commit then ran clean through them one time in 25.
fn planning_rate(b: &BisectionRow) -> f64 {
    if b.rate_cycles > 0 {
        let two_sided = (2.0 * b.confidence - 1.0).clamp(0.5, 0.999_999);
        let (low, _) = armfleet_stats::wilson_interval(
            b.rate_failures as u64,
            b.rate_cycles as u64,
            two_sided,
        );
        low.clamp(1e-4, 1.0)
    } else {
        b.failure_rate.unwrap_or(0.01).clamp(1e-4, 1.0)
    }
}

pub async fn advance(deps: &Deps, id: i64) -> Result<(), BisectError> {
    let pool = &deps.pool;
    let Some(b) = load(pool, id).await? else {
        return Ok(());
    };
    if b.state != BisectionState::Running.as_str() {
        return Ok(());
    }
    let all = steps(pool, id).await?;
    let mirror = Mirror::for_url(&deps.data_dir, &b.tree);
    if let Some(open) = all.iter().find(|s| s.verdict.is_none()) {
        return judge(deps, &b, open).await;
    }
    if b.failure_rate.is_none() {
        return open_step(
            deps,
            &b,
            &mirror,
            all.len() as i32 + 1,
            &b.bad_sha,
            "calibrate",
        )
        .await;
    }
    // Where the first bad commit can still be.
    let mut goods = vec![b.good_sha.clone()];
    let mut bad = b.bad_sha.clone();
    let mut skipped: HashSet<String> = HashSet::new();
    for s in all.iter().filter(|s| s.kind == "test") {
        match s.verdict.as_deref() {
            Some("good") => goods.push(s.commit_sha.clone()),
            Some("bad") => bad = s.commit_sha.clone(),
            Some("skip") => {
                skipped.insert(s.commit_sha.clone());
            }
            _ => {}
        }
    }
    let mut args = vec!["rev-list".to_owned(), bad.clone()];
    args.extend(goods.iter().map(|g| format!("^{g}")));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out) = git(&mirror.path, &argv).await?;
    if !ok {
        return Err(BisectError::Git("rev-list failed".into()));
    }
    let candidates: Vec<String> = out.lines().map(str::to_owned).collect();
    let open: Vec<&String> = candidates
        .iter()
        .filter(|c| **c != bad && !skipped.contains(*c))
        .collect();
    if open.is_empty() {
        let rest: Vec<String> = candidates.iter().filter(|c| **c != bad).cloned().collect();
        if rest.is_empty() {
            finish(
                pool,
                id,
                BisectionState::Found,
                Some(&bad),
                &[],
                &format!("{bad} is the first bad commit"),
            )
            .await?;
        } else {
            let mut list = rest.clone();
            list.push(bad.clone());
            finish(
                pool,
                id,
                BisectionState::Ambiguous,
                None,
                &list,
                "only skipped commits are left: the first bad commit is one of the candidates",
            )
            .await?;
        }
        return Ok(());
    }
    let tested = all.iter().filter(|s| s.kind == "test").count() as i32;
    if tested >= b.max_steps {
        finish(
            pool,
            id,
            BisectionState::Failed,
            None,
            &candidates,
            &format!("step budget of {} spent", b.max_steps),
        )
        .await?;
        return Ok(());
    }
    args[0] = "rev-list".into();
    args.insert(1, "--bisect-all".into());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_, out) = git(&mirror.path, &argv).await?;
    let pick = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .find(|c| *c != bad && !skipped.contains(*c))
        .map(str::to_owned)
        .ok_or_else(|| BisectError::Git("rev-list --bisect-all gave no candidate".into()))?;
    open_step(deps, &b, &mirror, all.len() as i32 + 1, &pick, "test").await
}

/// Opens a step on `commit`: a skip if it does not build, else a run.
async fn open_step(
    deps: &Deps,
    b: &BisectionRow,
    mirror: &Mirror,
    step: i32,
    commit: &str,
    kind: &str,
) -> Result<(), BisectError> {
    let pool = &deps.pool;
    if kind == "test" && tree_file(mirror, commit, BUILD_FAILS_FILE).await?.is_some() {
        sqlx::query(
            "INSERT INTO bisect_steps (bisection_id, step, commit_sha, kind, verdict, evidence, decided_at)
             VALUES ($1, $2, $3, 'test', 'skip', $4, now())",
        )
        .bind(b.id)
        .bind(step)
        .bind(commit)
        .bind(serde_json::json!({"build": "failed", "why": format!("simulated build failure: the tree has {BUILD_FAILS_FILE}")}))
        .execute(pool)
        .await?;
        tracing::info!(bisection = b.id, commit, "build failed: skipped");
        return Ok(());
    }
    let fleet = deps.fleet.current();
    let Some(plan) = fleet.plan(&b.plan) else {
        return Err(BisectError::Invalid(format!(
            "plan `{}` is no longer in fleet.toml",
            b.plan
        )));
    };
    let needed = if kind == "calibrate" {
        plan.params.cycles as u64 * plan.boards.len().max(1) as u64
    } else {
        armfleet_stats::cycles_for_confidence(planning_rate(b), b.confidence).min(1_000_000)
    };
    let Some(run) = plan_cycles(deps, b, mirror, commit, needed, step, 0).await? else {
        return Ok(()); // no healthy board now; tried again on the next tick
    };
    sqlx::query(
        "INSERT INTO bisect_steps (bisection_id, step, commit_sha, kind, runs, cycles_needed) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(b.id)
    .bind(step)
    .bind(commit)
    .bind(kind)
    .bind(vec![run])
    .bind(needed as i64)
    .execute(pool)
    .await?;
    tracing::info!(
        bisection = b.id,
        step,
        commit,
        kind,
        cycles = needed,
        run,
        "bisect step"
    );
    Ok(())
}

/// Plans `cycles` of the plan on `commit`, spread over the healthy boards.
async fn plan_cycles(
    deps: &Deps,
    b: &BisectionRow,
    mirror: &Mirror,
    commit: &str,
    cycles: u64,
    step: i32,
    attempt: usize,
) -> Result<Option<i64>, BisectError> {
    let fleet = deps.fleet.current();
    let plan = fleet
        .plan(&b.plan)
        .ok_or_else(|| BisectError::Invalid(format!("plan `{}` is gone", b.plan)))?;
    let online: Vec<String> =
        sqlx::query_scalar("SELECT name FROM boards WHERE state IN ('idle', 'busy')")
            .fetch_all(&deps.pool)
            .await?;
    let boards: Vec<String> = plan
        .boards
        .iter()
        .filter(|name| online.contains(name))
        .filter(|name| match &b.family {
            Some(f) => fleet.board(name).is_some_and(|x| x.family.as_str() == f),
            None => true,
        })
        .cloned()
        .collect();
    if boards.is_empty() {
        return Ok(None);
    }
    let per_board = cycles
        .div_ceil(boards.len() as u64)
        .clamp(1, u32::MAX as u64) as u32;
    let bug_file_rate = tree_file(mirror, commit, BUG_FILE)
        .await?
        .map(|p| p.trim().parse::<f64>().unwrap_or(1.0).clamp(0.0, 1.0));
    // One step's parameters on one board (its family profile fills what
    // the plan left unset).
    let params_on = |board: &str| {
        let mut params = plan.params_for(commit, board);
        params.cycles = per_board;
        if let Some(rate) = bug_file_rate {
            params.replay_abort_probability = rate;
        }
        params.seed = params
            .seed
            .wrapping_add(b.seed as u64)
            .wrapping_mul(1_000_003)
            .wrapping_add((b.id as u64) << 20 | (step as u64) << 4 | attempt as u64);
        params
    };
    let kernel = KernelInput {
        tree: b.tree.clone(),
        branch: b.branch.clone(),
        commit: commit.to_owned(),
        ..Default::default()
    };
    let origin = format!("bisect:{}", b.id);
    let mut tx = deps.pool.begin().await?;
    let kernel_id = runs::record_kernel(&mut tx, &kernel).await?;
    let run_id =
        runs::insert_run(&mut tx, kernel_id, Some(&plan.name), &origin, None, None).await?;
    // A plan that builds its kernel builds each bisected commit (cached per
    // commit and config) and boots it before the step's jobs run.
    let build_id = match &plan.build {
        Some(cfg) => {
            Some(crate::domain::builds::request(&mut tx, &kernel.tree, commit, cfg).await?)
        }
        None => None,
    };
    for board in &boards {
        let spec = JobSpec {
            kernel: KernelRef {
                tree: kernel.tree.clone(),
                branch: kernel.branch.clone(),
                commit: commit.to_owned(),
            },
            plan: plan.name.clone(),
            timeout_s: plan.timeout_s,
            task: Task::MigrateCancel(params_on(board)),
            build_id,
        };
        crate::domain::jobs::insert_queued(
            &mut tx, run_id, kernel_id, board, &plan.name, &spec, None, 1,
        )
        .await?;
    }
    tx.commit().await?;
    deps.work.work_arrived(&boards).await;
    Ok(Some(run_id))
}

async fn judge(deps: &Deps, b: &BisectionRow, s: &StepRow) -> Result<(), BisectError> {
    let pool = &deps.pool;
    let rows = sqlx::query(
        "SELECT id, state, reason, cycles_completed, analyzed_at IS NOT NULL AS analysed,
                COALESCE(EXTRACT(EPOCH FROM finished_at - started_at), 0)::float8 AS secs
         FROM jobs WHERE run_id = ANY($1)",
    )
    .bind(&s.runs)
    .fetch_all(pool)
    .await?;
    // A commit that does not build, or boots on none of the boards, is
    // skipped as `git bisect skip` would.
    let build_failed: Option<(i64, Option<String>)> = sqlx::query_as(
        "SELECT b.id, b.error FROM builds b WHERE b.state = 'failed'
           AND b.id IN (SELECT build_id FROM jobs WHERE run_id = ANY($1)) LIMIT 1",
    )
    .bind(&s.runs)
    .fetch_optional(pool)
    .await?;
    let cancelled_for = |prefix: &str| {
        !rows.is_empty()
            && rows.iter().all(|r| {
                r.get::<&str, _>("state") == "cancelled"
                    && r.get::<Option<String>, _>("reason")
                        .is_some_and(|x| x.starts_with(prefix))
            })
    };
    let unbootable = if let Some((build, error)) = build_failed {
        Some(serde_json::json!({"build": build, "build_state": "failed", "why": error}))
    } else if cancelled_for("boot_failed") {
        Some(
            serde_json::json!({"boot": "failed", "why": "the commit booted on none of the step's boards"}),
        )
    } else {
        None
    };
    if let Some(evidence) = unbootable {
        if s.kind == "calibrate" {
            finish(
                pool,
                b.id,
                BisectionState::Failed,
                None,
                &[],
                "the bad commit itself cannot be built or booted",
            )
            .await?;
            return Ok(());
        }
        tracing::info!(bisection = b.id, commit = %s.commit_sha, %evidence, "cannot build or boot: skipped");
        return decide(pool, b, s, "skip", 0, 0, None, 0.0, evidence).await;
    }
    if rows.iter().any(|r| {
        let st: &str = r.get("state");
        JobState::parse(st).is_some_and(|j| !j.is_terminal())
            || (st != "cancelled" && !r.get::<bool, _>("analysed"))
    }) {
        return Ok(()); // still running, or not triaged yet
    }
    let jobs: Vec<i64> = rows.iter().map(|r| r.get("id")).collect();
    let failed_jobs: Vec<i64> = rows
        .iter()
        .filter(|r| r.get::<&str, _>("state") == "failed")
        .map(|r| r.get("id"))
        .collect();
    let cycles: i64 = rows
        .iter()
        .map(|r| {
            r.get::<i32, _>("cycles_completed") as i64
                + i64::from(r.get::<&str, _>("state") == "failed")
        })
        .sum();
    let secs: f64 = rows.iter().map(|r| r.get::<f64, _>("secs")).sum();
    // Fatal findings of the step's failed jobs: (job, signature, title).
    let fatal: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT job_id, signature, title FROM findings WHERE job_id = ANY($1) AND fatal ORDER BY job_id, ordinal",
    )
    .bind(&failed_jobs)
    .fetch_all(pool)
    .await?;
    // One entry per (job, signature): a job counts once per signature.
    let mut per_job_sig: Vec<(i64, String, String)> = Vec::new();
    for f in fatal {
        if !per_job_sig
            .iter()
            .any(|(j, sig, _)| *j == f.0 && *sig == f.1)
        {
            per_job_sig.push(f);
        }
    }
    // `cycles`, `secs` and the findings cover every run of the step so far.
    if s.kind == "calibrate" {
        let signature = b.signature.clone().or_else(|| {
            let mut counts: std::collections::HashMap<&str, usize> = Default::default();
            for (_, sig, _) in &per_job_sig {
                *counts.entry(sig.as_str()).or_default() += 1;
            }
            counts
                .into_iter()
                .max_by_key(|(_, n)| *n)
                .map(|(s, _)| s.to_owned())
        });
        let failures = per_job_sig
            .iter()
            .filter(|(_, sig, _)| Some(sig) == signature.as_ref())
            .count() as i64;
        let rounds = s.runs.len();
        sqlx::query("UPDATE bisections SET rate_cycles = $2, rate_failures = $3, signature = $4 WHERE id = $1")
            .bind(b.id).bind(cycles).bind(failures).bind(&signature).execute(pool).await?;
        if failures < MIN_CALIBRATION_FAILURES && rounds < MAX_CALIBRATION_ROUNDS {
            if let Some(run) = plan_cycles(
                deps,
                b,
                &Mirror::for_url(&deps.data_dir, &b.tree),
                &s.commit_sha,
                s.cycles_needed as u64,
                s.step,
                rounds,
            )
            .await?
            {
                sqlx::query("UPDATE bisect_steps SET runs = array_append(runs, $3), cycles_run = $4, failures = $5, board_seconds = $6 WHERE bisection_id = $1 AND step = $2")
                    .bind(b.id).bind(s.step).bind(run).bind(cycles).bind(failures).bind(secs).execute(pool).await?;
            }
            return Ok(());
        }
        if failures == 0 {
            decide(
                pool,
                b,
                s,
                "skip",
                cycles,
                0,
                None,
                secs,
                serde_json::json!({"jobs": jobs, "why": "the bad commit did not reproduce"}),
            )
            .await?;
            finish(
                pool,
                b.id,
                BisectionState::Failed,
                None,
                &[],
                &format!(
                    "the bad commit {} did not fail in {cycles} cycles",
                    b.bad_sha
                ),
            )
            .await?;
            return Ok(());
        }
        let rate = failures as f64 / cycles.max(1) as f64;
        sqlx::query("UPDATE bisections SET failure_rate = $2 WHERE id = $1")
            .bind(b.id)
            .bind(rate)
            .execute(pool)
            .await?;
        let titles: Vec<&String> = per_job_sig.iter().map(|(_, _, t)| t).collect();
        return decide(pool, b, s, "bad", cycles, failures, None, secs, serde_json::json!({
            "jobs": jobs, "rate": rate, "cycles": cycles, "failures": failures, "signature": signature, "titles": titles,
        }))
        .await;
    }
    let matching: Vec<&(i64, String, String)> = per_job_sig
        .iter()
        .filter(|(_, sig, _)| b.signature.as_ref().is_none_or(|want| want == sig))
        .collect();
    let failures = matching.len() as i64;
    if failures > 0 {
        let titles: Vec<&String> = matching.iter().map(|(_, _, t)| t).collect();
        let failing: Vec<i64> = matching.iter().map(|(j, _, _)| *j).collect();
        return decide(
            pool,
            b,
            s,
            "bad",
            cycles,
            failures,
            None,
            secs,
            serde_json::json!({
                "jobs": jobs, "failing_jobs": failing, "titles": titles, "signature": b.signature,
            }),
        )
        .await;
    }
    let clean = cycles;
    if clean >= s.cycles_needed {
        let p = planning_rate(b);
        let conf = 1.0 - (1.0 - p).powf(clean as f64);
        let other: Vec<&String> = per_job_sig.iter().map(|(_, _, t)| t).collect();
        return decide(
            pool,
            b,
            s,
            "good",
            clean,
            0,
            Some(conf),
            secs,
            serde_json::json!({
                "jobs": jobs, "clean_cycles": clean, "rate": p, "other_failures": other,
            }),
        )
        .await;
    }
    // Lab failures cut the cycles short: top up, a few times.
    if s.runs.len() <= MAX_TOPUPS {
        let mirror = Mirror::for_url(&deps.data_dir, &b.tree);
        if let Some(run) = plan_cycles(
            deps,
            b,
            &mirror,
            &s.commit_sha,
            (s.cycles_needed - clean) as u64,
            s.step,
            s.runs.len(),
        )
        .await?
        {
            sqlx::query("UPDATE bisect_steps SET runs = array_append(runs, $3), cycles_run = $4, board_seconds = $5 WHERE bisection_id = $1 AND step = $2")
                .bind(b.id).bind(s.step).bind(run).bind(clean).bind(secs).execute(pool).await?;
        }
        return Ok(());
    }
    decide(pool, b, s, "skip", clean, 0, None, secs, serde_json::json!({
        "jobs": jobs, "why": format!("only {clean} of {} clean cycles could be run (lab failures)", s.cycles_needed),
    }))
    .await
}

#[allow(clippy::too_many_arguments)]
async fn decide(
    pool: &PgPool,
    b: &BisectionRow,
    s: &StepRow,
    verdict: &str,
    cycles: i64,
    failures: i64,
    confidence: Option<f64>,
    secs: f64,
    evidence: serde_json::Value,
) -> Result<(), BisectError> {
    sqlx::query(
        "UPDATE bisect_steps SET verdict = $3, cycles_run = $4, failures = $5, confidence = $6, board_seconds = $7, evidence = $8, decided_at = now()
         WHERE bisection_id = $1 AND step = $2 AND verdict IS NULL",
    )
    .bind(b.id)
    .bind(s.step)
    .bind(verdict)
    .bind(cycles)
    .bind(failures)
    .bind(confidence)
    .bind(secs)
    .bind(evidence)
    .execute(pool)
    .await?;
    sqlx::query("UPDATE bisections SET board_seconds = (SELECT COALESCE(sum(board_seconds), 0) FROM bisect_steps WHERE bisection_id = $1) WHERE id = $1")
        .bind(b.id)
        .execute(pool)
        .await?;
    tracing::info!(bisection = b.id, step = s.step, commit = %s.commit_sha, verdict, cycles, failures, "bisect step decided");
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
