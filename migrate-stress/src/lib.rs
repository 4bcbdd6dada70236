//! QEMU migrate→cancel stress executor.
//!
//! Drives a guest through many live-migration-then-cancel cycles over QMP
//! while a workload inside the guest keeps memory dirty, which is what makes
//! KVM/arm64 split stage-2 block mappings (dirty logging) and rebuild them
//! after the cancel. The host side of a run produces:
//!
//! * one [`CycleRecord`] per cycle ([`StressEvent::Cycle`]),
//! * log chunks ([`StressEvent::Log`]) on the streams `guest_console`,
//!   `qemu_stderr`, `qmp` (a timestamped transcript of both directions),
//!   `host_dmesg` (the host `/dev/kmsg` window since job start) and `agent`
//!   (what the executor decided and why),
//! * a [`JobResult`] that separates kernel verdicts (`Failed`) from lab
//!   problems (`InfraError`).
//!
//! The guest is built by `agent/guest/build.sh` (see [`StressEnv::guest_dir`]).
//! Modules: [`qmp`] (async QMP client), [`profile`] (QEMU argument vectors),
//! [`probe`] (host capabilities), [`kmsg`] (host kernel log window),
//! [`job`] (the cycle driver).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use armfleet_protocol::{
    CycleRecord, HostKind, HugepageInfo, JobResult, KvmStatus, LogStream, MigrateCancelParams,
    QemuBinary, RunEnvironment,
};

mod logs;
mod proc;

pub mod attribution;
pub mod host;
pub mod ssh_board;
pub mod stage2;

pub mod job;
pub mod kmsg;
pub mod probe;
pub mod profile;
pub mod qmp;

pub use job::run_migrate_cancel;
pub use probe::{HostProbe, probe_host};

/// Decides whether a log line is a fatal finding; returns the reason.
/// Called for every line of the guest console, QEMU stderr and host dmesg.
pub type FatalDetector = Arc<dyn Fn(LogStream, &str) -> Option<String> + Send + Sync>;

/// Where the executor finds its guest and scratch space.
#[derive(Clone)]
pub struct StressEnv {
    /// Where `agent/guest/build.sh` put `<arch>/vmlinuz` + `<arch>/initrd.gz`
    /// (`arm64`, `x86_64`).
    pub guest_dir: PathBuf,
    /// Per-job scratch (sockets). The executor makes a unique subdirectory
    /// in it and removes that subdirectory when the job ends.
    pub work_dir: PathBuf,
    pub fatal_detector: FatalDetector,
    /// QEMU binary to use instead of `qemu-system-<arch>` from `PATH`.
    /// The environment variables `ARMFLEET_QEMU_AARCH64` /
    /// `ARMFLEET_QEMU_X86_64` do the same when this is `None`.
    pub qemu_binary: Option<PathBuf>,
    /// Whole-job limit; reaching it kills everything and yields
    /// [`JobResult::TimedOut`]. `None`: no limit (the agent may cancel).
    pub job_timeout: Option<Duration>,
    /// Lab-side fault injection for tests of the executor itself.
    pub fault_hooks: FaultHooks,
    /// Run the guests on this SSH-driven board instead of this machine.
    pub board: Option<ssh_board::SshBoardConfig>,
}

/// Faults the executor can inject on the host side (tests). Guest-side
/// faults are `MigrateCancelParams::inject_guest_panic_after`.
#[derive(Debug, Clone, Default)]
pub struct FaultHooks {
    /// In these cycles, `stop` the source right before `migrate_cancel`:
    /// reproduces trap 2 (source left paused after a cancel that raced
    /// with completion), so the `cont` recovery path is exercised.
    pub pause_source_before_cancel: Vec<u32>,
}

impl StressEnv {
    pub fn new(guest_dir: impl Into<PathBuf>, work_dir: impl Into<PathBuf>) -> StressEnv {
        StressEnv {
            guest_dir: guest_dir.into(),
            work_dir: work_dir.into(),
            fatal_detector: default_fatal_detector(),
            qemu_binary: None,
            job_timeout: None,
            fault_hooks: FaultHooks::default(),
            board: None,
        }
    }

