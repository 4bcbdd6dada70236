//! `/jobs/{id}` and `/jobs/{id}/log/{stream}`: one job, its cycles, its
//! findings and its logs, paged.

use armfleet_protocol::LogStream;
use askama::Template;
use axum::extract::{Path, State};
use axum::response::Html;
use serde_json::Value;

use super::fleet::progress_pct;
use super::kernels::log_href;
use super::logview::{self, Line};
use super::plot::{self, LineInput, Plot};
use super::util::{
    PageError, Params, bad_request, bytes, host_label, not_found, render, short, stamp,
};
use crate::domain::{findings, jobs, logs};
use crate::wiring::state::AppState;

const CYCLES_PER_PAGE: i64 = 200;
/// Points in the timing plot before cycles are bucketed.
const PLOT_POINTS: i64 = 600;
pub const TAIL_LINES: usize = 60;

fn parse_job_id(raw: &str) -> Result<i64, PageError> {
    raw.parse()
        .map_err(|_| bad_request(format!("`{raw}` is not a job id")))
}

/// One row of the per-cycle table (also sent by the live stream).
#[derive(serde::Serialize)]
pub struct CycleView {
    pub cycle: i64,
    pub action: String,
    pub delay_ms: String,
    pub state_reached: String,
    pub final_state: String,
    pub cancel_ms: String,
    pub progress_ms: String,
    pub alive: bool,
    pub wall_ms: String,
    /// Stage-2 path counters: "pages / blocks (after cancel) / perm
    /// faults"; "–" where the job could not trace the path, `?` for a
    /// probe this kernel lacked.
    pub stage2: String,
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "–".into())
}

impl CycleView {
    pub fn from_record(r: &Value) -> CycleView {
        let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("–").to_owned();
        let n = |k: &str| r.get(k).and_then(Value::as_f64);
        CycleView {
            cycle: r.get("cycle").and_then(Value::as_i64).unwrap_or(0),
            action: s("action"),
            delay_ms: n("delay_ms")
                .map(|v| format!("{v:.0}"))
                .unwrap_or_else(|| "–".into()),
            state_reached: s("state_reached"),
            final_state: s("final_state"),
            cancel_ms: ms(n("cancel_to_cancelled_ms")),
            progress_ms: ms(n("guest_progress_ms")),
            alive: r
                .get("guest_alive")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            wall_ms: ms(n("wall_ms")),
            stage2: match r.get("path") {
                Some(p) if p.is_object() => {
                    let c = |k: &str| {
                        p.get(k)
                            .and_then(Value::as_u64)
                            .map(|v| v.to_string())
                            .unwrap_or_else(|| "?".into())
                    };
                    format!(
                        "{} / {} ({}) / {}",
                        c("page_maps"),
                        c("block_maps"),
                        c("block_maps_after_cancel"),
                        c("perm_faults")
                    )
                }
                _ => "–".into(),
            },
        }
    }
}

pub struct EventView {
    pub at: String,
    pub from_state: String,
    pub to_state: String,
    pub after: String,
    pub reason: String,
}

pub struct FindingView {
    pub title: String,
    pub class: String,
    pub stream: String,
    pub lines: String,
    pub href: String,
    pub fatal: bool,
    pub corrupted: bool,
    pub excerpt: String,
}

pub struct LogView {
    pub stream: String,
    pub size: String,
    pub stored: String,
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    job: jobs::JobRow,
    kernel_id: i64,
    commit_short: String,
    executor: String,
    /// "emulated arm64 (nested KVM under TCG)", "simulated", or empty.
    host: String,
    /// Where the guests ran and under which accelerator.
    ran_on: String,
    reason: String,
    pct: u32,
    created: String,
    started: String,
    finished: String,
    spec: String,
    evidence: Vec<String>,
    events: Vec<EventView>,
    findings: Vec<FindingView>,
    analysed: bool,
    cycles: Vec<CycleView>,
    cycle_page: i64,
    cycle_pages: i64,
    cycles_stored: i64,
    /// New cycles from the live stream go at the end of this page.
    cycles_live: bool,
    plot: Option<Plot>,
    logs: Vec<LogView>,
    tail: Vec<(String, bool)>,
    live: bool,
    live_url: String,
}

