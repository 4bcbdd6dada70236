//! One simulated agent: a real SSH connection authenticated with the
//! board's own ed25519 key, speaking the real protocol.
//!
//! Each agent is exactly one tokio task (plus the connection task russh
//! spawns for every client session); no threads, no per-agent buffers beyond
//! the frame being assembled, so 10,000 of them fit in one process. Log
//! payloads are slices of one shared buffer.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use armfleet_protocol::frame::{decode_body, encode};
use armfleet_protocol::{
    AgentMessage, BoardFacts, ChunkEncoding, CycleRecord, ExecutorKind, Frame, Hello, JobLease,
    JobResult, KvmStatus, LogStream, MAX_FRAME_BYTES, PROTOCOL_VERSION, ServerMessage, Task,
};
use bytes::{Buf, Bytes, BytesMut};
use chrono::{DateTime, Utc};
use russh::client;
use russh::keys::PrivateKeyWithHashAlg;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::fleet::AgentIdentity;

/// The streams chunks rotate over (all three are real job streams).
pub const STREAMS: [LogStream; 3] = [
    LogStream::GuestConsole,
    LogStream::HostDmesg,
    LogStream::Qmp,
];

#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// The servers' SSH addresses; agent `i` dials number `i % len`.
    pub server_addrs: Vec<String>,
    /// Pin the server's host key (`SHA256:…`); None: accept any (a load test).
    pub server_fingerprint: Option<String>,
    pub log_bytes_per_job: u64,
    pub chunk_bytes: usize,
    /// Chunks travel uncompressed (the server compresses them).
    pub raw_chunks: bool,
    /// CycleDone records per job; None: the job spec's `cycles`.
    pub cycles: Option<u32>,
    /// Per-agent log rate while a job runs, bytes/s; 0: as fast as the link takes.
    pub log_rate_bytes_per_s: u64,
    pub connect_retries: u32,
    pub handshake_timeout: Duration,
}

/// What the orchestrator hears from agents.
#[derive(Debug)]
pub enum Event {
    Connected { handshake: Duration },
    ConnectFailed { board: String, error: String },
    JobFinished { job_id: i64 },
    Disconnected,
}

/// Everything one agent saw of one job.
#[derive(Debug, Clone)]
pub struct JobRec {
    pub board: Arc<str>,
    pub epoch: i64,
    /// How many times an AssignJob for this job id reached any agent.
    pub assigned: u32,
    pub assigned_at: DateTime<Utc>,
    /// Since when the board was free (connected, or its previous job finished).
    pub board_free_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Raw log bytes sent, indexed like [`STREAMS`].
    pub bytes: [u64; 3],
    pub cycles: u32,
    /// JobAck messages received for it.
    pub acks: u32,
}

pub struct Shared {
    pub settings: AgentSettings,
    pub jobs: Mutex<HashMap<i64, JobRec>>,
    pub errors: ErrorLog,
    pub log_bytes_sent: AtomicU64,
    pub chunks_sent: AtomicU64,
    pub frames_sent: AtomicU64,
    pub heartbeats_sent: AtomicU64,
    pub connect_retries: AtomicU64,
    pub reconnects: AtomicU64,
    /// Wall clock (µs since epoch) of the first log chunk sent; 0 = none yet.
    pub first_chunk_us: AtomicU64,
    pub events: mpsc::UnboundedSender<Event>,
    pub connect_slots: Semaphore,
    log_text: Bytes,
    /// Gzipped chunks by (variant, length), made once: a real board
    /// compresses on its own cores, and the load generator must not bill
    /// the server's cores for the work of thousands of boards.
    gzipped: Mutex<HashMap<(usize, usize), Bytes>>,
}

/// Error counter plus the first messages, for the report.
#[derive(Default)]
pub struct ErrorLog {
    count: AtomicU64,
    first: Mutex<Vec<String>>,
}

impl ErrorLog {
    pub fn push(&self, msg: String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first.lock().unwrap();
        if first.len() < 50 {
            first.push(msg);
        }
    }
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
    pub fn first(&self) -> Vec<String> {
        self.first.lock().unwrap().clone()
    }
}

