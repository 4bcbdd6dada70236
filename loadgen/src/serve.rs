//! `armfleet-loadgen serve-and-run`: everything locally — generate the
//! fleet, start a real `armfleet serve` on free ports, run the load, stop
//! the server with SIGTERM.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use crate::fleet::{self, FleetSpec};
use crate::procstat;
use crate::run::{self, Outcome, RunOptions};

pub struct ServeOptions {
    pub server_bin: Option<PathBuf>,
    pub dir: Option<PathBuf>,
    pub keep: bool,
    /// Server processes on the one database (the first one's, unless
    /// DATABASE_URL names another).
    pub servers: usize,
    pub fleet: FleetSpec,
    /// `run` options; server addresses, pids and database are filled in here.
    pub run: RunOptions,
}

/// `armfleet` next to this executable (target/debug/), else on PATH.
pub fn default_server_bin() -> PathBuf {
    if let Ok(me) = std::env::current_exe() {
        for dir in me.ancestors().skip(1).take(2) {
            let candidate = dir.join("armfleet");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from("armfleet")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn replace_db(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map(|(b, q)| (b, Some(q)))
        .unwrap_or((url, None));
    let base = match base.rfind('/') {
        Some(i) if i > "postgres://".len() => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

pub async fn serve_and_run(opts: ServeOptions) -> anyhow::Result<Outcome> {
    procstat::raise_nofile(); // the server inherits it
    let server_bin = opts.server_bin.clone().unwrap_or_else(default_server_bin);
    let dir = match &opts.dir {
        Some(d) => d.clone(),
        None => PathBuf::from(format!(
            "/tmp/lg-{}-{:04x}",
            std::process::id(),
            rand::random::<u16>()
        )),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // The private PostgreSQL runs as `postgres` when we are root.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let t = Instant::now();
    fleet::generate(&dir, &opts.fleet)?;
    eprintln!(
        "loadgen: generated {} boards in {} ({:.1} s)",
        opts.fleet.agents,
        dir.display(),
        t.elapsed().as_secs_f64()
    );

    // A fresh database when DATABASE_URL points at a shared server.
    let admin = std::env::var("DATABASE_URL").ok().filter(|s| !s.is_empty());
    let mut fresh_db: Option<(String, String)> = None;
    if let Some(admin) = &admin {
        let name = format!("loadgen_{}_{}", std::process::id(), rand::random::<u32>());
        let pool = sqlx::PgPool::connect(admin)
            .await
            .context("connecting to DATABASE_URL")?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&pool)
            .await?;
        pool.close().await;
        fresh_db = Some((name.clone(), replace_db(admin, &name)));
    }

    let fleet_file = dir.join(fleet::FLEET_FILE);
    let mut servers: Vec<ServerProc> = Vec::new();
    let result = async {
        // The first server; with an embedded database it owns it.
        let first = ServerProc::start(
            &server_bin,
            &fleet_file,
            &dir.join("data"),
            fresh_db.as_ref().map(|(_, url)| url.as_str()),
            &dir.join("server.log"),
        )?;
        servers.push(first);
        servers[0].wait_healthy().await?;
        let data = dir.join("data");
        let (pg_pid, database_url) = match &fresh_db {
            Some((_, url)) => (opts.run.pg_pid, url.clone()),
            None => (
                procstat::postmaster_pid(&data.join("postgres/pgdata")),
                format!(
                    "postgres://postgres@localhost/postgres?host={}&port=5432",
                    data.join("postgres/pgsock")
                        .canonicalize()
                        .unwrap_or(data.join("postgres/pgsock"))
                        .display()
                ),
            ),
        };
        // More servers on the same database, with the first one's host key
        // (one lab, one identity, as behind a shared DNS name).
        for k in 2..=opts.servers.max(1) {
            let data_k = dir.join(format!("data-{k}"));
            std::fs::create_dir_all(&data_k)?;
            std::fs::copy(
                data.join("ssh_host_ed25519_key"),
                data_k.join("ssh_host_ed25519_key"),
            )
            .context("sharing the first server's SSH host key")?;
            let next = ServerProc::start(
                &server_bin,
                &fleet_file,
                &data_k,
                Some(&database_url),
                &dir.join(format!("server-{k}.log")),
            )?;
            servers.push(next);
            servers.last_mut().unwrap().wait_healthy().await?;
        }
        let fingerprint = std::fs::read_to_string(&servers[0].log_path)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.split("SSH host key ").nth(1).map(|s| s.trim().to_owned()));
        let mut run_opts = opts.run.clone();
        run_opts.server_ssh = servers.iter().map(|s| s.ssh.clone()).collect();
        run_opts.server_http = servers[0].http.clone();
        run_opts.server_fingerprint = fingerprint;
        run_opts.fleet_dir = dir.clone();
        run_opts.server_pids = servers.iter().map(|s| s.pid).collect();
        run_opts.pg_pid = pg_pid;
        run_opts.database_url = Some(database_url);
        run::run(run_opts).await
    }
    .await;

    // SIGTERM, the last started first: the first server owns the embedded
    // database and stops it.
    let stop_started = Instant::now();
    let mut clean = true;
    for server in servers.iter_mut().rev() {
        clean &= server.stop().await;
    }
    let stop_s = stop_started.elapsed().as_secs_f64();
    let mut outcome = result?;
    outcome.report["server_stop_s"] = json!(stop_s);
    outcome.report["server_stopped_cleanly"] = json!(clean);
    outcome.report["servers"] = json!(opts.servers.max(1));
    outcome.report["dir"] = json!(dir.display().to_string());
    if !clean {
        outcome.ok = false;
    }
    if let (Some(admin), Some((name, _))) = (&admin, &fresh_db) {
        if !opts.keep {
            if let Ok(pool) = sqlx::PgPool::connect(admin).await {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name}"
                )))
                .execute(&pool)
                .await;
                pool.close().await;
            }
        }
    }
    if opts.keep || !outcome.ok {
        eprintln!(
            "loadgen: kept {} (server logs: {}/server*.log)",
            dir.display(),
            dir.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(outcome)
}

/// One `armfleet serve` child.
struct ServerProc {
    child: tokio::process::Child,
    pid: u32,
    http: String,
    ssh: String,
    log_path: PathBuf,
}

impl ServerProc {
    /// Starts `armfleet serve` on free ports; `database_url` None: its own
    /// embedded PostgreSQL in `data`.
    fn start(
        server_bin: &Path,
        fleet_file: &Path,
        data: &Path,
        database_url: Option<&str>,
        log_path: &Path,
    ) -> anyhow::Result<ServerProc> {
        let (http, ssh) = (free_port()?, free_port()?);
        let log = std::fs::File::create(log_path)?;
        let mut cmd = tokio::process::Command::new(server_bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(fleet_file)
            .arg("--data-dir")
            .arg(data)
            .arg("--http")
            .arg(format!("127.0.0.1:{http}"))
            .arg("--ssh")
            .arg(format!("127.0.0.1:{ssh}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        match database_url {
            Some(url) => cmd.env("DATABASE_URL", url),
            None => cmd.env_remove("DATABASE_URL"),
        };
        let child = cmd.spawn().with_context(|| {
            format!(
                "starting {} (build it with `cargo build -p armfleet-server`, or pass --server-bin)",
                server_bin.display()
            )
        })?;
        let pid = child.id().context("server pid")?;
        eprintln!(
            "loadgen: server {} pid {pid}, http 127.0.0.1:{http}, ssh 127.0.0.1:{ssh}, log {}",
            server_bin.display(),
            log_path.display()
        );
        Ok(ServerProc {
            child,
            pid,
            http: format!("http://127.0.0.1:{http}"),
            ssh: format!("127.0.0.1:{ssh}"),
            log_path: log_path.to_owned(),
        })
    }

    async fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the server exited with {status} before becoming healthy; its log:\n{}",
                    tail(&self.log_path)
                );
            }
            if let Ok(r) = client.get(format!("{}/healthz", self.http)).send().await {
                if r.status() == 200 {
                    break;
                }
            }
            if started.elapsed() > Duration::from_secs(180) {
                bail!(
                    "the server did not become healthy within 180 s; its log:\n{}",
                    tail(&self.log_path)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!(
            "loadgen: server pid {} healthy after {:.1} s",
            self.pid,
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// SIGTERM, the server's orderly stop; true when it stopped cleanly.
    async fn stop(&mut self) -> bool {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        let status = tokio::time::timeout(Duration::from_secs(90), self.child.wait()).await;
        let clean = matches!(&status, Ok(Ok(s)) if s.success());
        if !clean {
            eprintln!(
                "loadgen: the server did not stop cleanly on SIGTERM ({status:?}); see {}",
                self.log_path.display()
            );
            let _ = self.child.kill().await;
        }
        clean
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
