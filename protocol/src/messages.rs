//! The messages of protocol version [`crate::PROTOCOL_VERSION`].

use serde::{Deserialize, Serialize};

/// What an agent sends to the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// First message on every connection.
    Hello(Hello),
    /// Liveness; the server declares the board offline when these stop.
    Heartbeat { running_job: Option<i64> },
    /// The agent took the job and is starting it.
    JobStarted { job_id: i64, epoch: i64 },
    /// A piece of one of the job's log streams; the bytes travel as the
    /// frame payload. `seq` counts chunks per (job, stream) from 0, so the
    /// server can store each chunk exactly once.
    LogChunk {
        job_id: i64,
        epoch: i64,
        stream: LogStream,
        seq: u64,
        /// Absent: the payload is the log bytes themselves.
        #[serde(default, skip_serializing_if = "is_raw")]
        encoding: crate::ChunkEncoding,
    },
    /// One stress cycle finished (successfully or not).
    CycleDone {
        job_id: i64,
        epoch: i64,
        record: CycleRecord,
    },
    /// The job reached its end on the agent's side.
    JobFinished {
        job_id: i64,
        epoch: i64,
        result: JobResult,
        /// Where the job's guests really ran and under which accelerator
        /// (absent: the job never got as far as deciding, or an older agent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        environment: Option<RunEnvironment>,
    },
    /// How a [`ServerMessage::Boot`] went on the agent's side. `Rebooting`
    /// is the last thing the agent says before it boots the build; the server
    /// then waits for it to come back running that build. A report about an
    /// earlier boot attempt (the agent came back on its known-good kernel)
    /// carries that boot's recovered console as the frame payload.
    BootReport { boot_id: i64, outcome: BootOutcome },
}

/// What became of a boot request, as the agent saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum BootOutcome {
    /// Artifacts downloaded, verified and installed; the board reboots now.
    Rebooting { method: String },
    /// Nothing was booted: a download, checksum or install step failed (a
    /// lab problem, not the kernel's).
    DeployFailed { reason: String },
    /// The board came back on its known-good kernel instead of the build:
    /// the build did not boot. The payload holds the console the agent
    /// recovered from that boot (pstore, journal), if any.
    FellBack {
        kernel_release: String,
        console_source: Option<String>,
    },
}

/// The agent's opening message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
    pub agent_version: String,
    pub board: String,
    pub facts: BoardFacts,
    /// Jobs this agent still runs, or whose results it has not seen
    /// acknowledged: after a reconnect the server keeps their leases and the
    /// agent resends what it spooled.
    #[serde(default)]
    pub running_jobs: Vec<JobLease>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLease {
    pub job_id: i64,
    pub epoch: i64,
}

fn is_raw(e: &crate::ChunkEncoding) -> bool {
    *e == crate::ChunkEncoding::Raw
}

/// `LogChunk::seq` from which an agent numbers the chunks of a kernel log it
/// recovered after a crash (pstore or `journalctl -k -b -1`) and uploads as
/// the dead job's `host_dmesg`: after anything streamed live, never clashing
/// with it. A convention over the existing message, not a wire change.
pub const RECOVERED_LOG_SEQ_BASE: u64 = 1 << 32;

/// What the server sends to an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Welcome {
        protocol_version: u32,
        server_version: String,
        /// How often the agent must heartbeat.
        heartbeat_interval_ms: u64,
        /// Where relative artifact URLs point (the server's HTTP API). When
        /// absent, the agent uses the host it dialed and `artifact_port`.
        #[serde(default)]
        artifact_base_url: Option<String>,
        #[serde(default)]
        artifact_port: Option<u16>,
    },
    /// The server will not talk to this agent; the connection closes next.
    Refused { reason: String },
    /// Run this job. `epoch` fences stale agents: every message about the
    /// job must carry it back.
    AssignJob {
        job_id: i64,
        epoch: i64,
        spec: JobSpec,
    },
    /// Stop this job as soon as possible and report it `cancelled`.
    CancelJob { job_id: i64, reason: String },
    /// The server has the job's final result (or the job is no longer this
    /// agent's): its spool may be deleted.
    JobAck { job_id: i64 },
    /// Make the board run this build: download and verify its artifacts,
    /// install them, and reboot into it (kexec or a one-shot boot entry, so
    /// a kernel that does not boot falls back to the known-good one). Sent
    /// only to an idle board.
    Boot { boot_id: i64, build: BuildSpec },
}

