//! The dashboard over a history made by real agents: a real server, three
//! replay agents over real SSH, a clean and a buggy kernel; then every
//! page is read over HTTP (reqwest), including a failed job whose console
//! got a hostile line.

mod common;

use std::time::Duration;

use armfleet_protocol::LogStream;
use common::*;

const CLEAN: &str = "1111111111111111111111111111111111111111";
const BUGGY: &str = "badbadbadbadbadbadbadbadbadbadbadbadbad0";
const XSS: &str = "<script>alert(1)</script>";
const PLAN: &str = "[plan.params]\ncycles = 8\nreplay_cycle_ms = 40\n\
                    [plan.replay]\nbuggy_commits = [\"badbad\"]\nabort_probability = 1.0\n";

async fn page(server: &TestServer, path: &str) -> String {
    let resp = server.client.get(server.url(path)).send().await.unwrap();
    assert_eq!(resp.status(), 200, "GET {path}");
    let body = resp.text().await.unwrap();
    assert!(
        !body.contains(XSS),
        "GET {path}: hostile text must be escaped"
    );
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_show_what_real_agents_produced() {
    let lab = Lab::replay(&THREE_FAMILIES, PLAN).await;
    let server = &lab.server;
    let clean = server.trigger(CLEAN).await;
    let buggy = server.trigger(BUGGY).await;
    let mut jobs = Vec::new();
    for run in [clean, buggy] {
        for j in server.get_json(&format!("/api/v1/runs/{run}")).await["jobs"]
            .as_array()
            .unwrap()
        {
            jobs.push(j["id"].as_i64().unwrap());
        }
    }
    wait_for("every job analysed", Duration::from_secs(90), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE analyzed_at IS NULL")
            .fetch_one(&server.pool)
            .await
            .unwrap();
        (n == 0).then_some(())
    })
    .await;
    let failed: i64 =
        sqlx::query_scalar("SELECT id FROM jobs WHERE state = 'failed' ORDER BY id LIMIT 1")
            .fetch_one(&server.pool)
            .await
            .unwrap();
    // A hostile line at the end of the failed job's console.
    let next: i64 = sqlx::query_scalar(
        "SELECT max(seq) + 1 FROM log_chunks WHERE job_id = $1 AND stream = 'guest_console'",
    )
    .bind(failed)
    .fetch_one(&server.pool)
    .await
    .unwrap();
    armfleet_server::domain::logs::store_chunk(
        &server.pool,
        failed,
        LogStream::GuestConsole,
        next as u64,
        format!("{XSS}\n").as_bytes(),
    )
    .await
    .unwrap();

    let fleet = page(&server, "/").await;
    for needle in [
        "HiSilicon Kunpeng 920",
        "Ampere Altra",
        "Raspberry Pi 4",
        "simulated",
        "idle",
        "Recent runs",
        "passed",
        "failed",
    ] {
        assert!(fleet.contains(needle), "fleet shows {needle}");
    }
    let board = page(&server, "/boards/altra-01").await;
    assert!(
        board.contains("Failure history")
            && board.contains("TLB conflict abort")
            && board.contains("replay"),
        "{board}"
    );
    let kernels = page(&server, "/kernels").await;
    assert!(kernels.contains("badbadbadbad") && kernels.contains("111111111111"));
    assert!(
        kernels.contains("cycles failed"),
        "evidence line: {kernels}"
    );
    let buggy_kernel: i64 = sqlx::query_scalar("SELECT id FROM kernels WHERE commit_sha = $1")
        .bind(BUGGY)
        .fetch_one(&server.pool)
        .await
        .unwrap();
    let kernel = page(&server, &format!("/kernels/{buggy_kernel}")).await;
    assert!(kernel.contains("id=\"family-kunpeng920\"") && kernel.contains("TLB conflict abort"));
    let matrix = page(&server, "/matrix").await;
    assert!(matrix.contains(&format!("/kernels/{buggy_kernel}#family-rpi4")));
    page(&server, "/kernels?branch=master").await;
    let sigs = page(&server, "/signatures").await;
    assert!(
        sigs.contains("TLB conflict abort")
            && sigs.contains("kunpeng-01")
            && sigs.contains("rpi4-01")
    );
    let job = page(&server, &format!("/jobs/{failed}")).await;
    assert!(
        job.contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
        "the hostile line shows, escaped"
    );
    assert!(
        job.contains("class=\"line alarm\"")
            && job.contains("id=\"plot-timings\"")
            && job.contains("finding-link")
    );
    let log = page(&server, &format!("/jobs/{failed}/log/guest_console")).await;
    assert!(
        log.contains("&#60;script&#62;alert(1)&#60;/script&#62;")
            && log.contains("ARMFLEET-GUEST-READY")
    );
    let passed: i64 =
        sqlx::query_scalar("SELECT id FROM jobs WHERE state = 'passed' ORDER BY id LIMIT 1")
            .fetch_one(&server.pool)
            .await
            .unwrap();
    let job = page(&server, &format!("/jobs/{passed}")).await;
    assert!(
        job.contains("8 of 8") && job.matches("<tr>").count() >= 8,
        "cycle table of a passed job"
    );
    // Live streams over a real socket end when the server stops.
    let resp = server
        .client
        .get(server.url("/live/fleet"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let stop = tokio::time::timeout(Duration::from_secs(20), lab.server.stop()).await;
    assert!(
        stop.is_ok(),
        "an open event stream must not hold up the shutdown"
    );
    drop(resp);
}
