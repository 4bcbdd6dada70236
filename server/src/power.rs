//! Power control: running a board's `power_cycle` command from fleet.toml.
//!
//! The command is an argv list (a PDU client, `ipmitool … chassis power
//! cycle`, a USB hub tool; any program), run directly — never through a
//! shell — with `ARMFLEET_BOARD` set, a timeout, and its output captured.
//! Every run, by hand (`POST /api/v1/boards/{name}/power-cycle`, admin) or
//! automatic, is an audit row with action `power-cycle`.
//!
//! The [`worker`] power-cycles a board that stays offline longer than
//! `[server] power_cycle_after_s`, at most once per
//! `power_cycle_interval_s` per board (the audit trail is the memory, so a
//! restart or a second server does not cycle a board again early).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::audit;
use crate::config::Scope;
use crate::http::api::Caller;
use crate::http::error::ApiError;
use crate::state::AppState;

/// Output kept from a power-cycle command (each of stdout, stderr).
const MAX_OUTPUT: usize = 16 * 1024;

#[derive(Debug, Clone, Serialize)]
pub struct PowerOutcome {
    pub board: String,
    pub argv: Vec<String>,
    pub reason: String,
    /// The command exited 0 within its timeout.
    pub ok: bool,
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub duration_ms: u64,
    pub stdout: String,
    pub stderr: String,
    /// Set when the command could not be started at all.
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    #[error("board `{0}`")]
    UnknownBoard(String),
    #[error("board `{0}` has no `power_cycle` command in fleet.toml")]
    NotConfigured(String),
    #[error("a power cycle of board `{0}` is already running")]
    Busy(String),
}

/// Boards being power-cycled now, per server (`server_id`, board).
static RUNNING: Mutex<Option<HashSet<(String, String)>>> = Mutex::new(None);

struct RunningGuard((String, String));

impl RunningGuard {
    fn take(server_id: &str, board: &str) -> Option<RunningGuard> {
        let key = (server_id.to_owned(), board.to_owned());
        let mut set = RUNNING.lock().unwrap();
        set.get_or_insert_with(HashSet::new)
            .insert(key.clone())
            .then_some(RunningGuard(key))
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        if let Some(set) = RUNNING.lock().unwrap().as_mut() {
            set.remove(&self.0);
        }
    }
}

/// Runs `board`'s power-cycle command now and records it.
pub async fn power_cycle(
    state: &AppState,
    board: &str,
    actor: &str,
    reason: &str,
) -> Result<PowerOutcome, PowerError> {
    let fleet = state.fleet.current();
    let b = fleet
        .board(board)
        .ok_or_else(|| PowerError::UnknownBoard(board.to_owned()))?;
    let argv = b
        .power_cycle
        .clone()
        .ok_or_else(|| PowerError::NotConfigured(board.to_owned()))?;
    let timeout = Duration::from_secs(fleet.server.power_cycle_timeout_s);
    let _guard = RunningGuard::take(&state.server_id, board)
        .ok_or_else(|| PowerError::Busy(board.to_owned()))?;
    tracing::warn!(board, actor, reason, ?argv, "power-cycling the board");
    let outcome = run_command(board, &argv, timeout, reason).await;
    if outcome.ok {
        tracing::info!(
            board,
            ms = outcome.duration_ms,
            "power cycle command succeeded"
        );
    } else {
        tracing::error!(board, exit = ?outcome.exit_code, timed_out = outcome.timed_out, error = ?outcome.error, stderr = %outcome.stderr, "power cycle command failed");
    }
    let detail = serde_json::to_string(&outcome).unwrap_or_default();
    audit::record(&state.pool, actor, "power-cycle", board, &detail).await;
    Ok(outcome)
}

