//! Shared by the dashboard tests: a server state on a fresh database,
//! seeded through the server's own functions (job transitions, cycle
//! records, log chunks, analysis), and a plain HTTP listener for it.
#![allow(dead_code)]

use std::time::Duration;

use armfleet_protocol::{
    BoardFacts, CycleRecord, ExecutorKind, HugepageInfo, JobResult, KvmStatus, LogStream,
    QemuBinary,
};
use armfleet_server::domain::jobs::{self, JobState, TransitionEffects};
use armfleet_server::domain::{boards, logs};
use armfleet_server::wiring::app::{Server, Settings};
use armfleet_server::wiring::state::AppState;
use armfleet_server::workers::analysis;
use sqlx::PgPool;

use crate::common;

pub const TREE: &str = "https://example.org/linux.git";
pub const BRANCH: &str = "master";
pub const XSS: &str = "<script>alert(1)</script>";

pub fn fleet_toml() -> String {
    let keys = [
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINshuiiHSBrO3Cv3at18VJGCWY8v2Y4DCSjDp7PxSnhU a@k",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE3SXM6axZ4/Gucd4kmFjr5dx2Qa0JRQ4bMKsHpe9diY a@a",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIARRA47iBnw6TPFVeJFF7LmirH2r0MDniNjrvd+WJC4+ a@r",
    ];
    common::fleet_toml(
        &[
            ("kunpeng-01", "kunpeng920", keys[0]),
            ("altra-01", "ampere-altra", keys[1]),
            ("rpi4-01", "rpi4", keys[2]),
        ],
        "[plan.params]\ncycles = 20\nreplay_cycle_ms = 40\n",
    )
}

pub struct Prepared {
    pub dir: tempfile::TempDir,
    pub state: AppState,
}

impl Prepared {
    pub fn pool(&self) -> &PgPool {
        &self.state.pool
    }
    pub fn app(&self) -> axum::Router {
        armfleet_server::transport::http::app(self.state.clone())
    }
    /// Serves the dashboard on a loopback port until the state's shutdown
    /// token is cancelled; returns the base URL.
    pub async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = self.app();
        let stop = self.state.shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
                .unwrap();
        });
        url
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        self.state.shutdown.cancel();
    }
}

/// The server's state on a fresh database (migrated, boards synced), as
/// `Server::prepare` builds it; no SSH, no agents.
pub async fn prepare() -> Prepared {
    let dir = tempfile::tempdir().unwrap();
    let fleet_path = dir.path().join("fleet.toml");
    std::fs::write(&fleet_path, fleet_toml()).unwrap();
    let db = common::fresh_database().await;
    let server = Server::prepare(Settings {
        fleet_path,
        data_dir: dir.path().join("data"),
        database_url: Some(db),
    })
    .await
    .expect("server prepares");
    Prepared {
        dir,
        state: server.state.clone(),
    }
}

pub fn facts(kernel: &str, implementer: &str) -> BoardFacts {
    BoardFacts {
        kernel_release: kernel.to_owned(),
        kernel_version: "#1 SMP Debian".into(),
        arch: "aarch64".into(),
        cpu_implementer: Some(implementer.to_owned()),
        cpu_part: Some("0xd01".into()),
        cores: 96,
        mem_total_kib: 256 * 1024 * 1024,
        kvm: KvmStatus {
            present: true,
            accessible: true,
            hardware: true,
            note: None,
        },
        qemu: vec![QemuBinary {
            arch: "aarch64".into(),
            path: "/usr/bin/qemu-system-aarch64".into(),
            version: "7.2.15".into(),
        }],
        hugepages: HugepageInfo {
            size_kib: 2048,
            total: 512,
            free: 480,
        },
        executor: ExecutorKind::Replay,
        host_kind: armfleet_protocol::HostKind::Simulated,
        ssh_board: None,
        kvm_mode: None,
        memory: Default::default(),
        build_id: None,
    }
}

