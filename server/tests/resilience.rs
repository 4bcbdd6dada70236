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

/// An agent that reconnects lists the jobs it still holds, and the board's
/// other in-flight jobs are lost with its previous agent. Work handed out
/// between its hello and that reconciliation would be counted among them
/// (the chaos soak caught a job lost 20 ms after its assignment while the
/// agent ran it to `passed`), so a session gets work only once its
/// handshake is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_gets_no_work_until_its_handshake_has_reconciled_the_jobs_it_holds() {
    use armfleet_protocol::{HostKind, ServerMessage};
    use armfleet_server::domain::config::{Fleet, SharedFleet};
    use armfleet_server::wiring::metrics::Metrics;
    use armfleet_server::workers::dispatch::Dispatcher;
    use armfleet_server::workers::scheduler::Claims;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "b").await;
    let fleet_text = fleet_toml(&[("board-1", "ampere-altra", &key.public)], "");
    let server = TestServer::start(&fleet_text).await;
    let run = server
        .trigger("abcabc0000000000000000000000000000000002")
        .await;
    let job = server.get_json(&format!("/api/v1/runs/{run}")).await["jobs"][0]["id"]
        .as_i64()
        .unwrap();
    // A dispatcher of its own on the server's database: the board is not
    // connected to the server, so only this one can hand out its job.
    let fleet = Fleet::parse(&dir.path().join("fleet.toml"), &fleet_text).unwrap();
    let dispatcher = Dispatcher::new(
        server.pool.clone(),
        SharedFleet::new(fleet),
        Arc::new(Metrics::new()),
    );
    let (tx, mut to_agent) = tokio::sync::mpsc::channel(8);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let ticket = dispatcher.register(
        "board-1",
        key.public.clone().into_bytes(),
        tx,
        "replay",
        HostKind::Simulated,
        &shutdown,
    );

    dispatcher.clone().claim("board-1".into()).await;
    assert!(
        to_agent.try_recv().is_err(),
        "work was handed to a session still in its handshake"
    );
    assert_eq!(
        server.get_json(&format!("/api/v1/jobs/{job}")).await["state"],
        "queued"
    );

    dispatcher.open_for_work("board-1", ticket.id);
    dispatcher.clone().claim("board-1".into()).await;
    match to_agent.try_recv() {
        Ok(ServerMessage::AssignJob { job_id, .. }) => assert_eq!(job_id, job),
        other => panic!("the open session gets the job, got {other:?}"),
    }
    assert_eq!(
        server.get_json(&format!("/api/v1/jobs/{job}")).await["state"],
        "assigned"
    );
}
