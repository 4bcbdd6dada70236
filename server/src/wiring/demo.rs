//! `armfleet demo`: a whole local lab in one command.
//!
//! It starts the server on a private PostgreSQL, makes a key pair per board
//! of the embedded fleet (the root `fleet.toml`), starts one agent process
//! per board, and tests two kernels: a clean parent and a child that the
//! demo plan marks buggy. The fleet's `virt-arm64` board is a real virtual
//! arm64 board where this host can run one (`armfleet-agent vboard run`;
//! its jobs run their guests under KVM/arm64 nested in QEMU TCG, labelled
//! *emulated*), driven over SSH by a controller agent; the other boards run
//! the replay executor and everything they produce is labelled simulated.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::domain::boards;
use crate::domain::runs::{self, TriggerRequest};
use crate::wiring::app::{Server, Settings};

/// The example lab, compiled in so the demo needs no files.
pub const EMBEDDED_FLEET: &str = include_str!("../../../fleet.toml");

pub const DEMO_TREE: &str = "https://git.kernel.org/pub/scm/linux/kernel/git/kvmarm/kvmarm.git";
pub const DEMO_BRANCH: &str = "next";
/// The clean parent kernel of the demo.
pub const DEMO_PARENT: &str = "5d2f0c8a7e4b19d3c6a0f1e2b3c4d5e6f7a8b9c0";
/// The child that the embedded replay plan marks buggy.
pub const DEMO_CHILD: &str = "9e41b7c3d2a1f0e9d8c7b6a5f4e3d2c1b0a99887";

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: String,
    #[arg(long, default_value = "127.0.0.1:2222")]
    pub ssh: String,
    /// Default: `.armfleet-demo` here, or `/var/tmp/armfleet-demo` when the
    /// private PostgreSQL (run as `postgres` under root) could not reach it.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Executor for the agents: `auto` (the virtual arm64 board runs where
    /// this host can, the others replay), `qemu` (all boards run real QEMU
    /// guests), `replay` (all simulated).
    #[arg(long, default_value = "auto")]
    pub executor: String,
    /// Exit once both kernels are tested instead of serving until Ctrl-C.
    #[arg(long)]
    pub exit_when_done: bool,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let agent_exe = find_agent_binary()?;
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data_dir)?;
    let data_dir = data_dir.canonicalize()?;
    let keys_dir = data_dir.join("agent-keys");
    std::fs::create_dir_all(&keys_dir)?;

    // The embedded fleet with freshly made keys for the local agents.
    let mut fleet: toml::Table = EMBEDDED_FLEET
        .parse()
        .context("parsing the embedded fleet.toml")?;
    let mut board_names = Vec::new();
    // The virtual arm64 board, when this host can run it.
    let vboard_image = crate::wiring::demo::vboard_image();
    let mut vboard_board: Option<String> = None;
    if let Some(toml::Value::Array(boards)) = fleet.get_mut("board") {
        for board in boards.iter_mut().filter_map(|b| b.as_table_mut()) {
            let name = board
                .get("name")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned();
            let virtual_board = board.get("family").and_then(|v| v.as_str()) == Some("virt-arm64");
            if virtual_board && args.executor != "replay" {
                match &vboard_image {
                    Ok(_) => {
                        vboard_board = Some(name.clone());
                        // Power-cycled through its own QMP.
                        board.insert(
                            "power_cycle".into(),
                            toml::Value::Array(vec![
                                agent_exe.display().to_string().into(),
                                "vboard".into(),
                                "power-cycle".into(),
                                "--state".into(),
                                data_dir.join("vboard").display().to_string().into(),
                            ]),
                        );
                    }
                    Err(why) => println!(
                        "armfleet demo: {name} will be SIMULATED (replay): no virtual arm64 board here: {why}"
                    ),
                }
            }
            let key_path = keys_dir.join(&name);
            let public = make_agent_key(&agent_exe, &key_path).await?;
            board.remove("key_file");
            board.remove("keys");
            board.insert("key".into(), toml::Value::String(public));
            board_names.push(name);
        }
    }
    // Verdict settings for a demo that ends in minutes: catch a 5%-per-cycle
    // bug with 95% probability (a lab would use 0.5%, see fleet.toml).
    if let Some(toml::Value::Array(plans)) = fleet.get_mut("plan") {
        for plan in plans.iter_mut().filter_map(|p| p.as_table_mut()) {
            // The virtual board's cycles take seconds: there the demo asks
            // for a 15%-per-cycle bug (19 clean cycles pass) and one
            // extension, so its verdicts come within minutes.
            let nested = plan.get("name").and_then(|v| v.as_str()) == Some("migrate-cancel-nested");
            let mut verdict = toml::Table::new();
            verdict.insert(
                "min_detectable_rate".into(),
                toml::Value::Float(if nested { 0.15 } else { 0.05 }),
            );
            verdict.insert(
                "extension_cycles".into(),
                toml::Value::Integer(if nested { 10 } else { 20 }),
            );
            verdict.insert(
                "max_extensions".into(),
                toml::Value::Integer(if nested { 1 } else { 4 }),
            );
            plan.insert("verdict".into(), toml::Value::Table(verdict));
        }
    }
    let server_section = fleet
        .entry("server")
        .or_insert(toml::Value::Table(Default::default()));
    if let Some(t) = server_section.as_table_mut() {
        t.insert("heartbeat_interval_ms".into(), toml::Value::Integer(1000));
        t.insert("heartbeat_deadline_ms".into(), toml::Value::Integer(5000));
    }
    let fleet_path = data_dir.join("demo-fleet.toml");
    std::fs::write(&fleet_path, toml::to_string(&fleet)?)?;

    let http = tokio::net::TcpListener::bind(&args.http)
        .await
        .with_context(|| format!("binding {}", args.http))?;
    let ssh = tokio::net::TcpListener::bind(&args.ssh)
        .await
        .with_context(|| format!("binding {}", args.ssh))?;
    let http_addr = http.local_addr()?;
    let ssh_addr = ssh.local_addr()?;
    println!(
        "armfleet demo: starting the server (private PostgreSQL under {})",
        data_dir.display()
    );
    let server = Server::prepare(Settings {
        fleet_path: fleet_path.clone(),
        data_dir: data_dir.clone(),
        database_url: std::env::var("DATABASE_URL").ok().filter(|s| !s.is_empty()),
    })
    .await?;
    let pool = server.pool().clone();
    let state = server.state.clone();
    let fingerprint = server.fingerprint.clone();
    let shutdown = CancellationToken::new();
    let server_task = tokio::spawn(server.run(http, ssh, shutdown.clone()));

    let mut agents: BTreeMap<String, Child> = BTreeMap::new();
    let mut vboard_process = None;
    if let Some(name) = &vboard_board {
        let (vboard, ssh_board) = start_vboard(&agent_exe, &data_dir, &keys_dir).await?;
        vboard_process = Some(vboard);
        let dir = data_dir.join("agents").join(name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("agent.toml"), ssh_board)?;
    }
    for name in &board_names {
        // `auto`: the virtual arm64 board (when this host can run it) runs
        // real stress jobs under KVM/arm64, the others are simulated, so the
        // demo shows both a real stress job and the replayed abort of the
        // buggy child kernel.
        let is_vboard = vboard_board.as_deref() == Some(name.as_str());
        let executor = match args.executor.as_str() {
            "auto" | "qemu" if is_vboard => "qemu",
            "auto" => "replay",
            other => other,
        };
        let mut command = Command::new(&agent_exe);
        if is_vboard {
            command
                .arg("--config")
                .arg(data_dir.join("agents").join(name).join("agent.toml"));
        }
        let child = command
            .arg("--server")
            .arg(ssh_addr.to_string())
            .arg("--board")
            .arg(name)
            .arg("--key")
            .arg(keys_dir.join(name))
            .arg("--server-key")
            .arg(&fingerprint)
            .arg("--executor")
            .arg(executor)
            .arg("--state-dir")
            .arg(data_dir.join("agents").join(name))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(
                data_dir.join(format!("agent-{name}.log")),
            )?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", agent_exe.display()))?;
        agents.insert(name.clone(), child);
    }
    println!(
        "armfleet demo: {} agents started (logs: {}/agent-*.log)",
        agents.len(),
        data_dir.display()
    );

    // Wait for the boards, then test both kernels.
    let started = Instant::now();
    loop {
        let online = boards::list(&pool)
            .await?
            .iter()
            .filter(|b| b.state != "offline")
            .count();
        println!(
            "  [{:>4.1}s] boards online: {online}/{}",
            started.elapsed().as_secs_f64(),
            board_names.len()
        );
        if online == board_names.len() {
            break;
        }
        if started.elapsed() > Duration::from_secs(180) {
            bail!(
                "the demo agents did not come online within 180 s; see {}/agent-*.log",
                data_dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let fleet_now = state.fleet.current();
    let mut run_ids = Vec::new();
    for (label, commit) in [
        ("parent (clean)", DEMO_PARENT),
        ("child (buggy in the replay plan)", DEMO_CHILD),
    ] {
        let req = TriggerRequest {
            build: None,
            tree: DEMO_TREE.into(),
            branch: DEMO_BRANCH.into(),
            commit: commit.into(),
            plan: None,
            baseline: None,
        };
        let planned = runs::create(&pool, &fleet_now, &req, "demo").await?;
        println!(
            "armfleet demo: kernel {} {label}: run #{} with {} jobs",
            &commit[..12],
            planned.run_id,
            planned.jobs.len()
        );
        state.work.work_arrived(&planned.boards).await;
        run_ids.push(planned.run_id);
    }

    // Progress until both kernels have their verdicts (extra cycles included).
    let kernels: Vec<i64> = {
        let mut k = Vec::new();
        for run in &run_ids {
            if let Some(r) = runs::get(&pool, *run).await? {
                k.push(r.kernel_id);
            }
        }
        k
    };
    let mut last_line = String::new();
    let mut quiet_polls = 0;
    loop {
        let rows: Vec<(String, String, String, i32, i32)> = sqlx::query_as(
            "SELECT k.commit_sha, j.board, j.state, j.cycles_completed, j.cycles_total
             FROM jobs j JOIN kernels k ON k.id = j.kernel_id
             WHERE j.kernel_id = ANY($1) AND j.state IN ('queued', 'assigned', 'running') ORDER BY j.id",
        )
        .bind(&kernels)
        .fetch_all(&pool)
        .await?;
        let unanalysed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE kernel_id = ANY($1) AND analyzed_at IS NULL",
        )
        .bind(&kernels)
        .fetch_one(&pool)
        .await?;
        let verdicts: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT k.commit_sha, v.family, v.verdict FROM verdicts v JOIN kernels k ON k.id = v.kernel_id
             WHERE v.kernel_id = ANY($1) ORDER BY v.kernel_id, v.family",
        )
        .bind(&kernels)
        .fetch_all(&pool)
        .await?;
        let running: Vec<String> = rows
            .iter()
            .map(|(c, b, st, done, total)| format!("{}:{b} {st} {done}/{total}", &c[..7]))
            .collect();
        let decided: Vec<String> = verdicts
            .iter()
            .map(|(c, f, v)| format!("{}:{f}={v}", &c[..7]))
            .collect();
        let line = format!(
            "jobs: {}  verdicts: {}",
            if running.is_empty() {
                "none running".into()
            } else {
                running.join(", ")
            },
            if decided.is_empty() {
                "none yet".into()
            } else {
                decided.join(" ")
            }
        );
        if line != last_line {
            println!("  [{:>5.1}s] {line}", started.elapsed().as_secs_f64());
            last_line = line;
        }
        quiet_polls = if rows.is_empty() && unanalysed == 0 {
            quiet_polls + 1
        } else {
            0
        };
        if quiet_polls >= 3 {
            break;
        }
        if started.elapsed() > Duration::from_secs(900) {
            println!("armfleet demo: still testing after 15 minutes; showing what is known so far");
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(700)) => {}
            _ = crate::shutdown_signal() => {
                shutdown.cancel();
                break;
            }
        }
    }

    print_summary(&pool, &kernels).await?;
    println!();
    println!("armfleet demo: dashboard at http://{http_addr}/");
    println!(
        "armfleet demo: API at http://{http_addr}/api/v1/runs (token in {}/api-token)",
        data_dir.display()
    );
    if !args.exit_when_done && !shutdown.is_cancelled() {
        println!("armfleet demo: serving until Ctrl-C");
        tokio::select! {
            _ = crate::shutdown_signal() => {}
            _ = shutdown.cancelled() => {}
        }
    }
    println!("armfleet demo: stopping agents and server");
    for (_, mut child) in agents {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    if let Some(mut vboard) = vboard_process {
        // SIGTERM: the supervisor stops the board's QEMU.
        if let Some(pid) = vboard.id() {
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), vboard.wait()).await;
    }
    shutdown.cancel();
    server_task.await.context("server task panicked")??;
    Ok(())
}

