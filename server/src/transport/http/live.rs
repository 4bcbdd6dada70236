//! Live updates for the dashboard over Server-Sent Events.
//!
//! Each open stream polls PostgreSQL every [`POLL`] and pushes what
//! changed. Polling the database (rather than an in-process channel) means
//! it sees changes made by any server process sharing the database. The
//! streams end when the server shuts down, so a graceful stop never waits
//! on an open browser tab.
//!
//! * `GET /live/fleet?runs=N` — event `fleet`: boards (state, heartbeat,
//!   current job progress) and the runs on page N of the fleet page.
//! * `GET /jobs/{id}/live?cycle=C&seq=S` — events `job` (state and
//!   progress), `cycles` (records after cycle C), `log` (guest console
//!   lines from chunks after seq S), and `end` once the job is over and
//!   everything was sent. Event ids are `C:S`, so a reconnecting browser
//!   (`Last-Event-ID`) resumes where it left off.

use std::convert::Infallible;
use std::time::Duration;

use armfleet_protocol::LogStream;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::stream::{self, Stream, StreamExt};
use sqlx::PgPool;

use super::pages::fleet::{board_views, progress_pct, run_views};
use super::pages::jobs::CycleView;
use super::pages::logview::display_line;
use super::pages::util::{PageError, Params, bad_request, is_alarm_line, not_found, offset};
use crate::domain::jobs::{self, JobPulse};
use crate::domain::logs;
use crate::wiring::state::AppState;

/// How often each stream looks at the database.
pub const POLL: Duration = Duration::from_millis(500);
/// Cycle records sent per poll at most.
const CYCLES_PER_POLL: i64 = 200;
/// Log chunks read per poll at most.
const CHUNKS_PER_POLL: i64 = 8;
/// Bytes of one unfinished line kept while waiting for its end.
const MAX_CARRY: usize = 64 * 1024;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/live/fleet", get(fleet_live))
        .route("/jobs/{id}/live", get(job_live))
}

type EventStream = std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>>;