    /// `${ARMFLEET_GUEST_DIR:-$HOME/.cache/armfleet/guest}`, as `build.sh` uses.
    pub fn default_guest_dir() -> PathBuf {
        if let Some(d) = std::env::var_os("ARMFLEET_GUEST_DIR") {
            return PathBuf::from(d);
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/root".into());
        home.join(".cache/armfleet/guest")
    }
}

/// Something the executor reports while the job runs.
#[derive(Debug, Clone, PartialEq)]
pub enum StressEvent {
    /// A chunk (≤ 64 KiB) of one log stream, in order per stream.
    Log { stream: LogStream, data: Vec<u8> },
    /// One cycle finished (also sent, with `guest_alive: false`, for the
    /// cycle a fatal finding interrupted).
    Cycle(CycleRecord),
    /// Where the guests run and under which accelerator (once, before the
    /// first guest starts).
    Environment(RunEnvironment),
}

/// Markers of a kernel or hypervisor failure, per stream.
const CONSOLE_MARKERS: &[&str] = &[
    "Kernel panic",
    "Unable to handle kernel",
    "Internal error:",
    "SError",
    "BUG:",
    "Oops",
    "kernel BUG at",
    "watchdog: BUG: soft lockup",
    "rcu_sched self-detected stall",
    "rcu: INFO: rcu_sched detected stall",
    "ARMFLEET-CORRUPTION",
];
const STDERR_MARKERS: &[&str] = &[
    "kvm run failed",
    "KVM internal error",
    "qemu: fatal:",
    "Assertion",
];
const DMESG_MARKERS: &[&str] = &[
    "Unable to handle kernel",
    "Internal error:",
    "SError",
    "Kernel panic",
    "BUG:",
    "kernel BUG at",
    "Oops",
    "TLB conflict",
    "kvm [",
];

/// Simple built-in markers; the agent replaces this with the triage crate's.
pub fn default_fatal_detector() -> FatalDetector {
    Arc::new(|stream: LogStream, line: &str| {
        let markers: &[&str] = match stream {
            LogStream::GuestConsole => CONSOLE_MARKERS,
            LogStream::QemuStderr => STDERR_MARKERS,
            LogStream::HostDmesg => DMESG_MARKERS,
            _ => return None,
        };
        // "kvm [pid]: ..." host lines are only fatal when they speak of an abort.
        for m in markers {
            if line.contains(m) {
                if *m == "kvm [" && !(line.contains("abort") || line.contains("Unexpected")) {
                    continue;
                }
                return Some(format!("{}: {}", stream.as_str(), m.trim_end_matches(':')));
            }
        }
        None
    })
}

/// The agent spawns jobs on a multi-threaded runtime: the job future must
/// be `Send`.
#[allow(dead_code)]
fn _job_future_is_send(env: &StressEnv, p: &MigrateCancelParams) {
    fn is_send<T: Send>(_: T) {}
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    is_send(run_migrate_cancel(
        env,
        p,
        tx,
        tokio_util::sync::CancellationToken::new(),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_detector_markers() {
        let d = default_fatal_detector();
        assert!(
            d(
                LogStream::GuestConsole,
                "[ 3.8] Kernel panic - not syncing: sysrq triggered crash"
            )
            .is_some()
        );
        assert!(d(LogStream::QemuStderr, "error: kvm run failed Bad address").is_some());
        assert!(
            d(
                LogStream::HostDmesg,
                "kvm [1234]: Unexpected L2 read permission error"
            )
            .is_some()
        );
        assert!(d(LogStream::HostDmesg, "kvm [1234]: IPA Size Limit: 48 bits").is_none());
        assert!(d(LogStream::GuestConsole, "ARMFLEET-HB 12 passes=3").is_none());
        assert!(
            d(
                LogStream::QemuStderr,
                "qemu-system-aarch64: load of migration failed: Input/output error"
            )
            .is_none()
        );
        assert!(d(LogStream::Agent, "Kernel panic").is_none());
    }
}
