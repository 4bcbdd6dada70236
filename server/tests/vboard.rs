//! The virtual arm64 board end to end: an emulated arm64 host whose kernel
//! runs KVM at EL2 (nested under QEMU TCG), driven over SSH by an agent on
//! this machine acting as its lab controller. A migrate→cancel job runs its
//! guests under real KVM/arm64 inside it — the stage-2 code the bug class
//! lives in — and the job's record says so.

mod common;

use std::time::Duration;

use common::*;

/// A fleet of virtual boards with two plans under KVM: `smoke` (`cycles`
/// cycles) and `long` (500, to be interrupted); no automatic extra cycles.
fn fleet(boards: &[(&str, &str)], cycles: u32) -> String {
    let mut s = fleet_toml(
        &boards
            .iter()
            .map(|(name, key)| (*name, "virt-arm64", *key))
            .collect::<Vec<_>>(),
        &format!("[plan.params]\n{}", params(cycles)),
    );
    s.push_str(&format!(
        "\n[[plan]]\nname = \"long\"\ntype = \"migrate-cancel\"\nlabels = [\"kvm\"]\ntimeout_s = 1800\n[plan.params]\n{}[plan.verdict]\nmax_extensions = 0\nmax_infra_retries = 0\n",
        params(500)
    ));
    s
}

fn params(cycles: u32) -> String {
    format!(
        "cycles = {cycles}\nmemory_mib = 192\nvcpus = 1\nguest_arch = \"arm64\"\naccel = \"kvm\"\n\
         cancel_delay_ms_min = 300\ncancel_delay_ms_max = 600\nbandwidth_mib_s = 32\n"
    )
}

/// One virtual board at a time: each keeps ~1.8 cores busy, and on a
/// two-core machine several at once starve each other past the timeouts a
/// single emulated board is given.
fn one_board_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A run of one plan; the id of its one job.
async fn one_job(server: &TestServer, commit: &str, plan: &str) -> i64 {
    one_job_of_build(server, commit, plan, serde_json::Value::Null).await
}

