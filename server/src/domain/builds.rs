//! Kernel builds and their artifacts.
//!
//! A plan with a `[plan.build]` section needs the kernel under test built
//! and booted before its jobs run. Each job then names a build (`jobs.build_id`);
//! a build is a row in `builds`, unique per (commit, config hash), so a
//! commit is built once per configuration however many runs ask for it.
//!
//! The worker (`workers::builds`, owned by `Server::run`; several servers share the queue
//! through `SKIP LOCKED`) builds on the server host: a shared clone of the
//! tree's mirror at the commit, `make <defconfig>`, the fragments merged
//! (`scripts/kconfig/merge_config.sh` where the tree has it), `make -jN
//! <targets>`, `make kernelrelease`, then `modules_install`/`dtbs_install`
//! into tarballs. Every file lands in the [`ArtifactStore`] under its
//! SHA-256, and boards fetch them from `GET /api/v1/artifacts/{sha256}`,
//! checking the sum. A lab that builds elsewhere triggers with artifact
//! URLs and checksums instead ([`request_urls`]): the worker fetches and
//! checks them once, and boards still fetch from this server.
//!
//! A build that fails because `make` failed is the kernel's fault
//! (`failure = 'kernel'`): its jobs are cancelled and the kernel's verdict
//! is `build_failed`, never a test failure. A build the lab could not run
//! (mirror without the commit, a bad checksum, a timeout) is `infra`.
//!
//! ```text
//! queued ──► building ──► built | failed
//!   ▲           │
//!   └───────────┘  (its server restarted mid-build)
//! ```
//! Every state change is guarded by [`BuildState::can_move_to`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use armfleet_protocol::{Artifact, BuildSpec};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Postgres, Transaction};
use tokio::io::AsyncWriteExt;

use crate::domain::Deps;
use crate::domain::config::{BuildConfig, Fleet};
use crate::domain::lifecycle::StateMachine;
use crate::domain::mirror::Mirror;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildState {
    Queued,
    Building,
    Built,
    Failed,
}

impl StateMachine for BuildState {
    const ALL: &'static [BuildState] = &[
        BuildState::Queued,
        BuildState::Building,
        BuildState::Built,
        BuildState::Failed,
    ];

    fn as_str(self) -> &'static str {
        match self {
            BuildState::Queued => "queued",
            BuildState::Building => "building",
            BuildState::Built => "built",
            BuildState::Failed => "failed",
        }
    }

    /// A build that started goes back to the queue only when its server
    /// restarted while building it; built and failed are final.
    fn can_move_to(self, to: BuildState) -> bool {
        use BuildState::*;
        matches!(
            (self, to),
            (Queued, Building) | (Building, Built | Failed | Queued)
        )
    }
}

/// Build log kept per build (the tail beyond is dropped with a marker).
const MAX_BUILD_LOG: u64 = 64 << 20;

/// Content-addressed files: `DIR/ab/cdef…` named by their SHA-256.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    dir: PathBuf,
}

impl ArtifactStore {
    pub fn new(dir: PathBuf) -> ArtifactStore {
        ArtifactStore { dir }
    }

    pub fn for_fleet(fleet: &Fleet, data_dir: &Path) -> ArtifactStore {
        ArtifactStore::new(
            fleet
                .server
                .artifact_dir
                .clone()
                .unwrap_or_else(|| data_dir.join("artifacts")),
        )
    }

    /// Where the file with this sum lives, if `sha256` is a well-formed sum.
    pub fn path(&self, sha256: &str) -> Option<PathBuf> {
        let ok = sha256.len() == 64
            && sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| self.dir.join(&sha256[..2]).join(&sha256[2..]))
    }

    /// Copies `src` into the store; returns its sum and size. Written to a
    /// temporary name and renamed, so a crash never leaves a partial file
    /// under a sum.
    pub fn put_file(&self, src: &Path) -> std::io::Result<(String, u64)> {
        use std::io::{Read, Write};
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!(
            ".incoming-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let mut input = std::fs::File::open(src)?;
        let mut out = std::fs::File::create(&tmp)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut size = 0u64;
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            size += n as u64;
        }
        out.sync_all()?;
        let sum = hex::encode(hasher.finalize());
        let dest = self.path(&sum).expect("a hex digest is a valid sum");
        std::fs::create_dir_all(dest.parent().unwrap())?;
        std::fs::rename(&tmp, &dest)?;
        Ok((sum, size))
    }
}

