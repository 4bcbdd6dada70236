//! Per-kernel verdicts end to end: a kernel with an injected 0.5%-per-cycle
//! abort is called a regression against its clean parent after the server
//! schedules extra cycles by itself, a clean kernel passes, and a later
//! clean kernel marks the regression fixed.

mod common;

use std::time::Duration;

use common::*;

const PARENT: &str = "aaaa000000000000000000000000000000000001";
const BUGGY: &str = "bbbb000000000000000000000000000000000002";
const FIX: &str = "cccc000000000000000000000000000000000003";

const PLAN: &str = "[plan.params]\ncycles = 200\nreplay_cycle_ms = 1\n\
    [plan.replay]\nbuggy_commits = [\"bbbb\"]\nabort_probability = 0.005\n\
    [plan.verdict]\nalpha = 0.05\nmin_detectable_rate = 0.005\npower = 0.95\nextension_cycles = 200\nmax_extensions = 40\nbudget_board_minutes = 60\n";

async fn verdicts_of(server: &TestServer, commit: &str) -> Vec<serde_json::Value> {
    let k = server.get_json(&format!("/api/v1/kernels/{commit}")).await;
    k["kernels"][0]["verdicts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn settled(server: &TestServer, commit: &str) -> serde_json::Value {
    wait_for(
        &format!("a final verdict for {commit}"),
        Duration::from_secs(240),
        || async {
            let pending: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobs j JOIN kernels k ON k.id = j.kernel_id
             WHERE k.commit_sha = $1 AND j.state IN ('queued', 'assigned', 'running')",
            )
            .bind(commit)
            .fetch_one(&server.pool)
            .await
            .unwrap();
            let unanalysed: i64 =
                sqlx::query_scalar("SELECT count(*) FROM jobs WHERE analyzed_at IS NULL")
                    .fetch_one(&server.pool)
                    .await
                    .unwrap();
            let v = verdicts_of(server, commit).await;
            let done = pending == 0
                && unanalysed == 0
                && v.len() == 1
                && v[0]["verdict"] != "inconclusive";
            done.then(|| v[0].clone())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rare_abort_is_called_a_regression_after_extra_cycles_and_a_clean_kernel_is_not() {
    let lab = Lab::replay(
        &[("altra-01", "ampere-altra"), ("altra-02", "ampere-altra")],
        PLAN,
    )
    .await;
    let server = &lab.server;

    // The clean parent, judged on its own: it must run enough clean cycles
    // that a 0.5% bug would have shown up with 95% probability (598).
    server.trigger(PARENT).await;
    let parent = settled(&server, PARENT).await;
    println!("parent: {parent}");
    assert_eq!(parent["verdict"], "pass", "{parent}");
    assert_eq!(parent["failed_cycles"], 0);
    assert!(parent["cycles_run"].as_i64().unwrap() >= 598, "{parent}");
    assert!(
        parent["extensions"].as_i64().unwrap() >= 1,
        "the first 400 cycles were not enough: extra cycles were scheduled"
    );

    // The buggy child against its parent.
    server.trigger(BUGGY).await;
    let child = settled(&server, BUGGY).await;
    println!("child: {child}");
    assert_eq!(child["verdict"], "regression", "{child}");
    assert_eq!(
        child["baseline_commit"], PARENT,
        "compared against the parent"
    );
    assert!(child["p_value"].as_f64().unwrap() < 0.05);
    assert!(child["failed_cycles"].as_i64().unwrap() >= 2);
    let rate = child["rate"].as_f64().unwrap();
    assert!(
        child["ci_low"].as_f64().unwrap() <= rate && rate <= child["ci_high"].as_f64().unwrap()
    );
    // The verdict and the regression it opens are one transaction: once the
    // verdict reads `regression`, the regression is there, already confirmed.
    let regressions = server.get_json("/api/v1/regressions").await;
    let r = &regressions["regressions"][0];
    assert_eq!(r["bad_commit"], BUGGY, "{regressions}");
    assert_eq!(r["good_commit"], PARENT);
    assert_eq!(
        r["state"], "confirmed",
        "seen on both boards of the family: {regressions}"
    );

    // A later clean kernel passes (not a regression), and fixes it.
    server.trigger(FIX).await;
    let fix = settled(&server, FIX).await;
    println!("fix: {fix}");
    assert!(
        fix["verdict"] == "fixed" || fix["verdict"] == "pass",
        "{fix}"
    );
    assert_eq!(fix["baseline_commit"], BUGGY);
    let regressions = server.get_json("/api/v1/regressions").await;
    let r = &regressions["regressions"][0];
    assert_eq!(r["state"], "fixed", "{regressions}");
    assert_eq!(r["fixed_commit"], FIX);
    let states: Vec<&str> = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["to_state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        ["open", "confirmed", "fixed"],
        "every transition kept with its evidence"
    );

    let spent: f64 = sqlx::query_scalar("SELECT sum(board_seconds) FROM verdicts")
        .fetch_one(&server.pool)
        .await
        .unwrap();
    println!(
        "board-minutes spent on the three kernels: {:.2}",
        spent / 60.0
    );
    lab.server.stop().await;
}

/// An agent asked for `executor = "auto"` on a host without the arm64 QEMU
/// or the guest image falls back to replaying logs. Its clean cycles are
/// recorded and shown, but they are not evidence: the kernel is
/// `not-exercised`, never `pass`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_fallback_never_makes_a_pass() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "altra-01").await;
    let plan = "[plan.params]\ncycles = 50\nreplay_cycle_ms = 1\n";
    let server = TestServer::start(&fleet_toml(
        &[("altra-01", "ampere-altra", &key.public)],
        plan,
    ))
    .await;
    let no_guest = dir.path().join("no-guest-here");
    let _agent = server.agent_with_env(
        "altra-01",
        &key.path,
        &dir.path().join("agent-state"),
        &["--executor", "auto"],
        &[
            ("ARMFLEET_GUEST_DIR", no_guest.to_str().unwrap()),
            ("ARMFLEET_QEMU_AARCH64", "/nonexistent/qemu-system-aarch64"),
        ],
    );
    server
        .wait_board("altra-01", "idle", Duration::from_secs(20))
        .await;
    let run = server.trigger(PARENT).await;
    let job = server.get_json(&format!("/api/v1/runs/{run}")).await["jobs"][0]["id"]
        .as_i64()
        .unwrap();
    let done = server.wait_job_end(job, Duration::from_secs(120)).await;
    assert_eq!(done["state"], "passed", "{done}");
    assert_eq!(done["host_kind"], "simulated", "{done}");
    assert!(
        done["fallback"]
            .as_str()
            .unwrap_or("")
            .contains("fell back to replay"),
        "the job says it is a fallback: {}",
        done["fallback"]
    );
    let v = settled(&server, PARENT).await;
    assert_eq!(v["verdict"], "not-exercised", "{v}");
    assert_eq!(v["basis"], "none", "{v}");
    assert_eq!(v["cycles_run"], 0, "no cycle counted: {v}");
    let why = v["explanation"].as_str().unwrap();
    assert!(
        why.contains("50 cycle(s) ran") && why.contains("1 job(s) on a fallback"),
        "{why}"
    );
    // The kernel page says so too.
    let id = server.get_json(&format!("/api/v1/kernels/{PARENT}")).await["kernels"][0]["id"]
        .as_i64()
        .unwrap();
    let page = server.get_text(&format!("/kernels/{id}")).await;
    assert!(page.contains("not-exercised"), "{page}");
    assert!(
        page.contains("1 job(s) on a fallback (not counted)"),
        "{page}"
    );
    server.stop().await;
}
