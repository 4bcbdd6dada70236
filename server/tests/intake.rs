//! Kernel intake: push webhooks of every forge, signed, replayed, forged,
//! oversized; a real `git push` through the post-receive hook; exports.

mod common;

use std::process::Command;
use std::time::Duration;

use armfleet_server::domain::intake::hmac_sha256;
use common::*;

const SECRET: &str = "s3cret-for-tests";
const TREE: &str = "https://git.example.org/kvmarm/kvmarm.git";
const C1: &str = "1f3e5d7c9b1a2f4e6d8c0b2a4f6e8d0c2b4a6f81";

async fn intake_lab(extra_tree: &str) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "b").await;
    let mut fleet = fleet_toml(
        &[("board-1", "kunpeng920", &key.public)],
        "[plan.params]\ncycles = 2\nreplay_cycle_ms = 5\n",
    );
    fleet.push_str(&format!(
        "\n[[tree]]\nname = \"kvmarm\"\nurl = \"{TREE}\"\naliases = [\"git@git.example.org:kvmarm/kvmarm.git\"]\nbranches = [\"next\"]\nsecret = \"{SECRET}\"\n{extra_tree}"
    ));
    TestServer::start(&fleet).await
}

fn github_push(after: &str, git_ref: &str) -> String {
    serde_json::json!({
        "ref": git_ref,
        "before": "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567",
        "after": after,
        "created": false, "deleted": after.chars().all(|c| c == '0'), "forced": false,
        "repository": { "id": 1, "full_name": "kvmarm/kvmarm", "clone_url": TREE, "html_url": "https://git.example.org/kvmarm/kvmarm" },
        "pusher": { "name": "maz" },
        "head_commit": { "id": after, "message": "KVM: arm64: Invalidate the whole range when replacing a table with a block\n\nLonger text.", "author": { "name": "Marc Z", "email": "maz@example.org" } },
        "commits": [ { "id": after, "message": "KVM: arm64: Invalidate the whole range when replacing a table with a block\n\nLonger text.", "author": { "name": "Marc Z", "email": "maz@example.org" } } ]
    })
    .to_string()
}

fn sign(body: &str) -> String {
    format!(
        "sha256={}",
        hex::encode(hmac_sha256(SECRET.as_bytes(), body.as_bytes()))
    )
}

