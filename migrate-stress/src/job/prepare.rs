//! Before the first QEMU: the job's parameters checked, its host
//! probed (this machine or an SSH-driven board) and its plan made:
//! accelerator, memory backing, guest profile and timeouts.

use super::*;

pub(super) async fn prepare(
    env: &StressEnv,
    params: &MigrateCancelParams,
    logs: &Logs,
    host: &Host,
) -> Result<Plan, String> {
    let arch = GuestArch::parse(&params.guest_arch).ok_or_else(|| {
        format!(
            "invalid parameters: guest_arch '{}' (arm64 | x86_64)",
            params.guest_arch
        )
    })?;
    if params.cancel_delay_ms_min > params.cancel_delay_ms_max {
        return Err(format!(
            "invalid parameters: cancel_delay_ms_min {} > cancel_delay_ms_max {}",
            params.cancel_delay_ms_min, params.cancel_delay_ms_max
        ));
    }
    if params.memory_mib < 64 {
        return Err(format!(
            "invalid parameters: memory_mib {} < 64",
            params.memory_mib
        ));
    }

    // The stress guest where the host keeps it, unless the job names one.
    let guest_file = |given: &Option<String>, name: &str| -> PathBuf {
        given
            .as_ref()
            .map(PathBuf::from)
            .unwrap_or_else(|| match host {
                Host::Local => env.guest_dir.join(arch.dir()).join(name),
                Host::Ssh(b) => {
                    PathBuf::from(format!("{}/{}/{name}", b.config().guest_dir, arch.dir()))
                }
            })
    };
    let kernel = guest_file(&params.guest_kernel, "vmlinuz");
    let initrd = guest_file(&params.guest_initrd, "initrd.gz");
    let facts = match host {
        Host::Local => local_facts(env, arch, &kernel, &initrd)?,
        Host::Ssh(b) => board_facts(b, arch, &kernel, &initrd).await?,
    };
    let binary = facts.binary.clone();
    logs.agent(format!(
        "qemu: {} ({}) on {}",
        binary.display(),
        facts.qemu_version,
        host.describe()
    ));

    // Accelerator.
    let kvm = &facts.kvm;
    let same_arch = facts.machine == arch.qemu();
    let host_arch = &facts.machine;
    let mut accel_fallback = None;
    let accel = match params.accel.as_str() {
        "kvm" => {
            if !same_arch {
                return Err(format!(
                    "accel=kvm: a {} guest needs a {} host; this host is {host_arch}",
                    arch.dir(),
                    arch.qemu()
                ));
            }
            if !kvm.present {
                return Err(
                    "accel=kvm but /dev/kvm does not exist (KVM not enabled on this host)".into(),
                );
            }
            if !kvm.accessible {
                return Err(
                    "accel=kvm but /dev/kvm is not accessible read-write (permissions / kvm group)"
                        .into(),
                );
            }
            if !kvm.hardware {
                return Err(format!(
                    "accel=kvm but /dev/kvm is not hardware KVM: {}",
                    kvm.note.clone().unwrap_or_default()
                ));
            }
            Accel::Kvm
        }
        "tcg" => Accel::Tcg,
        "auto" => {
            if same_arch && kvm.hardware {
                logs.agent("accel=auto: KVM available, using KVM");
                Accel::Kvm
            } else {
                let why = if !same_arch {
                    format!("host is {host_arch}, guest is {}", arch.qemu())
                } else {
                    kvm.note.clone().unwrap_or_else(|| "no hardware KVM".into())
                };
                logs.agent(format!(
                    "accel=auto: using TCG ({why}) — this run does NOT exercise KVM stage-2 dirty logging"
                ));
                accel_fallback = Some(format!("accel=auto fell back to TCG: {why}"));
                Accel::Tcg
            }
        }
        other => {
            return Err(format!(
                "invalid parameters: accel '{other}' (kvm | tcg | auto)"
            ));
        }
    };
    if accel == Accel::Tcg && params.eager_split_size.is_some() {
        logs.agent("eager_split_size ignored: it is a KVM option and this run uses TCG");
    }
    if let Some(stamp) = &facts.guest_stamp {
        logs.agent(format!(
            "guest: {} ({})",
            kernel.display(),
            stamp.trim().replace('\n', ", ")
        ));
    }

    // Memory backing: source and destination hold their RAM at the same
    // time, so the host must have room for two guests.
    let (backing, why) = match crate::profile::resolve_backing(
        params.memory_backing,
        params.hugepages,
        &facts.memory,
        params.memory_mib,
        2,
    ) {
        Ok(b) => b,
        // Under TCG no stage-2 table exists: "block" changes nothing this
        // run can show, so it is not worth a lab failure (an explicit
        // hugetlb or THP request still is).
        Err(e)
            if accel == Accel::Tcg
                && params.memory_backing == Some(armfleet_protocol::MemoryBacking::Block) =>
        {
            (
                Backing::Anonymous,
                format!("{e}; this TCG run uses anonymous RAM instead"),
            )
        }
        Err(e) => return Err(format!("{e} (on {})", host.describe())),
    };
    logs.agent(format!("memory: {why}"));
    // Pre-starting the next destination needs a third guest's worth of RAM
    // at times; with hugetlb only when that many pages are free.
    let prespawn = match backing {
        Backing::Hugetlb { size_kib } => {
            let free = facts.memory.pool(size_kib).map(|p| p.free).unwrap_or(0);
            let ok = free >= 3 * backing.pages_per_guest(params.memory_mib);
            if !ok {
                logs.agent(
                    "not pre-starting destinations: fewer than 3 × guest RAM in free hugepages",
                );
            }
            ok
        }
        _ => true,
    };
    logs.environment(crate::RunEnvironment {
        host: if let Host::Ssh(b) = host {
            if b.config().emulated {
                armfleet_protocol::HostKind::Emulated
            } else {
                armfleet_protocol::HostKind::Hardware
            }
        } else {
            armfleet_protocol::HostKind::Hardware
        },
        accel: accel.as_str().into(),
        detail: facts.detail.clone(),
        fallback: accel_fallback,
    });

    let profile = VmProfile {
        arch,
        accel,
        memory_mib: params.memory_mib,
        vcpus: params.vcpus.max(1),
        backing,
        // The emulated board's QEMU (7.2) has no eager-split-size.
        eager_split_size: if accel == Accel::Kvm && host.slowdown() == 1 {
            params.eager_split_size.clone()
        } else {
            None
        },
        dirty_ring_size: params.dirty_ring_size.filter(|_| accel == Accel::Kvm),
        gic_version: params.gic_version,
        kernel,
        initrd,
        dirty_percent: params.dirty_percent.min(95),
        dirty_threads: params.dirty_threads,
        seed: params.seed,
        verify: params.verify,
        heartbeat_ms: 100 * host.slowdown(),
        quiet: host.slowdown() > 1,
    };
    logs.agent(format!("profile: {}", profile.describe()));
    let boot_timeout = match (accel, arch) {
        (Accel::Kvm, _) => Duration::from_secs(60),
        (Accel::Tcg, GuestArch::Arm64) => Duration::from_secs(90),
        (Accel::Tcg, GuestArch::X86_64) => Duration::from_secs(150),
    };
    let slow = host.slowdown();
    Ok(Plan {
        binary,
        profile,
        boot_timeout: boot_timeout * slow,
        progress_timeout: Duration::from_secs(15) * slow,
        qmp_timeout: Duration::from_secs(10) * slow,
        prespawn,
    })
}

