//! The JSON API. Reads are open; writes need the bearer token.

use armfleet_protocol::{LogStream, ServerMessage};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::error::ApiError;
use crate::domain::audit;
use crate::domain::config::{Scope, token_hash};
use crate::domain::jobs::{self, JobState};
use crate::domain::runs::{self, TriggerRequest};
use crate::domain::{boards, export, findings, logs, results, verdicts};
use crate::wiring::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/boards", get(list_boards))
        .route("/runs", get(list_runs).post(create_run))
        .route("/runs/{id}", get(get_run))
        .route("/jobs/{id}", get(get_job))
        .route("/jobs/{id}/log", get(get_job_log))
        .route("/jobs/{id}/cancel", post(cancel_job))
        .route("/jobs/{id}/findings", get(job_findings))
        .route("/jobs/{id}/repro.sh", get(job_repro))
        .route("/signatures", get(list_signatures))
        .route("/kernels/{commit}", get(get_kernel))
        .route("/regressions", get(list_regressions))
        .route("/regressions/{id}/lkml", get(regression_lkml))
        .route("/export/kcidb", get(export_kcidb))
        .route("/export/junit", get(export_junit))
        .route("/admin/reload", post(reload_fleet))
        .route(
            "/boards/{name}/power-cycle",
            post(super::power::api_power_cycle),
        )
        .route("/bisections", post(super::bisections::api_start))
        .route("/bisections/{id}", get(super::bisections::api_show))
        .route("/bisections/{id}/stop", post(super::bisections::api_stop))
        .route("/audit", get(list_audit))
        .route("/artifacts/{sha256}", get(super::builds::api_artifact))
        .route("/builds/{id}", get(super::builds::api_show))
        .route("/builds/{id}/log", get(super::builds::api_log))
}

/// Who called, proven by a bearer token: the server's admin token, or one
/// of fleet.toml's `[[token]]`s (kept as SHA-256, compared in constant time).
pub struct Caller {
    pub name: String,
    scopes: Vec<Scope>,
}

impl Caller {
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(&Scope::Admin) || self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "token `{}` lacks the `{}` scope",
                self.name,
                serde_json::to_value(scope)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            )))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthorized)?;
        let hash = token_hash(given);
        if crate::domain::intake::constant_time_eq(&hash, &token_hash(&state.api_token)) {
            return Ok(Caller {
                name: "admin".into(),
                scopes: vec![Scope::Admin],
            });
        }
        let fleet = state.fleet.current();
        let mut found = None;
        for t in &fleet.tokens {
            // No early exit: every configured token is compared.
            if crate::domain::intake::constant_time_eq(&hash, &t.sha256) {
                found = Some(Caller {
                    name: t.name.clone(),
                    scopes: t.scopes.clone(),
                });
            }
        }
        found.ok_or(ApiError::Unauthorized)
    }
}

fn parse_id(raw: &str, what: &str) -> Result<i64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::BadRequest(format!("`{raw}` is not a valid {what} id")))
}

async fn list_boards(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let rows = boards::list(&state.pool).await?;
    let fleet = state.fleet.current();
    let boards: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|r| {
            let warnings = boards::profile_warnings(&fleet, &r.name, r.facts.as_ref());
            let mut v = serde_json::to_value(r).unwrap_or_default();
            v["profile_warnings"] = serde_json::json!(warnings);
            v
        })
        .collect();
    Ok(Json(serde_json::json!({ "boards": boards })))
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<i64>,
}

async fn list_runs(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    Ok(Json(
        serde_json::json!({ "runs": runs::list(&state.pool, limit).await? }),
    ))
}

async fn create_run(
    caller: Caller,
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Scope::Trigger)?;
    let de = &mut serde_json::Deserializer::from_slice(&body);
    let req: TriggerRequest = serde_path_to_error::deserialize(de).map_err(|e| {
        ApiError::BadRequest(format!(
            "invalid run request at `{}`: {}",
            e.path(),
            e.inner()
        ))
    })?;
    let fleet = state.fleet.current();
    let actor = format!("api:{}", caller.name);
    let planned = runs::create(&state.pool, &fleet, &req, &actor).await?;
    audit::record(
        &state.pool,
        &actor,
        "trigger",
        &format!("run {}", planned.run_id),
        &format!("{} {} {}", req.tree, req.branch, req.commit),
    )
    .await;
    tracing::info!(run = planned.run_id, jobs = planned.jobs.len(), commit = %req.commit, "run planned");
    state.work.work_arrived(&planned.boards).await;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "run_id": planned.run_id,
            "kernel_id": planned.kernel_id,
            "jobs": planned.jobs,
        })),
    ))
}

async fn get_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id, "run")?;
    let run = runs::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("run {id}")))?;
    let jobs = jobs::for_run(&state.pool, id).await?;
    let mut value = serde_json::to_value(&run).map_err(|e| ApiError::Internal(e.to_string()))?;
    value["jobs"] = serde_json::to_value(&jobs).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(value))
}

