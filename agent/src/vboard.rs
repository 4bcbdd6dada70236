//! The virtual arm64 board: an emulated arm64 host (QEMU TCG with
//! `virtualization=on`, so its kernel runs at EL2 with real KVM/arm64) that
//! runs only `sshd` and `qemu-system-aarch64`, built by
//! `agent/vboard/build.sh`. An agent drives it as an SSH-driven board.
//!
//! `armfleet-agent vboard run --state DIR` boots it and supervises it:
//! * the board's SSH host key lives in `DIR/host_key` (made once) and, with
//!   the controller keys it must accept, is injected at every start as a
//!   second initramfs archive appended to the image's;
//! * its console goes to `DIR/console.log` (appended across boots);
//! * `DIR/next-Image`, when present, is the kernel of the next start only
//!   (how a kernel armfleet built is deployed on it): it is moved to
//!   `DIR/boot-once-Image` and booted once, so the power cycle after a
//!   kernel that does not come up returns to the image's known-good kernel,
//!   like a one-shot boot entry on a real board;
//! * when its QEMU exits — a power cycle (`armfleet-agent vboard
//!   power-cycle --state DIR`, QMP `quit`), a panic — it is started again;
//! * `DIR/vboard.json` says how to reach it once its SSH answers.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use russh::keys::{HashAlg, PrivateKey};
use serde::{Deserialize, Serialize};

/// How to boot the board.
#[derive(Debug, Clone)]
pub struct VboardOptions {
    pub state_dir: PathBuf,
    pub image_dir: PathBuf,
    pub ssh_port: u16,
    /// `vhe` or `nvhe`.
    pub mode: String,
    pub cpu: String,
    pub memory_mib: u32,
    pub smp: u32,
    /// Public key lines (OpenSSH) the board accepts.
    pub authorized_keys: Vec<String>,
    /// 2 MiB hugepages reserved at boot.
    pub hugepages_2m: u32,
    pub qemu: Option<PathBuf>,
}

/// What `DIR/vboard.json` holds once the board answers on SSH.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VboardState {
    pub ssh_host: String,
    pub ssh_port: u16,
    /// The board's host key line, for `host_key` in agent.toml.
    pub host_key: String,
    pub host_key_fingerprint: String,
    pub mode: String,
    pub qemu_pid: u32,
    pub boots: u32,
    pub kernel: String,
    pub boot_to_ssh_ms: u64,
}

pub fn default_image_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ARMFLEET_VBOARD_DIR") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/root".into());
    home.join(".cache/armfleet/vboard")
}

/// The board's host key, made on first use (0600).
pub fn host_key(state_dir: &Path) -> anyhow::Result<PrivateKey> {
    let path = state_dir.join("host_key");
    if path.exists() {
        return russh::keys::load_secret_key(&path, None)
            .with_context(|| format!("loading the board host key {}", path.display()));
    }
    let mut key = PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519)?;
    key.set_comment("armfleet-vboard");
    let private = key.to_openssh(russh::keys::ssh_key::LineEnding::LF)?;
    crate::keys::write_private(&path, private.as_bytes(), true)?;
    std::fs::write(
        state_dir.join("host_key.pub"),
        format!("{}\n", key.public_key().to_openssh()?),
    )?;
    Ok(key)
}

/// A `newc` cpio archive of regular files (and the directories above them).
pub fn newc_archive(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    fn entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
        let header = format!(
            "070701{ino:08X}{mode:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out.extend_from_slice(data);
        while out.len() % 4 != 0 {
            out.push(0);
        }
    }
    let mut out = Vec::new();
    let mut ino = 1;
    let mut dirs: Vec<String> = Vec::new();
    for (name, _, _) in files {
        let mut p = String::new();
        let parts: Vec<&str> = name.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !p.is_empty() {
                p.push('/');
            }
            p.push_str(part);
            if !dirs.contains(&p) {
                dirs.push(p.clone());
            }
        }
    }
    for d in &dirs {
        entry(&mut out, ino, d, 0o040755, &[]);
        ino += 1;
    }
    for (name, mode, data) in files {
        entry(&mut out, ino, name, 0o100000 | mode, data);
        ino += 1;
    }
    entry(&mut out, 0, "TRAILER!!!", 0, &[]);
    out
}

