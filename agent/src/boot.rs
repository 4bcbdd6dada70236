//! The board's kernel lifecycle: installing an armfleet build and booting
//! it, and, after the reboot, telling which kernel came up.
//!
//! The server sends `ServerMessage::Boot` to an idle board. [`deploy`]
//! downloads every artifact from the server, checks its SHA-256 and size,
//! installs it, prepares the boot (`kexec -l`, or the lab's one-shot boot
//! entry command, so that a kernel that does not boot falls back to the
//! known-good one on the next power cycle) and writes `pending.json`. The
//! link then says `BootReport::Rebooting` and [`reboot`]s. When the agent
//! starts again, [`settle`] compares `uname -r` with what was pending: the
//! build runs (its id goes into the facts) or the board fell back (reported
//! with the failed boot's console from pstore or the journal).
//!
//! Simulated boards (`method = "simulated"`, the default for the replay
//! executor) play the same lifecycle without touching the host: the build's
//! `Image` is a text file from a test tree's Makefile —
//!
//! ```text
//! ARMFLEET-SIMULATED-KERNEL
//! release=6.13.0-sim-00063
//! boot=ok                      # ok | hang | panic
//! abort_probability=0.01       # per-cycle TLB conflict abort on replay jobs
//! console=<a line the kernel prints while booting>
//! ```
//!
//! — and the "reboot" re-executes the agent with `ARMFLEET_SIM_REBOOT=1`
//! (same pid, like a kexec). A kernel that hangs or panics writes its console
//! to the pstore directory and stops there: the agent never connects, and
//! only a power cycle (killing the process and starting it afresh, which a
//! simulated board treats as a cold boot of its known-good kernel) brings it
//! back.

use std::path::{Path, PathBuf};

use anyhow::Context;
use armfleet_protocol::{BootOutcome, BuildSpec};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Set on the re-executed agent of a simulated warm reboot.
pub const SIM_REBOOT_ENV: &str = "ARMFLEET_SIM_REBOOT";
const SIM_MAGIC: &str = "ARMFLEET-SIMULATED-KERNEL";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootMethod {
    /// `kexec -l` the Image, then `systemctl kexec` (or `kexec -e`).
    Kexec,
    /// The lab's one-shot boot entry command, then the reboot command.
    OneShot,
    /// The simulated lifecycle (replay boards).
    Simulated,
    /// The virtual arm64 board: the Image becomes its next kernel
    /// (`STATE/next-Image`), it is power-cycled through its QMP, and the
    /// agent starts afresh (re-executed) to see which kernel came up.
    Vboard,
    /// This board does not boot builds.
    Disabled,
}

impl BootMethod {
    pub fn parse(s: &str) -> anyhow::Result<Option<BootMethod>> {
        Ok(match s {
            "auto" => None,
            "kexec" => Some(BootMethod::Kexec),
            "oneshot" => Some(BootMethod::OneShot),
            "simulated" => Some(BootMethod::Simulated),
            "vboard" => Some(BootMethod::Vboard),
            "none" => Some(BootMethod::Disabled),
            other => anyhow::bail!(
                "unknown boot method `{other}` (auto, kexec, oneshot, simulated, vboard or none)"
            ),
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            BootMethod::Kexec => "kexec",
            BootMethod::OneShot => "oneshot",
            BootMethod::Simulated => "simulated",
            BootMethod::Vboard => "vboard",
            BootMethod::Disabled => "none",
        }
    }
}

/// `[boot]` in agent.toml.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSettings {
    /// auto (simulated for replay boards, kexec where `kexec` is installed),
    /// kexec, oneshot, simulated, none.
    pub method: Option<String>,
    /// Where builds are kept (default STATE_DIR/kernels).
    pub install_dir: Option<PathBuf>,
    /// Where `modules.tar.gz` is unpacked on real boards (default `/`).
    pub modules_root: Option<PathBuf>,
    /// For `oneshot`: makes the next boot (only) use the build, e.g. a
    /// script around `grub-reboot` or U-Boot's `bootonce`. `{image}`,
    /// `{initrd}`, `{dir}`, `{release}`, `{build_id}` are substituted.
    pub oneshot_command: Option<Vec<String>>,
    /// Reboots the board (default `systemctl kexec` for kexec, `systemctl
    /// reboot` for oneshot).
    pub reboot_command: Option<Vec<String>>,
    /// For `vboard`: the virtual board's state directory (`armfleet-agent
    /// vboard run --state DIR`); `auto` picks `vboard` when it is set on an
    /// agent driving an SSH board.
    pub vboard_state: Option<PathBuf>,
}

/// The build the board runs, for its facts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Running {
    pub build_id: Option<i64>,
    /// What the board reports as its kernel release (a simulated board
    /// reports its simulated kernel's).
    pub kernel_release: Option<String>,
}

