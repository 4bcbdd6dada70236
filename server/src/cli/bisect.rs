//! `armfleet bisect start|stop|show`, through the API.

use super::client::{Api, read_token};

fn client(api: &ApiArgs) -> anyhow::Result<Api> {
    Ok(Api::new(&api.server).with_token(read_token(api.token.clone(), &api.data_dir)?))
}

/// `armfleet bisect show` as text.
pub fn render(v: &serde_json::Value) -> String {
    let b = &v["bisection"];
    let short = |s: &serde_json::Value| {
        s.as_str()
            .map(|s| s.chars().take(12).collect::<String>())
            .unwrap_or_else(|| "-".into())
    };
    let mut out = format!(
        "bisection {} [{}] plan {} on {}\n  good {}  bad {}\n",
        b["id"],
        b["state"].as_str().unwrap_or("?"),
        b["plan"].as_str().unwrap_or("?"),
        b["tree"].as_str().unwrap_or("?"),
        short(&b["good_sha"]),
        short(&b["bad_sha"]),
    );
    if let Some(r) = b["failure_rate"].as_f64() {
        out.push_str(&format!(
            "  failure rate {:.4}/cycle ({} failures in {} cycles), signature {}\n",
            r,
            b["rate_failures"],
            b["rate_cycles"],
            b["signature"].as_str().unwrap_or("-")
        ));
    }
    out.push_str(&format!(
        "  {:>4}  {:<12} {:<9} {:<7} {:>8} {:>8} {:>10}  {}\n",
        "step", "commit", "kind", "verdict", "cycles", "failures", "confidence", "evidence"
    ));
    for s in v["steps"].as_array().into_iter().flatten() {
        let ev = &s["evidence"];
        let why = ev["titles"]
            .as_array()
            .and_then(|t| t.first())
            .and_then(|t| t.as_str())
            .or_else(|| ev["why"].as_str())
            .unwrap_or("");
        out.push_str(&format!(
            "  {:>4}  {:<12} {:<9} {:<7} {:>8} {:>8} {:>10}  {}\n",
            s["step"],
            short(&s["commit_sha"]),
            s["kind"].as_str().unwrap_or(""),
            s["verdict"].as_str().unwrap_or("…"),
            s["cycles_run"],
            s["failures"],
            s["confidence"]
                .as_f64()
                .map(|c| format!("{c:.4}"))
                .unwrap_or_else(|| "-".into()),
            why,
        ));
    }
    match b["state"].as_str() {
        Some("found") => out.push_str(&format!(
            "first bad commit: {} (confidence {:.4}; {} tested steps, {:.1} board-minutes)\n",
            b["first_bad_sha"].as_str().unwrap_or("?"),
            b["result_confidence"].as_f64().unwrap_or(0.0),
            v["tested_steps"],
            v["board_minutes"].as_f64().unwrap_or(0.0)
        )),
        Some("running") => out.push_str("running…\n"),
        _ => out.push_str(&format!("{}\n", b["reason"].as_str().unwrap_or(""))),
    }
    out
}

#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// API token (default: $ARMFLEET_TOKEN, then DATA_DIR/api-token).
    #[arg(long, env = "ARMFLEET_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[arg(long, default_value = ".armfleet")]
    pub data_dir: std::path::PathBuf,
}

#[derive(Debug, clap::Subcommand)]
pub enum BisectCommand {
    /// Bisect between a good and a bad commit of a tree.
    Start {
        #[arg(long)]
        good: String,
        #[arg(long)]
        bad: String,
        #[arg(long)]
        plan: String,
        /// The tree's URL (as in fleet.toml or the trigger).
        #[arg(long)]
        tree: String,
        #[arg(long)]
        branch: Option<String>,
        /// Test only on boards of this family (e.g. ampere-altra).
        #[arg(long)]
        family: Option<String>,
        /// Known per-cycle failure rate (skips measuring it on the bad commit).
        #[arg(long)]
        rate: Option<f64>,
        /// How sure a `good` call must be [default: 0.99].
        #[arg(long)]
        confidence: Option<f64>,
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long)]
        max_steps: Option<u32>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Stop a running bisection (its queued jobs are cancelled).
    Stop {
        id: i64,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show a bisection's steps, evidence, confidence and board time.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
    },
}

pub async fn run_cli(cmd: BisectCommand) -> anyhow::Result<()> {
    match cmd {
        BisectCommand::Start {
            good,
            bad,
            plan,
            tree,
            branch,
            family,
            rate,
            confidence,
            seed,
            max_steps,
            api,
        } => {
            let body = serde_json::json!({
                "tree": tree, "branch": branch, "good": good, "bad": bad, "plan": plan, "family": family,
                "rate": rate, "confidence": confidence, "seed": seed, "max_steps": max_steps,
            });
            let v = client(&api)?
                .post_json("/api/v1/bisections", Some(&body))
                .await?;
            println!("bisection {} started", v["id"]);
        }
        BisectCommand::Stop { id, api } => {
            let v = client(&api)?
                .post_json(&format!("/api/v1/bisections/{id}/stop"), None::<&()>)
                .await?;
            print!("{}", render(&v));
        }
        BisectCommand::Show { id, json, server } => {
            let v = Api::new(&server)
                .get_json(&format!("/api/v1/bisections/{id}"))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", render(&v));
            }
        }
    }
    Ok(())
}
