//! A board reached over SSH whose `sshd` a test can kill: this machine
//! behind a private OpenSSH server (its own port, host key and
//! `authorized_keys`), driven by a controller agent that runs real arm64
//! stress guests (QEMU, TCG) there. Used by the sshd-fault test and by the
//! chaos soak's sshd faults.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use armfleet_migrate_stress::ssh_board::SshBoardConfig;

use super::skip_loudly;

const SSHD: &str = "/usr/sbin/sshd";

/// Whether this machine can host the board: QEMU, the arm64 guest, sshd
/// (else says loudly why not).
pub fn ready() -> bool {
    let guest = armfleet_migrate_stress::StressEnv::default_guest_dir().join("arm64");
    if armfleet_migrate_stress::probe::find_qemu("aarch64").is_none() {
        return skip_loudly("qemu-system-aarch64 is not installed".into());
    }
    if !guest.join("vmlinuz").is_file() {
        return skip_loudly(format!(
            "no guest in {} (agent/guest/build.sh arm64)",
            guest.display()
        ));
    }
    sshd_ready()
}

/// Whether OpenSSH's sshd is here (else says loudly why not).
pub fn sshd_ready() -> bool {
    if !Path::new(SSHD).is_file() {
        return skip_loudly(format!(
            "{SSHD} is missing (Debian package openssh-server; scripts/test installs it)"
        ));
    }
    true
}

/// A private OpenSSH server on loopback: the board's sshd.
pub struct BoardSshd {
    config: PathBuf,
    log: PathBuf,
    listener: Option<Child>,
    pub port: u16,
    host_key_line: String,
    /// `/run/sshd` (privilege separation) when this test made it.
    made_run_dir: bool,
}

impl BoardSshd {
    pub fn start(dir: &Path, authorized: &str) -> BoardSshd {
        let host_key = dir.join("ssh_host_ed25519_key");
        let ok = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&host_key)
            .status()
            .expect("ssh-keygen (openssh-client)");
        assert!(ok.success(), "ssh-keygen failed");
        let host_key_line = std::fs::read_to_string(host_key.with_extension("pub"))
            .unwrap()
            .trim()
            .to_owned();
        let authorized_keys = dir.join("authorized_keys");
        std::fs::write(&authorized_keys, format!("{authorized}\n")).unwrap();
        std::fs::set_permissions(&authorized_keys, std::fs::Permissions::from_mode(0o600)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PidFile {}\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 AllowStreamLocalForwarding yes\nMaxSessions 64\nMaxStartups 64\nLogLevel ERROR\n",
                host_key.display(),
                authorized_keys.display(),
                dir.join("sshd.pid").display()
            ),
        )
        .unwrap();
        let run_dir = Path::new("/run/sshd");
        let made_run_dir = !run_dir.exists();
        if made_run_dir {
            std::fs::create_dir_all(run_dir).unwrap();
        }
        let mut sshd = BoardSshd {
            config,
            log: dir.join("sshd.log"),
            listener: None,
            port,
            host_key_line,
            made_run_dir,
        };
        sshd.listen();
        sshd
    }

    pub fn listen(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sshd");
        self.listener = Some(child);
        // As a board's init would: the next job starts only once sshd
        // accepts again (else it fails on "connection refused" before it runs).
        // Waiting blocks, so the runtime (multi-threaded, as every caller's
        // is) moves its other tasks off this thread meanwhile.
        let deadline = Instant::now() + Duration::from_secs(20);
        tokio::task::block_in_place(|| {
            while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "sshd did not listen on {} within 20 s; see {}",
                    self.port,
                    self.log.display()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        });
    }

    /// SIGKILL to every sshd of this server: the listener and every
    /// session under it (their shells and QEMUs are left to the board's
    /// own clean-up, as after a real crash). Returns how many died.
    pub fn kill9_all(&mut self) -> usize {
        let Some(mut listener) = self.listener.take() else {
            return 0;
        };
        let root = listener.id();
        let mut doomed: Vec<u32> = descendants(root)
            .into_iter()
            .filter(|pid| comm(*pid).as_deref() == Some("sshd"))
            .collect();
        doomed.push(root);
        for pid in &doomed {
            unsafe {
                libc::kill(*pid as i32, libc::SIGKILL);
            }
        }
        let _ = listener.wait();
        doomed.len()
    }

    /// How a controller holding `controller_key` reaches this board, its
    /// jobs' files under `work_dir`.
    pub fn ssh_config(&self, controller_key: &Path, work_dir: &Path) -> SshBoardConfig {
        SshBoardConfig {
            host: "127.0.0.1".into(),
            port: self.port,
            user: "root".into(),
            host_key: self.host_key_line.clone(),
            key: controller_key.to_owned(),
            guest_dir: armfleet_migrate_stress::StressEnv::default_guest_dir()
                .display()
                .to_string(),
            work_dir: work_dir.display().to_string(),
            emulated: false,
        }
    }

    /// [`BoardSshd::ssh_config`] as the controller's agent.toml has it.
    pub fn ssh_board_toml(&self, controller_key: &Path, work_dir: &Path) -> String {
        super::ssh_board_toml(&self.ssh_config(controller_key, work_dir))
    }
}

impl Drop for BoardSshd {
    fn drop(&mut self) {
        self.kill9_all();
        if self.made_run_dir {
            let _ = std::fs::remove_dir("/run/sshd");
        }
    }
}

fn proc_stat(pid: u32) -> Option<(String, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    let ppid = stat[close + 2..].split_whitespace().nth(1)?.parse().ok()?;
    Some((comm, ppid))
}

fn comm(pid: u32) -> Option<String> {
    proc_stat(pid).map(|(c, _)| c)
}

/// Every process below `root`.
fn descendants(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Some((_, ppid)) = proc_stat(pid) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or_default() {
            out.push(c);
            todo.push(c);
        }
    }
    out
}

/// Every path under `dir`.
fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walkdir(&path));
        }
        out.push(path);
    }
    out
}

/// QEMUs whose command line names `work_dir`: the jobs' own.
pub fn qemus_under(work_dir: &Path) -> usize {
    let needle = work_dir.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            comm(*pid).is_some_and(|c| c.starts_with("qemu-system"))
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                    .unwrap_or(false)
        })
        .count()
}

/// What ended jobs left on the board under `work_dir` (their QEMUs, their
/// files), once nothing is left or `within` has passed: the board's
/// dead-man switch cleans up a moment after the link drops.
pub async fn leftovers(work_dir: &Path, within: Duration) -> (usize, Vec<PathBuf>) {
    let deadline = Instant::now() + within;
    loop {
        let (qemus, files) = (qemus_under(work_dir), walkdir(work_dir));
        if (qemus == 0 && files.is_empty()) || Instant::now() >= deadline {
            return (qemus, files);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
