//! `/kernels`, `/kernels/{id}` and `/matrix`: what was tested, what the
//! evidence says, and against which baseline.

use std::collections::BTreeSet;

use askama::Template;
use axum::extract::{Path, State};
use axum::response::Html;

use super::boards::JobLine;
use super::plot::{self, Plot, TrendInput};
use super::util::{
    PageError, Pager, Params, ago, bad_request, family_name, not_found, offset, pct, pct_range,
    render, short, verdict_rank, wilson95,
};
use super::{fleet, logview};
use crate::domain::results::KernelResult;
use crate::domain::runs::KernelSummary;
use crate::domain::verdicts::{self, VerdictRow};
use crate::domain::{findings, jobs, results, runs};
use crate::wiring::state::AppState;

const KERNELS_PER_PAGE: i64 = 50;
const MATRIX_KERNELS: i64 = 30;
const KERNEL_JOBS_PER_PAGE: i64 = 100;

/// A verdict for display: CSS class suffix and label.
pub struct Badge {
    pub class: String,
    pub label: String,
}

impl Badge {
    fn of(v: &str) -> Badge {
        Badge {
            class: format!("v-{v}"),
            label: v.to_owned(),
        }
    }
    fn running() -> Badge {
        Badge {
            class: "v-running".into(),
            label: "running".into(),
        }
    }
    fn none() -> Badge {
        Badge {
            class: "v-none".into(),
            label: "no verdict yet".into(),
        }
    }
}

/// One kernel in a list: its verdict and the evidence in one line.
pub struct KernelLine {
    pub id: i64,
    pub commit: String,
    pub commit_short: String,
    pub tree: String,
    pub branch: String,
    pub subject: String,
    pub created: String,
    pub simulated: bool,
    pub jobs_total: i64,
    pub jobs_active: i64,
    pub badge: Badge,
    /// Jobs still queued or running (shown next to a verdict).
    pub running: bool,
    pub evidence: String,
    pub rate: f64,
    pub lo: f64,
    pub hi: f64,
    pub cycles: i64,
}

/// "3/1200 cycles failed (0.25%, 95% CI 0.09–0.73%)".
fn evidence_text(failed: i64, cycles: i64, ci: (f64, f64)) -> String {
    let rate = if cycles > 0 {
        failed as f64 / cycles as f64
    } else {
        0.0
    };
    format!(
        "{failed}/{cycles} cycles failed ({}, 95% CI {})",
        pct(rate),
        pct_range(ci.0, ci.1)
    )
}

fn verdict_evidence(v: &VerdictRow) -> String {
    let mut s = format!(
        "{} on {}: {}",
        v.verdict,
        family_name(&v.family),
        evidence_text(v.failed_cycles, v.cycles_run, (v.ci_low, v.ci_high))
    );
    if let Some(p) = v.p_value {
        s.push_str(&format!(", p = {}", fmt_p(p)));
    }
    if let Some(b) = &v.baseline_commit {
        s.push_str(&format!(
            " vs {} ({}/{})",
            short(b),
            v.baseline_failed,
            v.baseline_cycles
        ));
    }
    s
}

pub fn fmt_p(p: f64) -> String {
    if p < 0.0001 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

/// The most alarming verdict; among equals, the strongest evidence.
fn worst_verdict<'a>(verdicts: &[&'a VerdictRow]) -> Option<&'a VerdictRow> {
    verdicts.iter().copied().min_by(|a, b| {
        verdict_rank(&a.verdict)
            .cmp(&verdict_rank(&b.verdict))
            .then(
                a.p_value
                    .unwrap_or(1.0)
                    .total_cmp(&b.p_value.unwrap_or(1.0)),
            )
    })
}