/// The image's initramfs with this board's keys appended.
fn initrd_with_keys(opts: &VboardOptions, key: &PrivateKey) -> anyhow::Result<PathBuf> {
    let base = opts.image_dir.join("initrd.gz");
    let mut initrd = std::fs::read(&base).with_context(|| {
        format!(
            "the virtual board image is missing: {} — build it with `agent/vboard/build.sh` (as root)",
            base.display()
        )
    })?;
    // The kernel unpacks concatenated archives; the first must end on a
    // 4-byte boundary, which gzip output need not.
    while initrd.len() % 4 != 0 {
        initrd.push(0);
    }
    let host_key = key.to_openssh(russh::keys::ssh_key::LineEnding::LF)?;
    let authorized = opts.authorized_keys.join("\n") + "\n";
    let env = format!(
        "ARMFLEET_HUGEPAGES_2M={}\nARMFLEET_VBOARD_MODE={}\n",
        opts.hugepages_2m, opts.mode
    );
    initrd.extend(newc_archive(&[
        (
            "etc/armfleet/ssh_host_ed25519_key",
            0o600,
            host_key.as_bytes(),
        ),
        ("etc/armfleet/authorized_keys", 0o644, authorized.as_bytes()),
        ("etc/armfleet/board.env", 0o644, env.as_bytes()),
    ]));
    let path = opts.state_dir.join("initrd");
    crate::keys::write_private(&path, &initrd, true)?;
    Ok(path)
}

