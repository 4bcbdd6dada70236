//! `/boards/{name}`: one board's facts, jobs and failure history.

use askama::Template;
use axum::extract::{Path, State};
use axum::response::Html;
use serde_json::Value;

use super::util::{
    PageError, Pager, Params, ago, bytes, family_name, host_label, not_found, offset, render, short,
};
use crate::domain::{boards, jobs};
use crate::wiring::state::AppState;

const JOBS_PER_PAGE: i64 = 50;

pub struct JobLine {
    pub id: i64,
    pub board: String,
    pub kernel_id: i64,
    pub commit_short: String,
    pub branch: String,
    pub plan: String,
    pub state: String,
    pub simulated: bool,
    /// "emulated arm64 (nested KVM under TCG)" or empty.
    pub host: String,
    pub cycles: String,
    pub when: String,
    pub note: String,
}

impl JobLine {
    pub fn from_brief(j: jobs::JobBrief) -> JobLine {
        let cycles = match j.failed_cycle {
            Some(c) => format!(
                "{} of {}, failed at {c}",
                j.cycles_completed, j.cycles_total
            ),
            None => format!("{} of {}", j.cycles_completed, j.cycles_total),
        };
        JobLine {
            id: j.id,
            board: j.board,
            kernel_id: j.kernel_id,
            commit_short: short(&j.commit_sha),
            branch: j.branch,
            plan: j.plan,
            state: j.state,
            simulated: j.simulated,
            host: host_label(j.host_kind.as_deref()),
            cycles,
            when: ago(Some(j.finished_at.unwrap_or(j.created_at))),
            note: j.finding.or(j.reason).unwrap_or_default(),
        }
    }
}

#[derive(Template)]
#[template(path = "board.html")]
struct BoardPage {
    name: String,
    family: String,
    state: String,
    simulated: bool,
    /// "emulated arm64 (nested KVM under TCG)" or empty.
    host: String,
    labels: String,
    facts: Vec<(String, String)>,
    /// Where the board contradicts its family's profile.
    warnings: Vec<String>,
    qemu: Vec<(String, String, String)>,
    jobs: Vec<JobLine>,
    pager: Pager,
    failures: Vec<JobLine>,
}

fn implementer(code: &str) -> String {
    let name = match code.to_ascii_lowercase().as_str() {
        "0x41" => "Arm",
        "0x42" => "Broadcom",
        "0x43" => "Cavium",
        "0x48" => "HiSilicon",
        "0x4e" => "NVIDIA",
        "0x50" => "Applied Micro",
        "0x51" => "Qualcomm",
        "0x61" => "Apple",
        "0xc0" => "Ampere",
        _ => return code.to_owned(),
    };
    format!("{code} ({name})")
}

