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
    /// The virtual arm64 board: an emulated arm64 host with real KVM/arm64
    /// (nested under QEMU TCG), driven over SSH like a locked-down board.
    Vboard {
        #[command(subcommand)]
        command: VboardCommand,
    },
}

#[derive(Subcommand)]
enum VboardCommand {
    /// Boot it and keep it running (restarted after a power cycle) until
    /// Ctrl-C; `STATE/vboard.json` says how to reach it once SSH answers.
    Run {
        #[arg(long)]
        state: PathBuf,
        /// Where `agent/vboard/build.sh` put the image
        /// [default: ~/.cache/armfleet/vboard].
        #[arg(long)]
        image: Option<PathBuf>,
        /// Loopback port forwarded to the board's SSH.
        #[arg(long, default_value_t = 2522)]
        ssh_port: u16,
        /// KVM mode: vhe or nvhe (`kvm-arm.mode=nvhe`, as on a Cortex-A72).
        #[arg(long, default_value = "vhe")]
        mode: String,
        #[arg(long, default_value = "max")]
        cpu: String,
        #[arg(long, default_value_t = 3072)]
        memory_mib: u32,
        #[arg(long, default_value_t = 2)]
        smp: u32,
        /// 2 MiB hugepages reserved inside the board at boot.
        #[arg(long, default_value_t = 0)]
        hugepages_2m: u32,
        /// A public key (`.pub` file) the board accepts; repeat for more.
        #[arg(long = "authorized-key", required = true)]
        authorized_keys: Vec<PathBuf>,
    },
    /// Power-cycle a running board (QMP quit; `run` starts it again).
    PowerCycle {
        #[arg(long)]
        state: PathBuf,
    },
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
        Some(Command::Vboard { command }) => vboard(command),
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

fn vboard(command: VboardCommand) -> anyhow::Result<()> {
    use armfleet_agent::vboard;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match command {
        VboardCommand::Run {
            state,
            image,
            ssh_port,
            mode,
            cpu,
            memory_mib,
            smp,
            hugepages_2m,
            authorized_keys,
        } => {
            let mut keys = vec![];
            for path in authorized_keys {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
                keys.extend(
                    text.lines()
                        .filter(|l| !l.trim().is_empty())
                        .map(str::to_owned),
                );
            }
            let opts = vboard::VboardOptions {
                state_dir: state,
                image_dir: image.unwrap_or_else(vboard::default_image_dir),
                ssh_port,
                mode,
                cpu,
                memory_mib,
                smp,
                authorized_keys: keys,
                hugepages_2m,
                qemu: std::env::var_os("ARMFLEET_QEMU_AARCH64").map(PathBuf::from),
            };
            let shutdown = tokio_util::sync::CancellationToken::new();
            runtime.block_on(async {
                let stop = shutdown.clone();
                tokio::spawn(async move {
                    let mut term =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                            .expect("SIGTERM handler");
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                    stop.cancel();
                });
                vboard::run(opts, shutdown).await
            })
        }
        VboardCommand::PowerCycle { state } => runtime.block_on(vboard::power_cycle(&state)),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = config(cli)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(link::run_forever(config))
}
