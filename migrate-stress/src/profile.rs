//! QEMU argument vectors per guest architecture and accelerator.
//! Always an argv (`Vec<OsString>`), never a shell string.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestArch {
    Arm64,
    X86_64,
}

impl GuestArch {
    pub fn parse(s: &str) -> Option<GuestArch> {
        match s {
            "arm64" | "aarch64" => Some(GuestArch::Arm64),
            "x86_64" | "amd64" => Some(GuestArch::X86_64),
            _ => None,
        }
    }
    /// Directory name under the guest dir, as build.sh uses.
    pub fn dir(self) -> &'static str {
        match self {
            GuestArch::Arm64 => "arm64",
            GuestArch::X86_64 => "x86_64",
        }
    }
    /// QEMU's / the kernel's name (`qemu-system-<this>`, `uname -m`).
    pub fn qemu(self) -> &'static str {
        match self {
            GuestArch::Arm64 => "aarch64",
            GuestArch::X86_64 => "x86_64",
        }
    }
    pub fn console(self) -> &'static str {
        match self {
            GuestArch::Arm64 => "ttyAMA0",
            GuestArch::X86_64 => "ttyS0",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware KVM: the configuration that exercises stage-2 dirty logging.
    Kvm,
    /// TCG emulation: exercises the QMP/migration mechanics only, NOT KVM.
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// How guest RAM is backed on the host, as decided for one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// Anonymous memory. QEMU madvises guest RAM for hugepages, so with THP
    /// `always` or `madvise` the host can back it with blocks.
    Anonymous,
    /// hugetlb pages of this size (memfd; no hugetlbfs mount, no files left
    /// behind).
    Hugetlb { size_kib: u64 },
    /// Shared memory (memfd) without hugepages: stage 2 maps pages only.
    SharedPages,
}

impl Backing {
    pub fn describe(self) -> String {
        match self {
            Backing::Anonymous => "anonymous RAM".into(),
            Backing::Hugetlb { size_kib } => format!("hugetlb {} (memfd)", size_name(size_kib)),
            Backing::SharedPages => "shared memory, pages only (memfd)".into(),
        }
    }
    /// hugetlb pages one guest holds.
    pub fn pages_per_guest(self, memory_mib: u32) -> u64 {
        match self {
            Backing::Hugetlb { size_kib } => (memory_mib as u64 * 1024).div_ceil(size_kib),
            _ => 0,
        }
    }
}

/// `2M`, `512M`, `1G`.
pub fn size_name(kib: u64) -> String {
    if kib >= 1024 * 1024 && kib % (1024 * 1024) == 0 {
        format!("{}G", kib / (1024 * 1024))
    } else if kib >= 1024 && kib % 1024 == 0 {
        format!("{}M", kib / 1024)
    } else {
        format!("{kib}K")
    }
}

