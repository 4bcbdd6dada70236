//! Bare mirrors of the watched kernel trees, kept in the data dir and
//! fetched on every push, so the server knows parents and ancestry.
//!
//! git runs as a child process with an argument vector (never a shell), a
//! timeout, and no terminal prompts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("git {args}: {message}")]
    Git { args: String, message: String },
    #[error("git {0} timed out")]
    Timeout(String),
    #[error("running git: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone)]
pub struct Mirror {
    pub path: PathBuf,
    pub url: String,
}

/// What git knows of one commit.
#[derive(Debug, Clone, Default)]
pub struct CommitInfo {
    pub parent: Option<String>,
    pub subject: String,
    pub author: String,
    pub committed_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Mirror {
    pub fn for_url(data_dir: &Path, url: &str) -> Mirror {
        let key =
            hex::encode(&Sha256::digest(crate::domain::config::normalize_url(url).as_bytes())[..8]);
        Mirror {
            path: data_dir.join("mirrors").join(format!("{key}.git")),
            url: url.to_owned(),
        }
    }

    /// Clones on first use, fetches afterwards.
    pub async fn fetch(&self) -> Result<(), MirrorError> {
        if self.path.join("HEAD").exists() {
            git(
                Some(&self.path),
                &["fetch", "--prune", "--quiet", "origin", "+refs/*:refs/*"],
                Duration::from_secs(600),
            )
            .await?;
        } else {
            if let Some(parent) = self.path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let dest = self.path.to_string_lossy().to_string();
            git(
                None,
                &["clone", "--mirror", "--quiet", &self.url, &dest],
                Duration::from_secs(1800),
            )
            .await?;
        }
        Ok(())
    }

    pub async fn commit_info(&self, commit: &str) -> Result<CommitInfo, MirrorError> {
        let out = git(
            Some(&self.path),
            &[
                "log",
                "-1",
                "--format=%P%x00%s%x00%an <%ae>%x00%cI",
                commit,
                "--",
            ],
            Duration::from_secs(30),
        )
        .await?;
        let mut parts = out.trim_end().split('\0');
        let parents = parts.next().unwrap_or_default();
        Ok(CommitInfo {
            parent: parents.split_whitespace().next().map(str::to_owned),
            subject: parts.next().unwrap_or_default().to_owned(),
            author: parts.next().unwrap_or_default().to_owned(),
            committed_at: parts
                .next()
                .and_then(|d| chrono::DateTime::parse_from_rfc3339(d).ok())
                .map(|d| d.to_utc()),
        })
    }

    /// First-parent ancestors of `commit`, nearest first (excluding itself).
    pub async fn first_parent_ancestors(
        &self,
        commit: &str,
        limit: usize,
    ) -> Result<Vec<String>, MirrorError> {
        let max = format!("--max-count={}", limit + 1);
        let out = git(
            Some(&self.path),
            &["rev-list", "--first-parent", &max, commit, "--"],
            Duration::from_secs(60),
        )
        .await?;
        Ok(out.lines().skip(1).map(str::to_owned).collect())
    }
}

/// What a git command printed and whether it succeeded.
pub(crate) struct GitOutput {
    pub ok: bool,
    pub stdout: String,
    /// The last line of its stderr (git's own reason), or "failed".
    pub reason: String,
}

/// Runs git non-interactively: no terminal prompt and no askpass helper
/// (a private tree must fail, not wait for a password), stdin closed, killed
/// after `timeout`. A nonzero exit is an answer here (`merge-base
/// --is-ancestor`), not an error.
pub(crate) async fn git_status(
    dir: Option<&Path>,
    args: &[&str],
    timeout: Duration,
) -> Result<GitOutput, MirrorError> {
    let mut cmd = Command::new("git");
    if let Some(d) = dir {
        cmd.arg("-C").arg(d);
    }
    cmd.args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "/bin/true")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(timeout, cmd.output()).await {
        Ok(r) => r?,
        Err(_) => return Err(MirrorError::Timeout(args.join(" "))),
    };
    Ok(GitOutput {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        reason: String::from_utf8_lossy(&out.stderr)
            .trim()
            .lines()
            .last()
            .unwrap_or("failed")
            .to_owned(),
    })
}

/// [`git_status`], a nonzero exit being an error.
pub(crate) async fn git(
    dir: Option<&Path>,
    args: &[&str],
    timeout: Duration,
) -> Result<String, MirrorError> {
    let out = git_status(dir, args, timeout).await?;
    if !out.ok {
        return Err(MirrorError::Git {
            args: args.first().copied().unwrap_or("").to_owned(),
            message: out.reason,
        });
    }
    Ok(out.stdout)
}

/// Asks the mirror worker to fetch a tree. A set, not a queue: a tree
/// asked for again while it waits is one fetch, so the backlog is bounded
/// by the number of trees, however many pushes arrive.
#[derive(Clone, Default)]
pub struct MirrorQueue {
    pending: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
    wake: std::sync::Arc<tokio::sync::Notify>,
}

impl MirrorQueue {
    pub fn new() -> MirrorQueue {
        MirrorQueue::default()
    }

    pub fn request(&self, url: &str) {
        if self.pending.lock().unwrap().insert(url.to_owned()) {
            self.wake.notify_one();
        }
    }

    /// Every tree asked for, once there is one.
    pub async fn next_batch(&self) -> Vec<String> {
        loop {
            let batch: Vec<String> = std::mem::take(&mut *self.pending.lock().unwrap())
                .into_iter()
                .collect();
            if !batch.is_empty() {
                return batch;
            }
            self.wake.notified().await;
        }
    }
}

#[cfg(test)]
mod queue_tests {
    use super::MirrorQueue;

    #[tokio::test]
    async fn a_tree_asked_for_many_times_while_it_waits_is_fetched_once() {
        let q = MirrorQueue::new();
        for _ in 0..1000 {
            q.request("https://git.example/linux.git");
        }
        q.request("https://git.example/kvmarm.git");
        let batch = q.next_batch().await;
        assert_eq!(
            batch,
            [
                "https://git.example/kvmarm.git",
                "https://git.example/linux.git"
            ]
        );
        // Nothing pending: the next batch waits for a request.
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), q.next_batch());
        assert!(waiting.await.is_err());
        let q2 = q.clone();
        let next = tokio::spawn(async move { q2.next_batch().await });
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        q.request("https://git.example/linux.git");
        assert_eq!(next.await.unwrap(), ["https://git.example/linux.git"]);
    }
}
