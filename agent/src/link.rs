//! The agent's link to the server: dial, authenticate, handshake, then
//! serve jobs and heartbeat until the connection ends; reconnect forever
//! with jittered, capped exponential back-off.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use armfleet_protocol::{
    AgentMessage, Frame, FrameError, Hello, PROTOCOL_VERSION, ServerMessage, read_frame,
    write_frame,
};
use russh::client;
use russh::keys::PrivateKeyWithHashAlg;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::keys::{self, HostKeyError, HostKeyPolicy};
use crate::runner::{JobRunner, Outbox};
use crate::spool::Spool;
use crate::{Config, facts};

/// `STATE_DIR/agent.pid` and `agent.cmdline` (NUL-separated argv): what
/// a power-cycle script of a simulated board needs to restart it
/// (`scripts/sim-power-cycle`), and handy for people.
fn record_process(state_dir: &std::path::Path) {
    let _ = std::fs::write(
        state_dir.join("agent.pid"),
        format!("{}\n", std::process::id()),
    );
    let mut cmdline = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        cmdline.extend_from_slice(exe.as_os_str().as_encoded_bytes());
        for a in std::env::args_os().skip(1) {
            cmdline.push(0);
            cmdline.extend_from_slice(a.as_encoded_bytes());
        }
    }
    let _ = std::fs::write(state_dir.join("agent.cmdline"), cmdline);
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// Log payload a job may spool before further logs are truncated.
const SPOOL_LOG_CAP: u64 = 512 << 20;

const BACKOFF_START: Duration = Duration::from_millis(500);
/// Below the shortest lease grace a server gives a board's jobs (the
/// heartbeat deadline or the boot deadline, whichever is longer).
const BACKOFF_CAP: Duration = Duration::from_secs(20);

/// Why a session ended, which decides whether and how soon to retry.
enum SessionEnd {
    /// The connection dropped after working for a while: retry at once-ish.
    Dropped(String),
    /// The server asked for a build to be booted; it is installed and
    /// reported: reboot now.
    Reboot(crate::boot::RebootPlan),
}

/// What the agent knows about the kernel the board runs, across sessions.
struct KernelState {
    method: crate::boot::BootMethod,
    running: crate::boot::Running,
    /// A boot report still to deliver (the server has not seen it yet).
    report: Option<crate::boot::Report>,
}