impl Shared {
    pub fn new(
        settings: AgentSettings,
        events: mpsc::UnboundedSender<Event>,
        connect_concurrency: usize,
    ) -> Shared {
        Shared {
            settings,
            jobs: Mutex::new(HashMap::new()),
            errors: ErrorLog::default(),
            log_bytes_sent: AtomicU64::new(0),
            chunks_sent: AtomicU64::new(0),
            frames_sent: AtomicU64::new(0),
            heartbeats_sent: AtomicU64::new(0),
            connect_retries: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            first_chunk_us: AtomicU64::new(0),
            events,
            connect_slots: Semaphore::new(connect_concurrency.max(1)),
            log_text: make_log_text(),
            gzipped: Mutex::new(HashMap::new()),
        }
    }

    /// The payload and encoding of a chunk of `len` bytes, variant `variant`
    /// of [`CHUNK_VARIANTS`] (different text per variant, so that chunks do
    /// not all compress alike).
    fn chunk(&self, variant: usize, len: usize) -> (Bytes, ChunkEncoding) {
        let text = &self.log_text;
        let len = len.min(text.len());
        let stride = (text.len() - len) / CHUNK_VARIANTS;
        let off = (variant % CHUNK_VARIANTS) * stride;
        let raw = text.slice(off..off + len);
        if self.settings.raw_chunks {
            return (raw, ChunkEncoding::Raw);
        }
        let packed = self
            .gzipped
            .lock()
            .unwrap()
            .entry((variant % CHUNK_VARIANTS, len))
            .or_insert_with(|| Bytes::from(armfleet_protocol::chunk::gzip(&raw)))
            .clone();
        (
            packed,
            ChunkEncoding::Gzip {
                raw_len: len as u32,
            },
        )
    }
}

/// Distinct chunk texts per chunk length.
const CHUNK_VARIANTS: usize = 64;

/// 1 MiB of kernel-log-like text, shared by every chunk of every agent. Hex
/// words keep it from compressing absurdly well (gzip gets ~3-4×, like a
/// real console log).
fn make_log_text() -> Bytes {
    use rand::RngExt;
    let mut rng = rand::rng();
    let mut s = String::with_capacity((1 << 20) + 256);
    let mut t = 0.0f64;
    let words = [
        "kvm", "stage2", "migrate", "cancel", "dirty", "log", "split", "block", "tlbi", "vmid",
        "fault", "mmu",
    ];
    while s.len() < 1 << 20 {
        t += rng.random_range(0.0..0.01);
        let w1 = words[rng.random_range(0..words.len())];
        let w2 = words[rng.random_range(0..words.len())];
        let a: u64 = rng.random();
        let b: u32 = rng.random();
        s.push_str(&format!(
            "[{t:>12.6}] loadgen: {w1} {w2} addr=0x{a:016x} val=0x{b:08x} cpu{}\n",
            b % 8
        ));
    }
    s.truncate(1 << 20);
    Bytes::from(s)
}

fn facts() -> BoardFacts {
    BoardFacts {
        kernel_release: "6.12.0-loadgen".into(),
        kernel_version: "#1 SMP PREEMPT simulated by armfleet-loadgen".into(),
        arch: "arm64".into(),
        cpu_implementer: Some("0x48".into()),
        cpu_part: Some("0xd01".into()),
        cores: 4,
        mem_total_kib: 8 << 20,
        kvm: KvmStatus {
            present: true,
            accessible: true,
            hardware: true,
            note: None,
        },
        qemu: Vec::new(),
        hugepages: Default::default(),
        executor: ExecutorKind::Replay,
        host_kind: armfleet_protocol::HostKind::Simulated,
        ssh_board: None,
        kvm_mode: None,
        memory: Default::default(),
        build_id: None,
    }
}

struct Handler {
    fingerprint: Option<String>,
}

impl client::Handler for Handler {
    type Error = russh::Error;
    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let Some(want) = &self.fingerprint else {
            return Ok(true);
        };
        Ok(match key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => {
                key.fingerprint(russh::keys::HashAlg::Sha256).to_string() == *want
            }
            _ => false,
        })
    }
}