async fn print_summary(pool: &sqlx::PgPool, kernels: &[i64]) -> anyhow::Result<()> {
    println!();
    println!(
        "{:<13} {:<14} {:<14} {:<10} {:>12} {:>20}  {}",
        "kernel", "family", "verdict", "rests on", "failed/run", "rate (95% CI)", "boards"
    );
    for kernel in kernels {
        let commit: String = sqlx::query_scalar("SELECT commit_sha FROM kernels WHERE id = $1")
            .bind(kernel)
            .fetch_one(pool)
            .await?;
        let verdicts = crate::domain::verdicts::for_kernel(pool, *kernel).await?;
        let boards: Vec<(String, String, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT b.family, j.board, max(j.host_kind), max(j.accel) FROM jobs j JOIN boards b ON b.name = j.board
             WHERE j.kernel_id = $1 GROUP BY b.family, j.board ORDER BY j.board",
        )
        .bind(kernel)
        .fetch_all(pool)
        .await?;
        for v in verdicts {
            let on: Vec<String> = boards
                .iter()
                .filter(|(f, _, _, _)| *f == v.family)
                .map(|(_, b, host, accel)| {
                    let host = host
                        .as_deref()
                        .and_then(armfleet_protocol::HostKind::parse)
                        .map(|h| h.label())
                        .unwrap_or("host unknown");
                    match accel.as_deref() {
                        Some(a) if a != "none" => format!("{b} ({host}, {a})"),
                        _ => format!("{b} ({host})"),
                    }
                })
                .collect();
            println!(
                "{:<13} {:<14} {:<14} {:<10} {:>12} {:>20}  {}",
                &commit[..12],
                v.family,
                v.verdict,
                v.basis.as_deref().unwrap_or("–"),
                format!("{}/{}", v.failed_cycles, v.cycles_run),
                format!(
                    "{:.1}% ({:.1}–{:.1})",
                    v.rate * 100.0,
                    v.ci_low * 100.0,
                    v.ci_high * 100.0
                ),
                on.join(", ")
            );
        }
        let abort: Option<(i64, String, String)> = sqlx::query_as(
            "SELECT f.job_id, f.title, j.board FROM findings f JOIN jobs j ON j.id = f.job_id
             WHERE j.kernel_id = $1 AND f.fatal ORDER BY f.id LIMIT 1",
        )
        .bind(kernel)
        .fetch_optional(pool)
        .await?;
        if let Some((job, title, board)) = abort {
            let count: i64 = sqlx::query_scalar("SELECT count(*) FROM findings f JOIN jobs j ON j.id = f.job_id WHERE j.kernel_id = $1 AND f.fatal")
                .bind(kernel)
                .fetch_one(pool)
                .await?;
            println!(
                "{:<13} finding: {title} ({count}x; first in job {job} on {board}: /jobs/{job})",
                ""
            );
        }
    }
    Ok(())
}

