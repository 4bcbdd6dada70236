//! `armfleet-agent`: the daemon on each board. It dials the server over SSH
//! (boards sit behind lab NAT), reports the board's facts, heartbeats, and
//! runs the stress jobs it is given.

use std::path::PathBuf;

use armfleet_agent::settings::{self, AgentFile, Overrides};
use armfleet_agent::{ExecutorChoice, check, facts, keys, link};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "armfleet-agent", version, about = "armfleet board agent")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The agent's configuration file; flags and environment override it.
    #[arg(long, global = true, env = "ARMFLEET_AGENT_CONFIG", default_value = settings::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Server SSH address, HOST:PORT.
    #[arg(long, global = true, env = "ARMFLEET_SERVER")]
    server: Option<String>,
    /// This board's name in fleet.toml.
    #[arg(long, global = true, env = "ARMFLEET_BOARD")]
    board: Option<String>,
    /// The board's ed25519 private key (OpenSSH format).
    #[arg(long, global = true, env = "ARMFLEET_KEY")]
    key: Option<PathBuf>,
    /// Pin the server's host key (SHA256:…); default: trust on first use,
    /// recorded in STATE_DIR/known_hosts.
    #[arg(long, global = true, env = "ARMFLEET_SERVER_KEY")]
    server_key: Option<String>,
    /// Where the agent keeps known_hosts, its spool and job scratch space
    /// [default: /var/lib/armfleet-agent].
    #[arg(long, global = true, env = "ARMFLEET_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// How to run stress jobs: auto (real QEMU where usable, else replay), qemu, replay
    /// [default: auto].
    #[arg(long, global = true, env = "ARMFLEET_EXECUTOR")]
    executor: Option<String>,
    /// Where the previous boot's pstore records are [default: /sys/fs/pstore].
    #[arg(long, global = true, env = "ARMFLEET_PSTORE_DIR")]
    pstore_dir: Option<PathBuf>,
    /// How builds are booted: auto, kexec, oneshot, simulated, none
    /// [default: auto: simulated on replay boards, kexec where installed].
    #[arg(long, global = true, env = "ARMFLEET_BOOT_METHOD")]
    boot_method: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Write a new ed25519 key pair and print the public line for fleet.toml.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the facts this board would report, as JSON.
    Facts,
    /// Self-test: server reachable, key accepted, QEMU/KVM, hugepages,
    /// kexec, pstore, disk space. Exits non-zero when a required check fails.
    Check,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ARMFLEET_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,russh=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Some(Command::Keygen { ref out }) => keys::keygen(out).map(|line| println!("{line}")),
        Some(Command::Facts) => {
            let choice = ExecutorChoice::parse(cli.executor.as_deref().unwrap_or("auto"));
            choice.and_then(|c| {
                let f = facts::gather(c);
                println!("{}", serde_json::to_string_pretty(&f)?);
                Ok(())
            })
        }
        Some(Command::Check) => match self_test(cli) {
            Ok(true) => Ok(()),
            Ok(false) => return std::process::ExitCode::FAILURE,
            Err(e) => Err(e),
        },
        None => run(cli),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("armfleet-agent: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The configuration from flags and environment over the file.
fn config(cli: Cli) -> anyhow::Result<armfleet_agent::Config> {
    // The default path may be absent; a path the operator named may not.
    let named = std::env::args_os()
        .any(|a| a == "--config" || a.to_string_lossy().starts_with("--config="))
        || std::env::var_os("ARMFLEET_AGENT_CONFIG").is_some();
    let file = AgentFile::load(&cli.config, named)?;
    let over = Overrides {
        server: cli.server,
        board: cli.board,
        key: cli.key,
        server_key: cli.server_key,
        state_dir: cli.state_dir,
        executor: cli.executor,
        pstore_dir: cli.pstore_dir,
        boot_method: cli.boot_method,
    };
    Ok(settings::resolve(over, file, &cli.config)?)
}

fn self_test(cli: Cli) -> anyhow::Result<bool> {
    let config = config(cli)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = runtime.block_on(check::run(&config));
    Ok(check::print(&results, &mut std::io::stdout()))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = config(cli)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(link::run_forever(config))
}
