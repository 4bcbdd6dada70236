//! The scheduler: the one loop that decides when queued work moves.
//!
//! Everything that can make a board's work move is an [`Event`] on one
//! bounded channel: new work (a run planned, a build ready, a bisection
//! step), a board connecting, a job or a boot ending, another server's
//! announcement, a fleet reload. The loop ([`run`]) turns events into
//! claims — one at a time per board, at most [`MAX_PARALLEL_CLAIMS`] at
//! once — and on its own timer runs the sweep (heartbeat deadlines, job
//! deadlines, and a retry for boards whose claim failed). Nothing else
//! claims: producers only send events ([`WorkNotifier`]), and a full
//! channel makes them wait (back-pressure) instead of growing a queue.
//!
//! Architecture invariant: the claims for one board never overlap; a board
//! woken while its claim runs is claimed once more after it, however many
//! times it was woken.
//!
//! What a claim and a sweep *do* is the [`Claims`] implementation's
//! business ([`crate::workers::dispatch::Dispatcher`] in the server); the loop only
//! owns *when*. Tests drive it with a fake and a paused clock.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::domain::work::{Event, WorkNotifier};

/// Claims running at once: a 10,000-board run must not open 10,000
/// transactions together (the pool would time most of them out).
pub const MAX_PARALLEL_CLAIMS: usize = 8;

/// What the loop drives. The server's is the dispatcher.
pub trait Claims: Send + Sync + 'static {
    /// One claim for `board`: jobs up to its room, a boot, or nothing.
    fn claim(self: Arc<Self>, board: String) -> impl Future<Output = ()> + Send;
    /// The periodic sweep; returns the boards that need a claim.
    fn sweep(self: Arc<Self>) -> impl Future<Output = Vec<String>> + Send;
    fn is_connected(&self, board: &str) -> bool;
    fn connected_boards(&self) -> Vec<String>;
    /// How often the sweep runs (read again after every sweep, so that a
    /// reload takes effect).
    fn sweep_interval(&self) -> Duration;
}

/// What a finished task of the loop reports.
enum Done {
    Claimed(String),
    Swept(Vec<String>),
}

/// Which boards wait for a claim, and which are being claimed.
#[derive(Default)]
struct Wakeups {
    waiting: VecDeque<String>,
    queued: HashSet<String>,
    /// Being claimed; `true` when it was woken meanwhile.
    claiming: HashMap<String, bool>,
}

impl Wakeups {
    fn wake(&mut self, board: String) {
        if let Some(again) = self.claiming.get_mut(&board) {
            *again = true;
        } else if self.queued.insert(board.clone()) {
            self.waiting.push_back(board);
        }
    }

    fn forget(&mut self, board: &str) {
        if self.queued.remove(board) {
            self.waiting.retain(|b| b != board);
        }
    }
}

/// The loop. Runs until `shutdown` (or until every notifier is gone), then
/// abandons claims in flight (their transactions roll back).
pub async fn run<C: Claims>(
    claims: Arc<C>,
    mut events: mpsc::Receiver<Event>,
    shutdown: CancellationToken,
) {
    let mut boards = Wakeups::default();
    let mut tasks: JoinSet<Done> = JoinSet::new();
    let mut sweeping = false;
    let mut period = claims.sweep_interval();
    let mut timer = tokio::time::interval(period);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        while boards.claiming.len() < MAX_PARALLEL_CLAIMS {
            let Some(board) = boards.waiting.pop_front() else {
                break;
            };
            boards.queued.remove(&board);
            if !claims.is_connected(&board) {
                continue;
            }
            boards.claiming.insert(board.clone(), false);
            let c = claims.clone();
            tasks.spawn(async move {
                if AssertUnwindSafe(c.claim(board.clone()))
                    .catch_unwind()
                    .await
                    .is_err()
                {
                    tracing::error!(board, "a claim panicked");
                }
                Done::Claimed(board)
            });
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            // Before events, so that a flood of them cannot starve it.
            _ = timer.tick() => {
                // A slow sweep (the database away) is not stacked up.
                if !sweeping {
                    sweeping = true;
                    let c = claims.clone();
                    tasks.spawn(async move { Done::Swept(c.sweep().await) });
                }
            }
            Some(done) = tasks.join_next() => match done {
                Ok(Done::Claimed(board)) => {
                    if boards.claiming.remove(&board) == Some(true) {
                        boards.wake(board);
                    }
                }
                Ok(Done::Swept(due)) => {
                    sweeping = false;
                    due.into_iter().for_each(|b| boards.wake(b));
                    let now = claims.sweep_interval();
                    if now != period {
                        period = now;
                        timer = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    }
                }
                // Claims catch their panics; only a sweep can end here.
                Err(e) => {
                    tracing::error!("the scheduler's sweep failed: {e}");
                    sweeping = false;
                }
            },
            event = events.recv() => match event {
                None => break,
                Some(Event::WorkArrived(list)) => list.into_iter().for_each(|b| boards.wake(b)),
                Some(Event::Announced(b) | Event::BoardConnected(b) | Event::JobEnded(b) | Event::BootEnded(b)) => boards.wake(b),
                // Unless it is back already (a new session replaced it).
                Some(Event::BoardLeft(b)) if !claims.is_connected(&b) => boards.forget(&b),
                Some(Event::BoardLeft(_)) => {}
                Some(Event::Everything) => claims.connected_boards().into_iter().for_each(|b| boards.wake(b)),
            },
        }
    }
    tasks.shutdown().await;
}

/// Listens for work announced by the other servers on the database and
/// hands it to the loop, until `shutdown`.
pub async fn listen_to_other_servers(
    pool: PgPool,
    server_id: Arc<str>,
    notifier: WorkNotifier,
    shutdown: CancellationToken,
) {
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
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
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
            }
        }
        // Work announced while we were not listening.
        notifier.send(Event::Everything).await;
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
                    // Our own announcement reached the loop directly.
                    if from != Some(server_id.as_ref()) {
                        notifier.send(Event::Announced(board.to_owned())).await;
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
