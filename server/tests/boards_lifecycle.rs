//! Real boards' lifecycle, on simulated boards: onboarding (`armfleet-agent
//! check`, agent.toml), power control (a board's power-cycle command is a
//! script that restarts its agent) and crash recovery (a board dies in
//! mid-job; its pstore holds a host oops that becomes the job's finding).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const HOST_OOPS: &str = include_str!("../../agent/replay/host-oops-stage2.log");

/// `armfleet-agent check` with `args`; returns (success, stdout).
async fn check(args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(bin("armfleet-agent"))
        .arg("check")
        .args(args)
        .env_remove("ARMFLEET_AGENT_CONFIG")
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn line<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.contains(&format!("] {name} ")))
        .unwrap_or_else(|| panic!("no `{name}` line in:\n{out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_with_the_right_key_and_reports_a_refused_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "kunpeng-01").await;
    let stranger = keygen(dir.path(), "stranger").await;
    let server = TestServer::start(&fleet_toml(
        &[("kunpeng-01", "kunpeng920", &key.public)],
        "",
    ))
    .await;
    let state = dir.path().join("state");
    let pstore = dir.path().join("pstore");
    std::fs::create_dir_all(&pstore).unwrap();
    let (s, p) = (state.to_str().unwrap(), pstore.to_str().unwrap());
    let started = Instant::now();

    // Everything from flags: the right key passes.
    let common = [
        "--server",
        &server.ssh,
        "--board",
        "kunpeng-01",
        "--server-key",
        &server.fingerprint,
        "--state-dir",
        s,
        "--pstore-dir",
        p,
        "--executor",
        "replay",
    ];
    let (ok, out) = check(&[&common[..], &["--key", key.path.to_str().unwrap()]].concat()).await;
    assert!(ok, "check should pass:\n{out}");
    for name in ["key", "server", "server-key", "auth", "disk"] {
        assert!(line(&out, name).contains("OK"), "{name}:\n{out}");
    }
    assert!(
        line(&out, "auth").contains("accepts this key for board `kunpeng-01`"),
        "{out}"
    );
    assert!(
        line(&out, "pstore").contains("OK"),
        "a pstore dir given for tests counts: {out}"
    );
    assert!(out.contains("board ready"), "{out}");
    // Every check is listed, required or not.
    for name in ["qemu", "kvm", "hugepages", "kexec"] {
        line(&out, name);
    }
    // A check never disturbs the fleet: no session was opened.
    assert_eq!(server.board_state("kunpeng-01").await, "offline");

    // An unknown key: the server's refusal is reported with the fix.
    let (ok, out) =
        check(&[&common[..], &["--key", stranger.path.to_str().unwrap()]].concat()).await;
    assert!(!ok, "a refused key fails the check:\n{out}");
    let auth = line(&out, "auth");
    assert!(
        auth.contains("MISSING") && auth.contains("refused this key for board `kunpeng-01`"),
        "{out}"
    );
    assert!(
        out.contains("fleet.toml") && out.contains("armfleet reload"),
        "the fix is printed: {out}"
    );
    assert!(out.contains("NOT ready"), "{out}");

    // A wrong pinned server key: reported, and no authentication attempted.
    let wrong_pin = [
        "--server",
        &server.ssh,
        "--board",
        "kunpeng-01",
        "--server-key",
        "SHA256:AAAAwrong",
        "--state-dir",
        s,
        "--pstore-dir",
        p,
        "--executor",
        "replay",
        "--key",
        key.path.to_str().unwrap(),
    ];
    let (ok, out) = check(&wrong_pin).await;
    assert!(
        !ok && line(&out, "server-key").contains("MISSING")
            && line(&out, "auth").contains("not attempted"),
        "{out}"
    );

    // Nothing listening: the server check fails with its fix.
    let (ok, out) = check(&[
        "--server",
        "127.0.0.1:1",
        "--board",
        "kunpeng-01",
        "--key",
        key.path.to_str().unwrap(),
        "--state-dir",
        s,
        "--executor",
        "replay",
    ])
    .await;
    assert!(!ok && line(&out, "server").contains("MISSING"), "{out}");

    // The same from agent.toml, with a flag overriding one field of it.
    let conf = dir.path().join("agent.toml");
    std::fs::write(&conf, format!(
        "server = \"127.0.0.1:1\"\nboard = \"kunpeng-01\"\nkey = \"{}\"\nserver_key = \"{}\"\nstate_dir = \"{s}\"\nexecutor = \"replay\"\npstore_dir = \"{p}\"\n",
        key.path.display(), server.fingerprint
    ))
    .unwrap();
    let (ok, out) = check(&["--config", conf.to_str().unwrap(), "--server", &server.ssh]).await;
    assert!(ok, "agent.toml + --server override:\n{out}");
    // The environment overrides the file too (here: to the stranger's key).
    let out2 = tokio::process::Command::new(bin("armfleet-agent"))
        .args([
            "check",
            "--config",
            conf.to_str().unwrap(),
            "--server",
            &server.ssh,
        ])
        .env("ARMFLEET_KEY", &stranger.path)
        .output()
        .await
        .unwrap();
    assert!(
        !out2.status.success()
            && String::from_utf8_lossy(&out2.stdout).contains("refused this key")
    );
    // A bad file is refused with its line and field.
    std::fs::write(&conf, "server = \"x:1\"\nboard = 7\n").unwrap();
    let (ok, out) = check(&["--config", conf.to_str().unwrap()]).await;
    assert!(
        !ok && out.contains("agent.toml") && out.contains("line 2") && out.contains("`board`"),
        "{out}"
    );
    // A named but missing file is an error; the default path may be absent.
    let (ok, out) = check(&["--config", "/nonexistent/agent.toml"]).await;
    assert!(!ok && out.contains("/nonexistent/agent.toml"), "{out}");
    eprintln!("check scenarios took {:?}", started.elapsed());
    server.stop().await;
}

/// A board's power-cycle script: it "reboots" the board by starting a new
/// agent process with the board's state dir (and pstore dir), detached, and
/// counts how often it ran.
fn restart_script(
    dir: &Path,
    server: &TestServer,
    board: &str,
    key: &Path,
    state: &Path,
    pstore: &Path,
) -> PathBuf {
    let script = dir.join(format!("power-{board}.sh"));
    let text = format!(
        "#!/bin/sh\n\
         echo \"power-cycling $ARMFLEET_BOARD\"\n\
         n=$(cat '{d}/cycles' 2>/dev/null || echo 0); n=$((n+1)); echo $n > '{d}/cycles'\n\
         '{agent}' --server '{ssh}' --board '{board}' --key '{key}' --server-key '{fp}' --state-dir '{state}' \
           --pstore-dir '{pstore}' --executor replay </dev/null >'{d}/agent-after-cycle-'$n.log 2>&1 &\n\
         echo $! > '{d}/agent.pid'\n\
         echo started\n",
        d = dir.display(),
        agent = bin("armfleet-agent").display(),
        ssh = server.ssh,
        fp = server.fingerprint,
        key = key.display(),
        state = state.display(),
        pstore = pstore.display(),
    );
    std::fs::write(&script, text).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// Kills the agent a power-cycle script started (by its recorded pid).
fn kill_scripted_agent(dir: &Path) {
    if let Ok(pid) = std::fs::read_to_string(dir.join("agent.pid"))
        && let Ok(pid) = pid.trim().parse::<i32>()
    {
        // SAFETY: kill(2) of the agent process this test's script started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

fn agent_at(
    server: &TestServer,
    board: &str,
    key: &Path,
    state: &Path,
    pstore: &Path,
) -> tokio::process::Child {
    let log = state.with_extension("log");
    tokio::process::Command::new(bin("armfleet-agent"))
        .args([
            "--server",
            &server.ssh,
            "--board",
            board,
            "--server-key",
            &server.fingerprint,
            "--executor",
            "replay",
        ])
        .arg("--key")
        .arg(key)
        .arg("--state-dir")
        .arg(state)
        .arg("--pstore-dir")
        .arg(pstore)
        .env("ARMFLEET_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

fn with_power(fleet: String, server_extra: &str, commands: &[(&str, String)]) -> String {
    let mut fleet = fleet.replacen("[server]\n", &format!("[server]\n{server_extra}"), 1);
    for (board, argv) in commands {
        let anchor = format!("name = \"{board}\"\n");
        fleet = fleet.replacen(&anchor, &format!("{anchor}power_cycle = {argv}\n"), 1);
    }
    fleet
}

async fn audit_power(server: &TestServer, board: &str) -> Vec<(String, serde_json::Value)> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT actor, detail FROM audit_log WHERE action = 'power-cycle' AND target = $1 ORDER BY id",
    )
    .bind(board)
    .fetch_all(&server.pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(a, d)| (a, serde_json::from_str(&d).unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_board_is_power_cycled_once_and_its_restarted_agent_brings_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let kp = keygen(dir.path(), "kunpeng-01").await;
    let alt = keygen(dir.path(), "altra-01").await;
    let pi = keygen(dir.path(), "rpi4-01").await;
    let fleet = fleet_toml(
        &[
            ("kunpeng-01", "kunpeng920", &kp.public),
            ("altra-01", "ampere-altra", &alt.public),
            ("rpi4-01", "rpi4", &pi.public),
        ],
        "",
    );
    // The script's paths need the server's address: start, then write the
    // real fleet and reload (as a lab adding power control would).
    let server = TestServer::start(&fleet).await;
    let state = dir.path().join("kp-state");
    let pstore = dir.path().join("kp-pstore");
    std::fs::create_dir_all(&pstore).unwrap();
    let script = restart_script(dir.path(), &server, "kunpeng-01", &kp.path, &state, &pstore);
    let powered = with_power(
        fleet,
        "power_cycle_after_s = 2\npower_cycle_interval_s = 600\npower_cycle_timeout_s = 2\n",
        &[
            ("kunpeng-01", format!("[\"{}\"]", script.display())),
            // A failing command and a hanging one: recorded, never fatal.
            (
                "altra-01",
                "[\"/bin/sh\", \"-c\", \"echo pdu says no >&2; exit 3\"]".into(),
            ),
            ("rpi4-01", "[\"/bin/sleep\", \"30\"]".into()),
        ],
    );
    std::fs::write(server.dir.path().join("fleet.toml"), &powered).unwrap();
    let reload = server.post_as_admin("/api/v1/admin/reload", None).await;
    assert_eq!(
        reload.status(),
        200,
        "{}",
        reload.text().await.unwrap_or_default()
    );

    let mut agent = agent_at(&server, "kunpeng-01", &kp.path, &state, &pstore);
    server
        .wait_board("kunpeng-01", "idle", Duration::from_secs(20))
        .await;
    agent.start_kill().unwrap();
    let _ = agent.wait().await;
    let killed = Instant::now();
    server
        .wait_board("kunpeng-01", "offline", Duration::from_secs(10))
        .await;
    // The server runs the script after 2 s offline; the new agent connects.
    server
        .wait_board("kunpeng-01", "idle", Duration::from_secs(30))
        .await;
    let back_after = killed.elapsed();
    eprintln!("kunpeng-01 back online {back_after:?} after its agent was killed");
    let cycles = audit_power(&server, "kunpeng-01").await;
    assert_eq!(cycles.len(), 1, "{cycles:?}");
    let (actor, detail) = &cycles[0];
    assert_eq!(actor, "power-worker");
    assert_eq!(detail["ok"], true, "{detail}");
    assert_eq!(detail["exit_code"], 0);
    assert!(
        detail["stdout"]
            .as_str()
            .unwrap()
            .contains("power-cycling kunpeng-01"),
        "ARMFLEET_BOARD set, output kept: {detail}"
    );
    assert!(
        detail["reason"]
            .as_str()
            .unwrap()
            .contains("offline for more than 2 s")
    );

    // The failing and the hanging commands ran once each, and are recorded.
    let failing = wait_for(
        "altra-01's power cycle",
        Duration::from_secs(20),
        || async { audit_power(&server, "altra-01").await.into_iter().next() },
    )
    .await
    .1;
    assert_eq!(
        (failing["ok"].clone(), failing["exit_code"].clone()),
        (serde_json::json!(false), serde_json::json!(3)),
        "{failing}"
    );
    assert!(failing["stderr"].as_str().unwrap().contains("pdu says no"));
    let hanging = wait_for("rpi4-01's power cycle", Duration::from_secs(20), || async {
        audit_power(&server, "rpi4-01").await.into_iter().next()
    })
    .await
    .1;
    assert_eq!(hanging["timed_out"], true, "{hanging}");
    assert!(
        hanging["duration_ms"].as_u64().unwrap() < 5000,
        "killed at its timeout: {hanging}"
    );
    // At most once per window, though both stay offline.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(audit_power(&server, "altra-01").await.len(), 1);
    assert_eq!(audit_power(&server, "rpi4-01").await.len(), 1);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("cycles"))
            .unwrap()
            .trim(),
        "1"
    );

    // By hand, through the API: admin only.
    let url = server.url("/api/v1/boards/altra-01/power-cycle");
    assert_eq!(server.client.post(&url).send().await.unwrap().status(), 401);
    let r = server
        .client
        .post(&url)
        .bearer_auth(&server.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (body["ok"].clone(), body["exit_code"].clone()),
        (serde_json::json!(false), serde_json::json!(3)),
        "{body}"
    );
    let manual = audit_power(&server, "altra-01").await;
    assert_eq!(manual.len(), 2);
    assert_eq!(manual[1].0, "api:admin");
    let unknown = server
        .post_as_admin("/api/v1/boards/nope/power-cycle", None)
        .await;
    assert_eq!(unknown.status(), 404);
    kill_scripted_agent(dir.path());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_that_crashes_mid_job_is_power_cycled_and_its_pstore_oops_becomes_the_jobs_finding()
{
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "kunpeng-01").await;
    let fleet = fleet_toml(
        &[("kunpeng-01", "kunpeng920", &key.public)],
        "[plan.params]\ncycles = 500\nreplay_cycle_ms = 100\n",
    );
    let server = TestServer::start(&fleet).await;
    let state = dir.path().join("state");
    let pstore = dir.path().join("pstore");
    std::fs::create_dir_all(&pstore).unwrap();
    let script = restart_script(
        dir.path(),
        &server,
        "kunpeng-01",
        &key.path,
        &state,
        &pstore,
    );
    let powered = with_power(
        fleet,
        "power_cycle_after_s = 4\npower_cycle_interval_s = 600\nboot_deadline_s = 60\n",
        &[("kunpeng-01", format!("[\"{}\"]", script.display()))],
    );
    std::fs::write(server.dir.path().join("fleet.toml"), &powered).unwrap();
    let reload = server.post_as_admin("/api/v1/admin/reload", None).await;
    assert_eq!(reload.status(), 200);

    let mut agent = agent_at(&server, "kunpeng-01", &key.path, &state, &pstore);
    server
        .wait_board("kunpeng-01", "idle", Duration::from_secs(20))
        .await;
    let run = server
        .trigger("abcdef0000000000000000000000000000000063")
        .await;
    let job = server.get_json(&format!("/api/v1/runs/{run}")).await["jobs"][0]["id"]
        .as_i64()
        .unwrap();
    wait_for(
        "the job to run some cycles",
        Duration::from_secs(20),
        || async {
            let j = server.get_json(&format!("/api/v1/jobs/{job}")).await;
            (j["state"] == "running" && j["cycles_completed"].as_i64().unwrap_or(0) >= 2)
                .then_some(())
        },
    )
    .await;
    // The host oopses in the stage-2 fault path: the board dies (agent
    // SIGKILLed) and ramoops keeps the kernel's last words.
    agent.start_kill().unwrap();
    let _ = agent.wait().await;
    let crashed = Instant::now();
    std::fs::write(pstore.join("dmesg-ramoops-0"), HOST_OOPS).unwrap();
    server
        .wait_board("kunpeng-01", "offline", Duration::from_secs(10))
        .await;
    // The job waits for the board (boot deadline), it is not lost.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let j = server.get_json(&format!("/api/v1/jobs/{job}")).await;
    assert_eq!(
        j["state"], "running",
        "the job waits for its board to come back: {j}"
    );

    // The server power-cycles the board; its agent comes back and reports.
    let done = wait_for(
        "the crashed job to end",
        Duration::from_secs(60),
        || async {
            let j = server.get_json(&format!("/api/v1/jobs/{job}")).await;
            (j["state"] != "running").then_some(j)
        },
    )
    .await;
    eprintln!("job ended {:?} after the crash", crashed.elapsed());
    assert_eq!(
        done["state"], "failed",
        "a host crash fails the job: {done}"
    );
    let reason = done["reason"].as_str().unwrap();
    assert!(
        reason.contains("host kernel crashed") && reason.contains("kvm_pgtable_stage2_map"),
        "{reason}"
    );
    assert!(
        done["evidence"]
            .to_string()
            .contains("Unable to handle kernel paging request"),
        "{done}"
    );
    assert_eq!(
        audit_power(&server, "kunpeng-01").await.len(),
        1,
        "one power cycle brought it back"
    );

    let findings = wait_for("the job's findings", Duration::from_secs(30), || async {
        let f = server
            .get_json(&format!("/api/v1/jobs/{job}/findings"))
            .await;
        (f["analysed"] == true).then_some(f)
    })
    .await;
    let host = findings["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["source"] == "host" && f["fatal"] == true)
        .unwrap_or_else(|| panic!("a host crash finding: {findings}"))
        .clone();
    assert_eq!(
        host["title"], "BUG: unable to handle kernel paging request in kvm_pgtable_stage2_map",
        "{host}"
    );
    assert_eq!(host["class"], "oops");
    assert_eq!(host["stream"], "host_dmesg");
    let log = server
        .get_text(&format!("/api/v1/jobs/{job}/log?stream=host_dmesg"))
        .await;
    assert!(
        log.contains("previous boot's kernel log") && log.contains("dmesg-ramoops-0"),
        "{log}"
    );
    assert!(
        log.contains("simulated host kernel log window"),
        "the live log is kept before it"
    );
    // The record was taken out of pstore (kept under the state dir).
    assert!(!pstore.join("dmesg-ramoops-0").exists());
    assert!(
        std::fs::read_dir(state.join("pstore-archive"))
            .unwrap()
            .next()
            .is_some()
    );
    // The board is back and idle for the next job.
    server
        .wait_board("kunpeng-01", "idle", Duration::from_secs(20))
        .await;
    kill_scripted_agent(dir.path());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_log_that_arrives_after_the_job_was_lost_is_still_triaged_into_its_findings() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "rpi5-01").await;
    // No boot deadline: the job is lost 1.5 s after the board drops.
    let fleet = fleet_toml(
        &[("rpi5-01", "rpi5", &key.public)],
        "[plan.params]\ncycles = 500\nreplay_cycle_ms = 100\n",
    );
    let server = TestServer::start(&fleet).await;
    let state = dir.path().join("state");
    let pstore = dir.path().join("pstore");
    std::fs::create_dir_all(&pstore).unwrap();
    let mut agent = agent_at(&server, "rpi5-01", &key.path, &state, &pstore);
    server
        .wait_board("rpi5-01", "idle", Duration::from_secs(20))
        .await;
    let run = server
        .trigger("abcdef0000000000000000000000000000000064")
        .await;
    let job = server.get_json(&format!("/api/v1/runs/{run}")).await["jobs"][0]["id"]
        .as_i64()
        .unwrap();
    wait_for("the job to run", Duration::from_secs(20), || async {
        let j = server.get_json(&format!("/api/v1/jobs/{job}")).await;
        (j["state"] == "running" && j["cycles_completed"].as_i64().unwrap_or(0) >= 1).then_some(())
    })
    .await;
    agent.start_kill().unwrap();
    let _ = agent.wait().await;
    std::fs::write(pstore.join("dmesg-ramoops-0"), HOST_OOPS).unwrap();
    // Lost, and analysed as such (nothing host-side yet).
    wait_for(
        "the job to be lost and analysed",
        Duration::from_secs(30),
        || async {
            let f = server
                .get_json(&format!("/api/v1/jobs/{job}/findings"))
                .await;
            (f["state"] == "lost" && f["analysed"] == true).then_some(())
        },
    )
    .await;
    // The board comes back much later with the crash log.
    let _agent = agent_at(&server, "rpi5-01", &key.path, &state, &pstore);
    let findings = wait_for(
        "the host finding after the late upload",
        Duration::from_secs(30),
        || async {
            let f = server
                .get_json(&format!("/api/v1/jobs/{job}/findings"))
                .await;
            let host = f["findings"]
                .as_array()?
                .iter()
                .any(|x| x["source"] == "host" && x["fatal"] == true);
            (f["analysed"] == true && host).then_some(f)
        },
    )
    .await;
    assert_eq!(
        findings["state"], "lost",
        "a lost job stays lost (terminal), but its findings say why"
    );
    let host = findings["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["source"] == "host")
        .unwrap();
    assert_eq!(
        host["title"],
        "BUG: unable to handle kernel paging request in kvm_pgtable_stage2_map"
    );
    let sig: i64 = sqlx::query_scalar("SELECT count FROM signatures WHERE title = 'BUG: unable to handle kernel paging request in kvm_pgtable_stage2_map'")
        .fetch_one(&server.pool)
        .await
        .unwrap();
    assert_eq!(sig, 1, "counted once");
    server.stop().await;
}
