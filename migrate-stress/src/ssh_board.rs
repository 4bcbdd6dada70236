//! An SSH-driven board: a board that runs only `sshd` and QEMU (a locked-down
//! image, a board reflashed per job, the virtual arm64 board), driven from a
//! lab controller over one SSH connection per job.
//!
//! Everything the executor needs from "the host" has an SSH form here:
//! commands run to completion ([`SshBoard::run`]), long-running processes
//! whose stderr and exit status come back over their exec channel
//! ([`SshBoard::spawn`]), and QEMU's QMP and console UNIX sockets reached
//! with OpenSSH `direct-streamlocal@openssh.com` channels
//! ([`SshBoard::open_unix`]).
//!
//! The board's host key is always pinned: an unknown or changed key is
//! refused, never trusted on first use.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey};
use russh::{ChannelMsg, ChannelStream};
use serde::{Deserialize, Serialize};

/// How the controller reaches one SSH-driven board.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshBoardConfig {
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default = "default_user")]
    pub user: String,
    /// The board's host key, pinned: an OpenSSH public key line
    /// (`ssh-ed25519 AAAA…`) or its `SHA256:…` fingerprint.
    pub host_key: String,
    /// The controller's private key (OpenSSH format) that the board's
    /// `authorized_keys` lists.
    pub key: PathBuf,
    /// Where the board keeps the stress guest (`<dir>/arm64/vmlinuz`,
    /// `<dir>/arm64/initrd.gz`).
    #[serde(default = "default_guest_dir")]
    pub guest_dir: String,
    /// Per-job scratch directories on the board (sockets, pid files).
    #[serde(default = "default_work_dir")]
    pub work_dir: String,
    /// `true` for an emulated board (the virtual arm64 board): its results
    /// are labelled *emulated*, never *hardware*.
    #[serde(default)]
    pub emulated: bool,
}

fn default_port() -> u16 {
    22
}
fn default_user() -> String {
    "root".into()
}
fn default_guest_dir() -> String {
    "/guest".into()
}
fn default_work_dir() -> String {
    "/run/armfleet".into()
}

impl SshBoardConfig {
    pub fn addr(&self) -> String {
        format!("{}@{}:{}", self.user, self.host, self.port)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SshBoardError {
    #[error("cannot reach the board at {addr}: {msg}")]
    Connect { addr: String, msg: String },
    #[error(
        "BOARD HOST KEY MISMATCH for {addr}: pinned {expected}, the board offered {got}. \
         Refusing to drive it (a different board, or its key changed: update `host_key`)"
    )]
    HostKey {
        addr: String,
        expected: String,
        got: String,
    },
    #[error(
        "the board at {addr} refused the controller key {fingerprint} for user `{user}` (is it in the board's authorized_keys?)"
    )]
    Auth {
        addr: String,
        user: String,
        fingerprint: String,
    },
    #[error("cannot load the controller key {path}: {msg}")]
    Key { path: String, msg: String },
    #[error("invalid pinned host key `{0}` (an OpenSSH public key line or a SHA256:… fingerprint)")]
    BadPin(String),
    #[error("the SSH link to the board at {addr} is gone: {msg}")]
    Link { addr: String, msg: String },
    #[error("`{cmd}` on the board timed out after {secs} s")]
    Timeout { cmd: String, secs: u64 },
}

/// The pinned host key, as a fingerprint.
fn pinned_fingerprint(pin: &str) -> Result<String, SshBoardError> {
    let pin = pin.trim();
    if pin.starts_with("SHA256:") {
        return Ok(pin.to_string());
    }
    let key = PublicKey::from_openssh(pin).map_err(|_| SshBoardError::BadPin(pin.into()))?;
    Ok(key.fingerprint(HashAlg::Sha256).to_string())
}

struct Pinning {
    expected: String,
    offered: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Pinning {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            return Ok(false);
        };
        let got = key.fingerprint(HashAlg::Sha256).to_string();
        let ok = got == self.expected;
        *self.offered.lock().unwrap() = Some(got);
        Ok(ok)
    }
}

/// What a command run to completion left behind.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// `None`: killed by a signal.
    pub status: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_string()
    }
}

/// One authenticated SSH connection to a board.
pub struct SshBoard {
    config: SshBoardConfig,
    handle: client::Handle<Pinning>,
}