#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error(transparent)]
    HostKey(#[from] HostKeyError),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

pub async fn run_forever(config: Config) -> anyhow::Result<()> {
    let key = Arc::new(keys::load(&config.key_path)?);
    let policy = match &config.server_key {
        Some(fp) => HostKeyPolicy::Pinned(fp.clone()),
        None => HostKeyPolicy::KnownHosts {
            file: config.state_dir.join("known_hosts"),
            server: config.server.clone(),
        },
    };
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating state dir {}", config.state_dir.display()))?;
    let shutdown = CancellationToken::new();
    {
        let token = shutdown.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            token.cancel();
        });
    }
    // Jobs and their spool outlive any one connection.
    let mut spool = Spool::open(&config.state_dir.join("spool"), SPOOL_LOG_CAP)?;
    // Jobs a previous agent process was running died with it (their QEMUs
    // too): say so in their spool, so the server gets their logs and an end
    // — with the previous boot's kernel log when the board crashed
    // (see `crash`).
    let previous_boot = crate::crash::swap_boot_id(&config.state_dir);
    let rebooted = previous_boot.is_some() && previous_boot != crate::crash::current_boot_id();
    let unfinished = spool.unfinished();
    if !unfinished.is_empty() {
        let recovered = crate::crash::recover(&config.pstore_dir, config.journal, rebooted);
        if let Some(log) = &recovered {
            tracing::warn!(source = %log.source, "recovered the previous boot's kernel log");
        }
        for (job_id, epoch) in &unfinished {
            tracing::warn!(
                job_id,
                "the agent restarted while this job ran; reporting it ended"
            );
            for frame in crate::crash::lost_job_frames(*job_id, *epoch, recovered.as_ref()) {
                if let Err(e) = spool.push(frame) {
                    tracing::error!(job_id, "cannot spool the lost job's report: {e}");
                }
            }
        }
        if let Some(log) = &recovered {
            crate::crash::archive(log, &config.state_dir);
        }
    }
    let outbox = Outbox {
        spool: Arc::new(Mutex::new(spool)),
        ready: Arc::new(tokio::sync::Notify::new()),
    };
    let executor = match &config.ssh_board {
        Some(board) => {
            if let Err(e) = facts::sweep_ssh_board(board).await {
                tracing::warn!("cannot clean up the SSH-driven board at start-up: {e:#}");
            }
            armfleet_protocol::ExecutorKind::Qemu
        }
        None => {
            tokio::task::spawn_blocking({
                let choice = config.executor;
                move || facts::gather(choice).executor
            })
            .await?
        }
    };
    // Which kernel came up (and whether a boot armfleet asked for failed).
    let method = config.boot_method.unwrap_or(match executor {
        _ if config.ssh_board.is_some() => match &config.boot.vboard_state {
            Some(_) => crate::boot::BootMethod::Vboard,
            None => crate::boot::BootMethod::Disabled,
        },
        armfleet_protocol::ExecutorKind::Replay => crate::boot::BootMethod::Simulated,
        armfleet_protocol::ExecutorKind::Qemu if which("kexec") => crate::boot::BootMethod::Kexec,
        armfleet_protocol::ExecutorKind::Qemu => crate::boot::BootMethod::Disabled,
    });
    let uname = match &config.ssh_board {
        // The board's kernel, once it answers (it may be rebooting).
        Some(board) => tokio::select! {
            r = facts::ssh_board_release(board) => r,
            _ = shutdown.cancelled() => return Ok(()),
        },
        None => facts::uname_release(),
    };
    record_process(&config.state_dir);
    // A simulated board keeps its "pstore" in its state dir unless told.
    let boot_pstore = if method == crate::boot::BootMethod::Simulated
        && config.pstore_dir == std::path::Path::new(crate::settings::DEFAULT_PSTORE_DIR)
    {
        config.state_dir.join("pstore")
    } else {
        config.pstore_dir.clone()
    };
    let mut kernel = match crate::boot::settle(
        &config.state_dir,
        method,
        &uname,
        &boot_pstore,
        config.journal,
    ) {
        crate::boot::Settled::Up { running, report } => KernelState {
            method,
            running,
            report,
        },
        crate::boot::Settled::Hung { why } => {
            tokio::select! {
                _ = crate::boot::hang(&why) => unreachable!(),
                _ = shutdown.cancelled() => return Ok(()),
            }
        }
    };
    if let Some(r) = &kernel.report {
        tracing::warn!(boot = r.boot_id, outcome = ?r.outcome, "a boot of a build did not come up; reporting it");
    }
    let mut runner = JobRunner::new(
        config.clone(),
        executor,
        outbox.clone(),
        shutdown.child_token(),
    );
    let mut backoff = BACKOFF_START;
    loop {
        let started = Instant::now();
        let outcome = tokio::select! {
            r = session(&config, key.clone(), &policy, &mut runner, &outbox, &mut kernel) => r,
            _ = shutdown.cancelled() => {
                runner.shutdown("the agent is stopping").await;
                return Ok(());
            }
        };
        // A session that got through its handshake resets the backoff: the
        // server is there. Only failures to get in make the wait grow, so a
        // board that loses its link often still comes back within its jobs'
        // lease grace.
        let established = outcome.is_ok();
        match outcome {
            Ok(SessionEnd::Dropped(why)) => {
                tracing::warn!("connection to {} ended: {why}", config.server)
            }
            Ok(SessionEnd::Reboot(plan)) => {
                tracing::warn!(method = plan.method.as_str(), command = ?plan.command, "rebooting into the build");
                if let Err(e) = crate::boot::reboot(&plan) {
                    // Still here: the server's boot deadline ends the boot.
                    tracing::error!("the reboot failed: {e:#}");
                }
            }
            Err(LinkError::HostKey(e @ HostKeyError::Mismatch { .. })) => {
                tracing::error!("{e}");
                return Err(e.into());
            }
            Err(e) => tracing::warn!("cannot connect to {}: {e}", config.server),
        }
        if established || started.elapsed() > Duration::from_secs(30) {
            backoff = BACKOFF_START;
        }
        let jitter = rand::random_range(0.5..1.5);
        let wait = backoff.mul_f64(jitter).min(BACKOFF_CAP);
        tracing::info!("reconnecting in {:.1} s", wait.as_secs_f64());
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                _ = runner.reap(), if runner.has_jobs() => {}
                _ = shutdown.cancelled() => {
                    runner.shutdown("the agent is stopping").await;
                    return Ok(());
                }
            }
        }
        backoff = (backoff * 2).min(BACKOFF_CAP);
    }
}

struct ClientHandler {
    policy: HostKeyPolicy,
    rejection: Arc<Mutex<Option<HostKeyError>>>,
}

