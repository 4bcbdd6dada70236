//! What the board reports about itself on every connect.

use armfleet_protocol::BoardFacts;

use armfleet_migrate_stress::ssh_board::{SshBoard, SshBoardConfig};
use armfleet_protocol::{ExecutorKind, HostKind};

use crate::{Config, ExecutorChoice};

/// The facts this agent reports: the SSH-driven board's when it drives
/// one (an unreachable board is an error: the agent does not come online
/// for a board it cannot reach), else this machine's.
pub async fn gather_for(config: &Config) -> anyhow::Result<BoardFacts> {
    match &config.ssh_board {
        Some(board) => ssh_board(board).await,
        None => {
            let choice = config.executor;
            Ok(tokio::task::spawn_blocking(move || gather(choice)).await?)
        }
    }
}

/// Probes an SSH-driven board (one SSH connection, one shell round trip).
pub async fn ssh_board(cfg: &SshBoardConfig) -> anyhow::Result<BoardFacts> {
    let board = SshBoard::connect(cfg).await?;
    let p = board.probe().await?;
    board.disconnect().await;
    let arch = match p.machine.as_str() {
        "aarch64" => "arm64".to_string(),
        other => other.to_string(),
    };
    let qemu = p
        .qemu
        .iter()
        .map(|(path, version)| armfleet_protocol::QemuBinary {
            arch: "aarch64".into(),
            path: path.clone(),
            version: version.clone(),
        })
        .collect();
    Ok(BoardFacts {
        kernel_release: p.kernel_release.clone(),
        kernel_version: p.kernel_version.clone(),
        arch,
        cpu_implementer: p.cpu_implementer.clone(),
        cpu_part: p.cpu_part.clone(),
        cores: p.cores,
        mem_total_kib: p.mem_total_kib,
        kvm: p.kvm_status(&cfg.addr()),
        qemu,
        hugepages: armfleet_protocol::HugepageInfo {
            size_kib: 2048,
            total: p.hugepages_total,
            free: p.hugepages_free,
        },
        executor: ExecutorKind::Qemu,
        build_id: None,
        host_kind: if cfg.emulated {
            HostKind::Emulated
        } else {
            HostKind::Hardware
        },
        ssh_board: Some(cfg.addr()),
        kvm_mode: p.kvm_mode.clone(),
        memory: p.memory(),
    })
}

/// The SSH-driven board's `uname -r`, waiting for it to answer (it may be
/// rebooting into a build).
pub async fn ssh_board_release(cfg: &SshBoardConfig) -> String {
    let mut logged = false;
    loop {
        match SshBoard::connect(cfg).await {
            Ok(b) => {
                if let Ok(out) = b.run("uname -r", std::time::Duration::from_secs(30)).await {
                    b.disconnect().await;
                    return out.stdout_text().trim().to_owned();
                }
                b.disconnect().await;
            }
            Err(e) => {
                if !logged {
                    tracing::warn!("waiting for the SSH-driven board: {e}");
                    logged = true;
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}

/// Kills whatever an earlier agent process left running on the board (its
/// jobs' QEMUs and directories). Only at start-up, when no job runs.
pub async fn sweep_ssh_board(cfg: &SshBoardConfig) -> anyhow::Result<()> {
    let board = SshBoard::connect(cfg).await?;
    let dir = armfleet_migrate_stress::ssh_board::shell_quote(cfg.work_dir.trim_end_matches('/'));
    let cmd = format!(
        "n=0; for f in {dir}/*/*.pid; do [ -f \"$f\" ] && kill -9 $(cat \"$f\") 2>/dev/null && n=$((n+1)); done; rm -rf {dir}/*; echo $n"
    );
    let out = board.run(&cmd, std::time::Duration::from_secs(30)).await?;
    board.disconnect().await;
    let killed = out.stdout_text().trim().parse::<u32>().unwrap_or(0);
    if killed > 0 {
        tracing::warn!(killed, board = %cfg.addr(), "killed QEMU processes an earlier agent left on the board");
    }
    Ok(())
}

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
        host_kind: if executor.is_simulated() {
            HostKind::Simulated
        } else {
            HostKind::Hardware
        },
        ssh_board: None,
        kvm_mode: None,
        memory: probe.memory,
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