impl SshBoard {
    /// Dials the board, checks its pinned host key and authenticates with
    /// the controller's key.
    pub async fn connect(config: &SshBoardConfig) -> Result<SshBoard, SshBoardError> {
        let addr = config.addr();
        let expected = pinned_fingerprint(&config.host_key)?;
        let key =
            russh::keys::load_secret_key(&config.key, None).map_err(|e| SshBoardError::Key {
                path: config.key.display().to_string(),
                msg: e.to_string(),
            })?;
        let offered = Arc::new(Mutex::new(None));
        let ssh_config = Arc::new(client::Config {
            inactivity_timeout: None,
            // A board that stops answering (sshd killed, link cut) is found
            // within ~15 s even when no channel is busy.
            keepalive_interval: Some(Duration::from_secs(5)),
            keepalive_max: 3,
            nodelay: true,
            ..Default::default()
        });
        let handler = Pinning {
            expected: expected.clone(),
            offered: offered.clone(),
        };
        let connect = client::connect(ssh_config, (config.host.as_str(), config.port), handler);
        let mut handle = match tokio::time::timeout(Duration::from_secs(30), connect).await {
            Err(_) => {
                return Err(SshBoardError::Connect {
                    addr,
                    msg: "SSH handshake timed out after 30 s".into(),
                });
            }
            Ok(Err(e)) => {
                if let Some(got) = offered.lock().unwrap().clone()
                    && got != expected
                {
                    return Err(SshBoardError::HostKey {
                        addr,
                        expected,
                        got,
                    });
                }
                return Err(SshBoardError::Connect {
                    addr,
                    msg: e.to_string(),
                });
            }
            Ok(Ok(h)) => h,
        };
        let fingerprint = key.public_key().fingerprint(HashAlg::Sha256).to_string();
        let hash = handle
            .best_supported_rsa_hash()
            .await
            .ok()
            .flatten()
            .flatten();
        let auth = handle
            .authenticate_publickey(
                config.user.clone(),
                PrivateKeyWithHashAlg::new(Arc::new(key), hash),
            )
            .await
            .map_err(|e| SshBoardError::Connect {
                addr: addr.clone(),
                msg: format!("authentication: {e}"),
            })?;
        if !auth.success() {
            return Err(SshBoardError::Auth {
                addr,
                user: config.user.clone(),
                fingerprint,
            });
        }
        Ok(SshBoard {
            config: config.clone(),
            handle,
        })
    }

    pub fn config(&self) -> &SshBoardConfig {
        &self.config
    }

    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// The link to this board is gone; `e` says where that showed.
    pub fn link_error(&self, e: impl std::fmt::Display) -> SshBoardError {
        SshBoardError::Link {
            addr: self.config.addr(),
            msg: e.to_string(),
        }
    }

    /// When this link is gone, why a job failed is the link, whatever step
    /// met it (a QMP socket closing, a QEMU not starting): `reason` told
    /// that way, unless it says so already. `None`: `reason` stands.
    pub fn blame_lost_link(&self, reason: &str) -> Option<String> {
        if !self.is_closed() {
            return None;
        }
        let gone = self.link_error("").to_string();
        let gone = gone.trim_end_matches(": ");
        (!reason.contains(gone)).then(|| format!("{gone} ({reason})"))
    }

    /// Opens an exec channel running `cmd` under the board's shell.
    pub async fn spawn(&self, cmd: &str) -> Result<russh::Channel<client::Msg>, SshBoardError> {
        let ch = self
            .handle
            .channel_open_session()
            .await
            .map_err(|e| self.link_error(e))?;
        ch.exec(true, cmd).await.map_err(|e| self.link_error(e))?;
        Ok(ch)
    }

    /// Runs `cmd` to completion and collects its output.
    pub async fn run(&self, cmd: &str, timeout: Duration) -> Result<Output, SshBoardError> {
        let work = async {
            let mut ch = self.spawn(cmd).await?;
            let mut out = Output::default();
            let mut signalled = false;
            while let Some(msg) = ch.wait().await {
                match msg {
                    ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
                    ChannelMsg::ExtendedData { data, .. } => out.stderr.extend_from_slice(&data),
                    ChannelMsg::ExitStatus { exit_status } => out.status = Some(exit_status),
                    ChannelMsg::ExitSignal { .. } => signalled = true,
                    _ => {}
                }
            }
            // sshd reports how every command ended; a channel that closes
            // without saying so lost its sshd, and half an output read as a
            // whole one would misreport the board (a QEMU "not installed").
            if out.status.is_none() && !signalled {
                return Err(self.link_error(format!(
                    "`{}` ended without an exit status",
                    cmd.trim().lines().next().unwrap_or_default()
                )));
            }
            Ok(out)
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(SshBoardError::Timeout {
                cmd: cmd.chars().take(80).collect(),
                secs: timeout.as_secs(),
            }),
        }
    }

