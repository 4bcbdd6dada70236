//! The replay executor: a simulated board.
//!
//! It walks through the same cycle structure as the QEMU executor but
//! replays recorded guest console, QMP and host kernel log lines instead of
//! running a guest. For kernels the plan marks buggy it draws, cycle by
//! cycle, whether the guest takes the recorded TLB conflict abort. Every
//! stream it produces says it is simulated, and the board reports the
//! `replay` executor so the server labels its results.

use std::sync::Arc;
use std::time::{Duration, Instant};

use armfleet_migrate_stress::{FatalDetector, StressEvent};
use armfleet_protocol::{CycleRecord, JobResult, JobSpec, LogStream, MigrateCancelParams};
use rand::{RngExt, SeedableRng};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const GUEST_BOOT: &str = include_str!("../replay/guest-boot.log");
const GUEST_TLB_CONFLICT: &str = include_str!("../replay/guest-tlb-conflict.log");

/// The agent's fatal-line detector: the triage crate's, for every executor.
pub fn fatal_detector() -> FatalDetector {
    Arc::new(|stream: LogStream, line: &str| {
        if matches!(stream, LogStream::Qmp | LogStream::Agent) {
            return None;
        }
        armfleet_triage::first_fatal_line(line).then(|| line.trim().to_owned())
    })
}

fn seed_for(spec: &JobSpec, params: &MigrateCancelParams, board: &str) -> u64 {
    // Reproducible per (kernel, plan, board, seed), different across them.
    let mut h: u64 = 0xcbf29ce484222325 ^ params.seed;
    for b in spec
        .kernel
        .commit
        .bytes()
        .chain(spec.plan.bytes())
        .chain(board.bytes())
    {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    h
}

pub async fn run(
    board: &str,
    spec: &JobSpec,
    params: &MigrateCancelParams,
    events: mpsc::Sender<StressEvent>,
    cancel: CancellationToken,
) -> JobResult {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed_for(spec, params, board));
    let started = Instant::now();
    let log = |stream: LogStream, text: String| StressEvent::Log {
        stream,
        data: text.into_bytes(),
    };
    let stamp = |t: Instant| format!("{:>8.6}", t.duration_since(started).as_secs_f64() + 0.42);

    let _ = events
        .send(log(LogStream::GuestConsole, GUEST_BOOT.to_owned()))
        .await;
    let _ = events
        .send(log(LogStream::HostDmesg, format!(
            "[{}] armfleet replay: simulated host kernel log window for job (no real /dev/kmsg)\n",
            stamp(Instant::now())
        )))
        .await;
    let detector = fatal_detector();
    let mut heartbeat = 0u64;
    let cycle_time = Duration::from_millis(params.replay_cycle_ms.max(1));
    for cycle in 1..=params.cycles {
        let cycle_start = Instant::now();
        let delay = if params.cancel_delay_ms_max > params.cancel_delay_ms_min {
            rng.random_range(params.cancel_delay_ms_min..=params.cancel_delay_ms_max)
        } else {
            params.cancel_delay_ms_min
        };
        tokio::select! {
            _ = tokio::time::sleep(cycle_time) => {}
            _ = cancel.cancelled() => {
                return JobResult::Cancelled { cycles_completed: cycle - 1, reason: "cancelled".into() };
            }
        }
        let bytes = (delay * params.bandwidth_mib_s * 1024 * 1024 / 1000)
            .min(params.memory_mib as u64 * 1024 * 1024);
        let qmp = format!(
            "-> {{\"execute\": \"migrate\", \"arguments\": {{\"uri\": \"tcp:127.0.0.1:4{cycle:04}\"}}, \"id\": {}}}\n\
             <- {{\"return\": {{}}, \"id\": {}}}\n\
             <- {{\"event\": \"MIGRATION\", \"data\": {{\"status\": \"active\"}}}}\n\
             -> {{\"execute\": \"migrate_cancel\", \"id\": {}}}\n\
             <- {{\"event\": \"MIGRATION\", \"data\": {{\"status\": \"cancelled\"}}}}\n",
            cycle * 3,
            cycle * 3,
            cycle * 3 + 1
        );
        let _ = events.send(log(LogStream::Qmp, qmp)).await;
        let mut console = String::new();
        for _ in 0..3 {
            heartbeat += 1;
            console.push_str(&format!("ARMFLEET-HB {heartbeat}\n"));
        }
        let aborted = params.replay_abort_probability > 0.0
            && rng.random_bool(params.replay_abort_probability.min(1.0));
        if aborted {
            let t = stamp(Instant::now());
            console.push_str(&GUEST_TLB_CONFLICT.replace("{T}", &t));
        }
        let _ = events
            .send(log(LogStream::GuestConsole, console.clone()))
            .await;
        let _ = events
            .send(log(
                LogStream::HostDmesg,
                format!(
                    "[{}] kvm [4{:03}]: dirty logging {} for memslot 0 (simulated)\n",
                    stamp(Instant::now()),
                    cycle % 1000,
                    if aborted {
                        "stopped"
                    } else {
                        "stopped; blocks re-installed on fault"
                    }
                ),
            ))
            .await;
        let evidence: Vec<String> = console
            .lines()
            .filter(|l| detector(LogStream::GuestConsole, l).is_some())
            .map(str::to_owned)
            .collect();
        let record = CycleRecord {
            cycle,
            action: "cancel".into(),
            delay_ms: delay,
            state_reached: "active".into(),
            final_state: "cancelled".into(),
            bytes_transferred: bytes,
            dirty_pages_rate: Some(rng.random_range(9_000..14_000)),
            cancel_to_cancelled_ms: Some(rng.random_range(4.0..16.0)),
            guest_progress_ms: (!aborted).then(|| rng.random_range(20.0..120.0)),
            guest_alive: !aborted,
            resumed_paused_source: false,
            events: vec!["simulated".into()],
            wall_ms: cycle_start.elapsed().as_secs_f64() * 1000.0,
            // Replayed logs exercise no stage-2 code: no path evidence.
            path: None,
        };
        let _ = events.send(StressEvent::Cycle(record)).await;
        if aborted {
            let mut evidence = evidence;
            if evidence.is_empty() {
                evidence.push("Unable to handle kernel TLB conflict abort".into());
            }
            let abort_lines: Vec<String> = console
                .lines()
                .filter(|l| l.contains("TLB conflict") || l.contains("ESR =") || l.contains("pc :"))
                .map(str::to_owned)
                .collect();
            for l in abort_lines {
                if !evidence.contains(&l) {
                    evidence.push(l);
                }
            }
            return JobResult::Failed {
                cycles_completed: cycle - 1,
                failed_cycle: Some(cycle),
                reason: format!("guest took a TLB conflict abort in cycle {cycle} (simulated)"),
                evidence,
            };
        }
    }
    JobResult::Passed {
        cycles_completed: params.cycles,
    }
}
