//! The dispatcher: the one owner of live agent sessions and of handing
//! queued jobs to them.
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

use crate::boards;
use crate::config::Fleet;
use crate::jobs;
use crate::metrics::Metrics;
use crate::state::SharedFleet;

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
}

pub struct Dispatcher {
    pool: PgPool,
    /// This server's id: it signs its work announcements, so that it does
    /// not claim a second time for boards it has just kicked itself.
    server_id: Arc<str>,
    fleet: SharedFleet,
    metrics: Arc<Metrics>,
    sessions: Mutex<HashMap<String, Session>>,
    next_id: AtomicU64,
    /// Boards being kicked right now, and whether another kick arrived
    /// meanwhile (then the running one looks again before it stops).
    kicking: Mutex<HashMap<String, bool>>,
}

/// Returned to a session task on registration.
pub struct SessionTicket {
    pub id: u64,
    pub close: CancellationToken,
}

impl Dispatcher {
    pub fn new(
        pool: PgPool,
        fleet: SharedFleet,
        metrics: Arc<Metrics>,
        server_id: Arc<str>,
    ) -> Arc<Dispatcher> {
        Arc::new(Dispatcher {
            pool,
            server_id,
            fleet,
            metrics,
            sessions: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            kicking: Mutex::new(Default::default()),
        })
    }

    fn fleet(&self) -> Arc<Fleet> {
        self.fleet.current()
    }

    /// A board's agent completed its handshake. An older session of the
    /// same board (a half-dead connection) is closed.
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

    pub fn touch(&self, board: &str, id: u64) {
        if let Some(s) = self.sessions.lock().unwrap().get_mut(board) {
            if s.id == id {
                s.last_seen = Instant::now();
            }
        }
    }

    /// Boards heard from since their heartbeat was last written. Liveness
    /// itself is tracked in memory; `boards.last_heartbeat` is for people,
    /// so it is written for all boards in one statement per watchdog tick
    /// (10,000 boards must not cost 5,000 commits a second).
    fn heard_from(&self) -> Vec<String> {
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
            let still_valid = fleet
                .board(name)
                .is_some_and(|b| b.keys.iter().any(|k| crate::config::key_bytes(k) == s.key));
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

    /// Hands queued jobs to `board` while it has room. Safe to call any time.
    pub async fn kick(&self, board: &str) {
        // Claims for different boards run in parallel; for one board the
        // database serialises them (the board row is locked while claiming).
        {
            let mut kicking = self.kicking.lock().unwrap();
            if let Some(again) = kicking.get_mut(board) {
                *again = true;
                return;
            }
            kicking.insert(board.to_owned(), false);
        }
        loop {
            self.kick_locked(board).await;
            let mut kicking = self.kicking.lock().unwrap();
            if kicking.get(board) == Some(&true) {
                kicking.insert(board.to_owned(), false);
                continue;
            }
            kicking.remove(board);
            return;
        }
    }

    /// One claim for the board: a batch of jobs up to its room, a boot, or
    /// nothing. A job ending or new work kicks it again.
    async fn kick_locked(&self, board: &str) {
        let Some(max_jobs) = self.fleet().board(board).map(|b| b.max_jobs) else {
            return;
        };
        let (tx, executor, host) = {
            let sessions = self.sessions.lock().unwrap();
            match sessions.get(board) {
                Some(s) => (s.tx.clone(), s.executor, s.host),
                None => return,
            }
        };
        let deadline = self.fleet().server.assign_deadline_s;
        match jobs::claim_next(&self.pool, board, max_jobs, executor, host, deadline).await {
            Ok(jobs::Claim::NeedsBoot { build_id }) => {
                match crate::deploy::record_start(&self.pool, &self.fleet(), board, build_id).await
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

    /// New work for `boards`: wakes the servers holding their sessions,
    /// this one included (several servers may share the database).
    pub async fn announce(&self, boards: &[String]) {
        // Payload: "<server id>/<board>".
        if let Err(e) = sqlx::query(
            "SELECT pg_notify('armfleet_work', $2 || '/' || b) FROM unnest($1::text[]) AS b",
        )
        .bind(boards)
        .bind(self.server_id.as_ref())
        .execute(&self.pool)
        .await
        {
            tracing::warn!("notifying other servers: {e}");
        }
        // A few at a time: a 10,000-board run must not open 10,000
        // transactions at once (the pool would time most of them out).
        self.kick_many(boards).await;
    }

    /// Listens for work announced by other servers. Runs until `shutdown`.
    pub async fn listen(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let mut listener = match sqlx::postgres::PgListener::connect_with(&self.pool).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!("LISTEN connection failed, retrying: {e}");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                    }
                }
            };
            if let Err(e) = listener.listen("armfleet_work").await {
                tracing::warn!("LISTEN failed, retrying: {e}");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
            // Work announced while we were not listening.
            self.kick_all().await;
            loop {
                let n = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    n = listener.recv() => n,
                };
                match n {
                    Ok(n) => {
                        let (from, board) = match n.payload().split_once('/') {
                            Some((from, board)) => (Some(from), board),
                            None => (None, n.payload()),
                        };
                        // Our own announcement: `announce` kicked already.
                        if from != Some(self.server_id.as_ref()) && self.is_connected(board) {
                            self.kick(board).await;
                        }
                    }
                    Err(e) => {
                        tracing::warn!("LISTEN connection lost, reconnecting: {e}");
                        break;
                    }
                }
            }
        }
    }

    /// Kicks boards eight at a time.
    async fn kick_many(&self, boards: &[String]) {
        for chunk in boards.chunks(8) {
            futures::future::join_all(chunk.iter().map(|b| self.kick(b))).await;
        }
    }

    pub async fn kick_all(&self) {
        for board in self.connected_boards() {
            self.kick(&board).await;
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

    /// The watchdog: closes sessions whose heartbeats stopped and ends jobs
    /// past their deadlines. Runs until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut last_heartbeat_write = Instant::now() - Duration::from_secs(60);
        loop {
            let interval =
                Duration::from_millis(self.fleet().server.heartbeat_interval_ms.max(100) / 2);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
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
            let heard = if last_heartbeat_write.elapsed() >= Duration::from_secs(5) {
                last_heartbeat_write = Instant::now();
                self.heard_from()
            } else {
                Vec::new()
            };
            if !heard.is_empty() {
                if let Err(e) = boards::heartbeats(&self.pool, &heard).await {
                    tracing::debug!("recording heartbeats: {e}");
                }
            }
            // Safety net: a kick that failed (database busy or away) is
            // retried here, for connected boards with queued work and room
            // for it (a busy board is kicked when its job ends; claiming
            // for thousands of full boards every tick would be wasted work).
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
                    let waiting: Vec<String> = waiting
                        .into_iter()
                        .filter(|(b, active)| {
                            fleet
                                .board(b)
                                .is_some_and(|cfg| *active < cfg.max_jobs as i64)
                                && self.is_connected(b)
                        })
                        .map(|(b, _)| b)
                        .collect();
                    self.kick_many(&waiting).await;
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
                        self.kick(&board).await;
                    }
                }
                Err(e) => tracing::error!("expiring job deadlines: {e}"),
            }
        }
    }
}
