//! Runs jobs: one task per job, owned by the [`JobRunner`] of the current
//! connection, turning executor events into protocol frames.

use std::collections::HashMap;
use std::time::Duration;

use armfleet_migrate_stress::{StressEnv, StressEvent};
use armfleet_protocol::{AgentMessage, ExecutorKind, Frame, JobResult, JobSpec, LogStream, Task};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::spool::Spool;

/// Where job tasks put their frames: the on-disk spool, then the link.
#[derive(Clone)]
pub struct Outbox {
    pub spool: std::sync::Arc<std::sync::Mutex<Spool>>,
    pub ready: std::sync::Arc<tokio::sync::Notify>,
}

/// `ARMFLEET_LEDGER=FILE`: a line per log chunk, cycle and result this
/// agent produces — what it owes the server — so that tests (the chaos
/// suite) can check that the server stored each exactly once.
struct Ledger {
    file: std::sync::Mutex<std::fs::File>,
}

impl Ledger {
    /// The ledger, when `ARMFLEET_LEDGER` names one (looked up once).
    fn get() -> Option<&'static Ledger> {
        static LEDGER: std::sync::OnceLock<Option<Ledger>> = std::sync::OnceLock::new();
        LEDGER
            .get_or_init(|| {
                let path = std::env::var_os("ARMFLEET_LEDGER")?;
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .ok()?;
                Some(Ledger {
                    file: std::sync::Mutex::new(file),
                })
            })
            .as_ref()
    }

    /// The ledger line for a frame, if it is one the server owes storage.
    fn line(frame: &Frame<AgentMessage>) -> Option<serde_json::Value> {
        Some(match &frame.message {
            AgentMessage::LogChunk {
                job_id,
                stream,
                seq,
                encoding,
                ..
            } => {
                serde_json::json!({"job": job_id, "kind": "log", "stream": stream, "seq": seq, "bytes": encoding.raw_len(frame.payload.len())})
            }
            AgentMessage::CycleDone { job_id, record, .. } => {
                serde_json::json!({"job": job_id, "kind": "cycle", "cycle": record.cycle})
            }
            AgentMessage::JobFinished { job_id, result, .. } => {
                serde_json::json!({"job": job_id, "kind": "result", "result": result})
            }
            _ => return None,
        })
    }

    fn write(&self, line: &serde_json::Value) {
        use std::io::Write;
        // A write(2) survives the process being killed; that is what the
        // ledger must outlive.
        let _ = writeln!(self.file.lock().unwrap(), "{line}");
    }
}

impl Outbox {
    pub fn send(&self, frame: Frame<AgentMessage>) {
        // Only what reached the spool is owed, so the line is written after
        // the push; it is made before, as the push takes the frame.
        let owed = Ledger::get().and_then(|l| Ledger::line(&frame).map(|line| (l, line)));
        if let Err(e) = self.spool.lock().unwrap().push(frame) {
            tracing::error!("cannot spool a frame (it is lost): {e}");
        } else if let Some((ledger, line)) = owed {
            ledger.write(&line);
        }
        self.ready.notify_one();
    }
}

/// Log payloads are cut to this size so a frame never nears the limit.
const CHUNK_BYTES: usize = 48 * 1024;

pub struct JobRunner {
    config: Config,
    executor: ExecutorKind,
    out: Outbox,
    parent: CancellationToken,
    running: HashMap<i64, (i64, CancellationToken)>,
    tasks: JoinSet<i64>,
}

impl JobRunner {
    pub fn new(
        config: Config,
        executor: ExecutorKind,
        out: Outbox,
        parent: CancellationToken,
    ) -> JobRunner {
        JobRunner {
            config,
            executor,
            out,
            parent,
            running: HashMap::new(),
            tasks: JoinSet::new(),
        }
    }

    pub fn running_jobs(&self) -> Vec<i64> {
        self.running.keys().copied().collect()
    }

    pub fn leases(&self) -> Vec<armfleet_protocol::JobLease> {
        self.running
            .iter()
            .map(|(job, (epoch, _))| armfleet_protocol::JobLease {
                job_id: *job,
                epoch: *epoch,
            })
            .collect()
    }

    pub fn has_jobs(&self) -> bool {
        !self.tasks.is_empty()
    }

    pub fn start(&mut self, job_id: i64, epoch: i64, spec: JobSpec) {
        if self.running.contains_key(&job_id) {
            tracing::warn!(job_id, "job already running; ignoring duplicate assignment");
            return;
        }
        tracing::info!(job_id, epoch, plan = %spec.plan, commit = %spec.kernel.commit, "job assigned");
        let cancel = self.parent.child_token();
        self.running.insert(job_id, (epoch, cancel.clone()));
        let ctx = JobContext {
            job_id,
            epoch,
            out: self.out.clone(),
            executor: self.executor,
            replay_fallback: self.executor == ExecutorKind::Replay
                && self.config.executor == crate::ExecutorChoice::Auto,
            work_dir: self.config.state_dir.join("work"),
            board: self.config.board.clone(),
            sim_kernel: crate::boot::simulated_kernel(&self.config.state_dir),
            ssh_board: self.config.ssh_board.clone(),
        };
        let span = tracing::info_span!("job", id = job_id, epoch);
        self.tasks.spawn(tracing::Instrument::instrument(
            async move {
                run_job(ctx, spec, cancel).await;
                job_id
            },
            span,
        ));
    }

    pub fn cancel(&mut self, job_id: i64, reason: &str) {
        if let Some((_, token)) = self.running.get(&job_id) {
            tracing::warn!(job_id, reason, "cancelling job");
            token.cancel();
        }
    }