fn qemu_args(opts: &VboardOptions, kernel: &Path, initrd: &Path) -> Vec<String> {
    let mut append = "console=ttyAMA0 panic=-1".to_string();
    if opts.mode == "nvhe" {
        append.push_str(" kvm-arm.mode=nvhe");
    }
    let d = &opts.state_dir;
    vec![
        "-M".into(),
        "virt,virtualization=on,gic-version=3".into(),
        "-cpu".into(),
        opts.cpu.clone(),
        "-accel".into(),
        "tcg,thread=multi".into(),
        "-smp".into(),
        opts.smp.to_string(),
        "-m".into(),
        opts.memory_mib.to_string(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        // A board kernel panic ends QEMU (panic=-1 would reboot it
        // silently); the supervisor starts it again, like a power cycle.
        "-no-reboot".into(),
        "-display".into(),
        "none".into(),
        "-kernel".into(),
        kernel.display().to_string(),
        "-initrd".into(),
        initrd.display().to_string(),
        "-append".into(),
        append,
        "-netdev".into(),
        format!("user,id=n0,hostfwd=tcp:127.0.0.1:{}-:22", opts.ssh_port),
        "-device".into(),
        "virtio-net-pci,netdev=n0".into(),
        "-chardev".into(),
        format!(
            "file,id=con0,path={},append=on",
            d.join("console.log").display()
        ),
        "-serial".into(),
        "chardev:con0".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", d.join("qmp.sock").display()),
    ]
}

/// Waits until something on `port` speaks SSH.
async fn wait_ssh(port: u16, timeout: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Ok(mut s)) = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        {
            let mut buf = [0u8; 4];
            if let Ok(Ok(4)) =
                tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await
                && &buf == b"SSH-"
            {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

/// Boots the board and keeps it running until `shutdown`.
pub async fn run(
    opts: VboardOptions,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.state_dir)
        .with_context(|| format!("creating {}", opts.state_dir.display()))?;
    if opts.authorized_keys.is_empty() {
        bail!("no controller key for the board to accept: pass --authorized-key FILE.pub");
    }
    if opts.mode != "vhe" && opts.mode != "nvhe" {
        bail!("--mode must be vhe or nvhe, not `{}`", opts.mode);
    }
    let qemu = opts
        .qemu
        .clone()
        .or_else(|| armfleet_migrate_stress::probe::find_qemu("aarch64"))
        .context("qemu-system-aarch64 is not installed (apt-get install qemu-system-arm)")?;
    let key = host_key(&opts.state_dir)?;
    let host_key_line = key.public_key().to_openssh()?;
    let fingerprint = key.public_key().fingerprint(HashAlg::Sha256).to_string();
    let initrd = initrd_with_keys(&opts, &key)?;
    let _ = std::fs::remove_file(opts.state_dir.join("vboard.json"));
    let mut boots = 0u32;
    loop {
        let next = opts.state_dir.join("next-Image");
        let once = opts.state_dir.join("boot-once-Image");
        let _ = std::fs::remove_file(&once);
        let kernel = if next.is_file() && std::fs::rename(&next, &once).is_ok() {
            once
        } else {
            opts.image_dir.join("vmlinuz")
        };
        boots += 1;
        let args = qemu_args(&opts, &kernel, &initrd);
        let _ = std::fs::remove_file(opts.state_dir.join("qmp.sock"));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(opts.state_dir.join("qemu.stderr"))?;
        let mut cmd = tokio::process::Command::new(&qemu);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true);
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                );
                Ok(())
            });
        }
        let t0 = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", qemu.display()))?;
        let pid = child.id().unwrap_or(0);
        tracing::info!(boot = boots, pid, kernel = %kernel.display(), mode = %opts.mode, "virtual arm64 board starting");
        let ready = tokio::select! {
            ok = wait_ssh(opts.ssh_port, Duration::from_secs(600)) => ok,
            _ = child.wait() => false,
            _ = shutdown.cancelled() => {
                let _ = child.kill().await;
                return Ok(());
            }
        };
        if ready {
            let state = VboardState {
                ssh_host: "127.0.0.1".into(),
                ssh_port: opts.ssh_port,
                host_key: host_key_line.clone(),
                host_key_fingerprint: fingerprint.clone(),
                mode: opts.mode.clone(),
                qemu_pid: pid,
                boots,
                kernel: kernel.display().to_string(),
                boot_to_ssh_ms: t0.elapsed().as_millis() as u64,
            };
            let tmp = opts.state_dir.join("vboard.json.tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(&state)?)?;
            std::fs::rename(&tmp, opts.state_dir.join("vboard.json"))?;
            tracing::info!(
                "virtual arm64 board ready after {:.1} s: ssh -p {} root@127.0.0.1 (host key {fingerprint})",
                t0.elapsed().as_secs_f64(),
                opts.ssh_port
            );
        } else {
            tracing::warn!(
                "the virtual board's SSH did not come up; see {}",
                opts.state_dir.join("console.log").display()
            );
        }
        let status = tokio::select! {
            s = child.wait() => s?,
            _ = shutdown.cancelled() => {
                let _ = child.kill().await;
                let _ = std::fs::remove_file(opts.state_dir.join("vboard.json"));
                return Ok(());
            }
        };
        let _ = std::fs::remove_file(opts.state_dir.join("vboard.json"));
        // A board that dies during boot (a kernel that does not boot, a
        // broken image) is retried, but not in a tight loop.
        let pause = if ready {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(10)
        };
        tracing::warn!(boot = boots, %status, "the virtual board's QEMU exited; starting it again in {:.1} s (power cycle)", pause.as_secs_f64());
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// Power-cycles a running board: QMP `quit`; its supervisor starts it again.
pub async fn power_cycle(state_dir: &Path) -> anyhow::Result<()> {
    use armfleet_migrate_stress::qmp::{Qmp, Transcript};
    let sock = state_dir.join("qmp.sock");
    let transcript: Transcript = std::sync::Arc::new(|_, _| {});
    let (qmp, _events) = Qmp::connect(&sock, transcript, Duration::from_secs(5))
        .await
        .with_context(|| {
            format!(
                "no virtual board answers on {} (is `armfleet-agent vboard run --state {}` running?)",
                sock.display(),
                state_dir.display()
            )
        })?;
    let _ = qmp.execute("quit", None, Duration::from_secs(5)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_archive_has_dirs_files_and_a_trailer() {
        let a = newc_archive(&[("etc/armfleet/x", 0o600, b"hello")]);
        let s = String::from_utf8_lossy(&a);
        assert!(s.starts_with("070701"));
        assert!(s.contains("etc\0"));
        assert!(s.contains("etc/armfleet\0"));
        assert!(s.contains("etc/armfleet/x\0"));
        assert!(s.contains("hello"));
        assert!(s.contains("TRAILER!!!"));
        assert_eq!(a.len() % 4, 0);
    }
}