async fn post(
    server: &TestServer,
    forge: &str,
    body: String,
    headers: &[(&str, String)],
) -> (u16, serde_json::Value) {
    let mut req = server
        .client
        .post(server.url(&format!("/api/v1/hooks/{forge}")))
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req.body(body).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

async fn count(server: &TestServer, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(&server.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_pushes_are_verified_deduplicated_and_filtered() {
    let server = intake_lab("").await;
    let body = github_push(C1, "refs/heads/next");
    let gh = |delivery: &str, sig: String| {
        vec![
            ("X-GitHub-Event", "push".to_owned()),
            ("X-GitHub-Delivery", delivery.to_owned()),
            ("X-Hub-Signature-256", sig),
        ]
    };

    // Unsigned and wrongly signed: 401, nothing created.
    let (s, e) = post(
        &server,
        "github",
        body.clone(),
        &[("X-GitHub-Event", "push".into())],
    )
    .await;
    assert_eq!(s, 401, "{e}");
    assert!(e["error"].as_str().unwrap().contains("X-Hub-Signature-256"));
    let (s, _) = post(
        &server,
        "github",
        body.clone(),
        &gh("d-1", "sha256=00".repeat(1)),
    )
    .await;
    assert_eq!(s, 401);
    let (s, _) = post(
        &server,
        "github",
        body.replace("next", "nexu"),
        &gh("d-1", sign(&body)),
    )
    .await;
    assert_eq!(s, 401, "a body changed after signing is refused");
    assert_eq!(count(&server, "runs").await, 0);

    // Correctly signed: a run with one job per board.
    let (s, r) = post(&server, "github", body.clone(), &gh("d-1", sign(&body))).await;
    assert_eq!(s, 201, "{r}");
    let run = r["run_id"].as_i64().unwrap();
    assert_eq!(r["jobs"].as_array().unwrap().len(), 1);
    let k = server.get_json(&format!("/api/v1/kernels/{C1}")).await;
    assert_eq!(k["kernels"][0]["branch"], "next");
    assert_eq!(
        k["kernels"][0]["subject"],
        "KVM: arm64: Invalidate the whole range when replacing a table with a block"
    );
    assert_eq!(k["kernels"][0]["author"], "Marc Z <maz@example.org>");

    // Replayed delivery, and a re-push of the same commit: the same run.
    let (s, r) = post(&server, "github", body.clone(), &gh("d-1", sign(&body))).await;
    assert_eq!(
        (s, r["duplicate"].as_bool(), r["run_id"].as_i64()),
        (200, Some(true), Some(run)),
        "{r}"
    );
    let (s, r) = post(&server, "github", body.clone(), &gh("d-2", sign(&body))).await;
    assert_eq!((s, r["run_id"].as_i64()), (200, Some(run)), "{r}");
    assert_eq!(count(&server, "runs").await, 1);

    // Ping, unwatched branch, deletion, tag: acknowledged, nothing created.
    let ping = serde_json::json!({"zen": "Keep it logically awesome.", "hook_id": 1, "repository": {"clone_url": TREE}}).to_string();
    let (s, r) = post(
        &server,
        "github",
        ping.clone(),
        &[
            ("X-GitHub-Event", "ping".into()),
            ("X-GitHub-Delivery", "p".into()),
            ("X-Hub-Signature-256", sign(&ping)),
        ],
    )
    .await;
    assert_eq!((s, r["ok"].as_str()), (200, Some("pong")));
    for (git_ref, after) in [
        ("refs/heads/fixes", C1),
        (
            "refs/heads/next",
            "0000000000000000000000000000000000000000",
        ),
        ("refs/tags/v6.13", C1),
    ] {
        let b = github_push(after, git_ref);
        let (s, r) = post(
            &server,
            "github",
            b.clone(),
            &gh(&format!("x-{git_ref}-{after}"), sign(&b)),
        )
        .await;
        assert_eq!(s, 200, "{git_ref}: {r}");
        assert!(r["ignored"].is_string(), "{git_ref}: {r}");
    }
    assert_eq!(count(&server, "runs").await, 1);

    // Oversized bodies are refused before being read.
    // (Announced, not sent: the server answers from the headers alone.)
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(server.http.trim_start_matches("http://"))
        .await
        .unwrap();
    tcp.write_all(b"POST /api/v1/hooks/github HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nX-GitHub-Event: push\r\nContent-Length: 9437184\r\n\r\n").await.unwrap();
    let mut answer = [0u8; 64];
    let n = tcp.read(&mut answer).await.unwrap();
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    // Garbage that is correctly signed is a 400 with a reason.
    let junk = "{\"ref\": 5}".to_string();
    let (s, r) = post(&server, "github", junk.clone(), &gh("junk", sign(&junk))).await;
    assert_eq!(s, 400, "{r}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_and_gitea_pushes_start_runs() {
    let server = intake_lab("").await;
    let c2 = "2222222222222222222222222222222222222222";
    let gitlab = serde_json::json!({
        "object_kind": "push", "event_name": "push", "ref": "refs/heads/next",
        "before": C1, "after": c2, "checkout_sha": c2,
        "project": { "id": 3, "git_http_url": TREE, "git_ssh_url": "git@git.example.org:kvmarm/kvmarm.git" },
        "commits": [ { "id": c2, "message": "KVM: arm64: fix it\n", "author": { "name": "Oliver", "email": "o@example.org" } } ],
        "total_commits_count": 1
    })
    .to_string();
    let (s, _) = post(
        &server,
        "gitlab",
        gitlab.clone(),
        &[
            ("X-Gitlab-Event", "Push Hook".into()),
            ("X-Gitlab-Token", "wrong".into()),
        ],
    )
    .await;
    assert_eq!(s, 401);
    let (s, r) = post(
        &server,
        "gitlab",
        gitlab,
        &[
            ("X-Gitlab-Event", "Push Hook".into()),
            ("X-Gitlab-Token", SECRET.into()),
            ("X-Gitlab-Event-UUID", "u1".into()),
        ],
    )
    .await;
    assert_eq!(s, 201, "{r}");

    let c3 = "3333333333333333333333333333333333333333";
    let gitea = serde_json::json!({
        "ref": "refs/heads/next", "before": c2, "after": c3,
        "repository": { "clone_url": TREE, "full_name": "kvmarm/kvmarm" },
        "commits": [ { "id": c3, "message": "KVM: arm64: more\n", "author": { "name": "Will", "email": "w@example.org" } } ],
        "head_commit": null
    })
    .to_string();
    let sig = hex::encode(hmac_sha256(SECRET.as_bytes(), gitea.as_bytes()));
    let (s, r) = post(
        &server,
        "gitea",
        gitea,
        &[
            ("X-Gitea-Event", "push".into()),
            ("X-Gitea-Signature", sig),
            ("X-Gitea-Delivery", "g1".into()),
        ],
    )
    .await;
    assert_eq!(s, 201, "{r}");
    assert_eq!(count(&server, "runs").await, 2);
    let (s, _) = post(&server, "bitbucket", "{}".into(), &[]).await;
    assert_eq!(s, 404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_git_push_through_the_post_receive_hook_starts_a_run_and_the_mirror_knows_the_parent()
 {
    let work = tempfile::tempdir().unwrap();
    let bare = work.path().join("linux.git");
    let bare_url = bare.display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "b").await;
    let mut fleet = fleet_toml(
        &[("board-1", "kunpeng920", &key.public)],
        "[plan.params]\ncycles = 2\nreplay_cycle_ms = 5\n",
    );
    fleet.push_str(&format!("\n[[tree]]\nname = \"local\"\nurl = \"{bare_url}\"\nbranches = [\"master\"]\nsecret = \"{SECRET}\"\n"));
    let server = TestServer::start(&fleet).await;

    Command::new("git")
        .args(["init", "-q", "--bare", "-b", "master"])
        .arg(&bare)
        .status()
        .unwrap();
    let hook = bare.join("hooks/post-receive");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/post-receive"),
        &hook,
    )
    .unwrap();
    git(&bare, &["config", "armfleet.url", &server.http]);
    git(&bare, &["config", "armfleet.secret", SECRET]);
    git(&bare, &["config", "armfleet.tree", &bare_url]);

    let clone = work.path().join("clone");
    Command::new("git")
        .args(["clone", "-q"])
        .arg(&bare)
        .arg(&clone)
        .status()
        .unwrap();
    std::fs::write(clone.join("Makefile"), "all:\n").unwrap();
    git(&clone, &["add", "."]);
    git(&clone, &["commit", "-qm", "first"]);
    let first = git(&clone, &["rev-parse", "HEAD"]);
    std::fs::write(clone.join("stage2.c"), "/* tlbi range */\n").unwrap();
    git(&clone, &["add", "."]);
    git(&clone, &["commit", "-qm", "KVM: arm64: stage-2 change"]);
    let second = git(&clone, &["rev-parse", "HEAD"]);
    let push = Command::new("git")
        .arg("-C")
        .arg(&clone)
        .args(["push", "-q", "origin", "master"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&push.stderr);
    assert!(push.status.success(), "{said}");
    assert!(
        said.contains("HTTP 201"),
        "the hook reported the run to the pusher: {said}"
    );

    let k = server.get_json(&format!("/api/v1/kernels/{second}")).await;
    assert_eq!(k["kernels"][0]["subject"], "KVM: arm64: stage-2 change");
    assert_eq!(k["kernels"][0]["parent_sha"], first.as_str());
    assert_eq!(k["kernels"][0]["runs"].as_array().unwrap().len(), 1);
    // The server mirrored the tree.
    wait_for("the mirror", Duration::from_secs(30), || async {
        let mirrors = server.dir.path().join("data/mirrors");
        std::fs::read_dir(&mirrors)
            .ok()
            .and_then(|mut d| d.next())
            .map(|_| ())
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcidb_export_validates_against_kcidb_io_and_junit_parses() {
    let lab = Lab::replay(
        &[("board-1", "kunpeng920")],
        "[plan.params]\ncycles = 5\nreplay_cycle_ms = 5\n[plan.replay]\nbuggy_commits = [\"dead\"]\nabort_probability = 1.0\n",
    )
    .await;
    let server = &lab.server;
    let good = server
        .trigger("beef000000000000000000000000000000000001")
        .await;
    let bad = server
        .trigger("dead000000000000000000000000000000000002")
        .await;
    wait_for("both runs done", Duration::from_secs(30), || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state IN ('passed', 'failed')")
                .fetch_one(&server.pool)
                .await
                .unwrap();
        (n == 2).then_some(())
    })
    .await;
    // The analysis (findings → issues and incidents) has run on both jobs.
    wait_for("both jobs analysed", Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE analyzed_at IS NOT NULL")
            .fetch_one(&server.pool)
            .await
            .unwrap();
        (n == 2).then_some(())
    })
    .await;
    let kcidb = server.get_json("/api/v1/export/kcidb").await;
    assert_eq!(kcidb["checkouts"].as_array().unwrap().len(), 2);
    // Simulated boards replay logs: their results never pass for PASS or
    // FAIL of the kernel; the replay's outcome stays in misc.
    let tests = kcidb["tests"].as_array().unwrap();
    assert!(tests.iter().all(|t| t["status"] == "DONE"), "{kcidb:#}");
    let states: Vec<&str> = tests
        .iter()
        .map(|t| t["misc"]["armfleet_state"].as_str().unwrap())
        .collect();
    assert!(
        states.contains(&"passed") && states.contains(&"failed"),
        "{kcidb:#}"
    );
    for t in tests {
        assert_eq!(t["environment"]["misc"]["host_kind"], "simulated", "{t:#}");
        assert!(
            t["environment"]["comment"]
                .as_str()
                .unwrap()
                .starts_with("SIMULATED"),
            "{t:#}"
        );
        assert!(t["misc"]["path"].is_null(), "no path evidence in a replay");
    }
    // The replayed abort is an issue (marked simulated) with its incident.
    let issues = kcidb["issues"].as_array().unwrap();
    let incidents = kcidb["incidents"].as_array().unwrap();
    assert!(!issues.is_empty() && !incidents.is_empty(), "{kcidb:#}");
    assert!(
        issues
            .iter()
            .all(|i| i["comment"].as_str().unwrap().starts_with("[simulated]")),
        "{kcidb:#}"
    );
    let failed_test = tests
        .iter()
        .find(|t| t["misc"]["armfleet_state"] == "failed")
        .unwrap();
    assert!(
        incidents.iter().any(|i| i["test_id"] == failed_test["id"]),
        "the failed job's crash is an incident: {kcidb:#}"
    );
    // No armfleet build here: the build says so, with the board's arch
    // (a simulated Kunpeng's declared arm64, not the replaying host's).
    for b in kcidb["builds"].as_array().unwrap() {
        assert_eq!(b["misc"]["source"], "installed", "{b:#}");
        assert_eq!(b["architecture"], "arm64", "{b:#}");
        assert!(b.get("compiler").is_none() && b.get("config_name").is_none());
    }
    kcidb_validate(server.dir.path(), &kcidb);
    // Left out by a flag: a hardware-only export of a simulated lab is empty.
    let hw = server.get_json("/api/v1/export/kcidb?hosts=hardware").await;
    assert_eq!(hw["tests"].as_array().unwrap().len(), 0, "{hw:#}");
    kcidb_validate(server.dir.path(), &hw);
    assert_eq!(
        server
            .client
            .get(server.url("/api/v1/export/kcidb?hosts=bogus"))
            .send()
            .await
            .unwrap()
            .status(),
        400
    );

    for (run, expect) in [(good, "0"), (bad, "1")] {
        let xml = server
            .get_text(&format!("/api/v1/export/junit?run={run}"))
            .await;
        let path = server.dir.path().join(format!("junit-{run}.xml"));
        std::fs::write(&path, &xml).unwrap();
        let parsed = Command::new("python3")
            .args(["-c", "import sys, xml.etree.ElementTree as ET; s = ET.parse(sys.argv[1]).getroot().find('testsuite'); print(s.get('tests'), s.get('failures'))"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            parsed.status.success(),
            "JUnit does not parse: {}",
            String::from_utf8_lossy(&parsed.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&parsed.stdout).trim(),
            format!("1 {expect}"),
            "{xml}"
        );
        assert!(
            xml.contains("<property name=\"host_kind\" value=\"simulated\"/>")
                && xml.contains("<property name=\"path\" value=\"none: replayed cycles\"/>"),
            "provenance and path evidence as properties: {xml}"
        );
    }
    assert_eq!(
        server
            .client
            .get(server.url("/api/v1/export/junit"))
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    lab.server.stop().await;
}