/// A board online with its facts, as its agent's handshake leaves it.
pub async fn online(pool: &PgPool, board: &str, facts: &BoardFacts) {
    sqlx::query(
        "UPDATE boards SET state = 'idle', facts = $2, executor = 'replay', simulated = true,
            connected_at = now(), last_heartbeat = now(), offline_reason = NULL WHERE name = $1",
    )
    .bind(board)
    .bind(serde_json::to_value(facts).unwrap())
    .execute(pool)
    .await
    .unwrap();
}

/// A recorded guest abort (the replay executor's own log).
pub fn abort_text() -> String {
    include_str!("../../../agent/replay/guest-tlb-conflict.log").replace("{T}", "T71")
}

pub async fn kernel(pool: &PgPool, commit: &str, subject: &str) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO kernels (tree, branch, commit_sha, subject, author) VALUES ($1, $2, $3, $4, 'A Developer <dev@example.org>')
         RETURNING id",
    )
    .bind(TREE)
    .bind(BRANCH)
    .bind(commit)
    .bind(subject)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// A run of `kernel` with one queued job per board; returns the job ids.
pub async fn run(
    pool: &PgPool,
    kernel: i64,
    commit: &str,
    boards: &[&str],
    cycles: i32,
) -> Vec<i64> {
    let run: i64 = sqlx::query_scalar(
        "INSERT INTO runs (kernel_id, requested_by) VALUES ($1, 'test') RETURNING id",
    )
    .bind(kernel)
    .fetch_one(pool)
    .await
    .unwrap();
    let mut ids = Vec::new();
    for b in boards {
        let spec = serde_json::json!({
            "kernel": {"tree": TREE, "branch": BRANCH, "commit": commit},
            "plan": "smoke", "timeout_s": 600,
            "task": {"type": "migrate_cancel", "cycles": cycles, "note": XSS},
        });
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO jobs (run_id, kernel_id, board, plan, spec, cycles_total) VALUES ($1, $2, $3, 'smoke', $4, $5) RETURNING id",
        )
        .bind(run)
        .bind(kernel)
        .bind(b)
        .bind(spec)
        .bind(cycles)
        .fetch_one(pool)
        .await
        .unwrap();
        sqlx::query("INSERT INTO job_events (job_id, to_state, reason) VALUES ($1, 'queued', 'planned by a test')")
            .bind(id)
            .execute(pool)
            .await
            .unwrap();
        ids.push(id);
    }
    ids
}

pub fn cycle(n: u32, alive: bool) -> CycleRecord {
    CycleRecord {
        cycle: n,
        action: "cancel".into(),
        delay_ms: 200 + (n as u64 * 37) % 400,
        state_reached: "active".into(),
        final_state: "cancelled".into(),
        bytes_transferred: 1 << 20,
        dirty_pages_rate: Some(1000),
        cancel_to_cancelled_ms: Some(5.0 + (n % 7) as f64),
        guest_progress_ms: if alive {
            Some(20.0 + (n % 5) as f64 * 3.0)
        } else {
            None
        },
        guest_alive: alive,
        resumed_paused_source: false,
        events: vec![],
        wall_ms: 400.0 + n as f64,
        path: None,
    }
}

