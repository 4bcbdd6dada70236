//! The dispatcher: the one owner of live agent sessions and of how queued
//! jobs are handed to them. *When* it claims for a board is the
//! [`crate::workers::scheduler`]'s decision: the dispatcher is its [`Claims`].
//!
//! Architecture invariant: a board has at most one live session; when a
//! session ends (closed, broken, or heartbeat deadline missed) the board goes
//! `offline` and its in-flight jobs become `lost`, through
//! [`Dispatcher::session_ended`] and nowhere else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use armfleet_protocol::{HostKind, ServerMessage};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::domain::boards;
use crate::domain::config::Fleet;
use crate::domain::config::SharedFleet;
use crate::domain::jobs;
use crate::wiring::metrics::Metrics;
use crate::workers::scheduler::Claims;

/// How the dispatcher reaches one connected agent.
struct Session {
    id: u64,
    tx: mpsc::Sender<ServerMessage>,
    last_seen: Instant,
    /// When `boards.last_heartbeat` was last written for this session.
    last_recorded: Option<Instant>,
    executor: &'static str,
    host: HostKind,
    /// The key the agent authenticated with (revoked keys close the session).
    key: Vec<u8>,
    /// Cancelled to close the connection from the server side.
    close: CancellationToken,
    /// Set once the handshake has reconciled the jobs the agent holds: a
    /// job assigned before that would be counted among the jobs that "died
    /// with the previous agent" and lost while the agent runs it.
    open_for_work: bool,
}

pub struct Dispatcher {
    pool: PgPool,
    fleet: SharedFleet,
    metrics: Arc<Metrics>,
    sessions: Mutex<HashMap<String, Session>>,
    next_id: AtomicU64,
    /// When the sweep last wrote `boards.last_heartbeat`.
    last_heartbeat_write: Mutex<Instant>,
}

/// Returned to a session task on registration.
pub struct SessionTicket {
    pub id: u64,
    pub close: CancellationToken,
}

impl Dispatcher {
    pub fn new(pool: PgPool, fleet: SharedFleet, metrics: Arc<Metrics>) -> Arc<Dispatcher> {
        Arc::new(Dispatcher {
            pool,
            fleet,
            metrics,
            sessions: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            last_heartbeat_write: Mutex::new(Instant::now() - Duration::from_secs(60)),
        })
    }

    fn fleet(&self) -> Arc<Fleet> {
        self.fleet.current()
    }

    /// A board's agent said hello. An older session of the same board (a
    /// half-dead connection) is closed. The board gets work only once the
    /// handshake calls [`Dispatcher::open_for_work`].
    pub fn register(
        &self,
        board: &str,
        key: Vec<u8>,
        tx: mpsc::Sender<ServerMessage>,
        executor: &'static str,
        host: HostKind,
        shutdown: &CancellationToken,
    ) -> SessionTicket {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let close = shutdown.child_token();
        let old = self.sessions.lock().unwrap().insert(
            board.to_owned(),
            Session {
                id,
                tx,
                last_seen: Instant::now(),
                last_recorded: None,
                executor,
                host,
                key,
                close: close.clone(),
                open_for_work: false,
            },
        );
        match old {
            Some(old) => {
                tracing::warn!(board, "a new connection replaces the board's previous one");
                old.close.cancel();
            }
            None => {
                self.metrics.sessions.inc();
            }
        };
        SessionTicket { id, close }
    }

    /// The handshake of session `id` is done: the board may be given work.
    pub fn open_for_work(&self, board: &str, id: u64) {
        if let Some(s) = self.sessions.lock().unwrap().get_mut(board) {
            if s.id == id {
                s.open_for_work = true;
            }
        }
    }

    pub fn touch(&self, board: &str, id: u64) {
        if let Some(s) = self.sessions.lock().unwrap().get_mut(board) {
            if s.id == id {
                s.last_seen = Instant::now();
            }
        }
    }