/// A build row, as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct BuildRow {
    pub id: i64,
    pub tree: String,
    pub commit_sha: String,
    pub config_hash: String,
    pub source: String,
    pub state: String,
    pub failure: Option<String>,
    pub kernel_release: Option<String>,
    pub artifacts: serde_json::Value,
    pub error: Option<String>,
    pub log_sha256: Option<String>,
    pub builder: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// `SELECT` with the columns of [`BuildRow`] (a macro so that queries are
/// string literals).
macro_rules! build_select {
    () => {
        "SELECT id, tree, commit_sha, config_hash, source, state, failure, kernel_release, artifacts,
     error, log_sha256, builder, created_at, started_at, finished_at"
    };
}

pub async fn get(pool: &PgPool, id: i64) -> Result<Option<BuildRow>, sqlx::Error> {
    sqlx::query_as(concat!(build_select!(), " FROM builds WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// The builds of a kernel's jobs.
pub async fn for_kernel(pool: &PgPool, kernel: i64) -> Result<Vec<BuildRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        build_select!(),
        " FROM builds WHERE id IN
           (SELECT DISTINCT build_id FROM jobs WHERE kernel_id = $1 AND build_id IS NOT NULL)
         ORDER BY id"
    ))
    .bind(kernel)
    .fetch_all(pool)
    .await
}

/// What boards are told to fetch and boot.
pub fn spec(row: &BuildRow) -> Option<BuildSpec> {
    let artifacts: Vec<Artifact> = serde_json::from_value(row.artifacts.clone()).ok()?;
    Some(BuildSpec {
        build_id: row.id,
        kernel_release: row.kernel_release.clone()?,
        artifacts,
    })
}

/// The build for `commit` with `config`, queued if there is none yet.
pub async fn request(
    tx: &mut Transaction<'_, Postgres>,
    tree: &str,
    commit: &str,
    config: &BuildConfig,
) -> Result<i64, sqlx::Error> {
    upsert(
        tx,
        tree,
        commit,
        &config.hash(),
        serde_json::to_value(config).unwrap_or_default(),
        "make",
    )
    .await
}

/// An artifact built elsewhere, named in a trigger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlArtifact {
    pub name: String,
    /// `http://…`, `file:///…` or an absolute path on the server host.
    pub url: String,
    pub sha256: String,
}

/// Artifacts built elsewhere: the server fetches and checks them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlBuild {
    /// What `uname -r` says once booted.
    pub kernel_release: String,
    pub artifacts: Vec<UrlArtifact>,
}

impl UrlBuild {
    pub fn validate(&self) -> Result<(), String> {
        if self.kernel_release.trim().is_empty() {
            return Err("build.kernel_release is empty".into());
        }
        if !self.artifacts.iter().any(|a| a.name == "Image") {
            return Err("build.artifacts must include the kernel, named `Image`".into());
        }
        for a in &self.artifacts {
            if a.sha256.len() != 64 || !a.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "artifact `{}`: sha256 must be 64 hex digits",
                    a.name
                ));
            }
            if !valid_artifact_name(&a.name) {
                return Err(format!(
                    "artifact name `{}` must be a plain file name",
                    a.name
                ));
            }
        }
        Ok(())
    }
}

fn valid_artifact_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.+".contains(c))
}

pub async fn request_urls(
    tx: &mut Transaction<'_, Postgres>,
    tree: &str,
    commit: &str,
    build: &UrlBuild,
) -> Result<i64, sqlx::Error> {
    let config = serde_json::to_value(build).unwrap_or_default();
    let hash = hex::encode(Sha256::digest(config.to_string().as_bytes()));
    upsert(tx, tree, commit, &hash, config, "urls").await
}

