//! Exports of per-kernel results for other systems: KernelCI's KCIDB JSON
//! (schema v5) and JUnit XML for CI systems.

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::jobs::{self, JobRow};

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

/// KCIDB v5 data for the kernels matching `commit` (prefix), or the newest
/// ones. Unfinished jobs are left out: KCIDB records are final.
pub async fn kcidb(
    pool: &PgPool,
    base_url: &str,
    commit: Option<&str>,
    limit: i64,
) -> Result<Value, sqlx::Error> {
    let rows = jobs::finished_for_export(pool, commit, limit).await?;
    let mut checkouts = Vec::new();
    let mut builds = Vec::new();
    let mut tests = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (job, kernel_id, family) in &rows {
        if seen.insert(*kernel_id) {
            checkouts.push(json!({
                "id": format!("{ORIGIN}:k{kernel_id}"),
                "origin": ORIGIN,
                "tree_name": tree_name(&job.tree),
                "git_repository_url": job.tree,
                "git_repository_branch": job.branch,
                "git_commit_hash": job.commit_sha,
                "start_time": job.created_at.to_rfc3339(),
                "valid": true,
            }));
            // armfleet tests kernels it is given; the build is the lab's.
            builds.push(json!({
                "id": format!("{ORIGIN}:b{kernel_id}"),
                "checkout_id": format!("{ORIGIN}:k{kernel_id}"),
                "origin": ORIGIN,
                "architecture": "arm64",
                "comment": "kernel as installed on the boards",
            }));
        }
        let mut test = json!({
            "id": format!("{ORIGIN}:j{}", job.id),
            "build_id": format!("{ORIGIN}:b{kernel_id}"),
            "origin": ORIGIN,
            "path": format!("kvm.migrate_cancel.{}", kcidb_path_part(&job.plan)),
            "comment": format!("{} on {} ({family}){}", job.plan, job.board, host_note(&job)),
            "status": kcidb_status(&job.state),
            "log_url": format!("{base_url}/api/v1/jobs/{}/log?stream=guest_console", job.id),
            "environment": {
                "comment": format!("board {} ({family})", job.board),
                "misc": { "board": job.board, "family": family, "simulated": job.simulated,
                          "host_kind": job.host_kind, "accel": job.accel, "ran_on": job.run_detail },
            },
            "misc": {
                "cycles_completed": job.cycles_completed,
                "cycles_total": job.cycles_total,
                "failed_cycle": job.failed_cycle,
                "simulated": job.simulated,
                "host_kind": job.host_kind,
                "accel": job.accel,
                "armfleet_state": job.state,
            },
        });
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
    Ok(json!({
        "version": { "major": 5, "minor": 3 },
        "checkouts": checkouts,
        "builds": builds,
        "tests": tests,
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

/// JUnit XML for one run: a test case per job.
pub fn junit(run_id: i64, jobs: &[JobRow]) -> String {
    let failures = jobs.iter().filter(|j| j.state == "failed").count();
    let errors = jobs
        .iter()
        .filter(|j| ["infra_error", "lost", "timed_out"].contains(&j.state.as_str()))
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
            "infra_error" | "lost" | "timed_out" => {
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

/// ", simulated board" / ", emulated arm64 board (nested KVM under TCG)":
/// no export passes either off as hardware.
fn host_note(job: &crate::jobs::JobRow) -> String {
    match job.host_kind.as_deref() {
        Some("emulated") => ", emulated arm64 board (nested KVM under TCG)".into(),
        _ if job.simulated => ", simulated board".into(),
        _ => String::new(),
    }
}