pub fn kernel_line(k: KernelSummary, verdicts: &[&VerdictRow]) -> KernelLine {
    let running = k.jobs_active > 0;
    let (lo, hi) = wilson95(k.failed_cycles, k.cycles_run);
    let rate = if k.cycles_run > 0 {
        k.failed_cycles as f64 / k.cycles_run as f64
    } else {
        0.0
    };
    let worst = worst_verdict(verdicts);
    let (badge, evidence) = match worst {
        Some(v) => {
            let mut e = verdict_evidence(v);
            let others = verdicts.len() - 1;
            if others > 0 {
                e.push_str(&format!(
                    "; {others} more family/plan verdict{}",
                    if others == 1 { "" } else { "s" }
                ));
            }
            (Badge::of(&v.verdict), e)
        }
        None if k.cycles_run > 0 => (
            if running {
                Badge::running()
            } else {
                Badge::none()
            },
            format!(
                "{} (Wilson; no baseline comparison yet)",
                evidence_text(k.failed_cycles, k.cycles_run, (lo, hi))
            ),
        ),
        None if running => (
            Badge::running(),
            format!(
                "{} job{} queued or running",
                k.jobs_active,
                if k.jobs_active == 1 { "" } else { "s" }
            ),
        ),
        None => (Badge::none(), "no cycles recorded".into()),
    };
    KernelLine {
        id: k.id,
        commit_short: short(&k.commit_sha),
        commit: k.commit_sha,
        tree: k.tree,
        branch: k.branch,
        subject: k.subject.unwrap_or_default(),
        created: ago(Some(k.created_at)),
        simulated: k.simulated,
        jobs_total: k.jobs_total,
        jobs_active: k.jobs_active,
        running: running && worst.is_some(),
        badge,
        evidence,
        rate,
        lo,
        hi,
        cycles: k.cycles_run,
    }
}

async fn known_plans(state: &AppState) -> Result<Vec<String>, PageError> {
    let mut plans: BTreeSet<String> = state
        .fleet
        .current()
        .plans
        .iter()
        .map(|p| p.name.clone())
        .collect();
    plans.extend(results::plans(&state.pool).await?);
    Ok(plans.into_iter().collect())
}

pub struct BranchChoice {
    pub tree: String,
    pub branch: String,
    pub count: i64,
    pub href: String,
    pub selected: bool,
}

async fn branch_choices(
    state: &AppState,
    tree: Option<&str>,
    branch: Option<&str>,
    base: &str,
) -> Result<Vec<BranchChoice>, PageError> {
    Ok(runs::branches(&state.pool)
        .await?
        .into_iter()
        .map(|(t, b, count)| BranchChoice {
            href: format!(
                "{base}?tree={}&branch={}",
                super::util::url_encode(&t),
                super::util::url_encode(&b)
            ),
            selected: tree == Some(t.as_str()) && branch == Some(b.as_str()),
            tree: t,
            branch: b,
            count,
        })
        .collect())
}

#[derive(Template)]
#[template(path = "kernels.html")]
struct KernelsPage {
    kernels: Vec<KernelLine>,
    pager: Pager,
    tree: String,
    branch: String,
    plan: String,
    plans: Vec<String>,
    branches: Vec<BranchChoice>,
    plot: Option<Plot>,
}

pub async fn kernels_page(
    State(state): State<AppState>,
    params: Params,
) -> Result<Html<String>, PageError> {
    params.allow(&["tree", "branch", "plan", "page"])?;
    let plans = known_plans(&state).await?;
    let (tree, branch, plan, page) = (
        params.tree()?,
        params.branch()?,
        params.plan(&plans)?,
        params.page("page")?,
    );
    let pool = &state.pool;
    let mut rows = runs::kernel_summaries(
        pool,
        tree,
        branch,
        plan,
        KERNELS_PER_PAGE + 1,
        offset(page, KERNELS_PER_PAGE),
    )
    .await?;
    let pager = Pager::new(
        &mut rows,
        page,
        KERNELS_PER_PAGE,
        "page",
        &[("tree", tree), ("branch", branch), ("plan", plan)],
    );
    let ids: Vec<i64> = rows.iter().map(|k| k.id).collect();
    let verdicts = verdicts::for_kernels(pool, &ids, plan).await?;
    let kernels: Vec<KernelLine> = rows
        .into_iter()
        .map(|k| {
            let v: Vec<&VerdictRow> = verdicts.iter().filter(|v| v.kernel_id == k.id).collect();
            kernel_line(k, &v)
        })
        .collect();
    // The trend along one branch: oldest left, kernels with cycles only.
    let plot = branch.map(|b| {
        let points: Vec<TrendInput> = kernels
            .iter()
            .rev()
            .filter(|k| k.cycles > 0)
            .map(|k| TrendInput {
                kernel_id: k.id,
                label: k.commit_short.chars().take(7).collect(),
                rate: k.rate,
                lo: k.lo,
                hi: k.hi,
                class: k.badge.class.clone(),
                detail: format!("{}; {}", k.badge.label, k.evidence),
            })
            .collect();
        plot::trend(
            &points,
            &format!("Failure rate per kernel on {b} (95% Wilson CI)"),
        )
    });
    let branches = branch_choices(&state, tree, branch, "/kernels").await?;
    render(&KernelsPage {
        kernels,
        pager,
        tree: tree.unwrap_or("").to_owned(),
        branch: branch.unwrap_or("").to_owned(),
        plan: plan.unwrap_or("").to_owned(),
        plans,
        branches,
        plot,
    })
}

