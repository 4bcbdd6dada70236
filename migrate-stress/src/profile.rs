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

/// Everything that shapes one QEMU command line.
#[derive(Debug, Clone)]
pub struct VmProfile {
    pub arch: GuestArch,
    pub accel: Accel,
    pub memory_mib: u32,
    pub vcpus: u32,
    /// Back RAM with 2 MiB hugetlb pages (memfd; no hugetlbfs mount, no
    /// files left behind).
    pub hugepages: bool,
    /// `-accel kvm,eager-split-size=<this>` (QEMU ≥ 8.2).
    pub eager_split_size: Option<String>,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub dirty_percent: u32,
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
            "{what}; {} MiB {}, {} vCPU(s), dirty {}%{}",
            self.memory_mib,
            if self.hugepages {
                "hugetlb 2M (memfd)"
            } else {
                "anonymous RAM"
            },
            self.vcpus,
            self.dirty_percent,
            self.eager_split_size
                .as_deref()
                .map(|s| format!(", eager-split-size={s}"))
                .unwrap_or_default()
        )
    }

    pub fn kernel_cmdline(&self) -> String {
        format!(
            "console={} panic=-1 armfleet.dirty={} armfleet.hb_ms={}{}",
            self.arch.console(),
            self.dirty_percent,
            self.heartbeat_ms,
            if self.quiet { " quiet" } else { "" }
        )
    }

    /// The QEMU argv (without the binary).
    pub fn args(&self, inst: &Instance<'_>) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![];
        let mut push = |s: &str| a.push(OsString::from(s));
        let mem_backend = if self.hugepages {
            ",memory-backend=mem0"
        } else {
            ""
        };
        match (self.arch, self.accel) {
            (GuestArch::Arm64, Accel::Kvm) => {
                push("-machine");
                push(&format!("virt,gic-version=host{mem_backend}"));
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
        match (self.accel, &self.eager_split_size) {
            (Accel::Kvm, Some(sz)) => push(&format!("kvm,eager-split-size={sz}")),
            (Accel::Kvm, None) => push("kvm"),
            (Accel::Tcg, _) => push("tcg"),
        }
        push("-m");
        push(&format!("{}M", self.memory_mib));
        if self.hugepages {
            push("-object");
            push(&format!(
                "memory-backend-memfd,id=mem0,size={}M,hugetlb=on,hugetlbsize=2M",
                self.memory_mib
            ));
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
            hugepages: huge,
            eager_split_size: Some("2M".into()),
            kernel: "/g/vmlinuz".into(),
            initrd: "/g/initrd.gz".into(),
            dirty_percent: 50,
            heartbeat_ms: 100,
            quiet: false,
        }
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
