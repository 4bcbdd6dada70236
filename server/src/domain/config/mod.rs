//! `fleet.toml`: the lab's boards, test plans and server settings.
//!
//! Loading is all-or-nothing: a file that fails any check is refused with
//! the file, line and field named, and the previously loaded fleet (if any)
//! stays in force.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use armfleet_protocol::MigrateCancelParams;

use crate::domain::families::FamilyProfile;
use serde::{Deserialize, Serialize};
use sha2::Digest;

mod parse;
mod raw;

use parse::{FleetParser, describe_toml_error};
use raw::RawFleet;

/// Board families armfleet knows. An unknown family is a configuration error,
/// so that per-family verdicts never split over a typo.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    Kunpeng920,
    AmpereAltra,
    AmpereOne,
    NvidiaGrace,
    Rpi4,
    Rpi5,
    /// Any other arm64 server or dev board.
    GenericArm64,
    /// QEMU's `virt` machine standing in for a board (development).
    QemuVirt,
    /// The virtual arm64 board: an emulated arm64 host with real KVM/arm64,
    /// nested under QEMU TCG and driven over SSH (`armfleet-agent vboard`).
    VirtArm64,
    /// x86-64 hosts (the executor is not arm64-only).
    X86_64,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Kunpeng920 => "kunpeng920",
            Family::AmpereAltra => "ampere-altra",
            Family::AmpereOne => "ampere-one",
            Family::NvidiaGrace => "nvidia-grace",
            Family::Rpi4 => "rpi4",
            Family::Rpi5 => "rpi5",
            Family::GenericArm64 => "generic-arm64",
            Family::QemuVirt => "qemu-virt",
            Family::VirtArm64 => "virt-arm64",
            Family::X86_64 => "x86-64",
        }
    }
    pub fn display_name(self) -> &'static str {
        match self {
            Family::Kunpeng920 => "HiSilicon Kunpeng 920",
            Family::AmpereAltra => "Ampere Altra",
            Family::AmpereOne => "AmpereOne",
            Family::NvidiaGrace => "NVIDIA Grace",
            Family::Rpi4 => "Raspberry Pi 4",
            Family::Rpi5 => "Raspberry Pi 5",
            Family::GenericArm64 => "Generic arm64",
            Family::QemuVirt => "QEMU virt",
            Family::VirtArm64 => "Virtual arm64 board (emulated)",
            Family::X86_64 => "x86-64",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The validated fleet.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub path: PathBuf,
    pub server: ServerSettings,
    pub boards: Vec<Board>,
    /// The profile of every family a board belongs to: built in, with
    /// fleet.toml's `[[family]]` fields over it.
    pub families: BTreeMap<Family, FamilyProfile>,
    pub plans: Vec<Plan>,
    pub trees: Vec<Tree>,
    pub tokens: Vec<ApiToken>,
    /// `[report]`: the trailers of maintainer reports (`armfleet report --lkml`).
    pub report: ReportSettings,
    /// Raw agent key bytes → index into `boards`, for authentication.
    key_owner: HashMap<Vec<u8>, usize>,
    /// Board name → index into `boards`: the dispatcher looks a board up on
    /// every claim, and a lab may have 10,000 of them.
    board_index: HashMap<String, usize>,
}

/// What an API token may do. Reads are open; these guard writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    /// Start runs.
    Trigger,
    /// Cancel jobs, reload the fleet, everything else.
    Admin,
}

/// An API token, kept only as its SHA-256.
#[derive(Clone)]
pub struct ApiToken {
    pub name: String,
    pub sha256: [u8; 32],
    pub scopes: Vec<Scope>,
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiToken")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl ApiToken {
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&Scope::Admin) || self.scopes.contains(&scope)
    }
}

pub fn token_hash(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.trim().as_bytes()).into()
}

