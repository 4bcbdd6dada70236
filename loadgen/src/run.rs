//! `armfleet-loadgen run`: connect the simulated agents, submit runs,
//! serve the jobs, measure, and verify every job end to end.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::agent::{self, AgentSettings, Event, STREAMS, Shared};
use crate::fleet;
use crate::procstat::{self, ProcSample};

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// SSH addresses of the servers (several: sharing one database);
    /// agents are spread over them in turn.
    pub server_ssh: Vec<String>,
    pub server_http: String,
    pub server_fingerprint: Option<String>,
    pub fleet_dir: PathBuf,
    /// None: every board of the fleet.
    pub agents: Option<usize>,
    pub jobs: usize,
    pub log_bytes_per_job: u64,
    pub chunk_bytes: usize,
    /// Chunks travel uncompressed (the server compresses them).
    pub raw_chunks: bool,
    pub cycles: Option<u32>,
    pub log_rate_bytes_per_s: u64,
    pub connect_concurrency: usize,
    pub connect_retries: u32,
    /// Burst mode: full runs (one job per board) kept in flight.
    pub runs_in_flight: usize,
    /// Paced mode: jobs/s, submitted as small runs of the fleet's group plans.
    pub rate: Option<f64>,
    /// Seconds to stay connected and idle before submitting (heartbeat cost).
    pub idle_s: u64,
    pub timeout_s: u64,
    /// Server pids: their RSS and CPU are reported, summed.
    pub server_pids: Vec<u32>,
    pub pg_pid: Option<u32>,
    pub database_url: Option<String>,
    pub verify_concurrency: usize,
    pub json: bool,
}

/// What `run` found; `violations` empty means every check passed.
pub struct Outcome {
    pub report: Value,
    pub ok: bool,
}

#[derive(Debug)]
struct RunRec {
    id: i64,
    jobs: Vec<i64>,
    remaining: usize,
}

/// One job as the server reports it at the end.
#[derive(Debug, Clone)]
struct ServerJob {
    id: i64,
    board: String,
    state: String,
    created_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: chrono::TimeDelta) -> f64 {
    d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0
}

fn ts(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|d| d.with_timezone(&Utc))
}

struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = resp.status();
        if !status.is_success() {
            bail!(
                "GET {path}: {status}: {}",
                resp.text().await.unwrap_or_default()
            );
        }
        resp.json()
            .await
            .with_context(|| format!("GET {path}: bad JSON"))
    }

    async fn create_run(&self, commit: &str, plan: &str) -> anyhow::Result<(i64, Vec<i64>)> {
        let resp = self
            .client
            .post(format!("{}/api/v1/runs", self.base))
            .bearer_auth(fleet::API_TOKEN)
            .json(&json!({"tree": "https://example.org/loadgen/linux.git", "branch": "loadgen", "commit": commit, "plan": plan}))
            .send()
            .await
            .context("POST /api/v1/runs")?;
        let status = resp.status();
        if status.as_u16() != 201 {
            bail!(
                "POST /api/v1/runs: {status}: {}",
                resp.text().await.unwrap_or_default()
            );
        }
        let v: Value = resp.json().await.context("POST /api/v1/runs: bad JSON")?;
        let run = v["run_id"].as_i64().context("no run_id in the answer")?;
        let jobs = v["jobs"]
            .as_array()
            .context("no jobs in the answer")?
            .iter()
            .filter_map(Value::as_i64)
            .collect();
        Ok((run, jobs))
    }
}

