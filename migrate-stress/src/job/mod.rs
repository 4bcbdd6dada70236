//! The migrate→cancel driver.
//!
//! ## One job
//! 1. Checks (all lab problems → `InfraError`, never a kernel verdict):
//!    parameters, QEMU binary, accelerator (`kvm` needs a same-arch host
//!    with hardware KVM; `auto` picks KVM only then, else TCG, and says so on
//!    the `agent` stream), guest images, free hugepages (2× guest RAM: the
//!    source and the destination hold their RAM at the same time).
//! 2. Opens the host `/dev/kmsg` window, boots the source guest, waits for
//!    `ARMFLEET-GUEST-READY` and for the workload's first full fill
//!    (`ARMFLEET-DIRTY-READY`; zero pages would migrate for free).
//! 3. Runs the cycles.
//!
//! ## One `cancel` cycle
//! destination QEMU (`-incoming defer`, `migrate-incoming tcp:127.0.0.1:PORT`
//! on a free port) → `migrate` → poll `query-migrate` until `active` → hold
//! a seeded-random delay from `[cancel_delay_ms_min, cancel_delay_ms_max]`
//! → `query-migrate` (state, bytes, dirty rate) → `migrate_cancel` → poll
//! until `cancelled` → `query-status` and `cont` when the source was left
//! paused (trap 2; checked again if the heartbeat does not move within
//! 1 s) → wait for the guest heartbeat to advance (`guest_progress_ms`) →
//! destination killed (process group).
//!
//! The next cycle's destination is started in the background during the
//! hold (the hold itself stays exactly `delay_ms`), which hides QEMU's
//! start-up; with hugepages only when 3 × guest RAM is free.
//!
//! Fault injection: `inject_guest_panic_after = N` writes `ARMFLEET-PANIC`
//! to the guest console during cycle N+1's hold and waits for the panic, so
//! `failed_cycle == Some(N+1)` and `cycles_completed == N`.
//! [`crate::FaultHooks::pause_source_before_cancel`] stops the source right
//! before a cancel to exercise the trap-2 `cont` path.
//!
//! ## `complete_every = N`: ping-pong
//! Every Nth cycle the migration is allowed to complete (bandwidth cap
//! lifted, downtime limit raised; if it has not converged after 10 s the
//! source is paused, which forces the final stop-and-copy, and the
//! destination is resumed). The destination then *is* the guest: it becomes
//! the source of the next cycles and the old source is shut down. The guest
//! keeps running across the switch, so the dirtied working set and the
//! heartbeat counter continue. Recorded as action `pingpong`.
//! A migration that completes on its own in a `cancel` cycle (the cancel
//! came too late) is handled the same way and recorded with final state
//! `completed`.
//!
//! ## Destination trouble
//! A destination that fails to start (spawn error, dies before its QMP
//! answers, `migrate-incoming` fails) → `InfraError`. A destination that
//! dies *during* a migration makes the migration fail on the source: the
//! cycle is recorded (`final_state: failed`, an event naming the exit), the
//! source is checked to be running and making progress, and the job goes
//! on; three such cycles in a row end the job as `InfraError`.
//!
//! ## Fatal findings → `Failed`
//! A line the [`crate::FatalDetector`] flags on the guest console, QEMU
//! stderr or host dmesg; QEMU stderr `kvm run failed`; a `GUEST_PANICKED`
//! event; the source QEMU exiting; the guest making no progress after a
//! cycle. The job then waits a grace period (1.5 s) so the rest of the
//! oops/panic reaches the logs, kills everything and reports the cycle in
//! progress (`failed_cycle`; `None` when it happened while booting) with
//! the lines around the finding as evidence, and sends the interrupted
//! cycle's record with `guest_alive: false`.
//!
//! ## Hygiene
//! Every QEMU runs in its own process group with `PR_SET_PDEATHSIG`; all
//! groups are SIGKILLed and reaped when the job ends, is cancelled, times
//! out, or its future is dropped; the job's scratch directory is removed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use armfleet_protocol::{CycleRecord, JobResult, LogStream, MigrateCancelParams};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::host::{BoxStream, Host};
use crate::kmsg::{KmsgItem, KmsgReader};
use crate::logs::{LineSplitter, Logs};
use crate::probe;
use crate::proc::{QemuProc, ROLE_DEST, ROLE_RETIRED, ROLE_SOURCE, Registry};
use crate::profile::{Accel, Backing, GuestArch, Instance, VmProfile};
use crate::qmp::{Dir, Qmp, QmpError, QmpEvent, Transcript};
use crate::{FatalDetector, StressEnv, StressEvent};