// ---- the regression matrix ----

pub struct Cell {
    pub present: bool,
    pub class: String,
    pub label: String,
    pub rate: String,
    pub title: String,
    pub href: String,
}

pub struct MatrixRow {
    pub kernel: KernelLine,
    pub cells: Vec<Cell>,
}

#[derive(Template)]
#[template(path = "matrix.html")]
struct MatrixPage {
    families: Vec<(String, String)>,
    rows: Vec<MatrixRow>,
    pager: Pager,
    tree: String,
    branch: String,
    plan: String,
    plans: Vec<String>,
    branches: Vec<BranchChoice>,
}

fn cell(
    kernel: i64,
    family: &str,
    results: &[&KernelResult],
    verdicts: &[&VerdictRow],
    active: bool,
) -> Cell {
    let href = format!("/kernels/{kernel}#family-{family}");
    let cycles: i64 = results.iter().map(|r| r.cycles_run).sum();
    let failed: i64 = results.iter().map(|r| r.failed_cycles).sum();
    let worst = worst_verdict(verdicts);
    if results.is_empty() && worst.is_none() {
        return Cell {
            present: false,
            class: if active {
                "v-running".into()
            } else {
                "v-empty".into()
            },
            label: if active {
                "running".into()
            } else {
                String::new()
            },
            rate: String::new(),
            title: if active {
                "jobs queued or running, no results yet".into()
            } else {
                "not tested on this family".into()
            },
            href,
        };
    }
    let (lo, hi) = wilson95(failed, cycles);
    let rate = if cycles > 0 {
        failed as f64 / cycles as f64
    } else {
        0.0
    };
    match worst {
        Some(v) => Cell {
            present: true,
            class: format!("v-{}", v.verdict),
            label: v.verdict.clone(),
            rate: pct(v.rate),
            title: verdict_evidence(v),
            href,
        },
        None => Cell {
            present: true,
            class: if failed > 0 {
                "v-failing".into()
            } else if active {
                "v-running".into()
            } else {
                "v-none".into()
            },
            label: if active {
                "running".into()
            } else {
                "no verdict".into()
            },
            rate: pct(rate),
            title: evidence_text(failed, cycles, (lo, hi)),
            href,
        },
    }
}

