//! Kernel log triage for armfleet.
//!
//! Board-farm jobs produce three kinds of logs: the guest's serial console,
//! the host's `dmesg`, and QEMU's stderr.  When a job fails we want to know
//! *what* failed in a form that groups identical bugs across boards, kernels
//! and runs: a **finding** with a stable title in syzkaller's conventions
//! (`WARNING in stage2_map_walk_leaf`, `BUG: unable to handle kernel paging
//! request in kvm_pgtable_walk`, `INFO: rcu detected stall in ...`), a class,
//! the line range of the report, and a dedupe signature.  On top of syzkaller's
//! conventions the crate understands the KVM/arm64 failures this farm hunts:
//! TLB conflict aborts in guests, `kvm [PID]: Unsupported FSC` on the host with
//! QEMU's matching `kvm run failed`, SError interrupts, and ESR decoding.
//!
//! Users:
//! * the server stores [`triage`] findings per job;
//! * the agent runs [`first_fatal_line`] on each streamed console line to
//!   stop a stress job at the first fatal report;
//! * `armfleet triage [--json] FILE...` calls [`run_cli`].
//!
//! Module map: `lines` cleans raw lines and their printk
//! prefixes, `frames` recognises stack frames and picks culprits, `titles`
//! holds the report families and title rules, `report` scans a log and builds
//! findings, `esr` decodes arm64 syndromes, `signature` normalises titles,
//! `cli` prints results.
//!
//! Classes (serialised in kebab-case):
//!
//! | class | what | fatal |
//! |---|---|---|
//! | `guest-abort` | TLB conflict abort in a guest, host KVM `Unsupported FSC` | yes |
//! | `kernel-panic` | `kernel panic: ...` not explained by an earlier report | yes |
//! | `oops` | BUG/paging request/NULL deref/Internal error/GPF/kernel BUG/Unhandled fault/double fault... | yes |
//! | `serror` | arm64 SError interrupt, titled by where it hit (`SError Interrupt in FUNC`; plain `SError Interrupt` when taken from user space) | yes |
//! | `kvm-error` | QEMU `kvm run failed`, `KVM internal error` (fatal); other host `kvm [PID]:` errors (not fatal: KVM reports them and the guest goes on) | see left |
//! | `memory-corruption` | the guest workload read back other data than it wrote (`ARMFLEET-CORRUPTION`) | yes |
//! | `hang` | an empty guest console | yes |
//! | `warning` | WARNING, sleeping in atomic, bad page state... | no* |
//! | `sanitizer` | KASAN, KMSAN, KCSAN, UBSAN, KFENCE | no* |
//! | `lockdep` | possible deadlock, inconsistent lock state, RCU misuse... | no* |
//! | `stall` | soft lockup, RCU stall, hung task, workqueue lockup | no* |
//! | `memory-leak` | kmemleak | no* |
//! | `reboot` | unexpected kernel reboot | no |
//! | `other` | syzkaller/Go runtime/trusty messages | no* |
//!
//! \* a finding is also fatal when its report is followed by
//! `Kernel panic - not syncing` (e.g. `panic_on_warn`).

mod cli;
mod demangle;
mod esr;
mod frames;
mod lines;
mod report;
mod signature;
mod titles;

pub use esr::{EsrDecoded, decode_esr, ec_name, fsc_name};
pub use signature::signature_of;

/// The literal starts of the lines that begin a fatal report (the
/// prefilter of [`first_fatal_line`]); for tools outside Rust, e.g. a
/// job's reproducer script that must stop where the job stopped.
pub const FATAL_LINE_STARTS: &[&str] = report::FATAL_STARTS;

use serde::Serialize;

/// What kind of failure a finding is.  See the crate docs for the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingClass {
    GuestAbort,
    KernelPanic,
    Oops,
    Warning,
    Sanitizer,
    Lockdep,
    Stall,
    Serror,
    KvmError,
    MemoryLeak,
    /// The guest workload read back something other than what it wrote.
    MemoryCorruption,
    Hang,
    Reboot,
    Other,
}

impl FindingClass {
    /// Classes that stop a stress job on their own (`kvm-error` findings are
    /// fatal only for QEMU's run failures, see [`Finding::fatal`]).
    pub fn is_fatal(self) -> bool {
        matches!(
            self,
            FindingClass::GuestAbort
                | FindingClass::KernelPanic
                | FindingClass::Oops
                | FindingClass::Serror
                | FindingClass::Hang
                | FindingClass::MemoryCorruption
        )
    }

    /// The serialised name, e.g. `guest-abort`.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingClass::GuestAbort => "guest-abort",
            FindingClass::KernelPanic => "kernel-panic",
            FindingClass::Oops => "oops",
            FindingClass::Warning => "warning",
            FindingClass::Sanitizer => "sanitizer",
            FindingClass::Lockdep => "lockdep",
            FindingClass::Stall => "stall",
            FindingClass::Serror => "serror",
            FindingClass::KvmError => "kvm-error",
            FindingClass::MemoryLeak => "memory-leak",
            FindingClass::MemoryCorruption => "memory-corruption",
            FindingClass::Hang => "hang",
            FindingClass::Reboot => "reboot",
            FindingClass::Other => "other",
        }
    }
}

/// Which log a finding came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Guest,
    Host,
    Qemu,
    Unknown,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Guest => "guest",
            Source::Host => "host",
            Source::Qemu => "qemu",
            Source::Unknown => "unknown",
        }
    }
}

/// One report found in a log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// e.g. `WARNING in stage2_map_walk_leaf`.
    pub title: String,
    pub class: FindingClass,
    /// The hint given to [`triage`], or, when that was `Unknown`, what the
    /// report itself shows (host `kvm [PID]:` lines, QEMU messages).
    pub source: Source,
    /// The report is truncated or garbled (no usable stack, merged lines...).
    pub corrupted: bool,
    /// 1-based, inclusive line range of the report in the input.
    pub start_line: usize,
    pub end_line: usize,
    /// The title normalised for dedupe across boards, kernels and addresses.
    pub signature: String,
    /// Should a stress job stop on it.
    pub fatal: bool,
    /// The decoded ESR when the report carried one.
    pub esr: Option<EsrDecoded>,
}

/// Find every report in `log`, in order; the first is the main report.
///
/// Never panics; runs in time linear in `log.len()` on any bytes.  An empty
/// (or all-whitespace) *guest* log yields one `hang` finding, `no output from
/// test machine`; empty host/QEMU logs are normal and yield nothing.
pub fn triage(log: &[u8], source_hint: Source) -> Vec<Finding> {
    report::scan(log, source_hint)
}

/// Cheap per-line check for streaming output: does this line begin a fatal
/// report (panic, oops, abort, SError, KVM run failure...)?  The line may
/// carry its printk prefix.
pub fn first_fatal_line(line: &str) -> bool {
    report::first_fatal_line(line)
}

/// CLI entry: `armfleet triage [--json] FILE...`; returns the process exit
/// code (0, or 2 if a file could not be read; other files are still done).
pub fn run_cli(json: bool, files: &[std::path::PathBuf], out: &mut dyn std::io::Write) -> i32 {
    cli::run(json, files, out)
}