/// Picks the backing a job asked for on this host, or says why this host
/// cannot give it. `guests` is how many guests hold their RAM at the same
/// time (source and destination: 2).
pub fn resolve_backing(
    requested: Option<armfleet_protocol::MemoryBacking>,
    legacy_hugepages: bool,
    mem: &armfleet_protocol::MemoryFacts,
    memory_mib: u32,
    guests: u64,
) -> Result<(Backing, String), String> {
    use armfleet_protocol::MemoryBacking as Want;
    let requested = match (requested, legacy_hugepages) {
        (Some(r), _) => r,
        (None, true) => Want::Hugetlb,
        (None, false) => {
            return Ok((
                Backing::Anonymous,
                format!("anonymous RAM (THP {})", thp_name(&mem.thp)),
            ));
        }
    };
    let block_kib = match mem.block_size_kib() {
        Some(b) => b,
        None if mem.page_size_kib == 0 => 2048,
        None => {
            return Err(format!(
                "memory_backing={}: unknown block size for a {} KiB page size",
                requested.as_str(),
                mem.page_size_kib
            ));
        }
    };
    let block = size_name(block_kib);
    let thp_ok = matches!(mem.thp.as_str(), "always" | "madvise");
    let hugetlb = || -> Result<Backing, String> {
        if (memory_mib as u64 * 1024) % block_kib != 0 {
            return Err(format!(
                "memory_mib {memory_mib} is not a multiple of the {block} hugetlb page size"
            ));
        }
        let b = Backing::Hugetlb {
            size_kib: block_kib,
        };
        let need = b.pages_per_guest(memory_mib) * guests;
        let (total, free) = mem
            .pool(block_kib)
            .map(|p| (p.total, p.free))
            .unwrap_or((0, 0));
        if free < need {
            return Err(format!(
                "{free} free {block} hugetlb pages, {need} needed ({guests} × {memory_mib} MiB guests); e.g. echo {} > /sys/kernel/mm/hugepages/hugepages-{block_kib}kB/nr_hugepages",
                total + need - free
            ));
        }
        Ok(b)
    };
    match requested {
        Want::Hugetlb => hugetlb()
            .map(|b| (b, format!("hugetlb {block}: stage-2 blocks of {block}")))
            .map_err(|e| format!("memory_backing=hugetlb: {e}")),
        Want::Thp => {
            if thp_ok {
                Ok((
                    Backing::Anonymous,
                    format!("anonymous RAM with THP {} ({block} blocks)", mem.thp),
                ))
            } else {
                Err(format!(
                    "memory_backing=thp but transparent hugepages are {} on this host (echo madvise > /sys/kernel/mm/transparent_hugepage/enabled)",
                    thp_name(&mem.thp)
                ))
            }
        }
        Want::Block => match hugetlb() {
            Ok(b) => Ok((b, format!("block-backed: hugetlb {block}"))),
            Err(why) if thp_ok => Ok((
                Backing::Anonymous,
                format!("block-backed: anonymous RAM with THP {} ({why})", mem.thp),
            )),
            Err(why) => Err(format!(
                "memory_backing=block: this host cannot back guest RAM with {block} stage-2 blocks: {why}, and THP is {}",
                thp_name(&mem.thp)
            )),
        },
        Want::Pages => {
            if matches!(
                mem.shmem_thp.as_str(),
                "always" | "within_size" | "advise" | "force"
            ) {
                Err(format!(
                    "memory_backing=pages but shared-memory THP is '{}' on this host, which can still give blocks (echo never > /sys/kernel/mm/transparent_hugepage/shmem_enabled)",
                    mem.shmem_thp
                ))
            } else {
                Ok((
                    Backing::SharedPages,
                    "pages only (shared memory without hugepages): stage 2 cannot use blocks here"
                        .into(),
                ))
            }
        }
    }
}

fn thp_name(mode: &str) -> &str {
    if mode.is_empty() {
        "not available"
    } else {
        mode
    }
}

/// Everything that shapes one QEMU command line.
#[derive(Debug, Clone)]
pub struct VmProfile {
    pub arch: GuestArch,
    pub accel: Accel,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub backing: Backing,
    /// `-accel kvm,eager-split-size=<this>` (QEMU ≥ 8.2).
    pub eager_split_size: Option<String>,
    /// `-accel kvm,dirty-ring-size=<this>`.
    pub dirty_ring_size: Option<u32>,
    /// `gic-version=` of the `virt` machine under KVM; `None`: `host`.
    pub gic_version: Option<u8>,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub dirty_percent: u32,
    /// Dirtying threads in the guest (0: one per vCPU).
    pub dirty_threads: u32,
    /// Seed of the guest's address pattern and data.
    pub seed: u64,
    /// The guest verifies what it wrote.
    pub verify: bool,
    pub heartbeat_ms: u32,
    /// `quiet` on the guest's command line: on an emulated board every
    /// console byte is an exit its own emulated QEMU handles, and the boot
    /// log alone costs ~30 s (crash reports still print: they are above
    /// the quiet log level).
    pub quiet: bool,
}

/// Per-instance sockets and name.
#[derive(Debug, Clone)]
pub struct Instance<'a> {
    pub name: &'a str,
    pub qmp_socket: &'a Path,
    pub console_socket: &'a Path,
    /// Start as a migration destination (`-incoming defer`).
    pub incoming: bool,
}