mod driver;
mod host_log;
mod launcher;
mod prepare;
mod vm;

use driver::Driver;
pub(crate) use host_log::host_log_item;
use host_log::start_kmsg;
use launcher::Launcher;
use prepare::prepare;
use vm::{ConsoleStatus, Vm, console_reader, event_forwarder};

const MIB: u64 = 1024 * 1024;
const GRACE_AFTER_FINDING: Duration = Duration::from_millis(1500);
const MAX_DEST_FAILURES_IN_A_ROW: u32 = 3;

/// Something that ends the job as a kernel verdict.
#[derive(Debug, Clone)]
pub(crate) struct Finding {
    pub stream: LogStream,
    pub reason: String,
    pub line: String,
    /// Index of `line` in its stream's ring (for context).
    pub idx: Option<u64>,
    pub kind: FindingKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FindingKind {
    Line,
    GuestPanicked,
    SourceExited,
}

/// State shared by the job's tasks.
pub(crate) struct Shared {
    pub logs: Logs,
    pub detector: FatalDetector,
    pub fatal_tx: mpsc::UnboundedSender<Finding>,
    pub registry: Arc<Registry>,
    pub tasks: Mutex<Vec<JoinHandle<()>>>,
    shutting_down: AtomicBool,
}

impl Shared {
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Keeps a reader task for the final drain; forgets finished ones so a
    /// long job does not accumulate handles.
    pub fn track(&self, h: JoinHandle<()>) {
        let mut t = self.tasks.lock().unwrap();
        t.retain(|h| !h.is_finished());
        t.push(h);
    }
}

/// What the outer job needs to know about the driver's progress.
#[derive(Default)]
struct Progress {
    /// Cycle in progress (0: booting).
    current: AtomicU32,
    current_started: Mutex<Option<Instant>>,
    completed: AtomicU32,
    partial: Mutex<Option<CycleRecord>>,
}

enum Stop {
    Infra(String),
    Failed {
        reason: String,
        evidence: Vec<String>,
    },
}

/// Everything decided before the first QEMU starts.
struct Plan {
    binary: PathBuf,
    profile: VmProfile,
    boot_timeout: Duration,
    progress_timeout: Duration,
    qmp_timeout: Duration,
    /// Start each destination during the previous cycle's hold.
    prespawn: bool,
}

/// Runs one `migrate-cancel` job to its end. Never panics on lab problems;
/// all QEMUs it started are gone when it returns.
pub async fn run_migrate_cancel(
    env: &StressEnv,
    params: &MigrateCancelParams,
    events: mpsc::Sender<StressEvent>,
    cancel: CancellationToken,
) -> JobResult {
    let (logs, _log_task) = Logs::spawn(events);
    logs.agent(format!(
        "migrate-cancel job: {} cycles, {} MiB, {} vCPU, arch {}, accel {}, hugepages {}, delay {}..{} ms, bandwidth {} MiB/s, downtime {} ms, dirty {}%, complete_every {}, seed {}",
        params.cycles,
        params.memory_mib,
        params.vcpus,
        params.guest_arch,
        params.accel,
        params.hugepages,
        params.cancel_delay_ms_min,
        params.cancel_delay_ms_max,
        params.bandwidth_mib_s,
        params.downtime_limit_ms,
        params.dirty_percent,
        params.complete_every,
        params.seed
    ));
    let result = run_job(env, params, &logs, cancel).await;
    logs.agent(format!("job result: {result:?}"));
    logs.flush().await;
    result
}

/// Kills every QEMU of the job and removes its scratch dir if the job
/// future is dropped before it cleaned up.
struct Guard {
    registry: Arc<Registry>,
    shared: Arc<Shared>,
    /// Local scratch dir to remove (a board's is removed by its dead-man
    /// switch when the connection goes).
    local_dir: Option<PathBuf>,
    kmsg_stop: CancellationToken,
    armed: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.armed {
            self.shared.shutting_down.store(true, Ordering::SeqCst);
            self.registry.kill_all();
            self.kmsg_stop.cancel();
            if let Some(dir) = &self.local_dir {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

enum Outcome {
    Driver(Result<u32, Stop>),
    Cancelled,
    TimedOut,
    Fatal(Finding),
}

async fn run_job(
    env: &StressEnv,
    params: &MigrateCancelParams,
    logs: &Logs,
    cancel: CancellationToken,
) -> JobResult {
    let host = match &env.board {
        None => Host::Local,
        Some(cfg) => {
            logs.agent(format!(
                "SSH-driven board {}{}: connecting",
                cfg.addr(),
                if cfg.emulated {
                    " (emulated arm64 board)"
                } else {
                    ""
                }
            ));
            match crate::ssh_board::SshBoard::connect(cfg).await {
                Ok(b) => Host::Ssh(Arc::new(b)),
                Err(e) => {
                    let reason = e.to_string();
                    logs.agent(format!("infra error: {reason}"));
                    return JobResult::InfraError {
                        cycles_completed: 0,
                        reason,
                    };
                }
            }
        }
    };
    let mut result = run_on_host(env, params, logs, cancel, &host).await;
    if let Host::Ssh(b) = &host {
        if let JobResult::InfraError { reason, .. } = &mut result {
            if let Some(told) = b.blame_lost_link(reason) {
                logs.agent(format!("infra error: {told}"));
                *reason = told;
            }
        }
        // The board's dead-man switches fire as the connection goes.
        b.disconnect().await;
    }
    result
}

async fn run_on_host(
    env: &StressEnv,
    params: &MigrateCancelParams,
    logs: &Logs,
    cancel: CancellationToken,
    host: &Host,
) -> JobResult {
    let plan = match prepare(env, params, logs, host).await {
        Ok(p) => p,
        Err(reason) => {
            logs.agent(format!("infra error: {reason}"));
            return JobResult::InfraError {
                cycles_completed: 0,
                reason,
            };
        }
    };
    if cancel.is_cancelled() {
        return JobResult::Cancelled {
            cycles_completed: 0,
            reason: "cancelled before start".into(),
        };
    }
    let mut dir = match host.make_job_dir(&env.work_dir).await {
        Ok(d) => d,
        Err(reason) => {
            return JobResult::InfraError {
                cycles_completed: 0,
                reason,
            };
        }
    };
    logs.agent(format!("scratch dir {} on {}", dir.path, host.describe()));

    let registry = Arc::new(Registry::new(host.clone()));
    let (fatal_tx, mut fatal_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        logs: logs.clone(),
        detector: env.fatal_detector.clone(),
        fatal_tx,
        registry: registry.clone(),
        tasks: Mutex::new(vec![]),
        shutting_down: AtomicBool::new(false),
    });
    let kmsg_stop = CancellationToken::new();
    let mut guard = Guard {
        registry: registry.clone(),
        shared: shared.clone(),
        local_dir: matches!(host, Host::Local).then(|| PathBuf::from(&dir.path)),
        kmsg_stop: kmsg_stop.clone(),
        armed: true,
    };
    let kmsg_task = start_kmsg(host, &shared, kmsg_stop.clone()).await;
    // Path evidence: only KVM/arm64 runs the stage-2 code.
    let stage2 = if plan.profile.accel == Accel::Kvm && plan.profile.arch == GuestArch::Arm64 {
        let tag = dir.path.rsplit('/').next().unwrap_or("job").to_owned();
        match crate::stage2::Stage2Probes::arm(host, &dir, &tag).await {
            Ok(p) => {
                logs.agent(format!(
                    "stage-2 path probes armed: {} (the others are unknown on this kernel)",
                    p.armed.join(", ")
                ));
                Some(Arc::new(p))
            }
            Err(why) => {
                logs.agent(format!(
                    "stage-2 path tracing unavailable on {}: {why} — path counters are unknown for this job",
                    host.describe()
                ));
                None
            }
        }
    } else {
        logs.agent("stage-2 path counters: not applicable (the guests do not run under KVM/arm64)");
        None
    };
    let progress = Arc::new(Progress::default());

    let driver = Driver {
        params: params.clone(),
        plan: &plan,
        shared: shared.clone(),
        progress: progress.clone(),
        delays: params.delay_schedule(),
        vm_counter: 0,
        dest_failures_in_a_row: 0,
        prespawn: plan.prespawn,
        next_dest: None,
        hooks: env.fault_hooks.clone(),
        host: host.clone(),
        stage2: stage2.clone(),
        after_cancel: None,
        launcher: Launcher {
            binary: plan.binary.clone(),
            profile: plan.profile.clone(),
            qmp_timeout: plan.qmp_timeout,
            shared: shared.clone(),
            host: host.clone(),
            dir: Arc::new(dir.path.clone()),
            bandwidth_mib_s: params.bandwidth_mib_s,
            downtime_limit_ms: params.downtime_limit_ms,
        },
    };
    let timeout = env
        .job_timeout
        .unwrap_or(Duration::from_secs(365 * 24 * 3600));
    let driver_run = driver.run();
    tokio::pin!(driver_run);
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let outcome = loop {
        tokio::select! {
            r = &mut driver_run => break Outcome::Driver(r),
            _ = cancel.cancelled() => break Outcome::Cancelled,
            Some(f) = fatal_rx.recv() => {
                if !concerns_this_job(&shared, host, &f).await {
                    continue;
                }
                break Outcome::Fatal(f);
            }
            _ = &mut deadline => break Outcome::TimedOut,
        }
    };
    // The driver future is gone here; its QEMUs are still running (killing
    // is explicit, below) so a panic can finish printing.

    // A driver error may be the consequence of a finding still in flight
    // (e.g. QMP closed because the source died): prefer the finding.
    let outcome = match outcome {
        Outcome::Driver(Err(Stop::Infra(reason))) => {
            match tokio::time::timeout(Duration::from_millis(700), fatal_rx.recv()).await {
                Ok(Some(f)) if concerns_this_job(&shared, host, &f).await => {
                    logs.agent(format!(
                        "driver stopped ({reason}); a fatal finding explains it"
                    ));
                    Outcome::Fatal(f)
                }
                _ => Outcome::Driver(Err(Stop::Infra(reason))),
            }
        }
        o => o,
    };

    let mut findings = vec![];
    if let Outcome::Fatal(f) = &outcome {
        logs.agent(format!("FATAL: {} — {}", f.reason, f.line));
        findings.push(f.clone());
        let deadline = tokio::time::Instant::now() + GRACE_AFTER_FINDING;
        loop {
            tokio::select! {
                Some(f) = fatal_rx.recv() => findings.push(f),
                _ = tokio::time::sleep_until(deadline) => break,
                _ = cancel.cancelled() => break,
            }
        }
    }

    // Teardown.
    shared.shutting_down.store(true, Ordering::SeqCst);
    registry.kill_all();
    if !registry.wait_empty(Duration::from_secs(10)).await {
        logs.agent(format!(
            "WARNING: QEMU processes not reaped after SIGKILL: {:?}",
            registry.live()
        ));
    }
    let tasks: Vec<_> = std::mem::take(&mut *shared.tasks.lock().unwrap());
    for t in tasks {
        let abort = t.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), t)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    if let Some(p) = &stage2 {
        p.disarm(host).await;
    }
    kmsg_stop.cancel();
    if let Some(t) = kmsg_task {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    while let Ok(f) = fatal_rx.try_recv() {
        if matches!(outcome, Outcome::Fatal(_)) {
            findings.push(f);
        }
    }
    if let Err(e) = host.remove_job_dir(&mut dir).await {
        logs.agent(format!("WARNING: {e}"));
    }
    guard.armed = false;

    let completed = progress.completed.load(Ordering::SeqCst);
    let current = progress.current.load(Ordering::SeqCst);
    let started = *progress.current_started.lock().unwrap();
    // The record of the cycle a fatal finding interrupted.
    let partial = progress.partial.lock().unwrap().take().map(|mut r| {
        if r.final_state.is_empty() {
            r.final_state = "interrupted".into();
        }
        r.wall_ms = started.map(|t| ms(t.elapsed())).unwrap_or(0.0);
        r
    });
    match outcome {
        Outcome::Driver(Ok(n)) => JobResult::Passed {
            cycles_completed: n,
        },
        Outcome::Driver(Err(Stop::Infra(reason))) => {
            logs.agent(format!("infra error: {reason}"));
            JobResult::InfraError {
                cycles_completed: completed,
                reason,
            }
        }
        Outcome::Driver(Err(Stop::Failed { reason, evidence })) => {
            if let Some(mut rec) = partial {
                rec.guest_alive = false;
                rec.events.push(format!("fatal: {reason}"));
                logs.cycle(rec);
            }
            JobResult::Failed {
                cycles_completed: completed,
                failed_cycle: (current > 0).then_some(current),
                reason,
                evidence,
            }
        }
        Outcome::Cancelled => JobResult::Cancelled {
            cycles_completed: completed,
            reason: "cancelled by the agent".into(),
        },
        Outcome::TimedOut => JobResult::TimedOut {
            cycles_completed: completed,
        },
        Outcome::Fatal(_) => {
            let (reason, evidence) = judge(&findings, logs);
            if let Some(mut rec) = partial {
                rec.guest_alive = false;
                rec.events.push(format!("fatal: {reason}"));
                logs.cycle(rec);
            }
            JobResult::Failed {
                cycles_completed: completed,
                failed_cycle: (current > 0).then_some(current),
                reason,
                evidence,
            }
        }
    }
}

/// Whether a fatal finding is this job's: a host kernel message that names
/// a thread of no QEMU of this job (another job's, on a board running
/// several) is recorded in the host log but fails someone else.
async fn concerns_this_job(shared: &Shared, host: &Host, f: &Finding) -> bool {
    use crate::attribution::{Implicates, implicates, named_thread, threads_of};
    if f.stream != LogStream::HostDmesg {
        return true;
    }
    let mut named = named_thread(std::slice::from_ref(&f.line));
    if named.is_none() {
        if let Some(idx) = f.idx {
            // An oops names its thread on the header lines that follow.
            tokio::time::sleep(Duration::from_millis(300) * host.slowdown()).await;
            named = named_thread(&shared.logs.rings.range(LogStream::HostDmesg, idx, idx + 40));
        }
    }
    if named.is_none() {
        return true;
    }
    let ours = threads_of(host, &shared.registry.live()).await;
    match implicates(named, ours.as_ref()) {
        Implicates::ThisJob => true,
        Implicates::Other(tid) => {
            shared.logs.agent(format!(
                "host kernel message names thread {tid}, which belongs to none of this job's QEMU processes: kept in the host log, not this job's failure — {}",
                f.line.trim()
            ));
            false
        }
    }
}

/// Picks the finding that explains the failure and gathers its evidence.
fn judge(findings: &[Finding], logs: &Logs) -> (String, Vec<String>) {
    let primary = findings
        .iter()
        .find(|f| f.kind == FindingKind::Line)
        .or_else(|| {
            findings
                .iter()
                .find(|f| f.kind == FindingKind::GuestPanicked)
        })
        .or_else(|| findings.first())
        .expect("at least one finding");
    let reason = format!("{} — {}", primary.reason, primary.line.trim());
    let mut ev = vec![];
    match (primary.kind, primary.idx) {
        (FindingKind::Line, Some(idx)) => {
            // Context before the finding (heartbeats are noise), the finding,
            // and what followed it (the rest of an oops/panic).
            let before: Vec<String> = logs
                .rings
                .range(
                    primary.stream,
                    idx.saturating_sub(60),
                    idx.saturating_sub(1),
                )
                .into_iter()
                .filter(|l| !l.contains("ARMFLEET-HB "))
                .collect();
            ev.extend(before[before.len().saturating_sub(12)..].iter().cloned());
            ev.extend(logs.rings.range(primary.stream, idx, idx + 80));
        }
        _ => {
            ev.push(primary.line.clone());
            ev.extend(logs.rings.tail(LogStream::GuestConsole, 40));
            ev.extend(
                logs.rings
                    .tail(LogStream::QemuStderr, 10)
                    .into_iter()
                    .map(|l| format!("[qemu_stderr] {l}")),
            );
        }
    }
    for f in findings {
        if std::ptr::eq(f, primary) {
            continue;
        }
        let l = format!("[{}] {}", f.stream.as_str(), f.line);
        if !ev.contains(&f.line) && !ev.contains(&l) && ev.len() < 120 {
            ev.push(l);
        }
    }
    (reason, ev)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn status_of(v: &Value) -> String {
    v.get("status")
        .and_then(Value::as_str)
        .unwrap_or("none")
        .to_string()
}

/// A driver note in a cycle record: `+<seconds since job start>s text`,
/// the same clock as the QMP event entries.
fn note(shared: &Shared, rec: &mut CycleRecord, text: impl AsRef<str>) {
    rec.events
        .push(format!("+{:.3}s {}", shared.logs.rel(), text.as_ref()));
}

/// Orders entries by their `+<seconds>s` prefix (stable for equal times).
fn sort_events(ev: &mut [String]) {
    let key = |e: &String| -> f64 {
        e.strip_prefix('+')
            .and_then(|r| r.split('s').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::MAX)
    };
    ev.sort_by(|a, b| {
        key(a)
            .partial_cmp(&key(b))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
}

fn is_in_progress(s: &str) -> bool {
    matches!(
        s,
        "active" | "setup" | "pre-switchover" | "device" | "postcopy-active" | "wait-unplug"
    )
}
