//! Exports of per-kernel results for other systems: KernelCI's KCIDB JSON
//! (schema v5.3) and JUnit XML for CI systems.
//!
//! KCIDB tells the truth or says nothing:
//! * a **build** is the real build record when the job named one (`builds`:
//!   architecture, config name and hash, the compiler from the built
//!   `.config`'s `CONFIG_CC_VERSION_TEXT`, log and config URLs, status from
//!   the build); a job without one ran the lab's own kernel on the board, and
//!   its build says exactly that, with the architecture from the board's
//!   facts and nothing made up;
//! * a **test** carries its environment (board, family, MIDR, accelerator,
//!   host kind) and `misc.path` with the stage-2 path counters summed over
//!   its cycles (unknown stays null, never zero);
//! * **simulated** results (replayed logs) never carry PASS/FAIL: they are
//!   `DONE` (ran, says nothing about the kernel), with the replay's outcome
//!   in `misc`; **emulated** ones (nested KVM under TCG) keep their status
//!   and say so in their comment and environment; `hosts` leaves kinds out;
//! * **issues** are crash signatures (and build failures), **incidents**
//!   link them to the tests and builds that showed them.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};

use crate::domain::builds::{ArtifactStore, BuildRow};
use crate::domain::jobs::{self, JobRow, JobState, PathTotals};

const ORIGIN: &str = "armfleet";

/// KCIDB status of a job: only `failed` says the kernel is faulty.
fn kcidb_status(state: &str) -> &'static str {
    match state {
        "passed" => "PASS",
        "failed" => "FAIL",
        "infra_error" => "ERROR",
        "lost" | "timed_out" => "MISS",
        "cancelled" => "SKIP",
        _ => "MISS",
    }
}

/// Which host kinds an export keeps (`?hosts=hardware,emulated`).
#[derive(Debug, Clone)]
pub struct HostFilter(BTreeSet<String>);

impl Default for HostFilter {
    fn default() -> Self {
        HostFilter(
            ["hardware", "emulated", "simulated"]
                .into_iter()
                .map(str::to_owned)
                .collect(),
        )
    }
}

impl HostFilter {
    /// A comma list of `hardware`, `emulated`, `simulated`.
    pub fn parse(s: &str) -> Result<HostFilter, String> {
        let mut set = BTreeSet::new();
        for k in s.split(',').map(str::trim).filter(|k| !k.is_empty()) {
            if armfleet_protocol::HostKind::parse(k).is_none() {
                return Err(format!(
                    "unknown host kind `{k}` (hardware, emulated, simulated)"
                ));
            }
            set.insert(k.to_owned());
        }
        if set.is_empty() {
            return Err("no host kind given (hardware, emulated, simulated)".into());
        }
        Ok(HostFilter(set))
    }
    fn keeps(&self, kind: &str) -> bool {
        self.0.contains(kind)
    }
}

/// Where a job's result came from, as the job recorded it (None: the job
/// never got as far as running, so it recorded nothing).
pub fn host_kind(job: &JobRow) -> Option<&str> {
    match job.host_kind.as_deref() {
        Some(k) => Some(k),
        None if job.simulated => Some("simulated"),
        None => None,
    }
}

/// The kernel's name for an architecture `uname -m` reports.
fn kernel_arch(machine: &str) -> Option<String> {
    let a = match machine {
        "" => return None,
        "aarch64" | "arm64" => "arm64",
        "x86_64" | "amd64" => "x86_64",
        m if m.starts_with("armv") => "arm",
        "riscv64" => "riscv",
        "ppc64le" | "ppc64" => "powerpc",
        m => m,
    };
    let a: String = a
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect::<String>()
        .to_ascii_lowercase();
    (!a.is_empty()).then_some(a)
}

/// What the export needs about a job beyond its row.
struct JobExtra {
    build_id: Option<i64>,
    /// The board's host kind, for a job that recorded none.
    board_host_kind: String,
    subject: Option<String>,
    facts: Value,
    /// fleet.toml's `arch` of the board: a simulated board's facts are the
    /// replaying host's, so its kernel's architecture is the declared one.
    declared_arch: String,
}