/// A watched kernel tree: pushes to its branches start runs.
#[derive(Clone)]
pub struct Tree {
    pub name: String,
    pub url: String,
    /// Other URLs the forges may use for the same repository.
    pub aliases: Vec<String>,
    pub branches: Vec<String>,
    /// Plans run on a push; empty: every plan.
    pub plans: Vec<String>,
    /// Shared secret for webhook signatures.
    pub secret: Option<String>,
    pub test_tags: bool,
}

impl std::fmt::Debug for Tree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Tree")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("branches", &self.branches)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Tree {
    pub fn matches_url(&self, url: &str) -> bool {
        let want = normalize_url(url);
        std::iter::once(&self.url)
            .chain(&self.aliases)
            .any(|u| normalize_url(u) == want)
    }
    pub fn watches_branch(&self, branch: &str) -> bool {
        self.branches.iter().any(|b| b == branch || b == "*")
    }
}

/// `https://Host/a/b.git/` and `git://host/a/b` name the same repository.
pub fn normalize_url(url: &str) -> String {
    let u = url.trim().trim_end_matches('/');
    let u = u.strip_suffix(".git").unwrap_or(u);
    let u = u.split_once("://").map(|(_, rest)| rest).unwrap_or(u);
    let u = u.split_once('@').map(|(_, rest)| rest).unwrap_or(u);
    match u.split_once('/') {
        Some((host, path)) => format!("{}/{}", host.to_ascii_lowercase().replace(':', "/"), path),
        None => u.to_ascii_lowercase(),
    }
}

/// How verdicts are decided for a plan.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerdictSettings {
    /// Significance of the one-sided exact test.
    pub alpha: f64,
    /// The smallest per-cycle failure rate a `pass` must rule out.
    pub min_detectable_rate: f64,
    /// With what probability a bug of that rate must have shown up.
    pub power: f64,
    /// Cycles added per board when a verdict is inconclusive.
    pub extension_cycles: u32,
    /// Upper bound of board time spent on one kernel and plan, minutes.
    pub budget_board_minutes: f64,
    /// Most extensions for one kernel and plan.
    pub max_extensions: u32,
    /// Retries of a job that ended with a lab failure.
    pub max_infra_retries: u32,
    /// Count clean KVM cycles whose host could not be traced (no kprobes,
    /// a locked-down kernel) toward a verdict, labelled "untraced". Off:
    /// only cycles whose trace shows the stage-2 path count.
    pub count_untraced_cycles: bool,
}

impl Default for VerdictSettings {
    fn default() -> Self {
        VerdictSettings {
            alpha: 0.05,
            min_detectable_rate: 0.005,
            power: 0.95,
            extension_cycles: 200,
            budget_board_minutes: 120.0,
            max_extensions: 20,
            max_infra_retries: 2,
            count_untraced_cycles: false,
        }
    }
}

#[derive(Clone)]
pub struct ServerSettings {
    pub api_token: Option<String>,
    pub heartbeat_interval_ms: u64,
    pub heartbeat_deadline_ms: u64,
    /// Jobs not started within this many seconds after assignment are lost.
    pub assign_deadline_s: u64,
    /// Queued jobs no board took within this many seconds are lost.
    pub queue_deadline_s: u64,
    /// Log bytes stored per job; beyond it the log is truncated with a marker.
    pub max_log_bytes_per_job: u64,
    /// API writes and webhooks per second per client, and the burst allowed.
    pub rate_limit_per_s: f64,
    pub rate_limit_burst: f64,
    /// A board with a `power_cycle` command that stays offline this long is
    /// power-cycled (see `power`).
    pub power_cycle_after_s: u64,
    /// At most one automatic power cycle per board in this window.
    pub power_cycle_interval_s: u64,
    /// A power-cycle command running longer is killed.
    pub power_cycle_timeout_s: u64,
    /// How long the jobs of a board whose connection dropped wait for it to
    /// come back (reboot included) before they are lost; at least the
    /// heartbeat deadline.
    pub boot_deadline_s: u64,
    /// The server's HTTP address as boards reach it, for artifact URLs
    /// (default: the host the agent dialed, on the HTTP port).
    pub public_url: Option<String>,
    /// Where built and fetched kernel artifacts are kept, content-addressed
    /// (default: DATA_DIR/artifacts). Several servers on one database
    /// should share it.
    pub artifact_dir: Option<PathBuf>,
}

