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

use crate::job::{Finding, FindingKind, Shared};
use crate::logs::LineSplitter;

/// Live QEMU process groups of one job.
#[derive(Default)]
pub struct Registry {
    pids: Mutex<HashSet<u32>>,
    changed: Notify,
}

impl Registry {
    /// SIGKILL to every live process group.
    pub fn kill_all(&self) {
        let pids = self.pids.lock().unwrap();
        for &pid in pids.iter() {
            killpg(pid);
        }
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
}

fn killpg(pid: u32) {
    // The group id is the QEMU pid (process_group(0)).
    unsafe {
        libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
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

impl QemuProc {
    /// Spawns QEMU in its own process group, with `PR_SET_PDEATHSIG`
    /// (SIGKILL) so it dies with the agent, stdin/stdout null, stderr
    /// streamed as `qemu_stderr` lines prefixed with `name: `.
    pub fn spawn(
        binary: &Path,
        args: &[OsString],
        name: &str,
        role: u8,
        shared: &Arc<Shared>,
    ) -> std::io::Result<QemuProc> {
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
        let registry = shared.registry.clone();
        // Register under the lock before anyone could try to kill_all.
        let mut child = {
            let mut pids = registry.pids.lock().unwrap();
            // Teardown sets the flag before kill_all takes this lock: a
            // late (background) spawn either gets killed or never happens.
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
        let (exit_tx, exit_rx) = watch::channel(None);
        let role = Arc::new(AtomicU8::new(role));
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));

        if let Some(mut err) = child.stderr.take() {
            let shared2 = shared.clone();
            let name2 = name.to_string();
            let tail = stderr_tail.clone();
            let h = tokio::spawn(async move {
                let mut split = LineSplitter::default();
                let mut buf = vec![0u8; 8192];
                let mut handle = |line: String| stderr_line(&shared2, &name2, &tail, line);
                loop {
                    match err.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => split.push(&buf[..n], &mut handle),
                    }
                }
                split.finish(&mut handle);
            });
            shared.track(h);
        }

        let shared2 = shared.clone();
        let name2 = name.to_string();
        let role2 = role.clone();
        let reg2 = registry.clone();
        tokio::spawn(async move {
            let st = child.wait().await;
            let desc = match st {
                Ok(s) => describe_exit(s),
                Err(e) => format!("wait failed: {e}"),
            };
            {
                let mut pids = reg2.pids.lock().unwrap();
                pids.remove(&pid);
            }
            reg2.changed.notify_waiters();
            shared2
                .logs
                .agent(format!("{name2} (pid {pid}) exited: {desc}"));
            if role2.load(Ordering::SeqCst) == ROLE_SOURCE && !shared2.shutting_down() {
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
        let pids = self.registry.pids.lock().unwrap();
        if pids.contains(&self.pid) {
            killpg(self.pid);
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
