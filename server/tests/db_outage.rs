//! A PostgreSQL outage in mid-job: agents stay connected, writes answer 503
//! while nothing can be persisted, and when the database is back every
//! result and log byte is stored exactly once — without a server restart.
//! (Its own test binary: it stops and starts its own private cluster.)

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use armfleet_server::wiring::db::embedded::EmbeddedPostgres;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_mid_job_loses_nothing() {
    let root = std::path::PathBuf::from(format!("/tmp/armfleet-outage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut pg = EmbeddedPostgres::start(&root).expect("private cluster");
    let url = format!(
        "postgres://postgres@localhost/postgres?host={}&port=5432",
        pg.socket_dir().display()
    );

    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "b").await;
    let fleet = fleet_toml(
        &[("board-1", "kunpeng920", &key.public)],
        "[plan.params]\ncycles = 80\nreplay_cycle_ms = 50\n",
    );
    let server = TestServer::start_on(url, &fleet).await;
    let agent = server.agent("board-1", &key.path, &["--executor", "replay"]);
    server
        .wait_board("board-1", "idle", Duration::from_secs(20))
        .await;
    let run = server
        .trigger("0bad0bad00000000000000000000000000000001")
        .await;
    let job = server.get_json(&format!("/api/v1/runs/{run}")).await["jobs"][0]["id"]
        .as_i64()
        .unwrap();
    wait_for("some cycles", Duration::from_secs(20), || async {
        let j = server.get_json(&format!("/api/v1/jobs/{job}")).await;
        (j["cycles_completed"].as_i64().unwrap_or(0) >= 10).then_some(())
    })
    .await;

    let pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .unwrap();
    // While the database is gone, writes are refused with 503 (retry later).
    let r = server
        .post_as_admin(
            "/api/v1/runs",
            Some(&serde_json::json!({"tree": "t", "branch": "master", "commit": "abcdef0"})),
        )
        .await;
    assert_eq!(r.status(), 503, "{}", r.text().await.unwrap_or_default());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let root2 = root.clone();
    let pg2 = tokio::task::spawn_blocking(move || {
        EmbeddedPostgres::start(&root2).expect("cluster restarts")
    })
    .await
    .unwrap();

    let done = wait_for("the job to end", Duration::from_secs(60), || async {
        let r = server
            .client
            .get(server.url(&format!("/api/v1/jobs/{job}")))
            .send()
            .await
            .ok()?;
        let j: serde_json::Value = r.json().await.ok()?;
        (j["state"] == "passed").then_some(j)
    })
    .await;
    let cycles: Vec<u64> = done["cycles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["cycle"].as_u64().unwrap())
        .collect();
    assert_eq!(
        cycles,
        (1..=80).collect::<Vec<_>>(),
        "every cycle exactly once"
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
        (1..=240).collect::<Vec<_>>(),
        "every log line exactly once"
    );
    let log = agent.log_text();
    assert!(
        !log.contains("reconnecting"),
        "the agent stayed connected through the outage:\n{log}"
    );
    server.stop().await;
    drop(pg2);
    drop(pg);
    let _ = std::fs::remove_dir_all(&root);
}
