//! A job's reproducer runs: two real jobs (TCG here, as in
//! qemu_end_to_end) are recorded through a real agent, `armfleet repro`
//! writes their scripts, and the scripts, run with nothing of armfleet in
//! their environment against the local qemu-system-aarch64, get the same
//! number of cancelled cycles — and, for the job whose guest panicked,
//! stop in the same cycle saying what they saw.

mod common;

use std::time::Duration;

use common::*;

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

const PARAMS: &str = "cycles = 5\nmemory_mib = 256\nguest_arch = \"arm64\"\naccel = \"auto\"\n\
                      cancel_delay_ms_min = 200\ncancel_delay_ms_max = 400\nseed = 42\n";

/// Runs the script as a board would: bash, a bare environment.
async fn run_script(path: &std::path::Path) -> (Option<i32>, String) {
    let out = tokio::process::Command::new("/bin/bash")
        .arg(path)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .env("TMPDIR", path.parent().unwrap())
        .output()
        .await
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn summary_field(out: &str, key: &str) -> Option<u64> {
    let line = out.lines().find(|l| l.contains("SUMMARY "))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_job_replays_from_its_script_with_the_same_cancelled_cycles() {
    if !qemu_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "virt-01").await;
    let mut fleet = fleet_toml(
        &[("virt-01", "qemu-virt", &key.public)],
        &format!("[plan.params]\n{PARAMS}"),
    );
    fleet.push_str(&format!(
        "\n[[plan]]\nname = \"panic\"\ntype = \"migrate-cancel\"\nlabels = [\"kvm\"]\ntimeout_s = 600\n\
         [plan.params]\n{PARAMS}inject_guest_panic_after = 2\n[plan.verdict]\nmax_extensions = 0\nmax_infra_retries = 0\n"
    ));
    let server = TestServer::start(&fleet).await;
    let _agent = server.agent("virt-01", &key.path, &["--executor", "qemu"]);
    server
        .wait_board("virt-01", "idle", Duration::from_secs(30))
        .await;
    let run = server
        .trigger("c0ffee0000000000000000000000000000000016")
        .await;
    let jobs = server.get_json(&format!("/api/v1/runs/{run}")).await["jobs"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(jobs.len(), 2, "one job per plan");

    for j in &jobs {
        let id = j["id"].as_i64().unwrap();
        let plan = j["plan"].as_str().unwrap().to_owned();
        let done = server.wait_job_end(id, Duration::from_secs(300)).await;
        let recorded_cancelled = done["cycles"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["final_state"] == "cancelled")
            .count() as u64;
        if plan == "smoke" {
            assert_eq!(done["state"], "passed", "{}", done["reason"]);
            assert_eq!(recorded_cancelled, 5, "{done}");
        } else {
            assert_eq!(done["state"], "failed", "{done}");
            assert_eq!(done["failed_cycle"], 3, "{done}");
            assert_eq!(recorded_cancelled, 2, "{done}");
        }

        let script = dir.path().join(format!("repro-{id}.sh"));
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_armfleet"))
            .args(["repro", &id.to_string(), "-o"])
            .arg(&script)
            .args(["--server", &server.http])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "armfleet repro: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&script).unwrap();
        if let Some(keep) = std::env::var_os("ARMFLEET_KEEP_REPRO") {
            std::fs::copy(
                &script,
                std::path::Path::new(&keep).join(format!("repro-{plan}.sh")),
            )
            .unwrap();
        }
        assert!(text.starts_with("#!/usr/bin/env bash\n"), "{text}");
        assert!(text.contains("SEED=42"), "the job's seed: {text}");
        // The job's holds, cycle by cycle, from its records.
        for c in done["cycles"].as_array().unwrap() {
            if c["final_state"] == "cancelled" {
                let line = format!("run_cycle {} cancel {}", c["cycle"], c["delay_ms"]);
                assert!(text.contains(&line), "{line} missing:\n{text}");
            }
        }
        let html = server.get_text(&format!("/jobs/{id}")).await;
        assert!(
            html.contains(&format!("/api/v1/jobs/{id}/repro.sh")),
            "the job page offers the script"
        );

        let t0 = std::time::Instant::now();
        let (code, log) = run_script(&script).await;
        eprintln!(
            "job {id} ({plan}): script exit {code:?} after {:?}, job cancelled {recorded_cancelled}; the script said:\n{log}",
            t0.elapsed()
        );
        assert_eq!(
            summary_field(&log, "cancelled"),
            Some(recorded_cancelled),
            "the script must cancel as many cycles as the job did:\n{log}"
        );
        if plan == "smoke" {
            assert_eq!(code, Some(0), "{log}");
            assert!(log.contains("abort=no"), "{log}");
        } else {
            assert_eq!(code, Some(1), "the abort is reproduced:\n{log}");
            assert!(log.contains("ABORT in cycle 3"), "{log}");
            assert!(
                log.contains("Kernel panic - not syncing"),
                "says what it saw:\n{log}"
            );
        }
    }

    // A job that cannot be replayed says why, with its status.
    let resp = server
        .client
        .get(server.url("/api/v1/jobs/999999/repro.sh"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    server.stop().await;
}

/// A simulated job ran no QEMU: its script says so, carries the command
/// lines the executor builds from the job's parameters (KVM for a board,
/// TCG for elsewhere), and runs here under TCG with the job's cycles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_jobs_script_is_generated_from_its_parameters_says_so_and_runs() {
    let lab = Lab::replay(
        &[("sim-01", "kunpeng920")],
        &format!("[plan.params]\n{PARAMS}replay_cycle_ms = 5\n"),
    )
    .await;
    let server = &lab.server;
    let run = server
        .trigger("beef000000000000000000000000000000000016")
        .await;
    let job = server.get_json(&format!("/api/v1/runs/{run}")).await["jobs"][0]["id"]
        .as_i64()
        .unwrap();
    let done = server.wait_job_end(job, Duration::from_secs(60)).await;
    assert_eq!(done["state"], "passed", "{done}");
    // Outside the server's directory: the script runs after the server stops.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("repro-sim.sh");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_armfleet"))
        .args(["repro", &job.to_string(), "-o"])
        .arg(&script)
        .args(["--server", &server.http])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "armfleet repro: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&script).unwrap();
    assert!(text.contains("# SIMULATED JOB"), "says what it is:\n{text}");
    assert!(text.contains("SEED=42"), "the job's seed:\n{text}");
    // The family's profile reached the KVM command line (Kunpeng: GICv3,
    // 4 vCPUs from its built-in profile unless the plan says otherwise).
    assert!(text.contains("virt,gic-version=3"), "{text}");
    assert!(text.contains("-accel kvm"), "{text}");
    assert!(text.contains("-accel tcg"), "{text}");
    let html = server.get_text(&format!("/jobs/{job}")).await;
    assert!(
        html.contains(&format!("/api/v1/jobs/{job}/repro.sh")) && html.contains("simulated job"),
        "the job page offers the generated script and says it is generated"
    );
    lab.server.stop().await;

    if !qemu_ready() {
        return;
    }
    let (code, log) = run_script(&script).await;
    eprintln!("simulated job {job}: script exit {code:?}; the script said:\n{log}");
    assert!(log.contains("WARNING: no KVM/arm64 here"), "{log}");
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(summary_field(&log, "cancelled"), Some(5), "{log}");
}