    /// A byte stream to a UNIX socket on the board (OpenSSH streamlocal
    /// forwarding).
    pub async fn open_unix(&self, path: &str) -> Result<ChannelStream<client::Msg>, SshBoardError> {
        let ch = self
            .handle
            .channel_open_direct_streamlocal(path)
            .await
            .map_err(|e| self.link_error(format!("streamlocal {path}: {e}")))?;
        Ok(ch.into_stream())
    }

    /// Closes the connection (the board's dead-man switches fire).
    pub async fn disconnect(&self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "job done", "en")
            .await;
    }
}

/// Quotes one word for the board's POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// What the board says about itself: the facts a job and the server need.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BoardProbe {
    /// `uname -m`: `aarch64`, …
    pub machine: String,
    pub kernel_release: String,
    pub kernel_version: String,
    pub kvm_present: bool,
    pub cpu_implementer: Option<String>,
    pub cpu_part: Option<String>,
    pub cores: u32,
    pub mem_total_kib: u64,
    pub page_size: Option<u64>,
    pub thp: Option<String>,
    pub shmem_thp: Option<String>,
    /// Every hugetlb pool: size in KiB, total, free.
    pub pools: Vec<armfleet_protocol::HugepageInfo>,
    pub hugepages_total: u64,
    pub hugepages_free: u64,
    /// `qemu-system-aarch64` on the board's PATH, and its version line.
    pub qemu: Option<(String, String)>,
    /// Whether the KVM line of the boot log says VHE or nVHE.
    pub kvm_mode: Option<String>,
}

/// The memory facts, as `key=value` lines: the same script runs on an
/// SSH-driven board and on the agent's own host ([`crate::probe`]).
macro_rules! memory_script {
    () => {
        r#"
grep '^HugePages_Total:' /proc/meminfo | awk '{print "huge_total=" $2}'
grep '^HugePages_Free:' /proc/meminfo | awk '{print "huge_free=" $2}'
grep '^KernelPageSize:' /proc/self/smaps 2>/dev/null | head -n1 | awk '{print "pagekib=" $2}'
[ -r /sys/kernel/mm/transparent_hugepage/enabled ] && echo "thp=$(cat /sys/kernel/mm/transparent_hugepage/enabled)"
[ -r /sys/kernel/mm/transparent_hugepage/shmem_enabled ] && echo "shmem_thp=$(cat /sys/kernel/mm/transparent_hugepage/shmem_enabled)"
for d in /sys/kernel/mm/hugepages/hugepages-*kB; do [ -d "$d" ] && echo "pool=${d##*-} $(cat "$d/nr_hugepages") $(cat "$d/free_hugepages")"; done
true
"#
    };
}

/// The memory part of the probe, for hosts probed without SSH.
pub const MEMORY_SCRIPT: &str = memory_script!();

/// One shell script, one round trip: every fact as `key=value`.
const PROBE_SCRIPT: &str = concat!(
    r#"
echo "machine=$(uname -m)"
echo "release=$(uname -r)"
echo "version=$(uname -v)"
[ -c /dev/kvm ] && echo kvm=1
grep -m1 '^CPU implementer' /proc/cpuinfo | sed 's/.*: */implementer=/'
grep -m1 '^CPU part' /proc/cpuinfo | sed 's/.*: */part=/'
echo "cores=$(grep -c '^processor' /proc/cpuinfo)"
grep '^MemTotal:' /proc/meminfo | awk '{print "memkib=" $2}'
q=$(command -v qemu-system-aarch64) && echo "qemu=$q" && echo "qemu_version=$($q --version 2>/dev/null | head -n1)"
m=$(dmesg 2>/dev/null | grep -o 'kvm \[1\]: [a-zA-Z]* mode initialized' | head -n1) && echo "kvm_mode=$m"
"#,
    memory_script!()
);