pub async fn run(opts: RunOptions) -> anyhow::Result<Outcome> {
    let nofile = procstat::raise_nofile();
    let fleet_size = count_keys(&opts.fleet_dir)?;
    let n = opts.agents.unwrap_or(fleet_size);
    if n != fleet_size {
        bail!(
            "the fleet in {} has {fleet_size} boards but --agents is {n}: every board must be simulated \
             (its jobs would never run); regenerate with `armfleet-loadgen fleet --agents {n}`",
            opts.fleet_dir.display()
        );
    }
    if (n as u64) * 2 + 256 > nofile {
        eprintln!(
            "loadgen: warning: open-file limit {nofile} is low for {n} agents (raise `ulimit -n`)"
        );
    }
    if opts.chunk_bytes == 0
        || opts.chunk_bytes > (armfleet_protocol::MAX_FRAME_BYTES as usize) - 4096
    {
        bail!(
            "--chunk-bytes must be within 1..={}",
            armfleet_protocol::MAX_FRAME_BYTES - 4096
        );
    }
    let groups = fleet::group_plans_in(&opts.fleet_dir)?;
    if opts.rate.is_some() && groups == 0 {
        bail!("--rate needs group plans: generate the fleet with --group-size");
    }
    let identities = fleet::load(&opts.fleet_dir, n)?;
    let api = Api {
        base: opts.server_http.trim_end_matches('/').to_owned(),
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()?,
    };
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared::new(
        AgentSettings {
            server_addrs: opts.server_ssh.clone(),
            server_fingerprint: opts.server_fingerprint.clone(),
            log_bytes_per_job: opts.log_bytes_per_job,
            chunk_bytes: opts.chunk_bytes,
            raw_chunks: opts.raw_chunks,
            cycles: opts.cycles,
            log_rate_bytes_per_s: opts.log_rate_bytes_per_s,
            connect_retries: opts.connect_retries,
            handshake_timeout: Duration::from_secs(60),
        },
        ev_tx,
        opts.connect_concurrency,
    ));
    let stop = CancellationToken::new();
    let server_sample = || procstat::sample_all(&opts.server_pids);
    let pg_sample = || opts.pg_pid.and_then(procstat::sample_tree);
    let self_pid = std::process::id();
    let wall_start = Instant::now();

    // ---- connect ----
    let s0 = server_sample();
    let p0 = pg_sample();
    let l0 = procstat::sample(self_pid);
    let connect_started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, id) in identities.into_iter().enumerate() {
        tasks.spawn(agent::run(id, i, shared.clone(), stop.clone()));
    }
    let mut handshakes = Vec::with_capacity(n);
    let mut connect_failed = Vec::new();
    let connect_deadline = tokio::time::Instant::now() + Duration::from_secs(opts.timeout_s);
    while handshakes.len() + connect_failed.len() < n {
        match tokio::time::timeout_at(connect_deadline, ev_rx.recv()).await {
            Ok(Some(Event::Connected { handshake })) => {
                handshakes.push(handshake.as_secs_f64() * 1000.0)
            }
            Ok(Some(Event::ConnectFailed { board, error })) => {
                shared
                    .errors
                    .push(format!("{board}: could not connect: {error}"));
                connect_failed.push(board);
            }
            Ok(Some(Event::Disconnected)) | Ok(Some(Event::JobFinished { .. })) => {}
            Ok(None) => bail!("event channel closed"),
            Err(_) => {
                shared.errors.push(format!(
                    "only {} of {n} agents connected within {} s",
                    handshakes.len(),
                    opts.timeout_s
                ));
                break;
            }
        }
    }
    let connect_s = connect_started.elapsed().as_secs_f64();
    let connected = handshakes.len();
    eprintln!(
        "loadgen: {connected}/{n} agents connected in {connect_s:.1} s ({:.0}/s, {} retries)",
        connected as f64 / connect_s.max(1e-9),
        shared.connect_retries.load(Ordering::Relaxed)
    );

    // ---- the server lists them idle ----
    let idle_started = Instant::now();
    let mut idle_seen = 0;
    if connected == n {
        loop {
            match api.get("/api/v1/boards").await {
                Ok(v) => {
                    // Idle, and a heartbeat processed since it connected: the
                    // server's session loop for the board is running.
                    idle_seen = v["boards"]
                        .as_array()
                        .map(|b| {
                            b.iter()
                                .filter(|b| {
                                    b["state"] == "idle"
                                        && ts(&b["last_heartbeat"]) > ts(&b["connected_at"])
                                })
                                .count()
                        })
                        .unwrap_or(0);
                    if idle_seen >= n {
                        break;
                    }
                }
                Err(e) => eprintln!("loadgen: {e:#}"),
            }
            if idle_started.elapsed() > Duration::from_secs(opts.timeout_s) {
                shared.errors.push(format!(
                    "the server lists only {idle_seen} of {n} boards idle"
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(if n > 2000 { 1000 } else { 200 })).await;
        }
        eprintln!(
            "loadgen: server lists {idle_seen} boards idle with a heartbeat processed ({:.1} s after connecting)",
            idle_started.elapsed().as_secs_f64()
        );
    }
    let ready_s = idle_started.elapsed().as_secs_f64();
    let s1 = server_sample();
    let p1 = pg_sample();
    let l1 = procstat::sample(self_pid);

    // ---- optional idle phase: heartbeats only ----
    let mut idle_phase = Value::Null;
    if opts.idle_s > 0 && connected > 0 {
        let hb0 = shared.heartbeats_sent.load(Ordering::Relaxed);
        let t = Instant::now();
        tokio::time::sleep(Duration::from_secs(opts.idle_s)).await;
        let secs = t.elapsed().as_secs_f64();
        let hb = shared.heartbeats_sent.load(Ordering::Relaxed) - hb0;
        let (si, pi) = (server_sample(), pg_sample());
        idle_phase = json!({
            "seconds": secs,
            "heartbeats_per_s": hb as f64 / secs,
            "server_cpu_cores": cpu_cores(s1, si, secs),
            "postgres_cpu_cores": cpu_cores(p1, pi, secs),
            "server_rss_mib": si.map(|s| mib(s.rss_bytes)),
        });
        eprintln!("loadgen: idle phase: {idle_phase}");
    }
    let s1 = server_sample().or(s1);
    let p1 = pg_sample().or(p1);

    // ---- submit runs and serve the jobs ----
    let load_started = Instant::now();
    let first_post_at = Utc::now();
    let mut runs: Vec<RunRec> = Vec::new();
    let mut job_run: HashMap<i64, usize> = HashMap::new();
    let mut finished: HashSet<i64> = HashSet::new();
    let mut disconnects = 0usize;
    let salt: u32 = rand::random();
    let commit = |k: usize| format!("{salt:08x}{k:08x}");
    let group_size = if groups > 0 { n.div_ceil(groups) } else { n };
    let (runs_total, plan_of): (usize, Box<dyn Fn(usize) -> String + Send>) = match opts.rate {
        None => (
            opts.jobs.div_ceil(n),
            Box::new(|_| fleet::FULL_PLAN.to_owned()),
        ),
        Some(_) => (
            opts.jobs.div_ceil(group_size),
            Box::new(move |k| fleet::group_plan(k % groups)),
        ),
    };
    let mut submitted = 0usize;
    let mut runs_done = 0usize;
    let (post_tx, mut post_rx) = mpsc::unbounded_channel::<anyhow::Result<(i64, Vec<i64>)>>();
    let mut posts_in_flight = 0usize;
    let mut pacer = opts.rate.map(|r| {
        let mut i = tokio::time::interval(Duration::from_secs_f64(group_size as f64 / r.max(1e-6)));
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        i
    });
    let load_deadline = tokio::time::Instant::now() + Duration::from_secs(opts.timeout_s);
    let can_run = connected == n && idle_seen >= n;
    if !can_run {
        shared
            .errors
            .push("not all agents are online; no runs submitted".into());
    }
    let mut post_failures = 0usize;
    let mut stall_check = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(5),
        Duration::from_secs(5),
    );
    // Missed ticks must not fire back to back: "no progress since the last
    // tick" would then mean no progress in no time, and jobs whose
    // JobFinished events were still queued were reported as ended by the
    // server (the stray error of the 10,000-agent run).
    stall_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_progress = (0usize, 0usize);
    let mut last_change = Instant::now();
    while can_run {
        // Burst mode: keep `runs_in_flight` full runs outstanding.
        if opts.rate.is_none() {
            while submitted < runs_total
                && submitted.saturating_sub(runs_done) < opts.runs_in_flight.max(1)
            {
                let k = submitted;
                submitted += 1;
                posts_in_flight += 1;
                let posted = api_post(&api, commit(k), plan_of(k)).await;
                let _ = post_tx.send(posted);
            }
        }
        if submitted >= runs_total && posts_in_flight == 0 && runs_done >= runs.len() {
            break;
        }
        tokio::select! {
            ev = ev_rx.recv() => match ev {
                Some(Event::JobFinished { job_id }) => {
                    finished.insert(job_id);
                    if let Some(&r) = job_run.get(&job_id) {
                        // (A run settled from the server's view is already at 0.)
                        if runs[r].remaining > 0 {
                            runs[r].remaining -= 1;
                            if runs[r].remaining == 0 {
                                runs_done += 1;
                            }
                        }
                    }
                }
                Some(Event::Disconnected) => disconnects += 1,
                Some(_) => {}
                None => bail!("event channel closed"),
            },
            posted = post_rx.recv() => {
                posts_in_flight -= 1;
                match posted {
                    Some(Ok((id, jobs))) => {
                        let idx = runs.len();
                        let mut remaining = jobs.len();
                        for j in &jobs {
                            job_run.insert(*j, idx);
                            if finished.contains(j) {
                                remaining -= 1;
                            }
                        }
                        if remaining == 0 {
                            runs_done += 1;
                        }
                        runs.push(RunRec { id, jobs, remaining });
                    }
                    Some(Err(e)) => {
                        post_failures += 1;
                        shared.errors.push(format!("creating a run: {e:#}"));
                        // Count it as done so burst mode moves on.
                        runs_done += 1;
                        runs.push(RunRec { id: -1, jobs: Vec::new(), remaining: 0 });
                    }
                    None => {}
                }
            }
            _ = async { pacer.as_mut().expect("paced").tick().await }, if pacer.is_some() && submitted < runs_total => {
                let k = submitted;
                submitted += 1;
                posts_in_flight += 1;
                let tx = post_tx.clone();
                let api2 = Api { base: api.base.clone(), client: api.client.clone() };
                let (c, p) = (commit(k), plan_of(k));
                tokio::spawn(async move {
                    let _ = tx.send(api_post(&api2, c, p).await);
                });
            }
            _ = stall_check.tick() => {
                // Jobs the server ended without the agent finishing them (lost
                // with a dropped session) never produce a JobFinished event:
                // settle their runs from the server's view.
                let done_now = runs_done_total(&runs);
                // Events still queued (the loop was busy posting runs) are
                // progress not yet counted: never judge before they are.
                if (done_now, finished.len()) != last_progress || !ev_rx.is_empty() || !post_rx.is_empty() {
                    last_change = Instant::now();
                }
                if (done_now, finished.len()) == last_progress
                    && last_change.elapsed() >= Duration::from_secs(5)
                {
                    for r in runs.iter_mut().filter(|r| r.remaining > 0) {
                        if let Ok(v) = api.get(&format!("/api/v1/runs/{}", r.id)).await {
                            if v["jobs_total"].as_i64().is_some() && v["jobs_total"] == v["jobs_done"] {
                                shared.errors.push(format!(
                                    "run {}: the server ended {} job(s) that no agent finished",
                                    r.id, r.remaining
                                ));
                                r.remaining = 0;
                                runs_done += 1;
                            }
                        }
                    }
                }
                last_progress = (runs_done_total(&runs), finished.len());
            }
            _ = tokio::time::sleep_until(load_deadline) => {
                let open: usize = runs.iter().map(|r| r.remaining).sum();
                shared.errors.push(format!(
                    "timed out after {} s: {open} jobs of submitted runs not finished, {} runs not submitted",
                    opts.timeout_s, runs_total - submitted
                ));
                break;
            }
        }
    }
    let load_s = load_started.elapsed().as_secs_f64();
    let s2 = server_sample();
    let p2 = pg_sample();
    let l2 = procstat::sample(self_pid);
    eprintln!("loadgen: load phase done in {load_s:.1} s; verifying");

    // ---- verify against the server ----
    let mut violations: Vec<String> = Vec::new();
    let run_ids: Vec<i64> = runs.iter().filter(|r| r.id >= 0).map(|r| r.id).collect();
    let server_jobs: Vec<anyhow::Result<Vec<ServerJob>>> =
        futures::stream::iter(run_ids.iter().copied())
            .map(|id| wait_run(&api, id))
            .buffer_unordered(opts.verify_concurrency.max(1))
            .collect()
            .await;
    let mut sjobs: HashMap<i64, ServerJob> = HashMap::new();
    for r in server_jobs {
        match r {
            Ok(list) => {
                for j in list {
                    sjobs.insert(j.id, j);
                }
            }
            Err(e) => violations.push(format!("{e:#}")),
        }
    }
    let planned: HashSet<i64> = runs.iter().flat_map(|r| r.jobs.iter().copied()).collect();
    let local = shared.jobs.lock().unwrap().clone();
    let mut acked_once = 0usize;
    let mut passed = 0usize;
    for id in &planned {
        match local.get(id) {
            None => violations.push(format!("job {id} was never assigned to any agent")),
            Some(rec) if rec.assigned != 1 => {
                violations.push(format!("job {id} was assigned {} times", rec.assigned))
            }
            Some(rec) => {
                acked_once += 1;
                if rec.acks == 0 && rec.finished_at.is_some() {
                    violations.push(format!(
                        "job {id}: the server never sent JobAck for its result"
                    ));
                }
                if rec.finished_at.is_none() {
                    violations.push(format!("job {id} did not finish on {}", rec.board));
                }
                if let Some(sj) = sjobs.get(id) {
                    if *sj.board != *rec.board {
                        violations.push(format!(
                            "job {id} belongs to {} but ran on {}",
                            sj.board, rec.board
                        ));
                    }
                }
            }
        }
        match sjobs.get(id) {
            Some(sj) if sj.state == "passed" => passed += 1,
            Some(sj) => violations.push(format!("job {id} ended `{}`, not passed", sj.state)),
            None => violations.push(format!("job {id} missing from its run")),
        }
    }
    for (id, rec) in &local {
        if !planned.contains(id) {
            violations.push(format!(
                "job {id} (not from this load run) was assigned to {}",
                rec.board
            ));
        }
    }
    // Per-job details: every log byte stored, one assignment in the history.
    let details: Vec<(i64, anyhow::Result<Value>)> = futures::stream::iter(planned.iter().copied())
        .map(|id| {
            let api = &api;
            async move { (id, api.get(&format!("/api/v1/jobs/{id}")).await) }
        })
        .buffer_unordered(opts.verify_concurrency.max(1))
        .collect()
        .await;
    let mut bytes_stored: u64 = 0;
    let mut bytes_stored_compressed: u64 = 0;
    let mut bytes_sent_planned: u64 = 0;
    for (id, d) in details {
        let d = match d {
            Ok(d) => d,
            Err(e) => {
                violations.push(format!("job {id}: {e:#}"));
                continue;
            }
        };
        let mut stored = [0u64; 3];
        for l in d["logs"].as_array().into_iter().flatten() {
            let b = l["bytes"].as_u64().unwrap_or(0);
            bytes_stored += b;
            bytes_stored_compressed += l["stored_bytes"].as_u64().unwrap_or(0);
            match STREAMS.iter().position(|s| l["stream"] == s.as_str()) {
                Some(i) => stored[i] += b,
                None => violations.push(format!("job {id}: unexpected stream {}", l["stream"])),
            }
        }
        let sent = local.get(&id).map(|r| r.bytes).unwrap_or_default();
        bytes_sent_planned += sent.iter().sum::<u64>();
        if stored != sent {
            violations.push(format!(
                "job {id}: log bytes sent {sent:?} but stored {stored:?} (streams {STREAMS:?})"
            ));
        }
        let assigned = d["events"]
            .as_array()
            .map(|e| e.iter().filter(|e| e["to_state"] == "assigned").count())
            .unwrap_or(0);
        if assigned != 1 {
            violations.push(format!(
                "job {id}: {assigned} `assigned` events in its history"
            ));
        }
        let want_cycles = local.get(&id).map(|r| r.cycles as u64).unwrap_or(0);
        if d["cycles"].as_array().map(|c| c.len() as u64) != Some(want_cycles) {
            violations.push(format!(
                "job {id}: {want_cycles} cycles sent, {} stored",
                d["cycles"].as_array().map_or(0, |c| c.len())
            ));
        }
    }

    // ---- measurements ----
    let mut dispatch: Vec<f64> = Vec::new();
    let mut since_created: Vec<f64> = Vec::new();
    let mut agent_free: Vec<f64> = Vec::new();
    let mut per_second: HashMap<i64, usize> = HashMap::new();
    let mut first_created: Option<DateTime<Utc>> = None;
    let mut last_assigned: Option<DateTime<Utc>> = None;
    let mut last_finished: Option<DateTime<Utc>> = None;
    // A job is dispatchable from the later of its creation and the moment
    // the server recorded the end of the board's previous job (max_jobs = 1).
    let mut by_board: HashMap<&str, Vec<(DateTime<Utc>, i64)>> = HashMap::new();
    for id in &planned {
        if let Some(rec) = local.get(id) {
            by_board
                .entry(&*rec.board)
                .or_default()
                .push((rec.assigned_at, *id));
        }
    }
    let mut board_ready: HashMap<i64, DateTime<Utc>> = HashMap::new();
    for list in by_board.values_mut() {
        list.sort();
        for w in list.windows(2) {
            if let Some(f) = sjobs.get(&w[0].1).and_then(|j| j.finished_at) {
                board_ready.insert(w[1].1, f);
            }
        }
    }
    for id in &planned {
        let (Some(rec), Some(sj)) = (local.get(id), sjobs.get(id)) else {
            continue;
        };
        *per_second.entry(rec.assigned_at.timestamp()).or_default() += 1;
        last_assigned = last_assigned.max(Some(rec.assigned_at));
        last_finished = last_finished.max(sj.finished_at);
        if let Some(created) = sj.created_at {
            first_created = Some(first_created.map_or(created, |f| f.min(created)));
            since_created.push(ms(rec.assigned_at - created));
            let ready = board_ready.get(id).map_or(created, |r| created.max(*r));
            dispatch.push(ms(rec.assigned_at - ready));
            agent_free.push(ms(rec.assigned_at - created.max(rec.board_free_at)));
        }
    }
    agent_free.sort_by(f64::total_cmp);
    dispatch.sort_by(f64::total_cmp);
    since_created.sort_by(f64::total_cmp);
    let e2e_s = last_finished
        .map(|l| ms(l - first_post_at) / 1000.0)
        .unwrap_or(load_s)
        .max(1e-9);
    let dispatch_window_s = match (first_created, last_assigned) {
        (Some(f), Some(l)) => (ms(l - f) / 1000.0).max(1e-9),
        _ => f64::NAN,
    };
    let log_bytes_sent = shared.log_bytes_sent.load(Ordering::Relaxed);
    if log_bytes_sent != bytes_sent_planned {
        violations.push(format!(
            "{log_bytes_sent} log bytes sent in all, {bytes_sent_planned} for the planned jobs"
        ));
    }
    let first_chunk_us = shared.first_chunk_us.load(Ordering::Relaxed);
    let ingest_s = match (first_chunk_us, last_finished) {
        (f, Some(l)) if f > 0 => (l.timestamp_micros() as f64 - f as f64) / 1e6,
        _ => f64::NAN,
    };
    let db = match &opts.database_url {
        Some(url) => {
            let mut out = Value::Null;
            for attempt in 0..3 {
                match db_stats(url).await {
                    Ok(v) => {
                        out = v;
                        break;
                    }
                    Err(e) => {
                        out = json!({"error": format!("{e:#}")});
                        if attempt < 2 {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            }
            out
        }
        None => Value::Null,
    };

    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;

    // Disconnects after the stop are expected; before it they were errors
    // already recorded by the agent.
    let _ = disconnects;
    let errors = shared.errors.count() as usize + violations.len();
    handshakes.sort_by(f64::total_cmp);
    let jobs_planned = planned.len();
    let report = json!({
        "agents": n,
        "agents_connected": connected,
        "connect_s": connect_s,
        "connect_per_s": connected as f64 / connect_s.max(1e-9),
        "ready_after_connect_s": ready_s,
        "connect_concurrency": opts.connect_concurrency,
        "connect_retries": shared.connect_retries.load(Ordering::Relaxed),
        "reconnects": shared.reconnects.load(Ordering::Relaxed),
        "handshake_p50_ms": percentile(&handshakes, 50.0),
        "handshake_p99_ms": percentile(&handshakes, 99.0),
        "mode": if opts.rate.is_some() { "paced" } else { "burst" },
        "rate_target_jobs_per_s": opts.rate,
        "runs": run_ids.len(),
        "jobs": jobs_planned,
        "acked_once": acked_once,
        "passed": passed,
        "dispatch_p50_ms": percentile(&dispatch, 50.0),
        "dispatch_p90_ms": percentile(&dispatch, 90.0),
        "dispatch_p99_ms": percentile(&dispatch, 99.0),
        "dispatch_max_ms": dispatch.last().copied().unwrap_or(0.0),
        "from_agent_free_p50_ms": percentile(&agent_free, 50.0),
        "from_agent_free_p99_ms": percentile(&agent_free, 99.0),
        "since_created_p50_ms": percentile(&since_created, 50.0),
        "since_created_p99_ms": percentile(&since_created, 99.0),
        "dispatch_jobs_per_s": jobs_planned as f64 / dispatch_window_s,
        "dispatch_peak_jobs_per_s_1s": per_second.values().copied().max().unwrap_or(0),
        "load_s": load_s,
        "e2e_s": e2e_s,
        "jobs_per_s": passed as f64 / e2e_s,
        "log_bytes_sent": log_bytes_sent,
        "log_bytes_stored": bytes_stored,
        "log_bytes_stored_gzip": bytes_stored_compressed,
        "log_chunks_sent": shared.chunks_sent.load(Ordering::Relaxed),
        "ingest_s": ingest_s,
        "ingest_mb_per_s": if ingest_s > 0.0 { bytes_stored as f64 / 1e6 / ingest_s } else { f64::NAN },
        "frames_sent": shared.frames_sent.load(Ordering::Relaxed),
        "heartbeats_sent": shared.heartbeats_sent.load(Ordering::Relaxed),
        "server": proc_report(s0, s1, s2, connect_s, load_s),
        "postgres": proc_report(p0, p1, p2, connect_s, load_s),
        "loadgen": proc_report(l0, l1, l2, connect_s, load_s),
        "idle_phase": idle_phase,
        "db": db,
        "post_failures": post_failures,
        "errors": errors,
        "error_samples": shared.errors.first().into_iter().chain(violations.iter().take(30).cloned()).take(40).collect::<Vec<_>>(),
        "violations": violations.len(),
        "wall_s": wall_start.elapsed().as_secs_f64(),
    });
    let ok = errors == 0
        && connected == n
        && acked_once == jobs_planned
        && passed == jobs_planned
        && jobs_planned >= opts.jobs;
    Ok(Outcome { report, ok })
}

fn runs_done_total(runs: &[RunRec]) -> usize {
    runs.iter().filter(|r| r.remaining == 0).count()
}

async fn api_post(api: &Api, commit: String, plan: String) -> anyhow::Result<(i64, Vec<i64>)> {
    api.create_run(&commit, &plan).await
}

/// Waits until every job of run `id` is terminal and returns them.
async fn wait_run(api: &Api, id: i64) -> anyhow::Result<Vec<ServerJob>> {
    let started = Instant::now();
    loop {
        let v = api.get(&format!("/api/v1/runs/{id}")).await?;
        let total = v["jobs_total"].as_i64().unwrap_or(-1);
        let done = v["jobs_done"].as_i64().unwrap_or(-2);
        if total == done || started.elapsed() > Duration::from_secs(60) {
            return Ok(v["jobs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|j| ServerJob {
                    id: j["id"].as_i64().unwrap_or(-1),
                    board: j["board"].as_str().unwrap_or_default().to_owned(),
                    state: j["state"].as_str().unwrap_or_default().to_owned(),
                    created_at: ts(&j["created_at"]),
                    finished_at: ts(&j["finished_at"]),
                })
                .collect());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn cpu_cores(a: Option<ProcSample>, b: Option<ProcSample>, secs: f64) -> Option<f64> {
    Some((b?.cpu_s - a?.cpu_s) / secs.max(1e-9))
}

fn proc_report(
    s0: Option<ProcSample>,
    s1: Option<ProcSample>,
    s2: Option<ProcSample>,
    connect_s: f64,
    load_s: f64,
) -> Value {
    let Some(end) = s2 else { return Value::Null };
    json!({
        "rss_connected_mib": s1.map(|s| mib(s.rss_bytes)),
        "rss_end_mib": mib(end.rss_bytes),
        "rss_peak_mib": if end.peak_rss_bytes > 0 { Some(mib(end.peak_rss_bytes)) } else { None },
        "cpu_s_connect": s1.zip(s0).map(|(b, a)| b.cpu_s - a.cpu_s),
        "cpu_s_load": s1.map(|a| end.cpu_s - a.cpu_s),
        "cpu_cores_connect": cpu_cores(s0, s1, connect_s),
        "cpu_cores_load": cpu_cores(s1, s2, load_s),
    })
}

async fn db_stats(url: &str) -> anyhow::Result<Value> {
    use sqlx::Row;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .context("connecting to the database")?;
    let mut out = serde_json::Map::new();
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&pool)
        .await?;
    out.insert("jobs".into(), json!(jobs));
    let mut total_bytes = 0i64;
    for table in ["jobs", "job_events", "job_cycles", "log_chunks"] {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT count(*)::int8 AS n, pg_total_relation_size('{table}')::int8 AS b FROM {table}"
        )))
        .fetch_one(&pool)
        .await?;
        let (rows, bytes): (i64, i64) = (row.get("n"), row.get("b"));
        total_bytes += bytes;
        out.insert(
            table.into(),
            json!({
                "rows": rows,
                "bytes": bytes,
                "rows_per_job": rows as f64 / jobs.max(1) as f64,
                "bytes_per_job": bytes as f64 / jobs.max(1) as f64,
            }),
        );
    }
    out.insert(
        "bytes_per_job".into(),
        json!(total_bytes as f64 / jobs.max(1) as f64),
    );
    let size: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())::int8")
        .fetch_one(&pool)
        .await?;
    out.insert("database_bytes".into(), json!(size));
    pool.close().await;
    Ok(Value::Object(out))
}

