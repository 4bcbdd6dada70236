//! The armfleet agent. `link` owns the connection to the server, `runner`
//! turns a job into protocol messages, `replay` and the QEMU executor
//! (crate `armfleet-migrate-stress`) do the work.

pub mod boot;
pub mod check;
pub mod crash;
pub mod facts;
pub mod keys;
pub mod link;
pub mod replay;
pub mod runner;
pub mod settings;
pub mod spool;
pub mod vboard;

use std::path::PathBuf;

use armfleet_protocol::ExecutorKind;

#[derive(Debug, Clone)]
pub struct Config {
    pub server: String,
    pub board: String,
    pub key_path: PathBuf,
    pub server_key: Option<String>,
    pub state_dir: PathBuf,
    pub executor: ExecutorChoice,
    /// Where the kernel's pstore records are (`/sys/fs/pstore`).
    pub pstore_dir: PathBuf,
    /// Read `journalctl -k -b -1` after a reboot when pstore has nothing.
    pub journal: bool,
    /// How builds are booted (None: auto, see [`boot::BootMethod`]).
    pub boot_method: Option<boot::BootMethod>,
    pub boot: boot::BootSettings,
    /// Drive this SSH-driven board instead of running guests here.
    pub ssh_board: Option<armfleet_migrate_stress::ssh_board::SshBoardConfig>,
}

/// What the operator asked for; resolved against the host by [`facts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutorChoice {
    Auto,
    Qemu,
    Replay,
}

impl ExecutorChoice {
    pub fn parse(s: &str) -> anyhow::Result<ExecutorChoice> {
        match s {
            "auto" => Ok(ExecutorChoice::Auto),
            "qemu" => Ok(ExecutorChoice::Qemu),
            "replay" => Ok(ExecutorChoice::Replay),
            other => anyhow::bail!("unknown executor `{other}` (auto, qemu or replay)"),
        }
    }

    /// `auto` picks real QEMU when the arm64 QEMU and the built guest exist.
    pub fn resolve(self, probe: &armfleet_migrate_stress::HostProbe) -> ExecutorKind {
        match self {
            ExecutorChoice::Qemu => ExecutorKind::Qemu,
            ExecutorChoice::Replay => ExecutorKind::Replay,
            ExecutorChoice::Auto => {
                let qemu = probe.qemu.iter().any(|q| q.arch == "aarch64");
                let guest = armfleet_migrate_stress::StressEnv::default_guest_dir().join("arm64");
                if qemu && guest.join("vmlinuz").is_file() && guest.join("initrd.gz").is_file() {
                    ExecutorKind::Qemu
                } else {
                    ExecutorKind::Replay
                }
            }
        }
    }
}
