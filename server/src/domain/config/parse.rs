//! Checking `fleet.toml`, section by section: from the raw file
//! ([`super::raw`]) to the validated model ([`super::Fleet`]).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::raw::*;
use super::*;

const DEFAULT_INTERVAL_MS: u64 = 2_000;
const DEFAULT_DEADLINE_MS: u64 = 10_000;

/// Turns the raw file into a checked [`Fleet`], section by section; every
/// error names the file, and where it can the line and the field.
pub(super) struct FleetParser<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
    /// Relative paths in the file (keys, secrets, fragments) are relative
    /// to it.
    pub(super) base_dir: &'a Path,
}

impl FleetParser<'_> {
    pub(super) fn invalid(&self, message: String) -> ConfigError {
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

    pub(super) fn server(&self, raw: Option<RawServer>) -> Result<ServerSettings, ConfigError> {
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

    pub(super) fn boards(&self, raw: Vec<RawBoard>) -> Result<Vec<Board>, ConfigError> {
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
    pub(super) fn families(
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

    pub(super) fn plans(
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

    pub(super) fn trees(
        &self,
        raw: Vec<RawTree>,
        plans: &[Plan],
    ) -> Result<Vec<Tree>, ConfigError> {
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

    pub(super) fn tokens(&self, raw: Vec<RawToken>) -> Result<Vec<ApiToken>, ConfigError> {
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

impl ReportSettings {
    pub(super) fn from_raw(
        raw: RawReport,
        server: &ServerSettings,
    ) -> Result<ReportSettings, String> {
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

/// A make target or defconfig name; never an option or a variable.
fn valid_make_word(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
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
pub(super) fn describe_toml_error(text: &str, err: &toml::de::Error) -> String {
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