/// A boot about to happen, kept across the reboot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Pending {
    boot_id: i64,
    build_id: i64,
    kernel_release: String,
    method: String,
    dir: PathBuf,
}

/// A boot report to send once connected, with its console payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub boot_id: i64,
    pub outcome: BootOutcome,
    pub console: Vec<u8>,
}

/// What [`settle`] found when the agent started.
#[derive(Debug, Clone, PartialEq)]
pub enum Settled {
    Up {
        running: Running,
        report: Option<Report>,
    },
    /// A simulated kernel that does not come up: the agent must stay silent
    /// until it is power-cycled.
    Hung { why: String },
}

fn kernel_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("kernel")
}

fn read_json<T: for<'a> Deserialize<'a>>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> std::io::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(v)?)?;
    std::fs::rename(tmp, path)
}

/// The contents of a simulated kernel image.
#[derive(Debug, Clone, PartialEq)]
pub struct SimKernel {
    pub release: String,
    pub boot: String,
    pub abort_probability: f64,
    pub console: Vec<String>,
}

impl SimKernel {
    pub fn parse(text: &str) -> Option<SimKernel> {
        let mut lines = text.lines();
        if lines.next()?.trim() != SIM_MAGIC {
            return None;
        }
        let mut k = SimKernel {
            release: String::new(),
            boot: "ok".into(),
            abort_probability: 0.0,
            console: vec![],
        };
        for line in lines {
            match line.split_once('=') {
                Some(("release", v)) => k.release = v.trim().to_owned(),
                Some(("boot", v)) => k.boot = v.trim().to_owned(),
                Some(("abort_probability", v)) => {
                    k.abort_probability = v.trim().parse::<f64>().unwrap_or(0.0).clamp(0.0, 1.0)
                }
                Some(("console", v)) => k.console.push(v.to_owned()),
                _ => {}
            }
        }
        (!k.release.is_empty()).then_some(k)
    }
}

/// The simulated kernel the board runs now, if it runs one.
pub fn simulated_kernel(state_dir: &Path) -> Option<SimKernel> {
    let running: Running = read_json(&kernel_dir(state_dir).join("current.json"))?;
    running.build_id?;
    let pending_dir: PathBuf =
        read_json::<Pending>(&kernel_dir(state_dir).join("booted.json"))?.dir;
    SimKernel::parse(&std::fs::read_to_string(pending_dir.join("Image")).ok()?)
}

/// Works out, at agent start, which kernel the board runs and whether a
/// boot failed. `uname_release` is the host's `uname -r`.
pub fn settle(
    state_dir: &Path,
    method: BootMethod,
    uname_release: &str,
    pstore_dir: &Path,
    journal: bool,
) -> Settled {
    let dir = kernel_dir(state_dir);
    let pending_path = dir.join("pending.json");
    let current_path = dir.join("current.json");
    let pending: Option<Pending> = read_json(&pending_path);
    if method == BootMethod::Simulated {
        return settle_simulated(&dir, pending, pstore_dir);
    }
    let Some(p) = pending else {
        let current: Running = read_json(&current_path).unwrap_or_default();
        if current.kernel_release.as_deref() != Some(uname_release) {
            // Booted into something else since (a power cycle, a person).
            let _ = std::fs::remove_file(&current_path);
            return Settled::Up {
                running: Running::default(),
                report: None,
            };
        }
        return Settled::Up {
            running: current,
            report: None,
        };
    };
    let _ = std::fs::remove_file(&pending_path);
    if p.kernel_release == uname_release {
        let running = Running {
            build_id: Some(p.build_id),
            kernel_release: Some(p.kernel_release.clone()),
        };
        let _ = write_json(&current_path, &running);
        let _ = write_json(&dir.join("booted.json"), &p);
        return Settled::Up {
            running,
            report: None,
        };
    }
    let _ = std::fs::remove_file(&current_path);
    let log = crate::crash::recover(pstore_dir, journal, true);
    if let Some(l) = &log {
        crate::crash::archive(l, state_dir);
    }
    Settled::Up {
        running: Running::default(),
        report: Some(Report {
            boot_id: p.boot_id,
            outcome: BootOutcome::FellBack {
                kernel_release: uname_release.to_owned(),
                console_source: log.as_ref().map(|l| l.source.clone()),
            },
            console: log.map(|l| l.text.into_bytes()).unwrap_or_default(),
        }),
    }
}

