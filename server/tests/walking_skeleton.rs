//! The walking skeleton, end to end: a real server on a real PostgreSQL,
//! real agent processes dialing it over real SSH on loopback.

mod common;

use std::time::Duration;

use common::*;

const CLEAN: &str = "1111111111111111111111111111111111111111";
const BUGGY: &str = "badbadbadbadbadbadbadbadbadbadbadbadbad0";

/// Replay plan: 8 fast cycles; the BUGGY kernel aborts in its first cycle.
const PLAN: &str = "[plan.params]\ncycles = 8\nreplay_cycle_ms = 40\n\
                    [plan.replay]\nbuggy_commits = [\"badbad\"]\nabort_probability = 1.0\n";

async fn three_board_lab() -> (TestServer, Vec<AgentKey>) {
    let keys_dir = tempfile::tempdir().unwrap().keep();
    let (fleet, keys) = keyed_fleet(&keys_dir, &THREE_FAMILIES, PLAN).await;
    (TestServer::start(&fleet).await, keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_boards_come_online_with_their_facts_and_a_run_reaches_its_verdicts() {
    let lab = Lab::replay(&THREE_FAMILIES, PLAN).await;
    let server = &lab.server;
    let boards = THREE_FAMILIES.map(|(board, _)| board);
    let listed = server.get_json("/api/v1/boards").await;
    let listed = listed["boards"].as_array().unwrap();
    assert_eq!(listed.len(), 3);
    for b in listed {
        assert_eq!(b["state"], "idle", "{b}");
        let facts = &b["facts"];
        assert!(
            !facts["kernel_release"].as_str().unwrap().is_empty(),
            "kernel release reported: {facts}"
        );
        assert!(facts["cores"].as_u64().unwrap() >= 1);
        assert!(facts["mem_total_kib"].as_u64().unwrap() > 0);
        assert!(facts["kvm"].is_object() && facts["hugepages"].is_object());
        assert_eq!(b["simulated"], true, "replay boards are labelled simulated");
    }

    // A clean kernel passes everywhere, a buggy one fails everywhere.
    let clean = server.trigger(CLEAN).await;
    let buggy = server.trigger(BUGGY).await;
    for (run, expect) in [(clean, "passed"), (buggy, "failed")] {
        let jobs = server.get_json(&format!("/api/v1/runs/{run}")).await["jobs"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(jobs.len(), 3, "one job per board");
        for j in jobs {
            let done = server
                .wait_job_end(j["id"].as_i64().unwrap(), Duration::from_secs(60))
                .await;
            assert_eq!(done["state"], expect, "{done}");
            assert_eq!(done["simulated"], true);
            if expect == "failed" {
                assert_eq!(done["failed_cycle"], 1);
                let evidence = done["evidence"].to_string();
                assert!(
                    evidence.contains("TLB conflict abort"),
                    "abort lines kept: {evidence}"
                );
            } else {
                assert_eq!(done["cycles_completed"], 8);
                assert_eq!(
                    done["cycles"].as_array().unwrap().len(),
                    8,
                    "cycle table stored"
                );
            }
            let states: Vec<_> = done["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["to_state"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(
                states,
                ["queued", "assigned", "running", expect],
                "every transition recorded"
            );
        }
    }
    // Rows in PostgreSQL, and the logs readable through the API.
    let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'failed'")
        .fetch_one(&server.pool)
        .await
        .unwrap();
    let passed: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'passed'")
        .fetch_one(&server.pool)
        .await
        .unwrap();
    assert_eq!((passed, failed), (3, 3));
    let job = server.get_json(&format!("/api/v1/runs/{buggy}")).await["jobs"][0]["id"]
        .as_i64()
        .unwrap();
    let console = server
        .get_text(&format!("/api/v1/jobs/{job}/log?stream=guest_console"))
        .await;
    assert!(
        console.contains("ARMFLEET-GUEST-READY")
            && console.contains("Unable to handle kernel TLB conflict abort")
    );
    // Triage turns the console into a finding with a stable title, and the
    // three boards' aborts collapse into one signature.
    let findings = wait_for(
        "the failed job's findings",
        Duration::from_secs(20),
        || async {
            let f = server
                .get_json(&format!("/api/v1/jobs/{job}/findings"))
                .await;
            (f["analysed"] == true).then_some(f)
        },
    )
    .await;
    let first = &findings["findings"][0];
    assert_eq!(first["class"], "guest-abort", "{findings}");
    assert!(
        first["title"]
            .as_str()
            .unwrap()
            .starts_with("TLB conflict abort in "),
        "{findings}"
    );
    assert_eq!(first["esr"]["fsc"], 0x30);
    assert!(
        first["excerpt"]
            .as_str()
            .unwrap()
            .contains("FSC = 0x30: TLB conflict abort")
    );
    let sigs = wait_for(
        "three findings under one signature",
        Duration::from_secs(20),
        || async {
            let s = server.get_json("/api/v1/signatures").await;
            (s["signatures"][0]["count"] == 3).then_some(s)
        },
    )
    .await;
    assert_eq!(sigs["signatures"].as_array().unwrap().len(), 1, "{sigs}");
    assert_eq!(sigs["signatures"][0]["boards"].as_array().unwrap().len(), 3);
    // The page lists the fleet and the finished runs, labelled simulated.
    let page = server.get_text("/").await;
    for b in boards {
        assert!(page.contains(b), "fleet page lists {b}");
    }
    assert!(page.contains("simulated") && page.contains("failed") && page.contains("passed"));
    lab.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_keys_and_keys_claiming_another_board_are_refused() {
    let (server, keys) = three_board_lab().await;
    let stranger = keygen(server.dir.path(), "stranger").await;
    let mut unknown = server.agent("kunpeng-01", &stranger.path, &["--executor", "replay"]);
    // altra's valid key, claiming to be the kunpeng.
    let mut impostor = server.agent("kunpeng-01", &keys[1].path, &["--executor", "replay"]);
    wait_for(
        "both agents to be refused",
        Duration::from_secs(20),
        || async {
            let refused = "the server refused this board's key";
            (unknown.log_text().contains(refused) && impostor.log_text().contains(refused))
                .then_some(())
        },
    )
    .await;
    assert_eq!(server.board_state("kunpeng-01").await, "offline");
    assert_eq!(server.board_state("altra-01").await, "offline");
    unknown.kill9();
    impostor.kill9();
    // The rightful key still gets in.
    let _ok = server.agent("kunpeng-01", &keys[0].path, &["--executor", "replay"]);
    server
        .wait_board("kunpeng-01", "idle", Duration::from_secs(20))
        .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_job_loses_the_job_and_its_restart_brings_the_board_back() {
    let keys_dir = tempfile::tempdir().unwrap();
    let key = keygen(keys_dir.path(), "kunpeng-01").await;
    // Slow cycles so the job is surely mid-way when the agent dies.
    let fleet = fleet_toml(
        &[("kunpeng-01", "kunpeng920", &key.public)],
        "[plan.params]\ncycles = 500\nreplay_cycle_ms = 100\n",
    );
    let server = TestServer::start(&fleet).await;
    let mut agent = server.agent("kunpeng-01", &key.path, &["--executor", "replay"]);
    server
        .wait_board("kunpeng-01", "idle", Duration::from_secs(20))
        .await;
    let run = server.trigger(CLEAN).await;
    let job = server.get_json(&format!("/api/v1/runs/{run}")).await["jobs"][0]["id"]
        .as_i64()
        .unwrap();
    wait_for(
        "the job to run some cycles",
        Duration::from_secs(20),
        || async {
            let j = server.get_json(&format!("/api/v1/jobs/{job}")).await;
            (j["state"] == "running" && j["cycles_completed"].as_i64().unwrap_or(0) >= 2)
                .then_some(())
        },
    )
    .await;
    agent.kill9();
    let killed_at = std::time::Instant::now();
    let done = server.wait_job_end(job, Duration::from_secs(60)).await;
    let took = killed_at.elapsed();
    assert_eq!(done["state"], "lost", "{done}");
    assert!(
        done["reason"].as_str().unwrap().contains("offline"),
        "{done}"
    );
    assert_eq!(server.board_state("kunpeng-01").await, "offline");
    // heartbeat deadline is 1.5 s; allow scheduling slack, but not a minute.
    assert!(took < Duration::from_secs(10), "lost after {took:?}");
    let _restarted = server.agent("kunpeng-01", &key.path, &["--executor", "replay"]);
    server
        .wait_board("kunpeng-01", "idle", Duration::from_secs(20))
        .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_writes_need_the_token_and_bad_requests_are_explained() {
    let keys_dir = tempfile::tempdir().unwrap();
    let key = keygen(keys_dir.path(), "rpi4-01").await;
    let server = TestServer::start(&fleet_toml(&[("rpi4-01", "rpi4", &key.public)], "")).await;
    let body = serde_json::json!({"tree": "t", "branch": "master", "commit": CLEAN});
    let none = server
        .client
        .post(server.url("/api/v1/runs"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    let wrong = server
        .client
        .post(server.url("/api/v1/runs"))
        .bearer_auth("nope")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM runs")
        .fetch_one(&server.pool)
        .await
        .unwrap();
    assert_eq!(runs, 0, "nothing created without the token");
    let bad = server
        .post_as_admin(
            "/api/v1/runs",
            Some(&serde_json::json!({"tree": "t", "branch": "master", "commit": "not-hex"})),
        )
        .await;
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("commit"));
    let unknown_field = server
        .post_as_admin(
            "/api/v1/runs",
            Some(
                &serde_json::json!({"tree": "t", "branch": "master", "commit": CLEAN, "bogus": 1}),
            ),
        )
        .await;
    assert_eq!(unknown_field.status(), 400);
    assert_eq!(
        server
            .client
            .get(server.url("/api/v1/jobs/999"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        server
            .client
            .get(server.url("/api/v1/jobs/abc"))
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    // Reads are open.
    assert_eq!(
        server
            .client
            .get(server.url("/api/v1/runs"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        server
            .client
            .get(server.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trigger_command_plans_a_run_and_a_server_stop_leaves_no_job_running() {
    let keys_dir = tempfile::tempdir().unwrap();
    let key = keygen(keys_dir.path(), "altra-01").await;
    let fleet = fleet_toml(
        &[("altra-01", "ampere-altra", &key.public)],
        "[plan.params]\ncycles = 1000\nreplay_cycle_ms = 100\n",
    );
    let server = TestServer::start(&fleet).await;
    let _agent = server.agent("altra-01", &key.path, &["--executor", "replay"]);
    server
        .wait_board("altra-01", "idle", Duration::from_secs(20))
        .await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_armfleet"))
        .args([
            "trigger",
            "--tree",
            "https://example.org/l.git",
            "--branch",
            "next",
            "--commit",
            "abcdef1234567",
        ])
        .args(["--server", &server.http, "--token", &server.token])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("run 1 planned"));
    let job: i64 = sqlx::query_scalar("SELECT id FROM jobs")
        .fetch_one(&server.pool)
        .await
        .unwrap();
    wait_for("the job to run", Duration::from_secs(20), || async {
        let s: String = sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
            .bind(job)
            .fetch_one(&server.pool)
            .await
            .unwrap();
        (s == "running").then_some(())
    })
    .await;
    // Stopping the server leaves the job with a lease that the next start
    // resolves: the agent may come back with it, or it is lost.
    drop(_agent);
    let pool = server.pool.clone();
    let server = server.restart().await;
    let (state, lease): (String, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT state, lease_expires_at FROM jobs WHERE id = $1")
            .bind(job)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(state == "running" && lease.is_some(), "{state} {lease:?}");
    wait_for("the lease to expire", Duration::from_secs(20), || async {
        let (state, reason): (String, Option<String>) =
            sqlx::query_as("SELECT state, reason FROM jobs WHERE id = $1")
                .bind(job)
                .fetch_one(&pool)
                .await
                .unwrap();
        (state == "lost").then_some(reason)
    })
    .await;
    let board: String = sqlx::query_scalar("SELECT state FROM boards WHERE name = 'altra-01'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(board, "offline");
    server.stop().await;
}