fn facts_list(f: &Value, executor: Option<&str>) -> Vec<(String, String)> {
    let s = |k: &str| f.get(k).and_then(Value::as_str).map(str::to_owned);
    let mut out = Vec::new();
    let mut add =
        |k: &str, v: Option<String>| out.push((k.to_owned(), v.unwrap_or_else(|| "–".into())));
    add("Kernel", s("kernel_release"));
    add("Kernel version", s("kernel_version"));
    add("Architecture", s("arch"));
    add(
        "CPU implementer",
        s("cpu_implementer").map(|c| implementer(&c)),
    );
    add("CPU part", s("cpu_part"));
    add(
        "Cores",
        f.get("cores")
            .and_then(Value::as_u64)
            .map(|c| c.to_string()),
    );
    add(
        "Memory",
        f.get("mem_total_kib")
            .and_then(Value::as_u64)
            .map(|k| bytes(k as i64 * 1024)),
    );
    let kvm = f.get("kvm");
    let flag = |k: &str| {
        kvm.and_then(|v| v.get(k))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    };
    let kvm_text = if kvm.is_none() {
        None
    } else {
        let mut t = match (flag("present"), flag("accessible"), flag("hardware")) {
            (false, _, _) => "absent".to_owned(),
            (true, false, _) => "present, not accessible".to_owned(),
            (true, true, true) => "hardware KVM".to_owned(),
            (true, true, false) => "present, not hardware-backed".to_owned(),
        };
        if let Some(n) = kvm.and_then(|v| v.get("note")).and_then(Value::as_str) {
            t.push_str(&format!(" ({n})"));
        }
        Some(t)
    };
    add("KVM", kvm_text);
    let hp = f.get("hugepages");
    let hpn = |k: &str| {
        hp.and_then(|v| v.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    add(
        "Hugepages",
        hp.map(|_| {
            format!(
                "{} of {} free ({} pages)",
                hpn("free"),
                hpn("total"),
                bytes(hpn("size_kib") as i64 * 1024)
            )
        }),
    );
    let mem = f.get("memory");
    let page = mem
        .and_then(|m| m.get("page_size_kib"))
        .and_then(Value::as_u64)
        .filter(|p| *p > 0);
    add(
        "Stage-2 blocks",
        page.map(|p| {
            let thp = mem
                .and_then(|m| m.get("thp"))
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .unwrap_or("not available");
            let pools: Vec<String> = mem
                .and_then(|m| m.get("hugetlb_pools"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| {
                    let n = |k: &str| p.get(k).and_then(Value::as_u64).unwrap_or(0);
                    format!(
                        "{} {} of {} free",
                        bytes(n("size_kib") as i64 * 1024),
                        n("free"),
                        n("total")
                    )
                })
                .collect();
            format!(
                "{p}K pages ({} blocks); THP {thp}; hugetlb: {}",
                armfleet_protocol::block_size_kib(p)
                    .map(|k| bytes(k as i64 * 1024))
                    .unwrap_or_else(|| "unknown".into()),
                if pools.is_empty() {
                    "none".into()
                } else {
                    pools.join(", ")
                }
            )
        }),
    );
    add("Executor", executor.map(str::to_owned));
    out
}

pub async fn board_page(
    State(state): State<AppState>,
    Path(name): Path<String>,
    params: Params,
) -> Result<Html<String>, PageError> {
    params.allow(&["page"])?;
    let page = params.page("page")?;
    let pool = &state.pool;
    let b = boards::get(pool, &name)
        .await?
        .ok_or_else(|| not_found(format!("board `{name}`")))?;
    let mut facts = Vec::new();
    let mut qemu = Vec::new();
    match &b.facts {
        Some(f) => {
            facts = facts_list(f, b.executor.as_deref());
            for q in f
                .get("qemu")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let s = |k: &str| q.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                qemu.push((s("arch"), s("version"), s("path")));
            }
        }
        None => facts.push((
            "Facts".into(),
            "not reported yet (the agent has never connected)".into(),
        )),
    }
    facts.insert(0, ("Last heartbeat".into(), ago(b.last_heartbeat)));
    facts.insert(1, ("Connected".into(), ago(b.connected_at)));
    if b.state == "offline" {
        if let Some(r) = &b.offline_reason {
            facts.insert(2, ("Offline because".into(), r.clone()));
        }
    }
    let mut rows =
        jobs::briefs_for_board(pool, &name, JOBS_PER_PAGE + 1, offset(page, JOBS_PER_PAGE)).await?;
    let pager = Pager::new(&mut rows, page, JOBS_PER_PAGE, "page", &[]);
    let failures = jobs::failures_for_board(pool, &name, 20).await?;
    let warnings = boards::profile_warnings(&state.fleet.current(), &b.name, b.facts.as_ref());
    render(&BoardPage {
        warnings,
        family: family_name(&b.family),
        state: b.state,
        simulated: b.simulated,
        host: host_label(Some(&b.host_kind)),
        labels: b.labels.join(", "),
        facts,
        qemu,
        jobs: rows.into_iter().map(JobLine::from_brief).collect(),
        pager,
        failures: failures.into_iter().map(JobLine::from_brief).collect(),
        name: b.name,
    })
}