fn settle_simulated(dir: &Path, pending: Option<Pending>, pstore_dir: &Path) -> Settled {
    let current_path = dir.join("current.json");
    let pending_path = dir.join("pending.json");
    let failed_path = dir.join("failed.json");
    let warm = std::env::var_os(SIM_REBOOT_ENV).is_some();
    // SAFETY: called at start-up before any other thread reads the env.
    unsafe { std::env::remove_var(SIM_REBOOT_ENV) };
    if !warm {
        // A cold start is a power cycle: the known-good kernel comes up, and
        // a boot that never came up is reported with its console.
        let _ = std::fs::remove_file(&current_path);
        let _ = std::fs::remove_file(&pending_path);
        let report = read_json::<Pending>(&failed_path).map(|p| {
            let _ = std::fs::remove_file(&failed_path);
            let log = crate::crash::recover(pstore_dir, false, true);
            if let Some(l) = &log {
                crate::crash::archive(l, dir);
            }
            Report {
                boot_id: p.boot_id,
                outcome: BootOutcome::FellBack {
                    kernel_release: "the board's own (simulated known-good)".into(),
                    console_source: log.as_ref().map(|l| l.source.clone()),
                },
                console: log.map(|l| l.text.into_bytes()).unwrap_or_default(),
            }
        });
        return Settled::Up {
            running: Running::default(),
            report,
        };
    }
    let Some(p) = pending else {
        // A warm restart without a pending boot keeps what ran.
        return Settled::Up {
            running: read_json(&current_path).unwrap_or_default(),
            report: None,
        };
    };
    // The one-shot entry is used up by this boot, whatever happens.
    let _ = std::fs::remove_file(&pending_path);
    let image = std::fs::read_to_string(p.dir.join("Image")).unwrap_or_default();
    let Some(kernel) = SimKernel::parse(&image) else {
        let _ = write_json(&failed_path, &p);
        return Settled::Hung {
            why: "the Image is not a simulated kernel: nothing boots".into(),
        };
    };
    if kernel.boot != "ok" {
        let _ = std::fs::create_dir_all(pstore_dir);
        let mut console = kernel.console.join("\n");
        console.push('\n');
        let _ = std::fs::write(pstore_dir.join("dmesg-ramoops-0"), console);
        let _ = write_json(&failed_path, &p);
        return Settled::Hung {
            why: format!(
                "simulated kernel {} {}s while booting",
                kernel.release, kernel.boot
            ),
        };
    }
    let running = Running {
        build_id: Some(p.build_id),
        kernel_release: Some(kernel.release.clone()),
    };
    let _ = write_json(&current_path, &running);
    let _ = write_json(&dir.join("booted.json"), &p);
    Settled::Up {
        running,
        report: None,
    }
}

/// What the link does once the boot is prepared and reported.
#[derive(Debug, Clone)]
pub struct RebootPlan {
    pub method: BootMethod,
    pub command: Vec<String>,
}