/// An established, handshaken agent link.
struct Link {
    handle: client::Handle<Handler>,
    rd: russh::ChannelReadHalf,
    wr: russh::ChannelWriteHalf<client::Msg>,
    buf: BytesMut,
    heartbeat_every: Duration,
}

impl Link {
    async fn send(&self, shared: &Shared, msg: AgentMessage, payload: Bytes) -> anyhow::Result<()> {
        let bytes = encode(&Frame::with_payload(msg, payload))?;
        self.wr
            .data_bytes(Bytes::from(bytes))
            .await
            .context("writing to the channel")?;
        shared.frames_sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The next complete frame in the buffer, if any.
    fn next_frame(&mut self) -> anyhow::Result<Option<Frame<ServerMessage>>> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let total = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        if total > MAX_FRAME_BYTES {
            bail!("server sent a frame of {total} bytes");
        }
        if self.buf.len() < 4 + total as usize {
            return Ok(None);
        }
        let mut frame = self.buf.split_to(4 + total as usize);
        frame.advance(4);
        Ok(Some(decode_body(frame.freeze())?))
    }

    /// Reads until one frame is complete. None: the channel ended.
    async fn read_frame(&mut self) -> anyhow::Result<Option<Frame<ServerMessage>>> {
        loop {
            if let Some(f) = self.next_frame()? {
                return Ok(Some(f));
            }
            match self.rd.wait().await {
                Some(russh::ChannelMsg::Data { data }) => self.buf.extend_from_slice(&data),
                Some(russh::ChannelMsg::Eof | russh::ChannelMsg::Close) | None => return Ok(None),
                Some(_) => {}
            }
        }
    }
}

async fn connect(
    id: &AgentIdentity,
    server: usize,
    shared: &Shared,
    leases: Vec<JobLease>,
) -> anyhow::Result<Link> {
    let config = Arc::new(client::Config {
        inactivity_timeout: None,
        keepalive_interval: None,
        nodelay: true,
        ..Default::default()
    });
    let handler = Handler {
        fingerprint: shared.settings.server_fingerprint.clone(),
    };
    let addrs = &shared.settings.server_addrs;
    let mut handle = client::connect(config, addrs[server % addrs.len()].as_str(), handler)
        .await
        .context("SSH connect")?;
    let auth = handle
        .authenticate_publickey(
            id.board.clone(),
            PrivateKeyWithHashAlg::new(id.key.clone(), None),
        )
        .await
        .context("SSH authentication")?;
    if !auth.success() {
        bail!("the server refused the key of {}", id.board);
    }
    let channel = handle
        .channel_open_session()
        .await
        .context("opening the agent channel")?;
    let (rd, wr) = channel.split();
    let mut link = Link {
        handle,
        rd,
        wr,
        buf: BytesMut::with_capacity(4096),
        heartbeat_every: Duration::ZERO,
    };
    let hello = AgentMessage::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: concat!("loadgen-", env!("CARGO_PKG_VERSION")).into(),
        board: id.board.clone(),
        facts: facts(),
        running_jobs: leases,
    });
    link.send(shared, hello, Bytes::new()).await?;
    let welcome = link
        .read_frame()
        .await?
        .context("the server closed the channel before its welcome")?;
    link.heartbeat_every = match welcome.message {
        ServerMessage::Welcome {
            protocol_version,
            heartbeat_interval_ms,
            ..
        } if protocol_version == PROTOCOL_VERSION => {
            Duration::from_millis(heartbeat_interval_ms.max(100))
        }
        ServerMessage::Refused { reason } => bail!("refused: {reason}"),
        other => bail!("unexpected handshake answer {other:?}"),
    };
    Ok(link)
}

/// The job an agent is working through.
struct Running {
    id: i64,
    epoch: i64,
    chunks_total: u64,
    chunk_idx: u64,
    bytes_left: u64,
    cycles_total: u32,
    cycles_sent: u32,
    seq: [u64; 3],
    next_step: tokio::time::Instant,
}

impl Running {
    fn cycles_due(&self) -> u32 {
        if self.chunks_total == 0 {
            return self.cycles_total;
        }
        (self.chunk_idx * self.cycles_total as u64 / self.chunks_total) as u32
    }
}

