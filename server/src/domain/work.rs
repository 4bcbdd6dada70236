//! How the domain says that work may move: an [`Event`] for the
//! scheduler (`workers::scheduler`), through a [`WorkNotifier`]. The
//! channel is bounded: when the scheduler is behind, producers wait.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::mpsc;

/// Events waiting for the loop before producers have to wait.
pub const EVENT_CAPACITY: usize = 1024;

/// Why the scheduler should look at a board again. Closed on purpose: this
/// is every reason work can move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// New jobs for these boards: a run was planned, a build became ready,
    /// a bisection or a verdict queued work.
    WorkArrived(Vec<String>),
    /// Another server sharing the database announced work for this board.
    Announced(String),
    BoardConnected(String),
    /// The board's session ended; a pending claim for it is dropped.
    BoardLeft(String),
    /// A job on this board ended: it has room again.
    JobEnded(String),
    /// A boot on this board ended (booted: its jobs can go; failed: the
    /// next build may).
    BootEnded(String),
    /// The fleet was reloaded, or the server missed announcements while
    /// its LISTEN connection was down: every connected board is looked at.
    Everything,
}

/// How producers reach the scheduler. Cheap to clone.
#[derive(Clone)]
pub struct WorkNotifier {
    tx: mpsc::Sender<Event>,
    /// Announcements to the other servers go through the database.
    announce: Option<(PgPool, Arc<str>)>,
    /// Jobs' results were recorded (analysed, verdicts decided) or a
    /// bisection was started: the bisection worker looks again. A stored
    /// permit, so a signal sent while the worker is busy is not lost.
    bisections: Arc<tokio::sync::Notify>,
}

impl WorkNotifier {
    /// A notifier and the receiver for [`run`]. With `announce`, new work
    /// is also announced to the other servers on the database
    /// (`NOTIFY armfleet_work`, payload `<server id>/<board>`).
    pub fn new(announce: Option<(PgPool, Arc<str>)>) -> (WorkNotifier, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(EVENT_CAPACITY);
        (
            WorkNotifier {
                tx,
                announce,
                bisections: Arc::default(),
            },
            rx,
        )
    }

    /// New work for `boards`, wherever their sessions are.
    pub async fn work_arrived(&self, boards: &[String]) {
        if boards.is_empty() {
            return;
        }
        if let Some((pool, server_id)) = &self.announce {
            if let Err(e) = sqlx::query(
                "SELECT pg_notify('armfleet_work', $2 || '/' || b) FROM unnest($1::text[]) AS b",
            )
            .bind(boards)
            .bind(server_id.as_ref())
            .execute(pool)
            .await
            {
                // The other servers' sweeps find the work later.
                tracing::warn!("announcing work to the other servers: {e}");
            }
        }
        self.send(Event::WorkArrived(boards.to_vec())).await;
    }

    /// Results a bisection may be waiting for were recorded on this server,
    /// or a bisection was started.
    pub fn bisections_may_move(&self) {
        self.bisections.notify_one();
    }

    /// Until [`WorkNotifier::bisections_may_move`] is next called (or has been
    /// since the last wait). For the one bisection worker of this server.
    pub async fn until_bisections_may_move(&self) {
        self.bisections.notified().await
    }

    /// Tells the loop; waits while its queue is full. After shutdown the
    /// event is dropped (nothing would act on it).
    pub async fn send(&self, event: Event) {
        let _ = self.tx.send(event).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The bisection worker may be busy when results arrive: the signal
    /// waits for it, and many signals make one round, not a backlog.
    #[tokio::test(start_paused = true)]
    async fn a_signal_sent_while_the_bisection_worker_is_busy_wakes_its_next_wait_once() {
        let (work, _rx) = WorkNotifier::new(None);
        let wait = |work: WorkNotifier| async move {
            tokio::time::timeout(Duration::from_secs(60), work.until_bisections_may_move())
                .await
                .is_ok()
        };
        assert!(!wait(work.clone()).await, "no signal, no wake-up");
        work.bisections_may_move();
        work.bisections_may_move();
        work.bisections_may_move();
        assert!(wait(work.clone()).await, "the stored signal wakes the wait");
        assert!(!wait(work.clone()).await, "three signals were one round");
    }
}
