//! An SSH-driven board whose sshd dies mid-job, again and again.
//!
//! The "board" is this machine behind a private OpenSSH `sshd` (its own
//! port, host key and `authorized_keys`); a controller agent drives it over
//! SSH and runs real arm64 stress guests there (QEMU, TCG). Each round
//! starts a job, kills every `sshd` of that server with SIGKILL (the
//! listener and the sessions, as an OOM kill or a crash would) at a seeded
//! random moment, and starts the listener again, as the board's init would.
//! Every job must end exactly once, as a lab failure (`infra_error`) —
//! never the kernel's failure, never lost, never stuck — and the board must
//! be left with none of the job's QEMUs and files (the dead-man switch).
//!
//! Its size is a knob: CI runs `ARMFLEET_SSHD_KILLS` = 2 rounds; the soak
//! recorded in BENCHMARKS.md ran 100. Without OpenSSH's `sshd` or QEMU it
//! skips loudly (fails under `ARMFLEET_REQUIRE_QEMU=1`).

mod common;

use std::time::{Duration, Instant};

use armfleet_migrate_stress::ssh_board::{SshBoard, SshBoardError};
use common::board_sshd::{BoardSshd, leftovers, qemus_under, ready, sshd_ready};
use common::*;

const BOARD: &str = "sshd-board";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_whose_sshd_is_killed_mid_job_ends_each_job_once_as_a_lab_failure() {
    if !ready() {
        return;
    }
    let rounds: usize = std::env::var("ARMFLEET_SSHD_KILLS")
        .ok()
        .map(|v| v.parse().expect("ARMFLEET_SSHD_KILLS is a count"))
        .unwrap_or(2);
    let dir = tempfile::tempdir().unwrap();
    let agent_key = keygen(dir.path(), "agent").await;
    let controller = keygen(dir.path(), "controller").await;
    let work_dir = dir.path().join("board-work");
    std::fs::create_dir_all(&work_dir).unwrap();
    let mut sshd = BoardSshd::start(dir.path(), &controller.public);
    // Long enough that every kill lands while the job runs.
    let server = TestServer::start(&fleet_toml(
        &[(BOARD, "generic-arm64", &agent_key.public)],
        "[plan.params]\ncycles = 200\nmemory_mib = 128\nvcpus = 1\nguest_arch = \"arm64\"\n\
         accel = \"tcg\"\ncancel_delay_ms_min = 200\ncancel_delay_ms_max = 400\n",
    ))
    .await;
    let _agent = server.controller_agent(
        BOARD,
        &agent_key.path,
        &sshd.ssh_board_toml(&controller.path, &work_dir),
    );
    server
        .wait_board(BOARD, "idle", Duration::from_secs(120))
        .await;

    let mut rng = 0x55d0_4b11_u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let started = Instant::now();
    let mut jobs = Vec::new();
    let mut killed_processes = 0;
    let mut kills_while_guests_ran = 0;
    for round in 0..rounds {
        let run = server
            .trigger(&format!("{:040x}", 0x55d0_0000_u64 + round as u64))
            .await;
        let job: i64 = sqlx::query_scalar("SELECT id FROM jobs WHERE run_id = $1")
            .bind(run)
            .fetch_one(&server.pool)
            .await
            .unwrap();
        let job_now = wait_for(
            &format!("job {job} running (round {round})"),
            Duration::from_secs(180),
            || async {
                let j = server.get_json(&format!("/api/v1/jobs/{job}")).await;
                (j["state"] != "queued" && j["state"] != "assigned").then_some(j)
            },
        )
        .await;
        assert_eq!(
            job_now["state"], "running",
            "round {round}: the job ended before its board's sshd was killed: {job_now}"
        );
        // Anywhere from the guests' boot to well into the cycles.
        tokio::time::sleep(Duration::from_millis(next(8_000))).await;
        kills_while_guests_ran += usize::from(qemus_under(&work_dir) > 0);
        killed_processes += sshd.kill9_all();
        tokio::time::sleep(Duration::from_millis(200 + next(2_000))).await;
        sshd.listen();
        let end = server.wait_job_end(job, Duration::from_secs(300)).await;
        assert_eq!(
            end["state"], "infra_error",
            "round {round}: a board whose sshd died is a lab failure, never the kernel's: {end}"
        );
        let reason = end["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("SSH link") || reason.contains("cannot reach the board"),
            "round {round}: the lab failure names the lost link, not a symptom: {reason}"
        );
        // The dead-man switch: nothing of the job is left on the board.
        let (qemus, files) = leftovers(&work_dir, Duration::from_secs(60)).await;
        assert!(
            qemus == 0 && files.is_empty(),
            "round {round}: 60 s after job {job} ended the board still holds {qemus} of its \
             QEMUs and these files: {files:?}"
        );
        server
            .wait_board(BOARD, "idle", Duration::from_secs(120))
            .await;
        jobs.push(job);
        eprintln!(
            "sshd kill {}/{rounds}: job {job} ended infra_error ({:.0} s so far)",
            round + 1,
            started.elapsed().as_secs_f64()
        );
    }

    // Each job ended once: one terminal event, nothing left in flight.
    let terminal_events: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT job_id, count(*) FROM job_events
         WHERE job_id = ANY($1) AND to_state IN ('passed', 'failed', 'infra_error', 'lost', 'timed_out', 'cancelled')
         GROUP BY job_id ORDER BY job_id",
    )
    .bind(&jobs)
    .fetch_all(&server.pool)
    .await
    .unwrap();
    assert_eq!(terminal_events.len(), rounds, "{terminal_events:?}");
    assert!(
        terminal_events.iter().all(|(_, n)| *n == 1),
        "a job ended twice: {terminal_events:?}"
    );
    let in_flight: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE state IN ('queued', 'assigned', 'running')",
    )
    .fetch_one(&server.pool)
    .await
    .unwrap();
    assert_eq!(in_flight, 0, "jobs stuck in flight");
    println!(
        "sshd-faults: rounds={rounds} sshd_processes_killed={killed_processes} \
         kills_while_guests_ran={kills_while_guests_ran} jobs={} infra_error={} ended_twice=0 \
         stuck=0 qemus_left=0 seconds={:.0}",
        jobs.len(),
        jobs.len(),
        started.elapsed().as_secs_f64()
    );
}

/// What a command on the board answered is only its answer when sshd said
/// how it ended: output cut short by sshd's death (a probe that printed
/// half its lines, no `qemu=` among them) is a lost link, never "QEMU is
/// not installed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_cut_short_by_sshds_death_is_a_lost_link_not_the_boards_answer() {
    if !sshd_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let controller = keygen(dir.path(), "controller").await;
    let mut sshd = BoardSshd::start(dir.path(), &controller.public);
    let board = SshBoard::connect(&sshd.ssh_config(&controller.path, dir.path()))
        .await
        .unwrap();

    let whole = board
        .run("echo machine=$(uname -m)", Duration::from_secs(10))
        .await
        .expect("a command that ran to its end");
    assert_eq!(whole.status, Some(0));
    assert!(whole.stdout_text().starts_with("machine="));

    let cut = tokio::spawn(async move {
        board
            .run(
                "echo first-half; sleep 30; echo qemu=/usr/bin/qemu",
                Duration::from_secs(60),
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        sshd.kill9_all() >= 2,
        "the listener and the command's session"
    );
    match cut.await.unwrap() {
        Err(SshBoardError::Link { msg, .. }) => {
            assert!(msg.contains("without an exit status"), "{msg}")
        }
        other => panic!("a command whose sshd died is a lost link, got {other:?}"),
    }
}