async fn upsert(
    tx: &mut Transaction<'_, Postgres>,
    tree: &str,
    commit: &str,
    hash: &str,
    config: serde_json::Value,
    source: &str,
) -> Result<i64, sqlx::Error> {
    // The no-op update makes RETURNING yield the existing row's id.
    let id: i64 = sqlx::query_scalar!(
        "INSERT INTO builds (tree, commit_sha, config_hash, config, source)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (commit_sha, config_hash) DO UPDATE SET commit_sha = builds.commit_sha
         RETURNING id",
        tree,
        commit,
        hash,
        config,
        source,
    )
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query!("SELECT pg_notify('armfleet_builds', $1)", id.to_string(),)
        .execute(&mut **tx)
        .await?;
    Ok(id)
}

/// Why a build did not produce artifacts.
#[derive(Debug, thiserror::Error)]
enum BuildFailure {
    /// The source does not build: a result about the kernel.
    #[error("{0}")]
    Kernel(String),
    /// The lab could not build it.
    #[error("{0}")]
    Infra(String),
}

struct Built {
    kernel_release: String,
    artifacts: Vec<Artifact>,
}

/// Builds `builder` was running when it stopped start over.
pub async fn requeue_interrupted(pool: &PgPool, builder: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE builds SET state = $2, started_at = NULL WHERE state = ANY($3) AND builder = $1",
        builder,
        BuildState::Queued.as_str(),
        &BuildState::sources_of(BuildState::Queued),
    )
    .execute(pool)
    .await?;
    Ok(())
}

pub type Claimed = (i64, String, String, String, serde_json::Value);