fn sse(state: &AppState, events: EventStream) -> Response {
    let stopped = state.shutdown.clone().cancelled_owned();
    let s: EventStream = Box::pin(events.take_until(stopped));
    Sse::new(s)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

async fn fleet_snapshot(pool: &PgPool, runs_page: i64) -> Result<String, sqlx::Error> {
    let boards = board_views(pool).await?;
    let runs = run_views(pool, 20, offset(runs_page, 20)).await?;
    Ok(serde_json::json!({ "boards": boards, "runs": runs }).to_string())
}

async fn fleet_live(State(state): State<AppState>, params: Params) -> Result<Response, PageError> {
    params.allow(&["runs"])?;
    let page = params.page("runs")?;
    let pool = state.pool.clone();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let events = stream::unfold(
        (pool, None::<String>, tick),
        move |(pool, last, mut tick)| async move {
            loop {
                tick.tick().await;
                match fleet_snapshot(&pool, page).await {
                    Ok(json) if last.as_deref() != Some(json.as_str()) => {
                        let ev = Event::default().event("fleet").data(json.clone());
                        return Some((Ok(ev), (pool, Some(json), tick)));
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("live fleet snapshot: {e}"),
                }
            }
        },
    );
    Ok(sse(&state, Box::pin(events)))
}

struct JobFollow {
    pool: PgPool,
    job: i64,
    cycle: i64,
    seq: i64,
    last: Option<JobPulse>,
    carry: Vec<u8>,
    tick: tokio::time::Interval,
    ended: bool,
}

fn is_active(state: &str) -> bool {
    matches!(state, "queued" | "assigned" | "running")
}

fn line_json(raw: &[u8]) -> serde_json::Value {
    let t = display_line(raw);
    serde_json::json!({ "t": t, "a": is_alarm_line(&t) })
}

impl JobFollow {
    /// One poll: the events to send (possibly none).
    async fn poll(&mut self) -> Result<Vec<Event>, sqlx::Error> {
        let mut out = Vec::new();
        let Some(pulse) = jobs::pulse(&self.pool, self.job).await? else {
            self.ended = true;
            return Ok(vec![Event::default().event("end").data("gone")]);
        };
        let cycles =
            jobs::cycles_after(&self.pool, self.job, self.cycle as i32, CYCLES_PER_POLL).await?;
        let chunks = logs::chunks_after(
            &self.pool,
            self.job,
            LogStream::GuestConsole,
            self.seq,
            CHUNKS_PER_POLL,
        )
        .await?;
        let quiet = cycles.is_empty() && chunks.is_empty();
        if self.last.as_ref() != Some(&pulse) {
            out.push(
                Event::default().event("job").data(
                    serde_json::json!({
                        "state": pulse.state,
                        "done": pulse.cycles_completed,
                        "total": pulse.cycles_total,
                        "pct": progress_pct(pulse.cycles_completed, pulse.cycles_total),
                        "failed_cycle": pulse.failed_cycle,
                        "reason": pulse.reason,
                    })
                    .to_string(),
                ),
            );
        }
        if !cycles.is_empty() {
            let views: Vec<CycleView> = cycles.iter().map(CycleView::from_record).collect();
            self.cycle = views
                .last()
                .map(|c| c.cycle)
                .unwrap_or(self.cycle)
                .max(self.cycle);
            out.push(
                Event::default()
                    .event("cycles")
                    .data(serde_json::to_string(&views).unwrap_or_default()),
            );
        }
        if !chunks.is_empty() {
            let mut lines = Vec::new();
            for (seq, data) in chunks {
                self.seq = seq;
                let mut rest: &[u8] = &data;
                while let Some(p) = rest.iter().position(|&b| b == b'\n') {
                    self.carry.extend_from_slice(&rest[..p]);
                    lines.push(line_json(&self.carry));
                    self.carry.clear();
                    rest = &rest[p + 1..];
                }
                let room = MAX_CARRY.saturating_sub(self.carry.len());
                self.carry.extend_from_slice(&rest[..rest.len().min(room)]);
            }
            out.push(
                Event::default()
                    .event("log")
                    .data(serde_json::json!({ "lines": lines }).to_string()),
            );
        }
        let terminal = !is_active(&pulse.state);
        self.last = Some(pulse);
        if terminal && quiet {
            if !self.carry.is_empty() {
                let line = line_json(&self.carry);
                self.carry.clear();
                out.push(
                    Event::default()
                        .event("log")
                        .data(serde_json::json!({ "lines": [line] }).to_string()),
                );
            }
            out.push(Event::default().event("end").data("finished"));
            self.ended = true;
        }
        if let Some(last) = out.pop() {
            out.push(last.id(format!("{}:{}", self.cycle, self.seq)));
        }
        Ok(out)
    }
}

async fn job_live(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, PageError> {
    params.allow(&["cycle", "seq"])?;
    let job: i64 = id
        .parse()
        .map_err(|_| bad_request(format!("`{id}` is not a job id")))?;
    let num = |name: &str, min: i64| -> Result<i64, PageError> {
        match params.get(name) {
            None => Ok(min),
            Some(v) => v.parse::<i64>().ok().filter(|n| *n >= min).ok_or_else(|| {
                bad_request(format!(
                    "`{name}` must be an integer of at least {min}, not `{v}`"
                ))
            }),
        }
    };
    let (mut cycle, mut seq) = (num("cycle", 0)?, num("seq", -1)?);
    // A reconnecting EventSource says where it was.
    if let Some((c, s)) = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(':'))
        .and_then(|(c, s)| Some((c.parse::<i64>().ok()?, s.parse::<i64>().ok()?)))
    {
        cycle = c.max(0);
        seq = s.max(-1);
    }
    if jobs::pulse(&state.pool, job).await?.is_none() {
        return Err(not_found(format!("job {job}")));
    }
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let follow = JobFollow {
        pool: state.pool.clone(),
        job,
        cycle,
        seq,
        last: None,
        carry: Vec::new(),
        tick,
        ended: false,
    };
    let events = stream::unfold(follow, |mut f| async move {
        if f.ended {
            return None;
        }
        loop {
            f.tick.tick().await;
            match f.poll().await {
                Ok(evs) if !evs.is_empty() => return Some((evs, f)),
                Ok(_) => {}
                Err(e) => tracing::warn!(job = f.job, "live job poll: {e}"),
            }
        }
    })
    .flat_map(|evs| stream::iter(evs.into_iter().map(Ok)));
    Ok(sse(&state, Box::pin(events)))
}
