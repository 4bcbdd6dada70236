//! Where a job's processes run: this machine ([`Host::Local`]) or an
//! SSH-driven board ([`Host::Ssh`]). The cycle driver is written once
//! against this; only the primitives below know the difference:
//! UNIX-socket streams (QMP, consoles), the job's scratch directory with its
//! clean-up, process spawning ([`crate::proc`]), killing, and the host
//! kernel log window ([`crate::job`]).
//!
//! Clean-up on a board never depends on the controller being alive: every
//! job holds a *dead-man switch* on the board — a shell blocked reading its
//! exec channel's stdin — that kills every QEMU of the job (their pid files)
//! and removes the job's directory as soon as that channel ends: the job
//! finished, the controller died, or the link or the board's sshd went away.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};

use crate::ssh_board::{SshBoard, shell_quote};

/// A bidirectional byte stream (a local UNIX socket or an SSH channel).
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ByteStream for T {}
pub type BoxStream = Pin<Box<dyn ByteStream>>;

#[derive(Clone)]
pub enum Host {
    Local,
    Ssh(Arc<SshBoard>),
}

/// What the controller tells a board's dead-man switch when it lets go of
/// it on purpose (anything else is the link's end).
const RELEASED: &str = "released";

/// The job's scratch directory on its host.
pub struct JobDir {
    pub path: String,
    /// The board-side clean-up, armed while this lives.
    dead_man: Option<russh::Channel<russh::client::Msg>>,
}

impl JobDir {
    pub fn join(&self, name: &str) -> String {
        format!("{}/{name}", self.path)
    }
}

impl Host {
    pub fn describe(&self) -> String {
        match self {
            Host::Local => "this machine".into(),
            Host::Ssh(b) => format!("the SSH-driven board {}", b.config().addr()),
        }
    }

    /// Timeouts grow on an emulated board: its QEMU itself runs under TCG.
    pub fn slowdown(&self) -> u32 {
        match self {
            Host::Ssh(b) if b.config().emulated => 6,
            _ => 1,
        }
    }