pub async fn claim(deps: &Deps) -> Result<Option<Claimed>, sqlx::Error> {
    // The inner `state = 'queued'` is spelled out so that the partial index
    // `builds_queued` serves it; the outer guard is the machine's.
    let row = sqlx::query!(
        "UPDATE builds SET state = $2, started_at = now(), builder = $1
         WHERE id = (SELECT id FROM builds WHERE state = 'queued' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
           AND state = ANY($3)
         RETURNING id, source, tree, commit_sha, config",
        deps.server_id.as_ref(),
        BuildState::Building.as_str(),
        &BuildState::sources_of(BuildState::Building),
    )
    .fetch_optional(&deps.pool)
    .await?;
    Ok(row.map(|r| (r.id, r.source, r.tree, r.commit_sha, r.config)))
}

pub async fn build_one(
    deps: &Deps,
    id: i64,
    source: &str,
    tree: &str,
    commit: &str,
    config: serde_json::Value,
) {
    let fleet = deps.fleet.current();
    let store = ArtifactStore::for_fleet(&fleet, &deps.data_dir);
    let work = deps.data_dir.join("build-work").join(id.to_string());
    let _ = std::fs::remove_dir_all(&work);
    let started = std::time::Instant::now();
    tracing::info!(build = id, commit, source, "build started");
    let outcome = match source {
        "make" => match serde_json::from_value::<BuildConfig>(config) {
            Ok(cfg) => {
                let url = fleet
                    .trees
                    .iter()
                    .find(|t| t.name == tree)
                    .map(|t| t.url.clone())
                    .unwrap_or_else(|| tree.to_owned());
                let mirror = Mirror::for_url(&deps.data_dir, &url);
                make_build(&mirror, commit, &cfg, &work, &store).await
            }
            Err(e) => (
                Err(BuildFailure::Infra(format!("unreadable build config: {e}"))),
                None,
            ),
        },
        _ => match serde_json::from_value::<UrlBuild>(config) {
            Ok(b) => (fetch_urls(&b, &work, &store).await, None),
            Err(e) => (
                Err(BuildFailure::Infra(format!(
                    "unreadable artifact list: {e}"
                ))),
                None,
            ),
        },
    };
    let (result, log_sha) = outcome;
    let _ = std::fs::remove_dir_all(&work);
    let secs = started.elapsed().as_secs_f64();
    let written = match &result {
        Ok(built) => {
            tracing::info!(build = id, release = %built.kernel_release, secs, "build done");
            sqlx::query!(
                "UPDATE builds SET state = $5, kernel_release = $2, artifacts = $3, log_sha256 = $4,
                        finished_at = now() WHERE id = $1 AND state = ANY($6)",
                id,
                &built.kernel_release,
                serde_json::to_value(&built.artifacts).unwrap_or_default(),
                log_sha.as_deref(),
                BuildState::Built.as_str(),
                &BuildState::sources_of(BuildState::Built),
            )
            .execute(&deps.pool)
            .await
        }
        Err(e) => {
            let failure = match e {
                BuildFailure::Kernel(_) => "kernel",
                BuildFailure::Infra(_) => "infra",
            };
            tracing::warn!(build = id, failure, secs, "build failed: {e}");
            sqlx::query!(
                "UPDATE builds SET state = $5, failure = $2, error = $3, log_sha256 = $4, finished_at = now()
                 WHERE id = $1 AND state = ANY($6)",
                id,
                failure,
                e.to_string(),
                log_sha.as_deref(),
                BuildState::Failed.as_str(),
                &BuildState::sources_of(BuildState::Failed),
            )
            .execute(&deps.pool)
            .await
        }
    };
    match written {
        Err(e) => {
            tracing::error!(build = id, "recording the build's end: {e}");
            return;
        }
        Ok(r) if r.rows_affected() == 0 => {
            tracing::warn!(
                build = id,
                "the build is no longer building here; its end is not recorded"
            );
            return;
        }
        Ok(_) => {}
    }
    if let Err(e) = after_build(deps, id).await {
        tracing::error!(build = id, "acting on the build's end: {e}");
    }
}

/// A build ended: wake the boards that wait for it, or end the jobs that
/// cannot run.
pub async fn after_build(deps: &Deps, id: i64) -> anyhow::Result<()> {
    let Some(build) = get(&deps.pool, id).await? else {
        return Ok(());
    };
    if build.state == BuildState::Built.as_str() {
        let boards: Vec<String> = sqlx::query_scalar!(
            "SELECT DISTINCT board FROM jobs WHERE build_id = $1 AND state = 'queued'",
            id,
        )
        .fetch_all(&deps.pool)
        .await?;
        deps.work.work_arrived(&boards).await;
        return Ok(());
    }
    if build.state != BuildState::Failed.as_str() {
        return Ok(());
    }
    let kernel_fault = build.failure.as_deref() == Some("kernel");
    let error = build.error.clone().unwrap_or_default();
    let reason = if kernel_fault {
        format!("build_failed: build {id} of the kernel failed: {error}")
    } else {
        format!("the lab could not build the kernel (build {id}): {error}")
    };
    let stranded: Vec<crate::domain::verdicts::StrandedJob> = sqlx::query_as(
        "SELECT id AS job, kernel_id AS kernel, plan, board FROM jobs WHERE build_id = $1 AND state = 'queued'",
    )
    .bind(id)
    .fetch_all(&deps.pool)
    .await?;
    let explanation = format!("the kernel does not build (build {id}): {error}");
    crate::domain::verdicts::end_stranded_jobs(
        &deps.pool,
        &deps.fleet.current(),
        stranded,
        &reason,
        kernel_fault.then_some(("build_failed", explanation.as_str())),
    )
    .await
}

/// Appends a command's output to the build log.
struct BuildLog {
    file: tokio::fs::File,
    path: PathBuf,
    written: u64,
}

impl BuildLog {
    async fn create(path: PathBuf) -> std::io::Result<BuildLog> {
        Ok(BuildLog {
            file: tokio::fs::File::create(&path).await?,
            path,
            written: 0,
        })
    }

    async fn note(&mut self, text: &str) {
        if self.written < MAX_BUILD_LOG {
            let _ = self.file.write_all(text.as_bytes()).await;
            self.written += text.len() as u64;
        }
    }

    /// The last lines, for the error message.
    fn tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Runs `argv` in `dir` (no shell), output into the log; kills its whole
/// process group when `deadline` passes. Returns whether it exited 0.
async fn run_logged(
    log: &mut BuildLog,
    dir: &Path,
    argv: &[String],
    deadline: tokio::time::Instant,
) -> Result<bool, BuildFailure> {
    log.note(&format!("$ {}\n", argv.join(" "))).await;
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| BuildFailure::Infra(format!("cannot run {}: {e}", argv[0])))?;
    let pgid = child.id().map(|p| p as i32);
    let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let readers = futures::future::join(pump(out, tx.clone()), pump(err, tx));
    let collect = async {
        while let Some(chunk) = rx.recv().await {
            log.note(&String::from_utf8_lossy(&chunk)).await;
        }
    };
    let both = futures::future::join(readers, collect);
    let timed_out = tokio::time::timeout_at(deadline, both).await.is_err();
    if timed_out {
        if let Some(pg) = pgid {
            // SAFETY: killpg on the group this build step leads.
            unsafe {
                libc::killpg(pg, libc::SIGKILL);
            }
        }
        let _ = child.wait().await;
        return Err(BuildFailure::Infra(format!(
            "`{}` ran past the build's timeout",
            argv.join(" ")
        )));
    }
    let status = child
        .wait()
        .await
        .map_err(|e| BuildFailure::Infra(format!("waiting for {}: {e}", argv[0])))?;
    log.note(&format!("[exit: {status}]\n")).await;
    Ok(status.success())
}

async fn pump<R: tokio::io::AsyncRead + Unpin>(mut r: R, tx: tokio::sync::mpsc::Sender<Vec<u8>>) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 16 << 10];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 || tx.send(buf[..n].to_vec()).await.is_err() {
            break;
        }
    }
}

