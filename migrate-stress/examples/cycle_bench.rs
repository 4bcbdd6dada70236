//! Measures migrate→cancel cycle throughput and the executor's overhead.
//!
//!   cargo run --release -p armfleet-migrate-stress --example cycle_bench -- \
//!       [--arch arm64] [--cycles 30] [--memory 256] [--delay-min 300] [--delay-max 700] \
//!       [--accel auto] [--hugepages] [--dump DIR] [--ssh-board BOARD.toml]
//!
//! `--ssh-board` runs the guests on an SSH-driven board (e.g. the virtual
//! arm64 board); the file holds the fields of agent.toml's `[ssh_board]`
//! (host, port, user, host_key, key, emulated). The controller's own CPU
//! time is printed at the end.
//!
//! Definitions (per cancel cycle, from the CycleRecords):
//!
//! - wall: the whole cycle as the executor saw it.
//! - qemu work: hold delay + cancel→cancelled (the dirty-logging window we
//!   ask for, and QEMU's own cancel).
//! - overhead: wall − qemu work, i.e. everything the executor adds on top:
//!   migrate-incoming/migrate, setup→active polling, stats queries,
//!   query-status, destination teardown, waiting for the next guest heartbeat
//!   (`guest_progress_ms`, reported separately; bounded by the 100 ms
//!   heartbeat period), and destination start-up when it was not pre-started.
//! - Destinations are pre-started during the previous cycle's hold (with
//!   hugepages only when 3 × guest RAM is free), so their start-up
//!   (spawn → QMP ready, reported separately) is mostly hidden.
//!
//! `--dump DIR` writes each log stream to DIR/<stream>.log and the records
//! to DIR/cycles.json.

use std::collections::BTreeMap;
use std::time::Instant;