impl client::Handler for ClientHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            return Ok(false);
        };
        match self.policy.check(&keys::fingerprint(key)) {
            Ok(()) => Ok(true),
            Err(e) => {
                *self.rejection.lock().unwrap() = Some(e);
                Ok(false)
            }
        }
    }
}

async fn session(
    config: &Config,
    key: Arc<russh::keys::PrivateKey>,
    policy: &HostKeyPolicy,
    runner: &mut JobRunner,
    outbox: &Outbox,
    kernel: &mut KernelState,
) -> Result<SessionEnd, LinkError> {
    let ssh_config = Arc::new(client::Config {
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 4,
        nodelay: true,
        ..Default::default()
    });
    let rejection = Arc::new(Mutex::new(None));
    let handler = ClientHandler {
        policy: policy.clone(),
        rejection: rejection.clone(),
    };
    let connect = client::connect(ssh_config, config.server.as_str(), handler);
    let mut handle = match tokio::time::timeout(Duration::from_secs(20), connect).await {
        Err(_) => return Err(anyhow::anyhow!("SSH handshake timed out").into()),
        Ok(Err(e)) => {
            if let Some(e) = rejection.lock().unwrap().take() {
                return Err(e.into());
            }
            return Err(anyhow::anyhow!("SSH connection failed: {e}").into());
        }
        Ok(Ok(h)) => h,
    };
    let auth = handle
        .authenticate_publickey(config.board.clone(), PrivateKeyWithHashAlg::new(key, None))
        .await
        .context("SSH authentication")?;
    if !auth.success() {
        return Err(anyhow::anyhow!(
            "the server refused this board's key for board `{}` (is the key in fleet.toml, bound to this board name?)",
            config.board
        )
        .into());
    }
    let channel = handle
        .channel_open_session()
        .await
        .context("opening the agent channel")?;
    let (mut reader, mut writer) = tokio::io::split(channel.into_stream());

    let mut facts = facts::gather_for(config)
        .await
        .context("gathering the board's facts")?;
    facts.build_id = kernel.running.build_id;
    if let Some(release) = &kernel.running.kernel_release {
        facts.kernel_release = release.clone();
    }
    let executor = facts.executor;
    // What this agent still owes the server: running jobs, and ended ones
    // whose results were not acknowledged yet.
    let mut running_jobs = runner.leases();
    {
        let mut spool = outbox.spool.lock().unwrap();
        spool.rewind();
        let unfinished: Vec<i64> = spool.unfinished().into_iter().map(|(j, _)| j).collect();
        for lease in spool.leases() {
            if !running_jobs.contains(&lease) && !unfinished.contains(&lease.job_id) {
                running_jobs.push(lease);
            }
        }
    }
    let hello = AgentMessage::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        board: config.board.clone(),
        facts,
        running_jobs,
    });
    write_frame(&mut writer, &Frame::new(hello))
        .await
        .context("sending hello")?;
    let welcome = tokio::time::timeout(
        Duration::from_secs(15),
        read_frame::<ServerMessage, _>(&mut reader),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no welcome from the server within 15 s"))?
    .context("reading welcome")?;
    let (heartbeat_every, artifact_base) = match welcome.message {
        ServerMessage::Welcome {
            protocol_version,
            heartbeat_interval_ms,
            artifact_base_url,
            artifact_port,
            ..
        } if protocol_version == PROTOCOL_VERSION => {
            let host = config
                .server
                .rsplit_once(':')
                .map(|(h, _)| h)
                .unwrap_or(&config.server);
            let base = artifact_base_url
                .unwrap_or_else(|| format!("http://{host}:{}", artifact_port.unwrap_or(8080)));
            (Duration::from_millis(heartbeat_interval_ms.max(100)), base)
        }
        ServerMessage::Refused { reason } => {
            return Err(anyhow::anyhow!("the server refused this agent: {reason}").into());
        }
        other => return Err(anyhow::anyhow!("unexpected handshake answer: {other:?}").into()),
    };
    tracing::info!(board = %config.board, server = %config.server, executor = executor.as_str(), "connected");

    outbox.ready.notify_one();
    if let Some(r) = &kernel.report {
        let frame = Frame::with_payload(
            AgentMessage::BootReport {
                boot_id: r.boot_id,
                outcome: r.outcome.clone(),
            },
            r.console.clone(),
        );
        write_frame(&mut writer, &frame)
            .await
            .context("sending the boot report")?;
        kernel.report = None;
    }
    // A deploy in progress (downloads take a while; the session keeps
    // heartbeating meanwhile).
    let mut deploying: Option<(
        i64,
        tokio::task::JoinHandle<Result<crate::boot::RebootPlan, String>>,
    )> = None;

    let (in_tx, mut in_rx) = mpsc::channel::<Result<Frame<ServerMessage>, FrameError>>(16);
    let reader_task = tokio::spawn(async move {
        loop {
            let f = read_frame::<ServerMessage, _>(&mut reader).await;
            let end = f.is_err();
            if in_tx.send(f).await.is_err() || end {
                return;
            }
        }
    });

    let mut heartbeat = tokio::time::interval(heartbeat_every);
    let end = loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                let msg = AgentMessage::Heartbeat { running_job: runner.running_jobs().first().copied() };
                if let Err(e) = write_frame(&mut writer, &Frame::new(msg)).await {
                    break SessionEnd::Dropped(format!("writing heartbeat: {e}"));
                }
            }
            _ = outbox.ready.notified() => {
                // Send what is spooled, a bounded batch at a time so that
                // heartbeats and incoming messages are never starved.
                let mut failed = None;
                for _ in 0..64 {
                    let next = outbox.spool.lock().unwrap().next_unsent();
                    match next {
                        Ok(Some(frame)) => {
                            if let Err(e) = write_frame(&mut writer, &frame).await {
                                failed = Some(format!("writing: {e}"));
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::error!("reading the spool: {e}");
                            break;
                        }
                    }
                }
                if let Some(why) = failed {
                    break SessionEnd::Dropped(why);
                }
                if outbox.spool.lock().unwrap().has_unsent() {
                    outbox.ready.notify_one();
                }
            }
            incoming = in_rx.recv() => match incoming {
                None | Some(Err(FrameError::Closed)) => break SessionEnd::Dropped("server closed the connection".into()),
                Some(Err(e)) => break SessionEnd::Dropped(format!("protocol error: {e}")),
                Some(Ok(frame)) => match frame.message {
                    ServerMessage::AssignJob { job_id, epoch, spec } => runner.start(job_id, epoch, spec),
                    ServerMessage::CancelJob { job_id, reason } => runner.cancel(job_id, &reason),
                    ServerMessage::JobAck { job_id } => outbox.spool.lock().unwrap().ack(job_id),
                    ServerMessage::Refused { reason } => break SessionEnd::Dropped(format!("server refused: {reason}")),
                    ServerMessage::Welcome { .. } => tracing::warn!("ignoring a second welcome"),
                    ServerMessage::Boot { boot_id, build } => {
                        if runner.has_jobs() || deploying.is_some() {
                            let msg = AgentMessage::BootReport { boot_id, outcome: armfleet_protocol::BootOutcome::DeployFailed {
                                reason: "the board is busy (a job or another deploy is running)".into(),
                            }};
                            if let Err(e) = write_frame(&mut writer, &Frame::new(msg)).await {
                                break SessionEnd::Dropped(format!("writing: {e}"));
                            }
                        } else {
                            tracing::info!(boot_id, build = build.build_id, release = %build.kernel_release, "deploying a build");
                            let (settings, method, state_dir, base) = (config.boot.clone(), kernel.method, config.state_dir.clone(), artifact_base.clone());
                            deploying = Some((boot_id, tokio::spawn(async move {
                                crate::boot::deploy(&settings, method, &state_dir, &base, boot_id, &build).await
                            })));
                        }
                    }
                },
            },
            done = async { (&mut deploying.as_mut().unwrap().1).await }, if deploying.is_some() => {
                let (boot_id, _) = deploying.take().unwrap();
                let result = done.unwrap_or_else(|e| Err(format!("the deploy task died: {e}")));
                let outcome = match &result {
                    Ok(plan) => armfleet_protocol::BootOutcome::Rebooting { method: plan.method.as_str().into() },
                    Err(reason) => {
                        tracing::error!(boot_id, "deploy failed: {reason}");
                        armfleet_protocol::BootOutcome::DeployFailed { reason: reason.clone() }
                    }
                };
                if let Err(e) = write_frame(&mut writer, &Frame::new(AgentMessage::BootReport { boot_id, outcome })).await {
                    break SessionEnd::Dropped(format!("writing: {e}"));
                }
                if let Ok(plan) = result {
                    use tokio::io::AsyncWriteExt;
                    let _ = writer.flush().await;
                    // Let the server handle the report before this board's
                    // next connection replaces this one.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break SessionEnd::Reboot(plan);
                }
            }
            _ = runner.reap(), if runner.has_jobs() => {}
        }
    };
    reader_task.abort();
    // Jobs keep running: the server holds their leases for a grace period
    // and the spool resends everything after the reconnect.
    let _ = handle
        .disconnect(russh::Disconnect::ByApplication, "bye", "en")
        .await;
    Ok(end)
}
