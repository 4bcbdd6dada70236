//! Automatic bisection on simulated boards. The "kernel" is a synthetic git
//! repository made here: 100 commits; from commit 63 on the tree holds
//! `.armfleet-replay/bug` (the replay boards' guests abort with that
//! per-cycle probability), and commit 40 holds `.armfleet-replay/build-fails`
//! (it "does not build").

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// Makes the repository; returns the commits' SHAs, index = commit number.
fn synthetic_tree(dir: &Path, bug_probability: &str) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q", "-b", "master"]);
    let mut shas = Vec::new();
    for i in 0..100 {
        std::fs::write(dir.join("version"), format!("{i}\n")).unwrap();
        let marker = dir.join(".armfleet-replay");
        std::fs::create_dir_all(&marker).unwrap();
        if i == 63 {
            std::fs::write(marker.join("bug"), format!("{bug_probability}\n")).unwrap();
        }
        if i == 40 {
            std::fs::write(marker.join("build-fails"), "syntax error\n").unwrap();
        } else {
            let _ = std::fs::remove_file(marker.join("build-fails"));
        }
        git(dir, &["add", "-A"]);
        git(dir, &["commit", "-q", "-m", &format!("commit {i}")]);
        shas.push(git(dir, &["rev-parse", "HEAD"]));
    }
    shas
}

/// Two boards of one family: a step's cycles are shared between them.
const TWO_ALTRAS: [(&str, &str); 2] = [("altra-01", "ampere-altra"), ("altra-02", "ampere-altra")];

async fn two_board_lab(cycles: u32) -> Lab {
    Lab::replay(
        &TWO_ALTRAS,
        &format!("[plan.params]\ncycles = {cycles}\nreplay_cycle_ms = 1\n"),
    )
    .await
}

