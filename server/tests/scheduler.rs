//! The scheduler loop, driven with a fake claimer and a paused clock: what
//! it claims, how often, how many at once, and when it sweeps.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use armfleet_server::domain::work::{Event, WorkNotifier};
use armfleet_server::workers::scheduler::{self, Claims, MAX_PARALLEL_CLAIMS};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Records every claim and sweep; a claim takes `claim_time`.
struct Fake {
    connected: Mutex<HashSet<String>>,
    claim_time: Duration,
    sweep_time: Duration,
    /// What the next sweeps return.
    sweep_finds: Mutex<Vec<String>>,
    claims: Mutex<Vec<(String, Instant, Instant)>>,
    sweeps: Mutex<Vec<(Instant, Instant)>>,
    running: Mutex<usize>,
    most_at_once: Mutex<usize>,
}

impl Fake {
    fn new(boards: &[&str], claim_time: Duration) -> Arc<Fake> {
        Arc::new(Fake {
            connected: Mutex::new(boards.iter().map(|b| b.to_string()).collect()),
            claim_time,
            sweep_time: Duration::from_millis(10),
            sweep_finds: Mutex::default(),
            claims: Mutex::default(),
            sweeps: Mutex::default(),
            running: Mutex::default(),
            most_at_once: Mutex::default(),
        })
    }

    fn claims_of(&self, board: &str) -> usize {
        self.claims
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.0 == board)
            .count()
    }
}

impl Claims for Fake {
    async fn claim(self: Arc<Self>, board: String) {
        let start = Instant::now();
        {
            let mut n = self.running.lock().unwrap();
            *n += 1;
            let mut most = self.most_at_once.lock().unwrap();
            *most = (*most).max(*n);
        }
        tokio::time::sleep(self.claim_time).await;
        *self.running.lock().unwrap() -= 1;
        self.claims
            .lock()
            .unwrap()
            .push((board, start, Instant::now()));
    }

    async fn sweep(self: Arc<Self>) -> Vec<String> {
        let start = Instant::now();
        tokio::time::sleep(self.sweep_time).await;
        self.sweeps.lock().unwrap().push((start, Instant::now()));
        std::mem::take(&mut *self.sweep_finds.lock().unwrap())
    }

    fn is_connected(&self, board: &str) -> bool {
        self.connected.lock().unwrap().contains(board)
    }

    fn connected_boards(&self) -> Vec<String> {
        self.connected.lock().unwrap().iter().cloned().collect()
    }

    fn sweep_interval(&self) -> Duration {
        Duration::from_secs(1)
    }
}

/// Starts the loop on `fake`; returns the notifier and the token to stop it.
fn start(fake: &Arc<Fake>) -> (WorkNotifier, CancellationToken, tokio::task::JoinHandle<()>) {
    let (work, rx) = WorkNotifier::new(None);
    let stop = CancellationToken::new();
    let task = tokio::spawn(scheduler::run(fake.clone(), rx, stop.clone()));
    (work, stop, task)
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

#[tokio::test(start_paused = true)]
async fn a_board_woken_during_its_claim_is_claimed_once_more_and_never_twice_at_once() {
    let fake = Fake::new(&["b1"], Duration::from_millis(100));
    let (work, stop, task) = start(&fake);
    work.send(Event::BoardConnected("b1".into())).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    for _ in 0..5 {
        work.send(Event::JobEnded("b1".into())).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        fake.claims_of("b1"),
        2,
        "one claim, then one for the wakes during it"
    );
    let claims = fake.claims.lock().unwrap().clone();
    assert!(
        claims[1].1 >= claims[0].2,
        "the second claim started after the first ended"
    );
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_work_claims_every_board_once_with_bounded_parallelism() {
    let boards = names("b", 100);
    let refs: Vec<&str> = boards.iter().map(String::as_str).collect();
    let fake = Fake::new(&refs, Duration::from_millis(50));
    let (work, stop, task) = start(&fake);
    work.work_arrived(&boards).await;
    // The same boards again while the first claims run: no extra claims
    // beyond one follow-up for those being claimed.
    work.work_arrived(&boards[..4]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut per_board: HashMap<String, usize> = HashMap::new();
    for (b, _, _) in fake.claims.lock().unwrap().iter() {
        *per_board.entry(b.clone()).or_default() += 1;
    }
    assert_eq!(per_board.len(), 100, "every board was claimed");
    assert!(per_board.values().all(|n| *n <= 2), "{per_board:?}");
    assert!(per_board.values().filter(|n| **n == 2).count() <= 4);
    assert_eq!(*fake.most_at_once.lock().unwrap(), MAX_PARALLEL_CLAIMS);
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn boards_not_connected_are_not_claimed_and_a_board_that_left_is_dropped() {
    let fake = Fake::new(&["here"], Duration::from_millis(10));
    let (work, stop, task) = start(&fake);
    work.work_arrived(&["here".into(), "away".into()]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fake.claims_of("here"), 1);
    assert_eq!(fake.claims_of("away"), 0);
    // "Everything" looks at each connected board.
    fake.connected.lock().unwrap().insert("late".into());
    work.send(Event::Everything).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fake.claims_of("late"), 1);
    assert_eq!(fake.claims_of("here"), 2);
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_sweep_runs_on_its_timer_never_overlaps_and_its_boards_are_claimed() {
    let mut fake = Fake::new(&["b1"], Duration::from_millis(10));
    Arc::get_mut(&mut fake).unwrap().sweep_time = Duration::from_millis(2500);
    let (_work, stop, task) = start(&fake);
    *fake.sweep_finds.lock().unwrap() = vec!["b1".into()];
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_millis(10_050)).await;
    let sweeps = fake.sweeps.lock().unwrap().clone();
    // Every 1 s, but each takes 2.5 s: they run back to back, never two at once.
    assert!((3..=5).contains(&sweeps.len()), "{} sweeps", sweeps.len());
    for pair in sweeps.windows(2) {
        assert!(pair[1].0 >= pair[0].1, "sweeps overlapped: {sweeps:?}");
    }
    assert!(
        sweeps[0].0 - t0 < Duration::from_millis(10),
        "the first sweep starts at once"
    );
    assert_eq!(fake.claims_of("b1"), 1, "what the sweep found was claimed");
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_the_loop_with_claims_in_flight() {
    let fake = Fake::new(&["slow"], Duration::from_secs(3600));
    let (work, stop, task) = start(&fake);
    work.send(Event::BoardConnected("slow".into())).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("the loop ends promptly")
        .unwrap();
    assert_eq!(
        fake.claims_of("slow"),
        0,
        "the claim in flight was abandoned"
    );
}
