//! `armfleet`: the server and its command-line tools.

use std::path::PathBuf;

use anyhow::Context;
use armfleet_server::cli::client::{Api, read_token};
use armfleet_server::domain::runs::TriggerRequest;
use armfleet_server::shutdown_signal;
use armfleet_server::wiring::app::{Server, Settings};
use armfleet_server::wiring::demo;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "armfleet",
    version,
    about = "Distributed migrate→cancel stress testing for arm64 KVM board farms"
)]
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
        /// Boot artifacts built elsewhere instead of building: a JSON file
        /// `{"kernel_release": "…", "artifacts": [{"name": "Image", "url": "…", "sha256": "…"}, …]}`.
        #[arg(long, value_name = "FILE")]
        artifacts: Option<PathBuf>,
        #[command(flatten)]
        access: ServerAccess,
    },
    /// List the fleet's boards.
    Boards {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
    },
    /// List recent runs.
    Runs {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Follow a run until its jobs end, with a progress bar per job.
    Follow {
        run: i64,
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
    },
    /// Per-kernel results and verdicts as a table (`--commit`), or a
    /// regression as a plain-text kernel bug report (`--lkml REGRESSION`).
    #[command(group(clap::ArgGroup::new("what").required(true).args(["commit", "lkml"])))]
    Report {
        #[arg(long)]
        commit: Option<String>,
        /// The regression's id (see `/api/v1/regressions`).
        #[arg(long, value_name = "REGRESSION")]
        lkml: Option<i64>,
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
    },
    /// Write a standalone script that reproduces a recorded job on a board
    /// (bash, QEMU and python3; nothing of armfleet).
    Repro {
        job: i64,
        /// Write the script here (made executable) instead of to stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
    },
    /// Export results for other systems.
    Export {
        #[command(subcommand)]
        format: ExportFormat,
    },
    /// Bisect a regression to the commit that introduced it.
    Bisect {
        #[command(subcommand)]
        action: armfleet_server::cli::bisect::BisectCommand,
    },
    /// Reload fleet.toml on a running server (same as SIGHUP).
    Reload {
        #[command(flatten)]
        access: ServerAccess,
    },
    /// API token helpers.
    Token {
        #[command(subcommand)]
        action: TokenAction,
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

/// How a command reaches a running server with write access.
#[derive(clap::Args)]
struct ServerAccess {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// API token (default: $ARMFLEET_TOKEN, then DATA_DIR/api-token).
    #[arg(long, env = "ARMFLEET_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[arg(long, default_value = ".armfleet")]
    data_dir: PathBuf,
}

#[derive(Subcommand)]
enum TokenAction {
    /// Make a new random token and print it with the line for fleet.toml.
    New {
        #[arg(long)]
        name: String,
        /// read, trigger, admin (repeatable)
        #[arg(long = "scope", default_value = "trigger")]
        scopes: Vec<String>,
    },
    /// Print the sha256 of a token read from stdin.
    Hash,
}

#[derive(Subcommand)]
enum ExportFormat {
    /// KernelCI KCIDB JSON (schema v5) on stdout.
    Kcidb {
        #[arg(long)]
        commit: Option<String>,
        /// Keep only these host kinds (comma list of hardware, emulated,
        /// simulated); by default all, each marked as what it is.
        #[arg(long)]
        hosts: Option<String>,
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
    },
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("ARMFLEET_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,russh=warn"));
    let json = std::env::var("ARMFLEET_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
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
        Command::Serve {
            config,
            data_dir,
            http,
            ssh,
        } => {
            let settings = Settings {
                fleet_path: config,
                data_dir,
                database_url: std::env::var("DATABASE_URL").ok().filter(|s| !s.is_empty()),
            };
            let http = tokio::net::TcpListener::bind(&http)
                .await
                .with_context(|| format!("binding HTTP {http}"))?;
            let ssh = tokio::net::TcpListener::bind(&ssh)
                .await
                .with_context(|| format!("binding SSH {ssh}"))?;
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
            // SIGHUP reloads fleet.toml; the task ends with the server.
            let state = server.state.clone();
            let hup_token = shutdown.clone();
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = hup_token.cancelled() => return,
                        _ = hup.recv() => {
                            let _ = armfleet_server::wiring::reload::reload(&state, "SIGHUP").await;
                        }
                    }
                }
            });
            server.run(http, ssh, shutdown).await
        }
        Command::Demo(args) => demo::run(args).await,
        Command::Trigger {
            tree,
            branch,
            commit,
            plan,
            baseline,
            artifacts,
            access:
                ServerAccess {
                    server,
                    token,
                    data_dir,
                },
        } => {
            let token = read_token(token, &data_dir)?;
            let build = match artifacts {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    Some(
                        serde_json::from_str(&text)
                            .with_context(|| format!("{}: not an artifact list", path.display()))?,
                    )
                }
                None => None,
            };
            let req = TriggerRequest {
                tree,
                branch,
                commit,
                plan,
                baseline,
                build,
            };
            let body = Api::new(&server)
                .with_token(token)
                .post_json("/api/v1/runs", Some(&req))
                .await?;
            println!("run {} planned with jobs {}", body["run_id"], body["jobs"]);
            Ok(())
        }
        Command::Boards { server } => {
            let body = Api::new(&server).get_json("/api/v1/boards").await?;
            println!(
                "{:<16} {:<14} {:<8} {:<9} {:<28} {}",
                "board", "family", "state", "executor", "kernel", "last heartbeat"
            );
            for b in body["boards"].as_array().into_iter().flatten() {
                let sim = if b["simulated"] == true { " (sim)" } else { "" };
                println!(
                    "{:<16} {:<14} {:<8} {:<9} {:<28} {}",
                    b["name"].as_str().unwrap_or(""),
                    b["family"].as_str().unwrap_or(""),
                    b["state"].as_str().unwrap_or(""),
                    format!("{}{sim}", b["executor"].as_str().unwrap_or("-")),
                    b["facts"]["kernel_release"].as_str().unwrap_or("-"),
                    b["last_heartbeat"].as_str().unwrap_or("never")
                );
            }
            Ok(())
        }
        Command::Runs { server, limit } => {
            let body = Api::new(&server)
                .get_json(&format!("/api/v1/runs?limit={limit}"))
                .await?;
            println!(
                "{:>6} {:<13} {:<12} {:>10} {:>7}  {}",
                "run", "commit", "branch", "jobs done", "failed", "requested by"
            );
            for r in body["runs"].as_array().into_iter().flatten() {
                println!(
                    "{:>6} {:<13} {:<12} {:>10} {:>7}  {}{}",
                    r["id"],
                    r["commit_sha"]
                        .as_str()
                        .unwrap_or("")
                        .chars()
                        .take(12)
                        .collect::<String>(),
                    r["branch"].as_str().unwrap_or(""),
                    format!("{}/{}", r["jobs_done"], r["jobs_total"]),
                    r["jobs_failed"],
                    r["requested_by"].as_str().unwrap_or(""),
                    if r["simulated"] == true {
                        " (simulated)"
                    } else {
                        ""
                    }
                );
            }
            Ok(())
        }
        Command::Follow { run, server } => follow(&server, run).await,
        Command::Report {
            lkml: Some(id),
            server,
            ..
        } => {
            print!(
                "{}",
                Api::new(&server)
                    .get_text(&format!("/api/v1/regressions/{id}/lkml"))
                    .await?
            );
            Ok(())
        }
        Command::Report { commit, server, .. } => {
            let commit = commit.unwrap_or_default();
            let body = Api::new(&server)
                .get_json(&format!("/api/v1/kernels/{commit}"))
                .await?;
            for k in body["kernels"].as_array().into_iter().flatten() {
                println!(
                    "{} {} {}",
                    k["commit_sha"].as_str().unwrap_or(""),
                    k["branch"].as_str().unwrap_or(""),
                    k["tree"].as_str().unwrap_or("")
                );
                if let Some(subject) = k["subject"].as_str() {
                    println!("  {subject}");
                }
                println!(
                    "  {:<14} {:<24} {:<14} {:>10} {:>8} {:>18}  {}",
                    "family", "plan", "verdict", "cycles", "failed", "rate (95% CI)", "baseline"
                );
                let verdicts = k["verdicts"].as_array().cloned().unwrap_or_default();
                for r in k["results"].as_array().into_iter().flatten() {
                    let v = verdicts
                        .iter()
                        .find(|v| v["family"] == r["family"] && v["plan"] == r["plan"]);
                    let verdict = v.and_then(|v| v["verdict"].as_str()).unwrap_or("running");
                    let rate = v
                        .map(|v| {
                            format!(
                                "{:.2}% ({:.2}–{:.2})",
                                v["rate"].as_f64().unwrap_or(0.0) * 100.0,
                                v["ci_low"].as_f64().unwrap_or(0.0) * 100.0,
                                v["ci_high"].as_f64().unwrap_or(0.0) * 100.0
                            )
                        })
                        .unwrap_or_default();
                    let baseline = v
                        .and_then(|v| v["baseline_commit"].as_str())
                        .map(|c| c.chars().take(12).collect())
                        .unwrap_or_else(|| "-".to_owned());
                    println!(
                        "  {:<14} {:<24} {:<14} {:>10} {:>8} {:>18}  {}",
                        r["family"].as_str().unwrap_or(""),
                        r["plan"].as_str().unwrap_or(""),
                        verdict,
                        r["cycles_run"],
                        r["failed_cycles"],
                        rate,
                        baseline
                    );
                    if r["infra_errors"].as_i64().unwrap_or(0) > 0 {
                        println!(
                            "  {:<14} {} lab failures (not counted against the kernel)",
                            "", r["infra_errors"]
                        );
                    }
                }
            }
            Ok(())
        }
        Command::Repro {
            job,
            output,
            server,
        } => {
            let script = Api::new(&server)
                .get_text(&format!("/api/v1/jobs/{job}/repro.sh"))
                .await?;
            match output {
                Some(path) => {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::write(&path, &script)
                        .with_context(|| format!("writing {}", path.display()))?;
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                        .with_context(|| format!("making {} executable", path.display()))?;
                    eprintln!(
                        "wrote {} (run it on a board like job {job}'s)",
                        path.display()
                    );
                }
                None => print!("{script}"),
            }
            Ok(())
        }
        Command::Export {
            format:
                ExportFormat::Kcidb {
                    commit,
                    hosts,
                    server,
                },
        } => {
            let mut url = "/api/v1/export/kcidb".to_owned();
            let mut sep = '?';
            for (k, v) in [("commit", commit), ("hosts", hosts)] {
                if let Some(v) = v {
                    url.push_str(&format!("{sep}{k}={v}"));
                    sep = '&';
                }
            }
            let body = Api::new(&server).get_json(&url).await?;
            println!("{}", serde_json::to_string_pretty(&body)?);
            Ok(())
        }
        Command::Bisect { action } => armfleet_server::cli::bisect::run_cli(action).await,
        Command::Reload {
            access:
                ServerAccess {
                    server,
                    token,
                    data_dir,
                },
        } => {
            let token = read_token(token, &data_dir)?;
            let body = Api::new(&server)
                .with_token(token)
                .post_json("/api/v1/admin/reload", None::<&()>)
                .await
                .context("reload refused")?;
            println!("{}", serde_json::to_string_pretty(&body)?);
            Ok(())
        }
        Command::Token {
            action: TokenAction::New { name, scopes },
        } => {
            let token = hex::encode(rand::random::<[u8; 24]>());
            let hash = hex::encode(armfleet_server::domain::config::token_hash(&token));
            let scopes = scopes
                .iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ");
            println!("token (give it to the caller; it is not stored): {token}");
            println!("\n[[token]]\nname = \"{name}\"\nsha256 = \"{hash}\"\nscopes = [{scopes}]");
            Ok(())
        }
        Command::Token {
            action: TokenAction::Hash,
        } => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            println!(
                "{}",
                hex::encode(armfleet_server::domain::config::token_hash(&line))
            );
            Ok(())
        }
        Command::Fingerprint { data_dir } => {
            let key = armfleet_server::transport::ssh::load_or_create_host_key(&data_dir)?;
            println!("{}", armfleet_server::transport::ssh::fingerprint(&key));
            Ok(())
        }
        Command::Triage { .. } => unreachable!("handled before the runtime starts"),
    }
}