async fn job_extras(pool: &PgPool, ids: &[i64]) -> Result<BTreeMap<i64, JobExtra>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT j.id, j.build_id, k.subject, b.facts, b.host_kind, b.arch FROM jobs j
         JOIN kernels k ON k.id = j.kernel_id JOIN boards b ON b.name = j.board
         WHERE j.id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    let mut out = BTreeMap::new();
    for r in rows {
        out.insert(
            r.try_get::<i64, _>("id")?,
            JobExtra {
                build_id: r.try_get("build_id")?,
                board_host_kind: r.try_get("host_kind")?,
                subject: r.try_get("subject")?,
                declared_arch: r.try_get("arch")?,
                facts: r
                    .try_get::<Option<Value>, _>("facts")?
                    .unwrap_or(Value::Null),
            },
        );
    }
    Ok(out)
}

async fn build_records(
    pool: &PgPool,
    ids: &[i64],
) -> Result<BTreeMap<i64, (BuildRow, Value)>, sqlx::Error> {
    let mut out = BTreeMap::new();
    for id in ids {
        if let Some(row) = crate::domain::builds::get(pool, *id).await? {
            let config: Value = sqlx::query_scalar("SELECT config FROM builds WHERE id = $1")
                .bind(id)
                .fetch_one(pool)
                .await?;
            out.insert(*id, (row, config));
        }
    }
    Ok(out)
}

/// `CONFIG_CC_VERSION_TEXT` of the built `.config` (the `config` artifact):
/// the compiler the kernel's build system itself recorded.
fn compiler_of(build: &BuildRow, store: &ArtifactStore) -> Option<String> {
    let sum = build.artifacts.as_array()?.iter().find_map(|a| {
        matches!(a["name"].as_str(), Some("config" | ".config"))
            .then(|| a["sha256"].as_str())
            .flatten()
    })?;
    let text = std::fs::read_to_string(store.path(sum)?).ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix("CONFIG_CC_VERSION_TEXT=")
            .map(|v| v.trim().trim_matches('"').to_owned())
            .filter(|v| !v.is_empty())
    })
}

fn short_hash(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..8])
}

fn abs_url(base: &str, url: &str) -> String {
    if url.starts_with('/') {
        format!("{}{url}", base.trim_end_matches('/'))
    } else {
        url.to_owned()
    }
}

/// The KCIDB build of a job that named an armfleet build.
fn build_object(
    id: &str,
    checkout: &str,
    build: &BuildRow,
    config: &Value,
    board_arch: Option<String>,
    store: &ArtifactStore,
    base: &str,
) -> Value {
    let mut b = json!({
        "id": id,
        "checkout_id": checkout,
        "origin": ORIGIN,
    });
    let mut misc = json!({
        "armfleet_build": build.id,
        "config_hash": build.config_hash,
        "source": build.source,
        "state": build.state,
        "kernel_release": build.kernel_release,
    });
    match build.source.as_str() {
        "make" => {
            if let Some(a) = config["arch"].as_str().and_then(kernel_arch) {
                b["architecture"] = json!(a);
            }
            let mut name = config["defconfig"].as_str().unwrap_or("").to_owned();
            for f in config["fragments"].as_array().into_iter().flatten() {
                if let Some(path) = f[0].as_str() {
                    let file = path.rsplit('/').next().unwrap_or(path);
                    name.push('+');
                    name.push_str(file);
                }
            }
            if !name.is_empty() {
                b["config_name"] = json!(name);
            }
            misc["cross_compile"] = config["cross_compile"].clone();
            misc["targets"] = config["targets"].clone();
            b["comment"] = json!(format!(
                "built by armfleet from the tree's mirror ({})",
                build.builder.as_deref().unwrap_or("server")
            ));
        }
        _ => {
            // Artifacts built elsewhere: their architecture is the board's.
            if let Some(a) = board_arch {
                b["architecture"] = json!(a);
            }
            b["comment"] =
                json!("built outside armfleet; artifacts fetched and checked by armfleet");
        }
    }
    if let Some(cc) = compiler_of(build, store) {
        b["compiler"] = json!(cc);
    }
    let files: Vec<Value> = build
        .artifacts
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            Some(json!({
                "name": a["name"].as_str()?,
                "url": abs_url(base, a["url"].as_str()?),
            }))
        })
        .collect();
    if let Some(cfg) = files.iter().find(|f| f["name"] == "config") {
        b["config_url"] = cfg["url"].clone();
    }
    if !files.is_empty() {
        b["output_files"] = json!(files);
    }
    if build.log_sha256.is_some() {
        b["log_url"] = json!(format!(
            "{}/api/v1/builds/{}/log",
            base.trim_end_matches('/'),
            build.id
        ));
    }
    match (build.state.as_str(), build.failure.as_deref()) {
        ("built", _) => b["status"] = json!("PASS"),
        ("failed", Some("kernel")) => b["status"] = json!("FAIL"),
        ("failed", _) => b["status"] = json!("ERROR"),
        // Queued or building: not final, no status.
        _ => {}
    }
    if let Some(e) = &build.error {
        b["log_excerpt"] = json!(truncate(e, 16 * 1024));
    }
    if let Some(start) = build.started_at {
        b["start_time"] = json!(start.to_rfc3339());
        if let Some(end) = build.finished_at {
            b["duration"] = json!(((end - start).num_milliseconds().max(0) as f64) / 1000.0);
        }
    }
    b["misc"] = misc;
    b
}