pub async fn matrix_page(
    State(state): State<AppState>,
    params: Params,
) -> Result<Html<String>, PageError> {
    params.allow(&["tree", "branch", "plan", "page"])?;
    let plans = known_plans(&state).await?;
    let (tree, branch, plan, page) = (
        params.tree()?,
        params.branch()?,
        params.plan(&plans)?,
        params.page("page")?,
    );
    let pool = &state.pool;
    let mut rows = runs::kernel_summaries(
        pool,
        tree,
        branch,
        plan,
        MATRIX_KERNELS + 1,
        offset(page, MATRIX_KERNELS),
    )
    .await?;
    let pager = Pager::new(
        &mut rows,
        page,
        MATRIX_KERNELS,
        "page",
        &[("tree", tree), ("branch", branch), ("plan", plan)],
    );
    let ids: Vec<i64> = rows.iter().map(|k| k.id).collect();
    let res = results::for_kernels(pool, &ids, plan).await?;
    let verdicts = verdicts::for_kernels(pool, &ids, plan).await?;
    let active = jobs::active_families(pool, &ids).await?;
    let mut fams: BTreeSet<String> = fleet::board_views(pool)
        .await?
        .into_iter()
        .map(|b| b.family)
        .collect();
    fams.extend(res.iter().map(|r| r.family.clone()));
    fams.extend(verdicts.iter().map(|v| v.family.clone()));
    let families: Vec<(String, String)> = fams.into_iter().map(|f| (family_name(&f), f)).collect();
    let rows = rows
        .into_iter()
        .map(|k| {
            let kv: Vec<&VerdictRow> = verdicts.iter().filter(|v| v.kernel_id == k.id).collect();
            let cells = families
                .iter()
                .map(|(_, f)| {
                    let active = active.iter().any(|(kid, fam)| *kid == k.id && fam == f);
                    let r: Vec<&KernelResult> = res
                        .iter()
                        .filter(|r| r.kernel_id == k.id && &r.family == f)
                        .collect();
                    let v: Vec<&VerdictRow> =
                        kv.iter().copied().filter(|v| &v.family == f).collect();
                    cell(k.id, f, &r, &v, active)
                })
                .collect();
            MatrixRow {
                kernel: kernel_line(k, &kv),
                cells,
            }
        })
        .collect();
    let branches = branch_choices(&state, tree, branch, "/matrix").await?;
    render(&MatrixPage {
        families,
        rows,
        pager,
        tree: tree.unwrap_or("").to_owned(),
        branch: branch.unwrap_or("").to_owned(),
        plan: plan.unwrap_or("").to_owned(),
        plans,
        branches,
    })
}

// ---- one kernel ----

pub struct VerdictView {
    pub family: String,
    pub family_key: String,
    pub plan: String,
    pub badge: Badge,
    pub evidence: String,
    pub baseline_id: Option<i64>,
    pub baseline: String,
    pub baseline_reason: String,
    pub p_value: String,
    pub explanation: String,
    pub decided: String,
}

pub struct ResultView {
    pub family: String,
    pub family_key: String,
    pub plan: String,
    pub jobs: i32,
    pub boards: i32,
    pub cycles: i64,
    pub failed: i64,
    pub infra_errors: i32,
    pub rate: String,
    pub ci: String,
    pub board_time: String,
    pub simulated: bool,
    /// What the record rests on: KVM cycles, traced cycles, block
    /// re-installs after the cancels, and where the evidence came from.
    pub path: String,
}

pub struct FindingView {
    pub job_id: i64,
    pub board: String,
    pub title: String,
    pub class: String,
    pub stream: String,
    pub lines: String,
    pub href: String,
}

pub fn log_href(job: i64, stream: &str, line: i64) -> String {
    let page = (line.max(1) - 1) / logview::LINES_PER_PAGE + 1;
    format!("/jobs/{job}/log/{stream}?page={page}#L{line}")
}

#[derive(Template)]
#[template(path = "kernel.html")]
struct KernelPage {
    k: KernelLine,
    branch_href: String,
    parent: String,
    author: String,
    verdicts: Vec<VerdictView>,
    results: Vec<ResultView>,
    runs: Vec<fleet::RunView>,
    jobs: Vec<JobLine>,
    pager: Pager,
    findings: Vec<FindingView>,
    builds: Vec<crate::domain::builds::BuildRow>,
    boots: Vec<crate::domain::deploy::BootRow>,
    bisections: Vec<BisectView>,
}

/// A bisection as the kernel page shows it.
struct BisectView {
    id: i64,
    /// The regression it bisected: its page has the LKML report.
    regression: Option<i64>,
    state: String,
    good: String,
    bad: String,
    first_bad: Option<String>,
    /// Whether the first bad commit is this page's kernel.
    culprit_here: bool,
    confidence: String,
    board_time: String,
    reason: String,
    steps: Vec<BisectStepView>,
}

struct BisectStepView {
    step: i32,
    commit: String,
    here: bool,
    kind: String,
    verdict: String,
    cycles: String,
    confidence: String,
}