/// Builds `commit` of the mirror's tree with `cfg` under `work`; the
/// artifacts and the build log go into `store`.
async fn make_build(
    mirror: &Mirror,
    commit: &str,
    cfg: &BuildConfig,
    work: &Path,
    store: &ArtifactStore,
) -> (Result<Built, BuildFailure>, Option<String>) {
    if let Err(e) = std::fs::create_dir_all(work) {
        return (
            Err(BuildFailure::Infra(format!(
                "creating {}: {e}",
                work.display()
            ))),
            None,
        );
    }
    let mut log = match BuildLog::create(work.join("build.log")).await {
        Ok(l) => l,
        Err(e) => {
            return (
                Err(BuildFailure::Infra(format!("creating the build log: {e}"))),
                None,
            );
        }
    };
    let result = make_steps(mirror, commit, cfg, work, store, &mut log).await;
    let _ = log.file.flush().await;
    let log_sha = store.put_file(&log.path).ok().map(|(sum, _)| sum);
    let result = result.map_err(|e| match e {
        BuildFailure::Kernel(m) => BuildFailure::Kernel(format!("{m}\n{}", log.tail(15))),
        other => other,
    });
    (result, log_sha)
}

async fn make_steps(
    mirror: &Mirror,
    commit: &str,
    cfg: &BuildConfig,
    work: &Path,
    store: &ArtifactStore,
    log: &mut BuildLog,
) -> Result<Built, BuildFailure> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(cfg.timeout_s);
    let has_commit = |m: &Mirror| {
        let path = m.path.clone();
        let spec = format!("{commit}^{{commit}}");
        async move {
            crate::domain::mirror::git(
                Some(&path),
                &["cat-file", "-e", &spec],
                Duration::from_secs(30),
            )
            .await
            .is_ok()
        }
    };
    if !has_commit(mirror).await {
        log.note(&format!("fetching {} into its mirror\n", mirror.url))
            .await;
        mirror
            .fetch()
            .await
            .map_err(|e| BuildFailure::Infra(format!("mirroring {}: {e}", mirror.url)))?;
        if !has_commit(mirror).await {
            return Err(BuildFailure::Infra(format!(
                "commit {commit} is not in {}",
                mirror.url
            )));
        }
    }
    let src = work.join("src");
    let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mirror_path = mirror.path.display().to_string();
    let src_path = src.display().to_string();
    for step in [
        argv(&[
            "git",
            "clone",
            "--quiet",
            "--shared",
            "--no-checkout",
            &mirror_path,
            &src_path,
        ]),
        argv(&[
            "git",
            "-C",
            &src_path,
            "-c",
            "advice.detachedHead=false",
            "checkout",
            "--quiet",
            commit,
        ]),
    ] {
        if !run_logged(log, work, &step, deadline).await? {
            return Err(BuildFailure::Infra(format!("`{}` failed", step.join(" "))));
        }
    }
    let mut make = vec!["make".to_owned(), format!("ARCH={}", cfg.arch)];
    if let Some(cc) = &cfg.cross_compile {
        make.push(format!("CROSS_COMPILE={cc}"));
    }
    let make_with = |extra: &[String]| {
        let mut v = make.clone();
        v.extend_from_slice(extra);
        v
    };
    let kernel_step = |what: &str| BuildFailure::Kernel(format!("`make {what}` failed"));
    if !run_logged(log, &src, &make_with(&[cfg.defconfig.clone()]), deadline).await? {
        return Err(kernel_step(&cfg.defconfig));
    }
    if !cfg.fragments.is_empty() {
        let mut paths = Vec::new();
        for (i, (name, text)) in cfg.fragments.iter().enumerate() {
            let p = work.join(format!("fragment-{i}.config"));
            std::fs::write(&p, text)
                .map_err(|e| BuildFailure::Infra(format!("writing fragment {name}: {e}")))?;
            paths.push(p.display().to_string());
        }
        let merge = src.join("scripts/kconfig/merge_config.sh");
        if merge.is_file() {
            let mut step = vec![
                "sh".to_owned(),
                merge.display().to_string(),
                "-m".into(),
                ".config".into(),
            ];
            step.extend(paths);
            let mut cmd = step.clone();
            // merge_config.sh reads ARCH and CROSS_COMPILE from the environment.
            cmd.insert(0, format!("ARCH={}", cfg.arch));
            cmd.insert(0, "env".into());
            if !run_logged(log, &src, &cmd, deadline).await? {
                return Err(BuildFailure::Kernel(
                    "merging the config fragments failed".into(),
                ));
            }
        } else {
            let mut config = std::fs::read_to_string(src.join(".config")).unwrap_or_default();
            for (_, text) in &cfg.fragments {
                config.push('\n');
                config.push_str(text);
            }
            std::fs::write(src.join(".config"), config)
                .map_err(|e| BuildFailure::Infra(format!("writing .config: {e}")))?;
            log.note("appended the config fragments to .config\n").await;
        }
        if !run_logged(log, &src, &make_with(&["olddefconfig".into()]), deadline).await? {
            return Err(kernel_step("olddefconfig"));
        }
    }
    let jobs = if cfg.jobs > 0 {
        cfg.jobs as usize
    } else {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    };
    let mut build = make_with(&[format!("-j{jobs}")]);
    build.extend(cfg.targets.iter().cloned());
    if !run_logged(log, &src, &build, deadline).await? {
        return Err(kernel_step(&cfg.targets.join(" ")));
    }
    let release_out = tokio::process::Command::new("make")
        .args(make_with(&["-s".into(), "kernelrelease".into()])[1..].iter())
        .current_dir(&src)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| BuildFailure::Infra(format!("make kernelrelease: {e}")))?;
    let kernel_release = String::from_utf8_lossy(&release_out.stdout)
        .trim()
        .to_owned();
    if !release_out.status.success()
        || kernel_release.is_empty()
        || kernel_release.contains(char::is_whitespace)
    {
        return Err(BuildFailure::Kernel(format!(
            "`make kernelrelease` gave no release ({})",
            String::from_utf8_lossy(&release_out.stderr).trim()
        )));
    }
    log.note(&format!("kernelrelease: {kernel_release}\n"))
        .await;
    let image = src.join(&cfg.image);
    if !image.is_file() {
        return Err(BuildFailure::Kernel(format!(
            "the build made no {}",
            cfg.image
        )));
    }
    let mut files: Vec<(String, PathBuf)> = vec![
        ("Image".into(), image),
        ("config".into(), src.join(".config")),
    ];
    for (target, install, var, name) in [
        (
            "modules",
            "modules_install",
            "INSTALL_MOD_PATH",
            "modules.tar.gz",
        ),
        ("dtbs", "dtbs_install", "INSTALL_DTBS_PATH", "dtbs.tar.gz"),
    ] {
        if !cfg.targets.iter().any(|t| t == target) {
            continue;
        }
        let stage = work.join(format!("stage-{target}"));
        let _ = std::fs::create_dir_all(&stage);
        if !run_logged(
            log,
            &src,
            &make_with(&[install.into(), format!("{var}={}", stage.display())]),
            deadline,
        )
        .await?
        {
            return Err(kernel_step(install));
        }
        let tarball = work.join(name);
        let tar = argv(&[
            "tar",
            "-czf",
            &tarball.display().to_string(),
            "-C",
            &stage.display().to_string(),
            ".",
        ]);
        if !run_logged(log, work, &tar, deadline).await? {
            return Err(BuildFailure::Infra(format!("packing {name} failed")));
        }
        files.push((name.into(), tarball));
    }
    let mut artifacts = Vec::new();
    for (name, path) in files {
        let (sha256, size) = store
            .put_file(&path)
            .map_err(|e| BuildFailure::Infra(format!("storing {name}: {e}")))?;
        log.note(&format!("artifact {name}: sha256 {sha256}, {size} bytes\n"))
            .await;
        artifacts.push(Artifact {
            url: format!("/api/v1/artifacts/{sha256}"),
            name,
            sha256,
            size,
        });
    }
    Ok(Built {
        kernel_release,
        artifacts,
    })
}