async fn cli(server: &TestServer, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_armfleet"))
        .args(args)
        .args(["--server", &server.http])
        .env("ARMFLEET_TOKEN", &server.token)
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn start(
    server: &TestServer,
    tree: &Path,
    good: &str,
    bad: &str,
    extra: serde_json::Value,
) -> i64 {
    let mut body = serde_json::json!({"tree": tree.display().to_string(), "branch": "master", "good": good, "bad": bad, "plan": "smoke"});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let r = server
        .post_as_admin("/api/v1/bisections", Some(&body))
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap()
}

async fn settled(server: &TestServer, id: i64, timeout: Duration) -> serde_json::Value {
    wait_for(&format!("bisection {id} to end"), timeout, || async {
        let v = server.get_json(&format!("/api/v1/bisections/{id}")).await;
        (v["bisection"]["state"] != "running").then_some(v)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reproducible_bug_is_bisected_to_its_commit_within_log2_steps() {
    let repo = tempfile::tempdir().unwrap();
    let shas = synthetic_tree(repo.path(), "1.0");
    let lab = two_board_lab(4).await;
    let server = &lab.server;
    let t0 = Instant::now();
    let tree = repo.path().display().to_string();
    let (ok, out) = cli(
        &server,
        &[
            "bisect",
            "start",
            "--tree",
            &tree,
            "--branch",
            "master",
            "--good",
            &shas[0],
            "--bad",
            &shas[99],
            "--plan",
            "smoke",
            "--confidence",
            "0.999",
        ],
    )
    .await;
    assert!(ok && out.contains("bisection 1 started"), "{out}");
    let v = settled(&server, 1, Duration::from_secs(240)).await;
    let took = t0.elapsed();
    let b = &v["bisection"];
    assert_eq!(b["state"], "found", "{v:#}");
    assert_eq!(b["first_bad_sha"], shas[63].as_str(), "{v:#}");
    let tested = v["tested_steps"].as_u64().unwrap();
    eprintln!(
        "100% bug: commit 63 found in {tested} tested steps, {took:?}, {:.2} board-minutes",
        v["board_minutes"].as_f64().unwrap()
    );
    // ⌈log2(100)⌉ + 1 = 8.
    assert!(tested <= 8, "{tested} steps: {v:#}");
    assert!(
        b["signature"]
            .as_str()
            .unwrap()
            .contains("TLB conflict abort"),
        "{b}"
    );
    assert_eq!(b["failure_rate"], 1.0);
    assert!(b["result_confidence"].as_f64().unwrap() > 0.99, "{b}");
    assert!(b["board_seconds"].as_f64().unwrap() > 0.0);
    // Every step says what it saw.
    for s in v["steps"].as_array().unwrap() {
        let n: usize = shas
            .iter()
            .position(|x| x == s["commit_sha"].as_str().unwrap())
            .unwrap();
        let verdict = s["verdict"].as_str().unwrap();
        if s["kind"] == "calibrate" {
            assert_eq!((n, verdict), (99, "bad"));
            continue;
        }
        match verdict {
            "good" => {
                assert!(n < 63, "commit {n} called good");
                assert!(s["cycles_run"].as_i64().unwrap() >= s["cycles_needed"].as_i64().unwrap());
                assert!(s["confidence"].as_f64().unwrap() >= 0.999, "{s}");
            }
            "bad" => {
                assert!(n >= 63, "commit {n} called bad");
                assert!(
                    s["evidence"]["titles"][0]
                        .as_str()
                        .unwrap()
                        .starts_with("TLB conflict abort"),
                    "{s}"
                );
            }
            "skip" => assert_eq!(n, 40),
            other => panic!("verdict {other}"),
        }
    }
    let (ok, out) = cli(&server, &["bisect", "show", "1"]).await;
    assert!(
        ok && out.contains(&format!("first bad commit: {}", shas[63])),
        "{out}"
    );

    // Stopping one: it ends `stopped` and its queued jobs are cancelled.
    let id = start(
        &server,
        repo.path(),
        &shas[0],
        &shas[99],
        serde_json::json!({"rate": 0.001}),
    )
    .await;
    let (ok, out) = cli(&server, &["bisect", "stop", &id.to_string()]).await;
    assert!(ok, "{out}");
    let v = server.get_json(&format!("/api/v1/bisections/{id}")).await;
    assert_eq!(v["bisection"]["state"], "stopped");
    // Bad input is refused with the reason.
    let r = server.post_as_admin("/api/v1/bisections", Some(&serde_json::json!({"tree": tree, "good": shas[99], "bad": shas[0], "plan": "smoke"}))).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("not an ancestor"));
    lab.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_percent_bug_is_bisected_across_seeds_skipping_the_commit_that_does_not_build() {
    let repo = tempfile::tempdir().unwrap();
    let shas = synthetic_tree(repo.path(), "0.01");
    let lab = two_board_lab(300).await;
    let server = &lab.server;
    let t0 = Instant::now();
    // Good 0, bad 80: the first split is commit 40, which does not build.
    let mut ids = Vec::new();
    for seed in [1u64, 2, 3] {
        ids.push((
            seed,
            start(
                &server,
                repo.path(),
                &shas[0],
                &shas[80],
                serde_json::json!({"seed": seed, "confidence": 0.999}),
            )
            .await,
        ));
    }
    for (seed, id) in ids {
        let v = settled(&server, id, Duration::from_secs(600)).await;
        let b = &v["bisection"];
        assert_eq!(b["state"], "found", "seed {seed}: {v:#}");
        assert_eq!(b["first_bad_sha"], shas[63].as_str(), "seed {seed}: {v:#}");
        let steps = v["steps"].as_array().unwrap();
        let skipped: Vec<&str> = steps
            .iter()
            .filter(|s| s["verdict"] == "skip")
            .map(|s| s["commit_sha"].as_str().unwrap())
            .collect();
        assert_eq!(
            skipped,
            [shas[40].as_str()],
            "seed {seed}: commit 40 skipped, nothing else"
        );
        assert_eq!(
            steps.iter().find(|s| s["verdict"] == "skip").unwrap()["evidence"]["build"],
            "failed"
        );
        let tested = v["tested_steps"].as_u64().unwrap();
        let rate = b["failure_rate"].as_f64().unwrap();
        eprintln!(
            "seed {seed}: 1% bug (measured {rate:.4}/cycle over {} cycles) → commit 63 in {tested} steps (1 skip), confidence {:.4}, {:.2} board-minutes, {:?} so far",
            b["rate_cycles"],
            b["result_confidence"].as_f64().unwrap(),
            v["board_minutes"].as_f64().unwrap(),
            t0.elapsed()
        );
        // ⌈log2(80)⌉ = 7 splits, plus the skip and one neighbour of it.
        assert!(tested <= 10, "seed {seed}: {tested} steps");
        assert!((0.002..0.05).contains(&rate), "seed {seed}: rate {rate}");
        assert!(b["result_confidence"].as_f64().unwrap() > 0.99);
        for s in steps.iter().filter(|s| s["verdict"] == "good") {
            let n = shas
                .iter()
                .position(|x| x == s["commit_sha"].as_str().unwrap())
                .unwrap();
            assert!(n < 63, "seed {seed}: commit {n} wrongly good");
            assert!(
                s["cycles_run"].as_i64().unwrap() >= 300,
                "a good call needs many clean cycles: {s}"
            );
        }
    }
    lab.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_regression_on_a_watched_tree_is_bisected_automatically() {
    let repo = tempfile::tempdir().unwrap();
    let shas = synthetic_tree(repo.path(), "1.0");
    let tree = repo.path().display().to_string();
    // Triggered runs take "buggy" from the plan (commit 99 by prefix); the
    // bisection reads each commit's tree.
    let plan = format!(
        "[plan.params]\ncycles = 20\nreplay_cycle_ms = 1\n[plan.replay]\nbuggy_commits = [\"{}\"]\nabort_probability = 1.0\n",
        &shas[99][..12]
    );
    let lab = Lab::replay_edited(&TWO_ALTRAS, &plan, |mut fleet| {
        fleet.push_str(&format!(
            "\n[[tree]]\nname = \"synthetic\"\nurl = \"{tree}\"\nbranches = [\"master\"]\n"
        ));
        fleet.push_str(
            "\n[report]\nreported_by = \"armfleet lab <lab@example.org>\"\nlink = \"https://armfleet.example.org\"\n",
        );
        fleet
    })
    .await;
    let server = &lab.server;
    let t0 = Instant::now();
    let trigger = |commit: String, baseline: Option<String>| {
        let mut body = serde_json::json!({"tree": tree, "branch": "master", "commit": commit});
        if let Some(b) = baseline {
            body["baseline"] = b.into();
        }
        server
            .client
            .post(server.url("/api/v1/runs"))
            .bearer_auth(&server.token)
            .json(&body)
            .send()
    };
    assert_eq!(trigger(shas[0].clone(), None).await.unwrap().status(), 201);
    wait_for(
        "the good kernel's jobs",
        Duration::from_secs(60),
        || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobs WHERE state = 'passed' AND analyzed_at IS NOT NULL",
            )
            .fetch_one(&server.pool)
            .await
            .unwrap();
            (n == 2).then_some(())
        },
    )
    .await;
    assert_eq!(
        trigger(shas[99].clone(), Some(shas[0].clone()))
            .await
            .unwrap()
            .status(),
        201
    );
    let regression: i64 = wait_for(
        "a confirmed regression",
        Duration::from_secs(60),
        || async {
            sqlx::query_scalar(
                "SELECT id FROM regressions WHERE state IN ('confirmed', 'bisected')",
            )
            .fetch_optional(&server.pool)
            .await
            .unwrap()
        },
    )
    .await;
    let id: i64 = wait_for(
        "the automatic bisection",
        Duration::from_secs(30),
        || async {
            sqlx::query_scalar("SELECT id FROM bisections WHERE regression_id = $1")
                .bind(regression)
                .fetch_optional(&server.pool)
                .await
                .unwrap()
        },
    )
    .await;
    let v = settled(&server, id, Duration::from_secs(240)).await;
    let b = &v["bisection"];
    assert_eq!(b["state"], "found", "{v:#}");
    assert_eq!(b["first_bad_sha"], shas[63].as_str());
    assert_eq!(b["family"], "ampere-altra");
    assert!(
        b["requested_by"]
            .as_str()
            .unwrap()
            .starts_with("auto:regression")
    );
    assert!(
        v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["kind"] == "test"),
        "the regression's measured rate is reused: no calibration"
    );
    let state: String = sqlx::query_scalar("SELECT state FROM regressions WHERE id = $1")
        .bind(regression)
        .fetch_one(&server.pool)
        .await
        .unwrap();
    assert_eq!(state, "bisected");
    let ev: String = sqlx::query_scalar(
        "SELECT evidence FROM regression_events WHERE regression_id = $1 AND to_state = 'bisected'",
    )
    .bind(regression)
    .fetch_one(&server.pool)
    .await
    .unwrap();
    assert!(ev.contains(&shas[63]), "{ev}");
    eprintln!(
        "regression confirmed and bisected to commit 63 in {} steps, {:?} from the first trigger",
        v["tested_steps"],
        t0.elapsed()
    );
    lkml_report_is_pinned(&server, regression, &shas, &v).await;
    lab.server.stop().await;
}

/// The bisected regression as a kernel bug report: its format, pinned.
async fn lkml_report_is_pinned(
    server: &TestServer,
    regression: i64,
    shas: &[String],
    bisection: &serde_json::Value,
) {
    let (ok, report) = cli(server, &["report", "--lkml", &regression.to_string()]).await;
    assert!(ok, "{report}");
    eprintln!("{report}");
    for line in report.lines() {
        assert!(
            line.chars().count() <= 72,
            "72 columns: {line:?} ({} columns)",
            line.chars().count()
        );
    }
    let title: String = sqlx::query_scalar(
        "SELECT s.title FROM signatures s JOIN regressions r ON r.signature = s.signature WHERE r.id = $1",
    )
    .bind(regression)
    .fetch_one(&server.pool)
    .await
    .unwrap();
    // The subject, unfolded: `[REGRESSION] <title> after <sha> ("<subject>")`.
    let header: String = report
        .lines()
        .take_while(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\n ", " ");
    assert_eq!(
        header,
        format!(
            "Subject: [REGRESSION] {title} after {} (\"commit 63\")",
            &shas[63][..12]
        ),
        "{report}"
    );
    let flat = report.split_whitespace().collect::<Vec<_>>().join(" ");
    for want in [
        "NOTE: every result below comes from SIMULATED boards".to_owned(),
        format!("first bad: {} (\"commit 63\")", shas[63]),
        format!("last good: {} (\"commit 62\")", shas[62]),
        "tree: ".to_owned() + &bisection["bisection"]["tree"].as_str().unwrap().to_owned(),
        "branch: ".to_owned() + bisection["bisection"]["branch"].as_str().unwrap(),
        "family: Ampere Altra (ampere-altra)".to_owned(),
        "board: altra-01, MIDR".to_owned(),
        format!("Cost: {} tested steps,", bisection["tested_steps"]),
        "Confidence: ".to_owned(),
        format!("bad {}: ", &shas[99][..12]),
        "(95% CI ".to_owned(),
        "ESR decoded: EC=0x25 DABT (current EL), FSC=0x30 TLB conflict abort".to_owned(),
        "Call trace:".to_owned(),
        "How to reproduce:".to_owned(),
        // Simulated boards only: the failing job's generated script, said so.
        "ran on a simulated board (no QEMU ran)".to_owned(),
        "/repro.sh".to_owned(),
        "Reported-by: armfleet lab <lab@example.org>".to_owned(),
        format!("Link: https://armfleet.example.org/regressions/{regression}"),
        format!("#regzbot introduced: {}", &shas[63][..12]),
    ] {
        assert!(flat.contains(&want), "missing {want:?} in:\n{report}");
    }
    // Trimmed as kernel developers trim: no timestamps, no register dump.
    let crash: Vec<&str> = report
        .lines()
        .skip_while(|l| !l.starts_with("The crash"))
        .take_while(|l| !l.starts_with("How to reproduce"))
        .collect();
    assert!(crash.len() > 5, "{report}");
    assert!(
        crash
            .iter()
            .all(|l| !l.trim_start().starts_with("[ ") && !l.contains(" x29:")),
        "{report}"
    );
    // The regression's page carries the same text with a copy button.
    let page = server.get_text(&format!("/regressions/{regression}")).await;
    assert!(page.contains("id=\"copy-report\""), "{page}");
    assert!(page.contains("#regzbot introduced:"), "{page}");
    // The culprit's kernel page leads to the regression and its report.
    let culprit: i64 = sqlx::query_scalar("SELECT id FROM kernels WHERE commit_sha = $1")
        .bind(&shas[63])
        .fetch_one(&server.pool)
        .await
        .unwrap();
    let kernel_page = server.get_text(&format!("/kernels/{culprit}")).await;
    assert!(
        kernel_page.contains(&format!("href=\"/regressions/{regression}\"")),
        "the culprit's page links the regression"
    );
    let r = server
        .client
        .get(server.url("/api/v1/regressions/424242/lkml"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
