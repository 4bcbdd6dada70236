//! Nothing lost, nothing stuck: jobs outlive a server restart, results and
//! log bytes arrive exactly once, floods are capped.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_mid_job_loses_nothing_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "b").await;
    let fleet = fleet_toml(
        &[("board-1", "ampere-altra", &key.public)],
        "[plan.params]\ncycles = 60\nreplay_cycle_ms = 80\n",
    )
    .replace(
        "heartbeat_deadline_ms = 1500",
        "heartbeat_deadline_ms = 8000",
    );
    let server = TestServer::start(&fleet).await;
    let _agent = server.agent("board-1", &key.path, &["--executor", "replay"]);
    server
        .wait_board("board-1", "idle", Duration::from_secs(20))
        .await;
    let run = server
        .trigger("abcabc0000000000000000000000000000000001")
        .await;
    let job = server.get_json(&format!("/api/v1/runs/{run}")).await["jobs"][0]["id"]
        .as_i64()
        .unwrap();
    wait_for("some cycles", Duration::from_secs(20), || async {
        let j = server.get_json(&format!("/api/v1/jobs/{job}")).await;
        (j["cycles_completed"].as_i64().unwrap_or(0) >= 10).then_some(())
    })
    .await;

    let server = server.restart().await;
    let done = server.wait_job_end(job, Duration::from_secs(60)).await;
    assert_eq!(
        done["state"], "passed",
        "the agent kept the job through the restart: {done}"
    );
    let cycles: Vec<u64> = done["cycles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["cycle"].as_u64().unwrap())
        .collect();
    assert_eq!(
        cycles,
        (1..=60).collect::<Vec<_>>(),
        "every cycle record exactly once"
    );
    let console = server
        .get_text(&format!("/api/v1/jobs/{job}/log?stream=guest_console"))
        .await;
    let beats: Vec<u64> = console
        .lines()
        .filter_map(|l| l.strip_prefix("ARMFLEET-HB "))
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(
        beats,
        (1..=180).collect::<Vec<_>>(),
        "every console line exactly once, in order"
    );
    assert_eq!(console.matches("ARMFLEET-GUEST-READY").count(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_flood_is_capped_with_a_marker_and_the_job_still_ends() {
    let lab = Lab::replay_edited(
        &[("board-1", "rpi4")],
        "[plan.params]\ncycles = 40\nreplay_cycle_ms = 5\n",
        |fleet| {
            fleet.replace(
                "api_token = \"test-token\"",
                "api_token = \"test-token\"\nmax_log_bytes_per_job = 4000",
            )
        },
    )
    .await;
    let server = &lab.server;
    let run = server
        .trigger("f100d00000000000000000000000000000000001")
        .await;
    let job = server.get_json(&format!("/api/v1/runs/{run}")).await["jobs"][0]["id"]
        .as_i64()
        .unwrap();
    let done = wait_for("the job to end", Duration::from_secs(30), || async {
        let j = server.get_json(&format!("/api/v1/jobs/{job}")).await;
        (j["state"] == "passed").then_some(j)
    })
    .await;
    let stored: i64 = done["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["bytes"].as_i64().unwrap())
        .sum();
    assert!(
        stored < 4000 + 300,
        "capped near the limit (marker included): {stored}"
    );
    let agent_log = server
        .get_text(&format!("/api/v1/jobs/{job}/log?stream=agent"))
        .await;
    assert!(
        agent_log.contains("truncated at") && agent_log.contains("per-job limit is 4000 bytes"),
        "{agent_log}"
    );
    assert_eq!(
        done["cycles"].as_array().unwrap().len(),
        40,
        "results are never dropped"
    );
    lab.server.stop().await;
}
