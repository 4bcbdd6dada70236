//! One bisection step at a time: plan how many cycles a good call needs,
//! open the step (its run of jobs), and judge it when its jobs have ended.

use std::collections::HashSet;

use armfleet_protocol::{JobSpec, KernelRef, Task};
use sqlx::{PgPool, Row};

use super::*;
use crate::domain::Deps;
use crate::domain::jobs::JobState;
use crate::domain::mirror::Mirror;
use crate::domain::runs::{self, KernelInput};

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