/// Downloads, checks and installs `build`, prepares its boot, and records it
/// as pending. Returns how to reboot, or why nothing will be booted.
pub async fn deploy(
    settings: &BootSettings,
    method: BootMethod,
    state_dir: &Path,
    base_url: &str,
    boot_id: i64,
    build: &BuildSpec,
) -> Result<RebootPlan, String> {
    if method == BootMethod::Disabled {
        return Err(
            "this board's agent has boot method `none`: set [boot] method in agent.toml".into(),
        );
    }
    let root = settings
        .install_dir
        .clone()
        .unwrap_or_else(|| state_dir.join("kernels"));
    let dir = root.join(build.build_id.to_string());
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(1800))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    for a in &build.artifacts {
        if a.name.contains('/') || a.name.starts_with('.') {
            return Err(format!(
                "artifact name `{}` is not a plain file name",
                a.name
            ));
        }
        let url = if a.url.starts_with("http://") || a.url.starts_with("https://") {
            a.url.clone()
        } else {
            format!("{}{}", base_url.trim_end_matches('/'), a.url)
        };
        download(&client, &url, &dir.join(&a.name), &a.sha256, a.size).await?;
        tracing::info!(artifact = %a.name, size = a.size, "artifact downloaded and verified");
    }
    let image = dir.join("Image");
    if !image.is_file() {
        return Err("the build has no Image artifact".into());
    }
    let subst = |argv: &[String]| -> Vec<String> {
        argv.iter()
            .map(|s| {
                s.replace("{image}", &image.display().to_string())
                    .replace("{initrd}", &dir.join("initrd").display().to_string())
                    .replace("{dir}", &dir.display().to_string())
                    .replace("{release}", &build.kernel_release)
                    .replace("{build_id}", &build.build_id.to_string())
            })
            .collect()
    };
    let command = match method {
        BootMethod::Simulated => vec![],
        BootMethod::Vboard => {
            let state = settings
                .vboard_state
                .as_ref()
                .ok_or("boot method `vboard` needs [boot] vboard_state in agent.toml")?;
            let next = state.join("next-Image");
            let tmp = state.join("next-Image.tmp");
            std::fs::copy(&image, &tmp)
                .and_then(|_| std::fs::rename(&tmp, &next))
                .map_err(|e| {
                    format!("installing {} as {}: {e}", image.display(), next.display())
                })?;
            let exe =
                std::env::current_exe().map_err(|e| format!("finding the agent binary: {e}"))?;
            vec![
                exe.display().to_string(),
                "vboard".into(),
                "power-cycle".into(),
                "--state".into(),
                state.display().to_string(),
            ]
        }
        BootMethod::Kexec | BootMethod::OneShot => {
            let modules = dir.join("modules.tar.gz");
            if modules.is_file() {
                let root = settings.modules_root.clone().unwrap_or_else(|| "/".into());
                run(&[
                    "tar".into(),
                    "-xzf".into(),
                    modules.display().to_string(),
                    "-C".into(),
                    root.display().to_string(),
                ])
                .await?;
            }
            if method == BootMethod::Kexec {
                let mut load = vec![
                    "kexec".to_owned(),
                    "-l".into(),
                    image.display().to_string(),
                    "--reuse-cmdline".into(),
                ];
                if dir.join("initrd").is_file() {
                    load.push(format!("--initrd={}", dir.join("initrd").display()));
                }
                run(&load).await?;
                settings.reboot_command.clone().unwrap_or_else(|| {
                    if Path::new("/run/systemd/system").exists() {
                        vec!["systemctl".into(), "kexec".into()]
                    } else {
                        vec!["kexec".into(), "-e".into()]
                    }
                })
            } else {
                let oneshot = settings
                    .oneshot_command
                    .as_ref()
                    .ok_or("boot method `oneshot` needs [boot] oneshot_command in agent.toml")?;
                run(&subst(oneshot)).await?;
                settings
                    .reboot_command
                    .clone()
                    .unwrap_or_else(|| vec!["systemctl".into(), "reboot".into()])
            }
        }
        BootMethod::Disabled => unreachable!(),
    };
    let pending = Pending {
        boot_id,
        build_id: build.build_id,
        kernel_release: build.kernel_release.clone(),
        method: method.as_str().into(),
        dir,
    };
    write_json(&kernel_dir(state_dir).join("pending.json"), &pending)
        .map_err(|e| format!("recording the pending boot: {e}"))?;
    Ok(RebootPlan { method, command })
}

async fn download(
    client: &reqwest::Client,
    url: &str,
    dest: &Path,
    sha256: &str,
    size: u64,
) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut resp = client
        .get(url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("downloading {url}: {e}"))?;
    let tmp = dest.with_extension("partial");
    let mut file = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    let mut hasher = Sha256::new();
    let mut got = 0u64;
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("downloading {url}: {e}"))?
    {
        hasher.update(&chunk);
        got += chunk.len() as u64;
        file.write_all(&chunk)
            .await
            .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    }
    file.sync_all()
        .await
        .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    let sum = hex::encode(hasher.finalize());
    if !sum.eq_ignore_ascii_case(sha256) || got != size {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!(
            "checksum mismatch for {url}: got sha256 {sum} ({got} bytes), expected {sha256} ({size} bytes)"
        ));
    }
    std::fs::rename(&tmp, dest).map_err(|e| format!("installing {}: {e}", dest.display()))
}

async fn run(argv: &[String]) -> Result<(), String> {
    let out = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("running {}: {e}", argv[0]))?;
    if !out.status.success() {
        return Err(format!(
            "`{}` failed ({}): {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Reboots as planned. For a simulated board this re-executes the agent
/// (it returns only if that fails).
pub fn reboot(plan: &RebootPlan) -> anyhow::Result<()> {
    if plan.method == BootMethod::Simulated {
        return reexec(Some(SIM_REBOOT_ENV))
            .context("re-executing the agent for a simulated reboot");
    }
    let status = std::process::Command::new(&plan.command[0])
        .args(&plan.command[1..])
        .status()?;
    anyhow::ensure!(
        status.success(),
        "`{}` failed: {status}",
        plan.command.join(" ")
    );
    if plan.method == BootMethod::Vboard {
        // The board restarts on its next kernel; this agent starts afresh
        // to see which one came up.
        return reexec(None)
            .context("re-executing the agent after power-cycling the virtual board");
    }
    Ok(())
}

/// Replaces this agent process with a fresh one (same pid, same arguments),
/// with `flag` set to 1 in its environment. Returns only on failure.
fn reexec(flag: Option<&str>) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(std::env::args_os().skip(1));
    if let Some(flag) = flag {
        cmd.env(flag, "1");
    }
    Err(cmd.exec().into())
}

/// A simulated kernel that did not come up: stay silent until power-cycled.
pub async fn hang(why: &str) -> ! {
    tracing::error!("{why}; waiting for a power cycle");
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    }
}
