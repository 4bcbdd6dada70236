//! `armfleet`: the server and its command-line tools.

use std::path::PathBuf;

use anyhow::Context;
use armfleet_server::app::{Server, Settings};
use armfleet_server::{demo, runs::TriggerRequest, shutdown_signal};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "armfleet", version, about = "Distributed migrate→cancel stress testing for arm64 KVM board farms")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: SSH endpoint for agents, scheduler, API and dashboard.
    Serve {
        #[arg(long, default_value = "fleet.toml")]
        config: PathBuf,
        #[arg(long, default_value = ".armfleet")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: String,
        #[arg(long, default_value = "127.0.0.1:2222")]
        ssh: String,
    },
    /// Run a local demo fleet: server, one agent per board, two kernels.
    Demo(demo::DemoArgs),
    /// Ask a running server to test a kernel.
    Trigger {
        #[arg(long)]
        tree: String,
        #[arg(long)]
        branch: String,
        #[arg(long)]
        commit: String,
        #[arg(long)]
        plan: Option<String>,
        /// Compare against this commit instead of the nearest tested ancestor.
        #[arg(long)]
        baseline: Option<String>,
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
        /// API token (default: $ARMFLEET_TOKEN, then DATA_DIR/api-token).
        #[arg(long, env = "ARMFLEET_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[arg(long, default_value = ".armfleet")]
        data_dir: PathBuf,
    },
    /// Print the server's SSH host key fingerprint (creating the key if needed).
    Fingerprint {
        #[arg(long, default_value = ".armfleet")]
        data_dir: PathBuf,
    },
    /// Find crash reports in kernel logs.
    Triage {
        /// One JSON object per finding per line.
        #[arg(long)]
        json: bool,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("ARMFLEET_LOG").unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,russh=warn"));
    let json = std::env::var("ARMFLEET_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Command::Triage { json, files } = &cli.command {
        let code = armfleet_triage::run_cli(*json, files, &mut std::io::stdout().lock());
        return std::process::ExitCode::from(code.clamp(0, 255) as u8);
    }
    init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("armfleet: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config, data_dir, http, ssh } => {
            let settings = Settings {
                fleet_path: config,
                data_dir,
                database_url: std::env::var("DATABASE_URL").ok().filter(|s| !s.is_empty()),
            };
            let http = tokio::net::TcpListener::bind(&http).await.with_context(|| format!("binding HTTP {http}"))?;
            let ssh = tokio::net::TcpListener::bind(&ssh).await.with_context(|| format!("binding SSH {ssh}"))?;
            let server = Server::prepare(settings).await?;
            println!("armfleet: SSH host key {}", server.fingerprint);
            println!("armfleet: SSH for agents on {}", ssh.local_addr()?);
            println!("armfleet: dashboard on http://{}/", http.local_addr()?);
            println!("armfleet: API token in the data dir (api-token) or fleet.toml");
            let shutdown = CancellationToken::new();
            let signal_token = shutdown.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                tracing::info!("shutting down");
                signal_token.cancel();
            });
            server.run(http, ssh, shutdown).await
        }
        Command::Demo(args) => demo::run(args).await,
        Command::Trigger { tree, branch, commit, plan, baseline, server, token, data_dir } => {
            let token = match token {
                Some(t) => t,
                None => std::fs::read_to_string(data_dir.join("api-token"))
                    .map(|t| t.trim().to_owned())
                    .with_context(|| {
                        format!("no API token: pass --token, set ARMFLEET_TOKEN, or run from the server's data dir ({})",
                            data_dir.join("api-token").display())
                    })?,
            };
            let req = TriggerRequest { tree, branch, commit, plan, baseline };
            let resp = reqwest::Client::new()
                .post(format!("{}/api/v1/runs", server.trim_end_matches('/')))
                .bearer_auth(token)
                .json(&req)
                .send()
                .await
                .with_context(|| format!("contacting {server}"))?;
            let status = resp.status();
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            if !status.is_success() {
                anyhow::bail!("server answered {status}: {}", body["error"].as_str().unwrap_or("?"));
            }
            println!("run {} planned with jobs {}", body["run_id"], body["jobs"]);
            Ok(())
        }
        Command::Fingerprint { data_dir } => {
            let key = armfleet_server::ssh::load_or_create_host_key(&data_dir)?;
            println!("{}", armfleet_server::ssh::fingerprint(&key));
            Ok(())
        }
        Command::Triage { .. } => unreachable!("handled before the runtime starts"),
    }
}