/// The virtual arm64 board's image and QEMU, or why this host cannot run it.
pub fn vboard_image() -> Result<PathBuf, String> {
    let image = std::env::var_os("ARMFLEET_VBOARD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/armfleet/vboard")
        });
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
    };
    if std::env::var_os("ARMFLEET_QEMU_AARCH64").is_none() && !on_path("qemu-system-aarch64") {
        return Err(
            "qemu-system-aarch64 is not installed (apt-get install qemu-system-arm)".into(),
        );
    }
    if !image.join("vmlinuz").is_file() || !image.join("initrd.gz").is_file() {
        return Err(format!(
            "no image in {} (build it with agent/vboard/build.sh, as root)",
            image.display()
        ));
    }
    Ok(image)
}

/// Boots the virtual arm64 board under `DATA/vboard` and makes the
/// controller key that drives it; returns its supervisor and the agent.toml
/// of its controller agent.
async fn start_vboard(
    agent: &Path,
    data_dir: &Path,
    keys_dir: &Path,
) -> anyhow::Result<(Child, String)> {
    let state = data_dir.join("vboard");
    std::fs::create_dir_all(&state)?;
    let controller = keys_dir.join("vboard-controller");
    make_agent_key(agent, &controller).await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let _ = std::fs::remove_file(state.join("vboard.json"));
    let log = data_dir.join("vboard.log");
    let child = Command::new(agent)
        .args(["vboard", "run", "--ssh-port", &port.to_string()])
        .arg("--state")
        .arg(&state)
        .arg("--authorized-key")
        .arg(controller.with_extension("pub"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} vboard run", agent.display()))?;
    println!(
        "armfleet demo: booting the virtual arm64 board (KVM/arm64 nested under QEMU TCG; console {}/console.log)",
        state.display()
    );
    let started = Instant::now();
    let json = state.join("vboard.json");
    let info: serde_json::Value = loop {
        if let Ok(text) = std::fs::read_to_string(&json)
            && let Ok(v) = serde_json::from_str(&text)
        {
            break v;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!(
                "the virtual arm64 board did not answer on SSH within 600 s; see {} and {}/console.log",
                log.display(),
                state.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "armfleet demo: virtual arm64 board up after {:.0} s (ssh root@127.0.0.1 -p {port})",
        started.elapsed().as_secs_f64()
    );
    let host_key = info["host_key"].as_str().unwrap_or_default();
    let ssh_board = format!(
        "[ssh_board]\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"root\"\nhost_key = \"{host_key}\"\nkey = \"{}\"\nemulated = true\n",
        controller.display()
    );
    Ok((child, ssh_board))
}

/// `.armfleet-demo` in the current directory, unless the embedded
/// PostgreSQL could not reach it there (root runs it as `postgres`, and a
/// clone under e.g. a 0700 `mktemp -d` is closed to that user).
fn default_data_dir() -> PathBuf {
    let here = PathBuf::from(".armfleet-demo");
    let needs_postgres_user = std::env::var("DATABASE_URL").map_or(true, |u| u.is_empty())
        && crate::wiring::db::embedded::is_root();
    let cwd = std::env::current_dir().unwrap_or_default();
    match crate::wiring::db::embedded::closed_ancestor(&cwd.join("x")) {
        Some((closed, _)) if needs_postgres_user => {
            let fallback = PathBuf::from("/var/tmp/armfleet-demo");
            println!(
                "armfleet demo: {} is closed to the `postgres` user; keeping the demo's data in {}",
                closed.display(),
                fallback.display()
            );
            fallback
        }
        _ => here,
    }
}

/// `armfleet-agent keygen` writes the key pair and prints the public line.
async fn make_agent_key(agent: &Path, path: &Path) -> anyhow::Result<String> {
    if !path.exists() {
        let out = Command::new(agent)
            .arg("keygen")
            .arg("--out")
            .arg(path)
            .output()
            .await?;
        if !out.status.success() {
            bail!(
                "armfleet-agent keygen failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let public = std::fs::read_to_string(path.with_extension("pub"))
        .with_context(|| format!("reading {}.pub", path.display()))?;
    Ok(public.trim().to_owned())
}

/// The agent binary sits next to `armfleet` in the same target directory.
pub fn find_agent_binary() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("ARMFLEET_AGENT_BIN") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe()?;
    // Beside `armfleet`, or one level up when running from `target/*/deps`.
    let beside = me.parent().map(Path::to_path_buf);
    let above = beside
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf);
    if let Some(found) = [beside, above]
        .into_iter()
        .flatten()
        .map(|d| d.join("armfleet-agent"))
        .find(|p| p.is_file())
    {
        return Ok(found);
    }
    bail!(
        "armfleet-agent was not found next to {} — build it with `cargo build --workspace` \
         (or set ARMFLEET_AGENT_BIN)",
        me.display()
    )
}
