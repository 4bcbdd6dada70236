//! `armfleet-agent check`: the board's self-test before it joins the fleet.
//!
//! Every check prints `OK` or `MISSING` with what was found and, when
//! missing, the fix. Required checks (the link to the server, the key, and
//! — unless the board is a simulated `replay` board — QEMU and KVM, and
//! room in the state dir) decide the exit status; the others (hugepages,
//! kexec, pstore) are reported as advice.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client;
use russh::keys::PrivateKeyWithHashAlg;

use crate::{Config, ExecutorChoice, keys};

#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    pub name: &'static str,
    pub ok: bool,
    pub required: bool,
    pub detail: String,
    pub fix: Option<String>,
}

impl CheckResult {
    fn ok(name: &'static str, required: bool, detail: impl Into<String>) -> CheckResult {
        CheckResult {
            name,
            ok: true,
            required,
            detail: detail.into(),
            fix: None,
        }
    }
    fn missing(
        name: &'static str,
        required: bool,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> CheckResult {
        CheckResult {
            name,
            ok: false,
            required,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Free space below which the state dir check fails (spool, QEMU scratch).
pub const MIN_FREE_BYTES: u64 = 1 << 30;

/// Runs every check; never fails itself (a failure is a `MISSING` line).
pub async fn run(config: &Config) -> Vec<CheckResult> {
    let mut out = Vec::new();
    let key = check_key(&config.key_path, &mut out);
    check_server(config, key, &mut out).await;
    let (config2, probe) = {
        let choice = config.executor;
        let probe = match &config.ssh_board {
            // A lab controller: QEMU, KVM and hugepages are the board's.
            Some(board) => match crate::facts::ssh_board(board).await {
                Ok(f) => {
                    out.push(CheckResult::ok(
                        "ssh-board",
                        true,
                        format!(
                            "{} answers with the pinned host key and accepts the controller key ({} {}, kernel {}, KVM {})",
                            board.addr(),
                            if board.emulated { "emulated" } else { "hardware" },
                            f.arch,
                            f.kernel_release,
                            f.kvm_mode.as_deref().unwrap_or("mode unknown")
                        ),
                    ));
                    Some(armfleet_migrate_stress::HostProbe {
                        kvm: f.kvm,
                        qemu: f.qemu,
                        hugepages: f.hugepages,
                        memory: f.memory,
                    })
                }
                Err(e) => {
                    out.push(CheckResult::missing(
                        "ssh-board",
                        true,
                        format!("{e:#}"),
                        "check [ssh_board] in agent.toml: host, port, user, the board's host_key, and that the controller key is in the board's authorized_keys",
                    ));
                    None
                }
            },
            None => tokio::task::spawn_blocking(armfleet_migrate_stress::probe_host)
                .await
                .ok(),
        };
        (choice, probe)
    };
    let real = config2 != ExecutorChoice::Replay;
    match probe {
        Some(probe) => {
            match probe.qemu.iter().find(|q| q.arch == "aarch64") {
                Some(q) => out.push(CheckResult::ok("qemu", real, format!("{} ({})", q.path, q.version))),
                None => out.push(CheckResult::missing(
                    "qemu",
                    real,
                    "no qemu-system-aarch64 on PATH",
                    "apt-get install qemu-system-arm (Debian/Ubuntu) or dnf install qemu-system-aarch64",
                )),
            }
            let kvm = &probe.kvm;
            if kvm.present && kvm.accessible && kvm.hardware {
                out.push(CheckResult::ok(
                    "kvm",
                    real,
                    "/dev/kvm usable (hardware KVM)",
                ));
            } else {
                let why = kvm.note.clone().unwrap_or_else(|| {
                    if !kvm.present {
                        "/dev/kvm does not exist".into()
                    } else if !kvm.accessible {
                        "/dev/kvm is not read-write for this user".into()
                    } else {
                        "KVM is not hardware-backed".into()
                    }
                });
                let fix = if !kvm.present {
                    "boot the host kernel at EL2 with CONFIG_KVM=y (check `dmesg | grep -i kvm`; on a Raspberry Pi use a 64-bit kernel)"
                } else if !kvm.accessible {
                    "run the agent as root or add its user to the `kvm` group"
                } else {
                    "run the agent on the bare-metal board, not inside a VM (or use `executor = \"replay\"` for a simulated board)"
                };
                out.push(CheckResult::missing("kvm", real, why, fix));
            }
            let h = &probe.hugepages;
            if h.total > 0 {
                out.push(CheckResult::ok(
                    "hugepages",
                    false,
                    format!("{} x {} KiB, {} free", h.total, h.size_kib, h.free),
                ));
            } else {
                out.push(CheckResult::missing(
                    "hugepages",
                    false,
                    "no hugepages reserved (plans with `hugepages = true` cannot run)",
                    "echo 1024 > /proc/sys/vm/nr_hugepages (or hugepages=1024 on the kernel command line)",
                ));
            }
        }
        None => out.push(CheckResult::missing(
            "qemu",
            real,
            "probing the host failed",
            "run `armfleet-agent facts` to see why",
        )),
    }
    out.push(check_kexec());
    out.push(check_pstore(&config.pstore_dir));
    out.push(check_disk(&config.state_dir));
    out
}

fn check_key(path: &Path, out: &mut Vec<CheckResult>) -> Option<russh::keys::PrivateKey> {
    match keys::load(path) {
        Ok(k) => {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0);
            let public = k.public_key().to_openssh().unwrap_or_default();
            if mode & 0o077 != 0 {
                out.push(CheckResult::missing(
                    "key",
                    true,
                    format!("{} is readable by others (mode {mode:o})", path.display()),
                    format!("chmod 600 {}", path.display()),
                ));
            } else {
                out.push(CheckResult::ok(
                    "key",
                    true,
                    format!("{} ({public})", path.display()),
                ));
            }
            Some(k)
        }
        Err(e) => {
            out.push(CheckResult::missing(
                "key",
                true,
                format!("{e:#}"),
                format!(
                    "armfleet-agent keygen --out {} and paste the printed line into fleet.toml",
                    path.display()
                ),
            ));
            None
        }
    }
}

struct Recorder {
    seen: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Recorder {
    type Error = russh::Error;
    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        if let russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } = key {
            *self.seen.lock().unwrap() = Some(keys::fingerprint(key));
        }
        // Judged below, so that a mismatch is reported rather than just refused.
        Ok(true)
    }
}

/// TCP reachability, the server's host key against the pin (or the TOFU
/// record), and a real public-key authentication as this board. It opens no
/// channel, so a running agent's session is never disturbed.
async fn check_server(
    config: &Config,
    key: Option<russh::keys::PrivateKey>,
    out: &mut Vec<CheckResult>,
) {
    let server = config.server.as_str();
    match tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(server),
    )
    .await
    {
        Ok(Ok(_)) => out.push(CheckResult::ok(
            "server",
            true,
            format!("{server} reachable"),
        )),
        Ok(Err(e)) => {
            out.push(CheckResult::missing("server", true, format!("{server}: {e}"), "check the address and port (armfleet serve --ssh), DNS, and firewalls between the board and the server"));
            return;
        }
        Err(_) => {
            out.push(CheckResult::missing(
                "server",
                true,
                format!("{server}: no answer within 5 s"),
                "check routing and firewalls between the board and the server",
            ));
            return;
        }
    }
    let seen = Arc::new(Mutex::new(None));
    let ssh_config = Arc::new(client::Config {
        inactivity_timeout: Some(Duration::from_secs(20)),
        ..Default::default()
    });
    let connect = client::connect(ssh_config, server, Recorder { seen: seen.clone() });
    let mut handle = match tokio::time::timeout(Duration::from_secs(15), connect).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            out.push(CheckResult::missing(
                "ssh",
                true,
                format!("SSH handshake with {server} failed: {e}"),
                "is this the armfleet server's SSH port (not sshd)?",
            ));
            return;
        }
        Err(_) => {
            out.push(CheckResult::missing(
                "ssh",
                true,
                format!("SSH handshake with {server} timed out"),
                "is this the armfleet server's SSH port?",
            ));
            return;
        }
    };
    let got = seen.lock().unwrap().clone().unwrap_or_default();
    let expected = match &config.server_key {
        Some(pin) => Some((pin.clone(), "pinned by server_key")),
        None => std::fs::read_to_string(config.state_dir.join("known_hosts"))
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    let mut p = l.split_whitespace();
                    (p.next() == Some(server)).then(|| {
                        (
                            p.next().unwrap_or_default().to_owned(),
                            "recorded in known_hosts",
                        )
                    })
                })
            }),
    };
    let host_ok = match expected {
        Some((want, how)) if want == got => {
            out.push(CheckResult::ok(
                "server-key",
                true,
                format!("{got} ({how})"),
            ));
            true
        }
        Some((want, how)) => {
            out.push(CheckResult::missing(
                "server-key",
                true,
                format!("the server presents {got}, but {want} is {how}"),
                "run `armfleet fingerprint --data-dir DATA_DIR` on the server and compare; fix server_key only if the server's key really changed",
            ));
            false
        }
        None => {
            out.push(CheckResult::ok(
                "server-key",
                false,
                format!("{got} (not pinned: the agent trusts it on first use)"),
            ));
            true
        }
    };
    let Some(key) = key else {
        out.push(CheckResult::missing(
            "auth",
            true,
            "no usable key to authenticate with",
            "fix the key first",
        ));
        return;
    };
    if !host_ok {
        out.push(CheckResult::missing(
            "auth",
            true,
            "not attempted: the server's identity is not the expected one",
            "fix server-key first",
        ));
        return;
    }
    let auth = handle
        .authenticate_publickey(
            config.board.clone(),
            PrivateKeyWithHashAlg::new(Arc::new(key), None),
        )
        .await;
    match auth {
        Ok(r) if r.success() => out.push(CheckResult::ok("auth", true, format!("the server accepts this key for board `{}`", config.board))),
        Ok(_) => out.push(CheckResult::missing(
            "auth",
            true,
            format!("the server refused this key for board `{}`", config.board),
            format!(
                "add the line of {}.pub to board `{}` in fleet.toml (key = \"ssh-ed25519 …\"), then `armfleet reload`; check the board name matches",
                config.key_path.with_extension("").display(),
                config.board
            ),
        )),
        Err(e) => out.push(CheckResult::missing("auth", true, format!("authentication failed: {e}"), "see the server's log")),
    }
    let _ = handle
        .disconnect(russh::Disconnect::ByApplication, "check done", "en")
        .await;
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    for fixed in ["/sbin", "/usr/sbin"] {
        let p = Path::new(fixed).join(name);
        if p.is_file() {
            return Some(p);
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

fn check_kexec() -> CheckResult {
    let disabled =
        std::fs::read_to_string("/proc/sys/kernel/kexec_load_disabled").map(|s| s.trim() == "1");
    match (find_on_path("kexec"), disabled) {
        (Some(p), Ok(false)) => CheckResult::ok(
            "kexec",
            false,
            format!("{} (kexec_load_disabled = 0)", p.display()),
        ),
        (Some(p), Ok(true)) => CheckResult::missing(
            "kexec",
            false,
            format!("{} present but kernel.kexec_load_disabled = 1", p.display()),
            "it cannot be re-enabled until reboot: remove `kernel.kexec_load_disabled=1` from /etc/sysctl.d and reboot",
        ),
        (Some(p), Err(_)) => CheckResult::missing(
            "kexec",
            false,
            format!(
                "{} present but the kernel has no kexec support",
                p.display()
            ),
            "build the host kernel with CONFIG_KEXEC=y / CONFIG_KEXEC_FILE=y",
        ),
        (None, _) => CheckResult::missing(
            "kexec",
            false,
            "no kexec binary",
            "apt-get install kexec-tools",
        ),
    }
}

fn check_pstore(dir: &Path) -> CheckResult {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mounted = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 2 && f[2] == "pstore" && Path::new(f[1]) == dir
    });
    let is_default = dir == Path::new(crate::settings::DEFAULT_PSTORE_DIR);
    if mounted || (!is_default && dir.is_dir()) {
        let n = crate::crash::pstore_records(dir).len();
        CheckResult::ok(
            "pstore",
            false,
            format!("{} ({n} dmesg record(s) waiting)", dir.display()),
        )
    } else {
        CheckResult::missing(
            "pstore",
            false,
            format!(
                "{} is not a mounted pstore (host crashes leave no log)",
                dir.display()
            ),
            "mount -t pstore pstore /sys/fs/pstore; reserve ramoops (ramoops.mem_address=… ramoops.mem_size=0x100000 on the command line, or an `ramoops` DT node) or use EFI pstore",
        )
    }
}

