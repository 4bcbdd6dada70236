//! `armfleet-agent`: the daemon on each board. It dials the server over SSH
//! (boards sit behind lab NAT), reports the board's facts, heartbeats, and
//! runs the stress jobs it is given.

use std::path::PathBuf;

use armfleet_agent::{facts, keys, link, Config, ExecutorChoice};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "armfleet-agent", version, about = "armfleet board agent")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Server SSH address, HOST:PORT.
    #[arg(long, env = "ARMFLEET_SERVER")]
    server: Option<String>,
    /// This board's name in fleet.toml.
    #[arg(long, env = "ARMFLEET_BOARD")]
    board: Option<String>,
    /// The board's ed25519 private key (OpenSSH format).
    #[arg(long, env = "ARMFLEET_KEY")]
    key: Option<PathBuf>,
    /// Pin the server's host key (SHA256:…); default: trust on first use,
    /// recorded in STATE_DIR/known_hosts.
    #[arg(long, env = "ARMFLEET_SERVER_KEY")]
    server_key: Option<String>,
    /// Where the agent keeps known_hosts and job scratch space.
    #[arg(long, env = "ARMFLEET_STATE_DIR", default_value = "/var/lib/armfleet-agent")]
    state_dir: PathBuf,
    /// How to run stress jobs: auto (real QEMU where usable, else replay), qemu, replay.
    #[arg(long, default_value = "auto")]
    executor: String,
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
        Some(Command::Keygen { out }) => keys::keygen(&out).map(|line| println!("{line}")),
        Some(Command::Facts) => {
            let choice = ExecutorChoice::parse(&cli.executor);
            choice.and_then(|c| {
                let f = facts::gather(c);
                println!("{}", serde_json::to_string_pretty(&f)?);
                Ok(())
            })
        }
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

fn run(cli: Cli) -> anyhow::Result<()> {
    let missing = |what: &str| anyhow::anyhow!("missing --{what} (see --help)");
    let config = Config {
        server: cli.server.ok_or_else(|| missing("server"))?,
        board: cli.board.ok_or_else(|| missing("board"))?,
        key_path: cli.key.ok_or_else(|| missing("key"))?,
        server_key: cli.server_key,
        state_dir: cli.state_dir,
        executor: ExecutorChoice::parse(&cli.executor)?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(link::run_forever(config))
}