fn count_keys(dir: &std::path::Path) -> anyhow::Result<usize> {
    let path = dir.join(fleet::KEYS_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (generate it with `armfleet-loadgen fleet`)",
            path.display()
        )
    })?;
    Ok(text.lines().filter(|l| !l.trim().is_empty()).count())
}

/// The human table.
pub fn print_table(r: &Value) {
    let f = |v: &Value| match v {
        Value::Null => "–".to_owned(),
        Value::Number(n) if n.is_f64() => format!("{:.2}", n.as_f64().unwrap_or(0.0)),
        other => other.to_string().trim_matches('"').to_owned(),
    };
    let rows: &[(&str, &Value)] = &[
        ("agents connected", &r["agents_connected"]),
        ("connect time, s", &r["connect_s"]),
        ("connection set-up rate, /s", &r["connect_per_s"]),
        (
            "SSH+hello handshake p50 / p99, ms",
            &json!(format!(
                "{} / {}",
                f(&r["handshake_p50_ms"]),
                f(&r["handshake_p99_ms"])
            )),
        ),
        ("mode", &r["mode"]),
        (
            "runs / jobs",
            &json!(format!("{} / {}", r["runs"], r["jobs"])),
        ),
        ("acknowledged exactly once", &r["acked_once"]),
        ("passed", &r["passed"]),
        (
            "dispatch latency p50 / p90 / p99 / max, ms",
            &json!(format!(
                "{} / {} / {} / {}",
                f(&r["dispatch_p50_ms"]),
                f(&r["dispatch_p90_ms"]),
                f(&r["dispatch_p99_ms"]),
                f(&r["dispatch_max_ms"])
            )),
        ),
        (
            "agent sent JobFinished→next AssignJob p50 / p99, ms",
            &json!(format!(
                "{} / {}",
                f(&r["from_agent_free_p50_ms"]),
                f(&r["from_agent_free_p99_ms"])
            )),
        ),
        (
            "created→assigned p50 / p99, ms",
            &json!(format!(
                "{} / {}",
                f(&r["since_created_p50_ms"]),
                f(&r["since_created_p99_ms"])
            )),
        ),
        (
            "dispatch rate (jobs / created→last assign), /s",
            &r["dispatch_jobs_per_s"],
        ),
        ("dispatch peak in 1 s", &r["dispatch_peak_jobs_per_s_1s"]),
        ("end-to-end jobs/s", &r["jobs_per_s"]),
        (
            "log bytes sent / stored",
            &json!(format!(
                "{} / {}",
                r["log_bytes_sent"], r["log_bytes_stored"]
            )),
        ),
        ("log ingest, MB/s", &r["ingest_mb_per_s"]),
        (
            "server RSS connected / peak, MiB",
            &json!(format!(
                "{} / {}",
                f(&r["server"]["rss_connected_mib"]),
                f(&r["server"]["rss_peak_mib"])
            )),
        ),
        (
            "server CPU cores (connect / load)",
            &json!(format!(
                "{} / {}",
                f(&r["server"]["cpu_cores_connect"]),
                f(&r["server"]["cpu_cores_load"])
            )),
        ),
        (
            "PostgreSQL CPU cores (connect / load)",
            &json!(format!(
                "{} / {}",
                f(&r["postgres"]["cpu_cores_connect"]),
                f(&r["postgres"]["cpu_cores_load"])
            )),
        ),
        (
            "loadgen CPU cores (connect / load)",
            &json!(format!(
                "{} / {}",
                f(&r["loadgen"]["cpu_cores_connect"]),
                f(&r["loadgen"]["cpu_cores_load"])
            )),
        ),
        ("loadgen RSS peak, MiB", &r["loadgen"]["rss_peak_mib"]),
        ("DB bytes per job", &r["db"]["bytes_per_job"]),
        (
            "DB rows per job (events / cycles / chunks)",
            &json!(format!(
                "{} / {} / {}",
                f(&r["db"]["job_events"]["rows_per_job"]),
                f(&r["db"]["job_cycles"]["rows_per_job"]),
                f(&r["db"]["log_chunks"]["rows_per_job"])
            )),
        ),
        ("errors", &r["errors"]),
    ];
    println!("{:-<72}", "");
    for (k, v) in rows {
        println!("{k:<48} {}", f(v));
    }
    println!("{:-<72}", "");
    if let Some(samples) = r["error_samples"].as_array() {
        for s in samples.iter().take(20) {
            println!("error: {}", s.as_str().unwrap_or_default());
        }
    }
}

pub fn summary_line(r: &Value) -> String {
    let f = |k: &str| match &r[k] {
        Value::Number(n) if n.is_f64() => format!("{:.2}", n.as_f64().unwrap_or(0.0)),
        v => v.to_string(),
    };
    format!(
        "loadgen: agents={} jobs={} acked_once={} passed={} log_bytes_sent={} log_bytes_stored={} dispatch_p50_ms={} dispatch_p99_ms={} jobs_per_s={} ingest_mb_per_s={} errors={}",
        f("agents_connected"),
        f("jobs"),
        f("acked_once"),
        f("passed"),
        f("log_bytes_sent"),
        f("log_bytes_stored"),
        f("dispatch_p50_ms"),
        f("dispatch_p99_ms"),
        f("jobs_per_s"),
        f("ingest_mb_per_s"),
        f("errors")
    )
}