fn check_disk(state_dir: &Path) -> CheckResult {
    let mut dir = state_dir.to_path_buf();
    while !dir.exists() {
        if !dir.pop() {
            break;
        }
    }
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return CheckResult::missing(
            "disk",
            true,
            "unusable state dir path",
            "set state_dir to a plain path",
        );
    };
    // SAFETY: statvfs(3) on a NUL-terminated path with a zeroed out-struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return CheckResult::missing(
            "disk",
            true,
            format!("cannot stat {}", dir.display()),
            "create the state dir",
        );
    }
    let free = st.f_bavail as u64 * st.f_frsize as u64;
    let gib = free as f64 / (1u64 << 30) as f64;
    if free >= MIN_FREE_BYTES {
        CheckResult::ok(
            "disk",
            true,
            format!("{:.1} GiB free for {}", gib, state_dir.display()),
        )
    } else {
        CheckResult::missing(
            "disk",
            true,
            format!("only {:.2} GiB free for {}", gib, state_dir.display()),
            "free space or point state_dir at a larger filesystem (the spool and QEMU scratch need at least 1 GiB)",
        )
    }
}

/// Prints the results; returns whether every required check passed.
pub fn print(results: &[CheckResult], out: &mut dyn std::io::Write) -> bool {
    let mut all = true;
    for r in results {
        let tag = if r.ok { "  OK   " } else { "MISSING" };
        let optional = if !r.ok && !r.required {
            " (optional)"
        } else {
            ""
        };
        let _ = writeln!(out, "[{tag}] {:<10} {}{optional}", r.name, r.detail);
        if let Some(fix) = &r.fix {
            let _ = writeln!(out, "          fix: {fix}");
        }
        if !r.ok && r.required {
            all = false;
        }
    }
    let _ = writeln!(
        out,
        "{}",
        if all {
            "board ready"
        } else {
            "board NOT ready: fix the MISSING lines above"
        }
    );
    all
}