    /// Connects to a UNIX socket on the host, retrying until `timeout`
    /// while it does not exist yet (QEMU is still starting).
    pub async fn connect_unix(&self, path: &str, timeout: Duration) -> std::io::Result<BoxStream> {
        let deadline = Instant::now() + timeout;
        loop {
            let attempt: std::io::Result<BoxStream> = match self {
                Host::Local => tokio::net::UnixStream::connect(path)
                    .await
                    .map(|s| Box::pin(s) as BoxStream),
                Host::Ssh(b) => b
                    .open_unix(path)
                    .await
                    .map(|s| Box::pin(s) as BoxStream)
                    .map_err(std::io::Error::other),
            };
            match attempt {
                Ok(s) => return Ok(s),
                Err(e) => {
                    if Instant::now() >= deadline || matches!(self, Host::Ssh(b) if b.is_closed()) {
                        return Err(e);
                    }
                    let pause = if matches!(self, Host::Local) { 5 } else { 50 };
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }
        }
    }

    /// Makes the job's scratch directory (UNIX socket paths must stay short)
    /// and, on a board, arms its dead-man switch.
    pub async fn make_job_dir(&self, local_work_dir: &Path) -> Result<JobDir, String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "ms{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        match self {
            Host::Local => {
                std::fs::create_dir_all(local_work_dir).map_err(|e| {
                    format!("cannot create work dir {}: {e}", local_work_dir.display())
                })?;
                let dir = local_work_dir.join(name);
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir(&dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                if dir.join("q999.sock").as_os_str().len() > 100 {
                    let _ = std::fs::remove_dir(&dir);
                    return Err(format!(
                        "work dir path too long for UNIX sockets: {}",
                        dir.display()
                    ));
                }
                Ok(JobDir {
                    path: dir.display().to_string(),
                    dead_man: None,
                })
            }
            Host::Ssh(b) => {
                let dir = format!("{}/{name}", b.config().work_dir.trim_end_matches('/'));
                let q = shell_quote(&dir);
                // Blocks on stdin; when the channel ends, for whatever
                // reason, kills the job's QEMUs and removes its directory.
                // SIGPIPE is ignored so that a switch whose sshd died while
                // it was arming still cleans up. Unless the controller
                // released it (its QEMUs already reaped), it kills twice, a
                // second apart: a QEMU whose start raced the link's end
                // writes its pid file after the first pass.
                let cmd = format!(
                    "trap '' PIPE; mkdir -p {q} && echo armed && read how; \
                     kill_all() {{ for f in {q}/*.pid; do [ -f \"$f\" ] && kill -9 $(cat \"$f\") 2>/dev/null; done; }}; \
                     kill_all; [ \"$how\" = {RELEASED} ] || {{ sleep 1; kill_all; }}; \
                     [ -f {q}/disarm.sh ] && sh {q}/disarm.sh; \
                     rm -rf {q}"
                );
                let mut ch = b.spawn(&cmd).await.map_err(|e| e.to_string())?;
                // Wait for "armed" so the directory exists before QEMU starts.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                let mut seen = Vec::new();
                loop {
                    let msg = tokio::time::timeout_at(deadline, ch.wait())
                        .await
                        .map_err(|_| {
                            format!("{}: arming the job directory timed out", self.describe())
                        })?;
                    match msg {
                        Some(russh::ChannelMsg::Data { data }) => {
                            seen.extend_from_slice(&data);
                            if seen.windows(5).any(|w| w == b"armed") {
                                break;
                            }
                        }
                        Some(russh::ChannelMsg::ExtendedData { data, .. }) => {
                            seen.extend_from_slice(&data)
                        }
                        Some(_) => {}
                        None => {
                            return Err(format!(
                                "cannot create {dir} on {}: {}",
                                self.describe(),
                                String::from_utf8_lossy(&seen).trim()
                            ));
                        }
                    }
                }
                Ok(JobDir {
                    path: dir,
                    dead_man: Some(ch),
                })
            }
        }
    }

    /// Removes the job's directory (after its processes are gone).
    pub async fn remove_job_dir(&self, dir: &mut JobDir) -> Result<(), String> {
        match self {
            Host::Local => std::fs::remove_dir_all(&dir.path)
                .map_err(|e| format!("could not remove {}: {e}", dir.path)),
            Host::Ssh(_) => {
                // Releasing the switch runs its clean-up; wait for it.
                if let Some(mut ch) = dir.dead_man.take() {
                    let _ = ch.data(format!("{RELEASED}\n").as_bytes()).await;
                    let _ = ch.eof().await;
                    let _ = tokio::time::timeout(Duration::from_secs(10), async {
                        while ch.wait().await.is_some() {}
                    })
                    .await;
                }
                Ok(())
            }
        }
    }

    /// SIGKILLs these processes (process groups locally). Never blocks: on a
    /// board the kill is sent from a task, and the dead-man switch backs it.
    pub fn kill(&self, pids: &[u32]) {
        if pids.is_empty() {
            return;
        }
        match self {
            Host::Local => {
                for &pid in pids {
                    // The group id is the QEMU pid (process_group(0)).
                    unsafe {
                        libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
                    }
                }
            }
            Host::Ssh(b) => {
                let b = b.clone();
                let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
                let cmd = format!("kill -9 {} 2>/dev/null; true", list.join(" "));
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        let _ = b.run(&cmd, Duration::from_secs(10)).await;
                    });
                }
            }
        }
    }

    /// Runs a shell script on the host; its stdout.
    pub async fn run_shell(&self, script: &str) -> Result<String, String> {
        match self {
            Host::Local => tokio::process::Command::new("sh")
                .arg("-c")
                .arg(script)
                .stdin(std::process::Stdio::null())
                .output()
                .await
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .map_err(|e| format!("sh: {e}")),
            Host::Ssh(b) => b
                .run(script, Duration::from_secs(30))
                .await
                .map(|o| o.stdout_text())
                .map_err(|e| e.to_string()),
        }
    }
}
