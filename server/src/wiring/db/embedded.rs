//! The embedded default: a private PostgreSQL cluster under the data dir.
//!
//! It listens on a Unix socket only (no TCP port to collide with), is started
//! with the server and stopped with it. PostgreSQL refuses to run as root, so
//! when armfleet runs as root the cluster runs as the `postgres` system user
//! and its directories are owned by that user.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use sqlx::postgres::PgConnectOptions;

pub struct EmbeddedPostgres {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    run_as: Option<String>,
    started_here: bool,
}

const PORT: u16 = 5432;

impl EmbeddedPostgres {
    /// Initialises (first time) and starts the cluster under `root`.
    pub fn start(root: &Path) -> anyhow::Result<EmbeddedPostgres> {
        let bin_dir = find_bin_dir()?;
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let root = root.canonicalize()?;
        let data_dir = root.join("pgdata");
        let socket_dir = root.join("pgsock");
        let run_as = is_root().then(|| "postgres".to_owned());
        if socket_dir
            .join(format!(".s.PGSQL.{PORT}"))
            .as_os_str()
            .len()
            > 100
        {
            bail!(
                "the data dir {} is too deep for a PostgreSQL Unix socket path; use a shorter --data-dir",
                root.display()
            );
        }
        std::fs::create_dir_all(&socket_dir)?;
        let pg = EmbeddedPostgres {
            bin_dir,
            data_dir,
            socket_dir,
            run_as,
            started_here: false,
        };
        if let Some(user) = &pg.run_as {
            ensure_traversable(&root, user)?;
            chown_to(user, &pg.socket_dir)?;
        }
        if !pg.data_dir.join("PG_VERSION").exists() {
            std::fs::create_dir_all(&pg.data_dir)?;
            if let Some(user) = &pg.run_as {
                chown_to(user, &pg.data_dir)?;
            }
            tracing::info!(dir = %pg.data_dir.display(), "initialising private PostgreSQL cluster");
            pg.run(
                "initdb",
                &[
                    "-D",
                    path_str(&pg.data_dir)?,
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-instructions",
                ],
            )?;
        }
        let mut pg = pg;
        if pg.is_running() {
            // A previous server died without stopping it; take it over.
            tracing::warn!("private PostgreSQL cluster was already running; reusing it");
        } else {
            let log = pg.data_dir.join("postgres.log");
            let opts = format!(
                "-k {} -p {PORT} -c listen_addresses='' -c fsync=on -c max_connections=200",
                path_str(&pg.socket_dir)?
            );
            pg.run(
                "pg_ctl",
                &[
                    "-D",
                    path_str(&pg.data_dir)?,
                    "-l",
                    path_str(&log)?,
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    &opts,
                    "start",
                ],
            )
            .with_context(|| format!("starting PostgreSQL (its log: {})", log.display()))?;
        }
        pg.started_here = true;
        Ok(pg)
    }

    pub fn connect_options(&self) -> PgConnectOptions {
        PgConnectOptions::new()
            .socket(&self.socket_dir)
            .port(PORT)
            .username("postgres")
            .database("postgres")
    }

    fn is_running(&self) -> bool {
        self.command(
            "pg_ctl",
            &["-D", self.data_dir.to_str().unwrap_or(""), "status"],
        )
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
    }

    /// Stops the cluster (fast shutdown: open transactions roll back).
    pub fn stop(&mut self) {
        if !self.started_here {
            return;
        }
        self.started_here = false;
        if let Some(dir) = self.data_dir.to_str() {
            if let Err(e) = self.run("pg_ctl", &["-D", dir, "-m", "fast", "-w", "stop"]) {
                tracing::error!("stopping PostgreSQL: {e:#}");
            }
        }
    }

    fn command(&self, tool: &str, args: &[&str]) -> Command {
        let exe = self.bin_dir.join(tool);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(exe).args(args);
                c
            }
            None => {
                let mut c = Command::new(exe);
                c.args(args);
                c
            }
        }
    }

    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let out = self
            .command(tool, args)
            .current_dir("/")
            .output()
            .with_context(|| format!("running {tool}"))?;
        if !out.status.success() {
            bail!(
                "{tool} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(())
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("path {} is not UTF-8", p.display()))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Finds `initdb`/`pg_ctl`: on PATH, else under /usr/lib/postgresql/*/bin.
pub fn find_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                return Ok(dir);
            }
        }
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|d| d.join("initdb").is_file())
        .collect();
    candidates.sort();
    candidates.pop().context(
        "no PostgreSQL server binaries found (initdb/pg_ctl not on PATH nor under \
         /usr/lib/postgresql/*/bin): install them (Debian: apt-get install postgresql) \
         or set DATABASE_URL to an existing database",
    )
}

fn chown_to(user: &str, path: &Path) -> anyhow::Result<()> {
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{user}:"))
        .arg(path)
        .status()
        .context("running chown")?;
    if !status.success() {
        bail!("chown {user} {} failed", path.display());
    }
    Ok(())
}

/// The `postgres` user must be able to reach its directories: make the data
/// dir itself traversable and check its ancestors.
fn ensure_traversable(root: &Path, user: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(root)?;
    let mode = meta.permissions().mode();
    if mode & 0o001 == 0 {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(mode | 0o711))?;
    }
    if let Some((ancestor, mode)) = closed_ancestor(root) {
        bail!(
            "{} is not traversable by the `{user}` user that runs the private PostgreSQL \
             cluster (mode {:o}); choose a --data-dir elsewhere or set DATABASE_URL",
            ancestor.display(),
            mode & 0o7777
        );
    }
    Ok(())
}

/// The first ancestor of `dir` that other users cannot traverse, if any.
pub fn closed_ancestor(dir: &Path) -> Option<(PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    dir.ancestors().skip(1).find_map(|a| {
        let mode = std::fs::metadata(a).ok()?.permissions().mode();
        (mode & 0o001 == 0).then(|| (a.to_owned(), mode))
    })
}

impl EmbeddedPostgres {
    /// Leaves the cluster running when this value is dropped, and returns
    /// the command line that stops it (for a reaper process that outlives
    /// us; used by tests).
    pub fn detach(mut self) -> Vec<String> {
        self.started_here = false;
        let mut cmd = Vec::new();
        if let Some(user) = &self.run_as {
            cmd.extend([
                "runuser".to_owned(),
                "-u".to_owned(),
                user.clone(),
                "--".to_owned(),
            ]);
        }
        cmd.push(self.bin_dir.join("pg_ctl").display().to_string());
        cmd.extend([
            "-D".to_owned(),
            self.data_dir.display().to_string(),
            "-m".to_owned(),
            "immediate".to_owned(),
            "stop".to_owned(),
        ]);
        cmd
    }

    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }
}
