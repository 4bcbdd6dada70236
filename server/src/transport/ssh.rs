//! The SSH endpoint agents dial into, and the per-connection session loop.
//!
//! Authentication binds a connection to one board: the SSH user name is the
//! board name, and the offered ed25519 key must be one fleet.toml lists for
//! that board. After that the agent opens one session channel and speaks
//! [`armfleet_protocol`] frames on it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use armfleet_protocol::{
    AgentMessage, Frame, FrameError, PROTOCOL_VERSION, ServerMessage, read_frame, write_frame,
};
use russh::keys::{HashAlg, PrivateKey};
use russh::server::{Auth, Msg, Server as _, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::domain::config::key_bytes;
use crate::domain::{boards, jobs, logs};
use crate::wiring::state::AppState;

/// Loads the server's host key, creating it on first start.
pub fn load_or_create_host_key(data_dir: &Path) -> anyhow::Result<PrivateKey> {
    let path = data_dir.join("ssh_host_ed25519_key");
    if path.exists() {
        return russh::keys::load_secret_key(&path, None)
            .with_context(|| format!("loading SSH host key {}", path.display()));
    }
    std::fs::create_dir_all(data_dir)?;
    let key = PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519)
        .context("generating the SSH host key")?;
    let text = key.to_openssh(russh::keys::ssh_key::LineEnding::LF)?;
    write_private_file(&path, text.as_bytes())?;
    std::fs::write(
        path.with_extension("pub"),
        format!("{}\n", key.public_key().to_openssh()?),
    )?;
    Ok(key)
}

pub fn write_private_file(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(data)?;
    Ok(())
}

pub fn fingerprint(key: &PrivateKey) -> String {
    key.public_key().fingerprint(HashAlg::Sha256).to_string()
}

/// Serves SSH on `listener` until `shutdown`.
pub async fn serve(
    state: AppState,
    host_key: PrivateKey,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = Arc::new(russh::server::Config {
        keys: vec![host_key],
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::from_millis(0)),
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 4,
        methods: russh::MethodSet::from(&[russh::MethodKind::PublicKey][..]),
        ..Default::default()
    });
    let tasks = TaskTracker::new();
    let mut server = AgentServer {
        state,
        tasks: tasks.clone(),
        shutdown: shutdown.clone(),
    };
    let running = server.run_on_socket(config, &listener);
    let handle = running.handle();
    tokio::select! {
        r = running => r.context("SSH server failed")?,
        _ = shutdown.cancelled() => {
            handle.shutdown("server shutting down".into());
        }
    }
    tasks.close();
    tasks.wait().await;
    Ok(())
}

