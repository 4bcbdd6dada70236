//! QEMU processes: spawn (own process group, parent-death signal), reap,
//! kill by process group, stream stderr.

use std::collections::{HashSet, VecDeque};
use std::ffi::OsString;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use armfleet_protocol::LogStream;
use tokio::io::AsyncReadExt;
use tokio::sync::{Notify, watch};

use crate::host::Host;
use crate::job::{Finding, FindingKind, Shared};
use crate::logs::LineSplitter;

/// Live QEMU processes of one job, on its host.
pub struct Registry {
    host: Host,
    pids: Mutex<HashSet<u32>>,
    changed: Notify,
}

impl Registry {
    pub fn new(host: Host) -> Registry {
        Registry {
            host,
            pids: Mutex::new(HashSet::new()),
            changed: Notify::new(),
        }
    }

    /// SIGKILL to every live process (group).
    pub fn kill_all(&self) {
        let pids: Vec<u32> = self.pids.lock().unwrap().iter().copied().collect();
        self.host.kill(&pids);
    }

    pub fn live(&self) -> Vec<u32> {
        self.pids.lock().unwrap().iter().copied().collect()
    }

    /// Waits until every registered process was reaped.
    pub async fn wait_empty(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if self.pids.lock().unwrap().is_empty() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.pids.lock().unwrap().is_empty();
            }
        }
    }

    fn reaped(&self, pid: u32) {
        self.pids.lock().unwrap().remove(&pid);
        self.changed.notify_waiters();
    }
}

pub const ROLE_SOURCE: u8 = 1;
pub const ROLE_DEST: u8 = 2;
/// Being torn down on purpose: its exit is not a finding.
pub const ROLE_RETIRED: u8 = 3;

pub struct QemuProc {
    pub pid: u32,
    #[allow(dead_code)]
    pub name: String,
    exit: watch::Receiver<Option<String>>,
    role: Arc<AtomicU8>,
    pub stderr_tail: Arc<Mutex<VecDeque<String>>>,
    registry: Arc<Registry>,
}

/// How a process ended, as its host reported it.
struct Exit {
    desc: String,
    /// The host could not say (the SSH link went away): not the kernel's
    /// doing, so never a finding.
    link_lost: bool,
}

impl QemuProc {
    /// Spawns QEMU on the job's host with stdin/stdout null and stderr
    /// streamed as `qemu_stderr` lines prefixed with `name: `. Locally it
    /// gets its own process group and `PR_SET_PDEATHSIG` (SIGKILL), so it
    /// dies with the agent; on a board its pid goes to `pidfile`, which the
    /// job's dead-man switch kills.
    pub async fn spawn(
        host: &Host,
        binary: &Path,
        args: &[OsString],
        pidfile: &str,
        name: &str,
        role: u8,
        shared: &Arc<Shared>,
    ) -> std::io::Result<QemuProc> {
        let registry = shared.registry.clone();
        let (pid, stderr, exit) = match host {
            Host::Local => spawn_local(binary, args, shared)?,
            Host::Ssh(board) => spawn_remote(board, binary, args, pidfile, shared).await?,
        };
        let (exit_tx, exit_rx) = watch::channel(None);
        let role = Arc::new(AtomicU8::new(role));
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));

        let h = {
            let shared2 = shared.clone();
            let name2 = name.to_string();
            let tail = stderr_tail.clone();
            tokio::spawn(async move {
                let mut stderr = stderr;
                let mut split = LineSplitter::default();
                let mut handle = |line: String| stderr_line(&shared2, &name2, &tail, line);
                while let Some(data) = stderr.recv().await {
                    split.push(&data, &mut handle);
                }
                split.finish(&mut handle);
            })
        };
        shared.track(h);

        let shared2 = shared.clone();
        let name2 = name.to_string();
        let role2 = role.clone();
        let reg2 = registry.clone();
        tokio::spawn(async move {
            let Exit { desc, link_lost } = exit.await.unwrap_or(Exit {
                desc: "exit unknown".into(),
                link_lost: true,
            });
            reg2.reaped(pid);
            shared2
                .logs
                .agent(format!("{name2} (pid {pid}) exited: {desc}"));
            if role2.load(Ordering::SeqCst) == ROLE_SOURCE && !shared2.shutting_down() && !link_lost
            {
                let _ = shared2.fatal_tx.send(Finding {
                    stream: LogStream::Agent,
                    reason: format!("source QEMU {name2} exited unexpectedly ({desc})"),
                    line: format!("{name2} (pid {pid}) exited: {desc}"),
                    idx: None,
                    kind: FindingKind::SourceExited,
                });
            }
            let _ = exit_tx.send(Some(desc));
        });

        Ok(QemuProc {
            pid,
            name: name.to_string(),
            exit: exit_rx,
            role,
            stderr_tail,
            registry,
        })
    }

    pub fn set_role(&self, role: u8) {
        self.role.store(role, Ordering::SeqCst);
    }

    /// `Some(description)` once the process was reaped.
    pub fn exited(&self) -> Option<String> {
        self.exit.borrow().clone()
    }

    pub fn exit_watch(&self) -> watch::Receiver<Option<String>> {
        self.exit.clone()
    }

    /// SIGKILL to the process group, unless already reaped.
    pub fn kill(&self) {
        let live = self.registry.pids.lock().unwrap().contains(&self.pid);
        if live {
            self.registry.host.kill(&[self.pid]);
        }
    }

    /// Waits for the exit; `None` on timeout.
    pub async fn wait_exit(&self, timeout: Duration) -> Option<String> {
        let mut rx = self.exit.clone();
        tokio::time::timeout(timeout, rx.wait_for(|e| e.is_some()))
            .await
            .ok()?
            .ok()
            .and_then(|v| v.clone())
    }

    pub fn stderr_tail(&self, n: usize) -> Vec<String> {
        let t = self.stderr_tail.lock().unwrap();
        t.iter().rev().take(n).rev().cloned().collect()
    }
}