/// A kernel build a board can boot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildSpec {
    pub build_id: i64,
    /// `make kernelrelease` of the build: what `uname -r` says once booted.
    pub kernel_release: String,
    pub artifacts: Vec<Artifact>,
}

/// One file of a build, content-addressed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    /// `Image`, `modules.tar.gz`, `dtbs.tar.gz`, `config`, ...
    pub name: String,
    /// Absolute, or relative to `Welcome::artifact_base_url`.
    pub url: String,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
    pub size: u64,
}

/// Facts a board reports about itself on every connect.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BoardFacts {
    pub kernel_release: String,
    pub kernel_version: String,
    pub arch: String,
    /// MIDR implementer from /proc/cpuinfo (e.g. "0x48" HiSilicon, "0x41" Arm).
    pub cpu_implementer: Option<String>,
    pub cpu_part: Option<String>,
    pub cores: u32,
    pub mem_total_kib: u64,
    pub kvm: KvmStatus,
    pub qemu: Vec<QemuBinary>,
    pub hugepages: HugepageInfo,
    /// The executor this agent runs `migrate-cancel` jobs with.
    pub executor: ExecutorKind,
    /// The armfleet build the board runs, when it booted one (None: its own
    /// known-good kernel).
    #[serde(default)]
    pub build_id: Option<i64>,
    /// Hardware, emulated (the virtual arm64 board) or simulated.
    #[serde(default)]
    pub host_kind: HostKind,
    /// For an SSH-driven board: how the controller reaches it (`user@host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_board: Option<String>,
    /// `vhe` or `nvhe`, from the board's boot log, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvm_mode: Option<String>,
    /// What decides whether guest RAM can be mapped with stage-2 blocks.
    #[serde(default)]
    pub memory: MemoryFacts,
}

/// The host's page size, transparent hugepage modes and hugetlb pools:
/// what decides which memory backing gives the guest stage-2 blocks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryFacts {
    /// Base page size in KiB (4, 16 or 64); 0 when unknown.
    pub page_size_kib: u64,
    /// `/sys/kernel/mm/transparent_hugepage/enabled`, the selected mode
    /// (`always`, `madvise`, `never`); empty when the kernel has no THP.
    pub thp: String,
    /// `.../transparent_hugepage/shmem_enabled`, the selected mode.
    pub shmem_thp: String,
    /// Every hugetlb pool (`/sys/kernel/mm/hugepages/hugepages-*`).
    pub hugetlb_pools: Vec<HugepageInfo>,
}

impl MemoryFacts {
    /// The smallest stage-2 block size for this page size: the size a
    /// block re-install over a table has (4K: 2M, 16K: 32M, 64K: 512M).
    pub fn block_size_kib(&self) -> Option<u64> {
        block_size_kib(self.page_size_kib)
    }
    pub fn pool(&self, size_kib: u64) -> Option<&HugepageInfo> {
        self.hugetlb_pools.iter().find(|p| p.size_kib == size_kib)
    }
}

/// The level-2 block size of an arm64 translation granule, in KiB.
pub fn block_size_kib(page_size_kib: u64) -> Option<u64> {
    match page_size_kib {
        4 => Some(2 * 1024),
        16 => Some(32 * 1024),
        64 => Some(512 * 1024),
        _ => None,
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KvmStatus {
    /// `/dev/kvm` exists.
    pub present: bool,
    /// `/dev/kvm` can be opened read-write by the agent.
    pub accessible: bool,
    /// A hardware-backed KVM that can boot stock guests (not e.g. kvm_pvm).
    pub hardware: bool,
    /// Why KVM is not usable, when it is not.
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QemuBinary {
    /// `aarch64` or `x86_64`.
    pub arch: String,
    pub path: String,
    pub version: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HugepageInfo {
    pub size_kib: u64,
    pub total: u64,
    pub free: u64,
}

/// What kind of host produced a result. Only hardware and emulated hosts
/// run real KVM code; simulated ones replay recorded logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostKind {
    /// A real board.
    #[default]
    Hardware,
    /// The virtual arm64 board: real KVM/arm64 code, nested under QEMU TCG.
    Emulated,
    /// Replayed logs: demos and scale tests.
    Simulated,
}

impl HostKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HostKind::Hardware => "hardware",
            HostKind::Emulated => "emulated",
            HostKind::Simulated => "simulated",
        }
    }
    /// How pages and exports name it.
    pub fn label(self) -> &'static str {
        match self {
            HostKind::Hardware => "hardware",
            HostKind::Emulated => "emulated arm64 (nested KVM under TCG)",
            HostKind::Simulated => "simulated",
        }
    }
    pub fn parse(s: &str) -> Option<HostKind> {
        match s {
            "hardware" => Some(HostKind::Hardware),
            "emulated" => Some(HostKind::Emulated),
            "simulated" => Some(HostKind::Simulated),
            _ => None,
        }
    }
}