impl ServerSettings {
    /// How long a board that reboots into a build has to come back running
    /// it: `boot_deadline_s`, or 300 s when that is not set.
    pub fn boot_wait_s(&self) -> u64 {
        if self.boot_deadline_s > 0 {
            self.boot_deadline_s
        } else {
            300
        }
    }

    /// How long in-flight jobs of a board whose connection ended wait for
    /// it to come back with them: the heartbeat deadline, or
    /// `boot_deadline_s` when a reboot must fit in. The one rule for every
    /// place that leases jobs (a dropped session, a server start).
    pub fn lease_grace_s(&self) -> f64 {
        (self.heartbeat_deadline_ms as f64 / 1000.0).max(self.boot_deadline_s as f64)
    }
}

impl std::fmt::Debug for ServerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token never reaches a log.
        f.debug_struct("ServerSettings")
            .field("api_token", &self.api_token.as_ref().map(|_| "<redacted>"))
            .field("heartbeat_interval_ms", &self.heartbeat_interval_ms)
            .field("heartbeat_deadline_ms", &self.heartbeat_deadline_ms)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
pub struct Board {
    pub name: String,
    pub family: Family,
    pub arch: String,
    pub labels: Vec<String>,
    /// Authorised agent keys (OpenSSH public key lines, parsed).
    pub keys: Vec<russh::keys::PublicKey>,
    pub power_cycle: Option<Vec<String>>,
    pub max_jobs: u32,
}

impl std::fmt::Debug for Board {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Board")
            .field("name", &self.name)
            .field("family", &self.family)
            .field("labels", &self.labels)
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// A test plan: a job type with parameters, and the boards it targets.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub boards: Vec<String>,
    pub params: MigrateCancelParams,
    /// The keys the plan's own `[plan.params]` sets.
    pub given_params: Vec<String>,
    /// Each selected board's family profile, which fills what the plan
    /// left unset.
    pub board_profiles: HashMap<String, FamilyProfile>,
    pub timeout_s: u64,
    /// Replay executor only: kernels (commit prefixes) that the simulated
    /// boards treat as buggy, and how likely the abort is per cycle.
    pub replay_buggy_commits: Vec<String>,
    pub replay_abort_probability: f64,
    pub verdict: VerdictSettings,
    /// Build the kernel under test before running the plan's jobs, and boot
    /// it on the boards (see `builds` and `deploy`).
    pub build: Option<BuildConfig>,
}

/// How a plan's kernel is built: `make ARCH=… CROSS_COMPILE=… <defconfig>`,
/// the fragments merged in, `make -jN <targets>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildConfig {
    pub arch: String,
    pub cross_compile: Option<String>,
    pub defconfig: String,
    /// (file name, contents) of each config fragment, read when the fleet
    /// is loaded, so the cache key covers what they say, not their names.
    pub fragments: Vec<(String, String)>,
    pub targets: Vec<String>,
    /// The kernel image, relative to the build tree.
    pub image: String,
    /// `make -j`; 0: the host's CPU count.
    pub jobs: u32,
    pub timeout_s: u64,
}

impl BuildConfig {
    /// The build cache key's config half: same hash, same artifacts.
    pub fn hash(&self) -> String {
        let canonical = serde_json::json!({
            "arch": self.arch, "cross_compile": self.cross_compile, "defconfig": self.defconfig,
            "fragments": self.fragments, "targets": self.targets, "image": self.image,
        });
        hex::encode(sha2::Sha256::digest(canonical.to_string().as_bytes()))
    }
}