/// The path counters as `misc.path`: null with no evidence at all.
pub fn path_misc(p: Option<&PathTotals>) -> Value {
    match p {
        Some(p) if p.cycles_with_path > 0 => {
            let mut m = json!({ "cycles_with_path": p.cycles_with_path, "cycles": p.cycles });
            for (k, v) in p.counters() {
                m[k] = json!(v);
            }
            m
        }
        _ => Value::Null,
    }
}

/// KCIDB v5 data for the kernels matching `commit` (prefix), or the newest
/// ones. Unfinished jobs are left out: KCIDB records are final.
pub async fn kcidb(
    pool: &PgPool,
    store: &ArtifactStore,
    base_url: &str,
    commit: Option<&str>,
    limit: i64,
    hosts: &HostFilter,
) -> Result<Value, sqlx::Error> {
    let all = jobs::finished_for_export(pool, commit, limit).await?;
    let all_ids: Vec<i64> = all.iter().map(|(j, _, _)| j.id).collect();
    let extras = job_extras(pool, &all_ids).await?;
    let kind_of = |job: &JobRow| -> String {
        host_kind(job)
            .map(str::to_owned)
            .or_else(|| extras.get(&job.id).map(|e| e.board_host_kind.clone()))
            .unwrap_or_else(|| "hardware".into())
    };
    let rows: Vec<_> = all
        .into_iter()
        .filter(|(job, _, _)| hosts.keeps(&kind_of(job)))
        .collect();
    let ids: Vec<i64> = rows.iter().map(|(j, _, _)| j.id).collect();
    let build_ids: Vec<i64> = extras
        .values()
        .filter_map(|e| e.build_id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let build_rows = build_records(pool, &build_ids).await?;
    let paths: BTreeMap<i64, PathTotals> = jobs::path_totals(pool, &ids)
        .await?
        .into_iter()
        .map(|p| (p.job_id, p))
        .collect();
    let findings = crate::domain::findings::for_jobs(pool, &ids).await?;
    let signatures: Vec<String> = findings
        .iter()
        .map(|f| f.signature.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let regressions: Vec<(i64, String)> = sqlx::query_as(
        "SELECT id, signature FROM regressions WHERE signature = ANY($1) ORDER BY id",
    )
    .bind(&signatures)
    .fetch_all(pool)
    .await?;

    let mut checkouts = Vec::new();
    let mut builds: BTreeMap<String, Value> = BTreeMap::new();
    let mut tests = Vec::new();
    let mut seen = BTreeSet::new();
    let mut kinds_of_job: BTreeMap<i64, String> = BTreeMap::new();
    let null = Value::Null;
    for (job, kernel_id, family) in &rows {
        let extra = extras.get(&job.id);
        let facts = extra.map(|e| &e.facts).unwrap_or(&null);
        let fact = |k: &str| facts[k].as_str().filter(|v| !v.is_empty());
        let checkout = format!("{ORIGIN}:k{kernel_id}");
        if seen.insert(*kernel_id) {
            let mut c = json!({
                "id": checkout,
                "origin": ORIGIN,
                "tree_name": tree_name(&job.tree),
                "git_repository_branch": job.branch,
                "start_time": job.created_at.to_rfc3339(),
                "valid": true,
                "misc": { "tree": job.tree },
            });
            // The schema takes https:// repositories and full hashes only.
            if job.tree.starts_with("https://") {
                c["git_repository_url"] = json!(job.tree);
            }
            if job.commit_sha.len() == 40 && job.commit_sha.chars().all(|c| c.is_ascii_hexdigit()) {
                c["git_commit_hash"] = json!(job.commit_sha.to_ascii_lowercase());
            } else {
                c["misc"]["commit"] = json!(job.commit_sha);
            }
            if let Some(subject) = extra.and_then(|e| e.subject.as_deref()) {
                c["comment"] = json!(subject);
            }
            checkouts.push(c);
        }
        let board_arch = if job.simulated {
            extra.and_then(|e| kernel_arch(&e.declared_arch))
        } else {
            fact("arch").and_then(kernel_arch)
        };
        let build_id = match extra
            .and_then(|e| e.build_id)
            .and_then(|b| build_rows.get(&b))
        {
            Some((row, config)) => {
                let id = format!("{ORIGIN}:b{}-k{kernel_id}", row.id);
                builds.entry(id.clone()).or_insert_with(|| {
                    build_object(
                        &id,
                        &checkout,
                        row,
                        config,
                        board_arch.clone(),
                        store,
                        base_url,
                    )
                });
                id
            }
            None => {
                // No armfleet build: the lab installed the kernel itself.
                let arch = board_arch.clone().unwrap_or_else(|| "unknown".into());
                let id = format!("{ORIGIN}:k{kernel_id}-installed-{arch}");
                builds.entry(id.clone()).or_insert_with(|| {
                    let mut b = json!({
                        "id": id,
                        "checkout_id": checkout,
                        "origin": ORIGIN,
                        "comment": "the kernel as the lab installed it on the boards: built outside armfleet, which has no record of its configuration, compiler or log",
                        "misc": { "source": "installed" },
                    });
                    if let Some(a) = &board_arch {
                        b["architecture"] = json!(a);
                    }
                    b
                });
                id
            }
        };
        let kind = kind_of(job);
        kinds_of_job.insert(job.id, kind.clone());
        let simulated = kind == "simulated";
        let accel = job.accel.as_deref().unwrap_or("unknown");
        let midr = match (fact("cpu_implementer"), fact("cpu_part")) {
            (Some(i), Some(p)) => format!(", MIDR implementer {i} part {p}"),
            _ => String::new(),
        };
        let env_comment = match kind.as_str() {
            "simulated" => format!(
                "SIMULATED board {} ({family}): replayed logs, no kernel ran; not a test result of this kernel",
                job.board
            ),
            "emulated" => format!(
                "EMULATED arm64 board {} ({family}{midr}): real KVM/arm64 code nested under QEMU TCG, not hardware; accelerator {accel}",
                job.board
            ),
            _ => format!(
                "hardware board {} ({family}{midr}); accelerator {accel}{}",
                job.board,
                if accel == "tcg" {
                    " (TCG: KVM not exercised)"
                } else {
                    ""
                }
            ),
        };
        let path = path_misc(paths.get(&job.id));
        let mut test = json!({
            "id": format!("{ORIGIN}:j{}", job.id),
            "build_id": build_id,
            "origin": ORIGIN,
            "path": format!("kvm.migrate_cancel.{}", kcidb_path_part(&job.plan)),
            "comment": format!("{} on {} ({family}){}", job.plan, job.board, host_note(job)),
            // A replay says nothing about the kernel: DONE, never PASS/FAIL.
            "status": if simulated { "DONE" } else { kcidb_status(&job.state) },
            "log_url": format!("{base_url}/api/v1/jobs/{}/log?stream=guest_console", job.id),
            "environment": {
                "comment": env_comment,
                "misc": {
                    "board": job.board, "family": family, "host_kind": kind,
                    "simulated": simulated, "accelerator": job.accel,
                    "midr_implementer": fact("cpu_implementer"), "midr_part": fact("cpu_part"),
                    "kvm_mode": fact("kvm_mode"), "ran_on": job.run_detail,
                },
            },
            "misc": {
                "cycles_completed": job.cycles_completed,
                "cycles_total": job.cycles_total,
                "failed_cycle": job.failed_cycle,
                "host_kind": kind,
                "simulated": simulated,
                "accelerator": job.accel,
                "armfleet_state": job.state,
                "path": path,
            },
        });
        if path.is_null() {
            test["misc"]["path_note"] = json!(match (kind.as_str(), accel) {
                ("simulated", _) => "replayed cycles carry no stage-2 path evidence",
                (_, "tcg") => "TCG runs no KVM stage-2 code: no path evidence",
                _ => "no path counters recorded (probes not armed on this host)",
            });
        }
        if let Some(start) = job.started_at {
            test["start_time"] = json!(start.to_rfc3339());
            if let Some(end) = job.finished_at {
                test["duration"] = json!(((end - start).num_milliseconds().max(0) as f64) / 1000.0);
            }
        }
        let excerpt: String = job
            .evidence
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        if !excerpt.is_empty() {
            test["log_excerpt"] = json!(truncate(&excerpt, 16 * 1024));
        }
        tests.push(test);
    }

    // Issues: one per crash signature; incidents: signature × test.
    let mut issues: BTreeMap<String, Value> = BTreeMap::new();
    let mut incidents: BTreeMap<String, Value> = BTreeMap::new();
    for f in &findings {
        let issue_id = format!("{ORIGIN}:s{}", short_hash(&f.signature));
        let kind = kinds_of_job.get(&f.job_id).cloned().unwrap_or_default();
        let issue = issues.entry(issue_id.clone()).or_insert_with(|| {
            let mut i = json!({
                "id": issue_id,
                "version": 0,
                "origin": ORIGIN,
                "report_subject": f.title,
                "comment": f.title,
                // A crash report from the kernel under test (guest, host
                // KVM, or QEMU's view of it), not of the lab.
                "culprit": { "code": true, "tool": false, "harness": false },
                "misc": { "signature": f.signature, "class": f.class, "sources": [], "host_kinds": [] },
            });
            if let Some(esr) = f.esr.as_ref().and_then(|e| e["summary"].as_str()) {
                i["misc"]["esr"] = json!(esr);
            }
            if let Some((rid, _)) = regressions.iter().find(|(_, s)| *s == f.signature) {
                i["report_url"] = json!(format!(
                    "{}/regressions/{rid}",
                    base_url.trim_end_matches('/')
                ));
            }
            i
        });
        for (key, v) in [("sources", &f.source), ("host_kinds", &kind)] {
            let list = issue["misc"][key].as_array_mut().unwrap();
            if !list.iter().any(|x| x == v.as_str()) {
                list.push(json!(v));
            }
        }
        let inc_id = format!("{ORIGIN}:i{}-{}", f.job_id, short_hash(&f.signature));
        incidents.entry(inc_id.clone()).or_insert_with(|| {
            json!({
                "id": inc_id,
                "origin": ORIGIN,
                "issue_id": issue_id,
                "issue_version": 0,
                "test_id": format!("{ORIGIN}:j{}", f.job_id),
                "present": true,
                "comment": format!("{} ({} of job {}, lines {}-{}){}", f.title, f.stream, f.job_id,
                    f.start_line, f.end_line, if kind == "simulated" { ", SIMULATED" } else { "" }),
            })
        });
    }
    // An issue seen only on simulated boards is a replayed crash: say so.
    for i in issues.values_mut() {
        let kinds = i["misc"]["host_kinds"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !kinds.is_empty() && kinds.iter().all(|k| k == "simulated") {
            i["comment"] = json!(format!(
                "[simulated] {}",
                i["comment"].as_str().unwrap_or("")
            ));
        }
    }
    // A build that does not compile is an issue of its own, on the build.
    for (id, b) in &builds {
        if b["status"] == "FAIL" {
            let what = b["log_excerpt"].as_str().unwrap_or("the build failed");
            let sig = format!("build failed: {what}");
            let issue_id = format!("{ORIGIN}:build{}", short_hash(&sig));
            issues.entry(issue_id.clone()).or_insert_with(|| {
                json!({
                    "id": issue_id, "version": 0, "origin": ORIGIN,
                    "report_subject": sig, "comment": sig,
                    "culprit": { "code": true, "tool": false, "harness": false },
                    "misc": { "signature": sig, "class": "build" },
                })
            });
            let inc_id = format!("{ORIGIN}:i-{}-{}", kcidb_path_part(id), short_hash(&sig));
            incidents.insert(
                inc_id.clone(),
                json!({
                    "id": inc_id, "origin": ORIGIN, "issue_id": issue_id, "issue_version": 0,
                    "build_id": id, "present": true, "comment": sig,
                }),
            );
        }
    }
    Ok(json!({
        "version": { "major": 5, "minor": 3 },
        "checkouts": checkouts,
        "builds": builds.into_values().collect::<Vec<_>>(),
        "tests": tests,
        "issues": issues.into_values().collect::<Vec<_>>(),
        "incidents": incidents.into_values().collect::<Vec<_>>(),
    }))
}

fn tree_name(url: &str) -> String {
    let last = url.trim_end_matches('/').rsplit('/').next().unwrap_or(url);
    last.trim_end_matches(".git").to_owned()
}

fn kcidb_path_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 cannot carry most control characters at all.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\r' | '\t') => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// JUnit XML for one run: a test case per job, each with its provenance
/// and its stage-2 path evidence (`paths`, from [`jobs::path_totals`]) as
/// properties; a counter the host could not trace is `unknown`, and a job
/// without any path evidence says why.
pub fn junit(run_id: i64, jobs: &[JobRow], paths: &[PathTotals]) -> String {
    let failures = jobs.iter().filter(|j| j.state == "failed").count();
    let errors = jobs
        .iter()
        .filter(|j| JobState::is_lab_failure_str(&j.state))
        .count();
    let skipped = jobs
        .iter()
        .filter(|j| ["cancelled", "queued", "assigned", "running"].contains(&j.state.as_str()))
        .count();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let name = jobs
        .first()
        .map(|j| format!("armfleet run {run_id}: {} {}", j.branch, &j.commit_sha))
        .unwrap_or_else(|| format!("armfleet run {run_id}"));
    out.push_str(&format!(
        "<testsuites><testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\">\n",
        xml_escape(&name),
        jobs.len()
    ));
    for j in jobs {
        let time = match (j.started_at, j.finished_at) {
            (Some(s), Some(e)) => (e - s).num_milliseconds().max(0) as f64 / 1000.0,
            _ => 0.0,
        };
        let sim = match j.host_kind.as_deref() {
            Some("emulated") => " (emulated arm64)",
            _ if j.simulated => " (simulated)",
            _ => "",
        };
        out.push_str(&format!(
            "  <testcase classname=\"armfleet.{}\" name=\"{}{}\" time=\"{time:.3}\">",
            xml_escape(&j.plan),
            xml_escape(&j.board),
            sim
        ));
        out.push_str(&junit_properties(
            j,
            paths.iter().find(|p| p.job_id == j.id),
        ));
        let reason = xml_escape(j.reason.as_deref().unwrap_or(""));
        match j.state.as_str() {
            "passed" => {}
            "failed" => {
                let evidence: String = j
                    .evidence
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str())
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                    .unwrap_or_default();
                out.push_str(&format!(
                    "<failure message=\"{reason}\" type=\"kernel-failure\">cycle {}\n{}</failure>",
                    j.failed_cycle
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "?".into()),
                    xml_escape(&evidence)
                ));
            }
            s if JobState::is_lab_failure_str(s) => {
                out.push_str(&format!(
                    "<error message=\"{reason}\" type=\"{}\"/>",
                    j.state
                ));
            }
            other => out.push_str(&format!("<skipped message=\"{}\"/>", xml_escape(other))),
        }
        out.push_str(&format!(
            "<system-out>{}/{} cycles; job {}</system-out></testcase>\n",
            j.cycles_completed, j.cycles_total, j.id
        ));
    }
    out.push_str("</testsuite></testsuites>\n");
    out
}

fn junit_properties(j: &JobRow, path: Option<&PathTotals>) -> String {
    let kind = host_kind(j).unwrap_or("unknown (the job never ran)");
    let accel = j.accel.as_deref().unwrap_or("unknown");
    let mut props: Vec<(String, String)> = vec![
        ("host_kind".into(), kind.into()),
        ("accelerator".into(), accel.into()),
        ("board".into(), j.board.clone()),
    ];
    match path {
        Some(p) if p.cycles_with_path > 0 => {
            props.push((
                "path.cycles_with_path".into(),
                p.cycles_with_path.to_string(),
            ));
            for (k, v) in p.counters() {
                props.push((
                    format!("path.{k}"),
                    v.map(|n| n.to_string()).unwrap_or_else(|| "unknown".into()),
                ));
            }
        }
        _ => props.push((
            "path".into(),
            match (kind, accel) {
                ("simulated", _) => "none: replayed cycles",
                (_, "tcg") => "none: TCG runs no KVM stage-2 code",
                _ => "none: probes not armed on this host",
            }
            .into(),
        )),
    }
    let mut out = String::from("<properties>");
    for (k, v) in props {
        out.push_str(&format!(
            "<property name=\"{}\" value=\"{}\"/>",
            xml_escape(&k),
            xml_escape(&v)
        ));
    }
    out.push_str("</properties>");
    out
}

/// ", simulated board" / ", emulated arm64 board (nested KVM under TCG)":
/// no export passes either off as hardware.
fn host_note(job: &crate::domain::jobs::JobRow) -> String {
    match job.host_kind.as_deref() {
        Some("emulated") => ", emulated arm64 board (nested KVM under TCG)".into(),
        _ if job.simulated => ", simulated board".into(),
        _ => String::new(),
    }
}
