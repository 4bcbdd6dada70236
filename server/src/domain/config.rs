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
use toml::Spanned;

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

/// Turns the raw file into a checked [`Fleet`], section by section; every
/// error names the file, and where it can the line and the field.
struct FleetParser<'a> {
    path: &'a Path,
    text: &'a str,
    /// Relative paths in the file (keys, secrets, fragments) are relative
    /// to it.
    base_dir: &'a Path,
}

impl FleetParser<'_> {
    fn invalid(&self, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            message,
        }
    }

    fn at(&self, span: std::ops::Range<usize>, field: &str, msg: String) -> ConfigError {
        self.invalid(format!(
            "line {}, field `{field}`: {msg}",
            line_of(self.text, span.start)
        ))
    }

    fn server(&self, raw: Option<RawServer>) -> Result<ServerSettings, ConfigError> {
        let server = raw.unwrap_or_default();
        if server.heartbeat_deadline_ms.unwrap_or(DEFAULT_DEADLINE_MS)
            <= server.heartbeat_interval_ms.unwrap_or(DEFAULT_INTERVAL_MS)
        {
            return Err(self.invalid(
                "[server] heartbeat_deadline_ms must be larger than heartbeat_interval_ms".into(),
            ));
        }
        Ok(ServerSettings {
            api_token: server.api_token,
            heartbeat_interval_ms: server.heartbeat_interval_ms.unwrap_or(DEFAULT_INTERVAL_MS),
            heartbeat_deadline_ms: server.heartbeat_deadline_ms.unwrap_or(DEFAULT_DEADLINE_MS),
            assign_deadline_s: server.assign_deadline_s.unwrap_or(60),
            queue_deadline_s: server.queue_deadline_s.unwrap_or(7 * 24 * 3600),
            max_log_bytes_per_job: server.max_log_bytes_per_job.unwrap_or(256 << 20),
            rate_limit_per_s: server.rate_limit_per_s.unwrap_or(20.0).max(0.01),
            rate_limit_burst: server.rate_limit_burst.unwrap_or(200.0).max(1.0),
            power_cycle_after_s: server.power_cycle_after_s.unwrap_or(300),
            power_cycle_interval_s: server.power_cycle_interval_s.unwrap_or(900),
            power_cycle_timeout_s: server.power_cycle_timeout_s.unwrap_or(60).max(1),
            boot_deadline_s: server.boot_deadline_s.unwrap_or(0),
            public_url: server
                .public_url
                .map(|u| u.trim_end_matches('/').to_owned()),
            artifact_dir: server.artifact_dir.map(|d| self.base_dir.join(d)),
        })
    }

    fn boards(&self, raw: Vec<RawBoard>) -> Result<Vec<Board>, ConfigError> {
        let mut boards = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut key_owner: HashMap<Vec<u8>, String> = HashMap::new();
        for raw_board in raw {
            let name = raw_board.name.get_ref().clone();
            let name_span = raw_board.name.span();
            if !valid_name(&name) {
                return Err(self.at(
                    name_span,
                    "board.name",
                    format!(
                        "`{name}` is not a valid board name (letters, digits, `-`, `_`, `.`; at most 64)"
                    ),
                ));
            }
            // Offsets, not lines: counting lines per board would make a
            // 10,000-board file quadratic to load.
            if let Some(first) = names.insert(name.clone(), name_span.start) {
                return Err(self.at(
                    name_span,
                    "board.name",
                    format!(
                        "duplicate board `{name}` (first defined on line {})",
                        line_of(self.text, first)
                    ),
                ));
            }
            let mut keys = Vec::new();
            let mut key_sources: Vec<(String, std::ops::Range<usize>, &str)> = Vec::new();
            for k in raw_board.keys.iter() {
                key_sources.push((k.get_ref().clone(), k.span(), "board.keys"));
            }
            if let Some(k) = &raw_board.key {
                key_sources.push((k.get_ref().clone(), k.span(), "board.key"));
            }
            if let Some(f) = &raw_board.key_file {
                let file = self.base_dir.join(f.get_ref());
                let line = std::fs::read_to_string(&file).map_err(|e| {
                    self.at(
                        f.span(),
                        "board.key_file",
                        format!("cannot read {}: {e}", file.display()),
                    )
                })?;
                key_sources.push((line.trim().to_owned(), f.span(), "board.key_file"));
            }
            if key_sources.is_empty() {
                return Err(self.at(
                    name_span,
                    "board.key",
                    format!(
                        "board `{name}` has no agent key (set `key = \"ssh-ed25519 …\"` or `key_file`)"
                    ),
                ));
            }
            for (line, span, field) in key_sources {
                let key = russh::keys::PublicKey::from_openssh(line.trim()).map_err(|e| {
                    self.at(
                        span.clone(),
                        field,
                        format!("not an OpenSSH public key: {e}"),
                    )
                })?;
                if key.algorithm() != russh::keys::Algorithm::Ed25519 {
                    return Err(self.at(
                        span,
                        field,
                        format!(
                            "agent keys must be ed25519, this one is {}",
                            key.algorithm()
                        ),
                    ));
                }
                let bytes = key_bytes(&key);
                if let Some(owner) = key_owner.insert(bytes, name.clone()) {
                    return Err(self.at(
                        span,
                        field,
                        format!("duplicate key: board `{name}` uses the key of board `{owner}`"),
                    ));
                }
                keys.push(key);
            }
            let power_cycle = match raw_board.power_cycle {
                None => None,
                Some(cmd) if cmd.get_ref().is_empty() => {
                    return Err(self.at(cmd.span(), "board.power_cycle", "empty command".into()));
                }
                Some(cmd) => Some(cmd.into_inner()),
            };
            boards.push(Board {
                name,
                family: raw_board.family,
                arch: raw_board.arch.unwrap_or_else(|| "arm64".into()),
                labels: raw_board.labels,
                keys,
                power_cycle,
                max_jobs: raw_board.max_jobs.unwrap_or(1).max(1),
            });
        }
        Ok(boards)
    }

    /// The built-in profile of every family a board has, overridden by the
    /// file's `[[family]]` sections.
    fn families(
        &self,
        boards: &[Board],
        raw: &[crate::domain::families::RawFamily],
    ) -> Result<BTreeMap<Family, FamilyProfile>, ConfigError> {
        let mut profiles: BTreeMap<Family, FamilyProfile> = BTreeMap::new();
        for b in boards {
            profiles
                .entry(b.family)
                .or_insert_with(|| FamilyProfile::builtin(b.family));
        }
        let mut seen_families = Vec::new();
        for raw_family in raw {
            if seen_families.contains(&raw_family.name) {
                return Err(self.invalid(format!(
                    "duplicate [[family]] `{}`",
                    raw_family.name.as_str()
                )));
            }
            seen_families.push(raw_family.name);
            profiles.insert(
                raw_family.name,
                raw_family.profile().map_err(|m| self.invalid(m))?,
            );
        }
        Ok(profiles)
    }

    fn plans(
        &self,
        raw: Vec<RawPlan>,
        boards: &[Board],
        profiles: &BTreeMap<Family, FamilyProfile>,
    ) -> Result<Vec<Plan>, ConfigError> {
        let mut plans: Vec<Plan> = Vec::new();
        for raw_plan in raw {
            let name = raw_plan.name.get_ref().clone();
            let span = raw_plan.name.span();
            if !valid_name(&name) {
                return Err(self.at(
                    span,
                    "plan.name",
                    format!("`{name}` is not a valid plan name"),
                ));
            }
            if plans.iter().any(|p| p.name == name) {
                return Err(self.at(span, "plan.name", format!("duplicate plan `{name}`")));
            }
            if raw_plan.r#type != "migrate-cancel" {
                return Err(self.at(
                    span,
                    "plan.type",
                    format!(
                        "plan `{name}`: unknown job type `{}` (known: migrate-cancel)",
                        raw_plan.r#type
                    ),
                ));
            }
            let given_params: Vec<String> = raw_plan
                .params
                .as_ref()
                .map(|t| t.keys().cloned().collect())
                .unwrap_or_default();
            let params: MigrateCancelParams = match raw_plan.params {
                None => MigrateCancelParams::default(),
                Some(t) => toml::Value::Table(t)
                    .try_into()
                    .map_err(|e: toml::de::Error| {
                        self.at(
                            span.clone(),
                            "plan.params",
                            format!("plan `{name}`: {}", e.message().trim()),
                        )
                    })?,
            };
            if params.cycles == 0 {
                return Err(self.at(
                    span,
                    "plan.params.cycles",
                    format!("plan `{name}`: cycles must be at least 1"),
                ));
            }
            if params.cancel_delay_ms_min > params.cancel_delay_ms_max {
                return Err(self.at(
                    span,
                    "plan.params.cancel_delay_ms_min",
                    format!(
                        "plan `{name}`: cancel_delay_ms_min is larger than cancel_delay_ms_max"
                    ),
                ));
            }
            if !["kvm", "tcg", "auto"].contains(&params.accel.as_str()) {
                return Err(self.at(
                    span,
                    "plan.params.accel",
                    format!(
                        "plan `{name}`: accel must be kvm, tcg or auto, not `{}`",
                        params.accel
                    ),
                ));
            }
            if params.dirty_threads > 64 {
                return Err(self.at(
                    span,
                    "plan.params.dirty_threads",
                    format!("plan `{name}`: dirty_threads must be at most 64 (0: one per vCPU)"),
                ));
            }
            if let Some(g) = params.gic_version.filter(|g| ![2, 3, 4].contains(g)) {
                return Err(self.at(
                    span,
                    "plan.params.gic_version",
                    format!("plan `{name}`: gic_version must be 2, 3 or 4, not {g}"),
                ));
            }
            if let Some(n) = params
                .dirty_ring_size
                .filter(|n| !n.is_power_of_two() || !(1024..=65536).contains(n))
            {
                return Err(self.at(
                    span,
                    "plan.params.dirty_ring_size",
                    format!(
                        "plan `{name}`: dirty_ring_size must be a power of two within 1024..=65536, not {n}"
                    ),
                ));
            }
            let replay = raw_plan.replay.unwrap_or_default();
            if !(0.0..=1.0).contains(&replay.abort_probability) {
                return Err(self.at(
                    span,
                    "plan.replay.abort_probability",
                    format!("plan `{name}`: abort_probability must be within 0..1"),
                ));
            }
            let selected: Vec<String> = boards
                .iter()
                .filter(|b| {
                    let by_name = raw_plan.boards.is_empty()
                        || raw_plan.boards.iter().any(|p| p == "*" || *p == b.name);
                    let by_family =
                        raw_plan.families.is_empty() || raw_plan.families.contains(&b.family);
                    let by_label = raw_plan.labels.iter().all(|l| b.labels.contains(l));
                    by_name && by_family && by_label
                })
                .map(|b| b.name.clone())
                .collect();
            if selected.is_empty() {
                return Err(self.at(
                    span,
                    "plan.boards",
                    format!(
                        "plan `{name}` matches no board (boards {:?}, families {:?}, labels {:?})",
                        raw_plan.boards, raw_plan.families, raw_plan.labels
                    ),
                ));
            }
            let verdict = raw_plan.verdict.unwrap_or_default();
            if !(0.0 < verdict.alpha && verdict.alpha < 0.5)
                || !(0.0 < verdict.min_detectable_rate && verdict.min_detectable_rate < 1.0)
                || !(0.0 < verdict.power && verdict.power < 1.0)
            {
                return Err(self.at(
                    span,
                    "plan.verdict",
                    format!(
                        "plan `{name}`: alpha must be in (0, 0.5), min_detectable_rate and power in (0, 1)"
                    ),
                ));
            }
            let build = match raw_plan.build {
                None => None,
                Some(b) => {
                    let mut fragments = Vec::new();
                    for f in &b.fragments {
                        let file = self.base_dir.join(f);
                        let text = std::fs::read_to_string(&file).map_err(|e| {
                            self.at(
                                span.clone(),
                                "plan.build.fragments",
                                format!(
                                    "plan `{name}`: reading config fragment {}: {e}",
                                    file.display()
                                ),
                            )
                        })?;
                        fragments.push((f.clone(), text));
                    }
                    if b.targets.is_empty()
                        || !valid_make_word(&b.defconfig)
                        || b.targets.iter().any(|t| !valid_make_word(t))
                    {
                        return Err(self.at(
                            span,
                            "plan.build",
                            format!(
                                "plan `{name}`: defconfig and targets must be plain make targets (letters, digits, `_-.`), and targets not empty"
                            ),
                        ));
                    }
                    let image = b.image.unwrap_or_else(|| {
                        format!(
                            "arch/{}/boot/{}",
                            b.arch,
                            if b.arch == "arm64" {
                                "Image"
                            } else {
                                "bzImage"
                            }
                        )
                    });
                    Some(BuildConfig {
                        arch: b.arch,
                        cross_compile: b.cross_compile,
                        defconfig: b.defconfig,
                        fragments,
                        targets: b.targets,
                        image,
                        jobs: b.jobs,
                        timeout_s: b.timeout_s.unwrap_or(4 * 3600),
                    })
                }
            };
            let board_profiles = selected
                .iter()
                .filter_map(|b| {
                    let family = boards.iter().find(|x| &x.name == b)?.family;
                    Some((
                        b.clone(),
                        profiles.get(&family).cloned().unwrap_or_default(),
                    ))
                })
                .collect();
            plans.push(Plan {
                build,
                verdict,
                name,
                boards: selected,
                params,
                given_params,
                board_profiles,
                timeout_s: raw_plan.timeout_s.unwrap_or(3600),
                replay_buggy_commits: replay.buggy_commits,
                replay_abort_probability: replay.abort_probability,
            });
        }
        Ok(plans)
    }

    fn trees(&self, raw: Vec<RawTree>, plans: &[Plan]) -> Result<Vec<Tree>, ConfigError> {
        let mut trees: Vec<Tree> = Vec::new();
        for raw_tree in raw {
            let name = raw_tree.name.get_ref().clone();
            let span = raw_tree.name.span();
            if trees.iter().any(|t| t.name == name) {
                return Err(self.at(span, "tree.name", format!("duplicate tree `{name}`")));
            }
            if raw_tree.url.trim().is_empty() {
                return Err(self.at(span, "tree.url", format!("tree `{name}` has an empty url")));
            }
            if raw_tree.branches.is_empty() {
                return Err(self.at(
                    span,
                    "tree.branches",
                    format!("tree `{name}` watches no branch"),
                ));
            }
            for p in &raw_tree.plans {
                if !plans.iter().any(|x| &x.name == p) {
                    return Err(self.at(
                        span.clone(),
                        "tree.plans",
                        format!("tree `{name}` names unknown plan `{p}`"),
                    ));
                }
            }
            let secret = match (raw_tree.secret, raw_tree.secret_file) {
                (Some(s), None) => Some(s),
                (None, Some(f)) => {
                    let file = self.base_dir.join(&f);
                    let s = std::fs::read_to_string(&file).map_err(|e| {
                        self.at(
                            span.clone(),
                            "tree.secret_file",
                            format!("cannot read {}: {e}", file.display()),
                        )
                    })?;
                    Some(s.trim().to_owned())
                }
                (None, None) => None,
                (Some(_), Some(_)) => {
                    return Err(self.at(
                        span,
                        "tree.secret",
                        "set `secret` or `secret_file`, not both".into(),
                    ));
                }
            };
            trees.push(Tree {
                name,
                url: raw_tree.url,
                aliases: raw_tree.aliases,
                branches: raw_tree.branches,
                plans: raw_tree.plans,
                secret,
                test_tags: raw_tree.test_tags,
            });
        }
        Ok(trees)
    }

    fn tokens(&self, raw: Vec<RawToken>) -> Result<Vec<ApiToken>, ConfigError> {
        let mut tokens = Vec::new();
        for raw_token in raw {
            let span = raw_token.name.span();
            let name = raw_token.name.into_inner();
            let bytes = hex::decode(raw_token.sha256.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| self.at(span.clone(), "token.sha256", format!(
                    "token `{name}`: sha256 must be 64 hex digits (print it with `armfleet token hash`)"
                )))?;
            if raw_token.scopes.is_empty() {
                return Err(self.at(
                    span,
                    "token.scopes",
                    format!("token `{name}` has no scopes (read, trigger, admin)"),
                ));
            }
            if tokens.iter().any(|t: &ApiToken| t.name == name) {
                return Err(self.at(span, "token.name", format!("duplicate token `{name}`")));
            }
            tokens.push(ApiToken {
                name,
                sha256: bytes,
                scopes: raw_token.scopes,
            });
        }
        Ok(tokens)
    }
}

