//! The kernel lifecycle on (simulated) boards: a plan that builds its
//! kernel builds it for real (`make` on a tiny real source tree, see
//! `tests/fixtures/sim-kernel`), stores the artifacts content-addressed,
//! and the board downloads, checks and boots the build before its jobs run.
//! A build that fails is `build_failed`; a build that does not boot is
//! `boot_failed`, and the board is power-cycled back to its known-good
//! kernel. The simulated board plays the reboot (the agent re-executes
//! itself), the hang and the power cycle (`scripts/sim-power-cycle`).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// What one commit of the synthetic kernel tree does.
#[derive(Clone, Copy, Default)]
struct Behaviour {
    /// init/main.c has a syntax error.
    broken: bool,
    /// `ok`, `hang` or `panic` at boot.
    boot: &'static str,
    /// Per-cycle guest abort probability once booted.
    abort: f64,
}

/// A git tree of `commits.len()` commits of the tiny kernel; returns SHAs.
fn kernel_tree(dir: &Path, commits: &[Behaviour]) -> Vec<String> {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sim-kernel");
    copy_dir(&fixture, dir);
    git(dir, &["init", "-q", "-b", "master"]);
    let good_c = std::fs::read_to_string(dir.join("init/main.c")).unwrap();
    let mut shas = Vec::new();
    for (i, b) in commits.iter().enumerate() {
        std::fs::write(dir.join("VERSION"), format!("{i}\n")).unwrap();
        std::fs::write(
            dir.join("BOOT"),
            format!("{}\n", if b.boot.is_empty() { "ok" } else { b.boot }),
        )
        .unwrap();
        std::fs::write(dir.join("ABORT"), format!("{}\n", b.abort)).unwrap();
        std::fs::write(
            dir.join("CONSOLE"),
            "Booting Linux on physical CPU 0x0000000000 [0x481fd010]\nVFS: Cannot open root device \"vda1\" or unknown-block(0,0): error -6\nKernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)\n",
        )
        .unwrap();
        let c = if b.broken {
            good_c.replace("return 0;", "return 0 +;")
        } else {
            good_c.clone()
        };
        std::fs::write(dir.join("init/main.c"), c).unwrap();
        git(dir, &["add", "-A"]);
        git(dir, &["commit", "-q", "-m", &format!("commit {i}")]);
        shas.push(git(dir, &["rev-parse", "HEAD"]));
    }
    shas
}