impl Plan {
    /// The parameters of this plan for one kernel on one board (whose
    /// family profile fills what the plan left unset).
    pub fn params_for(&self, commit: &str, board: &str) -> MigrateCancelParams {
        let mut params = self.params.clone();
        if let Some(profile) = self.board_profiles.get(board) {
            profile.apply(&mut params, &self.given_params);
        }
        let buggy = self
            .replay_buggy_commits
            .iter()
            .any(|prefix| !prefix.is_empty() && commit.starts_with(prefix.as_str()));
        params.replay_abort_probability = if buggy {
            self.replay_abort_probability
        } else {
            0.0
        };
        params
    }
}

impl Fleet {
    /// The board that lists this agent key, if any.
    pub fn board_with_key(&self, key: &[u8]) -> Option<&Board> {
        self.key_owner.get(key).map(|&i| &self.boards[i])
    }

    pub fn board(&self, name: &str) -> Option<&Board> {
        self.board_index.get(name).map(|&i| &self.boards[i])
    }
    pub fn plan(&self, name: &str) -> Option<&Plan> {
        self.plans.iter().find(|p| p.name == name)
    }

    pub fn load(path: &Path) -> Result<Fleet, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Fleet::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Fleet, ConfigError> {
        let parser = FleetParser {
            path,
            text,
            base_dir: path.parent().unwrap_or(Path::new(".")),
        };
        let raw: RawFleet =
            toml::from_str(text).map_err(|e| parser.invalid(describe_toml_error(text, &e)))?;
        let settings = parser.server(raw.server)?;
        let report = ReportSettings::from_raw(raw.report.unwrap_or_default(), &settings)
            .map_err(|m| parser.invalid(format!("[report] {m}")))?;
        let boards = parser.boards(raw.board)?;
        let profiles = parser.families(&boards, &raw.family)?;
        let plans = parser.plans(raw.plan, &boards, &profiles)?;
        if boards.is_empty() {
            return Err(parser.invalid("no [[board]] defined".into()));
        }
        let trees = parser.trees(raw.tree, &plans)?;
        let tokens = parser.tokens(raw.token)?;
        let key_owner = boards
            .iter()
            .enumerate()
            .flat_map(|(i, b)| b.keys.iter().map(move |k| (key_bytes(k), i)))
            .collect();
        let board_index = boards
            .iter()
            .enumerate()
            .map(|(i, b)| (b.name.clone(), i))
            .collect();
        Ok(Fleet {
            path: path.to_owned(),
            server: settings,
            boards,
            families: profiles,
            plans,
            trees,
            tokens,
            report,
            key_owner,
            board_index,
        })
    }
}

/// The raw public key bytes, used to compare keys regardless of comment.
pub fn key_bytes(key: &russh::keys::PublicKey) -> Vec<u8> {
    key.to_bytes().unwrap_or_default()
}

/// `[report]`: who signs maintainer reports and where their links point.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportSettings {
    /// `Reported-by:` trailer, `Name <address>`; none: the line is left out
    /// (a report never invents an address).
    pub reported_by: Option<String>,
    /// Base URL of the `Link:` trailers (`<link>/regressions/<id>`):
    /// `[report] link`, else `[server] public_url`; none: the URL the
    /// request came in on.
    pub link: Option<String>,
}

/// The fleet in force; replaced whole on reload, read without holding a lock
/// across awaits.
#[derive(Clone)]
pub struct SharedFleet(Arc<RwLock<Arc<Fleet>>>);

impl SharedFleet {
    pub fn new(fleet: Fleet) -> SharedFleet {
        SharedFleet(Arc::new(RwLock::new(Arc::new(fleet))))
    }
    pub fn current(&self) -> Arc<Fleet> {
        self.0.read().unwrap().clone()
    }
    pub fn replace(&self, fleet: Fleet) {
        *self.0.write().unwrap() = Arc::new(fleet);
    }
}
