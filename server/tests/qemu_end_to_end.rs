//! The real stress job end to end: a run triggered through the API runs
//! real migrate→cancel cycles of an arm64 guest (TCG here, KVM on arm64
//! boards) through a real agent, and the job's API record carries the cycle
//! table, the guest console, the QMP transcript and the host log window.

mod common;

use std::time::Duration;

use common::*;

/// Skips loudly, or fails under `ARMFLEET_REQUIRE_QEMU=1`, when the real
/// parts are missing.
fn qemu_ready() -> bool {
    let guest = armfleet_migrate_stress::StressEnv::default_guest_dir().join("arm64");
    let qemu = armfleet_migrate_stress::probe::find_qemu("aarch64").is_some();
    let images = guest.join("vmlinuz").is_file() && guest.join("initrd.gz").is_file();
    if qemu && images {
        return true;
    }
    skip_loudly(if !qemu {
        "qemu-system-aarch64 is not installed".to_owned()
    } else {
        format!(
            "no guest in {} (agent/guest/build.sh arm64)",
            guest.display()
        )
    })
}

const PLAN: &str = "[plan.params]\ncycles = 20\nmemory_mib = 256\nguest_arch = \"arm64\"\naccel = \"auto\"\n\
                    cancel_delay_ms_min = 200\ncancel_delay_ms_max = 400\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_run_drives_real_migrate_cancel_cycles_through_a_real_agent() {
    if !qemu_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "virt-01").await;
    let server =
        TestServer::start(&fleet_toml(&[("virt-01", "qemu-virt", &key.public)], PLAN)).await;
    let _agent = server.agent("virt-01", &key.path, &["--executor", "qemu"]);
    server
        .wait_board("virt-01", "idle", Duration::from_secs(30))
        .await;
    let boards = server.get_json("/api/v1/boards").await;
    assert_eq!(
        boards["boards"][0]["simulated"], false,
        "a QEMU board is not simulated"
    );
    assert_eq!(boards["boards"][0]["executor"], "qemu");

    let run = server
        .trigger("c0ffee0000000000000000000000000000000001")
        .await;
    let job = server.get_json(&format!("/api/v1/runs/{run}")).await["jobs"][0]["id"]
        .as_i64()
        .unwrap();
    let done = server.wait_job_end(job, Duration::from_secs(300)).await;
    assert_eq!(done["state"], "passed", "{}", done["reason"]);
    assert_eq!(done["simulated"], false);
    assert_eq!(done["cycles_completed"], 20);
    let cycles = done["cycles"].as_array().unwrap();
    assert_eq!(cycles.len(), 20, "the cycle table");
    for c in cycles {
        assert_eq!(c["final_state"], "cancelled", "{c}");
        assert_eq!(c["guest_alive"], true, "{c}");
        let delay = c["delay_ms"].as_u64().unwrap();
        assert!((200..=400).contains(&delay), "{c}");
        assert!(c["cancel_to_cancelled_ms"].as_f64().is_some());
        assert!(
            c.get("path").is_none(),
            "a TCG cycle runs no KVM stage-2 code: no path evidence, not zeros: {c}"
        );
    }
    let log = |stream: &'static str| {
        let url = server.url(&format!("/api/v1/jobs/{job}/log?stream={stream}"));
        let client = server.client.clone();
        async move { client.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let console = log("guest_console").await;
    assert!(
        console.contains("ARMFLEET-GUEST-READY") && console.contains("ARMFLEET-HB"),
        "guest console stored"
    );
    let qmp = log("qmp").await;
    assert_eq!(
        qmp.matches("\"migrate_cancel\"").count(),
        20,
        "QMP transcript stored"
    );
    let streams: Vec<&str> = done["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["stream"].as_str().unwrap())
        .collect();
    assert!(
        streams.contains(&"host_dmesg"),
        "the host log window is stored: {streams:?}"
    );
    let agent = log("agent").await;
    assert!(
        agent.contains("TCG"),
        "a TCG run says it does not exercise KVM: {agent}"
    );
    assert!(
        agent.contains("stage-2 path counters: not applicable"),
        "{agent}"
    );
    // The kernel's record: 20 cycles, none of them evidence of the path.
    let record = wait_for("the kernel's record", Duration::from_secs(60), || async {
        let k = server
            .get_json("/api/v1/kernels/c0ffee0000000000000000000000000000000001")
            .await;
        let r = k["kernels"][0]["results"][0].clone();
        (r["cycles_run"].as_i64() == Some(20)).then_some(r)
    })
    .await;
    assert_eq!(record["kvm_cycles"], 0, "{record}");
    assert_eq!(record["traced_cycles"], 0, "{record}");
    assert_eq!(record["path_cycles"], 0, "{record}");
    // accel = "auto" fell back to TCG: recorded as such, and never a pass.
    assert!(
        done["fallback"]
            .as_str()
            .unwrap_or("")
            .contains("fell back to TCG"),
        "{}",
        done["fallback"]
    );
    let verdict = wait_for("the kernel's verdict", Duration::from_secs(60), || async {
        let k = server
            .get_json("/api/v1/kernels/c0ffee0000000000000000000000000000000001")
            .await;
        let v = k["kernels"][0]["verdicts"][0].clone();
        v["verdict"].is_string().then_some(v)
    })
    .await;
    assert_eq!(verdict["verdict"], "not-exercised", "{verdict}");
    assert_eq!(verdict["basis"], "none", "{verdict}");
    assert_eq!(verdict["cycles_run"], 0, "no cycle counted: {verdict}");
    let why = verdict["explanation"].as_str().unwrap();
    assert!(
        why.contains("20 cycle(s) ran") && why.contains("under TCG"),
        "{why}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_for_kvm_on_a_host_without_it_is_a_lab_failure_not_a_kernel_failure() {
    if !qemu_ready() {
        return;
    }
    let kvm = armfleet_migrate_stress::probe_host().kvm;
    if kvm.hardware && kvm.accessible {
        eprintln!("\n******** SKIPPED (not passing): this host has usable hardware KVM ********\n");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "virt-01").await;
    let server = TestServer::start(&fleet_toml(
        &[("virt-01", "qemu-virt", &key.public)],
        &PLAN.replace("accel = \"auto\"", "accel = \"kvm\""),
    ))
    .await;
    let _agent = server.agent("virt-01", &key.path, &["--executor", "qemu"]);
    server
        .wait_board("virt-01", "idle", Duration::from_secs(30))
        .await;
    let run = server
        .trigger("c0ffee0000000000000000000000000000000002")
        .await;
    let job = server.get_json(&format!("/api/v1/runs/{run}")).await["jobs"][0]["id"]
        .as_i64()
        .unwrap();
    let done = server.wait_job_end(job, Duration::from_secs(120)).await;
    assert_eq!(done["state"], "infra_error", "{done}");
    assert!(
        done["reason"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("kvm"),
        "{}",
        done["reason"]
    );
    server.stop().await;
}