/// Where a job's guests ran, as the executor decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunEnvironment {
    pub host: HostKind,
    /// `kvm`, `tcg` or `none` (replay).
    pub accel: String,
    /// In words: the host, its kernel, the KVM mode.
    pub detail: String,
    /// Set when the agent fell back from what it was asked to use
    /// (`executor = "auto"` became replay, `accel = "auto"` became TCG):
    /// why. A fallback never counts as evidence for a verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

/// How a board executes stress jobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorKind {
    /// Real QEMU guests (KVM or TCG).
    Qemu,
    /// A simulated board replaying recorded logs. Everything it produces is
    /// labelled simulated.
    #[default]
    Replay,
}

impl ExecutorKind {
    pub fn is_simulated(self) -> bool {
        matches!(self, ExecutorKind::Replay)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutorKind::Qemu => "qemu",
            ExecutorKind::Replay => "replay",
        }
    }
}

/// The log streams a job produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    GuestConsole,
    HostDmesg,
    Qmp,
    QemuStderr,
    Agent,
}

impl LogStream {
    pub const ALL: [LogStream; 5] = [
        LogStream::GuestConsole,
        LogStream::HostDmesg,
        LogStream::Qmp,
        LogStream::QemuStderr,
        LogStream::Agent,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::GuestConsole => "guest_console",
            LogStream::HostDmesg => "host_dmesg",
            LogStream::Qmp => "qmp",
            LogStream::QemuStderr => "qemu_stderr",
            LogStream::Agent => "agent",
        }
    }
    pub fn parse(s: &str) -> Option<LogStream> {
        LogStream::ALL.into_iter().find(|l| l.as_str() == s)
    }
}

/// Everything an agent needs to run one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub kernel: KernelRef,
    pub plan: String,
    pub timeout_s: u64,
    pub task: Task,
    /// The armfleet build the board must be running for this job (None: the
    /// board's own kernel). The server boots it first.
    #[serde(default)]
    pub build_id: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelRef {
    pub tree: String,
    pub branch: String,
    pub commit: String,
}

/// The job types.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Task {
    MigrateCancel(MigrateCancelParams),
}

/// Parameters of a `migrate-cancel` stress job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MigrateCancelParams {
    pub cycles: u32,
    pub memory_mib: u32,
    pub vcpus: u32,
    /// Back guest RAM with 2 MiB hugetlb pages (the older spelling of
    /// `memory_backing = "hugetlb"`).
    pub hugepages: bool,
    /// How guest RAM is backed; see [`MemoryBacking`]. `None`: `hugepages`
    /// decides (hugetlb or plain anonymous memory).
    pub memory_backing: Option<MemoryBacking>,
    /// Dirtying threads in the guest; 0: one per vCPU.
    pub dirty_threads: u32,
    /// The guest verifies what it wrote; a mismatch is a finding of its own
    /// (guest memory corruption).
    pub verify: bool,
    /// After each cancel, keep the guest writing this long before the next
    /// migration: the writes fault on what dirty logging left
    /// write-protected, which is where KVM re-installs blocks.
    pub dwell_after_cancel_ms: u64,
    /// `-accel kvm,dirty-ring-size=N` (entries; KVM only).
    pub dirty_ring_size: Option<u32>,
    /// GIC version for the guest's `virt` machine under KVM; `None`: `host`.
    pub gic_version: Option<u8>,
    pub cancel_delay_ms_min: u64,
    pub cancel_delay_ms_max: u64,
    /// Migration bandwidth cap, MiB/s; low enough that migration cannot converge.
    pub bandwidth_mib_s: u64,
    pub downtime_limit_ms: u64,
    /// Guest architecture: `arm64` or `x86_64`.
    pub guest_arch: String,
    /// `kvm`, `tcg`, or `auto` (KVM when the host has hardware KVM).
    pub accel: String,
    /// Share of guest RAM the workload keeps dirtying, percent.
    pub dirty_percent: u32,
    /// Every Nth cycle lets the migration complete instead of cancelling
    /// (0: never).
    pub complete_every: u32,
    /// Eager page-split chunk size for KVM (`-accel kvm,eager-split-size=`).
    pub eager_split_size: Option<String>,
    /// Guest kernel and initramfs paths on the board; default: the agent's
    /// built-in guest for `guest_arch`.
    pub guest_kernel: Option<String>,
    pub guest_initrd: Option<String>,
    /// Fault injection for tests: the guest panics (sysrq-c) after this many
    /// cycles.
    pub inject_guest_panic_after: Option<u32>,
    /// Fault injection for tests: the guest workload flips a bit it wrote
    /// after this many cycles (its verification must report it).
    pub inject_guest_corruption_after: Option<u32>,
    /// Replay executor only: per-cycle probability that this kernel's guest
    /// takes a TLB conflict abort (set by the plan for kernels it marks buggy).
    pub replay_abort_probability: f64,
    /// Replay executor only: simulated time per cycle, milliseconds.
    pub replay_cycle_ms: u64,
    /// Seed for delays and replay decisions, for reproducible runs.
    pub seed: u64,
}