/// Runs one agent until `stop`: connect (bounded by the shared connect
/// slots), then serve jobs and heartbeat. A dropped connection is an error
/// (its job is lost on the server); the agent reconnects like a real one.
pub async fn run(id: AgentIdentity, server: usize, shared: Arc<Shared>, stop: CancellationToken) {
    let s = &shared.settings;
    let board: Arc<str> = Arc::from(id.board.as_str());
    let mut st = AgentState {
        job: None,
        pending: VecDeque::new(),
        unacked: HashMap::new(),
        free_since: Utc::now(),
    };
    let mut first = true;
    loop {
        let mut attempt = 0;
        let mut link = loop {
            let permit = tokio::select! {
                p = shared.connect_slots.acquire() => p.expect("semaphore open"),
                _ = stop.cancelled() => return,
            };
            // Protocol v2: the jobs we still hold keep their leases.
            let mut leases: Vec<JobLease> = st
                .unacked
                .iter()
                .map(|(&job_id, &(epoch, _))| JobLease { job_id, epoch })
                .collect();
            if let Some(j) = &st.job {
                leases.push(JobLease {
                    job_id: j.id,
                    epoch: j.epoch,
                });
            }
            let started = Instant::now();
            let r = tokio::select! {
                r = tokio::time::timeout(s.handshake_timeout, connect(&id, server, &shared, leases)) => r,
                _ = stop.cancelled() => return,
            };
            drop(permit);
            let err = match r {
                Ok(Ok(link)) => {
                    if first {
                        let _ = shared.events.send(Event::Connected {
                            handshake: started.elapsed(),
                        });
                    }
                    break link;
                }
                Ok(Err(e)) => format!("{e:#}"),
                Err(_) => format!("handshake timed out after {:?}", s.handshake_timeout),
            };
            attempt += 1;
            if attempt > s.connect_retries {
                if first {
                    let _ = shared.events.send(Event::ConnectFailed {
                        board: id.board.clone(),
                        error: err,
                    });
                } else {
                    shared
                        .errors
                        .push(format!("{board}: could not reconnect: {err}"));
                }
                return;
            }
            shared.connect_retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200 << attempt.min(6))).await;
        };
        let result = async {
            if !first {
                resume(&link, &shared, &mut st).await?;
            }
            serve(&mut link, &board, &shared, &stop, &mut st).await
        }
        .await;
        first = false;
        let _ = link
            .handle
            .disconnect(russh::Disconnect::ByApplication, "loadgen done", "en")
            .await;
        match result {
            Ok(()) => return,
            Err(e) => {
                shared
                    .errors
                    .push(format!("{board}: connection lost: {e:#}"));
                let _ = shared.events.send(Event::Disconnected);
                if stop.is_cancelled() {
                    return;
                }
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// What an agent keeps across reconnects.
struct AgentState {
    job: Option<Running>,
    pending: VecDeque<(i64, i64, u32)>,
    /// Finished jobs whose JobAck has not arrived: job → (epoch, cycles).
    unacked: HashMap<i64, (i64, u32)>,
    free_since: DateTime<Utc>,
}

/// After a reconnect: restart the running job's stream from its first
/// chunk (the server stores each (job, stream, seq) once, so resends are
/// harmless) and resend the results not yet acknowledged.
async fn resume(link: &Link, shared: &Shared, st: &mut AgentState) -> anyhow::Result<()> {
    if let Some(j) = st.job.take() {
        if let Some(rec) = shared.jobs.lock().unwrap().get_mut(&j.id) {
            rec.bytes = [0; 3];
            rec.cycles = 0;
        }
        st.job = Some(start(link, shared, j.id, j.epoch, j.cycles_total).await?);
    }
    for (&job_id, &(epoch, cycles)) in &st.unacked {
        let result = JobResult::Passed {
            cycles_completed: cycles,
        };
        link.send(
            shared,
            AgentMessage::JobFinished {
                job_id,
                epoch,
                result,
                environment: None,
            },
            Bytes::new(),
        )
        .await?;
    }
    Ok(())
}

async fn serve(
    link: &mut Link,
    board: &Arc<str>,
    shared: &Shared,
    stop: &CancellationToken,
    st: &mut AgentState,
) -> anyhow::Result<()> {
    let s = &shared.settings;
    let mut heartbeat = tokio::time::interval(link.heartbeat_every);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let job = &st.job;
        let step = async {
            match job {
                Some(j) if s.log_rate_bytes_per_s > 0 => {
                    tokio::time::sleep_until(j.next_step).await
                }
                Some(_) => {}
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = heartbeat.tick() => {
                let msg = AgentMessage::Heartbeat { running_job: st.job.as_ref().map(|j| j.id) };
                link.send(shared, msg, Bytes::new()).await?;
                shared.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
            }
            msg = link.rd.wait() => match msg {
                Some(russh::ChannelMsg::Data { data }) => {
                    link.buf.extend_from_slice(&data);
                    while let Some(frame) = link.next_frame()? {
                        match frame.message {
                            ServerMessage::AssignJob { job_id, epoch, spec } => {
                                let now = Utc::now();
                                let cycles = s.cycles.unwrap_or(match &spec.task {
                                    Task::MigrateCancel(p) => p.cycles,
                                });
                                {
                                    let mut jobs = shared.jobs.lock().unwrap();
                                    match jobs.get_mut(&job_id) {
                                        Some(rec) => {
                                            rec.assigned += 1;
                                            shared.errors.push(format!(
                                                "job {job_id} assigned again: to {board} (epoch {epoch}), earlier to {} (epoch {})",
                                                rec.board, rec.epoch
                                            ));
                                        }
                                        None => {
                                            jobs.insert(job_id, JobRec {
                                                board: board.clone(),
                                                epoch,
                                                assigned: 1,
                                                assigned_at: now,
                                                board_free_at: st.free_since,
                                                finished_at: None,
                                                bytes: [0; 3],
                                                cycles: 0,
                                                acks: 0,
                                            });
                                        }
                                    }
                                }
                                if st.job.is_some() {
                                    shared.errors.push(format!(
                                        "{board}: job {job_id} assigned while job {} runs (max_jobs = 1)",
                                        st.job.as_ref().map(|j| j.id).unwrap_or_default()
                                    ));
                                    st.pending.push_back((job_id, epoch, cycles));
                                } else {
                                    st.job = Some(start(link, shared, job_id, epoch, cycles).await?);
                                }
                            }
                            ServerMessage::JobAck { job_id } => {
                                st.unacked.remove(&job_id);
                                if let Some(rec) = shared.jobs.lock().unwrap().get_mut(&job_id) {
                                    rec.acks += 1;
                                }
                            }
                            ServerMessage::CancelJob { job_id, reason } => {
                                shared.errors.push(format!("{board}: job {job_id} cancelled by the server: {reason}"));
                                if st.job.as_ref().is_some_and(|j| j.id == job_id) {
                                    st.job = None;
                                }
                                st.pending.retain(|p| p.0 != job_id);
                                st.unacked.remove(&job_id);
                            }
                            ServerMessage::Refused { reason } => bail!("server refused: {reason}"),
                            ServerMessage::Welcome { .. } => shared.errors.push(format!("{board}: second welcome")),
                            ServerMessage::Boot { .. } => shared.errors.push(format!("{board}: unexpected boot request (loadgen plans build no kernels)")),
                        }
                    }
                }
                Some(russh::ChannelMsg::Eof | russh::ChannelMsg::Close) | None => bail!("the server closed the channel"),
                Some(_) => {}
            },
            _ = step, if st.job.is_some() => {
                let j = st.job.as_mut().expect("guarded");
                if step_job(link, shared, j).await? {
                    let (id, epoch, cycles) = (j.id, j.epoch, j.cycles_sent);
                    st.job = None;
                    st.unacked.insert(id, (epoch, cycles));
                    st.free_since = Utc::now();
                    if let Some(rec) = shared.jobs.lock().unwrap().get_mut(&id) {
                        rec.finished_at = Some(st.free_since);
                    }
                    let _ = shared.events.send(Event::JobFinished { job_id: id });
                    if let Some((id, epoch, cycles)) = st.pending.pop_front() {
                        st.job = Some(start(link, shared, id, epoch, cycles).await?);
                    }
                }
            }
        }
    }
}

async fn start(
    link: &Link,
    shared: &Shared,
    id: i64,
    epoch: i64,
    cycles: u32,
) -> anyhow::Result<Running> {
    link.send(
        shared,
        AgentMessage::JobStarted { job_id: id, epoch },
        Bytes::new(),
    )
    .await?;
    let s = &shared.settings;
    let chunk = s.chunk_bytes.max(1) as u64;
    Ok(Running {
        id,
        epoch,
        chunks_total: s.log_bytes_per_job.div_ceil(chunk),
        chunk_idx: 0,
        bytes_left: s.log_bytes_per_job,
        cycles_total: cycles,
        cycles_sent: 0,
        seq: [0; 3],
        next_step: tokio::time::Instant::now(),
    })
}

/// Sends the job's next frame: a cycle record when one is due, else the
/// next log chunk, and finally JobFinished. Returns true when the job ended.
async fn step_job(link: &Link, shared: &Shared, j: &mut Running) -> anyhow::Result<bool> {
    let s = &shared.settings;
    if j.cycles_sent < j.cycles_due() || (j.bytes_left == 0 && j.cycles_sent < j.cycles_total) {
        j.cycles_sent += 1;
        let record = CycleRecord {
            cycle: j.cycles_sent,
            action: "cancel".into(),
            delay_ms: 300,
            state_reached: "active".into(),
            final_state: "cancelled".into(),
            bytes_transferred: 1 << 20,
            dirty_pages_rate: Some(1000),
            cancel_to_cancelled_ms: Some(1.5),
            guest_progress_ms: Some(2.0),
            guest_alive: true,
            resumed_paused_source: false,
            events: vec!["MIGRATION active".into(), "MIGRATION cancelled".into()],
            wall_ms: 10.0,
            path: None,
        };
        link.send(
            shared,
            AgentMessage::CycleDone {
                job_id: j.id,
                epoch: j.epoch,
                record,
            },
            Bytes::new(),
        )
        .await?;
        if let Some(rec) = shared.jobs.lock().unwrap().get_mut(&j.id) {
            rec.cycles = j.cycles_sent;
        }
        return Ok(false);
    }
    if j.bytes_left > 0 {
        let len = j.bytes_left.min(s.chunk_bytes.max(1) as u64) as usize;
        let (payload, encoding) =
            shared.chunk((j.id as usize).wrapping_add(j.chunk_idx as usize), len);
        let si = (j.chunk_idx % STREAMS.len() as u64) as usize;
        let seq = j.seq[si];
        j.seq[si] += 1;
        let msg = AgentMessage::LogChunk {
            job_id: j.id,
            epoch: j.epoch,
            stream: STREAMS[si],
            seq,
            encoding,
        };
        if shared.first_chunk_us.load(Ordering::Relaxed) == 0 {
            let now = Utc::now().timestamp_micros() as u64;
            let _ = shared.first_chunk_us.compare_exchange(
                0,
                now,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        link.send(shared, msg, payload).await?;
        j.bytes_left -= len as u64;
        j.chunk_idx += 1;
        shared
            .log_bytes_sent
            .fetch_add(len as u64, Ordering::Relaxed);
        shared.chunks_sent.fetch_add(1, Ordering::Relaxed);
        if let Some(rec) = shared.jobs.lock().unwrap().get_mut(&j.id) {
            rec.bytes[si] += len as u64;
        }
        if s.log_rate_bytes_per_s > 0 {
            j.next_step += Duration::from_secs_f64(len as f64 / s.log_rate_bytes_per_s as f64);
        }
        return Ok(false);
    }
    let result = JobResult::Passed {
        cycles_completed: j.cycles_sent,
    };
    link.send(
        shared,
        AgentMessage::JobFinished {
            job_id: j.id,
            epoch: j.epoch,
            result,
            environment: None,
        },
        Bytes::new(),
    )
    .await?;
    Ok(true)
}