    /// Boards heard from since their heartbeat was last written, at most
    /// every 5 s (else none). Liveness itself is tracked in memory;
    /// `boards.last_heartbeat` is for people, so it is written for all
    /// boards in one statement now and then (10,000 boards must not cost
    /// 5,000 commits a second).
    fn heard_from(&self) -> Vec<String> {
        {
            let mut last = self.last_heartbeat_write.lock().unwrap();
            if last.elapsed() < Duration::from_secs(5) {
                return Vec::new();
            }
            *last = Instant::now();
        }
        let mut sessions = self.sessions.lock().unwrap();
        let mut out = Vec::new();
        for (name, s) in sessions.iter_mut() {
            if s.last_recorded.is_none_or(|t| t < s.last_seen) {
                s.last_recorded = Some(s.last_seen);
                out.push(name.clone());
            }
        }
        out
    }

    pub fn is_connected(&self, board: &str) -> bool {
        self.sessions.lock().unwrap().contains_key(board)
    }

    /// After a reload: closes the sessions of boards that are gone or whose
    /// key is no longer listed. Returns their names.
    pub fn close_unauthorized(&self, fleet: &Fleet) -> Vec<String> {
        let sessions = self.sessions.lock().unwrap();
        let mut closed = Vec::new();
        for (name, s) in sessions.iter() {
            let still_valid = fleet.board(name).is_some_and(|b| {
                b.keys
                    .iter()
                    .any(|k| crate::domain::config::key_bytes(k) == s.key)
            });
            if !still_valid {
                tracing::warn!(board = %name, "key revoked or board removed: closing its session");
                s.close.cancel();
                closed.push(name.clone());
            }
        }
        closed
    }

    pub fn connected_boards(&self) -> Vec<String> {
        self.sessions.lock().unwrap().keys().cloned().collect()
    }

    /// The session task of `board` ended. Only the session that is still
    /// registered may mark the board offline (a replaced one must not).
    pub async fn session_ended(&self, board: &str, id: u64, reason: &str) {
        let was_current = {
            let mut sessions = self.sessions.lock().unwrap();
            match sessions.get(board) {
                Some(s) if s.id == id => {
                    sessions.remove(board);
                    self.metrics.sessions.dec();
                    true
                }
                _ => false,
            }
        };
        if !was_current {
            return;
        }
        tracing::warn!(board, reason, "board offline");
        if let Err(e) = boards::set_offline(&self.pool, board, reason).await {
            tracing::error!(board, "recording board offline: {e}");
        }
        // Its jobs get a grace period to come back with it.
        let grace = self.fleet().server.lease_grace_s();
        match jobs::lease_board_jobs(&self.pool, board, grace).await {
            Ok(n) if n > 0 => tracing::warn!(
                board,
                jobs = n,
                grace,
                "jobs wait for their board to come back"
            ),
            Ok(_) => {}
            Err(e) => tracing::error!(board, "leasing the board's jobs: {e}"),
        }
    }