impl Default for MigrateCancelParams {
    fn default() -> Self {
        MigrateCancelParams {
            cycles: 20,
            memory_mib: 512,
            // Several vCPUs, each with its own dirtying thread: faults on
            // every vCPU during and after the cancel.
            vcpus: 2,
            hugepages: false,
            memory_backing: None,
            dirty_threads: 0,
            verify: true,
            dwell_after_cancel_ms: 0,
            dirty_ring_size: None,
            gic_version: None,
            cancel_delay_ms_min: 300,
            cancel_delay_ms_max: 700,
            bandwidth_mib_s: 128,
            downtime_limit_ms: 1,
            guest_arch: "arm64".into(),
            accel: "auto".into(),
            dirty_percent: 50,
            complete_every: 0,
            eager_split_size: None,
            guest_kernel: None,
            guest_initrd: None,
            inject_guest_panic_after: None,
            inject_guest_corruption_after: None,
            replay_abort_probability: 0.0,
            replay_cycle_ms: 50,
            seed: 0,
        }
    }
}

/// How guest RAM is backed, which decides whether KVM can map it with
/// stage-2 blocks at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryBacking {
    /// Whatever gives stage-2 blocks on this board: hugetlb pages of the
    /// block size when the pool has enough free, else anonymous memory with
    /// THP (`always` or `madvise`); a lab error when neither can.
    Block,
    /// hugetlb pages of the block size (memfd).
    Hugetlb,
    /// Anonymous memory; needs THP `always` or `madvise`.
    Thp,
    /// Shared memory without hugepages: stage 2 can only use pages, so the
    /// race cannot happen (a control).
    Pages,
}

impl MemoryBacking {
    pub fn as_str(self) -> &'static str {
        match self {
            MemoryBacking::Block => "block",
            MemoryBacking::Hugetlb => "hugetlb",
            MemoryBacking::Thp => "thp",
            MemoryBacking::Pages => "pages",
        }
    }
    pub fn parse(s: &str) -> Option<MemoryBacking> {
        [
            MemoryBacking::Block,
            MemoryBacking::Hugetlb,
            MemoryBacking::Thp,
            MemoryBacking::Pages,
        ]
        .into_iter()
        .find(|b| b.as_str() == s)
    }
}

impl MigrateCancelParams {
    /// The hold before each cycle's `migrate_cancel`, cycle by cycle
    /// (index 0 is cycle 1): a SplitMix64 stream seeded with `seed`, drawn
    /// once per cancel cycle from `[cancel_delay_ms_min,
    /// cancel_delay_ms_max]`; a ping-pong cycle (`complete_every`) draws
    /// nothing and holds 0. The QEMU executor holds exactly these, and a
    /// job's reproducer replays them, so both come from here.
    pub fn delay_schedule(&self) -> Vec<u64> {
        let mut state = self.seed;
        let mut next = move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let (lo, hi) = (self.cancel_delay_ms_min, self.cancel_delay_ms_max);
        (1..=self.cycles)
            .map(|n| {
                if self.complete_every > 0 && n % self.complete_every == 0 {
                    0
                } else if hi <= lo {
                    lo
                } else {
                    lo + next() % (hi - lo + 1)
                }
            })
            .collect()
    }
}