struct AgentServer {
    state: AppState,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl russh::server::Server for AgentServer {
    type Handler = AgentConnection;
    fn new_client(&mut self, peer: Option<std::net::SocketAddr>) -> AgentConnection {
        self.state.metrics.ssh_connections.inc();
        AgentConnection {
            state: self.state.clone(),
            tasks: self.tasks.clone(),
            shutdown: self.shutdown.clone(),
            peer,
            board: None,
            key: None,
            channel_taken: false,
        }
    }
}

struct AgentConnection {
    state: AppState,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    peer: Option<std::net::SocketAddr>,
    /// Set once authentication bound this connection to a board.
    board: Option<String>,
    key: Option<Vec<u8>>,
    channel_taken: bool,
}

impl russh::server::Handler for AgentConnection {
    type Error = russh::Error;

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let fleet = self.state.fleet.current();
        let offered = key_bytes(key.public_key);
        let owner = fleet.board_with_key(&offered);
        let fp = key.public_key.fingerprint(HashAlg::Sha256);
        match owner {
            Some(b) if b.name == user => {
                tracing::info!(board = user, peer = ?self.peer, "agent authenticated");
                self.board = Some(user.to_owned());
                self.key = Some(offered);
                Ok(Auth::Accept)
            }
            Some(b) => {
                tracing::warn!(
                    peer = ?self.peer, claimed = user, owner = %b.name, key = %fp,
                    "refused: a valid key of one board claims another board's name"
                );
                self.state.metrics.ssh_auth_failures.inc();
                Ok(Auth::reject())
            }
            None => {
                tracing::warn!(peer = ?self.peer, claimed = user, key = %fp, "refused: unknown agent key");
                self.state.metrics.ssh_auth_failures.inc();
                Ok(Auth::reject())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(board) = self.board.clone() else {
            return Ok(());
        };
        if self.channel_taken {
            tracing::warn!(board, "second channel refused");
            return Ok(());
        }
        self.channel_taken = true;
        reply.accept().await;
        let state = self.state.clone();
        let shutdown = self.shutdown.clone();
        let key = self.key.clone().unwrap_or_default();
        let span = tracing::info_span!("board", name = %board);
        self.tasks.spawn(tracing::Instrument::instrument(
            agent_session(state, board, key, channel, shutdown),
            span,
        ));
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        Ok(())
    }
}

/// One agent's conversation, from Hello to the end of the connection.
async fn agent_session(
    state: AppState,
    board: String,
    key: Vec<u8>,
    channel: Channel<Msg>,
    shutdown: CancellationToken,
) {
    let stream = channel.into_stream();
    let (mut reader, mut writer) = tokio::io::split(stream);

    let hello = tokio::time::timeout(
        Duration::from_secs(15),
        read_frame::<AgentMessage, _>(&mut reader),
    )
    .await;
    let hello = match hello {
        Ok(Ok(Frame {
            message: AgentMessage::Hello(h),
            ..
        })) => h,
        Ok(Ok(other)) => {
            return refuse(
                &mut writer,
                &board,
                format!("expected hello, got {:?}", other.message),
            )
            .await;
        }
        Ok(Err(e)) => {
            // The version may be the only thing we can read of a newer agent.
            return refuse(&mut writer, &board, format!("bad hello: {e}")).await;
        }
        Err(_) => return refuse(&mut writer, &board, "no hello within 15 s".into()).await,
    };
    if hello.protocol_version != PROTOCOL_VERSION {
        return refuse(&mut writer, &board, format!(
            "protocol version mismatch: agent speaks v{}, server speaks v{PROTOCOL_VERSION}; upgrade the older side",
            hello.protocol_version
        ))
        .await;
    }
    if hello.board != board {
        return refuse(
            &mut writer,
            &board,
            format!(
                "hello names board `{}` but the connection authenticated as `{board}`",
                hello.board
            ),
        )
        .await;
    }

    let (tx, mut rx) = mpsc::channel::<ServerMessage>(64);
    let executor = hello.facts.executor;
    let ticket = state.dispatcher.register(
        &board,
        key,
        tx,
        executor.as_str(),
        hello.facts.host_kind,
        &shutdown,
    );
    if let Err(e) = boards::set_online(&state.pool, &board, &hello.facts, &state.server_id).await {
        tracing::error!(board, "recording board online: {e}");
    }
    let facts_json = serde_json::to_value(&hello.facts).unwrap_or_default();
    for w in boards::profile_warnings(&state.fleet.current(), &board, Some(&facts_json)) {
        tracing::warn!(board, "family profile: {w}");
    }
    // A boot waiting for this board ends here: back on the build, or not.
    match crate::domain::deploy::board_reported(
        &state.pool,
        &state.fleet.current(),
        &board,
        hello.facts.build_id,
        &hello.facts.kernel_release,
    )
    .await
    {
        Ok(true) => {
            state.metrics.boots_failed.inc();
        }
        Ok(false) => {}
        Err(e) => tracing::error!(board, "checking the board's boot: {e}"),
    }
    // Jobs the agent still holds keep running; the board's others died
    // with its previous agent. Jobs it holds that are no longer its own are
    // stopped and acknowledged so it can drop their spools.
    let held: Vec<(i64, i64)> = hello
        .running_jobs
        .iter()
        .map(|l| (l.job_id, l.epoch))
        .collect();
    let mut stale = Vec::new();
    match jobs::reconcile_leases(&state.pool, &board, &held).await {
        Ok(s) => stale = s,
        Err(e) => tracing::error!(board, "reconciling the agent's jobs: {e}"),
    }
    let welcome = ServerMessage::Welcome {
        protocol_version: PROTOCOL_VERSION,
        server_version: env!("CARGO_PKG_VERSION").into(),
        heartbeat_interval_ms: state.fleet.current().server.heartbeat_interval_ms,
        artifact_base_url: state.fleet.current().server.public_url.clone(),
        artifact_port: state.http_port.get().copied(),
    };
    if let Err(e) = write_frame(&mut writer, &Frame::new(welcome)).await {
        state
            .dispatcher
            .session_ended(&board, ticket.id, &format!("writing welcome: {e}"))
            .await;
        return;
    }
    tracing::info!(board, agent = %hello.agent_version, executor = executor.as_str(), held = held.len(), "board online");
    for job_id in stale {
        // Its spooled frames (logs) are still welcome; its result is not.
        let _ = write_frame(
            &mut writer,
            &Frame::new(ServerMessage::CancelJob {
                job_id,
                reason: "the server no longer expects this job from this board".into(),
            }),
        )
        .await;
    }

    // Frames are read in their own task so that a slow database write never
    // stalls reading (and a half-read frame is never dropped by select!).
    let (in_tx, mut in_rx) = mpsc::channel::<Result<Frame<AgentMessage>, FrameError>>(256);
    // Liveness is noted as frames arrive, even while their handling waits
    // (e.g. for the database to come back), so a slow database never makes
    // a live board look dead.
    let (dispatcher, reader_board, ticket_id) =
        (state.dispatcher.clone(), board.clone(), ticket.id);
    let read_task = tokio::spawn(async move {
        loop {
            let frame = read_frame::<AgentMessage, _>(&mut reader).await;
            if frame.is_ok() {
                dispatcher.touch(&reader_board, ticket_id);
            }
            let end = frame.is_err();
            if in_tx.send(frame).await.is_err() || end {
                return;
            }
        }
    });

    // Only now that the agent's jobs are reconciled and frames are read
    // (and liveness noted) may claiming work take its time.
    state.dispatcher.open_for_work(&board, ticket.id);
    state
        .work
        .send(crate::domain::work::Event::BoardConnected(board.clone()))
        .await;

    let reason = loop {
        tokio::select! {
            _ = ticket.close.cancelled() => {
                break if shutdown.is_cancelled() { "server shutting down".to_owned() }
                      else { "closed by the server (heartbeat deadline missed, key revoked, or connection replaced)".to_owned() };
            }
            out = rx.recv() => {
                let Some(msg) = out else { break "dispatcher dropped the session".into() };
                if let Err(e) = write_frame(&mut writer, &Frame::new(msg)).await {
                    break format!("connection broken: {e}");
                }
            }
            incoming = in_rx.recv() => {
                match incoming {
                    None | Some(Err(FrameError::Closed)) => break "agent disconnected".into(),
                    Some(Err(e)) => {
                        tracing::warn!(board, "protocol error, closing this connection: {e}");
                        let _ = write_frame(&mut writer, &Frame::new(ServerMessage::Refused {
                            reason: format!("protocol error: {e}"),
                        })).await;
                        break format!("protocol error: {e}");
                    }
                    Some(Ok(frame)) => {
                        let reply = handle_with_retry(&state, &board, Some(ticket.id), &frame, &ticket.close).await;
                        if let Some(reply) = reply {
                            if let Err(e) = write_frame(&mut writer, &Frame::new(reply)).await {
                                break format!("connection broken: {e}");
                            }
                        }
                    }
                }
            }
        }
    };
    read_task.abort();
    state
        .dispatcher
        .session_ended(&board, ticket.id, &reason)
        .await;
    state
        .work
        .send(crate::domain::work::Event::BoardLeft(board))
        .await;
}

async fn refuse<W: tokio::io::AsyncWrite + Unpin>(writer: &mut W, board: &str, reason: String) {
    tracing::warn!(board, "refusing agent: {reason}");
    let _ = write_frame(writer, &Frame::new(ServerMessage::Refused { reason })).await;
}

/// Database errors that a retry can cure (the database restarting, the
/// pool exhausted), as opposed to a message that is wrong.
fn transient(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        let db = c.downcast_ref::<sqlx::Error>().or_else(|| match c.downcast_ref::<jobs::JobError>() {
            Some(jobs::JobError::Db(d)) => Some(d),
            _ => None,
        });
        matches!(db, Some(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_)))
            || matches!(db, Some(sqlx::Error::Database(d)) if d.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08")))
    })
}