/// A fleet of simulated boards whose plan builds the kernel, with a short
/// boot deadline and the simulated power-cycle script.
fn building_fleet(boards: &[(&str, &str, &str, &Path)], fragment: &Path) -> String {
    let mut fleet = fleet_toml(
        &boards
            .iter()
            .map(|(n, f, k, _)| (*n, *f, *k))
            .collect::<Vec<_>>(),
        &format!(
            "[plan.params]\ncycles = 6\nreplay_cycle_ms = 5\n[plan.build]\ndefconfig = \"defconfig\"\nfragments = [\"{}\"]\ntargets = [\"Image\", \"modules\"]\n",
            fragment.display()
        ),
    );
    fleet = fleet.replace(
        "[server]\n",
        "[server]\nboot_deadline_s = 8\npower_cycle_after_s = 3600\n",
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/sim-power-cycle");
    for (name, _, key, state) in boards {
        fleet = fleet.replace(
            &format!("name = \"{name}\"\n"),
            &format!(
                "name = \"{name}\"\npower_cycle = [\"{}\", \"{}\"]\n",
                script.display(),
                state.display()
            ),
        );
        let _ = key;
    }
    fleet
}

/// A running lab of simulated boards whose plan builds the kernel: the
/// server, each board's agent idle on its known-good kernel, and the
/// clean-up of agents the power-cycle script restarts.
struct BuildingLab {
    server: TestServer,
    _agents: Vec<TestAgent>,
    _restarted: Restarted,
}

/// Starts a [`BuildingLab`] of `boards` (name, family) whose builds merge
/// the config fragment `fragment`.
async fn building_lab(boards: &[(&str, &str)], fragment: &str) -> BuildingLab {
    let dir = tempfile::tempdir().unwrap().keep();
    let fragment_path = dir.join("kvm.config");
    std::fs::write(&fragment_path, fragment).unwrap();
    let mut keys = Vec::new();
    for (name, _) in boards {
        keys.push(keygen(&dir, name).await);
    }
    let states: Vec<PathBuf> = boards
        .iter()
        .map(|(name, _)| dir.join(format!("agent-{name}")))
        .collect();
    let spec: Vec<(&str, &str, &str, &Path)> = boards
        .iter()
        .zip(&keys)
        .zip(&states)
        .map(|(((name, family), key), state)| {
            (*name, *family, key.public.as_str(), state.as_path())
        })
        .collect();
    let server = TestServer::start(&building_fleet(&spec, &fragment_path)).await;
    let agents = boards
        .iter()
        .zip(&keys)
        .zip(&states)
        .map(|(((name, _), key), state)| {
            server.agent_in(name, &key.path, state, &["--executor", "replay"])
        })
        .collect();
    let restarted = Restarted(states);
    for (name, _) in boards {
        server
            .wait_board(name, "idle", Duration::from_secs(20))
            .await;
    }
    BuildingLab {
        server,
        _agents: agents,
        _restarted: restarted,
    }
}

/// Kills agents restarted by the power-cycle script (not our children).
struct Restarted(Vec<PathBuf>);

impl Drop for Restarted {
    fn drop(&mut self) {
        for state in &self.0 {
            if let Ok(pid) = std::fs::read_to_string(state.join("agent.pid")) {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
        }
    }
}

async fn trigger(
    server: &TestServer,
    tree: &Path,
    commit: &str,
    extra: serde_json::Value,
) -> reqwest::Response {
    let mut body = serde_json::json!({"tree": tree.display().to_string(), "branch": "master", "commit": commit});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    server.post_as_admin("/api/v1/runs", Some(&body)).await
}

async fn run_job(server: &TestServer, tree: &Path, commit: &str) -> serde_json::Value {
    let r = trigger(server, tree, commit, serde_json::json!({})).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    let run = r.json::<serde_json::Value>().await.unwrap()["run_id"]
        .as_i64()
        .unwrap();
    let runv = server.get_json(&format!("/api/v1/runs/{run}")).await;
    let job = runv["jobs"][0]["id"].as_i64().unwrap();
    server.wait_job_end(job, Duration::from_secs(120)).await
}

async fn kernel(server: &TestServer, commit: &str) -> serde_json::Value {
    server.get_json(&format!("/api/v1/kernels/{commit}")).await["kernels"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_with_a_build_builds_boots_and_runs_each_kernel_and_a_broken_one_is_build_failed() {
    let repo = tempfile::tempdir().unwrap();
    let shas = kernel_tree(
        repo.path(),
        &[
            Behaviour::default(),
            Behaviour {
                abort: 1.0,
                ..Default::default()
            },
            Behaviour {
                broken: true,
                ..Default::default()
            },
        ],
    );
    let lab = building_lab(
        &[("altra-01", "ampere-altra")],
        "CONFIG_KVM_ARMFLEET_STRESS=y\n",
    )
    .await;
    let server = &lab.server;
    let before = server.get_json("/api/v1/boards").await;
    let known_good = before["boards"][0]["facts"]["kernel_release"]
        .as_str()
        .unwrap()
        .to_owned();

    // Commit 0 builds, boots and passes.
    let job = run_job(&server, repo.path(), &shas[0]).await;
    assert_eq!(job["state"], "passed", "{job:#}");
    let k = kernel(&server, &shas[0]).await;
    let build = &k["builds"][0];
    assert_eq!(build["state"], "built", "{k:#}");
    assert_eq!(build["kernel_release"], "6.13.0-sim-0");
    let names: Vec<&str> = build["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Image", "config", "modules.tar.gz"], "{build:#}");
    // Every artifact is served under its checksum, and is what it says.
    for a in build["artifacts"].as_array().unwrap() {
        let bytes = server
            .client
            .get(server.url(a["url"].as_str().unwrap()))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        use sha2::Digest;
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            a["sha256"].as_str().unwrap()
        );
        assert_eq!(bytes.len() as u64, a["size"].as_u64().unwrap());
        if a["name"] == "config" {
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                text.contains("CONFIG_KVM=y") && text.contains("CONFIG_KVM_ARMFLEET_STRESS=y"),
                "fragment merged: {text}"
            );
        }
    }
    let build_id = build["id"].as_i64().unwrap();
    let log = server
        .get_text(&format!("/api/v1/builds/{build_id}/log"))
        .await;
    assert!(
        log.contains("cc -c -o init/main.o init/main.c")
            && log.contains("kernelrelease: 6.13.0-sim-0"),
        "{log}"
    );
    let boot = &k["boots"][0];
    assert_eq!(boot["state"], "booted", "{k:#}");
    assert_eq!(boot["method"], "simulated");
    // The board reports the build it runs, and its release.
    let b = server.get_json("/api/v1/boards").await["boards"][0].clone();
    assert_eq!(b["facts"]["kernel_release"], "6.13.0-sim-0", "{b:#}");
    assert_eq!(b["facts"]["build_id"], build_id);
    assert_ne!(known_good, "6.13.0-sim-0");

    // The same commit again: the cached build, no second boot.
    let again = run_job(&server, repo.path(), &shas[0]).await;
    assert_eq!(again["state"], "passed");
    let k = kernel(&server, &shas[0]).await;
    assert_eq!(
        k["builds"].as_array().unwrap().len(),
        1,
        "built once: {k:#}"
    );
    assert_eq!(
        k["boots"].as_array().unwrap().len(),
        1,
        "the board already ran it: {k:#}"
    );

    // Commit 1's kernel makes the guest abort: the board boots it, and the
    // job fails with the abort found in its logs.
    let bad = run_job(&server, repo.path(), &shas[1]).await;
    assert_eq!(bad["state"], "failed", "{bad:#}");
    let job_id = bad["id"].as_i64().unwrap();
    let findings = wait_for("findings", Duration::from_secs(30), || async {
        let f = server
            .get_json(&format!("/api/v1/jobs/{job_id}/findings"))
            .await;
        (!f["findings"].as_array().unwrap().is_empty()).then_some(f)
    })
    .await;
    assert!(
        findings.to_string().contains("TLB conflict abort"),
        "{findings:#}"
    );
    assert_eq!(
        kernel(&server, &shas[1]).await["boots"][0]["state"],
        "booted"
    );

    // Commit 2 does not compile: build_failed, the job is cancelled, not failed.
    let broken = run_job(&server, repo.path(), &shas[2]).await;
    assert_eq!(broken["state"], "cancelled", "{broken:#}");
    assert!(
        broken["reason"]
            .as_str()
            .unwrap()
            .starts_with("build_failed"),
        "{broken:#}"
    );
    let k = kernel(&server, &shas[2]).await;
    assert_eq!(k["builds"][0]["state"], "failed");
    assert_eq!(k["builds"][0]["failure"], "kernel");
    assert!(
        k["builds"][0]["error"].as_str().unwrap().contains("error"),
        "the compiler's words: {k:#}"
    );
    let verdict = wait_for("build_failed verdict", Duration::from_secs(10), || async {
        let k = kernel(&server, &shas[2]).await;
        k["verdicts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["verdict"] == "build_failed")
            .cloned()
    })
    .await;
    assert_eq!(verdict["family"], "ampere-altra");
    assert!(
        k["boots"].as_array().unwrap().is_empty(),
        "nothing to boot: {k:#}"
    );
    // The kernel page shows it.
    let page = server.get_text(&format!("/kernels/{}", k["id"])).await;
    assert!(
        page.contains("build_failed"),
        "kernel page shows the failed build"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_that_does_not_boot_is_boot_failed_and_the_board_is_power_cycled_back() {
    let repo = tempfile::tempdir().unwrap();
    let shas = kernel_tree(
        repo.path(),
        &[
            Behaviour {
                boot: "hang",
                ..Default::default()
            },
            Behaviour::default(),
        ],
    );
    let lab = building_lab(&[("kunpeng-01", "kunpeng920")], "CONFIG_KVM=y\n").await;
    let server = &lab.server;

    let job = run_job(&server, repo.path(), &shas[0]).await;
    assert_eq!(job["state"], "cancelled", "{job:#}");
    assert!(
        job["reason"].as_str().unwrap().starts_with("boot_failed"),
        "{job:#}"
    );
    // The board comes back on its known-good kernel after the power cycle,
    // and its agent delivers the console of the boot that hung.
    server
        .wait_board("kunpeng-01", "idle", Duration::from_secs(30))
        .await;
    let k = wait_for(
        "the failed boot's console",
        Duration::from_secs(30),
        || async {
            let k = kernel(&server, &shas[0]).await;
            k["boots"][0]["console"].is_string().then_some(k)
        },
    )
    .await;
    let boot = &k["boots"][0];
    assert_eq!(boot["state"], "boot_failed", "{k:#}");
    assert_eq!(boot["power_cycled"], true, "{k:#}");
    assert!(
        boot["console"]
            .as_str()
            .unwrap()
            .contains("Kernel panic - not syncing: VFS: Unable to mount root fs"),
        "{boot:#}"
    );
    let b = server.get_json("/api/v1/boards").await["boards"][0].clone();
    assert!(
        b["facts"]["build_id"].is_null(),
        "back on the known-good kernel: {b:#}"
    );
    assert!(
        k["verdicts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["verdict"] == "boot_failed" && v["family"] == "kunpeng920"),
        "{k:#}"
    );
    let audit = server
        .get_as_admin("/api/v1/audit")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        audit.contains("power-cycle"),
        "the power cycle is recorded: {audit}"
    );
    let page = server.get_text(&format!("/kernels/{}", k["id"])).await;
    assert!(
        page.contains("boot_failed") && page.contains("Unable to mount root fs"),
        "kernel page shows the failed boot and its console"
    );

    // The recovered board boots the next, good kernel and runs its job.
    let next = run_job(&server, repo.path(), &shas[1]).await;
    assert_eq!(next["state"], "passed", "{next:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_built_elsewhere_are_checked_before_any_board_boots_them() {
    let dir = tempfile::tempdir().unwrap().keep();
    let image = dir.join("Image");
    std::fs::write(
        &image,
        "ARMFLEET-SIMULATED-KERNEL\nrelease=6.14.0-lab-build\nboot=ok\nabort_probability=0\n",
    )
    .unwrap();
    use sha2::Digest;
    let sum = hex::encode(sha2::Sha256::digest(std::fs::read(&image).unwrap()));
    let lab = Lab::replay(
        &[("rpi5-01", "rpi5")],
        "[plan.params]\ncycles = 3\nreplay_cycle_ms = 5\n",
    )
    .await;
    let server = &lab.server;
    let tree = Path::new("/srv/lab/linux");

    // A bad checksum: nothing is booted, and it is the lab's fault.
    let wrong = "0".repeat(64);
    let r = trigger(&server, tree, "1111111111111111", serde_json::json!({"build": {"kernel_release": "6.14.0-lab-build",
        "artifacts": [{"name": "Image", "url": format!("file://{}", image.display()), "sha256": wrong}]}})).await;
    assert_eq!(r.status(), 201);
    let run = r.json::<serde_json::Value>().await.unwrap()["run_id"]
        .as_i64()
        .unwrap();
    let job = server.get_json(&format!("/api/v1/runs/{run}")).await["jobs"][0]["id"]
        .as_i64()
        .unwrap();
    let j = server.wait_job_end(job, Duration::from_secs(60)).await;
    assert_eq!(j["state"], "cancelled");
    assert!(
        j["reason"].as_str().unwrap().contains("checksum mismatch"),
        "{j:#}"
    );
    let k = kernel(&server, "1111111111111111").await;
    assert_eq!(k["builds"][0]["failure"], "infra", "{k:#}");
    assert!(
        !k["verdicts"].to_string().contains("build_failed"),
        "a lab failure is no verdict on the kernel: {k:#}"
    );

    // Garbage is refused at the door.
    let r = trigger(
        &server,
        tree,
        "2222222222222222",
        serde_json::json!({"build": {"kernel_release": "x",
        "artifacts": [{"name": "../Image", "url": "file:///etc/passwd", "sha256": sum}]}}),
    )
    .await;
    assert_eq!(r.status(), 400, "{}", r.text().await.unwrap());

    // The right checksum: fetched, checked, booted, run.
    let r = trigger(
        &server,
        tree,
        "3333333333333333",
        serde_json::json!({"build": {"kernel_release": "6.14.0-lab-build",
        "artifacts": [{"name": "Image", "url": image.display().to_string(), "sha256": sum}]}}),
    )
    .await;
    assert_eq!(r.status(), 201);
    let run = r.json::<serde_json::Value>().await.unwrap()["run_id"]
        .as_i64()
        .unwrap();
    let job = server.get_json(&format!("/api/v1/runs/{run}")).await["jobs"][0]["id"]
        .as_i64()
        .unwrap();
    let j = server.wait_job_end(job, Duration::from_secs(60)).await;
    assert_eq!(j["state"], "passed", "{j:#}");
    let b = server.get_json("/api/v1/boards").await["boards"][0].clone();
    assert_eq!(b["facts"]["kernel_release"], "6.14.0-lab-build", "{b:#}");
}

/// The bisection of issue #6, end to end with real builds: 100 commits,
/// commits 40, 49 and 50 do not compile (49/50 sit where the first split
/// lands, so the skip is exercised), from commit 63 on the kernel's guests
/// abort.
/// Every step is built by `make`, booted on the boards, and tested.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regression_is_bisected_through_real_builds_and_boots_skipping_what_does_not_build() {
    let repo = tempfile::tempdir().unwrap();
    let commits: Vec<Behaviour> = (0..100)
        .map(|i| Behaviour {
            broken: [40, 49, 50].contains(&i),
            abort: if i >= 63 { 1.0 } else { 0.0 },
            ..Default::default()
        })
        .collect();
    let shas = kernel_tree(repo.path(), &commits);
    let lab = building_lab(
        &[("altra-01", "ampere-altra"), ("altra-02", "ampere-altra")],
        "CONFIG_KVM=y\n",
    )
    .await;
    let server = &lab.server;
    let r = server
        .client
        .post(server.url("/api/v1/bisections"))
        .bearer_auth(&server.token)
        .json(
            &serde_json::json!({"tree": repo.path().display().to_string(), "branch": "master",
            "good": shas[0], "bad": shas[99], "plan": "smoke", "confidence": 0.999}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    let v = wait_for("the bisection to end", Duration::from_secs(400), || async {
        let v = server.get_json(&format!("/api/v1/bisections/{id}")).await;
        (v["bisection"]["state"] != "running").then_some(v)
    })
    .await;
    assert_eq!(v["bisection"]["state"], "found", "{v:#}");
    assert_eq!(v["bisection"]["first_bad_sha"], shas[63].as_str(), "{v:#}");
    let mut builds_seen = 0;
    let mut skipped = 0;
    for s in v["steps"].as_array().unwrap() {
        let n = shas
            .iter()
            .position(|x| x == s["commit_sha"].as_str().unwrap())
            .unwrap();
        match s["verdict"].as_str().unwrap() {
            "skip" => {
                assert!(
                    [40, 49, 50].contains(&n),
                    "only the broken commits are skipped: {s}"
                );
                assert_eq!(s["evidence"]["build_state"], "failed", "{s}");
                skipped += 1;
            }
            "good" => assert!(n < 63, "commit {n} called good"),
            "bad" => assert!(n >= 63, "commit {n} called bad"),
            other => panic!("step verdict {other}"),
        }
        let k = kernel(&server, &shas[n]).await;
        builds_seen += k["builds"].as_array().unwrap().len();
        if ![40, 49, 50].contains(&n) {
            assert!(
                k["boots"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|b| b["state"] == "booted"),
                "every tested commit was booted on the boards: {k:#}"
            );
        }
    }
    assert!(builds_seen >= 3, "the steps were built: {v:#}");
    assert!(
        skipped >= 1,
        "a commit that does not build was met and skipped: {v:#}"
    );
    eprintln!(
        "real-build bisection: {} tested steps, {:.2} board-minutes",
        v["tested_steps"],
        v["board_minutes"].as_f64().unwrap_or(0.0)
    );
}

/// KCIDB from real build records: architecture, config name, compiler (the
/// built .config's CONFIG_CC_VERSION_TEXT), log and config URLs and status
/// come from the builds; a failing build is an issue with a build incident;
/// a crash is an issue with a test incident; simulated tests are DONE;
/// emulated ones keep their status, say so, and carry the path counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kcidb_export_is_built_from_real_build_records_with_issues_and_incidents() {
    let repo = tempfile::tempdir().unwrap();
    let shas = kernel_tree(
        repo.path(),
        &[
            Behaviour::default(),
            Behaviour {
                abort: 1.0,
                ..Default::default()
            },
            Behaviour {
                broken: true,
                ..Default::default()
            },
        ],
    );
    let lab = building_lab(&[("altra-01", "ampere-altra")], "CONFIG_KVM=y\n").await;
    let server = &lab.server;
    let good = run_job(server, repo.path(), &shas[0]).await;
    assert_eq!(good["state"], "passed", "{good:#}");
    let bad = run_job(server, repo.path(), &shas[1]).await;
    assert_eq!(bad["state"], "failed", "{bad:#}");
    let broken = run_job(server, repo.path(), &shas[2]).await;
    assert_eq!(broken["state"], "cancelled", "{broken:#}");
    wait_for("the jobs analysed", Duration::from_secs(60), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE analyzed_at IS NULL AND state IN ('passed', 'failed')",
        )
        .fetch_one(&server.pool)
        .await
        .unwrap();
        (n == 0).then_some(())
    })
    .await;
    // Fixture: the good job as if it had run on the virtual arm64 board
    // with the stage-2 probes (what vboard.rs measures for real, minutes
    // away): emulated host, KVM, path counters on each cycle — one cycle
    // without the perm-fault probe, so that counter is unknown, not summed.
    let gid = good["id"].as_i64().unwrap();
    sqlx::query(
        "UPDATE jobs SET host_kind = 'emulated', simulated = false, accel = 'kvm' WHERE id = $1",
    )
    .bind(gid)
    .execute(&server.pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE job_cycles SET record = record || jsonb_build_object('path', jsonb_build_object(
             'page_maps', 100 + cycle, 'block_maps', 3, 'block_maps_after_cancel', 2,
             'perm_faults', CASE WHEN cycle = 1 THEN NULL ELSE 7 END, 'memslot_changes', 2))
         WHERE job_id = $1",
    )
    .bind(gid)
    .execute(&server.pool)
    .await
    .unwrap();
    let cycles: i64 = sqlx::query_scalar("SELECT count(*) FROM job_cycles WHERE job_id = $1")
        .bind(gid)
        .fetch_one(&server.pool)
        .await
        .unwrap();
    assert!(cycles > 1);

    let k = server.get_json("/api/v1/export/kcidb").await;
    let dir = tempfile::tempdir().unwrap();
    kcidb_validate(dir.path(), &k);

    let cc = std::process::Command::new("cc")
        .arg("--version")
        .output()
        .unwrap();
    let cc = String::from_utf8_lossy(&cc.stdout)
        .lines()
        .next()
        .unwrap()
        .to_owned();
    let builds = k["builds"].as_array().unwrap();
    assert_eq!(builds.len(), 3, "one per kernel, all real: {k:#}");
    for b in builds {
        assert!(
            !b["id"].as_str().unwrap().contains("installed"),
            "no stand-in build: {b:#}"
        );
        assert_eq!(b["architecture"], "arm64", "{b:#}");
        assert_eq!(b["config_name"], "defconfig+kvm.config", "{b:#}");
        let n = b["misc"]["armfleet_build"].as_i64().unwrap();
        assert!(
            b["log_url"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/api/v1/builds/{n}/log")),
            "{b:#}"
        );
        match b["misc"]["state"].as_str().unwrap() {
            "built" => {
                assert_eq!(b["status"], "PASS", "{b:#}");
                assert_eq!(b["compiler"], cc.as_str(), "{b:#}");
                assert!(
                    b["config_url"]
                        .as_str()
                        .unwrap()
                        .contains("/api/v1/artifacts/")
                );
                assert!(
                    b["misc"]["kernel_release"]
                        .as_str()
                        .unwrap()
                        .starts_with("6.13.0-sim-")
                );
            }
            "failed" => {
                assert_eq!(b["status"], "FAIL", "{b:#}");
                assert!(
                    b.get("compiler").is_none(),
                    "nothing built, nothing claimed"
                );
            }
            other => panic!("build state {other}: {b:#}"),
        }
    }
    let tests = k["tests"].as_array().unwrap();
    let test = |id: i64| {
        tests
            .iter()
            .find(|t| t["id"] == format!("armfleet:j{id}"))
            .unwrap()
    };
    // The emulated job: its real status, marked, with its path evidence.
    let g = test(gid);
    assert_eq!(g["status"], "PASS");
    assert!(
        g["environment"]["comment"]
            .as_str()
            .unwrap()
            .starts_with("EMULATED"),
        "{g:#}"
    );
    assert_eq!(g["environment"]["misc"]["accelerator"], "kvm");
    let path = &g["misc"]["path"];
    assert_eq!(path["cycles_with_path"], cycles, "{g:#}");
    assert_eq!(
        path["page_maps"].as_i64().unwrap(),
        (1..=cycles).map(|c| 100 + c).sum::<i64>()
    );
    assert_eq!(path["block_maps_after_cancel"], 2 * cycles);
    assert!(
        path["perm_faults"].is_null(),
        "unknown in one cycle: unknown, not a partial sum: {g:#}"
    );
    // The simulated failing job: DONE, with its crash as an incident.
    let b = test(bad["id"].as_i64().unwrap());
    assert_eq!(b["status"], "DONE", "{b:#}");
    assert_eq!(b["misc"]["armfleet_state"], "failed");
    let incidents = k["incidents"].as_array().unwrap();
    let issues = k["issues"].as_array().unwrap();
    let crash = incidents
        .iter()
        .find(|i| i["test_id"] == b["id"])
        .unwrap_or_else(|| panic!("the crash is an incident: {k:#}"));
    let issue = issues
        .iter()
        .find(|i| i["id"] == crash["issue_id"])
        .unwrap();
    assert!(issue["misc"]["signature"].as_str().is_some(), "{issue:#}");
    // The broken build: an issue with an incident on the build.
    let failed_build = builds.iter().find(|b| b["status"] == "FAIL").unwrap();
    assert!(
        incidents
            .iter()
            .any(|i| i["build_id"] == failed_build["id"] && i["present"] == true),
        "{k:#}"
    );
    // Hardware and emulated only: just the emulated job.
    let hw = server
        .get_json("/api/v1/export/kcidb?hosts=hardware,emulated")
        .await;
    let ids: Vec<&str> = hw["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [format!("armfleet:j{gid}")], "{hw:#}");
    kcidb_validate(dir.path(), &hw);

    // JUnit of the emulated job's run: the path figures as properties.
    let run = good["run_id"].as_i64().unwrap();
    let xml = server
        .get_text(&format!("/api/v1/export/junit?run={run}"))
        .await;
    for prop in [
        "<property name=\"host_kind\" value=\"emulated\"/>".to_owned(),
        format!("<property name=\"path.cycles_with_path\" value=\"{cycles}\"/>"),
        "<property name=\"path.perm_faults\" value=\"unknown\"/>".to_owned(),
        format!(
            "<property name=\"path.block_maps\" value=\"{}\"/>",
            3 * cycles
        ),
    ] {
        assert!(xml.contains(&prop), "{prop} in {xml}");
    }
}
