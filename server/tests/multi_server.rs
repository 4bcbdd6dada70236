//! Several servers on one PostgreSQL: work announced on one reaches boards
//! connected to the other (LISTEN/NOTIFY), and no job is handed out twice.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_the_queue_without_running_a_job_twice() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["b1", "b2", "b3", "b4"];
    let mut keys = Vec::new();
    for n in names {
        keys.push(keygen(dir.path(), n).await);
    }
    let boards: Vec<(&str, &str, &str)> = names
        .iter()
        .zip(&keys)
        .map(|(n, k)| (*n, "generic-arm64", k.public.as_str()))
        .collect();
    let a = TestServer::start(&fleet_toml(
        &boards,
        "[plan.params]\ncycles = 3\nreplay_cycle_ms = 10\n",
    ))
    .await;
    let b = a.start_sharing().await;
    let _agents: Vec<_> = names
        .iter()
        .zip(&keys)
        .enumerate()
        .map(|(i, (n, k))| {
            if i < 2 {
                a.agent(n, &k.path, &["--executor", "replay"])
            } else {
                b.agent(n, &k.path, &["--executor", "replay"])
            }
        })
        .collect();
    for n in names {
        a.wait_board(n, "idle", Duration::from_secs(30)).await;
    }
    let servers: i64 = sqlx::query_scalar("SELECT count(DISTINCT server_id) FROM boards")
        .fetch_one(&a.pool)
        .await
        .unwrap();
    assert_eq!(servers, 2, "the boards are split over two servers");

    // Every run is requested on server A; half of its jobs belong to boards
    // that only server B can reach.
    for i in 0..10 {
        a.trigger(&format!("{:040x}", 0xabc000 + i)).await;
    }
    wait_for("all 40 jobs to pass", Duration::from_secs(90), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'passed'")
            .fetch_one(&a.pool)
            .await
            .unwrap();
        (n == 40).then_some(())
    })
    .await;
    let twice: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT job_id FROM job_events WHERE to_state = 'assigned' GROUP BY job_id HAVING count(*) > 1) t",
    )
    .fetch_one(&a.pool)
    .await
    .unwrap();
    assert_eq!(twice, 0, "no job was assigned twice");
    let on_b: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE board IN ('b3', 'b4') AND state = 'passed'",
    )
    .fetch_one(&a.pool)
    .await
    .unwrap();
    assert_eq!(on_b, 20, "server B ran the jobs announced by server A");
    b.stop().await;
    a.stop().await;
}