impl VmProfile {
    /// Human-readable description of what this profile exercises.
    pub fn describe(&self) -> String {
        let what = match (self.arch, self.accel) {
            (GuestArch::Arm64, Accel::Kvm) => "arm64 KVM (exercises stage-2 dirty logging)",
            (GuestArch::Arm64, Accel::Tcg) => {
                "arm64 TCG (emulation: does NOT exercise KVM, mechanics only)"
            }
            (GuestArch::X86_64, Accel::Kvm) => "x86_64 KVM (not the arm64 bug class)",
            (GuestArch::X86_64, Accel::Tcg) => "x86_64 TCG (emulation: mechanics only)",
        };
        format!(
            "{what}; {} MiB {}, {} vCPU(s), dirty {}% by {} thread(s){}{}{}",
            self.memory_mib,
            self.backing.describe(),
            self.vcpus,
            self.dirty_percent,
            if self.dirty_threads == 0 {
                self.vcpus.max(1)
            } else {
                self.dirty_threads
            },
            if self.verify { ", verified" } else { "" },
            self.dirty_ring_size
                .map(|n| format!(", dirty ring {n}"))
                .unwrap_or_default(),
            self.eager_split_size
                .as_deref()
                .map(|s| format!(", eager-split-size={s}"))
                .unwrap_or_default()
        )
    }

    pub fn kernel_cmdline(&self) -> String {
        format!(
            "console={} panic=-1 armfleet.dirty={} armfleet.hb_ms={} armfleet.threads={} armfleet.seed={} armfleet.verify={}{}",
            self.arch.console(),
            self.dirty_percent,
            self.heartbeat_ms,
            self.dirty_threads,
            self.seed,
            u8::from(self.verify),
            if self.quiet { " quiet" } else { "" }
        )
    }

    /// The QEMU argv (without the binary).
    pub fn args(&self, inst: &Instance<'_>) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![];
        let mut push = |s: &str| a.push(OsString::from(s));
        let mem_backend = match self.backing {
            Backing::Anonymous => "",
            Backing::Hugetlb { .. } | Backing::SharedPages => ",memory-backend=mem0",
        };
        let gic = self
            .gic_version
            .map(|v| v.to_string())
            .unwrap_or_else(|| "host".into());
        match (self.arch, self.accel) {
            (GuestArch::Arm64, Accel::Kvm) => {
                push("-machine");
                push(&format!("virt,gic-version={gic}{mem_backend}"));
                push("-cpu");
                push("host");
            }
            (GuestArch::Arm64, Accel::Tcg) => {
                push("-machine");
                push(&format!("virt{mem_backend}"));
                // cortex-a57 boots faster under TCG than `max` (no PAuth emulation).
                push("-cpu");
                push("cortex-a57");
            }
            (GuestArch::X86_64, Accel::Kvm) => {
                push("-machine");
                push(&format!("pc{mem_backend}"));
                push("-cpu");
                push("host");
            }
            (GuestArch::X86_64, Accel::Tcg) => {
                push("-machine");
                push(&format!("pc{mem_backend}"));
                push("-cpu");
                push("max");
            }
        }
        push("-accel");
        match self.accel {
            Accel::Kvm => {
                let mut kvm = String::from("kvm");
                if let Some(sz) = &self.eager_split_size {
                    kvm.push_str(&format!(",eager-split-size={sz}"));
                }
                if let Some(n) = self.dirty_ring_size {
                    kvm.push_str(&format!(",dirty-ring-size={n}"));
                }
                push(&kvm);
            }
            Accel::Tcg => push("tcg"),
        }
        push("-m");
        push(&format!("{}M", self.memory_mib));
        match self.backing {
            Backing::Anonymous => {}
            Backing::Hugetlb { size_kib } => {
                push("-object");
                push(&format!(
                    "memory-backend-memfd,id=mem0,size={}M,hugetlb=on,hugetlbsize={}",
                    self.memory_mib,
                    size_name(size_kib)
                ));
            }
            Backing::SharedPages => {
                push("-object");
                push(&format!(
                    "memory-backend-memfd,id=mem0,size={}M,share=on",
                    self.memory_mib
                ));
            }
        }
        push("-smp");
        push(&self.vcpus.max(1).to_string());
        push("-name");
        push(inst.name);
        for s in [
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-monitor",
            "none",
        ] {
            push(s);
        }
        // A guest panic becomes a QMP GUEST_PANICKED event when the guest
        // kernel has the pvpanic driver. `panic=none`: QEMU only reports it;
        // the guest keeps printing its panic trace, then resets, and
        // -no-reboot turns the reset into a QEMU exit.
        push("-action");
        push("panic=none");
        push("-device");
        push(match self.arch {
            GuestArch::Arm64 => "pvpanic-pci",
            GuestArch::X86_64 => "pvpanic",
        });
        push("-qmp");
        a.push(sock_opt("unix:", inst.qmp_socket, ",server=on,wait=off"));
        let mut push = |s: &str| a.push(OsString::from(s));
        // The console is a socket the executor connects to before the guest
        // starts (wait=on), so no early output is lost; it is also the
        // control channel into the guest (fault injection).
        push("-chardev");
        a.push(sock_opt(
            "socket,id=con0,path=",
            inst.console_socket,
            ",server=on,wait=on",
        ));
        let mut push = |s: &str| a.push(OsString::from(s));
        push("-serial");
        push("chardev:con0");
        push("-kernel");
        a.push(self.kernel.clone().into_os_string());
        a.push("-initrd".into());
        a.push(self.initrd.clone().into_os_string());
        a.push("-append".into());
        a.push(self.kernel_cmdline().into());
        if inst.incoming {
            a.push("-incoming".into());
            a.push("defer".into());
        }
        a
    }
}

