//! HTTP-level tests of every dashboard route, through
//! `tower::ServiceExt::oneshot` on `armfleet_server::transport::http::app(state)` with
//! a real PostgreSQL seeded through the server's own functions.

mod common;
mod dashboard_support;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use dashboard_support::*;
use tower::ServiceExt;

async fn get(app: &axum::Router, uri: &str) -> (StatusCode, String, String) {
    let resp = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = axum::body::to_bytes(resp.into_body(), 64 << 20)
        .await
        .unwrap();
    (status, ctype, String::from_utf8_lossy(&body).into_owned())
}

async fn ok(app: &axum::Router, uri: &str) -> String {
    let (status, ctype, body) = get(app, uri).await;
    assert_eq!(status, StatusCode::OK, "GET {uri}: {body}");
    assert!(ctype.starts_with("text/html"), "GET {uri}: {ctype}");
    assert!(
        !body.contains(XSS),
        "GET {uri}: the hostile line must be escaped"
    );
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_renders_seeded_data_escaped_and_paged() {
    let p = prepare().await;
    let s = seed(p.pool()).await;
    let app = p.app();

    // Fleet: families by display name, states, the running job's progress, runs.
    let fleet = ok(&app, "/").await;
    for needle in [
        "HiSilicon Kunpeng 920",
        "Ampere Altra",
        "Raspberry Pi 4",
        "kunpeng-01",
        "6.12.9-arm64",
        "simulated",
        &format!("job {}", s.running_job),
        "cycle 5 of 50",
        "Recent runs",
        "data-live=\"/live/fleet",
    ] {
        assert!(fleet.contains(needle), "fleet page shows {needle}");
    }
    // Board page: facts, failure history.
    let board = ok(&app, "/boards/kunpeng-01").await;
    for needle in [
        "0x48 (HiSilicon)",
        "96",
        "256.0 GiB",
        "hardware KVM",
        "7.2.15",
        "480 of 512 free",
        "Failure history",
        &format!("/jobs/{}", s.xss_job),
        "TLB conflict abort",
    ] {
        assert!(board.contains(needle), "board page shows {needle}");
    }
    assert_eq!(get(&app, "/boards/nope").await.0, StatusCode::NOT_FOUND);

    // Kernels: newest first, verdict badges and one-line evidence.
    let kernels = ok(&app, "/kernels").await;
    let (run_pos, bug_pos, clean_pos) = (
        kernels.find("cafecafecafe").unwrap(),
        kernels.find("badbadbadbad").unwrap(),
        kernels.find("111111111111").unwrap(),
    );
    assert!(run_pos < bug_pos && bug_pos < clean_pos, "newest first");
    assert!(
        kernels.contains("v-regression")
            && kernels.contains("v-pass")
            && kernels.contains("v-running")
    );
    assert!(
        kernels.contains("1/3 cycles failed"),
        "evidence line: {kernels}"
    );
    assert!(
        kernels.contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
        "kernel subject escaped: {kernels}"
    );
    // The branch trend plot, with links to each kernel.
    let trend = ok(
        &app,
        "/kernels?tree=https%3A%2F%2Fexample.org%2Flinux.git&branch=master",
    )
    .await;
    assert!(
        trend.contains("<svg") && trend.contains("id=\"plot-trend\""),
        "trend plot"
    );
    assert!(trend.contains(&format!("href=\"/kernels/{}\"", s.buggy_kernel)));
    assert!(trend.contains("class=\"whisker\""), "CI whiskers");

    // Matrix: a cell per family with rate and verdict, linked to the evidence.
    let matrix = ok(&app, "/matrix").await;
    assert!(matrix.contains("HiSilicon Kunpeng 920") && matrix.contains("Raspberry Pi 4"));
    assert!(matrix.contains(&format!("/kernels/{}#family-kunpeng920", s.buggy_kernel)));
    assert!(
        matrix.contains("cell v-regression") && matrix.contains("33.3%"),
        "{matrix}"
    );
    assert!(
        matrix.contains("cell v-failing"),
        "rpi4 failed without a verdict"
    );
    ok(&app, "/matrix?plan=smoke&branch=master").await;
    for bad in [
        "/matrix?plan=nope",
        "/matrix?branch=a..b",
        "/matrix?page=0",
        "/matrix?page=x",
        "/matrix?bogus=1",
        "/kernels?plan=nope",
        "/kernels?page=-3",
        "/matrix?plan=smoke&plan=smoke",
    ] {
        let (status, ctype, body) = get(&app, bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "GET {bad}");
        assert!(
            ctype.starts_with("text/html") && body.contains("id=\"error-message\""),
            "GET {bad}: {body}"
        );
    }
    assert!(
        get(&app, "/matrix?plan=nope")
            .await
            .2
            .contains("unknown plan `nope`")
    );

    // Kernel page: verdicts with baseline, per-family results, findings, runs, jobs.
    let kernel = ok(&app, &format!("/kernels/{}", s.buggy_kernel)).await;
    for needle in [
        "regression",
        "the parent commit",
        &format!("href=\"/kernels/{}\"", s.clean_kernel),
        "0.0030",
        "id=\"family-kunpeng920\"",
        "TLB conflict abort",
        "Runs",
        "guest_console lines",
    ] {
        assert!(kernel.contains(needle), "kernel page shows {needle}");
    }
    assert_eq!(get(&app, "/kernels/999999").await.0, StatusCode::NOT_FOUND);
    assert_eq!(get(&app, "/kernels/abc").await.0, StatusCode::BAD_REQUEST);

    // Job page: parameters, timeline, cycles, plot, findings linking into the log, logs.
    let job = ok(&app, &format!("/jobs/{}", s.xss_job)).await;
    for needle in [
        "migrate_cancel",
        "Timeline",
        "id=\"cycles\"",
        "id=\"plot-timings\"",
        "failed at cycle 3",
        "guest_console",
        "qmp",
        "/api/v1/jobs/",
        "download",
        "class=\"line alarm\"",
        "&#60;script&#62;alert(1)&#60;/script&#62;",
    ] {
        assert!(job.contains(needle), "job page shows {needle}");
    }
    assert!(
        job.contains(&format!("/jobs/{}/log/guest_console?page=1#L31", s.xss_job)),
        "finding link to the abort line"
    );
    assert!(!job.contains("data-live="), "a finished job is not live");
    let running = ok(&app, &format!("/jobs/{}", s.running_job)).await;
    assert!(
        running.contains(&format!(
            "data-live=\"/jobs/{}/live?cycle=5&#38;seq=1\"",
            s.running_job
        )),
        "{running}"
    );

    // The log, paged: 2,000 lines a page, the finding's link lands on the right page and line.
    let big = ok(&app, &format!("/jobs/{}", s.big_job)).await;
    let link = format!(
        "/jobs/{}/log/guest_console?page=3#L{}",
        s.big_job, s.big_abort_line
    );
    assert!(big.contains(&link), "finding links to page 3: {big}");
    let page3 = ok(
        &app,
        &format!("/jobs/{}/log/guest_console?page=3", s.big_job),
    )
    .await;
    assert!(page3.contains(&format!("id=\"L{}\"", s.big_abort_line)));
    assert!(
        page3.contains("id=\"L4001\"") && !page3.contains("id=\"L4000\""),
        "page 3 starts at line 4001"
    );
    assert!(
        page3.contains("class=\"line alarm finding\""),
        "abort highlighted and marked as a finding"
    );
    assert_eq!(
        page3.matches("class=\"line").count(),
        4300 + abort_text().lines().count() + 250 - 4000,
        "the rest of the log"
    );
    let page1 = ok(&app, &format!("/jobs/{}/log/guest_console", s.big_job)).await;
    assert_eq!(
        page1.matches("<span class=\"line").count(),
        2000,
        "2,000 lines a page"
    );
    assert!(
        page1.contains("id=\"L1\"")
            && page1.contains("id=\"L2000\"")
            && !page1.contains("id=\"L2001\"")
    );
    assert!(page1.contains("page 1 of 3"));
    // Line boundaries across chunks: line 2 of the xss console is intact.
    let xss_log = ok(&app, &format!("/jobs/{}/log/guest_console", s.xss_job)).await;
    assert!(xss_log.contains("&#60;script&#62;alert(1)&#60;/script&#62;"));
    assert!(xss_log.contains("armfleet-dirty: pass 2 ok"));
    assert_eq!(
        get(
            &app,
            &format!("/jobs/{}/log/guest_console?page=9", s.big_job)
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&app, &format!("/jobs/{}/log/nope", s.big_job)).await.0,
        StatusCode::BAD_REQUEST
    );
    ok(&app, &format!("/jobs/{}/log/host_dmesg", s.big_job)).await; // empty stream
    assert_eq!(get(&app, "/jobs/424242").await.0, StatusCode::NOT_FOUND);
    assert_eq!(get(&app, "/jobs/x").await.0, StatusCode::BAD_REQUEST);

    // Signatures: title, class, count, first/last kernel, boards, example.
    let sigs = ok(&app, "/signatures").await;
    for needle in [
        "TLB conflict abort",
        "guest-abort",
        "kunpeng-01",
        "altra-01",
        "rpi4-01",
        "badbadbadbad",
        &format!("/kernels/{}", s.buggy_kernel),
    ] {
        assert!(sigs.contains(needle), "signatures page shows {needle}");
    }

    // Static assets.
    let (status, ctype, css) = get(&app, "/static/style.css").await;
    assert!(status.is_success() && ctype.starts_with("text/css") && css.contains(".verdict"));
    let (status, ctype, js) = get(&app, "/static/live.js").await;
    assert!(
        status.is_success() && ctype.starts_with("text/javascript") && js.contains("EventSource")
    );
    assert!(
        !js.contains("innerHTML"),
        "live data is inserted as text only"
    );
}

/// Reads SSE events from a streaming response until `until` is seen.
async fn sse_events(
    app: &axum::Router,
    uri: &str,
    until: &str,
    timeout: Duration,
) -> Vec<(String, String)> {
    let resp = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "GET {uri}");
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body().into_data_stream();
    let mut text = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    use futures::StreamExt;
    loop {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .unwrap_or_else(|_| panic!("no `{until}` event from {uri}: {events:?}"));
        let Some(chunk) = chunk else { break };
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let mut name = String::from("message");
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_owned();
                }
                if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if !data.is_empty() || name != "message" {
                events.push((name.clone(), data));
            }
            if name == until {
                return events;
            }
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_streams_push_board_state_progress_cycles_and_log_lines() {
    let p = prepare().await;
    let s = seed(p.pool()).await;
    let app = p.app();
    let fleet = sse_events(&app, "/live/fleet", "fleet", Duration::from_secs(5)).await;
    let snap: serde_json::Value = serde_json::from_str(&fleet.last().unwrap().1).unwrap();
    let altra = snap["boards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "altra-01")
        .unwrap();
    assert_eq!(altra["job"]["id"], s.running_job);
    assert_eq!(altra["job"]["done"], 5);

    // The job advances while the stream is open.
    let pool = p.pool().clone();
    let job = s.running_job;
    let feeder = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        advance(&pool, job, "altra-01", 3, &format!("fresh line {XSS}")).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        let epoch: i64 = sqlx::query_scalar("SELECT epoch FROM jobs WHERE id = $1")
            .bind(job)
            .fetch_one(&pool)
            .await
            .unwrap();
        armfleet_server::domain::jobs::finish(
            &pool,
            job,
            "altra-01",
            epoch,
            &armfleet_protocol::JobResult::Passed {
                cycles_completed: 8,
            },
            None,
        )
        .await
        .unwrap();
    });
    let events = sse_events(
        &app,
        &format!("/jobs/{job}/live?cycle=5&seq=1"),
        "end",
        Duration::from_secs(15),
    )
    .await;
    feeder.await.unwrap();
    let names: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    assert!(
        names.contains(&"job") && names.contains(&"cycles") && names.contains(&"log"),
        "{names:?}"
    );
    let cycles: Vec<serde_json::Value> = events
        .iter()
        .filter(|e| e.0 == "cycles")
        .flat_map(|e| serde_json::from_str::<Vec<serde_json::Value>>(&e.1).unwrap())
        .collect();
    assert_eq!(
        cycles
            .iter()
            .map(|c| c["cycle"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [6, 7, 8],
        "only new cycles"
    );
    let log = events
        .iter()
        .filter(|e| e.0 == "log")
        .map(|e| e.1.clone())
        .collect::<String>();
    assert!(
        log.contains("fresh line <script>"),
        "new console line, as JSON text for textContent: {log}"
    );
    let last_job = events.iter().filter(|e| e.0 == "job").last().unwrap();
    assert!(last_job.1.contains("\"state\":\"passed\""), "{last_job:?}");

    // Bad requests.
    assert_eq!(get(&app, "/jobs/x/live").await.0, StatusCode::BAD_REQUEST);
    assert_eq!(
        get(&app, "/jobs/999999/live").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&app, &format!("/jobs/{job}/live?cycle=-4")).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        get(&app, "/live/fleet?runs=0").await.0,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_database_pages_render() {
    let p = prepare().await;
    let app = p.app();
    for uri in [
        "/",
        "/kernels",
        "/matrix",
        "/signatures",
        "/boards/rpi4-01",
        "/kernels?branch=master",
    ] {
        ok(&app, uri).await;
    }
}

/// A board whose facts contradict its family's profile (another CPU, a
/// 64K-page kernel) is shown with a warning on its page and in the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_that_is_not_what_its_family_says_is_flagged() {
    let p = prepare().await;
    let mut f = facts("6.1.0-28-arm64", "0x41");
    f.cpu_part = Some("0xd0c".into());
    f.executor = armfleet_protocol::ExecutorKind::Qemu;
    f.host_kind = armfleet_protocol::HostKind::Hardware;
    f.memory.page_size_kib = 64;
    f.memory.thp = "madvise".into();
    f.memory.hugetlb_pools = vec![armfleet_protocol::HugepageInfo {
        size_kib: 524288,
        total: 4,
        free: 4,
    }];
    online(p.pool(), "kunpeng-01", &f).await;
    let app = p.app();
    let board = ok(&app, "/boards/kunpeng-01").await;
    assert!(board.contains("MIDR mismatch"), "{board}");
    assert!(board.contains("implementer 0x41 part 0xd0c"), "{board}");
    assert!(
        board.contains("64K pages (512.0 MiB blocks)") || board.contains("64K pages ("),
        "{board}"
    );
    assert!(board.contains("page size mismatch"), "{board}");
    let (status, _, api) = get(&app, "/api/v1/boards").await;
    assert_eq!(status, StatusCode::OK);
    let api: serde_json::Value = serde_json::from_str(&api).unwrap();
    let warnings = api["boards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "kunpeng-01")
        .unwrap()["profile_warnings"]
        .clone();
    assert_eq!(warnings.as_array().unwrap().len(), 2, "{warnings}");
    // A board that is what its family says has none.
    let mut good = facts("6.1.0-28-arm64", "0x48");
    good.executor = armfleet_protocol::ExecutorKind::Qemu;
    good.memory.page_size_kib = 4;
    online(p.pool(), "kunpeng-01", &good).await;
    let board = ok(&app, "/boards/kunpeng-01").await;
    assert!(!board.contains("profile-warning"), "{board}");
}
