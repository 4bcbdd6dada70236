//! Throughput benchmark: `cargo run --release -p armfleet-triage --example triage_bench [MB]`.
//!
//! Builds a ~100 MB console log (mostly benign boot/console/KVM chatter, a
//! report every few thousand lines, printk timestamps and caller tags) and
//! times `triage` on one core (on-CPU time of the benchmark thread, so a
//! busy machine does not distort the figure; best of 3 runs).  The breakdown separates the unavoidable line
//! scan (memchr over newlines), the prefilter scan over benign text, and the
//! cost of titling the reports that are found.

use armfleet_triage::{Source, triage};
use std::time::Instant;

const REPORTS: &[&str] = &[
    include_str!("../tests/corpus/arm64_kvm_warning.log"),
    include_str!("../tests/corpus/guest_tlb_conflict.log"),
    include_str!("../tests/corpus/kasan_uaf.log"),
    include_str!("../tests/corpus/rcu_stall.log"),
    include_str!("../tests/corpus/host_unsupported_fsc.log"),
    include_str!("../tests/corpus/possible_deadlock.log"),
    include_str!("../tests/corpus/serror.log"),
    include_str!("../tests/corpus/task_hung.log"),
];

const BENIGN: &[&str] = &[
    "virtio_net virtio0 eth0: renamed from tap0",
    "EXT4-fs (vda1): mounted filesystem 5c1a2f8e-7d2b-4f9a-9a77-3c0b1f1d2e3f r/w with ordered data mode.",
    "audit: type=1400 audit(1717171717.123:42): avc:  denied  { read } for  pid=311 comm=\"stress-ng\" name=\"meminfo\"",
    "kvm [4321]: vcpu 3 PSCI CPU_ON request for 0x0000000003",
    "systemd[1]: Started Journal Service.",
    "random: crng init done",
    "stress-ng: info:  [311] dispatching hogs: 4 vm, 2 hugepage, 1 madvise",
    "hugepage-churn[402]: iteration 1182 ok, 512 THPs split, 0 errors",
    "vfio-pci 0000:01:00.0: enabling device (0000 -> 0002)",
    "clocksource: timekeeping watchdog on CPU1: Marking clocksource 'tsc' as unstable",
    "sched: RT throttling activated",
    "migrate-stress: cycle 77 cancelled after 512ms, dirty rate 1932 pages/s",
    "NET: Registered PF_VSOCK protocol family",
    "INFO: NMI handler (perf_event_nmi_handler) took too long to run: 1.356 msecs",
    "pci 0000:00:01.0: BAR 4: assigned [mem 0x8000000000-0x8000003fff 64bit pref]",
    "kvm [1]: IPA Size Limit: 48 bits",
];

fn build(target_bytes: usize, with_reports: bool) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(target_bytes + 4096);
    let mut line = 0u64;
    let mut reports = 0;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    while out.len() < target_bytes {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        line += 1;
        let secs = line / 1000;
        let usecs = (line * 997) % 1_000_000;
        if with_reports && line.is_multiple_of(5000) {
            let report = REPORTS[(line / 5000) as usize % REPORTS.len()];
            out.extend_from_slice(report.as_bytes());
            reports += 1;
            continue;
        }
        let msg = BENIGN[(seed % BENIGN.len() as u64) as usize];
        if seed.is_multiple_of(3) {
            out.extend_from_slice(
                format!("[{secs:>5}.{usecs:06}][ T{:>4}] {msg}\n", seed % 4096).as_bytes(),
            );
        } else {
            out.extend_from_slice(format!("[{secs:>5}.{usecs:06}] {msg}\n").as_bytes());
        }
    }
    (out, reports)
}

fn mbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / secs
}

/// Nanoseconds this thread has spent on a CPU (Linux `schedstat`), so that
/// the figures mean "one core" even when the machine is busy with others.
fn cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Best of `runs`: on-CPU seconds when available (else wall seconds).
fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::MAX;
    let mut last = None;
    for _ in 0..runs {
        let wall = Instant::now();
        let cpu = cpu_ns();
        let r = f();
        let secs = match (cpu, cpu_ns()) {
            (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e9,
            _ => wall.elapsed().as_secs_f64(),
        };
        best = best.min(secs);
        last = Some(r);
    }
    (best, last.expect("at least one run"))
}

fn main() {
    let mb: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100);
    let (log, reports) = build(mb * 1024 * 1024, true);
    let (benign, _) = build(mb * 1024 * 1024, false);
    println!(
        "log: {:.1} MB, {} embedded reports; benign-only copy: {:.1} MB",
        mbps(log.len(), 1.0),
        reports,
        mbps(benign.len(), 1.0)
    );

    let reports_only: Vec<u8> = REPORTS
        .iter()
        .cycle()
        .take(reports)
        .flat_map(|r| r.bytes())
        .collect();

    let (t_lines, n_lines) = best_of(3, || memchr::memchr_iter(b'\n', &log).count());
    let (t_benign, f_benign) = best_of(3, || triage(&benign, Source::Guest));
    let (t_reports, f_reports) = best_of(3, || triage(&reports_only, Source::Guest));
    let (t_full, findings) = best_of(3, || triage(&log, Source::Guest));

    println!(
        "triage (full mix):      {:>8.1} MB/s  ({:.3} s, {} findings)",
        mbps(log.len(), t_full),
        t_full,
        findings.len()
    );
    println!("breakdown:");
    println!(
        "  newline scan only:    {:>8.1} MB/s  ({:.3} s, {} lines) — floor for any line-based tool",
        mbps(log.len(), t_lines),
        t_lines,
        n_lines
    );
    println!(
        "  benign text only (prefilter + candidate lines): {:>8.1} MB/s ({:.3} s, {} findings)",
        mbps(benign.len(), t_benign),
        t_benign,
        f_benign.len()
    );
    println!(
        "  reports only ({} reports, {:.2} MB): {:.3} s, {:.1} us per report",
        f_reports.len(),
        mbps(reports_only.len(), 1.0),
        t_reports,
        t_reports * 1e6 / f_reports.len().max(1) as f64
    );
    let windows = (t_full - t_benign - t_reports).max(0.0);
    println!(
        "  remainder (benign lines read inside report windows, timing noise): ~{:.3} s",
        windows
    );
    let mut titles: Vec<&str> = findings.iter().map(|f| f.title.as_str()).collect();
    titles.sort_unstable();
    titles.dedup();
    println!("distinct titles: {titles:?}");
}
