//! 200 simulated agents, 2,000 jobs, against a real `armfleet serve`
//! process over real SSH: every job acknowledged exactly once, every job
//! passed, every log byte stored.

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `armfleet`, built by `cargo test --workspace` into the same target dir.
fn server_bin() -> PathBuf {
    let me = std::env::current_exe().expect("current exe");
    // target/debug/deps/correctness-… → target/debug/armfleet
    let path = me
        .parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join("armfleet");
    assert!(
        path.is_file(),
        "{} is not built: run the tests with `cargo test --workspace` (which builds the server binary), \
         or `cargo build -p armfleet-server` first",
        path.display()
    );
    path
}

#[test]
fn two_hundred_agents_on_two_servers_two_thousand_jobs_every_job_once_passed_and_every_log_byte_stored()
 {
    let server = server_bin();
    let started = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_armfleet-loadgen"))
        .args(["serve-and-run", "--agents", "200", "--jobs", "2000"])
        // Two servers on one database: agents are split over them and
        // every run is posted to the first.
        .args(["--servers", "2"])
        .args([
            "--plan-cycles",
            "2",
            "--log-bytes-per-job",
            "6000",
            "--chunk-bytes",
            "2048",
        ])
        // The server's default heartbeat settings (2 s, deadline 10 s); see BENCHMARKS.md
        // for what happens at 1 s / 5 s.
        .args([
            "--heartbeat-ms",
            "2000",
            "--heartbeat-deadline-ms",
            "10000",
            "--timeout-s",
            "300",
            "--json",
        ])
        .arg("--server-bin")
        .arg(&server)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting armfleet-loadgen");
    let out = {
        use std::io::Read;
        let mut s = String::new();
        child
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut s)
            .expect("reading the report");
        s
    };
    let status = child.wait().expect("loadgen exits");
    let wall = started.elapsed();
    println!("{out}");
    println!("wall time: {:.1} s", wall.as_secs_f64());
    let report: serde_json::Value = out
        .lines()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON report in the output (exit {status}):\n{out}"));
    assert!(
        status.success(),
        "loadgen reported a failure (exit {status}):\n{out}"
    );
    assert_eq!(report["agents_connected"], 200, "{report}");
    assert_eq!(report["jobs"], 2000, "{report}");
    assert_eq!(
        report["acked_once"], 2000,
        "every job acknowledged exactly once: {report}"
    );
    assert_eq!(report["passed"], 2000, "every job passed: {report}");
    assert_eq!(report["errors"], 0, "{report}");
    let sent = report["log_bytes_sent"].as_u64().unwrap();
    assert_eq!(sent, 2000 * 6000, "{report}");
    assert_eq!(
        report["log_bytes_stored"].as_u64().unwrap(),
        sent,
        "every log byte stored: {report}"
    );
    assert_eq!(report["server_stopped_cleanly"], true, "{report}");
    assert_eq!(report["servers"], 2, "{report}");
    assert!(
        out.lines()
            .last()
            .unwrap_or_default()
            .starts_with("loadgen: agents=200 jobs=2000 acked_once=2000")
    );
    assert!(wall < Duration::from_secs(300), "took {wall:?}");
}