    /// One claim for the board: a batch of jobs up to its room, a boot, or
    /// nothing. The scheduler never runs two for one board at once.
    async fn claim_once(&self, board: &str) {
        let Some(max_jobs) = self.fleet().board(board).map(|b| b.max_jobs) else {
            return;
        };
        let (tx, executor, host) = {
            let sessions = self.sessions.lock().unwrap();
            match sessions.get(board) {
                Some(s) if s.open_for_work => (s.tx.clone(), s.executor, s.host),
                _ => return,
            }
        };
        let deadline = self.fleet().server.assign_deadline_s;
        match jobs::claim_next(&self.pool, board, max_jobs, executor, host, deadline).await {
            Ok(jobs::Claim::NeedsBoot { build_id }) => {
                match crate::domain::deploy::record_start(
                    &self.pool,
                    &self.fleet(),
                    board,
                    build_id,
                )
                .await
                {
                    Ok(Some(msg)) => {
                        let _ = tx.send(msg).await;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::error!(board, build = build_id, "starting a boot: {e}"),
                }
            }
            Ok(jobs::Claim::Assigned(batch)) => {
                let now = chrono::Utc::now();
                for a in batch {
                    let waited = (now - a.queued_at).num_microseconds().unwrap_or(0);
                    self.metrics
                        .dispatch_latency
                        .observe(waited.max(0) as f64 / 1e6);
                    tracing::info!(board, job = a.job_id, epoch = a.epoch, "job assigned");
                    let msg = ServerMessage::AssignJob {
                        job_id: a.job_id,
                        epoch: a.epoch,
                        spec: a.spec,
                    };
                    if tx.send(msg).await.is_err() {
                        // The session is going away; its end marks the job lost.
                        return;
                    }
                }
            }
            Ok(jobs::Claim::Nothing) => {}
            Err(e) => tracing::error!(board, "claiming jobs: {e}"),
        }
    }

    /// Tells a board to stop a job (best effort: the board may be gone).
    pub async fn send(&self, board: &str, msg: ServerMessage) {
        let tx = self
            .sessions
            .lock()
            .unwrap()
            .get(board)
            .map(|s| s.tx.clone());
        if let Some(tx) = tx {
            let _ = tx.send(msg).await;
        }
    }

    /// The sweep: closes sessions whose heartbeats stopped, records
    /// heartbeats, ends jobs past their deadlines, and returns the boards
    /// to claim for: those whose jobs ended that way, and connected boards
    /// with queued work and room for it (a claim that failed, the database
    /// busy or away, is retried so; a busy board is woken when its job
    /// ends, and claiming for thousands of full boards every tick would be
    /// wasted work).
    async fn sweep_once(&self) -> Vec<String> {
        let deadline = Duration::from_millis(self.fleet().server.heartbeat_deadline_ms);
        let silent: Vec<(String, CancellationToken)> = self
            .sessions
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| s.last_seen.elapsed() > deadline && !s.close.is_cancelled())
            .map(|(b, s)| (b.clone(), s.close.clone()))
            .collect();
        for (board, close) in silent {
            tracing::warn!(
                board,
                ?deadline,
                "heartbeat deadline missed; closing the session"
            );
            close.cancel();
        }
        let heard = self.heard_from();
        if !heard.is_empty() {
            if let Err(e) = boards::heartbeats(&self.pool, &heard).await {
                tracing::debug!("recording heartbeats: {e}");
            }
        }
        let mut due = Vec::new();
        match sqlx::query_as::<_, (String, i64)>(
            "SELECT board, count(*) FILTER (WHERE state IN ('assigned', 'running'))
             FROM jobs WHERE state IN ('queued', 'assigned', 'running')
             GROUP BY board HAVING bool_or(state = 'queued')",
        )
        .fetch_all(&self.pool)
        .await
        {
            Ok(waiting) => {
                let fleet = self.fleet();
                due.extend(
                    waiting
                        .into_iter()
                        .filter(|(b, active)| {
                            fleet
                                .board(b)
                                .is_some_and(|cfg| *active < cfg.max_jobs as i64)
                                && self.is_connected(b)
                        })
                        .map(|(b, _)| b),
                );
            }
            Err(e) => tracing::warn!("listing boards with queued jobs: {e}"),
        }
        let queue_deadline = self.fleet().server.queue_deadline_s;
        match jobs::expire_deadlines(&self.pool, queue_deadline).await {
            Ok(expired) => {
                for (job, board, state) in expired {
                    tracing::warn!(job, board, state = state.as_str(), "job deadline passed");
                    self.send(
                        &board,
                        ServerMessage::CancelJob {
                            job_id: job,
                            reason: format!("the server ended the job as {}", state.as_str()),
                        },
                    )
                    .await;
                    due.push(board);
                }
            }
            Err(e) => tracing::error!("expiring job deadlines: {e}"),
        }
        due
    }
}

impl Claims for Dispatcher {
    async fn claim(self: Arc<Self>, board: String) {
        self.claim_once(&board).await
    }

    async fn sweep(self: Arc<Self>) -> Vec<String> {
        self.sweep_once().await
    }

    fn is_connected(&self, board: &str) -> bool {
        Dispatcher::is_connected(self, board)
    }

    fn connected_boards(&self) -> Vec<String> {
        Dispatcher::connected_boards(self)
    }

    fn sweep_interval(&self) -> Duration {
        Duration::from_millis(self.fleet().server.heartbeat_interval_ms.max(100) / 2)
    }
}