/// Handles one frame; while the database is unreachable it retries with
/// back-off instead of dropping the message (the agent's spool and TCP
/// back-pressure hold the rest).
async fn handle_with_retry(
    state: &AppState,
    board: &str,
    session_id: Option<u64>,
    frame: &Frame<AgentMessage>,
    close: &CancellationToken,
) -> Option<ServerMessage> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match handle_frame(state, board, frame).await {
            Ok(reply) => return reply,
            Err(e) if transient(&e) => {
                // The silence is ours, not the board's: while we wait for
                // the database the reader stops reading (back-pressure), so
                // keep the session counted as alive.
                if let Some(id) = session_id {
                    state.dispatcher.touch(board, id);
                }
                tracing::warn!(
                    board,
                    "database unavailable, retrying in {backoff:?}: {e:#}"
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = close.cancelled() => return None,
                }
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
            Err(e) => {
                tracing::warn!(board, "message refused: {e:#}");
                state.metrics.agent_messages_refused.inc();
                // A result the server cannot take (stale epoch, job already
                // ended) will never be taken: let the agent drop it.
                if let AgentMessage::JobFinished { job_id, .. } = &frame.message {
                    return Some(ServerMessage::JobAck { job_id: *job_id });
                }
                return None;
            }
        }
    }
}