/// What happened in one migrate→cancel cycle.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CycleRecord {
    /// 1-based cycle number.
    pub cycle: u32,
    /// `cancel`, `complete` or `pingpong`.
    pub action: String,
    pub delay_ms: u64,
    /// Last migration status seen before acting (`active`, `completed`, ...).
    pub state_reached: String,
    /// Final status (`cancelled`, `completed`, `failed`).
    pub final_state: String,
    pub bytes_transferred: u64,
    pub dirty_pages_rate: Option<u64>,
    pub cancel_to_cancelled_ms: Option<f64>,
    /// Time from the end of the cycle until the guest heartbeat advanced.
    pub guest_progress_ms: Option<f64>,
    pub guest_alive: bool,
    /// The source was left paused and the agent resumed it (`cont`).
    pub resumed_paused_source: bool,
    pub events: Vec<String>,
    pub wall_ms: f64,
    /// What the host kernel's stage-2 code did during the cycle (KVM/arm64
    /// hosts with kprobes; absent where the path could not be traced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathCounters>,
}

/// Stage-2 path counters of one cycle, from kprobes on the host kernel.
/// `None` in a field: that probe could not be armed on this kernel —
/// unknown, never zero.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PathCounters {
    /// `kvm_pgtable_stage2_map` of one 4 KiB page.
    pub page_maps: Option<u64>,
    /// `kvm_pgtable_stage2_map` of a block (2 MiB on a 4K host).
    pub block_maps: Option<u64>,
    /// Block maps after the cancel, when dirty logging is off again: KVM
    /// re-installing blocks over the tables the logging split left.
    pub block_maps_after_cancel: Option<u64>,
    /// `kvm_pgtable_stage2_relax_perms`: stage-2 permission faults.
    pub perm_faults: Option<u64>,
    /// `kvm_arch_commit_memory_region`: memslot changes (dirty logging on/off).
    pub memslot_changes: Option<u64>,
}

/// How a job ended, as the agent saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum JobResult {
    Passed {
        cycles_completed: u32,
    },
    /// The kernel under test misbehaved.
    Failed {
        cycles_completed: u32,
        failed_cycle: Option<u32>,
        reason: String,
        /// The log lines that prove it (e.g. the abort lines).
        evidence: Vec<String>,
    },
    /// The lab misbehaved (QEMU missing, no KVM, ...); not a kernel verdict.
    InfraError {
        cycles_completed: u32,
        reason: String,
    },
    Cancelled {
        cycles_completed: u32,
        reason: String,
    },
    TimedOut {
        cycles_completed: u32,
    },
}

impl JobResult {
    pub fn cycles_completed(&self) -> u32 {
        match self {
            JobResult::Passed { cycles_completed }
            | JobResult::Failed {
                cycles_completed, ..
            }
            | JobResult::InfraError {
                cycles_completed, ..
            }
            | JobResult::Cancelled {
                cycles_completed, ..
            }
            | JobResult::TimedOut { cycles_completed } => *cycles_completed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::MigrateCancelParams;

    #[test]
    fn delay_schedule_is_splitmix64_of_the_seed_and_skips_ping_pong_cycles() {
        let p = MigrateCancelParams {
            cycles: 4,
            cancel_delay_ms_min: 200,
            cancel_delay_ms_max: 600,
            seed: 0,
            ..Default::default()
        };
        // SplitMix64(0) starts 0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4, 0x06c45d188009454f.
        let first = [
            200 + 0xe220_a839_7b1d_cdaf_u64 % 401,
            200 + 0x6e78_9e6a_a1b9_65f4_u64 % 401,
            200 + 0x06c4_5d18_8009_454f_u64 % 401,
        ];
        assert_eq!(p.delay_schedule()[..3], first);
        let pp = MigrateCancelParams {
            complete_every: 2,
            ..p.clone()
        };
        // Ping-pong cycles hold nothing and draw nothing.
        assert_eq!(pp.delay_schedule(), vec![first[0], 0, first[1], 0]);
        let fixed = MigrateCancelParams {
            cancel_delay_ms_min: 300,
            cancel_delay_ms_max: 300,
            ..p
        };
        assert_eq!(fixed.delay_schedule(), vec![300; 4]);
    }
}