const DEFAULT_INTERVAL_MS: u64 = 2_000;
const DEFAULT_DEADLINE_MS: u64 = 10_000;

/// The raw public key bytes, used to compare keys regardless of comment.
/// A make target or defconfig name; never an option or a variable.
fn valid_make_word(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

pub fn key_bytes(key: &russh::keys::PublicKey) -> Vec<u8> {
    key.to_bytes().unwrap_or_default()
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// toml's own message already shows line, column and the offending text;
/// this adds the dotted field path when the parser knows it.
fn describe_toml_error(text: &str, err: &toml::de::Error) -> String {
    let line = err.span().map(|s| line_of(text, s.start));
    let msg = err.message().trim().to_owned();
    match line {
        Some(line) => {
            let source = text.lines().nth(line - 1).unwrap_or("").trim();
            format!("line {line}: {msg} (in `{source}`)")
        }
        None => msg,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleet {
    server: Option<RawServer>,
    #[serde(default)]
    board: Vec<RawBoard>,
    #[serde(default)]
    plan: Vec<RawPlan>,
    #[serde(default)]
    tree: Vec<RawTree>,
    #[serde(default)]
    token: Vec<RawToken>,
    #[serde(default)]
    family: Vec<crate::domain::families::RawFamily>,
    report: Option<RawReport>,
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

impl ReportSettings {
    fn from_raw(raw: RawReport, server: &ServerSettings) -> Result<ReportSettings, String> {
        if let Some(r) = &raw.reported_by {
            let ok = r
                .trim()
                .strip_suffix('>')
                .and_then(|r| r.rsplit_once(" <"))
                .is_some_and(|(name, addr)| {
                    !name.trim().is_empty()
                        && addr.split_once('@').is_some_and(|(u, h)| {
                            !u.is_empty() && !h.is_empty() && !addr.contains(char::is_whitespace)
                        })
                });
            if !ok {
                return Err(format!(
                    "reported_by: expected `Name <user@host>` as in a Reported-by: trailer, got `{r}`"
                ));
            }
        }
        if let Some(l) = &raw.link {
            if !(l.starts_with("https://") || l.starts_with("http://"))
                || l.contains(char::is_whitespace)
            {
                return Err(format!(
                    "link: expected the dashboard's http(s) URL (e.g. https://armfleet.example.org), got `{l}`"
                ));
            }
        }
        Ok(ReportSettings {
            reported_by: raw.reported_by.map(|r| r.trim().to_owned()),
            link: raw
                .link
                .or_else(|| server.public_url.clone())
                .map(|l| l.trim_end_matches('/').to_owned()),
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawReport {
    reported_by: Option<String>,
    link: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: Spanned<String>,
    sha256: String,
    #[serde(default)]
    scopes: Vec<Scope>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTree {
    name: Spanned<String>,
    url: String,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    branches: Vec<String>,
    #[serde(default)]
    plans: Vec<String>,
    secret: Option<String>,
    secret_file: Option<String>,
    #[serde(default)]
    test_tags: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    api_token: Option<String>,
    heartbeat_interval_ms: Option<u64>,
    heartbeat_deadline_ms: Option<u64>,
    assign_deadline_s: Option<u64>,
    queue_deadline_s: Option<u64>,
    max_log_bytes_per_job: Option<u64>,
    rate_limit_per_s: Option<f64>,
    rate_limit_burst: Option<f64>,
    power_cycle_after_s: Option<u64>,
    power_cycle_interval_s: Option<u64>,
    power_cycle_timeout_s: Option<u64>,
    boot_deadline_s: Option<u64>,
    public_url: Option<String>,
    artifact_dir: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBoard {
    name: Spanned<String>,
    family: Family,
    arch: Option<String>,
    #[serde(default)]
    labels: Vec<String>,
    key: Option<Spanned<String>>,
    #[serde(default)]
    keys: Vec<Spanned<String>>,
    key_file: Option<Spanned<String>>,
    power_cycle: Option<Spanned<Vec<String>>>,
    max_jobs: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    name: Spanned<String>,
    r#type: String,
    #[serde(default)]
    boards: Vec<String>,
    #[serde(default)]
    families: Vec<Family>,
    #[serde(default)]
    labels: Vec<String>,
    timeout_s: Option<u64>,
    /// Kept as a table first: the keys a plan sets win over its boards'
    /// family profiles, the others come from them.
    params: Option<toml::Table>,
    replay: Option<RawReplay>,
    verdict: Option<VerdictSettings>,
    build: Option<RawBuild>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuild {
    #[serde(default = "default_build_arch")]
    arch: String,
    cross_compile: Option<String>,
    #[serde(default = "default_defconfig")]
    defconfig: String,
    #[serde(default)]
    fragments: Vec<String>,
    #[serde(default = "default_build_targets")]
    targets: Vec<String>,
    image: Option<String>,
    #[serde(default)]
    jobs: u32,
    timeout_s: Option<u64>,
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
struct RawReplay {
    #[serde(default)]
    buggy_commits: Vec<String>,
    #[serde(default)]
    abort_probability: f64,
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
