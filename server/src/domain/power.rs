//! Power control: running a board's `power_cycle` command from fleet.toml.
//!
//! The command is an argv list (a PDU client, `ipmitool … chassis power
//! cycle`, a USB hub tool; any program), run directly — never through a
//! shell — with `ARMFLEET_BOARD` set, a timeout, and its output captured.
//! Every run, by hand (`POST /api/v1/boards/{name}/power-cycle`, admin) or
//! automatic, is an audit row with action `power-cycle`.
//!
//! The worker (`workers::power`) power-cycles a board that stays offline longer than
//! `[server] power_cycle_after_s`, at most once per
//! `power_cycle_interval_s` per board (the audit trail is the memory, so a
//! restart or a second server does not cycle a board again early).

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::PgPool;
use tokio::io::AsyncReadExt;

use crate::domain::audit;
use crate::domain::config::Fleet;

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
/// `server_id` names this server: one command per board and server runs
/// at a time.
pub async fn power_cycle(
    pool: &PgPool,
    fleet: &Fleet,
    server_id: &str,
    board: &str,
    actor: &str,
    reason: &str,
) -> Result<PowerOutcome, PowerError> {
    let b = fleet
        .board(board)
        .ok_or_else(|| PowerError::UnknownBoard(board.to_owned()))?;
    let argv = b
        .power_cycle
        .clone()
        .ok_or_else(|| PowerError::NotConfigured(board.to_owned()))?;
    let timeout = Duration::from_secs(fleet.server.power_cycle_timeout_s);
    let _guard =
        RunningGuard::take(server_id, board).ok_or_else(|| PowerError::Busy(board.to_owned()))?;
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
    audit::record(pool, actor, "power-cycle", board, &detail).await;
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
pub async fn last_cycle_age_s(
    pool: &sqlx::PgPool,
    board: &str,
) -> Result<Option<f64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM now() - max(at))::float8 FROM audit_log WHERE action = 'power-cycle' AND target = $1",
    )
    .bind(board)
    .fetch_one(pool)
    .await
}
