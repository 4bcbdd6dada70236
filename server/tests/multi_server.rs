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

/// Many dispatchers (two servers' worth) race to claim for one board: the
/// board's `max_jobs` holds and no job is handed out twice, with claims
/// taking several jobs at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_batch_claims_respect_max_jobs_and_never_hand_a_job_out_twice() {
    use armfleet_server::domain::jobs::{Claim, claim_next};
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "b1").await;
    let fleet = fleet_toml(&[("b1", "generic-arm64", &key.public)], "")
        .replace("name = \"b1\"\n", "name = \"b1\"\nmax_jobs = 3\n");
    let server = TestServer::start(&fleet).await;
    for i in 0..10 {
        server.trigger(&format!("{:040x}", 0xc1a1e000u64 + i)).await;
    }
    // A second pool stands in for a second server on the same database.
    let other = sqlx::PgPool::connect(&server.db).await.unwrap();
    let pools = [server.pool.clone(), other];
    let mut claims = tokio::task::JoinSet::new();
    for i in 0..8 {
        let pool = pools[i % 2].clone();
        claims.spawn(async move {
            let mut got = Vec::new();
            for _ in 0..5 {
                match claim_next(
                    &pool,
                    "b1",
                    3,
                    "replay",
                    armfleet_protocol::HostKind::Simulated,
                    30,
                )
                .await
                .unwrap()
                {
                    Claim::Assigned(batch) => got.extend(batch.into_iter().map(|a| a.job_id)),
                    Claim::NeedsBoot { .. } => panic!("no job here names a build"),
                    Claim::Nothing => {}
                }
            }
            got
        });
    }
    let mut claimed = Vec::new();
    while let Some(got) = claims.join_next().await {
        claimed.extend(got.unwrap());
    }
    claimed.sort();
    let distinct = {
        let mut d = claimed.clone();
        d.dedup();
        d
    };
    assert_eq!(distinct, claimed, "no job was claimed twice");
    assert_eq!(
        claimed.len(),
        3,
        "exactly the board's room was claimed: {claimed:?}"
    );
    let assigned: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT id, epoch FROM jobs WHERE board = 'b1' AND state = 'assigned' ORDER BY id",
    )
    .fetch_all(&server.pool)
    .await
    .unwrap();
    assert_eq!(
        assigned.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        claimed,
        "the oldest three jobs, and only they, are assigned"
    );
    let oldest: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM jobs WHERE board = 'b1' ORDER BY id LIMIT 3")
            .fetch_all(&server.pool)
            .await
            .unwrap();
    assert_eq!(oldest, claimed, "claims take the queue in order");
    assert!(
        assigned.iter().all(|(_, epoch)| *epoch == 1),
        "each assignment is a new epoch"
    );
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_events WHERE to_state = 'assigned' AND from_state = 'queued'",
    )
    .fetch_one(&server.pool)
    .await
    .unwrap();
    assert_eq!(events, 3, "every move is in the job's history");
    let board: String = sqlx::query_scalar("SELECT state FROM boards WHERE name = 'b1'")
        .fetch_one(&server.pool)
        .await
        .unwrap();
    assert_ne!(board, "idle", "a board with assigned jobs is not idle");
    server.stop().await;
}

/// A lease is one holder's until it stops renewing; then another takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_has_one_holder_and_passes_on_when_it_lapses() {
    use armfleet_server::domain::leases::{hold, release};
    let server = TestServer::start(&one_board_fleet().await).await;
    let pool = &server.pool;
    let ttl = Duration::from_millis(400);
    assert!(hold(pool, "test", "x", ttl).await.unwrap());
    assert!(!hold(pool, "test", "y", ttl).await.unwrap(), "x holds it");
    assert!(hold(pool, "test", "x", ttl).await.unwrap(), "x renews");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        hold(pool, "test", "y", ttl).await.unwrap(),
        "x lapsed: y takes over"
    );
    assert!(!hold(pool, "test", "x", ttl).await.unwrap());
    release(pool, "test", "y").await.unwrap();
    assert!(
        hold(pool, "test", "x", ttl).await.unwrap(),
        "released: free at once"
    );
    server.stop().await;
}

/// The workers that must run once per cluster (bisections, boot deadlines,
/// power cycling) run on one server; when it stops, the other takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_per_cluster_workers_run_on_one_server_and_move_when_it_stops() {
    let a = TestServer::start(&one_board_fleet().await).await;
    let b = a.start_sharing().await;
    let id_of = |s: &TestServer| {
        std::fs::read_to_string(s.dir.path().join("data/server-id"))
            .unwrap()
            .trim()
            .to_owned()
    };
    let (id_a, id_b) = (id_of(&a), id_of(&b));
    let holders = |pool: sqlx::PgPool| async move {
        sqlx::query_as::<_, (String, String)>("SELECT name, holder FROM leases ORDER BY name")
            .fetch_all(&pool)
            .await
            .unwrap()
    };
    let first = wait_for("all three leases held", Duration::from_secs(20), || async {
        let h = holders(a.pool.clone()).await;
        (h.len() == 3).then_some(h)
    })
    .await;
    let names: Vec<&str> = first.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["bisect", "boot-deadlines", "power"]);
    // Held, not flapping: the same holders a few renewals later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(holders(a.pool.clone()).await, first);
    // Stop whichever server holds the bisect lease: the other has it soon.
    let (stopping, staying, staying_id) = if first[0].1 == id_a {
        (a, b, id_b)
    } else {
        assert_eq!(first[0].1, id_b);
        (b, a, id_a)
    };
    stopping.stop().await;
    wait_for(
        "the other server to take the bisect lease",
        Duration::from_secs(15),
        || async {
            let h = holders(staying.pool.clone()).await;
            h.iter()
                .any(|(n, holder)| n == "bisect" && *holder == staying_id)
                .then_some(())
        },
    )
    .await;
    staying.stop().await;
}

async fn one_board_fleet() -> String {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "b1").await;
    fleet_toml(&[("b1", "generic-arm64", &key.public)], "")
}
