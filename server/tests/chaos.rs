//! The chaos suite: 200+ jobs on 6 simulated boards, served by two servers
//! on one database, under a seeded random schedule of real faults — network
//! partitions and packet loss/delay (each board in its own network
//! namespace, behind a veth pair), `kill -9` of agents, `kill -9` and
//! restart of a server while the other keeps serving, PostgreSQL restarts —
//! then checks that every job ended, none ran twice, and every result and
//! log byte the agents produced (their ledgers) is stored exactly once.
//! Without root (no namespaces) it says so and runs the same schedule on
//! loopback, without the network faults.
//!
//! Its size is a knob. CI runs the default (34 runs × 6 boards, a 35 s
//! schedule). A soak sets `ARMFLEET_CHAOS_RUNS` (runs of 6 jobs) and
//! `ARMFLEET_CHAOS_FAULTS` (faults of every kind): the schedule then goes on
//! until every kind has been injected that often, and the runs are
//! submitted in step with it so that the jobs meet the faults throughout.
//! A soak adds a seventh board and a sixth fault kind: an SSH-driven board
//! (this machine behind a private `sshd`, its controller agent running real
//! arm64 guests under TCG there, one job after another on a plan of its
//! own) whose `sshd` is killed with SIGKILL and restarted. Its jobs must end
//! once, as passed or as a lab failure, and leave nothing on the board.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use armfleet_server::wiring::db::embedded::EmbeddedPostgres;
use common::board_sshd::{self, BoardSshd, leftovers, qemus_under};
use common::*;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

const BOARDS: usize = 6;
const SERVERS: usize = 2;
const DEFAULT_RUNS: usize = 34; // × 6 boards = 204 jobs
const SEED: u64 = 0x5eed_c4a0;
/// The plan of the six simulated boards.
const PLAN: &str = "smoke";
/// The soak's SSH-driven board and its plan (TCG guests: ~20 s a job).
const SSH_BOARD: &str = "chaos-sshd";
const SSH_PLAN: &str = "sshd";

/// How big a run of the suite is (see the module comment).
struct Size {
    runs: usize,
    /// `None`: the CI schedule (35 s, at most two server kills and one
    /// PostgreSQL restart). `Some(n)`: a soak, n faults of every kind.
    faults_per_kind: Option<usize>,
}

