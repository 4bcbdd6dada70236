//! What the board reports about itself on every connect.

use armfleet_protocol::BoardFacts;

use crate::ExecutorChoice;

pub fn gather(choice: ExecutorChoice) -> BoardFacts {
    let probe = armfleet_migrate_stress::probe_host();
    let executor = choice.resolve(&probe);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_owned())
        })
    };
    let mem_total_kib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let arch = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        other => other,
    };
    BoardFacts {
        kernel_release: read_trim("/proc/sys/kernel/osrelease"),
        kernel_version: read_trim("/proc/sys/kernel/version"),
        arch: arch.to_owned(),
        cpu_implementer: field("CPU implementer"),
        cpu_part: field("CPU part"),
        cores: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        mem_total_kib,
        kvm: probe.kvm,
        qemu: probe.qemu,
        hugepages: probe.hugepages,
        executor,
        build_id: None,
    }
}

/// `uname -r`.
pub fn uname_release() -> String {
    read_trim("/proc/sys/kernel/osrelease")
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