fn sock_opt(prefix: &str, p: &Path, suffix: &str) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(p.as_os_str());
    s.push(suffix);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prof(arch: GuestArch, accel: Accel, huge: bool) -> VmProfile {
        VmProfile {
            arch,
            accel,
            memory_mib: 256,
            vcpus: 1,
            backing: if huge {
                Backing::Hugetlb { size_kib: 2048 }
            } else {
                Backing::Anonymous
            },
            eager_split_size: Some("2M".into()),
            dirty_ring_size: None,
            gic_version: None,
            kernel: "/g/vmlinuz".into(),
            initrd: "/g/initrd.gz".into(),
            dirty_percent: 50,
            dirty_threads: 0,
            seed: 7,
            verify: true,
            heartbeat_ms: 100,
            quiet: false,
        }
    }

    fn mem(page_kib: u64, thp: &str, pools: &[(u64, u64, u64)]) -> armfleet_protocol::MemoryFacts {
        armfleet_protocol::MemoryFacts {
            page_size_kib: page_kib,
            thp: thp.into(),
            shmem_thp: "never".into(),
            hugetlb_pools: pools
                .iter()
                .map(|&(size_kib, total, free)| armfleet_protocol::HugepageInfo {
                    size_kib,
                    total,
                    free,
                })
                .collect(),
        }
    }

    #[test]
    fn block_backing_prefers_hugetlb_of_the_block_size_then_thp() {
        use armfleet_protocol::MemoryBacking::*;
        let m = mem(4, "madvise", &[(2048, 512, 512), (1048576, 0, 0)]);
        let (b, _) = resolve_backing(Some(Block), false, &m, 256, 2).unwrap();
        assert_eq!(b, Backing::Hugetlb { size_kib: 2048 });
        // Too few free pages: THP does it.
        let m = mem(4, "madvise", &[(2048, 100, 100)]);
        let (b, why) = resolve_backing(Some(Block), false, &m, 256, 2).unwrap();
        assert_eq!(b, Backing::Anonymous);
        assert!(why.contains("THP madvise"), "{why}");
        // Neither: a clear error naming both.
        let m = mem(4, "never", &[(2048, 0, 0)]);
        let e = resolve_backing(Some(Block), false, &m, 256, 2).unwrap_err();
        assert!(
            e.contains("0 free 2M hugetlb pages, 256 needed") && e.contains("THP is never"),
            "{e}"
        );
        // 64K pages: blocks are 512M, and a 256 MiB guest cannot be hugetlb-backed.
        let m = mem(64, "never", &[(524288, 8, 8)]);
        let e = resolve_backing(Some(Hugetlb), false, &m, 256, 2).unwrap_err();
        assert!(e.contains("not a multiple of the 512M"), "{e}");
        let (b, _) = resolve_backing(Some(Hugetlb), false, &m, 1024, 2).unwrap();
        assert_eq!(b, Backing::Hugetlb { size_kib: 524288 });
    }

    #[test]
    fn pages_backing_refuses_hosts_whose_shared_memory_gets_thp() {
        use armfleet_protocol::MemoryBacking::*;
        let mut m = mem(4, "always", &[]);
        assert_eq!(
            resolve_backing(Some(Pages), false, &m, 256, 2).unwrap().0,
            Backing::SharedPages
        );
        m.shmem_thp = "advise".into();
        assert!(resolve_backing(Some(Pages), false, &m, 256, 2).is_err());
        // The older spelling.
        let m = mem(4, "never", &[(2048, 0, 0)]);
        assert!(
            resolve_backing(None, true, &m, 256, 2)
                .unwrap_err()
                .contains("memory_backing=hugetlb")
        );
        assert_eq!(
            resolve_backing(None, false, &m, 256, 2).unwrap().0,
            Backing::Anonymous
        );
    }

    #[test]
    fn shared_pages_and_dirty_ring_and_gic() {
        let mut p = prof(GuestArch::Arm64, Accel::Kvm, false);
        p.backing = Backing::SharedPages;
        p.dirty_ring_size = Some(4096);
        p.gic_version = Some(3);
        p.eager_split_size = None;
        let s = joined(&p, false);
        assert!(
            s.contains("-machine virt,gic-version=3,memory-backend=mem0"),
            "{s}"
        );
        assert!(s.contains("-accel kvm,dirty-ring-size=4096"), "{s}");
        assert!(
            s.contains("memory-backend-memfd,id=mem0,size=256M,share=on"),
            "{s}"
        );
        assert!(
            s.contains("armfleet.threads=0 armfleet.seed=7 armfleet.verify=1"),
            "{s}"
        );
    }

    fn joined(p: &VmProfile, incoming: bool) -> String {
        let inst = Instance {
            name: "vm1",
            qmp_socket: Path::new("/w/q1"),
            console_socket: Path::new("/w/c1"),
            incoming,
        };
        p.args(&inst)
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn arm64_kvm_hugepages() {
        let s = joined(&prof(GuestArch::Arm64, Accel::Kvm, true), true);
        assert!(s.contains("-machine virt,gic-version=host,memory-backend=mem0 -cpu host -accel kvm,eager-split-size=2M"), "{s}");
        assert!(
            s.contains("memory-backend-memfd,id=mem0,size=256M,hugetlb=on,hugetlbsize=2M"),
            "{s}"
        );
        assert!(s.contains("-device pvpanic-pci"));
        assert!(s.ends_with("-incoming defer"));
    }

    #[test]
    fn arm64_tcg_plain() {
        let s = joined(&prof(GuestArch::Arm64, Accel::Tcg, false), false);
        assert!(
            s.contains("-machine virt -cpu cortex-a57 -accel tcg -m 256M"),
            "{s}"
        );
        assert!(!s.contains("eager-split"));
        assert!(!s.contains("-incoming"));
        assert!(s.contains("-append console=ttyAMA0 panic=-1 armfleet.dirty=50"));
    }

    #[test]
    fn x86_tcg() {
        let s = joined(&prof(GuestArch::X86_64, Accel::Tcg, false), false);
        assert!(s.contains("-machine pc -cpu max -accel tcg"), "{s}");
        assert!(s.contains("-device pvpanic "));
        assert!(s.contains("console=ttyS0"));
    }
}