fn duration(secs: f64) -> String {
    let s = secs.max(0.0) as i64;
    if s >= 3600 {
        format!("{} h {} min", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{} min {} s", s / 60, s % 60)
    } else {
        format!("{s} s")
    }
}

pub async fn kernel_page(
    State(state): State<AppState>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Html<String>, PageError> {
    params.allow(&["page"])?;
    let page = params.page("page")?;
    let id: i64 = id
        .parse()
        .map_err(|_| bad_request(format!("`{id}` is not a kernel id")))?;
    let pool = &state.pool;
    let k = runs::kernel_summary(pool, id)
        .await?
        .ok_or_else(|| not_found(format!("kernel {id}")))?;
    let commit_sha = k.commit_sha.clone();
    let parent = k.parent_sha.clone().unwrap_or_else(|| "–".into());
    let author = k.author.clone().unwrap_or_else(|| "–".into());
    let verdict_rows = verdicts::for_kernels(pool, &[id], None).await?;
    let refs: Vec<&VerdictRow> = verdict_rows.iter().collect();
    let line = kernel_line(k, &refs);
    let verdicts = verdict_rows
        .iter()
        .map(|v| VerdictView {
            family: family_name(&v.family),
            family_key: v.family.clone(),
            plan: v.plan.clone(),
            badge: Badge::of(&v.verdict),
            evidence: format!(
                "{} · rests on {}",
                evidence_text(v.failed_cycles, v.cycles_run, (v.ci_low, v.ci_high)),
                match v.basis.as_deref() {
                    Some("path") => "cycles that reached the stage-2 path",
                    Some("untraced") => "untraced KVM cycles (allowed by the plan)",
                    Some("simulated") => "simulated cycles",
                    Some("none") => "nothing that could show the bug",
                    _ => "cycles of an older record (not split by path evidence)",
                }
            ),
            baseline_id: v.baseline_kernel_id,
            baseline: match &v.baseline_commit {
                Some(c) => format!(
                    "{} ({}/{} cycles failed)",
                    short(c),
                    v.baseline_failed,
                    v.baseline_cycles
                ),
                None => "none".into(),
            },
            baseline_reason: v.baseline_reason.clone(),
            p_value: v.p_value.map(fmt_p).unwrap_or_else(|| "–".into()),
            explanation: v.explanation.clone(),
            decided: ago(Some(v.decided_at)),
        })
        .collect();
    let results = results::for_kernel(pool, id)
        .await?
        .into_iter()
        .map(|r| {
            let (lo, hi) = wilson95(r.failed_cycles, r.cycles_run);
            let path = path_evidence(&r);
            ResultView {
                family: family_name(&r.family),
                family_key: r.family.clone(),
                rate: pct(if r.cycles_run > 0 {
                    r.failed_cycles as f64 / r.cycles_run as f64
                } else {
                    0.0
                }),
                ci: pct_range(lo, hi),
                board_time: duration(r.board_seconds),
                plan: r.plan,
                jobs: r.jobs,
                boards: r.boards,
                cycles: r.cycles_run,
                failed: r.failed_cycles,
                infra_errors: r.infra_errors,
                simulated: r.simulated,
                path,
            }
        })
        .collect();
    let run_rows = runs::summaries_for_kernel(pool, id, 50).await?;
    let run_ids: Vec<i64> = run_rows.iter().map(|r| r.id).collect();
    let run_jobs = jobs::briefs_for_runs(pool, &run_ids).await?;
    let runs = run_rows
        .into_iter()
        .map(|r| fleet::RunView {
            jobs: run_jobs
                .iter()
                .filter(|j| j.run_id == r.id)
                .map(|j| fleet::RunJobView {
                    id: j.id,
                    board: j.board.clone(),
                    state: j.state.clone(),
                })
                .collect(),
            id: r.id,
            kernel_id: r.kernel_id,
            commit_short: short(&r.commit_sha),
            branch: r.branch,
            tree: r.tree,
            jobs_done: r.jobs_done,
            jobs_total: r.jobs_total,
            jobs_failed: r.jobs_failed,
            simulated: r.simulated,
            created: ago(Some(r.created_at)),
        })
        .collect();
    let mut job_rows = jobs::briefs_for_kernel(
        pool,
        id,
        KERNEL_JOBS_PER_PAGE + 1,
        offset(page, KERNEL_JOBS_PER_PAGE),
    )
    .await?;
    let pager = Pager::new(&mut job_rows, page, KERNEL_JOBS_PER_PAGE, "page", &[]);
    let findings = findings::for_kernel(pool, id, 50)
        .await?
        .into_iter()
        .map(|f| FindingView {
            href: log_href(f.job_id, &f.stream, f.start_line as i64),
            lines: format!("{}–{}", f.start_line, f.end_line),
            job_id: f.job_id,
            board: f.board,
            title: f.title,
            class: f.class,
            stream: f.stream,
        })
        .collect();
    render(&KernelPage {
        branch_href: format!(
            "/kernels?tree={}&branch={}",
            super::util::url_encode(&line.tree),
            super::util::url_encode(&line.branch)
        ),
        k: line,
        parent,
        author,
        verdicts,
        results,
        runs,
        jobs: job_rows.into_iter().map(JobLine::from_brief).collect(),
        pager,
        findings,
        bisections: crate::domain::bisect::for_commit(pool, &commit_sha)
            .await?
            .into_iter()
            .map(|v| {
                let b = v.bisection;
                BisectView {
                    id: b.id,
                    regression: b.regression_id,
                    state: b.state.clone(),
                    good: short(&b.good_sha),
                    bad: short(&b.bad_sha),
                    culprit_here: b.first_bad_sha.as_deref() == Some(commit_sha.as_str()),
                    first_bad: b.first_bad_sha.as_deref().map(|c| short(c)),
                    confidence: b
                        .result_confidence
                        .map(|c| format!("{:.2}%", c * 100.0))
                        .unwrap_or_else(|| "–".into()),
                    board_time: duration(b.board_seconds),
                    reason: b.reason.clone().unwrap_or_default(),
                    steps: v
                        .steps
                        .iter()
                        .map(|s| BisectStepView {
                            step: s.step,
                            commit: short(&s.commit_sha),
                            here: s.commit_sha == commit_sha,
                            kind: s.kind.clone(),
                            verdict: s.verdict.clone().unwrap_or_else(|| "testing".into()),
                            cycles: format!("{}/{} failed", s.failures, s.cycles_run),
                            confidence: s
                                .confidence
                                .map(|c| format!("{:.3}", c))
                                .unwrap_or_else(|| "–".into()),
                        })
                        .collect(),
                }
            })
            .collect(),
        builds: crate::domain::builds::for_kernel(pool, id).await?,
        boots: crate::domain::deploy::boots_for_kernel(pool, id).await?,
    })
}

/// What the record rests on, e.g. "12 of 12 KVM cycles (emulated) reached
/// the stage-2 path: 40 block re-installs after the cancels, 210 permission
/// faults" — or why there is no path evidence.
fn path_evidence(r: &results::KernelResult) -> String {
    let from = if r.host_kinds.is_empty() {
        String::new()
    } else {
        format!(" ({})", r.host_kinds.join(", "))
    };
    let fallback = if r.fallback_jobs > 0 {
        format!("; {} job(s) on a fallback (not counted)", r.fallback_jobs)
    } else {
        String::new()
    };
    if r.kvm_cycles == 0 && r.kvm_failed == 0 {
        return format!("none: no cycle ran under KVM on arm64{from}{fallback}");
    }
    let untraced = if r.untraced_cycles > 0 {
        format!("; {} untraced", r.untraced_cycles)
    } else {
        String::new()
    };
    format!(
        "{} of {} KVM cycles{from} reached the stage-2 path: {} block re-installs after the cancels, {} permission faults ({} traced{untraced}){}{fallback}",
        r.path_cycles,
        r.kvm_cycles,
        r.block_maps_after_cancel,
        r.perm_faults,
        r.traced_cycles,
        if r.kvm_failed > 0 {
            format!("; {} failure(s) under KVM", r.kvm_failed)
        } else {
            String::new()
        }
    )
}
