#![recursion_limit = "256"]
//! `armfleet-loadgen`: N simulated agents over real SSH against a real
//! armfleet server, with dispatch/ingest measurements and end-to-end
//! correctness checks.

mod agent;
mod fleet;
mod procstat;
mod run;
mod serve;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "armfleet-loadgen",
    version,
    about = "Load generator: simulated agents over real SSH against an armfleet server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate N agent keys (DIR/agents.keys) and DIR/fleet.toml.
    Fleet {
        #[command(flatten)]
        fleet: FleetArgs,
        #[arg(long)]
        out: PathBuf,
    },
    /// Drive a running server with the agents of a generated fleet.
    Run {
        /// The server's SSH address; repeat it for servers sharing one database.
        #[arg(long, required = true)]
        server_ssh: Vec<String>,
        #[arg(long)]
        server_http: String,
        /// Pin the server's SSH host key (`armfleet fingerprint`); default: accept any.
        #[arg(long)]
        server_key: Option<String>,
        #[arg(long)]
        fleet_dir: PathBuf,
        /// Agents to simulate (default and only valid value: every board of the fleet).
        #[arg(long)]
        agents: Option<usize>,
        /// Server pid: report its RSS and CPU from /proc (repeatable, summed).
        #[arg(long)]
        server_pid: Vec<u32>,
        /// PostgreSQL postmaster pid: report the CPU of it and its backends.
        #[arg(long)]
        pg_pid: Option<u32>,
        /// Report rows and bytes per job from this database.
        #[arg(long)]
        database_url: Option<String>,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Generate a fleet, start `armfleet serve` on free local ports, run, stop it with SIGTERM.
    ServeAndRun {
        #[command(flatten)]
        fleet: FleetArgs,
        /// The `armfleet` binary (default: next to this one, then PATH).
        #[arg(long)]
        server_bin: Option<PathBuf>,
        /// Work dir (default: a new /tmp/lg-*; removed after a clean run unless --keep).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        keep: bool,
        /// With DATABASE_URL: the PostgreSQL postmaster pid, to report its CPU.
        #[arg(long)]
        pg_pid: Option<u32>,
        /// Server processes sharing one database (agents spread over them).
        #[arg(long, default_value_t = 1)]
        servers: usize,
        #[command(flatten)]
        load: LoadArgs,
    },
}

#[derive(Args, Clone)]
struct FleetArgs {
    #[arg(long)]
    agents: usize,
    #[arg(long, default_value_t = 2000)]
    heartbeat_ms: u64,
    /// Default: 5 × the heartbeat interval.
    #[arg(long)]
    heartbeat_deadline_ms: Option<u64>,
    /// Cycles of the plans (the CycleDone records per job unless `--cycles` overrides).
    #[arg(long = "plan-cycles", default_value_t = 2)]
    plan_cycles: u32,
    /// Boards per group plan, for `run --rate` (0: none).
    #[arg(long, default_value_t = 10)]
    group_size: usize,
}

impl FleetArgs {
    fn spec(&self) -> fleet::FleetSpec {
        fleet::FleetSpec {
            agents: self.agents,
            heartbeat_interval_ms: self.heartbeat_ms,
            heartbeat_deadline_ms: self.heartbeat_deadline_ms.unwrap_or(self.heartbeat_ms * 5),
            cycles: self.plan_cycles,
            group_size: self.group_size,
        }
    }
}

#[derive(Args, Clone)]
struct LoadArgs {
    /// Jobs in all (burst mode: rounded up to whole runs of one job per board).
    #[arg(long)]
    jobs: usize,
    #[arg(long, default_value_t = 16 * 1024)]
    log_bytes_per_job: u64,
    #[arg(long, default_value_t = 4096)]
    chunk_bytes: usize,
    /// Send log chunks uncompressed and let the server compress them (as
    /// agents before protocol v4 did); default: gzipped, as real agents do.
    #[arg(long)]
    raw_chunks: bool,
    /// CycleDone records per job (default: the plan's `cycles`).
    #[arg(long)]
    cycles: Option<u32>,
    /// Per-agent log rate while a job runs, bytes/s (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    log_rate: u64,
    /// SSH handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    #[arg(long, default_value_t = 3)]
    connect_retries: u32,
    /// Burst mode: full runs (one job per board) outstanding at once.
    #[arg(long, default_value_t = 2)]
    runs_in_flight: usize,
    /// Paced mode: submit this many jobs/s as small runs of the group plans.
    #[arg(long)]
    rate: Option<f64>,
    /// Stay connected and idle this long before submitting (measures heartbeat cost).
    #[arg(long, default_value_t = 0)]
    idle_s: u64,
    /// Give up on any phase after this long.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    #[arg(long, default_value_t = 16)]
    verify_concurrency: usize,
    /// Print the report as one JSON object line.
    #[arg(long)]
    json: bool,
}

impl LoadArgs {
    fn options(&self, agents: Option<usize>) -> run::RunOptions {
        run::RunOptions {
            server_ssh: Vec::new(),
            server_http: String::new(),
            server_fingerprint: None,
            fleet_dir: PathBuf::new(),
            agents,
            jobs: self.jobs,
            log_bytes_per_job: self.log_bytes_per_job,
            chunk_bytes: self.chunk_bytes,
            raw_chunks: self.raw_chunks,
            cycles: self.cycles,
            log_rate_bytes_per_s: self.log_rate,
            connect_concurrency: self.connect_concurrency,
            connect_retries: self.connect_retries,
            runs_in_flight: self.runs_in_flight,
            rate: self.rate,
            idle_s: self.idle_s,
            timeout_s: self.timeout_s,
            server_pids: Vec::new(),
            pg_pid: None,
            database_url: None,
            verify_concurrency: self.verify_concurrency,
            json: self.json,
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(main_async(cli)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("armfleet-loadgen: error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn main_async(cli: Cli) -> anyhow::Result<bool> {
    let outcome = match cli.command {
        Command::Fleet { fleet, out } => {
            fleet::generate(&out, &fleet.spec())?;
            println!(
                "{} boards: {} and {}",
                fleet.agents,
                out.join(fleet::FLEET_FILE).display(),
                out.join(fleet::KEYS_FILE).display()
            );
            return Ok(true);
        }
        Command::Run {
            server_ssh,
            server_http,
            server_key,
            fleet_dir,
            agents,
            server_pid,
            pg_pid,
            database_url,
            load,
        } => {
            let mut o = load.options(agents);
            o.server_ssh = server_ssh;
            o.server_http = server_http;
            o.server_fingerprint = server_key;
            o.fleet_dir = fleet_dir;
            o.server_pids = server_pid;
            o.pg_pid = pg_pid;
            o.database_url = database_url;
            let json = o.json;
            (run::run(o).await?, json)
        }
        Command::ServeAndRun {
            fleet,
            server_bin,
            dir,
            keep,
            pg_pid,
            servers,
            load,
        } => {
            let json = load.json;
            let mut run = load.options(Some(fleet.agents));
            run.pg_pid = pg_pid;
            let o = serve::ServeOptions {
                server_bin,
                dir,
                keep,
                servers,
                fleet: fleet.spec(),
                run,
            };
            (serve::serve_and_run(o).await?, json)
        }
    };
    let (outcome, json) = outcome;
    run::print_table(&outcome.report);
    if json {
        println!("{}", outcome.report);
    }
    println!("{}", run::summary_line(&outcome.report));
    Ok(outcome.ok)
}
