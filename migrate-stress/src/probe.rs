//! Host capabilities: QEMU binaries, KVM, hugepages.

use std::path::{Path, PathBuf};

use armfleet_protocol::{HugepageInfo, KvmStatus, QemuBinary};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostProbe {
    pub kvm: KvmStatus,
    pub qemu: Vec<QemuBinary>,
    pub hugepages: HugepageInfo,
    pub memory: armfleet_protocol::MemoryFacts,
}

/// Probes the host (blocking, fast: reads /proc and /sys, runs
/// `qemu-system-* --version`).
pub fn probe_host() -> HostProbe {
    let mut qemu = vec![];
    for arch in ["aarch64", "x86_64"] {
        if let Some(path) = find_qemu(arch) {
            let version = qemu_version(&path).unwrap_or_else(|| "unknown".into());
            qemu.push(QemuBinary {
                arch: arch.into(),
                path: path.display().to_string(),
                version,
            });
        }
    }
    HostProbe {
        kvm: probe_kvm(),
        qemu,
        hugepages: hugepages(),
        memory: memory_facts(),
    }
}

/// Page size, THP modes and hugetlb pools of this host, read by the same
/// script an SSH-driven board runs.
pub fn memory_facts() -> armfleet_protocol::MemoryFacts {
    let out = std::process::Command::new("sh")
        .args(["-c", crate::ssh_board::MEMORY_SCRIPT])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    crate::ssh_board::parse_probe(&out).memory()
}

/// QEMU's name for the guest architecture (`arm64` → `aarch64`).
pub fn qemu_arch(guest_arch: &str) -> Option<&'static str> {
    match guest_arch {
        "arm64" | "aarch64" => Some("aarch64"),
        "x86_64" | "amd64" | "x86" => Some("x86_64"),
        _ => None,
    }
}

/// `qemu-system-<arch>`: `$ARMFLEET_QEMU_<ARCH>` if set, else from `PATH`.
pub fn find_qemu(arch: &str) -> Option<PathBuf> {
    let var = format!("ARMFLEET_QEMU_{}", arch.to_uppercase());
    if let Some(p) = std::env::var_os(&var) {
        return Some(PathBuf::from(p));
    }
    which(&format!("qemu-system-{arch}"))
}

pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

pub fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// First line of `qemu --version`, e.g. `7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)`.
pub fn qemu_version(path: &Path) -> Option<String> {
    let out = std::process::Command::new(path)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout);
    let first = s.lines().next()?.trim();
    Some(
        first
            .strip_prefix("QEMU emulator version ")
            .unwrap_or(first)
            .to_string(),
    )
}

fn module_loaded(name: &str) -> bool {
    if Path::new(&format!("/sys/module/{name}")).exists() {
        return true;
    }
    std::fs::read_to_string("/proc/modules")
        .map(|s| s.lines().any(|l| l.split_whitespace().next() == Some(name)))
        .unwrap_or(false)
}

fn cpu_flag(flag: &str) -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| {
            s.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|w| w == flag))
        })
        .unwrap_or(false)
}

/// `/dev/kvm`: present, openable read-write, and hardware-backed.
///
/// "Hardware" means a KVM that boots stock guests: on x86_64 `kvm_intel` or
/// `kvm_amd` with the `vmx`/`svm` CPU flag; on arm64 any in-kernel KVM.
/// `kvm_pvm` (a paravirtualized KVM inside a VM) is never hardware: under it
/// `-cpu host` aborts and stock kernels do not boot.
pub fn probe_kvm() -> KvmStatus {
    let dev = Path::new("/dev/kvm");
    let present = dev.exists();
    let accessible = present
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dev)
            .is_ok();
    let mut note = None;
    let hardware = if !present {
        note = Some("/dev/kvm does not exist".to_string());
        false
    } else if !accessible {
        note = Some(
            "/dev/kvm exists but cannot be opened read-write (permissions / kvm group?)"
                .to_string(),
        );
        false
    } else if module_loaded("kvm_pvm") {
        note =
            Some("/dev/kvm is kvm_pvm (paravirtual KVM inside a VM), not hardware KVM".to_string());
        false
    } else {
        match std::env::consts::ARCH {
            "x86_64" => {
                let intel = module_loaded("kvm_intel") && cpu_flag("vmx");
                let amd = module_loaded("kvm_amd") && cpu_flag("svm");
                if !(intel || amd) {
                    note = Some(
                        "no kvm_intel/kvm_amd with vmx/svm: /dev/kvm is not hardware-backed"
                            .to_string(),
                    );
                }
                intel || amd
            }
            "aarch64" => true,
            other => {
                note = Some(format!("unsupported host arch {other}"));
                false
            }
        }
    };
    KvmStatus {
        present,
        accessible,
        hardware,
        note,
    }
}

/// Default-size hugepages from /proc/meminfo.
pub fn hugepages() -> HugepageInfo {
    let s = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let get = |key: &str| -> u64 {
        s.lines()
            .find_map(|l| {
                l.strip_prefix(key)?
                    .strip_prefix(':')?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    HugepageInfo {
        size_kib: get("Hugepagesize"),
        total: get("HugePages_Total"),
        free: get("HugePages_Free"),
    }
}

/// Free 2 MiB hugepages, from sysfs (independent of the default size).
pub fn free_2m_hugepages() -> u64 {
    std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_runs() {
        let p = probe_host();
        if Path::new("/sys/module/kvm_pvm").exists() {
            assert!(!p.kvm.hardware, "kvm_pvm must not count as hardware");
            assert!(p.kvm.note.unwrap().contains("kvm_pvm"));
        }
        assert!(p.hugepages.size_kib > 0);
        for q in &p.qemu {
            assert!(!q.version.is_empty());
        }
    }
}