async fn handle_frame(
    state: &AppState,
    board: &str,
    frame: &Frame<AgentMessage>,
) -> anyhow::Result<Option<ServerMessage>> {
    let pool = &state.pool;
    match &frame.message {
        AgentMessage::Hello(_) => anyhow::bail!("duplicate hello"),
        // Liveness is noted by the reader; the watchdog writes heartbeat
        // times for all boards at once.
        AgentMessage::Heartbeat { .. } => {}
        AgentMessage::JobStarted { job_id, epoch } => {
            match jobs::mark_running(pool, *job_id, board, *epoch).await {
                // A resent start of a job that is already running.
                Err(jobs::JobError::IllegalTransition {
                    from: "running", ..
                }) => {}
                other => other?,
            }
        }
        AgentMessage::LogChunk {
            job_id,
            epoch,
            stream,
            seq,
            encoding,
        } => {
            let chunk = logs::IncomingChunk::check(&frame.payload, *encoding)
                .with_context(|| format!("log chunk {seq} of job {job_id} refused"))?;
            let bytes = chunk.raw_len;
            let cap = state.fleet.current().server.max_log_bytes_per_job;
            if !state.log_budget.admit(pool, *job_id, bytes, cap).await? {
                jobs::check_owner(pool, *job_id, board, *epoch).await?;
                return Ok(None);
            }
            let stored = logs::store_agent_chunk(
                &state.log_pool,
                *job_id,
                board,
                *epoch,
                *stream,
                *seq,
                chunk,
            )
            .await;
            let stored = match stored {
                Ok(s) => s,
                Err(e) => {
                    state.log_budget.refund(*job_id, bytes);
                    return Err(e.into());
                }
            };
            if stored {
                state.metrics.log_bytes.inc_by(bytes);
                // A crash log recovered after the job already ended (and
                // was analysed): triage the job again with it.
                if *seq >= armfleet_protocol::RECOVERED_LOG_SEQ_BASE
                    && crate::workers::analysis::reanalyse(pool, *job_id).await?
                {
                    state.analysis.push(*job_id);
                }
            } else {
                state.log_budget.refund(*job_id, bytes);
                // Not the board's job (or a stale epoch): refused as before.
                if let Err(e) = jobs::check_owner(pool, *job_id, board, *epoch).await {
                    state.log_budget.forget(*job_id);
                    return Err(e.into());
                }
                state.metrics.log_chunks_duplicate.inc();
            }
        }
        AgentMessage::CycleDone {
            job_id,
            epoch,
            record,
        } => {
            jobs::record_cycle(pool, *job_id, board, *epoch, record).await?;
        }
        AgentMessage::JobFinished {
            job_id,
            epoch,
            result,
            environment,
        } => {
            let to =
                jobs::finish(pool, *job_id, board, *epoch, result, environment.as_ref()).await?;
            tracing::info!(board, job = job_id, state = to.as_str(), "job finished");
            state.analysis.push(*job_id);
            state.log_budget.forget(*job_id);
            state
                .work
                .send(crate::domain::work::Event::JobEnded(board.to_owned()))
                .await;
            return Ok(Some(ServerMessage::JobAck { job_id: *job_id }));
        }
        AgentMessage::BootReport { boot_id, outcome } => {
            let fleet = state.fleet.current();
            let failed = crate::domain::deploy::agent_report(
                &state.pool,
                &fleet,
                board,
                *boot_id,
                outcome,
                &frame.payload,
            )
            .await?;
            if failed {
                state.metrics.boots_failed.inc();
            }
            state
                .work
                .send(crate::domain::work::Event::BootEnded(board.to_owned()))
                .await;
        }
    }
    Ok(None)
}