pub async fn job_page(
    State(state): State<AppState>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Html<String>, PageError> {
    params.allow(&["cycles"])?;
    let id = parse_job_id(&id)?;
    let pool = &state.pool;
    let job = jobs::get(pool, id)
        .await?
        .ok_or_else(|| not_found(format!("job {id}")))?;
    let kernel_id = jobs::kernel_of(pool, id).await?.unwrap_or(0);
    let (cycles_stored, max_cycle) = jobs::cycle_extent(pool, id).await?;
    let cycle_pages = ((cycles_stored + CYCLES_PER_PAGE - 1) / CYCLES_PER_PAGE).max(1);
    // A running job opens on its newest cycles; a finished one on its first.
    let live = matches!(job.state.as_str(), "queued" | "assigned" | "running");
    let cycle_page = match params.get("cycles") {
        Some(_) => params.page("cycles")?,
        None if live => cycle_pages,
        None => 1,
    };
    let after = ((cycle_page - 1) * CYCLES_PER_PAGE) as i32;
    // Cycles are numbered from 1 without gaps, so page N starts after cycle
    // (N-1)*size; records are fetched by key range.
    let cycles: Vec<CycleView> = jobs::cycles_after(pool, id, after, CYCLES_PER_PAGE)
        .await?
        .iter()
        .map(CycleView::from_record)
        .collect();
    let cycles_live = live && cycle_page >= cycle_pages;
    let step = ((max_cycle as i64 + PLOT_POINTS - 1) / PLOT_POINTS).max(1) as i32;
    let series = jobs::cycle_series(pool, id, step).await?;
    let plot = (!series.is_empty()).then(|| {
        let pick = |f: fn(&jobs::CyclePoint) -> Option<f64>| {
            series
                .iter()
                .filter_map(|p| f(p).map(|v| (p.cycle as f64, v)))
                .collect::<Vec<_>>()
        };
        let bad: Vec<f64> = series
            .iter()
            .filter(|p| !p.all_alive)
            .map(|p| p.cycle as f64)
            .collect();
        plot::timings(
            vec![
                LineInput {
                    name: "cancel → cancelled",
                    class: "s1",
                    values: pick(|p| p.cancel_ms),
                },
                LineInput {
                    name: "guest progress after cycle",
                    class: "s2",
                    values: pick(|p| p.progress_ms),
                },
                LineInput {
                    name: "cancel delay",
                    class: "s3",
                    values: pick(|p| p.delay_ms),
                },
            ],
            &bad,
            job.failed_cycle
                .map(|c| (c as f64, format!("failed at cycle {c}"))),
            max_cycle as f64,
            step,
        )
    });
    let raw_events = jobs::events(pool, id).await?;
    let mut events = Vec::with_capacity(raw_events.len());
    for (i, e) in raw_events.iter().enumerate() {
        let after = if i == 0 {
            String::new()
        } else {
            let d = (e.at - raw_events[i - 1].at).num_milliseconds();
            if d >= 60_000 {
                format!("+{} min {} s", d / 60_000, (d % 60_000) / 1000)
            } else {
                format!("+{:.1} s", d as f64 / 1000.0)
            }
        };
        events.push(EventView {
            at: e.at.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
            from_state: e.from_state.clone().unwrap_or_default(),
            to_state: e.to_state.clone(),
            after,
            reason: e.reason.clone().unwrap_or_default(),
        });
    }
    let analysed: bool =
        sqlx::query_scalar("SELECT analyzed_at IS NOT NULL FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await?;
    let findings = findings::for_job(pool, id)
        .await?
        .into_iter()
        .map(|f| FindingView {
            href: log_href(id, &f.stream, f.start_line as i64),
            lines: format!("{}–{}", f.start_line, f.end_line),
            title: f.title,
            class: f.class,
            stream: f.stream,
            fatal: f.fatal,
            corrupted: f.corrupted,
            excerpt: f.excerpt.lines().take(12).collect::<Vec<_>>().join("\n"),
        })
        .collect();
    let sizes = logs::sizes(pool, id).await?;
    let logs: Vec<LogView> = LogStream::ALL
        .iter()
        .map(|s| {
            let found = sizes.iter().find(|(name, _, _)| name == s.as_str());
            LogView {
                stream: s.as_str().to_owned(),
                size: found.map(|f| bytes(f.1)).unwrap_or_else(|| "empty".into()),
                stored: found.map(|f| bytes(f.2)).unwrap_or_default(),
            }
        })
        .collect();
    let (tail, last_seq) = logview::tail(pool, id, LogStream::GuestConsole, TAIL_LINES).await?;
    let spec = jobs::spec(pool, id)
        .await?
        .map(|v| serde_json::to_string_pretty(&v).unwrap_or_default())
        .unwrap_or_default();
    let evidence = job
        .evidence
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let executor = match (&job.executor, job.simulated) {
        (Some(e), true) => format!("{e} (simulated board: replayed logs)"),
        (Some(e), false) => e.clone(),
        (None, _) => "not assigned yet".into(),
    };
    let host = host_label(job.host_kind.as_deref());
    let ran_on = match (&job.accel, &job.run_detail) {
        (Some(a), Some(d)) => format!("{d}; accelerator {a}"),
        (Some(a), None) => format!("accelerator {a}"),
        _ => "not reported yet".into(),
    };
    let last_cycle = cycles.last().map(|c| c.cycle).unwrap_or(after as i64);
    let live_url = format!(
        "/jobs/{id}/live?cycle={}&seq={last_seq}",
        if cycles_live {
            last_cycle
        } else {
            max_cycle as i64
        }
    );
    render(&JobPage {
        kernel_id,
        commit_short: short(&job.commit_sha),
        reason: job.reason.clone().unwrap_or_else(|| "–".into()),
        pct: progress_pct(job.cycles_completed, job.cycles_total),
        created: stamp(job.created_at),
        started: job.started_at.map(stamp).unwrap_or_else(|| "–".into()),
        finished: job.finished_at.map(stamp).unwrap_or_else(|| "–".into()),
        executor,
        host,
        ran_on,
        spec,
        evidence,
        events,
        findings,
        analysed,
        cycles,
        cycle_page,
        cycle_pages,
        cycles_stored,
        cycles_live,
        plot,
        logs,
        tail,
        live,
        live_url,
        job,
    })
}

// ---- the paged log viewer ----

#[derive(Template)]
#[template(path = "log.html")]
struct LogPageT {
    job_id: i64,
    job_state: String,
    simulated: bool,
    stream: String,
    streams: Vec<String>,
    page: i64,
    pages: i64,
    first_line: i64,
    last_line: i64,
    total_lines: i64,
    total_bytes: String,
    lines: Vec<Line>,
    alarms: usize,
}

pub async fn log_page(
    State(state): State<AppState>,
    Path((id, stream)): Path<(String, String)>,
    params: Params,
) -> Result<Html<String>, PageError> {
    params.allow(&["page"])?;
    let id = parse_job_id(&id)?;
    let stream = LogStream::parse(&stream).ok_or_else(|| {
        bad_request(format!(
            "unknown log stream `{stream}` (known: {})",
            LogStream::ALL.map(|l| l.as_str()).join(", ")
        ))
    })?;
    let page = params.page("page")?;
    let pool = &state.pool;
    let job = jobs::pulse(pool, id)
        .await?
        .ok_or_else(|| not_found(format!("job {id}")))?;
    let simulated: bool = sqlx::query_scalar("SELECT simulated FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await?;
    let ranges: Vec<(i64, i64)> = findings::for_job(pool, id)
        .await?
        .into_iter()
        .filter(|f| f.stream == stream.as_str())
        .map(|f| (f.start_line as i64, f.end_line as i64))
        .collect();
    let p = logview::page(pool, id, stream, page, &ranges).await?;
    if page > p.pages {
        return Err(not_found(format!(
            "page {page} of the {} log of job {id} (it has {} pages)",
            stream.as_str(),
            p.pages
        )));
    }
    let alarms = p.lines.iter().filter(|l| l.alarm).count();
    render(&LogPageT {
        job_id: id,
        job_state: job.state,
        simulated,
        stream: stream.as_str().to_owned(),
        streams: LogStream::ALL
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect(),
        page,
        pages: p.pages,
        first_line: p.lines.first().map(|l| l.number).unwrap_or(0),
        last_line: p.lines.last().map(|l| l.number).unwrap_or(0),
        total_lines: p.total_lines,
        total_bytes: bytes(p.total_bytes),
        lines: p.lines,
        alarms,
    })
}