/// The same for a build handed over as artifacts (`null`: none).
async fn one_job_of_build(
    server: &TestServer,
    commit: &str,
    plan: &str,
    build: serde_json::Value,
) -> i64 {
    let resp = server
        .client
        .post(server.url("/api/v1/runs"))
        .bearer_auth(&server.token)
        .json(
            &serde_json::json!({"tree": "https://example.org/linux.git", "branch": "master",
            "commit": commit, "plan": plan, "build": build}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let run = resp.json::<serde_json::Value>().await.unwrap()["run_id"]
        .as_i64()
        .unwrap();
    server.get_json(&format!("/api/v1/runs/{run}")).await["jobs"][0]["id"]
        .as_i64()
        .unwrap()
}

/// Waits for `job` to end and asserts that it passed with its guests under
/// KVM (the agent's log is in the message when not).
async fn passed_under_kvm(server: &TestServer, job: i64) -> serde_json::Value {
    let done = server.wait_job_end(job, Duration::from_secs(900)).await;
    assert_eq!(
        done["state"],
        "passed",
        "{}\n{}",
        done["reason"],
        job_log(server, job, "agent").await
    );
    assert_eq!(
        done["accel"], "kvm",
        "the guests ran under KVM inside the board: {done}"
    );
    done
}

async fn job_log(server: &TestServer, job: i64, stream: &str) -> String {
    server
        .get_text(&format!("/api/v1/jobs/{job}/log?stream={stream}"))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_migrate_cancel_under_kvm_inside_the_virtual_board_and_cleans_up_after_a_lost_link()
 {
    let _one_board = one_board_at_a_time();
    if !vboard_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vboard = VirtualBoard::boot(dir.path(), "vhe", "vhe").await;
    let key = keygen(dir.path(), "vboard-01").await;
    let impostor = keygen(dir.path(), "vboard-02").await;
    // vboard-02 is never online (its controller pins a wrong host key):
    // no plan runs on it.
    let server = TestServer::start(&format!(
        "{}\n[[board]]\nname = \"vboard-02\"\nfamily = \"virt-arm64\"\nlabels = [\"quarantine\"]\nkey = \"{}\"\n",
        fleet(&[("vboard-01", &key.public)], 3),
        impostor.public
    ))
    .await;
    let agent = server.controller_agent(
        "vboard-01",
        &key.path,
        &vboard.ssh_board_toml(&vboard.host_key()),
    );
    server
        .wait_board("vboard-01", "idle", Duration::from_secs(120))
        .await;

    // The board's facts are the emulated board's own, not this machine's.
    let boards = server.get_json("/api/v1/boards").await;
    let b = boards["boards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "vboard-01")
        .unwrap()
        .clone();
    assert_eq!(b["host_kind"], "emulated", "{b}");
    assert_eq!(b["simulated"], false, "{b}");
    assert_eq!(b["facts"]["arch"], "arm64", "{b}");
    assert_eq!(b["facts"]["kvm"]["present"], true, "{b}");
    assert_eq!(b["facts"]["kvm_mode"], "vhe", "{b}");
    assert!(
        b["facts"]["ssh_board"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1")
    );

    // A wrong pinned host key: refused, with a clear error, never online.
    let wrong_pin = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let impostor_agent = server.controller_agent(
        "vboard-02",
        &impostor.path,
        &vboard.ssh_board_toml(wrong_pin),
    );

    // One short job under KVM inside the board.
    let job = one_job(&server, "a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a1", "smoke").await;
    let done = passed_under_kvm(&server, job).await;
    assert_eq!(done["host_kind"], "emulated", "{done}");
    assert!(
        done["run_detail"]
            .as_str()
            .unwrap()
            .contains("emulated arm64 board"),
        "{done}"
    );
    let cycles = done["cycles"].as_array().unwrap();
    assert_eq!(cycles.len(), 3, "{done}");
    for c in cycles {
        assert_eq!(c["final_state"], "cancelled", "{c}");
        assert_eq!(c["guest_alive"], true, "{c}");
        // The board's own kernel traced its stage-2 code doing the work:
        // pages mapped under dirty logging, write-protection faults taken.
        let path = &c["path"];
        assert!(path["page_maps"].as_u64().unwrap() > 0, "{c}");
        assert!(path["perm_faults"].as_u64().unwrap() > 0, "{c}");
        assert!(path["block_maps_after_cancel"].is_u64(), "{c}");
    }
    // The kernel's record says what it rests on.
    let record = wait_for("the kernel's record", Duration::from_secs(60), || async {
        let k = server
            .get_json("/api/v1/kernels/a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a1")
            .await;
        let r = k["kernels"][0]["results"][0].clone();
        (r["traced_cycles"].as_i64() == Some(3)).then_some(r)
    })
    .await;
    assert_eq!(record["kvm_cycles"], 3, "{record}");
    assert_eq!(
        record["host_kinds"],
        serde_json::json!(["emulated"]),
        "{record}"
    );
    let after: u64 = cycles
        .iter()
        .map(|c| c["path"]["block_maps_after_cancel"].as_u64().unwrap())
        .sum();
    assert_eq!(record["block_maps_after_cancel"], after, "{record}");
    // The probes are gone from the board's kernel once the job ended.
    let probes = vboard.sh("cat /sys/kernel/tracing/kprobe_events").await;
    assert!(!probes.contains("armfleet_"), "{probes}");
    let dmesg = job_log(&server, job, "host_dmesg").await;
    assert!(
        dmesg.contains("the board's kernel log window"),
        "the board's /dev/kmsg window came back: {dmesg}"
    );
    let agent_log = job_log(&server, job, "agent").await;
    eprintln!("--- the job's agent log ---\n{agent_log}\n--- the board's log window ---\n{dmesg}");
    assert!(
        agent_log.contains("accel=kvm") || agent_log.contains("accel kvm"),
        "{agent_log}"
    );
    assert!(
        agent_log.contains("-accel kvm") || agent_log.contains("accel=kvm"),
        "the guest QEMU was started with KVM: {agent_log}"
    );
    // Nothing of the job is left on the board.
    let left = vboard
        .sh("ls /run/armfleet 2>/dev/null; pgrep qemu-system || true")
        .await;
    assert_eq!(left.trim(), "", "left on the board after the job: {left}");

    // The impostor pinning the wrong key never came online.
    assert_eq!(server.board_state("vboard-02").await, "offline");
    let log = wait_for(
        "the host key refusal in the agent's log",
        Duration::from_secs(60),
        || async {
            let l = impostor_agent.log_text();
            l.contains("BOARD HOST KEY MISMATCH").then_some(l)
        },
    )
    .await;
    assert!(log.contains(wrong_pin), "{log}");
    drop(impostor_agent);

    // The board's sshd goes away mid-job: a lab failure, and once sshd is
    // back nothing of the job is running on the board.
    let job = one_job(&server, "a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a2", "long").await;
    wait_for(
        "a cycle of the second job",
        Duration::from_secs(600),
        || async {
            let j = server.get_json(&format!("/api/v1/jobs/{job}")).await;
            (j["cycles"].as_array().map(|c| c.len()).unwrap_or(0) >= 1).then_some(())
        },
    )
    .await;
    let running = vboard.sh("pgrep qemu-system | wc -l").await;
    assert!(
        running.trim().parse::<u32>().unwrap() >= 1,
        "the job's QEMUs run on the board"
    );
    // Every sshd, the listener and the sessions: the board's init restarts
    // the listener a few seconds later. The command's own session dies
    // with them, so its answer is a lost link, not an exit status.
    let killer = armfleet_migrate_stress::ssh_board::SshBoard::connect(&vboard.ssh_config())
        .await
        .expect("SSH to the virtual board");
    let killed = killer.run("pkill -9 sshd", Duration::from_secs(20)).await;
    assert!(
        killed.is_err(),
        "killing the board's sshd ends the session that asked: {killed:?}"
    );
    let done = server.wait_job_end(job, Duration::from_secs(300)).await;
    assert_eq!(
        done["state"], "infra_error",
        "a lost link is a lab failure, never the kernel's: {done}"
    );
    let left = wait_for(
        "the board's sshd back and the job's QEMUs gone",
        Duration::from_secs(120),
        || async {
            let b = armfleet_migrate_stress::ssh_board::SshBoard::connect(&vboard.ssh_config())
                .await
                .ok()?;
            let out = b
                .run(
                    "pgrep qemu-system | wc -l; ls /run/armfleet | wc -l",
                    Duration::from_secs(30),
                )
                .await
                .ok()?;
            b.disconnect().await;
            let text = out.stdout_text();
            (text.split_whitespace().collect::<Vec<_>>() == ["0", "0"]).then_some(text)
        },
    )
    .await;
    assert!(!left.is_empty());
    drop(agent);
    vboard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_virtual_board_boots_its_kvm_in_nvhe_mode_and_runs_a_job_there() {
    let _one_board = one_board_at_a_time();
    if !vboard_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vboard = VirtualBoard::boot(dir.path(), "nvhe", "nvhe").await;
    assert!(
        vboard
            .console()
            .contains("Hyp mode initialized successfully")
            || vboard
                .console()
                .contains("nVHE mode initialized successfully"),
        "the nVHE hypervisor came up: {}",
        vboard.console()
    );
    let key = keygen(dir.path(), "vboard-nvhe").await;
    let server = TestServer::start(&fleet(&[("vboard-nvhe", &key.public)], 2)).await;
    let _agent = server.controller_agent(
        "vboard-nvhe",
        &key.path,
        &vboard.ssh_board_toml(&vboard.host_key()),
    );
    server
        .wait_board("vboard-nvhe", "idle", Duration::from_secs(120))
        .await;
    let board = server.get_json("/api/v1/boards").await["boards"][0].clone();
    assert_eq!(board["facts"]["kvm_mode"], "nvhe", "{board}");
    let job = one_job(&server, "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b1", "smoke").await;
    let done = passed_under_kvm(&server, job).await;
    assert!(
        done["run_detail"].as_str().unwrap().contains("nvhe"),
        "{done}"
    );
    vboard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_is_deployed_to_the_virtual_board_booted_there_and_stressed_on_exactly_that_build()
{
    let _one_board = one_board_at_a_time();
    if !vboard_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vboard = VirtualBoard::boot(dir.path(), "deploy", "vhe").await;
    let booted_from = vboard.info["kernel"].as_str().unwrap().to_owned();
    assert!(!booted_from.ends_with("boot-once-Image"), "{booted_from}");
    // The build: a real arm64 kernel Image (the Debian kernel the board
    // image carries), as a lab that builds elsewhere would hand it over.
    let image = armfleet_server::wiring::demo::vboard_image()
        .unwrap()
        .join("vmlinuz");
    use sha2::Digest;
    let sum = hex::encode(sha2::Sha256::digest(std::fs::read(&image).unwrap()));
    let release = vboard.sh("uname -r").await.trim().to_owned();

    let key = keygen(dir.path(), "vboard-deploy").await;
    let server = TestServer::start(&fleet(&[("vboard-deploy", &key.public)], 2)).await;
    let _agent = server.controller_agent(
        "vboard-deploy",
        &key.path,
        &format!(
            "{}\n[boot]\nvboard_state = \"{}\"\n",
            vboard.ssh_board_toml(&vboard.host_key()),
            vboard.state.display()
        ),
    );
    server
        .wait_board("vboard-deploy", "idle", Duration::from_secs(120))
        .await;
    let job = one_job_of_build(
        &server,
        "c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c1",
        "smoke",
        serde_json::json!({"kernel_release": release,
            "artifacts": [{"name": "Image", "url": format!("file://{}", image.display()), "sha256": sum}]}),
    )
    .await;
    passed_under_kvm(&server, job).await;
    // The board was power-cycled onto the build and reported running it.
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(vboard.state.join("vboard.json")).unwrap())
            .unwrap();
    assert!(info["boots"].as_u64().unwrap() >= 2, "{info}");
    assert!(
        info["kernel"]
            .as_str()
            .unwrap()
            .ends_with("boot-once-Image"),
        "{info}"
    );
    let board = server.get_json("/api/v1/boards").await["boards"][0].clone();
    assert!(board["facts"]["build_id"].as_i64().is_some(), "{board}");
    let kernel = server
        .get_json("/api/v1/kernels/c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c1")
        .await;
    assert!(
        kernel.to_string().contains("\"booted\""),
        "the kernel record shows the boot: {kernel:#}"
    );
    vboard.stop().await;
}

/// The workload this project exists for, on the board's real KVM/arm64:
/// with block-backed guest RAM, several dirtying threads and a dwell after
/// each cancel, the board's kernel re-installs stage-2 blocks after the
/// cancels and the kernel's verdict rests on those cycles; the same stress
/// on memory that stage 2 can only map by pages is `not-exercised`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_backed_stress_reaches_the_stage2_path_and_a_pages_only_plan_is_not_exercised() {
    let _one_board = one_board_at_a_time();
    if !vboard_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vboard = VirtualBoard::boot(dir.path(), "path", "vhe").await;
    let key = keygen(dir.path(), "vboard-01").await;
    // The fleet's workload, smaller: 512 MiB, of which 80% dirtied, held
    // 1.5-2.5 s under dirty logging (BENCHMARKS.md: ~87 re-installs a cycle).
    // The control (pages only) needs no path: smaller and quicker.
    let stress = |cycles: u32, extra: &str| {
        let (mib, dirty, hold) = if extra.contains("memory_backing = \"block\"") {
            (512, 80, (1500, 2500))
        } else {
            (192, 50, (300, 600))
        };
        format!(
            "cycles = {cycles}\nmemory_mib = {mib}\ndirty_percent = {dirty}\nvcpus = 2\nguest_arch = \"arm64\"\naccel = \"kvm\"\n\
             cancel_delay_ms_min = {}\ncancel_delay_ms_max = {}\nbandwidth_mib_s = 32\nverify = true\n\
             dwell_after_cancel_ms = 1500\n{extra}[plan.verdict]\nmax_extensions = 0\nmax_infra_retries = 0\n",
            hold.0, hold.1
        )
    };
    let mut toml = fleet_toml(
        &[("vboard-01", "virt-arm64", key.public.as_str())],
        &format!(
            "[plan.params]\n{}",
            stress(3, "memory_backing = \"block\"\n")
        ),
    );
    for (name, cycles, extra) in [("pages", 2, "memory_backing = \"pages\"\n")] {
        toml.push_str(&format!(
            "\n[[plan]]\nname = \"{name}\"\ntype = \"migrate-cancel\"\nlabels = [\"kvm\"]\ntimeout_s = 1800\n[plan.params]\n{}",
            stress(cycles, extra)
        ));
    }
    let server = TestServer::start(&toml).await;
    let _agent = server.controller_agent(
        "vboard-01",
        &key.path,
        &vboard.ssh_board_toml(&vboard.host_key()),
    );
    server
        .wait_board("vboard-01", "idle", Duration::from_secs(120))
        .await;
    let facts = &server.get_json("/api/v1/boards").await["boards"][0]["facts"];
    assert_eq!(facts["memory"]["page_size_kib"], 4, "{facts}");
    assert!(facts["memory"]["thp"].is_string(), "{facts}");

    // Block-backed: blocks re-installed after the cancels, and the verdict
    // rests on those cycles.
    const BLOCK: &str = "b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1";
    let job = one_job(&server, BLOCK, "smoke").await;
    let done = passed_under_kvm(&server, job).await;
    let agent_log = job_log(&server, job, "agent").await;
    assert!(agent_log.contains("memory: block-backed"), "{agent_log}");
    let console = job_log(&server, job, "guest_console").await;
    assert!(
        console.contains("threads=2") && console.contains("verify=1"),
        "{console}"
    );
    let after: u64 = done["cycles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"]["block_maps_after_cancel"].as_u64().unwrap())
        .sum();
    assert!(after > 0, "no block re-installed after any cancel: {done}");
    let v = wait_for(
        "the block plan's verdict",
        Duration::from_secs(60),
        || async {
            let k = server.get_json(&format!("/api/v1/kernels/{BLOCK}")).await;
            let v = k["kernels"][0]["verdicts"][0].clone();
            v["basis"].is_string().then_some(v)
        },
    )
    .await;
    assert_eq!(v["basis"], "path", "{v}");
    assert_ne!(v["verdict"], "not-exercised", "{v}");
    assert!(
        v["explanation"]
            .as_str()
            .unwrap()
            .contains("reached the stage-2 path"),
        "{v}"
    );

    // Pages only: KVM ran, nothing re-installed, so no verdict but
    // `not-exercised`.
    const PAGES: &str = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";
    let job = one_job(&server, PAGES, "pages").await;
    let done = passed_under_kvm(&server, job).await;
    for c in done["cycles"].as_array().unwrap() {
        assert_eq!(c["path"]["block_maps_after_cancel"], 0, "{c}");
    }
    let v = wait_for(
        "the pages plan's verdict",
        Duration::from_secs(60),
        || async {
            let k = server.get_json(&format!("/api/v1/kernels/{PAGES}")).await;
            let v = k["kernels"][0]["verdicts"][0].clone();
            v["verdict"].is_string().then_some(v)
        },
    )
    .await;
    assert_eq!(v["verdict"], "not-exercised", "{v}");
    assert!(
        v["explanation"]
            .as_str()
            .unwrap()
            .contains("2 under KVM on arm64"),
        "{v}"
    );

    server.stop().await;
}