/// Progress bars for a run's jobs, until every job has ended.
async fn follow(server: &str, run: i64) -> anyhow::Result<()> {
    use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
    let api = Api::new(server);
    let url = format!("/api/v1/runs/{run}");
    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:<24} [{bar:30}] {pos:>5}/{len:<5} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let mut bars: std::collections::BTreeMap<i64, ProgressBar> = Default::default();
    loop {
        let body = api.get_json(&url).await?;
        let jobs = body["jobs"].as_array().cloned().unwrap_or_default();
        let mut open = 0;
        for j in &jobs {
            let id = j["id"].as_i64().unwrap_or(0);
            let bar = bars.entry(id).or_insert_with(|| {
                let b = multi.add(ProgressBar::new(j["cycles_total"].as_u64().unwrap_or(0)));
                b.set_style(style.clone());
                b.set_prefix(format!("job {id} {}", j["board"].as_str().unwrap_or("")));
                b
            });
            let state = j["state"].as_str().unwrap_or("");
            bar.set_position(j["cycles_completed"].as_u64().unwrap_or(0));
            let sim = if j["simulated"] == true {
                " (simulated)"
            } else {
                ""
            };
            bar.set_message(format!("{state}{sim}"));
            if ["queued", "assigned", "running"].contains(&state) {
                open += 1;
            } else if !bar.is_finished() {
                bar.finish_with_message(format!(
                    "{state}{sim} {}",
                    j["reason"].as_str().unwrap_or("")
                ));
            }
        }
        if open == 0 && !jobs.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
