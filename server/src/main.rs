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
    /// Per-kernel results and verdicts as a table.
    Report {
        #[arg(long)]
        commit: String,
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
    },
    /// Export results for other systems.
    Export {
        #[command(subcommand)]
        format: ExportFormat,
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

#[derive(Subcommand)]
enum ExportFormat {
    /// KernelCI KCIDB JSON (schema v5) on stdout.
    Kcidb {
        #[arg(long)]
        commit: Option<String>,
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
    },
}

async fn get_json(url: &str) -> anyhow::Result<serde_json::Value> {
    let resp = reqwest::Client::new().get(url).send().await.with_context(|| format!("contacting {url}"))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!("server answered {status}: {}", body["error"].as_str().unwrap_or("?"));
    }
    Ok(body)
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
        Command::Report { commit, server } => {
            let body = get_json(&format!("{}/api/v1/kernels/{commit}", server.trim_end_matches('/'))).await?;
            for k in body["kernels"].as_array().into_iter().flatten() {
                println!("{} {} {}", k["commit_sha"].as_str().unwrap_or(""), k["branch"].as_str().unwrap_or(""), k["tree"].as_str().unwrap_or(""));
                if let Some(subject) = k["subject"].as_str() {
                    println!("  {subject}");
                }
                println!("  {:<14} {:<24} {:<14} {:>10} {:>8} {:>18}  {}", "family", "plan", "verdict", "cycles", "failed", "rate (95% CI)", "baseline");
                let verdicts = k["verdicts"].as_array().cloned().unwrap_or_default();
                for r in k["results"].as_array().into_iter().flatten() {
                    let v = verdicts.iter().find(|v| v["family"] == r["family"] && v["plan"] == r["plan"]);
                    let verdict = v.and_then(|v| v["verdict"].as_str()).unwrap_or("running");
                    let rate = v.map(|v| format!("{:.2}% ({:.2}–{:.2})", v["rate"].as_f64().unwrap_or(0.0) * 100.0,
                        v["ci_low"].as_f64().unwrap_or(0.0) * 100.0, v["ci_high"].as_f64().unwrap_or(0.0) * 100.0)).unwrap_or_default();
                    let baseline = v.and_then(|v| v["baseline_commit"].as_str()).map(|c| c.chars().take(12).collect()).unwrap_or_else(|| "-".to_owned());
                    println!("  {:<14} {:<24} {:<14} {:>10} {:>8} {:>18}  {}", r["family"].as_str().unwrap_or(""), r["plan"].as_str().unwrap_or(""),
                        verdict, r["cycles_run"], r["failed_cycles"], rate, baseline);
                    if r["infra_errors"].as_i64().unwrap_or(0) > 0 {
                        println!("  {:<14} {} lab failures (not counted against the kernel)", "", r["infra_errors"]);
                    }
                }
            }
            Ok(())
        }
        Command::Export { format: ExportFormat::Kcidb { commit, server } } => {
            let mut url = format!("{}/api/v1/export/kcidb", server.trim_end_matches('/'));
            if let Some(c) = commit {
                url.push_str(&format!("?commit={c}"));
            }
            println!("{}", serde_json::to_string_pretty(&get_json(&url).await?)?);
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
