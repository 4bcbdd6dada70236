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
use crate::domain::config::BuildConfig;
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

mod artifacts;
mod fetch;
mod make;

pub use artifacts::ArtifactStore;
use fetch::fetch_urls;
use make::make_build;

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