type Stderr = tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>;
type Spawned = (u32, Stderr, tokio::sync::oneshot::Receiver<Exit>);

fn spawn_local(binary: &Path, args: &[OsString], shared: &Arc<Shared>) -> std::io::Result<Spawned> {
    let parent = unsafe { libc::getpid() };
    let mut cmd = tokio::process::Command::new(binary);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let registry = &shared.registry;
    // Register under the lock before anyone could try to kill_all.
    let mut child = {
        let mut pids = registry.pids.lock().unwrap();
        // Teardown sets the flag before kill_all takes this lock: a late
        // (background) spawn either gets killed or never happens.
        if shared.shutting_down() {
            return Err(std::io::Error::other("job is shutting down"));
        }
        let child = cmd.spawn()?;
        if let Some(pid) = child.id() {
            pids.insert(pid);
        }
        child
    };
    let pid = child.id().unwrap_or(0);
    let (err_tx, err_rx) = tokio::sync::mpsc::unbounded_channel();
    if let Some(mut err) = child.stderr.take() {
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            loop {
                match err.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if err_tx.send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
    let (exit_tx, exit_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let desc = match child.wait().await {
            Ok(s) => describe_exit(s),
            Err(e) => format!("wait failed: {e}"),
        };
        let _ = exit_tx.send(Exit {
            desc,
            link_lost: false,
        });
    });
    Ok((pid, err_rx, exit_rx))
}

/// Runs QEMU on the board under its shell: the first stdout line is its
/// pid (`exec` keeps it), stderr and the exit status come back on the
/// channel.
async fn spawn_remote(
    board: &Arc<crate::ssh_board::SshBoard>,
    binary: &Path,
    args: &[OsString],
    pidfile: &str,
    shared: &Arc<Shared>,
) -> std::io::Result<Spawned> {
    use crate::ssh_board::shell_quote;
    if shared.shutting_down() {
        return Err(std::io::Error::other("job is shutting down"));
    }
    let argv: Vec<String> = std::iter::once(binary.to_string_lossy().into_owned())
        .chain(args.iter().map(|a| shell_quote(&a.to_string_lossy())))
        .collect();
    let pf = shell_quote(pidfile);
    let cmd = format!(
        "echo $$ > {pf} && echo ARMFLEET-PID $$ && exec {} </dev/null >/dev/null",
        argv.join(" ")
    );
    let mut ch = board.spawn(&cmd).await.map_err(std::io::Error::other)?;
    let mut early_err = Vec::new();
    let mut out = Vec::new();
    // How the board's shell ended, when it says so.
    let mut ended = None;
    let pid = loop {
        match tokio::time::timeout(Duration::from_secs(60), ch.wait()).await {
            Err(_) => return Err(std::io::Error::other("no pid from the board within 60 s")),
            Ok(Some(russh::ChannelMsg::Data { data })) => {
                out.extend_from_slice(&data);
                let text = String::from_utf8_lossy(&out);
                if let Some(line) = text.lines().find(|l| l.starts_with("ARMFLEET-PID ")) {
                    break line[13..].trim().parse::<u32>().map_err(|_| {
                        std::io::Error::other(format!("bad pid line from the board: {line}"))
                    })?;
                }
            }
            Ok(Some(russh::ChannelMsg::ExtendedData { data, .. })) => {
                early_err.extend_from_slice(&data)
            }
            Ok(Some(russh::ChannelMsg::ExitStatus { exit_status })) => {
                ended = Some(format!("exit status {exit_status}"))
            }
            Ok(Some(russh::ChannelMsg::ExitSignal { signal_name, .. })) => {
                ended = Some(format!("signal {signal_name:?}"))
            }
            Ok(Some(_)) => {}
            // A shell that could not exec says how it ended; a channel
            // closed without a word lost its sshd, which is not the binary's fault.
            Ok(None) if ended.is_none() => {
                return Err(std::io::Error::other(board.link_error(format!(
                    "the channel starting {} closed without an exit status",
                    binary.display()
                ))));
            }
            Ok(None) => {
                return Err(std::io::Error::other(format!(
                    "the board did not start {} ({}): {}",
                    binary.display(),
                    ended.unwrap_or_default(),
                    String::from_utf8_lossy(&early_err).trim()
                )));
            }
        }
    };
    {
        let mut pids = shared.registry.pids.lock().unwrap();
        pids.insert(pid);
        if shared.shutting_down() {
            drop(pids);
            shared.registry.host.kill(&[pid]);
        }
    }
    let (err_tx, err_rx) = tokio::sync::mpsc::unbounded_channel();
    if !early_err.is_empty() {
        let _ = err_tx.send(early_err);
    }
    let (exit_tx, exit_rx) = tokio::sync::oneshot::channel();
    let board = board.clone();
    tokio::spawn(async move {
        let mut status = None;
        while let Some(msg) = ch.wait().await {
            match msg {
                russh::ChannelMsg::ExtendedData { data, .. } => {
                    let _ = err_tx.send(data.to_vec());
                }
                russh::ChannelMsg::ExitStatus { exit_status } => {
                    status = Some(format!("exit status {exit_status}"))
                }
                russh::ChannelMsg::ExitSignal { signal_name, .. } => {
                    status = Some(format!("killed by signal {signal_name:?}"))
                }
                _ => {}
            }
        }
        let exit = match status {
            Some(desc) => Exit {
                desc,
                link_lost: false,
            },
            None => Exit {
                desc: format!(
                    "unknown: the SSH link to {} ended without an exit status",
                    board.config().addr()
                ),
                link_lost: true,
            },
        };
        let _ = exit_tx.send(exit);
    });
    Ok((pid, err_rx, exit_rx))
}

fn describe_exit(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(c) = s.code() {
        format!("exit status {c}")
    } else if let Some(sig) = s.signal() {
        format!(
            "killed by signal {sig}{}",
            if s.core_dumped() {
                " (core dumped)"
            } else {
                ""
            }
        )
    } else {
        format!("{s}")
    }
}

fn stderr_line(shared: &Arc<Shared>, name: &str, tail: &Mutex<VecDeque<String>>, line: String) {
    let text = format!("{name}: {line}");
    shared
        .logs
        .write(LogStream::QemuStderr, format!("{text}\n").into_bytes());
    let idx = shared.logs.rings.push(LogStream::QemuStderr, text.clone());
    {
        let mut t = tail.lock().unwrap();
        t.push_back(line.clone());
        if t.len() > 40 {
            t.pop_front();
        }
    }
    let reason = if line.contains("kvm run failed") {
        Some("qemu_stderr: kvm run failed".to_string())
    } else {
        (shared.detector)(LogStream::QemuStderr, &line)
    };
    if let Some(reason) = reason {
        let _ = shared.fatal_tx.send(Finding {
            stream: LogStream::QemuStderr,
            reason,
            line: text,
            idx: Some(idx),
            kind: FindingKind::Line,
        });
    }
}