    /// Waits for the next job task to end and forgets it.
    pub async fn reap(&mut self) {
        if let Some(done) = self.tasks.join_next().await {
            match done {
                Ok(job) => {
                    self.running.remove(&job);
                }
                Err(e) => tracing::error!("job task failed: {e}"),
            }
        }
    }

    /// Cancels every job and waits for their tasks (which kill their QEMUs).
    pub async fn shutdown(mut self, reason: &str) {
        for (job, (_, token)) in &self.running {
            tracing::warn!(job, reason, "stopping job");
            token.cancel();
        }
        while self.tasks.join_next().await.is_some() {}
    }
}

struct JobContext {
    job_id: i64,
    epoch: i64,
    out: Outbox,
    executor: ExecutorKind,
    /// `executor = "auto"` became replay on this host: its results are a
    /// fallback, never evidence.
    replay_fallback: bool,
    work_dir: std::path::PathBuf,
    board: String,
    /// The simulated kernel a replay board booted, whose behaviour (its
    /// abort probability) the replay takes on.
    sim_kernel: Option<crate::boot::SimKernel>,
    /// The SSH-driven board this agent drives, if any.
    ssh_board: Option<armfleet_migrate_stress::ssh_board::SshBoardConfig>,
}

async fn run_job(ctx: JobContext, spec: JobSpec, cancel: CancellationToken) {
    let JobContext {
        job_id,
        epoch,
        out,
        executor,
        replay_fallback,
        work_dir,
        board,
        sim_kernel,
        ssh_board,
    } = ctx;
    let board_name = board.clone();
    out.send(Frame::new(AgentMessage::JobStarted { job_id, epoch }));
    let Task::MigrateCancel(mut params) = spec.task.clone();
    if let Some(k) = &sim_kernel {
        params.replay_abort_probability = params.replay_abort_probability.max(k.abort_probability);
    }
    let (ev_tx, mut ev_rx) = mpsc::channel::<StressEvent>(256);

    let banner = match executor {
        ExecutorKind::Replay => format!(
            "armfleet-agent: job {job_id} on a SIMULATED board (replay executor: recorded logs, no real guest)\n"
        ),
        ExecutorKind::Qemu => match &ssh_board {
            Some(b) => format!(
                "armfleet-agent: job {job_id} with the QEMU executor on the SSH-driven {}board {}\n",
                if b.emulated { "(emulated arm64) " } else { "" },
                b.addr()
            ),
            None => format!("armfleet-agent: job {job_id} with the QEMU executor\n"),
        },
    };
    let _ = ev_tx
        .send(StressEvent::Log {
            stream: LogStream::Agent,
            data: banner.into_bytes(),
        })
        .await;

    let timeout = Duration::from_secs(spec.timeout_s.max(1));
    let exec = async move {
        match executor {
            ExecutorKind::Replay => {
                match tokio::time::timeout(
                    timeout,
                    crate::replay::run(&board, &spec, &params, ev_tx, cancel),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => JobResult::TimedOut {
                        cycles_completed: 0,
                    },
                }
            }
            ExecutorKind::Qemu => {
                let mut env = StressEnv::new(StressEnv::default_guest_dir(), work_dir);
                env.job_timeout = Some(timeout);
                env.board = ssh_board;
                env.fatal_detector = crate::replay::fatal_detector();
                // The QEMU executor runs on a runtime of its own thread so
                // that a busy guest's I/O never competes with the link's
                // heartbeats, and its futures need not be Send.
                let worker = tokio::task::spawn_blocking(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build();
                    match rt {
                        Ok(rt) => rt.block_on(armfleet_migrate_stress::run_migrate_cancel(
                            &env, &params, ev_tx, cancel,
                        )),
                        Err(e) => JobResult::InfraError {
                            cycles_completed: 0,
                            reason: format!("cannot start the executor runtime: {e}"),
                        },
                    }
                });
                worker.await.unwrap_or_else(|e| JobResult::InfraError {
                    cycles_completed: 0,
                    reason: format!("the QEMU executor crashed: {e}"),
                })
            }
        }
    };
    let forward = {
        let out = out.clone();
        async move {
            let mut seq: HashMap<LogStream, u64> = HashMap::new();
            let mut environment = None;
            while let Some(event) = ev_rx.recv().await {
                match event {
                    StressEvent::Log { stream, data } => {
                        for piece in data.chunks(CHUNK_BYTES) {
                            let n = seq.entry(stream).or_insert(0);
                            out.send(armfleet_protocol::chunk::gzipped_log_chunk(
                                job_id, epoch, stream, *n, piece,
                            ));
                            *n += 1;
                        }
                    }
                    StressEvent::Environment(e) => environment = Some(e),
                    StressEvent::Cycle(record) => {
                        out.send(Frame::new(AgentMessage::CycleDone {
                            job_id,
                            epoch,
                            record,
                        }));
                    }
                }
            }
            environment
        }
    };
    let (result, environment) = tokio::join!(exec, forward);
    let environment = environment.or_else(|| {
        (executor == ExecutorKind::Replay).then(|| armfleet_protocol::RunEnvironment {
            host: armfleet_protocol::HostKind::Simulated,
            accel: "none".into(),
            detail: format!("simulated board {board_name} (replayed logs)"),
            fallback: replay_fallback.then(|| {
                "executor=auto fell back to replay: no arm64 QEMU or guest image on this host"
                    .into()
            }),
        })
    });
    tracing::info!(job_id, ?result, "job finished");
    out.send(Frame::new(AgentMessage::JobFinished {
        job_id,
        epoch,
        result,
        environment,
    }));
}