/// What a job needs to know about its host before the first QEMU.
struct JobHostFacts {
    binary: PathBuf,
    qemu_version: String,
    /// `uname -m` of the host the guests run on.
    machine: String,
    kvm: armfleet_protocol::KvmStatus,
    memory: armfleet_protocol::MemoryFacts,
    guest_stamp: Option<String>,
    /// Where the job ran, in words (kernel, KVM mode).
    detail: String,
}

fn local_facts(
    env: &StressEnv,
    arch: GuestArch,
    kernel: &Path,
    initrd: &Path,
) -> Result<JobHostFacts, String> {
    let qemu_name = format!("qemu-system-{}", arch.qemu());
    let binary = env
        .qemu_binary
        .clone()
        .or_else(|| probe::find_qemu(arch.qemu()))
        .ok_or_else(|| {
            format!(
                "{qemu_name} not installed (not in PATH; install qemu-system-{})",
                if arch == GuestArch::Arm64 {
                    "arm"
                } else {
                    "x86"
                }
            )
        })?;
    if !probe::is_executable(&binary) {
        return Err(format!(
            "QEMU binary {} ({qemu_name}) does not exist or is not executable",
            binary.display()
        ));
    }
    for p in [kernel, initrd] {
        if !p.is_file() {
            return Err(format!(
                "guest image missing: {} — run `agent/guest/build.sh {}` (as root; ARMFLEET_GUEST_DIR={})",
                p.display(),
                arch.dir(),
                env.guest_dir.display()
            ));
        }
    }
    Ok(JobHostFacts {
        qemu_version: probe::qemu_version(&binary).unwrap_or_else(|| "unknown version".into()),
        binary,
        machine: std::env::consts::ARCH.to_string(),
        kvm: probe::probe_kvm(),
        memory: probe::memory_facts(),
        guest_stamp: std::fs::read_to_string(env.guest_dir.join(arch.dir()).join("stamp")).ok(),
        detail: format!(
            "this machine ({}, kernel {})",
            std::env::consts::ARCH,
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
        ),
    })
}

async fn board_facts(
    board: &crate::ssh_board::SshBoard,
    arch: GuestArch,
    kernel: &Path,
    initrd: &Path,
) -> Result<JobHostFacts, String> {
    use crate::ssh_board::shell_quote;
    let p = board.probe().await.map_err(|e| e.to_string())?;
    let where_ = format!("the board {}", board.config().addr());
    let (binary, qemu_version) = p.qemu.clone().ok_or_else(|| {
        format!(
            "qemu-system-{} is not installed on {where_} (not in its PATH)",
            arch.qemu()
        )
    })?;
    let check = format!(
        "for f in {} {}; do [ -f \"$f\" ] || echo \"missing $f\"; done; true",
        shell_quote(&kernel.to_string_lossy()),
        shell_quote(&initrd.to_string_lossy())
    );
    let out = board
        .run(&check, Duration::from_secs(20))
        .await
        .map_err(|e| e.to_string())?;
    let missing = out.stdout_text();
    if !missing.trim().is_empty() {
        return Err(format!(
            "guest image missing on {where_}: {} (the board's `guest_dir` must hold {}/vmlinuz and initrd.gz)",
            missing.trim().replace('\n', ", "),
            arch.dir()
        ));
    }
    let kvm = p.kvm_status(&board.config().addr());
    let mode = p
        .kvm_mode
        .clone()
        .unwrap_or_else(|| "KVM mode unknown".into());
    Ok(JobHostFacts {
        binary: PathBuf::from(binary),
        qemu_version,
        machine: p.machine.clone(),
        kvm,
        memory: p.memory(),
        guest_stamp: None,
        detail: format!(
            "{}{} ({}, kernel {}, {})",
            if board.config().emulated {
                "emulated arm64 board "
            } else {
                "SSH-driven board "
            },
            board.config().addr(),
            p.machine,
            p.kernel_release,
            mode
        ),
    })
}