impl Size {
    fn from_env() -> Size {
        let var = |name: &str| {
            std::env::var(name).ok().map(|v| {
                v.parse::<usize>()
                    .unwrap_or_else(|_| panic!("{name}={v:?} is not a count"))
            })
        };
        Size {
            runs: var("ARMFLEET_CHAOS_RUNS").unwrap_or(DEFAULT_RUNS),
            faults_per_kind: var("ARMFLEET_CHAOS_FAULTS"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    Partition,
    PacketLoss,
    AgentKill,
    ServerKill,
    PostgresRestart,
    /// The SSH-driven board's sshd (listener and sessions) SIGKILLed.
    SshdKill,
}

impl Fault {
    const ALL: [Fault; 6] = [
        Fault::Partition,
        Fault::PacketLoss,
        Fault::AgentKill,
        Fault::ServerKill,
        Fault::PostgresRestart,
        Fault::SshdKill,
    ];
    fn needs_netns(self) -> bool {
        matches!(self, Fault::Partition | Fault::PacketLoss)
    }
}

/// The soak's SSH-driven board: its sshd, where its jobs keep their files,
/// and its controller agent.
struct SshBoard {
    sshd: BoardSshd,
    work_dir: PathBuf,
    controller: Proc,
}

/// Submits runs through whichever server answers.
#[derive(Clone)]
struct Submitter {
    client: reqwest::Client,
    bases: Vec<String>,
}

impl Submitter {
    async fn run(&self, plan: &str, commit: u64) {
        let body = serde_json::json!({"tree": "chaos", "branch": "master", "commit": format!("{commit:040x}"), "plan": plan});
        for attempt in 0.. {
            let base = &self.bases[attempt % self.bases.len()];
            if let Ok(resp) = self
                .client
                .post(format!("{base}/api/v1/runs"))
                .bearer_auth("test-token")
                .json(&body)
                .send()
                .await
            {
                assert_eq!(resp.status(), 201, "{plan} run {commit:x} through {base}");
                return;
            }
            assert!(attempt < 200, "no server took {plan} run {commit:x}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Keeps one job queued or running on the SSH-driven board until `stop`:
/// a run of its plan whenever the last one ended. Returns how many.
async fn feed_ssh_board(submitter: Submitter, pool: PgPool, stop: CancellationToken) -> usize {
    let mut fed = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return fed,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        // Unanswered while PostgreSQL restarts: ask again next round.
        let open: Option<i64> = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE board = $1 AND state IN ('queued', 'assigned', 'running')",
        )
        .bind(SSH_BOARD)
        .fetch_one(&pool)
        .await
        .ok();
        if open == Some(0) {
            submitter.run(SSH_PLAN, 0x55d0_c000 + fed as u64).await;
            fed += 1;
        }
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Network namespaces with a veth pair each; removed on drop.
struct Netns {
    names: Vec<String>,
    host_ifs: Vec<String>,
}

impl Netns {
    fn create(tag: u32) -> Option<Netns> {
        let root = unsafe { libc::geteuid() == 0 };
        if !root || !sh(&["ip", "-V"]) {
            return None;
        }
        let mut ns = Netns {
            names: vec![],
            host_ifs: vec![],
        };
        for i in 0..BOARDS {
            let name = format!("afc{tag}b{i}");
            let host = format!("afh{tag}{i}");
            let peer = format!("afp{tag}{i}");
            let ok = sh(&["ip", "netns", "add", &name])
                && sh(&[
                    "ip", "link", "add", &host, "type", "veth", "peer", "name", &peer,
                ])
                && sh(&["ip", "link", "set", &peer, "netns", &name])
                && sh(&[
                    "ip",
                    "addr",
                    "add",
                    &format!("10.213.{i}.1/24"),
                    "dev",
                    &host,
                ])
                && sh(&["ip", "link", "set", &host, "up"])
                && sh(&[
                    "ip",
                    "netns",
                    "exec",
                    &name,
                    "ip",
                    "addr",
                    "add",
                    &format!("10.213.{i}.2/24"),
                    "dev",
                    &peer,
                ])
                && sh(&[
                    "ip", "netns", "exec", &name, "ip", "link", "set", &peer, "up",
                ])
                && sh(&[
                    "ip", "netns", "exec", &name, "ip", "link", "set", "lo", "up",
                ]);
            ns.names.push(name);
            ns.host_ifs.push(host);
            if !ok {
                return None; // dropped: cleans up what was made
            }
        }
        Some(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for h in &self.host_ifs {
            sh(&["ip", "link", "del", h]);
        }
        for n in &self.names {
            sh(&["ip", "netns", "del", n]);
        }
    }
}

/// A child process the schedule can `kill -9` and start again, with the
/// same command line, environment and (appended) log.
struct Proc {
    child: Option<std::process::Child>,
    cmd: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
}

impl Proc {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.child = Some(
            Command::new(&self.cmd[0])
                .args(&self.cmd[1..])
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An agent of `board` dialing `server` (whose host key is `fingerprint`),
/// with `extra` arguments; its state, log and ledger in `work`, named after
/// `tag`.
fn agent_proc(
    work: &Path,
    tag: &str,
    server: String,
    board: &str,
    key: &Path,
    fingerprint: &str,
    extra: &[&str],
) -> Proc {
    let mut cmd = vec![
        bin("armfleet-agent").display().to_string(),
        "--server".into(),
        server,
        "--board".into(),
        board.into(),
        "--key".into(),
        key.display().to_string(),
        "--server-key".into(),
        fingerprint.into(),
        "--state-dir".into(),
        work.join(format!("agent-{tag}")).display().to_string(),
    ];
    cmd.extend(extra.iter().map(|a| a.to_string()));
    let ledger = work.join(format!("ledger-{tag}.jsonl"));
    Proc {
        child: None,
        cmd,
        env: vec![("ARMFLEET_LEDGER".into(), ledger.display().to_string())],
        log: work.join(format!("agent-{tag}.log")),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn http_ok(url: &str) -> bool {
    reqwest::get(url)
        .await
        .is_ok_and(|r| r.status().is_success())
}

#[derive(Default)]
struct Ledger {
    results: HashMap<i64, String>,
    logs: BTreeMap<(i64, String, u64), u64>,
}

fn read_ledger(path: &Path, into: &mut Ledger) {
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let job = v["job"].as_i64().unwrap();
        match v["kind"].as_str().unwrap() {
            "result" => {
                into.results
                    .insert(job, v["result"]["status"].as_str().unwrap().to_owned());
            }
            "log" => {
                into.logs.insert(
                    (
                        job,
                        v["stream"].as_str().unwrap().to_owned(),
                        v["seq"].as_u64().unwrap(),
                    ),
                    v["bytes"].as_u64().unwrap(),
                );
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_jobs_under_faults_end_once_with_nothing_lost() {
    let tag = std::process::id() % 100_000;
    let root = PathBuf::from(format!("/tmp/armfleet-chaos-{tag}"));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let pg_dir = root.join("pg");
    let mut pg = Some(EmbeddedPostgres::start(&pg_dir).expect("private cluster"));
    let db = format!(
        "postgres://postgres@localhost/postgres?host={}&port=5432",
        pg.as_ref().unwrap().socket_dir().display()
    );

    let netns = Netns::create(tag);
    if netns.is_none() {
        eprintln!(
            "\n*** chaos: cannot make network namespaces (needs root and iproute2): running the schedule on loopback, WITHOUT network faults ***\n"
        );
    }
    // Kept when the test fails: the servers' and agents' logs are the
    // evidence.
    let work = KeptDir(tempfile::tempdir().unwrap().keep());
    let size = Size::from_env();
    // Only a soak has the SSH-driven board; CI's chaos stays as it was (the
    // sshd fault has its own test there).
    let with_ssh_board = size.faults_per_kind.is_some() && board_sshd::ready();
    let mut keys = Vec::new();
    for i in 0..BOARDS {
        keys.push(keygen(work.path(), &format!("c{i}")).await);
    }
    let boards: Vec<(String, &str)> = (0..BOARDS)
        .map(|i| (format!("chaos-{i}"), keys[i].public.as_str()))
        .collect();
    let board_refs: Vec<(&str, &str, &str)> = boards
        .iter()
        .map(|(n, k)| (n.as_str(), "generic-arm64", *k))
        .collect();
    let mut fleet = fleet_toml(
        &board_refs,
        "[plan.params]\ncycles = 25\nreplay_cycle_ms = 40\n",
    )
    .replace(
        "heartbeat_interval_ms = 300\nheartbeat_deadline_ms = 1500",
        "heartbeat_interval_ms = 500\nheartbeat_deadline_ms = 4000\nboot_deadline_s = 30",
    );
    let mut ssh_keys = None;
    if with_ssh_board {
        let agent = keygen(work.path(), "sshd-agent").await;
        let controller = keygen(work.path(), "sshd-controller").await;
        fleet.push_str(&format!(
            "\n[[board]]\nname = \"{SSH_BOARD}\"\nfamily = \"generic-arm64\"\nlabels = [\"sshd-board\"]\nkey = \"{}\"\n\n\
             [[plan]]\nname = \"{SSH_PLAN}\"\ntype = \"migrate-cancel\"\nlabels = [\"sshd-board\"]\ntimeout_s = 600\n\
             [plan.params]\ncycles = 20\nmemory_mib = 128\nvcpus = 1\nguest_arch = \"arm64\"\naccel = \"tcg\"\n\
             cancel_delay_ms_min = 200\ncancel_delay_ms_max = 400\n\
             [plan.verdict]\nmax_extensions = 0\nmax_infra_retries = 0\n",
            agent.public
        ));
        ssh_keys = Some((agent, controller));
    }
    let fleet_path = work.path().join("fleet.toml");
    std::fs::write(&fleet_path, &fleet).unwrap();
    // Two servers on one database; boards 0, 2, 4 dial the first, the
    // others the second, so one keeps serving while the other is killed.
    let mut servers = Vec::new();
    let mut bases = Vec::new();
    let mut ssh_ports = Vec::new();
    let mut fingerprints = Vec::new();
    for n in 0..SERVERS {
        let (http_port, ssh_port) = (free_port(), free_port());
        let ssh_bind = if netns.is_some() {
            format!("0.0.0.0:{ssh_port}")
        } else {
            format!("127.0.0.1:{ssh_port}")
        };
        let data = work.path().join(format!("data-{n}"));
        let mut server = Proc {
            child: None,
            cmd: vec![
                env!("CARGO_BIN_EXE_armfleet").into(),
                "serve".into(),
                "--config".into(),
                fleet_path.display().to_string(),
                "--data-dir".into(),
                data.display().to_string(),
                "--http".into(),
                format!("127.0.0.1:{http_port}"),
                "--ssh".into(),
                ssh_bind,
            ],
            env: vec![("DATABASE_URL".into(), db.clone())],
            log: work.path().join(format!("server-{n}.log")),
        };
        server.start();
        let base = format!("http://127.0.0.1:{http_port}");
        wait_for("the server", Duration::from_secs(30), || async {
            http_ok(&format!("{base}/healthz")).await.then_some(())
        })
        .await;
        let fp = Command::new(env!("CARGO_BIN_EXE_armfleet"))
            .args(["fingerprint", "--data-dir"])
            .arg(&data)
            .output()
            .unwrap();
        fingerprints.push(String::from_utf8(fp.stdout).unwrap().trim().to_owned());
        servers.push(server);
        bases.push(base);
        ssh_ports.push(ssh_port);
    }

    let mut agents: Vec<Proc> = (0..BOARDS)
        .map(|i| {
            let home = i % SERVERS;
            let ssh_port = ssh_ports[home];
            let server_addr = if netns.is_some() {
                format!("10.213.{i}.1:{ssh_port}")
            } else {
                format!("127.0.0.1:{ssh_port}")
            };
            let mut agent = agent_proc(
                work.path(),
                &i.to_string(),
                server_addr,
                &boards[i].0,
                &keys[i].path,
                &fingerprints[home],
                &["--executor", "replay"],
            );
            if let Some(ns) = &netns {
                let enter = ["ip", "netns", "exec", &ns.names[i]];
                agent.cmd.splice(0..0, enter.map(String::from));
            }
            agent
        })
        .collect();
    for a in &mut agents {
        a.start();
    }
    // The SSH-driven board's controller is on the host side (no namespace)
    // and dials the first server.
    let mut ssh_board = ssh_keys.map(|(agent, controller)| {
        let dir = work.path().join("board-sshd");
        std::fs::create_dir_all(&dir).unwrap();
        let work_dir = dir.join("work");
        std::fs::create_dir_all(&work_dir).unwrap();
        let sshd = BoardSshd::start(&dir, &controller.public);
        let config = work.path().join("agent-sshd.toml");
        std::fs::write(&config, sshd.ssh_board_toml(&controller.path, &work_dir)).unwrap();
        let mut controller = agent_proc(
            work.path(),
            "sshd",
            format!("127.0.0.1:{}", ssh_ports[0]),
            SSH_BOARD,
            &agent.path,
            &fingerprints[0],
            &["--config", &config.display().to_string()],
        );
        controller.start();
        SshBoard {
            sshd,
            work_dir,
            controller,
        }
    });
    let boards_total = BOARDS + usize::from(ssh_board.is_some());
    let pool = PgPool::connect(&db).await.unwrap();
    wait_for("all boards online", Duration::from_secs(120), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM boards WHERE state <> 'offline'")
            .fetch_one(&pool)
            .await
            .ok()?;
        (n == boards_total as i64).then_some(())
    })
    .await;
    let submitter = Submitter {
        client: reqwest::Client::new(),
        bases: bases.clone(),
    };
    let mut submitted = 0;
    let submit = |r: usize| submitter.run(PLAN, 0xc4a05000u64 + r as u64);
    let stop_feeding = CancellationToken::new();
    let feeder = ssh_board.as_ref().map(|_| {
        tokio::spawn(feed_ssh_board(
            submitter.clone(),
            pool.clone(),
            stop_feeding.clone(),
        ))
    });
    if size.faults_per_kind.is_none() {
        while submitted < size.runs {
            submit(submitted).await;
            submitted += 1;
        }
    }

    // The fault schedule.
    let kinds: Vec<Fault> = Fault::ALL
        .into_iter()
        .filter(|k| netns.is_some() || !k.needs_netns())
        .filter(|k| ssh_board.is_some() || *k != Fault::SshdKill)
        .collect();
    let mut rng = Rng(SEED);
    let mut injected: BTreeMap<Fault, usize> = BTreeMap::new();
    let mut sshd_processes_killed = 0;
    let mut sshd_kills_while_guests_ran = 0;
    let started = Instant::now();
    loop {
        let kind = match size.faults_per_kind {
            None => {
                if started.elapsed() >= Duration::from_secs(35) {
                    break;
                }
                // The CI mix: partitions 3, loss 2, agent kills 3, a server
                // kill 1 in 10 (at most two), one PostgreSQL restart.
                match rng.below(10) {
                    0..=2 => Fault::Partition,
                    3..=4 => Fault::PacketLoss,
                    5..=7 => Fault::AgentKill,
                    8 => Fault::ServerKill,
                    _ => Fault::PostgresRestart,
                }
            }
            Some(quota) => {
                let done: usize = injected.values().sum();
                let total = quota * kinds.len();
                // Runs go in with the schedule's progress, two runs ahead
                // so that the boards never wait for work.
                while submitted < size.runs && submitted < (done + 1) * size.runs / total + 2 {
                    submit(submitted).await;
                    submitted += 1;
                }
                let short: Vec<Fault> = kinds
                    .iter()
                    .copied()
                    .filter(|k| injected.get(k).copied().unwrap_or(0) < quota)
                    .collect();
                if short.is_empty() {
                    break;
                }
                short[rng.below(short.len() as u64) as usize]
            }
        };
        tokio::time::sleep(rng.millis(400, 1200)).await;
        let board = rng.below(BOARDS as u64) as usize;
        let count = injected.get(&kind).copied().unwrap_or(0);
        if kind.needs_netns() && netns.is_none() {
            continue;
        }
        match kind {
            Fault::Partition => {
                let host = &netns.as_ref().unwrap().host_ifs[board];
                sh(&["ip", "link", "set", host, "down"]);
                tokio::time::sleep(rng.millis(500, 2500)).await;
                sh(&["ip", "link", "set", host, "up"]);
            }
            Fault::PacketLoss => {
                let host = &netns.as_ref().unwrap().host_ifs[board];
                let loss = format!("{}%", 5 + rng.below(25));
                let delay = format!("{}ms", 20 + rng.below(120));
                sh(&[
                    "tc", "qdisc", "add", "dev", host, "root", "netem", "loss", &loss, "delay",
                    &delay,
                ]);
                tokio::time::sleep(rng.millis(1000, 3000)).await;
                sh(&["tc", "qdisc", "del", "dev", host, "root"]);
            }
            Fault::AgentKill => {
                agents[board].kill9();
                tokio::time::sleep(rng.millis(200, 1500)).await;
                agents[board].start();
            }
            Fault::ServerKill => {
                if size.faults_per_kind.is_none() && count >= 2 {
                    continue;
                }
                let victim = board % SERVERS;
                servers[victim].kill9();
                tokio::time::sleep(rng.millis(300, 1500)).await;
                servers[victim].start();
            }
            Fault::PostgresRestart => {
                if size.faults_per_kind.is_none() && count >= 1 {
                    continue;
                }
                let mut p = pg.take().unwrap();
                tokio::task::spawn_blocking(move || p.stop()).await.unwrap();
                tokio::time::sleep(rng.millis(500, 2000)).await;
                let dir = pg_dir.clone();
                pg = Some(
                    tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&dir).unwrap())
                        .await
                        .unwrap(),
                );
            }
            Fault::SshdKill => {
                let board = ssh_board.as_mut().expect("only scheduled with the board");
                sshd_kills_while_guests_ran += usize::from(qemus_under(&board.work_dir) > 0);
                sshd_processes_killed += board.sshd.kill9_all();
                tokio::time::sleep(rng.millis(200, 2200)).await;
                board.sshd.listen();
            }
        }
        *injected.entry(kind).or_default() += 1;
        if size.faults_per_kind.is_some() {
            let done: usize = injected.values().sum();
            if done % 25 == 0 {
                eprintln!(
                    "chaos soak: {done} faults {injected:?}, {submitted}/{} runs submitted, {:?}",
                    size.runs,
                    started.elapsed()
                );
            }
        }
    }
    while submitted < size.runs {
        submit(submitted).await;
        submitted += 1;
    }
    let faults: usize = injected.values().sum();
    stop_feeding.cancel();
    let ssh_board_jobs = match feeder {
        Some(task) => task.await.expect("the SSH-driven board's feeder"),
        None => 0,
    };

    // Quiet: everything must settle.
    let jobs_total = (size.runs * BOARDS + ssh_board_jobs) as i64;
    wait_for(
        "every job to reach a terminal state",
        Duration::from_secs(240 + jobs_total as u64 / 2),
        || async {
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobs WHERE state IN ('queued', 'assigned', 'running')",
            )
            .fetch_one(&pool)
            .await
            .ok()?;
            (open == 0).then_some(())
        },
    )
    .await;
    // Give agents a moment to deliver their last spooled frames.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let states: Vec<(i64, String)> = sqlx::query_as("SELECT id, state FROM jobs ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    let terminal = states
        .iter()
        .filter(|(_, s)| !["queued", "assigned", "running"].contains(&s.as_str()))
        .count();
    let assigned_twice: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT job_id FROM job_events WHERE to_state = 'assigned' GROUP BY job_id HAVING count(*) > 1) t",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let duplicate_results: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT job_id FROM job_events
            WHERE to_state IN ('passed', 'failed', 'infra_error', 'timed_out', 'lost', 'cancelled')
            GROUP BY job_id HAVING count(*) > 1) t",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let mut ledger = Ledger::default();
    for a in agents
        .iter()
        .chain(ssh_board.as_ref().map(|b| &b.controller))
    {
        read_ledger(Path::new(&a.env[0].1), &mut ledger);
    }
    let by_id: HashMap<i64, String> = states.into_iter().collect();
    let mut lost_results = 0;
    for (job, result) in &ledger.results {
        if by_id.get(job) != Some(result) {
            eprintln!(
                "chaos: job {job}: the agent produced `{result}`, the server has `{:?}`",
                by_id.get(job)
            );
            lost_results += 1;
        }
    }
    let stored: Vec<(i64, String, i64, i32)> =
        sqlx::query_as("SELECT job_id, stream, seq, raw_len FROM log_chunks")
            .fetch_all(&pool)
            .await
            .unwrap();
    let stored: HashMap<(i64, String, u64), u64> = stored
        .into_iter()
        .map(|(j, s, q, n)| ((j, s, q as u64), n as u64))
        .collect();
    let mut log_bytes_missing = 0u64;
    let mut log_bytes_produced = 0u64;
    for (key, bytes) in &ledger.logs {
        log_bytes_produced += bytes;
        match stored.get(key) {
            Some(n) if n == bytes => {}
            Some(n) => log_bytes_missing += bytes.saturating_sub(*n),
            None => log_bytes_missing += bytes,
        }
    }
    let lost_jobs = by_id.values().filter(|s| *s == "lost").count();
    // The SSH-driven board: how its jobs ended, and its dead-man switch
    // left none of their QEMUs and files.
    let ssh_board_reasons: Vec<(i64, String, Option<String>)> =
        sqlx::query_as("SELECT id, state, reason FROM jobs WHERE board = $1 ORDER BY id")
            .bind(SSH_BOARD)
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut ssh_board_ends: BTreeMap<&str, usize> = BTreeMap::new();
    for (job, state, reason) in &ssh_board_reasons {
        eprintln!("chaos: {SSH_BOARD} job {job}: {state} {reason:?}");
        *ssh_board_ends.entry(state).or_default() += 1;
    }
    let (qemus_left, files_left) = match &ssh_board {
        Some(board) => leftovers(&board.work_dir, Duration::from_secs(60)).await,
        None => (0, Vec::new()),
    };
    println!(
        "chaos: jobs={jobs_total} terminal={terminal} lost_results={lost_results} duplicate_results={duplicate_results} \
         assigned_twice={assigned_twice} log_bytes_missing={log_bytes_missing} log_bytes={log_bytes_produced} faults={faults} \
         results_produced={} jobs_lost_with_killed_agents={lost_jobs} netns={} servers={SERVERS} faults_by_kind={injected:?} \
         ssh_board_jobs={ssh_board_jobs} ssh_board_ends={ssh_board_ends:?} sshd_processes_killed={sshd_processes_killed} \
         sshd_kills_while_guests_ran={sshd_kills_while_guests_ran} ssh_board_qemus_left={qemus_left} schedule={:?}",
        ledger.results.len(),
        netns.is_some(),
        started.elapsed()
    );
    assert_eq!(by_id.len() as i64, jobs_total);
    assert_eq!(terminal as i64, jobs_total, "every job ended");
    assert_eq!(assigned_twice, 0, "no job was handed out twice");
    assert_eq!(duplicate_results, 0);
    assert_eq!(
        lost_results,
        0,
        "every result an agent produced is stored (see server-*.log in {})",
        work.path().display()
    );
    assert_eq!(
        log_bytes_missing, 0,
        "every log byte an agent produced is stored"
    );
    assert!(
        ledger.results.len() as i64 > jobs_total / 2,
        "most jobs ran to the end despite the faults"
    );
    assert!(faults >= 15, "the schedule injected faults: {faults}");
    if ssh_board.is_some() {
        assert!(
            ssh_board_ends
                .keys()
                .all(|s| *s == "passed" || *s == "infra_error"),
            "the SSH-driven board's jobs end passed or as a lab failure, never the kernel's: {ssh_board_ends:?}"
        );
        assert_eq!(
            (qemus_left, files_left),
            (0, vec![]),
            "the SSH-driven board still holds QEMUs or files of ended jobs"
        );
        assert!(
            sshd_kills_while_guests_ran > 0,
            "no sshd kill landed while guests ran"
        );
    }
    if let Some(quota) = size.faults_per_kind {
        for kind in &kinds {
            assert!(
                injected.get(kind).copied().unwrap_or(0) >= quota,
                "{kind:?}: {injected:?}"
            );
        }
    }

    for a in &mut agents {
        a.kill9();
    }
    drop(ssh_board);
    for s in &mut servers {
        s.kill9();
    }
    drop(pool);
    drop(pg);
    drop(netns);
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(work.path());
}

struct KeptDir(PathBuf);

impl KeptDir {
    fn path(&self) -> &Path {
        &self.0
    }
}