async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id, "job")?;
    let job = jobs::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id}")))?;
    let events = jobs::events(&state.pool, id).await?;
    let cycles = jobs::cycles(&state.pool, id).await?;
    let sizes = logs::sizes(&state.pool, id).await?;
    let mut value = serde_json::to_value(&job).map_err(|e| ApiError::Internal(e.to_string()))?;
    value["events"] = serde_json::to_value(events).unwrap_or_default();
    value["cycles"] = serde_json::Value::Array(cycles);
    value["logs"] = sizes
        .into_iter()
        .map(|(stream, raw, stored)| {
            serde_json::json!({
                "stream": stream, "bytes": raw, "stored_bytes": stored,
                "url": format!("/api/v1/jobs/{id}/log?stream={stream}"),
            })
        })
        .collect();
    Ok(Json(value))
}

#[derive(Deserialize)]
struct LogQuery {
    stream: Option<String>,
}

async fn get_job_log(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id, "job")?;
    jobs::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id}")))?;
    let streams: Vec<LogStream> = match q.stream.as_deref() {
        Some(s) => vec![LogStream::parse(s).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "unknown log stream `{s}` (known: {})",
                LogStream::ALL.map(|l| l.as_str()).join(", ")
            ))
        })?],
        None => LogStream::ALL.to_vec(),
    };
    let mut body = Vec::new();
    let single = streams.len() == 1;
    for stream in streams {
        let data = logs::read_stream(&state.pool, id, stream).await?;
        if single {
            body = data;
        } else if !data.is_empty() {
            body.extend_from_slice(format!("==> {} <==\n", stream.as_str()).as_bytes());
            body.extend_from_slice(&data);
            if !data.ends_with(b"\n") {
                body.push(b'\n');
            }
        }
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        "text/plain; charset=utf-8".parse().unwrap(),
    );
    Ok((headers, body))
}

#[derive(Deserialize, Default)]
struct CancelBody {
    reason: Option<String>,
}

async fn cancel_job(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Option<Json<CancelBody>>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Scope::Trigger)?;
    let id = parse_id(&id, "job")?;
    let reason = body
        .and_then(|b| b.0.reason)
        .unwrap_or_else(|| "cancelled through the API".into());
    let (from, board) = jobs::cancel(&state.pool, id, &reason).await?;
    audit::record(
        &state.pool,
        &format!("api:{}", caller.name),
        "cancel",
        &format!("job {id}"),
        &reason,
    )
    .await;
    if matches!(from, JobState::Assigned | JobState::Running) {
        state
            .dispatcher
            .send(
                &board,
                ServerMessage::CancelJob {
                    job_id: id,
                    reason: reason.clone(),
                },
            )
            .await;
        state
            .work
            .send(crate::domain::work::Event::JobEnded(board))
            .await;
    }
    Ok(Json(
        serde_json::json!({ "job": id, "state": "cancelled", "was": from.as_str() }),
    ))
}

async fn job_findings(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id, "job")?;
    let job = jobs::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id}")))?;
    let analysed: bool =
        sqlx::query_scalar("SELECT analyzed_at IS NOT NULL FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&state.pool)
            .await?;
    let rows = findings::for_job(&state.pool, id).await?;
    Ok(Json(
        serde_json::json!({ "job": id, "state": job.state, "analysed": analysed, "findings": rows }),
    ))
}

/// The job's standalone reproducer script (`crate::domain::repro`).
async fn job_repro(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id, "job")?;
    let rec = crate::domain::repro::load(&state.pool, id, &base_url(&headers)).await?;
    let script = crate::domain::repro::render(&rec)?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "text/x-shellscript; charset=utf-8".to_owned(),
            ),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"armfleet-repro-job{id}.sh\""),
            ),
        ],
        script,
    ))
}

#[derive(Deserialize)]
struct PageQuery {
    limit: Option<i64>,
    offset: Option<i64>,
}

async fn list_signatures(
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let offset = q.offset.unwrap_or(0).max(0);
    Ok(Json(
        serde_json::json!({ "signatures": findings::signatures(&state.pool, limit, offset).await? }),
    ))
}

/// Everything known of a kernel (every tree/branch it was tested on).
async fn get_kernel(
    State(state): State<AppState>,
    Path(commit): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    if !(4..=64).contains(&commit.len()) || !commit.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ApiError::BadRequest(format!(
            "`{commit}` is not a commit id (4 to 64 hex digits)"
        )));
    }
    let kernels = runs::kernels_by_commit(&state.pool, &commit.to_ascii_lowercase()).await?;
    if kernels.is_empty() {
        return Err(ApiError::NotFound(format!("kernel {commit}")));
    }
    let mut out = Vec::new();
    for k in kernels {
        let results = results::for_kernel(&state.pool, k.id).await?;
        let verdicts = verdicts::for_kernel(&state.pool, k.id).await?;
        let runs = runs::for_kernel(&state.pool, k.id).await?;
        let mut v = serde_json::to_value(&k).map_err(|e| ApiError::Internal(e.to_string()))?;
        v["results"] = serde_json::to_value(results).unwrap_or_default();
        v["verdicts"] = serde_json::to_value(verdicts).unwrap_or_default();
        v["runs"] = serde_json::to_value(runs).unwrap_or_default();
        v["builds"] =
            serde_json::to_value(crate::domain::builds::for_kernel(&state.pool, k.id).await?)
                .unwrap_or_default();
        v["boots"] =
            serde_json::to_value(crate::domain::deploy::boots_for_kernel(&state.pool, k.id).await?)
                .unwrap_or_default();
        out.push(v);
    }
    Ok(Json(serde_json::json!({ "kernels": out })))
}