/// Fetches artifacts built elsewhere into the store, checking each sum.
async fn fetch_urls(
    build: &UrlBuild,
    work: &Path,
    store: &ArtifactStore,
) -> Result<Built, BuildFailure> {
    std::fs::create_dir_all(work)
        .map_err(|e| BuildFailure::Infra(format!("creating {}: {e}", work.display())))?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3600))
        .build()
        .map_err(|e| BuildFailure::Infra(format!("HTTP client: {e}")))?;
    let mut artifacts = Vec::new();
    for a in &build.artifacts {
        let dest = work.join(&a.name);
        if let Some(path) = a
            .url
            .strip_prefix("file://")
            .or(a.url.starts_with('/').then_some(a.url.as_str()))
        {
            std::fs::copy(path, &dest).map_err(|e| {
                BuildFailure::Infra(format!("artifact {}: reading {path}: {e}", a.name))
            })?;
        } else if a.url.starts_with("http://") || a.url.starts_with("https://") {
            let mut resp = client
                .get(&a.url)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| {
                    BuildFailure::Infra(format!("artifact {}: fetching {}: {e}", a.name, a.url))
                })?;
            let mut file = tokio::fs::File::create(&dest)
                .await
                .map_err(|e| BuildFailure::Infra(format!("artifact {}: {e}", a.name)))?;
            while let Some(chunk) = resp.chunk().await.map_err(|e| {
                BuildFailure::Infra(format!("artifact {}: reading {}: {e}", a.name, a.url))
            })? {
                file.write_all(&chunk)
                    .await
                    .map_err(|e| BuildFailure::Infra(format!("artifact {}: {e}", a.name)))?;
            }
            file.flush().await.ok();
        } else {
            return Err(BuildFailure::Infra(format!(
                "artifact {}: unsupported URL `{}` (http://, https://, file:// or an absolute path)",
                a.name, a.url
            )));
        }
        let (sha256, size) = store
            .put_file(&dest)
            .map_err(|e| BuildFailure::Infra(format!("storing {}: {e}", a.name)))?;
        if !sha256.eq_ignore_ascii_case(&a.sha256) {
            return Err(BuildFailure::Infra(format!(
                "artifact {}: checksum mismatch: {} has sha256 {sha256}, the trigger said {}",
                a.name, a.url, a.sha256
            )));
        }
        artifacts.push(Artifact {
            name: a.name.clone(),
            url: format!("/api/v1/artifacts/{sha256}"),
            sha256,
            size,
        });
    }
    Ok(Built {
        kernel_release: build.kernel_release.clone(),
        artifacts,
    })
}

#[cfg(test)]
mod build_state_tests {
    use super::BuildState::{self, *};
    use crate::domain::lifecycle::{StateMachine, assert_well_formed};

    #[test]
    fn a_build_ends_once_and_only_a_started_build_is_requeued() {
        assert_well_formed::<BuildState>();
        for &s in BuildState::ALL {
            assert!(!Built.can_move_to(s), "built is final");
            assert!(!Failed.can_move_to(s), "failed is final");
        }
        assert_eq!(BuildState::sources_of(Queued), ["building"]);
        assert_eq!(BuildState::sources_of(Building), ["queued"]);
        assert_eq!(BuildState::sources_of(Failed), ["building"]);
    }
}