use armfleet_migrate_stress::{StressEnv, StressEvent, run_migrate_cancel};
use armfleet_protocol::{LogStream, MigrateCancelParams};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn stats(name: &str, v: &[f64]) {
    if v.is_empty() {
        println!("  {name:<28} n/a");
        return;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mean = s.iter().sum::<f64>() / s.len() as f64;
    let p = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
    println!(
        "  {name:<28} mean {mean:8.1} ms   p50 {:8.1}   p90 {:8.1}   min {:8.1}   max {:8.1}",
        p(0.5),
        p(0.9),
        s[0],
        s[s.len() - 1]
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut params = MigrateCancelParams {
        cycles: 30,
        memory_mib: 256,
        ..Default::default()
    };
    let mut dump: Option<std::path::PathBuf> = None;
    let mut board = None;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let val = || args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--arch" => params.guest_arch = val(),
            "--cycles" => params.cycles = val().parse().unwrap(),
            "--memory" => params.memory_mib = val().parse().unwrap(),
            "--delay-min" => params.cancel_delay_ms_min = val().parse().unwrap(),
            "--delay-max" => params.cancel_delay_ms_max = val().parse().unwrap(),
            "--accel" => params.accel = val(),
            "--bandwidth" => params.bandwidth_mib_s = val().parse().unwrap(),
            "--dirty" => params.dirty_percent = val().parse().unwrap(),
            "--complete-every" => params.complete_every = val().parse().unwrap(),
            "--vcpus" => params.vcpus = val().parse().unwrap(),
            "--threads" => params.dirty_threads = val().parse().unwrap(),
            "--dwell" => params.dwell_after_cancel_ms = val().parse().unwrap(),
            "--backing" => {
                params.memory_backing = Some(
                    armfleet_protocol::MemoryBacking::parse(&val())
                        .expect("--backing block|hugetlb|thp|pages"),
                )
            }
            "--verify" => params.verify = val().parse().unwrap(),
            "--dirty-ring" => params.dirty_ring_size = Some(val().parse().unwrap()),
            "--dump" => dump = Some(val().into()),
            "--ssh-board" => {
                let text = std::fs::read_to_string(val()).expect("reading the board file");
                board = Some(
                    toml::from_str::<armfleet_migrate_stress::ssh_board::SshBoardConfig>(&text)
                        .expect("a valid [ssh_board] table"),
                );
            }
            "--hugepages" => {
                params.hugepages = true;
                i += 1;
                continue;
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    let mut env = StressEnv::new(
        StressEnv::default_guest_dir(),
        std::env::temp_dir().join("afms-bench"),
    );
    env.board = board;
    let (tx, mut rx) = mpsc::channel(256);
    let collector = tokio::spawn(async move {
        let mut logs: BTreeMap<LogStream, Vec<u8>> = BTreeMap::new();
        let mut recs = vec![];
        while let Some(ev) = rx.recv().await {
            match ev {
                StressEvent::Log { stream, data } => logs.entry(stream).or_default().extend(data),
                StressEvent::Cycle(r) => {
                    println!(
                        "cycle {:>3} {:<8} delay {:>4} ms  {:<9} {:>4} MiB  cancel {:>6}  progress {:>6}  wall {:>6.0} ms{}",
                        r.cycle,
                        r.action,
                        r.delay_ms,
                        r.final_state,
                        r.bytes_transferred >> 20,
                        r.cancel_to_cancelled_ms
                            .map(|v| format!("{v:.1}"))
                            .unwrap_or("-".into()),
                        r.guest_progress_ms
                            .map(|v| format!("{v:.0}"))
                            .unwrap_or("-".into()),
                        r.wall_ms,
                        if r.resumed_paused_source {
                            "  RESUMED"
                        } else {
                            ""
                        }
                    );
                    recs.push(r);
                }
                StressEvent::Environment(e) => {
                    println!(
                        "environment: {} host, accel {}, {}",
                        e.host.as_str(),
                        e.accel,
                        e.detail
                    )
                }
            }
        }
        (logs, recs)
    });
    let t0 = Instant::now();
    let result = run_migrate_cancel(&env, &params, tx, CancellationToken::new()).await;
    let total = t0.elapsed();
    let (logs, recs) = collector.await.unwrap();
    let agent = String::from_utf8_lossy(logs.get(&LogStream::Agent).map(|v| &v[..]).unwrap_or(b""))
        .to_string();

    // "vmN: guest ready ... after X ms" and "vmN: pid P, QMP ready after Y ms"
    let mut boot_ms = None;
    let mut dest_start = vec![];
    for l in agent.lines() {
        if let Some(p) = l.find("guest ready, workload filled, after ") {
            boot_ms = l[p + 36..]
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok());
        }
        if let Some(p) = l.find("QMP ready after ")
            && !l.contains(" vm1:")
            && let Some(v) = l[p + 16..]
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
        {
            dest_start.push(v);
        }
    }

    println!("\nresult: {result:?}");
    let accel = agent
        .lines()
        .find(|l| l.contains("profile:"))
        .unwrap_or("")
        .to_string();
    println!("{}", accel.trim());
    let cycles_time: f64 = recs.iter().map(|r| r.wall_ms).sum();
    println!(
        "total {:.1} s (boot + fill {:.1} s, {} cycles {:.1} s)",
        total.as_secs_f64(),
        boot_ms.unwrap_or(0.0) / 1000.0,
        recs.len(),
        cycles_time / 1000.0
    );
    if !recs.is_empty() {
        println!(
            "cycles per minute (cycle loop only): {:.1}",
            recs.len() as f64 * 60_000.0 / cycles_time
        );
        println!(
            "cycles per minute (whole job):       {:.1}",
            recs.len() as f64 * 60.0 / total.as_secs_f64()
        );
    }
    let cancel: Vec<_> = recs.iter().filter(|r| r.action == "cancel").collect();
    let wall: Vec<f64> = cancel.iter().map(|r| r.wall_ms).collect();
    let delay: Vec<f64> = cancel.iter().map(|r| r.delay_ms as f64).collect();
    let c2c: Vec<f64> = cancel
        .iter()
        .filter_map(|r| r.cancel_to_cancelled_ms)
        .collect();
    let overhead: Vec<f64> = cancel
        .iter()
        .map(|r| r.wall_ms - r.delay_ms as f64 - r.cancel_to_cancelled_ms.unwrap_or(0.0))
        .collect();
    let progress: Vec<f64> = cancel.iter().filter_map(|r| r.guest_progress_ms).collect();
    let rest: Vec<f64> = overhead
        .iter()
        .zip(cancel.iter())
        .map(|(o, r)| o - r.guest_progress_ms.unwrap_or(0.0))
        .collect();
    println!("per cancel cycle:");
    stats("wall", &wall);
    stats("hold delay", &delay);
    stats("cancel->cancelled", &c2c);
    stats("OVERHEAD (wall-delay-c2c)", &overhead);
    stats("  of which heartbeat wait", &progress);
    stats("  of which the rest", &rest);
    stats("dest QEMU spawn->QMP ready", &dest_start);
    println!(
        "  (destinations are pre-started during the previous hold unless --hugepages; then their start is in 'the rest')"
    );
    let total_overhead: f64 = overhead.iter().sum();
    if !wall.is_empty() {
        println!(
            "overhead share of cycle time: {:.1} %",
            100.0 * total_overhead / wall.iter().sum::<f64>()
        );
    }
    // Stage-2 path evidence (KVM/arm64 hosts with kprobes).
    let sum = |f: &dyn Fn(&armfleet_protocol::PathCounters) -> Option<u64>| -> Option<u64> {
        recs.iter()
            .map(|r| r.path.as_ref().and_then(f))
            .sum::<Option<u64>>()
    };
    match sum(&|p| p.page_maps) {
        Some(pages) => {
            let minutes = total.as_secs_f64() / 60.0;
            let after = sum(&|p| p.block_maps_after_cancel).unwrap_or(0);
            println!(
                "stage-2 path: {pages} page maps, {} block maps, {after} block maps after the cancel ({:.1} per board-minute, {:.2} per cycle), {} permission faults",
                sum(&|p| p.block_maps).unwrap_or(0),
                after as f64 / minutes,
                after as f64 / recs.len().max(1) as f64,
                sum(&|p| p.perm_faults)
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "unknown".into())
            );
        }
        None => println!("stage-2 path: not traced (no KVM/arm64, or no kprobes on this host)"),
    }
    // This process is the controller: its CPU over the job.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let cpu = usage.ru_utime.tv_sec as f64
        + usage.ru_utime.tv_usec as f64 / 1e6
        + usage.ru_stime.tv_sec as f64
        + usage.ru_stime.tv_usec as f64 / 1e6;
    println!(
        "controller CPU (this process, incl. local QEMU children: no): {cpu:.2} s over {:.1} s = {:.1} % of one core",
        total.as_secs_f64(),
        100.0 * cpu / total.as_secs_f64()
    );

    if let Some(dir) = dump {
        std::fs::create_dir_all(&dir).unwrap();
        for (s, data) in &logs {
            std::fs::write(dir.join(format!("{}.log", s.as_str())), data).unwrap();
        }
        std::fs::write(
            dir.join("cycles.json"),
            serde_json::to_string_pretty(&recs).unwrap(),
        )
        .unwrap();
        println!("logs written to {}", dir.display());
    }
}