/// Takes a queued job to running on its board, as the dispatcher and the
/// agent session would. Returns the epoch.
pub async fn start(pool: &PgPool, job: i64, board: &str) -> i64 {
    let mut tx = pool.begin().await.unwrap();
    jobs::transition(
        &mut tx,
        job,
        JobState::Assigned,
        None,
        TransitionEffects::default(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    sqlx::query("UPDATE jobs SET executor = 'replay', simulated = true WHERE id = $1")
        .bind(job)
        .execute(pool)
        .await
        .unwrap();
    let epoch: i64 = sqlx::query_scalar("SELECT epoch FROM jobs WHERE id = $1")
        .bind(job)
        .fetch_one(pool)
        .await
        .unwrap();
    jobs::mark_running(pool, job, board, epoch).await.unwrap();
    epoch
}

/// Stores `text` as the stream's next chunks, split into `pieces` (split
/// points deliberately fall mid-line).
pub async fn append_log(pool: &PgPool, job: i64, stream: LogStream, text: &str, pieces: usize) {
    let next: i64 = sqlx::query_scalar(
        "SELECT COALESCE(max(seq) + 1, 0) FROM log_chunks WHERE job_id = $1 AND stream = $2",
    )
    .bind(job)
    .bind(stream.as_str())
    .fetch_one(pool)
    .await
    .unwrap();
    let bytes = text.as_bytes();
    let size = bytes.len().div_ceil(pieces.max(1)).max(1);
    for (i, piece) in bytes.chunks(size).enumerate() {
        logs::store_chunk(pool, job, stream, next as u64 + i as u64, piece)
            .await
            .unwrap();
    }
}

/// Runs a job to its end: `ok` clean cycles, then (if `fail`) an aborting
/// one; the guest console gets `console`; the job is then analysed.
pub async fn finish_job(pool: &PgPool, job: i64, board: &str, ok: u32, fail: bool, console: &str) {
    let epoch = start(pool, job, board).await;
    for n in 1..=ok {
        jobs::record_cycle(pool, job, board, epoch, &cycle(n, true))
            .await
            .unwrap();
    }
    if fail {
        jobs::record_cycle(pool, job, board, epoch, &cycle(ok + 1, false))
            .await
            .unwrap();
    }
    append_log(pool, job, LogStream::GuestConsole, console, 3).await;
    append_log(
        pool,
        job,
        LogStream::Qmp,
        "{\"execute\": \"migrate_cancel\"}\n{\"return\": {}}\n",
        1,
    )
    .await;
    let result = if fail {
        JobResult::Failed {
            cycles_completed: ok,
            failed_cycle: Some(ok + 1),
            reason: "guest took a TLB conflict abort".into(),
            evidence: vec![
                "Unable to handle kernel TLB conflict abort at virtual address ffff00000a2c3000"
                    .into(),
            ],
        }
    } else {
        JobResult::Passed {
            cycles_completed: ok,
        }
    };
    jobs::finish(pool, job, board, epoch, &result, None)
        .await
        .unwrap();
    analysis::analyse(pool, job).await.unwrap();
}

pub fn boot_lines(n: usize) -> String {
    (1..=n)
        .map(|i| {
            format!(
                "[{:5}.{:06}] armfleet-dirty: pass {i} ok\n",
                i / 100,
                i % 1000
            )
        })
        .collect()
}

pub struct Seeded {
    pub clean_kernel: i64,
    pub buggy_kernel: i64,
    pub passed_job: i64,
    /// Failed on kunpeng-01; its console holds an abort and `XSS`.
    pub xss_job: i64,
    /// Failed with an abort at line `big_abort_line` of a 4,600-line console.
    pub big_job: i64,
    pub big_abort_line: i64,
    /// Running on altra-01 with a few cycles done.
    pub running_job: i64,
    pub running_kernel: i64,
}

/// A small but complete history: a clean and a buggy kernel on three
/// boards, a long log, a running job, verdicts.
pub async fn seed(pool: &PgPool) -> Seeded {
    online(pool, "kunpeng-01", &facts("6.1.0-28-arm64", "0x48")).await;
    online(pool, "altra-01", &facts("6.12.9-arm64", "0x41")).await;
    let all = ["kunpeng-01", "altra-01", "rpi4-01"];
    let clean_sha = "1111111111111111111111111111111111111111";
    let buggy_sha = "badbadbadbadbadbadbadbadbadbadbadbadbad0";
    let clean_kernel = kernel(pool, clean_sha, "KVM: arm64: the parent").await;
    let clean = run(pool, clean_kernel, clean_sha, &all, 20).await;
    for (j, b) in clean.iter().zip(all) {
        finish_job(pool, *j, b, 20, false, &boot_lines(40)).await;
    }
    let buggy_kernel = kernel(
        pool,
        buggy_sha,
        &format!("KVM: arm64: split block mappings {XSS}"),
    )
    .await;
    let buggy = run(pool, buggy_kernel, buggy_sha, &all, 20).await;
    let abort = abort_text();
    // kunpeng: the abort, then a hostile line.
    finish_job(
        pool,
        buggy[0],
        all[0],
        2,
        true,
        &format!("{}{abort}{XSS}\n", boot_lines(30)),
    )
    .await;
    // altra: a long console with the abort near its end (page 3).
    let big_abort_line = 4301;
    finish_job(
        pool,
        buggy[1],
        all[1],
        4,
        true,
        &format!("{}{abort}{}", boot_lines(4300), boot_lines(250)),
    )
    .await;
    finish_job(
        pool,
        buggy[2],
        all[2],
        1,
        true,
        &format!("{}{abort}", boot_lines(10)),
    )
    .await;
    // Verdicts as the verdict engine records them.
    for (kernel, family, verdict, failed, cycles, p, lo, hi) in [
        (
            buggy_kernel,
            "kunpeng920",
            "regression",
            1i64,
            3i64,
            Some(0.003),
            0.0084,
            0.9057,
        ),
        (
            buggy_kernel,
            "ampere-altra",
            "regression",
            1,
            5,
            Some(0.01),
            0.005,
            0.716,
        ),
        (clean_kernel, "kunpeng920", "pass", 0, 20, None, 0.0, 0.168),
    ] {
        sqlx::query(
            "INSERT INTO verdicts (kernel_id, family, plan, baseline_kernel_id, baseline_reason, verdict, p_value,
                                   cycles_run, failed_cycles, rate, ci_low, ci_high, baseline_cycles, baseline_failed, explanation)
             VALUES ($1, $2, 'smoke', $3, 'the parent commit', $4, $5, $6, $7, $7::float8 / $6, $8, $9, 60, 0, 'seeded by a test')
             ON CONFLICT (kernel_id, family, plan) DO UPDATE SET verdict = EXCLUDED.verdict",
        )
        .bind(kernel)
        .bind(family)
        .bind(if kernel == buggy_kernel { Some(clean_kernel) } else { None })
        .bind(verdict)
        .bind(p)
        .bind(cycles)
        .bind(failed)
        .bind(lo)
        .bind(hi)
        .execute(pool)
        .await
        .unwrap();
    }
    let running_sha = "cafecafecafecafecafecafecafecafecafecafe";
    let running_kernel = kernel(pool, running_sha, "KVM: arm64: the next one").await;
    let running = run(pool, running_kernel, running_sha, &["altra-01"], 50).await;
    let epoch = start(pool, running[0], "altra-01").await;
    for n in 1..=5 {
        jobs::record_cycle(pool, running[0], "altra-01", epoch, &cycle(n, true))
            .await
            .unwrap();
    }
    append_log(
        pool,
        running[0],
        LogStream::GuestConsole,
        &boot_lines(12),
        2,
    )
    .await;
    boards::refresh_busy(pool, "altra-01").await.unwrap();
    Seeded {
        clean_kernel,
        buggy_kernel,
        passed_job: clean[0],
        xss_job: buggy[0],
        big_job: buggy[1],
        big_abort_line,
        running_job: running[0],
        running_kernel,
    }
}

/// Advances the running job by `n` cycles and console lines.
pub async fn advance(pool: &PgPool, job: i64, board: &str, n: u32, line: &str) {
    let epoch: i64 = sqlx::query_scalar("SELECT epoch FROM jobs WHERE id = $1")
        .bind(job)
        .fetch_one(pool)
        .await
        .unwrap();
    let (_, max): (i64, i32) = jobs::cycle_extent(pool, job).await.unwrap();
    for c in max as u32 + 1..=max as u32 + n {
        jobs::record_cycle(pool, job, board, epoch, &cycle(c, true))
            .await
            .unwrap();
    }
    append_log(pool, job, LogStream::GuestConsole, &format!("{line}\n"), 1).await;
}

pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !f().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