/// Runs `argv` (no shell) with a timeout; the output is read while it runs
/// and kept up to [`MAX_OUTPUT`]. A command that leaves a background child
/// holding its stdout is not waited for past its own exit.
pub async fn run_command(
    board: &str,
    argv: &[String],
    timeout: Duration,
    reason: &str,
) -> PowerOutcome {
    let started = Instant::now();
    let mut outcome = PowerOutcome {
        board: board.to_owned(),
        argv: argv.to_vec(),
        reason: reason.to_owned(),
        ok: false,
        exit_code: None,
        timed_out: false,
        duration_ms: 0,
        stdout: String::new(),
        stderr: String::new(),
        error: None,
    };
    let Some((program, args)) = argv.split_first() else {
        outcome.error = Some("empty command".into());
        return outcome;
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .env("ARMFLEET_BOARD", board)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            outcome.error = Some(format!("cannot start {program}: {e}"));
            outcome.duration_ms = started.elapsed().as_millis() as u64;
            return outcome;
        }
    };
    let read = |pipe: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>| {
        tokio::spawn(async move {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = p.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    if buf.len() < MAX_OUTPUT {
                        buf.extend_from_slice(&chunk[..n.min(MAX_OUTPUT - buf.len())]);
                    }
                }
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out_task = read(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
    );
    let err_task = read(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
    );
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => {
            outcome.exit_code = status.code();
            outcome.ok = status.success();
        }
        Ok(Err(e)) => outcome.error = Some(format!("waiting for {program}: {e}")),
        Err(_) => {
            outcome.timed_out = true;
            outcome.error = Some(format!("killed after the {} s timeout", timeout.as_secs()));
            let _ = child.kill().await;
        }
    }
    // Give the readers a moment to drain what the command wrote.
    for (task, slot) in [
        (out_task, &mut outcome.stdout),
        (err_task, &mut outcome.stderr),
    ] {
        let abort = task.abort_handle();
        match tokio::time::timeout(Duration::from_millis(500), task).await {
            Ok(Ok(text)) => *slot = text,
            _ => abort.abort(),
        }
    }
    outcome.duration_ms = started.elapsed().as_millis() as u64;
    outcome
}

/// When `board` was last power-cycled (by anyone), from the audit trail.
async fn last_cycle_age_s(pool: &sqlx::PgPool, board: &str) -> Result<Option<f64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM now() - max(at))::float8 FROM audit_log WHERE action = 'power-cycle' AND target = $1",
    )
    .bind(board)
    .fetch_one(pool)
    .await
}

/// The automatic power-cycler. Runs until `shutdown`; the commands it
/// started are killed when it stops.
pub async fn worker(state: AppState, shutdown: CancellationToken) {
    let mut offline_since: HashMap<String, Instant> = HashMap::new();
    let mut running = tokio::task::JoinSet::new();
    // One server of a cluster power-cycles: two would cycle a board twice.
    let mut lease = crate::leases::Lease::new(
        state.pool.clone(),
        "power",
        &state.server_id,
        Duration::from_secs(15),
    );
    loop {
        let fleet = state.fleet.current();
        let tick =
            Duration::from_millis((fleet.server.power_cycle_after_s * 1000 / 4).clamp(250, 5000));
        tokio::select! {
            _ = shutdown.cancelled() => {
                running.abort_all();
                lease.release().await;
                return;
            }
            _ = tokio::time::sleep(tick) => {}
            Some(_) = running.join_next(), if !running.is_empty() => continue,
        }
        if !lease.renew().await {
            // Whoever holds it keeps its own clocks; ours start afresh.
            offline_since.clear();
            continue;
        }
        let rows: Vec<(String, String)> = match sqlx::query_as("SELECT name, state FROM boards")
            .fetch_all(&state.pool)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("power worker: reading boards: {e}");
                continue;
            }
        };
        let after = Duration::from_secs(fleet.server.power_cycle_after_s);
        for (board, board_state) in rows {
            let configured = fleet.board(&board).is_some_and(|b| b.power_cycle.is_some());
            if board_state != "offline" || !configured {
                offline_since.remove(&board);
                continue;
            }
            let since = *offline_since
                .entry(board.clone())
                .or_insert_with(Instant::now);
            if since.elapsed() < after {
                continue;
            }
            match last_cycle_age_s(&state.pool, &board).await {
                Ok(Some(age)) if age < fleet.server.power_cycle_interval_s as f64 => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(board, "power worker: reading the audit trail: {e}");
                    continue;
                }
            }
            // Counted from now again: the board gets time to boot.
            offline_since.insert(board.clone(), Instant::now());
            let reason = format!("offline for more than {} s", after.as_secs());
            let st = state.clone();
            running.spawn(async move {
                if let Err(e) = power_cycle(&st, &board, "power-worker", &reason).await {
                    tracing::warn!(board, "automatic power cycle not run: {e}");
                }
            });
        }
    }
}

/// `POST /api/v1/boards/{name}/power-cycle` (admin): runs the command now
/// and answers with its outcome (also when the command failed).
pub async fn api_power_cycle(
    caller: Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<PowerOutcome>, ApiError> {
    caller.require(Scope::Admin)?;
    match power_cycle(
        &state,
        &name,
        &format!("api:{}", caller.name),
        "requested through the API",
    )
    .await
    {
        Ok(outcome) => Ok(Json(outcome)),
        Err(PowerError::UnknownBoard(b)) => Err(ApiError::NotFound(format!("board `{b}`"))),
        Err(e @ PowerError::NotConfigured(_)) => Err(ApiError::Conflict(e.to_string())),
        Err(e @ PowerError::Busy(_)) => Err(ApiError::Conflict(e.to_string())),
    }
}
