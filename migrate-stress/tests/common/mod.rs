//! Helpers for the real-QEMU tests.
//!
//! Missing QEMU or guest images: the test prints a LOUD skip message and
//! returns — unless `ARMFLEET_REQUIRE_QEMU=1`, then it fails.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use armfleet_migrate_stress::{StressEnv, StressEvent, run_migrate_cancel};
use armfleet_protocol::{CycleRecord, JobResult, LogStream, MigrateCancelParams};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The tests boot TCG guests; on a 2-core machine they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn required() -> bool {
    std::env::var("ARMFLEET_REQUIRE_QEMU")
        .map(|v| v == "1")
        .unwrap_or(false)
}

/// Skip (loudly) or fail, depending on `ARMFLEET_REQUIRE_QEMU`.
pub fn skip_or_fail(why: &str) {
    if required() {
        panic!("ARMFLEET_REQUIRE_QEMU=1 and {why}");
    }
    eprintln!("\n**********************************************************************");
    eprintln!("SKIPPED (not passing): {why} — run scripts/test as root");
    eprintln!("**********************************************************************\n");
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// A `StressEnv` for `arch` (`arm64` / `x86_64`), or `None` after a skip
/// message when QEMU or the guest is missing.
pub fn env_for(arch: &str, test: &str) -> Option<StressEnv> {
    let qarch = if arch == "arm64" { "aarch64" } else { "x86_64" };
    let bin = format!("qemu-system-{qarch}");
    if armfleet_migrate_stress::probe::find_qemu(qarch).is_none() {
        skip_or_fail(&format!("{bin} not installed"));
        return None;
    }
    let guest_dir = StressEnv::default_guest_dir();
    for f in ["vmlinuz", "initrd.gz"] {
        let p = guest_dir.join(arch).join(f);
        if !p.is_file() {
            skip_or_fail(&format!(
                "guest image {} missing (agent/guest/build.sh {arch})",
                p.display()
            ));
            return None;
        }
    }
    Some(StressEnv::new(guest_dir, work_dir(test)))
}

pub fn work_dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("afms-{test}"));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Small, fast TCG defaults.
pub fn tcg_params(arch: &str, cycles: u32) -> MigrateCancelParams {
    MigrateCancelParams {
        cycles,
        memory_mib: 256,
        vcpus: 1,
        guest_arch: arch.into(),
        accel: "tcg".into(),
        cancel_delay_ms_min: 200,
        cancel_delay_ms_max: 400,
        bandwidth_mib_s: 64,
        downtime_limit_ms: 1,
        dirty_percent: 40,
        seed: 7,
        ..Default::default()
    }
}

#[derive(Default, Debug)]
pub struct Collected {
    pub console: String,
    pub qmp: String,
    pub dmesg: String,
    pub stderr: String,
    pub agent: String,
    pub cycles: Vec<CycleRecord>,
    pub max_chunk: usize,
    pub environment: Option<armfleet_migrate_stress::RunEnvironment>,
}

impl Collected {
    pub fn dump(&self) -> String {
        format!(
            "--- agent ---\n{}\n--- stderr ---\n{}\n--- console (tail) ---\n{}\n--- cycles ---\n{:#?}",
            self.agent,
            self.stderr,
            tail(&self.console, 40),
            self.cycles
        )
    }
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<_> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs a job, collecting every event. `on_event` may cancel.
pub async fn run_job(
    env: &StressEnv,
    params: &MigrateCancelParams,
    cancel: CancellationToken,
) -> (JobResult, Collected) {
    let (tx, mut rx) = mpsc::channel(256);
    let collector = tokio::spawn(async move {
        let mut c = Collected::default();
        while let Some(ev) = rx.recv().await {
            match ev {
                StressEvent::Log { stream, data } => {
                    c.max_chunk = c.max_chunk.max(data.len());
                    let s = String::from_utf8_lossy(&data);
                    match stream {
                        LogStream::GuestConsole => c.console.push_str(&s),
                        LogStream::Qmp => c.qmp.push_str(&s),
                        LogStream::HostDmesg => c.dmesg.push_str(&s),
                        LogStream::QemuStderr => c.stderr.push_str(&s),
                        LogStream::Agent => c.agent.push_str(&s),
                    }
                }
                StressEvent::Cycle(r) => c.cycles.push(r),
                StressEvent::Environment(e) => c.environment = Some(e),
            }
        }
        c
    });
    let r = run_migrate_cancel(env, params, tx, cancel).await;
    let c = tokio::time::timeout(Duration::from_secs(10), collector)
        .await
        .expect("event channel closed")
        .unwrap();
    (r, c)
}

/// PIDs of processes whose command line mentions `needle`.
pub fn procs_mentioning(needle: &str) -> Vec<(u32, String)> {
    let mut out = vec![];
    let me = std::process::id();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) {
            out.push((pid, cmd));
        }
    }
    out
}

/// Reserves `extra` 2 MiB hugepages on top of what is there; restores the
/// old `nr_hugepages` on drop (also when the test fails).
pub struct HugepageGuard {
    old: u64,
}

const NR: &str = "/proc/sys/vm/nr_hugepages";

impl HugepageGuard {
    pub fn reserve(extra: u64) -> Result<HugepageGuard, String> {
        let old: u64 = std::fs::read_to_string(NR)
            .map_err(|e| e.to_string())?
            .trim()
            .parse()
            .unwrap_or(0);
        let free = armfleet_migrate_stress::probe::free_2m_hugepages();
        let want = old + extra.saturating_sub(free);
        std::fs::write(NR, want.to_string()).map_err(|e| format!("write {NR}: {e}"))?;
        let g = HugepageGuard { old };
        let got = armfleet_migrate_stress::probe::free_2m_hugepages();
        if got < extra {
            return Err(format!(
                "asked for {extra} free hugepages, kernel gave {got}"
            ));
        }
        Ok(g)
    }
}

impl Drop for HugepageGuard {
    fn drop(&mut self) {
        let _ = std::fs::write(NR, self.old.to_string());
    }
}

pub fn dir_is_empty(p: &Path) -> bool {
    std::fs::read_dir(p)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}