#[derive(Deserialize)]
struct RegressionQuery {
    state: Option<String>,
    limit: Option<i64>,
}

async fn list_regressions(
    State(state): State<AppState>,
    Query(q): Query<RegressionQuery>,
) -> Result<impl IntoResponse, ApiError> {
    if let Some(s) = &q.state {
        if <crate::domain::regressions::RegressionState as crate::domain::lifecycle::StateMachine>::parse(s)
            .is_none()
        {
            return Err(ApiError::BadRequest(format!(
                "unknown regression state `{s}` (open, confirmed, bisected, fixed)"
            )));
        }
    }
    let rows = crate::domain::regressions::list(
        &state.pool,
        q.state.as_deref(),
        q.limit.unwrap_or(100).clamp(1, 1000),
    )
    .await?;
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let events = crate::domain::regressions::events(&state.pool, &ids).await?;
    let out: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|r| {
            let mut v = serde_json::to_value(&r).unwrap_or_default();
            v["page"] = format!("/regressions/{}", r.id).into();
            v["lkml"] = format!("/api/v1/regressions/{}/lkml", r.id).into();
            v["events"] = serde_json::to_value(
                events
                    .iter()
                    .filter(|e| e.regression_id == r.id)
                    .collect::<Vec<_>>(),
            )
            .unwrap_or_default();
            v
        })
        .collect();
    Ok(Json(serde_json::json!({ "regressions": out })))
}

/// The regression as a plain-text kernel bug report (`crate::domain::lkml`).
async fn regression_lkml(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id, "regression")?;
    let text = lkml_text(&state, &base_url(&headers), id).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text))
}

/// The report of regression `id`, with fleet.toml's `[report]` trailers
/// (also the regression page's copy block).
pub async fn lkml_text(state: &AppState, base_url: &str, id: i64) -> Result<String, ApiError> {
    let facts = crate::domain::lkml::load(&state.pool, &state.data_dir, id, base_url).await?;
    Ok(crate::domain::lkml::render(
        &facts,
        &state.fleet.current().report,
    ))
}

#[derive(Deserialize)]
struct KcidbQuery {
    commit: Option<String>,
    limit: Option<i64>,
    /// Host kinds to keep: `hardware,emulated,simulated` (default: all, each
    /// marked as what it is).
    hosts: Option<String>,
}

/// The URL this server is reached at, for links in exports.
pub fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

async fn export_kcidb(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<KcidbQuery>,
) -> Result<impl IntoResponse, ApiError> {
    if let Some(c) = &q.commit {
        if !c.chars().all(|c| c.is_ascii_hexdigit()) || c.is_empty() || c.len() > 64 {
            return Err(ApiError::BadRequest(format!("`{c}` is not a commit id")));
        }
    }
    let hosts = match q.hosts.as_deref() {
        Some(h) => export::HostFilter::parse(h).map_err(ApiError::BadRequest)?,
        None => export::HostFilter::default(),
    };
    let store =
        crate::domain::builds::ArtifactStore::for_fleet(&state.fleet.current(), &state.data_dir);
    let data = export::kcidb(
        &state.pool,
        &store,
        &base_url(&headers),
        q.commit.as_deref(),
        q.limit.unwrap_or(5000).clamp(1, 100_000),
        &hosts,
    )
    .await?;
    Ok(Json(data))
}

#[derive(Deserialize)]
struct JunitQuery {
    run: Option<String>,
}

async fn export_junit(
    State(state): State<AppState>,
    Query(q): Query<JunitQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let run = q
        .run
        .ok_or_else(|| ApiError::BadRequest("`run` is required, e.g. ?run=12".into()))?;
    let id = parse_id(&run, "run")?;
    runs::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("run {id}")))?;
    let jobs = jobs::for_run(&state.pool, id).await?;
    let ids: Vec<i64> = jobs.iter().map(|j| j.id).collect();
    let paths = jobs::path_totals(&state.pool, &ids).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
        export::junit(id, &jobs, &paths),
    ))
}

async fn reload_fleet(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Scope::Admin)?;
    let report = crate::wiring::reload::reload(&state, &format!("api:{}", caller.name))
        .await
        .map_err(|e| match e.downcast::<sqlx::Error>() {
            // The database failed, not the file: a server error.
            Ok(db) => ApiError::from(db),
            Err(e) => ApiError::BadRequest(format!("{e:#}")),
        })?;
    Ok(Json(report))
}

async fn list_audit(
    caller: Caller,
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Scope::Admin)?;
    Ok(Json(
        serde_json::json!({ "audit": audit::recent(&state.pool, q.limit.unwrap_or(100).clamp(1, 1000)).await? }),
    ))
}
