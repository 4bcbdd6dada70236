//! `fleet.toml` as written: the serde shapes the checks in
//! [`super::parse`] start from. Unknown fields are refused.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::{Family, Scope, VerdictSettings};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFleet {
    pub(super) server: Option<RawServer>,
    #[serde(default)]
    pub(super) board: Vec<RawBoard>,
    #[serde(default)]
    pub(super) plan: Vec<RawPlan>,
    #[serde(default)]
    pub(super) tree: Vec<RawTree>,
    #[serde(default)]
    pub(super) token: Vec<RawToken>,
    #[serde(default)]
    pub(super) family: Vec<crate::domain::families::RawFamily>,
    pub(super) report: Option<RawReport>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReport {
    pub(super) reported_by: Option<String>,
    pub(super) link: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawToken {
    pub(super) name: Spanned<String>,
    pub(super) sha256: String,
    #[serde(default)]
    pub(super) scopes: Vec<Scope>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTree {
    pub(super) name: Spanned<String>,
    pub(super) url: String,
    #[serde(default)]
    pub(super) aliases: Vec<String>,
    #[serde(default)]
    pub(super) branches: Vec<String>,
    #[serde(default)]
    pub(super) plans: Vec<String>,
    pub(super) secret: Option<String>,
    pub(super) secret_file: Option<String>,
    #[serde(default)]
    pub(super) test_tags: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) api_token: Option<String>,
    pub(super) heartbeat_interval_ms: Option<u64>,
    pub(super) heartbeat_deadline_ms: Option<u64>,
    pub(super) assign_deadline_s: Option<u64>,
    pub(super) queue_deadline_s: Option<u64>,
    pub(super) max_log_bytes_per_job: Option<u64>,
    pub(super) rate_limit_per_s: Option<f64>,
    pub(super) rate_limit_burst: Option<f64>,
    pub(super) power_cycle_after_s: Option<u64>,
    pub(super) power_cycle_interval_s: Option<u64>,
    pub(super) power_cycle_timeout_s: Option<u64>,
    pub(super) boot_deadline_s: Option<u64>,
    pub(super) public_url: Option<String>,
    pub(super) artifact_dir: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBoard {
    pub(super) name: Spanned<String>,
    pub(super) family: Family,
    pub(super) arch: Option<String>,
    #[serde(default)]
    pub(super) labels: Vec<String>,
    pub(super) key: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) keys: Vec<Spanned<String>>,
    pub(super) key_file: Option<Spanned<String>>,
    pub(super) power_cycle: Option<Spanned<Vec<String>>>,
    pub(super) max_jobs: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlan {
    pub(super) name: Spanned<String>,
    pub(super) r#type: String,
    #[serde(default)]
    pub(super) boards: Vec<String>,
    #[serde(default)]
    pub(super) families: Vec<Family>,
    #[serde(default)]
    pub(super) labels: Vec<String>,
    pub(super) timeout_s: Option<u64>,
    /// Kept as a table first: the keys a plan sets win over its boards'
    /// family profiles, the others come from them.
    pub(super) params: Option<toml::Table>,
    pub(super) replay: Option<RawReplay>,
    pub(super) verdict: Option<VerdictSettings>,
    pub(super) build: Option<RawBuild>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBuild {
    #[serde(default = "default_build_arch")]
    pub(super) arch: String,
    pub(super) cross_compile: Option<String>,
    #[serde(default = "default_defconfig")]
    pub(super) defconfig: String,
    #[serde(default)]
    pub(super) fragments: Vec<String>,
    #[serde(default = "default_build_targets")]
    pub(super) targets: Vec<String>,
    pub(super) image: Option<String>,
    #[serde(default)]
    pub(super) jobs: u32,
    pub(super) timeout_s: Option<u64>,
}

fn default_build_arch() -> String {
    "arm64".into()
}
fn default_defconfig() -> String {
    "defconfig".into()
}
fn default_build_targets() -> Vec<String> {
    vec!["Image".into(), "modules".into()]
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReplay {
    #[serde(default)]
    pub(super) buggy_commits: Vec<String>,
    #[serde(default)]
    pub(super) abort_probability: f64,
}