impl BoardProbe {
    pub fn memory(&self) -> armfleet_protocol::MemoryFacts {
        armfleet_protocol::MemoryFacts {
            page_size_kib: self.page_size.map(|b| b / 1024).unwrap_or(0),
            thp: self.thp.clone().unwrap_or_default(),
            shmem_thp: self.shmem_thp.clone().unwrap_or_default(),
            hugetlb_pools: self.pools.clone(),
        }
    }
    /// KVM as the agent reports it: the board's `/dev/kvm`, usable for
    /// arm64 guests when the board itself is arm64.
    pub fn kvm_status(&self, addr: &str) -> armfleet_protocol::KvmStatus {
        armfleet_protocol::KvmStatus {
            present: self.kvm_present,
            accessible: self.kvm_present,
            hardware: self.kvm_present && self.machine == "aarch64",
            note: (!self.kvm_present)
                .then(|| format!("/dev/kvm does not exist on the board {addr}")),
        }
    }
}

impl SshBoard {
    pub async fn probe(&self) -> Result<BoardProbe, SshBoardError> {
        let out = self.run(PROBE_SCRIPT, Duration::from_secs(30)).await?;
        Ok(parse_probe(&out.stdout_text()))
    }
}

/// "always [madvise] never": the bracketed word is the mode.
fn selected_mode(v: &str) -> String {
    v.split_whitespace()
        .find(|w| w.starts_with('['))
        .map(|w| w.trim_matches(|c| c == '[' || c == ']').to_string())
        .unwrap_or_else(|| v.into())
}

pub fn parse_probe(text: &str) -> BoardProbe {
    let mut p = BoardProbe {
        cores: 1,
        ..Default::default()
    };
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim();
        match k {
            "machine" => p.machine = v.into(),
            "release" => p.kernel_release = v.into(),
            "version" => p.kernel_version = v.into(),
            "kvm" => p.kvm_present = true,
            "implementer" => p.cpu_implementer = Some(v.into()),
            "part" => p.cpu_part = Some(v.into()),
            "cores" => p.cores = v.parse().unwrap_or(1).max(1),
            "memkib" => p.mem_total_kib = v.parse().unwrap_or(0),
            "huge_total" => p.hugepages_total = v.parse().unwrap_or(0),
            "huge_free" => p.hugepages_free = v.parse().unwrap_or(0),
            "pagekib" => p.page_size = v.parse::<u64>().ok().map(|k| k * 1024),
            "thp" => p.thp = Some(selected_mode(v)),
            "shmem_thp" => p.shmem_thp = Some(selected_mode(v)),
            "pool" => {
                // "2048kB 16 12": size, total, free.
                let mut w = v.split_whitespace();
                let size = w.next().and_then(|s| s.trim_end_matches("kB").parse().ok());
                let total = w.next().and_then(|s| s.parse().ok());
                let free = w.next().and_then(|s| s.parse().ok());
                if let (Some(size_kib), Some(total), Some(free)) = (size, total, free) {
                    p.pools.push(armfleet_protocol::HugepageInfo {
                        size_kib,
                        total,
                        free,
                    });
                }
            }
            "qemu" => p.qemu = Some((v.into(), String::new())),
            "qemu_version" => {
                if let Some(q) = &mut p.qemu {
                    q.1 = v.into();
                }
            }
            "kvm_mode" => {
                p.kvm_mode = Some(
                    if v.contains("nVHE") || v.contains("Hyp") {
                        "nvhe"
                    } else {
                        "vhe"
                    }
                    .into(),
                )
            }
            _ => {}
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_output_parses() {
        let p = parse_probe(
            "machine=aarch64\nrelease=6.1.0-28-arm64\nkvm=1\nimplementer=0x41\npart=0xd0c\ncores=2\nmemkib=3000000\nhuge_total=16\nhuge_free=12\npagekib=4\nthp=always [madvise] never\nqemu=/usr/bin/qemu-system-aarch64\nqemu_version=QEMU emulator version 7.2.15\nkvm_mode=kvm [1]: Hyp mode initialized\n",
        );
        assert_eq!(p.machine, "aarch64");
        assert!(p.kvm_present);
        assert_eq!(p.page_size, Some(4096));
        assert_eq!(p.thp.as_deref(), Some("madvise"));
        assert_eq!(p.hugepages_free, 12);
        assert_eq!(p.qemu.as_ref().unwrap().1, "QEMU emulator version 7.2.15");
        assert_eq!(p.kvm_mode.as_deref(), Some("nvhe"));
        assert_eq!(p.cpu_part.as_deref(), Some("0xd0c"));
    }

    #[test]
    fn pins_are_fingerprints_or_key_lines() {
        assert_eq!(
            pinned_fingerprint(" SHA256:abc ").unwrap(),
            "SHA256:abc".to_string()
        );
        assert!(matches!(
            pinned_fingerprint("ssh-ed25519 garbage"),
            Err(SshBoardError::BadPin(_))
        ));
    }
}
