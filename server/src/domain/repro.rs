//! A job's reproducer: a standalone bash script that replays a recorded
//! `migrate-cancel` job on a board with QEMU, nothing of armfleet needed
//! (`armfleet repro JOB`, `GET /api/v1/jobs/{id}/repro.sh`, the job page).
//!
//! Everything in it comes from what the job recorded, never from today's
//! plan: the exact QEMU command lines of the source and of a destination
//! (the executor's `vmN: starting …` lines on the job's `agent` stream),
//! the parameters in the job's spec (seed, delays, bandwidth, downtime),
//! and the cycle table (the hold each cycle really had). The cycle loop
//! follows the executor's (`armfleet-migrate-stress` `job.rs`) QMP sequence
//! — migrate, hold, `migrate_cancel`, resume a paused source, wait for the
//! guest heartbeat — and stops at the first fatal line (the same literals
//! the executor stops on, [`armfleet_triage::FATAL_LINE_STARTS`]) in the
//! guest console, QEMU's stderr or the host's dmesg, printing what it saw.
//! Differences from the executor are said in the script: it starts each
//! destination after the previous cycle instead of during its hold (the
//! holds themselves are the recorded ones), and QMP events are logged, not
//! acted on.
//!
//! A job on a simulated board ran no QEMU: its script is generated from the
//! job's parameters with the executor's own command-line builder
//! ([`armfleet_migrate_stress::profile::VmProfile`]), once for a KVM/arm64
//! host and once for TCG, and says so in its first lines: it shows how to
//! run the job's workload on a real board, not what a board recorded.

use std::path::PathBuf;

use armfleet_migrate_stress::profile::{Accel, Backing, GuestArch, Instance, VmProfile};
use armfleet_protocol::{CycleRecord, JobSpec, LogStream, MigrateCancelParams, Task};
use sqlx::PgPool;

use crate::domain::jobs::{self, JobRow};

#[derive(Debug, thiserror::Error)]
pub enum ReproError {
    #[error("job {0} not found")]
    NotFound(i64),
    #[error("job {job}: {what}")]
    NotRecorded { job: i64, what: String },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// What a reproducer is made from, all read from the job's records.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub job: JobRow,
    pub family: String,
    /// The board's facts as it last reported them.
    pub facts: Option<serde_json::Value>,
    pub params: MigrateCancelParams,
    pub cycles: Vec<CycleRecord>,
    pub agent_log: String,
    /// A simulated job's command lines, generated from its parameters
    /// (`None`: the job ran QEMU and `agent_log` has them).
    pub from_plan: Option<PlanCommands>,
    /// Where the job's page is, for the header.
    pub job_url: String,
}

/// Reads what the job recorded.
pub async fn load(pool: &PgPool, job_id: i64, base_url: &str) -> Result<Recorded, ReproError> {
    let job = jobs::get(pool, job_id)
        .await?
        .ok_or(ReproError::NotFound(job_id))?;
    let simulated = job.simulated || job.host_kind.as_deref() == Some("simulated");
    let spec = jobs::spec(pool, job_id)
        .await?
        .ok_or(ReproError::NotFound(job_id))?;
    let spec: JobSpec = serde_json::from_value(spec).map_err(|e| ReproError::NotRecorded {
        job: job_id,
        what: format!("its stored spec does not parse: {e}"),
    })?;
    let Task::MigrateCancel(params) = spec.task;
    let from_plan = if simulated {
        Some(
            PlanCommands::for_params(&params, job_id)
                .map_err(|what| ReproError::NotRecorded { job: job_id, what })?,
        )
    } else {
        None
    };
    let cycles = jobs::cycles(pool, job_id)
        .await?
        .into_iter()
        .filter_map(|v| serde_json::from_value::<CycleRecord>(v).ok())
        .collect();
    let agent_log = crate::domain::logs::read_stream(pool, job_id, LogStream::Agent).await?;
    let (family, facts): (String, Option<serde_json::Value>) =
        sqlx::query_as("SELECT family, facts FROM boards WHERE name = $1")
            .bind(&job.board)
            .fetch_optional(pool)
            .await?
            .unwrap_or_default();
    Ok(Recorded {
        job,
        family,
        facts,
        params,
        cycles,
        agent_log: String::from_utf8_lossy(&agent_log).into_owned(),
        from_plan,
        job_url: format!("{}/jobs/{job_id}", base_url.trim_end_matches('/')),
    })
}

/// One QEMU command line as the executor logged it.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandLine {
    /// `vmN`'s N.
    pub index: u32,
    pub incoming: bool,
    pub argv: Vec<String>,
    /// As logged (shell-quoted).
    pub text: String,
}

/// The command lines of a job that ran no QEMU: what the executor builds
/// from the job's parameters, for a KVM/arm64 board and for TCG.
#[derive(Debug, Clone)]
pub struct PlanCommands {
    pub kvm: [CommandLine; 2],
    pub tcg: [CommandLine; 2],
    /// The guest image directory the script defaults to (under `$HOME`).
    pub guest_subdir: String,
}

/// Where generated command lines keep their sockets (the script's `$WORK`).
const PLAN_DIR: &str = "/var/tmp/armfleet-job";

impl PlanCommands {
    pub fn for_params(p: &MigrateCancelParams, job_id: i64) -> Result<PlanCommands, String> {
        let arch = GuestArch::parse(&p.guest_arch)
            .ok_or_else(|| format!("guest_arch '{}' is not arm64 or x86_64", p.guest_arch))?;
        let guest_subdir = format!(".cache/armfleet/guest/{}", arch.dir());
        let dir = format!("{PLAN_DIR}-{job_id}");
        let line = |profile: &VmProfile, index: u32, incoming: bool| {
            let name = format!("vm{index}");
            let qmp = PathBuf::from(format!("{dir}/q{index}.sock"));
            let con = PathBuf::from(format!("{dir}/c{index}.sock"));
            let argv: Vec<String> = std::iter::once(format!("qemu-system-{}", arch.qemu()))
                .chain(
                    profile
                        .args(&Instance {
                            name: &name,
                            qmp_socket: &qmp,
                            console_socket: &con,
                            incoming,
                        })
                        .into_iter()
                        .map(|a| a.to_string_lossy().into_owned()),
                )
                .collect();
            let text = argv[1..]
                .iter()
                .map(|a| bash_word(&[Part::Lit(a.clone())]))
                .collect::<Vec<_>>()
                .join(" ");
            CommandLine {
                index,
                incoming,
                text: format!("{} {text}", argv[0]),
                argv,
            }
        };
        let profile = |accel: Accel| VmProfile {
            arch,
            accel,
            memory_mib: p.memory_mib,
            vcpus: p.vcpus.max(1),
            // Anonymous memory: QEMU madvises guest RAM for THP, so a board
            // with THP enabled backs it by blocks without any set-up.
            backing: Backing::Anonymous,
            eager_split_size: p.eager_split_size.clone().filter(|_| accel == Accel::Kvm),
            dirty_ring_size: p.dirty_ring_size.filter(|_| accel == Accel::Kvm),
            gic_version: p.gic_version,
            kernel: PathBuf::from("vmlinuz"),
            initrd: PathBuf::from("initrd.gz"),
            dirty_percent: p.dirty_percent.min(95),
            dirty_threads: p.dirty_threads,
            seed: p.seed,
            verify: p.verify,
            heartbeat_ms: 100,
            quiet: false,
        };
        let (kvm, tcg) = (profile(Accel::Kvm), profile(Accel::Tcg));
        Ok(PlanCommands {
            kvm: [line(&kvm, 1, false), line(&kvm, 2, true)],
            tcg: [line(&tcg, 1, false), line(&tcg, 2, true)],
            guest_subdir,
        })
    }
}

/// The `vmN: starting source|destination BINARY ARGS…` lines of an agent
/// log, in order.
pub fn command_lines(agent_log: &str) -> Vec<CommandLine> {
    let mut out = Vec::new();
    for line in agent_log.lines() {
        // `[+1.234s] vm1: starting source /usr/bin/qemu-system-aarch64 …`
        let text = line
            .strip_prefix("[+")
            .and_then(|r| r.split_once("] "))
            .map(|(_, t)| t)
            .unwrap_or(line);
        let Some((name, rest)) = text.split_once(": starting ") else {
            continue;
        };
        let Some(index) = name.strip_prefix("vm").and_then(|n| n.parse().ok()) else {
            continue;
        };
        let (incoming, cmd) = if let Some(c) = rest.strip_prefix("destination ") {
            (true, c)
        } else if let Some(c) = rest.strip_prefix("source ") {
            (false, c)
        } else {
            continue;
        };
        if let Some(argv) = shell_split(cmd) {
            if argv.len() > 1 {
                out.push(CommandLine {
                    index,
                    incoming,
                    argv,
                    text: cmd.to_owned(),
                });
            }
        }
    }
    out
}

/// Splits what `shell_quote` (migrate-stress) produced: bare words and
/// single-quoted words with `'\''` for a quote. None: not that shape.
fn shell_split(s: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' if in_word => {
                words.push(std::mem::take(&mut cur));
                in_word = false;
            }
            ' ' => {}
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => cur.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.push(chars.next()?);
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Some(words)
}

/// A piece of a script word: literal text or a shell variable.
enum Part {
    Lit(String),
    Var(&'static str),
}

/// A bash word for `parts`, double-quoted when it needs quoting.
fn bash_word(parts: &[Part]) -> String {
    let plain = parts.iter().all(|p| match p {
        Part::Lit(s) => {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c))
        }
        Part::Var(_) => false,
    });
    if plain {
        return parts
            .iter()
            .map(|p| match p {
                Part::Lit(s) => s.as_str(),
                Part::Var(_) => unreachable!(),
            })
            .collect();
    }
    let mut out = String::from("\"");
    for p in parts {
        match p {
            Part::Lit(s) => {
                for c in s.chars() {
                    if matches!(c, '"' | '\\' | '$' | '`') {
                        out.push('\\');
                    }
                    out.push(c);
                }
            }
            Part::Var(v) => {
                out.push_str("${");
                out.push_str(v);
                out.push('}');
            }
        }
    }
    out.push('"');
    out
}

/// A single-quoted bash string of `s` (for comments' neighbours and data).
fn sq(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The argv of `cmd` (without the binary) as bash words, with the job's
/// directory, the VM index and the guest image made variables:
/// `$WORK`, `$i`, `$GUEST_KERNEL`, `$GUEST_INITRD`.
fn template(cmd: &CommandLine, job_dir: &str) -> Vec<String> {
    let n = cmd.index.to_string();
    let mut out = Vec::new();
    let mut prev = "";
    for arg in &cmd.argv[1..] {
        let word = if prev == "-kernel" {
            vec![Part::Var("GUEST_KERNEL")]
        } else if prev == "-initrd" {
            vec![Part::Var("GUEST_INITRD")]
        } else if *arg == format!("vm{n}") {
            vec![Part::Lit("vm".into()), Part::Var("i")]
        } else {
            let mut parts = Vec::new();
            let mut rest = arg.as_str();
            while let Some(at) = rest.find(job_dir) {
                parts.push(Part::Lit(rest[..at].to_owned()));
                parts.push(Part::Var("WORK"));
                rest = &rest[at + job_dir.len()..];
                // `$WORK/q1.sock` → `$WORK/q$i.sock` (and c, for the console).
                for kind in ["/q", "/c"] {
                    let own = format!("{kind}{n}.sock");
                    if let Some(tail) = rest.strip_prefix(own.as_str()) {
                        parts.push(Part::Lit(kind.to_owned()));
                        parts.push(Part::Var("i"));
                        parts.push(Part::Lit(".sock".into()));
                        rest = tail;
                    }
                }
            }
            parts.push(Part::Lit(rest.to_owned()));
            parts.retain(|p| !matches!(p, Part::Lit(s) if s.is_empty()));
            parts
        };
        out.push(bash_word(&word));
        prev = arg;
    }
    out
}

/// The job's scratch directory, from the source's `-qmp unix:DIR/qN.sock,…`.
fn job_dir(cmd: &CommandLine) -> Option<String> {
    let pos = cmd.argv.iter().position(|a| a == "-qmp")?;
    let v = cmd.argv.get(pos + 1)?.strip_prefix("unix:")?;
    let path = v.split(',').next()?;
    let (dir, _) = path.rsplit_once('/')?;
    Some(dir.to_owned())
}

fn arg_after<'a>(cmd: &'a CommandLine, flag: &str) -> Option<&'a str> {
    let pos = cmd.argv.iter().position(|a| a == flag)?;
    cmd.argv.get(pos + 1).map(String::as_str)
}

/// The script. Errors when the job's records lack what it needs.
pub fn render(rec: &Recorded) -> Result<String, ReproError> {
    let job = &rec.job;
    let p = &rec.params;
    let not_recorded = |what: &str| ReproError::NotRecorded {
        job: job.id,
        what: what.to_owned(),
    };
    let lines = match &rec.from_plan {
        Some(plan) => plan.kvm.to_vec(),
        None => command_lines(&rec.agent_log),
    };
    let from_plan = rec.from_plan.as_ref();
    let source = lines.iter().find(|c| !c.incoming).ok_or_else(|| {
        not_recorded(
            "no QEMU command line in its agent log (the job ended before its source QEMU started, or an older agent ran it)",
        )
    })?;
    let dest = lines.iter().find(|c| c.incoming);
    let dir = job_dir(source)
        .ok_or_else(|| not_recorded("the source's command line has no -qmp unix: socket"))?;
    let qemu = &source.argv[0];
    let kernel = arg_after(source, "-kernel").unwrap_or("");
    let initrd = arg_after(source, "-initrd").unwrap_or("");
    // A destination is the source's command line plus `-incoming defer`:
    // when none started (the job died while booting), say so and derive it.
    let dest_args = match dest {
        Some(d) => template(d, &dir),
        None => {
            let mut a = template(source, &dir);
            a.push("-incoming".into());
            a.push("defer".into());
            a
        }
    };
    let src_args = template(source, &dir);
    // A generated script also carries the TCG command lines, for a host
    // without KVM/arm64 (`ACCEL=tcg`).
    let tcg_args = from_plan.map(|plan| {
        let tcg_dir = job_dir(&plan.tcg[0]).unwrap_or_default();
        (
            template(&plan.tcg[0], &tcg_dir),
            template(&plan.tcg[1], &tcg_dir),
        )
    });
    let schedule = p.delay_schedule();
    let kvm = source
        .argv
        .windows(2)
        .any(|w| w[0] == "-accel" && w[1].starts_with("kvm"));
    let hugepages_mib = source
        .argv
        .iter()
        .any(|a| a.contains("hugetlb=on"))
        .then_some(p.memory_mib);

    let mut s = String::new();
    let mut line = |t: &str| {
        s.push_str(t);
        s.push('\n');
    };
    line("#!/usr/bin/env bash");
    line(&format!(
        "# Reproducer for armfleet job {} ({}): migrate -> cancel stress of a QEMU guest.",
        job.id, rec.job_url
    ));
    line("#");
    line("# Needs: bash, the QEMU below (Debian: qemu-system-arm), python3 (the QMP");
    line("# client and console reader, standard library only; Debian: python3-minimal),");
    line("# grep, and the guest image (see GUEST below). Nothing of armfleet.");
    line(&format!(
        "# Run it on a board like the job's{} as a user that may use it.",
        if kvm { ", with /dev/kvm," } else { "" }
    ));
    if from_plan.is_some() {
        line("#");
        line("# SIMULATED JOB: it ran on a simulated board (replayed logs), no QEMU ran and");
        line("# nothing below was recorded by a board. The QEMU command lines are the ones");
        line("# armfleet's executor builds from the job's parameters (anonymous memory,");
        line("# THP-backed where the host enables it): on an arm64 host with /dev/kvm they");
        line("# run the job's workload under KVM; elsewhere (ACCEL=tcg) under TCG, which");
        line("# checks the mechanics but cannot show a stage-2 bug. The simulated result");
        line("# below is the replay's, not a kernel's.");
    }
    line("#");
    line("# What the job recorded:");
    line(&format!(
        "#   kernel   {} {} {}",
        job.tree, job.branch, job.commit_sha
    ));
    let facts = rec.facts.as_ref();
    let fact = |k: &str| {
        facts
            .and_then(|f| f[k].as_str())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let midr = match (fact("cpu_implementer"), fact("cpu_part")) {
        (Some(i), Some(p)) => format!(", MIDR implementer {i} part {p}"),
        _ => String::new(),
    };
    line(&format!(
        "#   board    {} ({}{midr})",
        job.board, rec.family
    ));
    if let Some(r) = fact("kernel_release") {
        line(&format!(
            "#            host kernel {r} (as the board last reported it)"
        ));
    }
    line(&format!(
        "#   host     {}, accelerator {}{}",
        job.host_kind.as_deref().unwrap_or("hardware"),
        job.accel.as_deref().unwrap_or("unknown"),
        job.run_detail
            .as_deref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default()
    ));
    if job.host_kind.as_deref() == Some("emulated") {
        line("#            EMULATED: the virtual arm64 board (real KVM/arm64 nested under TCG),");
        line("#            not hardware; run this inside such a board, or on a real one.");
    }
    line(&format!(
        "#   params   {} cycles, {} MiB, {} vCPU, hold {}..{} ms (seed {}), bandwidth {} MiB/s,",
        p.cycles,
        p.memory_mib,
        p.vcpus,
        p.cancel_delay_ms_min,
        p.cancel_delay_ms_max,
        p.seed,
        p.bandwidth_mib_s
    ));
    line(&format!(
        "#            downtime limit {} ms, dirty {}%, complete every {}{}",
        p.downtime_limit_ms,
        p.dirty_percent,
        p.complete_every,
        p.inject_guest_panic_after
            .map(|k| format!(", fault injection: guest panic after {k} cycles"))
            .unwrap_or_default()
    ));
    let cancelled = rec
        .cycles
        .iter()
        .filter(|c| c.final_state == "cancelled")
        .count();
    line(&format!(
        "#   result   {}: {} of {} cycles completed, {} cancelled{}",
        job.state,
        job.cycles_completed,
        job.cycles_total,
        cancelled,
        job.failed_cycle
            .map(|c| format!(", failed in cycle {c}"))
            .unwrap_or_default()
    ));
    if let Some(r) = &job.reason {
        for (i, chunk) in wrap(r, 66).iter().enumerate() {
            line(&format!(
                "#   {} {chunk}",
                if i == 0 { "reason  " } else { "        " }
            ));
        }
    }
    let evidence: Vec<&str> = job
        .evidence
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    if !evidence.is_empty() {
        line("#   what the job saw:");
        for e in evidence.iter().take(12) {
            line(&format!(
                "#     {}",
                e.chars().take(100).collect::<String>()
            ));
        }
    }
    line("#");
    if from_plan.is_some() {
        line("# The QEMU command lines for a KVM/arm64 board, from the job's parameters");
        line(&format!("# (sockets under {dir}; here it is $WORK):"));
    } else {
        line("# The QEMU command lines as the job ran them (the job's directory was");
        line(&format!("# {dir}; here it is $WORK):"));
    }
    line(&format!("#   source:      {}", source.text));
    match dest {
        Some(d) => line(&format!("#   destination: {}", d.text)),
        None => line("#   destination: none started (the source's, with -incoming defer)"),
    }
    line("#");
    line("# Differences from the armfleet executor: each destination starts after the");
    line("# previous cycle (the executor pre-starts it during the hold; the holds are");
    line("# the same), QMP events are logged (qmp.log) but not acted on, and the guest");
    line("# console is read by a small python3 helper.");
    line("#");
    line("# Exit status: 1 = the abort was reproduced (what was seen is printed),");
    line("# 0 = every cycle ran without one, 2 = set-up problem (nothing tested).");
    line("set -uo pipefail");
    line("");
    line(&format!("QEMU=\"${{QEMU:-{}}}\"", dq(qemu)));
    line("# GUEST: the armfleet stress guest (Debian's arm64 kernel, busybox, the dirtying");
    line("# workload). Build it from armfleet's sources with `agent/guest/build.sh arm64`");
    line("# (it lands in ~/.cache/armfleet/guest/arm64/), or copy the files from the board.");
    let guest_default = |recorded: &str, name: &str| match from_plan {
        // `~` as bash expands it without $HOME (a bare environment).
        Some(plan) => format!("${{HOME:-$(echo ~)}}/{}/{name}", plan.guest_subdir),
        None => dq(recorded),
    };
    line(&format!(
        "GUEST_KERNEL=\"${{GUEST_KERNEL:-{}}}\"",
        guest_default(kernel, "vmlinuz")
    ));
    line(&format!(
        "GUEST_INITRD=\"${{GUEST_INITRD:-{}}}\"",
        guest_default(initrd, "initrd.gz")
    ));
    if from_plan.is_some() {
        line("# ACCEL: kvm on an arm64 host with a usable /dev/kvm, else tcg.");
        line("ACCEL=\"${ACCEL:-auto}\"");
        line("if [ \"$ACCEL\" = auto ]; then");
        line(
            "  if [ \"$(uname -m)\" = aarch64 ] && [ -r /dev/kvm ] && [ -w /dev/kvm ]; then ACCEL=kvm; else ACCEL=tcg; fi",
        );
        line("fi");
    }
    line(&format!("SEED={}", p.seed));
    line(&format!("BANDWIDTH_MIB_S={}", p.bandwidth_mib_s));
    line(&format!("DOWNTIME_LIMIT_MS={}", p.downtime_limit_ms));
    line(&format!("DIRTY_PERCENT={}", p.dirty_percent));
    line(&format!(
        "DWELL_AFTER_CANCEL_MS={}",
        p.dwell_after_cancel_ms
    ));
    line(&format!(
        "BOOT_TIMEOUT_S=\"${{BOOT_TIMEOUT_S:-{}}}\"",
        if from_plan.is_some() {
            120
        } else if kvm {
            60
        } else {
            90
        }
    ));
    line("PROGRESS_TIMEOUT_S=\"${PROGRESS_TIMEOUT_S:-15}\"");
    line("");
    let (tcg_src, tcg_dest) = match &tcg_args {
        Some((s, d)) => (Some(s), Some(d)),
        None => (None, None),
    };
    args_function(
        &mut line,
        "source_args() { # the source QEMU's arguments for VM number $i",
        &src_args,
        tcg_src,
    );
    args_function(
        &mut line,
        "destination_args() { # a destination's, for VM number $i",
        &dest_args,
        tcg_dest,
    );
    line("");
    line("# The lines that make the executor stop (armfleet-triage's fatal starts).");
    line("FATAL_PATTERNS=(");
    for f in armfleet_triage::FATAL_LINE_STARTS {
        line(&format!("  {}", sq(f)));
    }
    line(")");
    line("");
    s.push_str(SCRIPT_BODY);
    let mut s = s;
    let mut line = |t: &str| {
        s.push_str(t);
        s.push('\n');
    };
    if let Some(mib) = hugepages_mib {
        line(&format!("need_hugepages {mib}"));
    }
    if from_plan.is_some() {
        line("if [ \"$ACCEL\" = kvm ]; then need_kvm; else");
        line(
            "  say \"WARNING: no KVM/arm64 here (ACCEL=$ACCEL): the guests run under TCG, which\"",
        );
        line("  say \"  checks the mechanics but cannot show a stage-2 bug\"");
        line("fi");
    } else if kvm {
        line("need_kvm");
    }
    line("boot_source");
    line("");
    line("# The cycles: number, action, hold in ms (the seeded schedule; a recorded");
    line("# hold where the job recorded one), and what the job saw in that cycle.");
    for n in 1..=p.cycles {
        let planned = schedule.get(n as usize - 1).copied().unwrap_or(0);
        let rec_c = rec.cycles.iter().find(|c| c.cycle == n);
        let pingpong = p.complete_every > 0 && n % p.complete_every == 0;
        let delay = rec_c
            .filter(|c| c.delay_ms > 0 || pingpong)
            .map(|c| c.delay_ms)
            .unwrap_or(planned);
        let inject = p.inject_guest_panic_after == Some(n - 1);
        let what = match rec_c {
            Some(c) if !c.final_state.is_empty() => format!(
                "{}, {} MiB sent{}",
                c.final_state,
                c.bytes_transferred >> 20,
                if c.guest_alive { "" } else { ", guest dead" }
            ),
            Some(_) => "interrupted".to_owned(),
            None if (n as i32) > job.cycles_completed => "not reached".to_owned(),
            None => "no record".to_owned(),
        };
        let failed_here = job.failed_cycle == Some(n as i32);
        line(&format!(
            "run_cycle {n} {} {delay}{}   # job: {what}{}",
            if pingpong { "pingpong" } else { "cancel" },
            if inject { " inject-panic" } else { "" },
            if failed_here {
                " <- the job's abort"
            } else {
                ""
            }
        ));
    }
    line("finish");
    Ok(s)
}

/// A bash function setting `ARGS` to `args`; with `tcg`, to those when
/// `$ACCEL` is not `kvm`.
fn args_function(
    line: &mut impl FnMut(&str),
    header: &str,
    args: &[String],
    tcg: Option<&Vec<String>>,
) {
    line(header);
    match tcg {
        None => line(&format!("  ARGS=( {} )", args.join(" "))),
        Some(tcg) => {
            line("  if [ \"$ACCEL\" = kvm ]; then");
            line(&format!("    ARGS=( {} )", args.join(" ")));
            line("  else");
            line(&format!("    ARGS=( {} )", tcg.join(" ")));
            line("  fi");
        }
    }
    line("}");
}

/// `s` escaped for a double-quoted bash string.
fn dq(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if matches!(c, '"' | '\\' | '$' | '`') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for w in text.split_whitespace() {
        if !cur.is_empty() && cur.len() + 1 + w.len() > width {
            out.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(w);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The fixed part: the python3 helper, VM start-up, the cycle and the
/// abort check. Variables it expects: QEMU, GUEST_*, BANDWIDTH_MIB_S,
/// DOWNTIME_LIMIT_MS, DIRTY_PERCENT, *_TIMEOUT_S, FATAL_PATTERNS, and the
/// functions source_args / destination_args.
const SCRIPT_BODY: &str = r#"WORK="$(mktemp -d "${TMPDIR:-/tmp}/armfleet-repro.XXXXXX")" || exit 2
HELPER="$WORK/qmp.py"
cat >"$HELPER" <<'PY'
# QMP client and console pump for the reproducer (python3 standard library).
import json, os, select, socket, sys, time

LOG = os.environ.get("REPRO_QMP_LOG")

def log(vm, arrow, text):
    if LOG:
        with open(LOG, "a") as f:
            f.write("%.3f %s %s %s\n" % (time.time(), vm, arrow, text))

def connect(path, timeout):
    # Waits for the socket to appear and listen (a QEMU starting on a busy
    # host binds it before it listens); after the deadline, gives up.
    deadline = time.time() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            # No read waits forever: a QEMU that stops answering is a set-up
            # problem the script reports, not a hang.
            s.settimeout(timeout)
            return s
        except (FileNotFoundError, ConnectionRefusedError) as e:
            s.close()
            if time.time() > deadline:
                raise SystemExit("cannot connect to %s after %d s: %s" % (path, timeout, e))
            time.sleep(0.02)
        except OSError as e:
            raise SystemExit("cannot connect to %s: %s" % (path, e))

class Qmp:
    def __init__(self, path):
        self.vm = os.path.basename(path)
        self.s = connect(path, 30)
        self.r = self.s.makefile("rb")
        self.read()
        self.call("qmp_capabilities")
    def read(self):
        try:
            line = self.r.readline()
        except socket.timeout:
            raise SystemExit("QMP %s: no answer within the timeout" % self.vm)
        if not line:
            raise SystemExit("QMP %s: connection closed" % self.vm)
        msg = json.loads(line)
        log(self.vm, "<-", json.dumps(msg))
        return msg
    def call(self, cmd, args=None):
        msg = {"execute": cmd}
        if args is not None:
            msg["arguments"] = args
        log(self.vm, "->", json.dumps(msg))
        self.s.sendall((json.dumps(msg) + "\n").encode())
        while True:
            r = self.read()
            if "return" in r:
                return r["return"]
            if "error" in r:
                sys.stderr.write("QMP %s %s: %s\n" % (self.vm, cmd, r["error"].get("desc")))
                raise SystemExit(4)

def main():
    what = sys.argv[1]
    if what == "qmp":
        args = json.loads(sys.argv[4]) if len(sys.argv) > 4 else None
        print(json.dumps(Qmp(sys.argv[2]).call(sys.argv[3], args)))
    elif what == "poll":
        # poll SOCK EVERY_MS TIMEOUT_S UNTIL: query-migrate until its status
        # is one of UNTIL (comma list) or, with "not:", none of them.
        q = Qmp(sys.argv[2])
        every, timeout, until = float(sys.argv[3]) / 1000, float(sys.argv[4]), sys.argv[5]
        neg = until.startswith("not:")
        want = until[4:].split(",") if neg else until.split(",")
        deadline = time.time() + timeout
        while True:
            st = q.call("query-migrate").get("status", "none")
            if (st not in want) if neg else (st in want):
                print(st)
                return
            if time.time() > deadline:
                print(st)
                raise SystemExit(3)
            time.sleep(every)
    elif what == "console":
        # console SOCK LOG FIFO: guest console to LOG, FIFO to the guest.
        s = connect(sys.argv[2], 60)
        fifo = os.open(sys.argv[4], os.O_RDWR | os.O_NONBLOCK)
        with open(sys.argv[3], "ab", buffering=0) as out:
            while True:
                r, _, _ = select.select([s, fifo], [], [])
                if s in r:
                    data = s.recv(65536)
                    if not data:
                        return
                    out.write(data)
                if fifo in r:
                    s.sendall(os.read(fifo, 4096))

main()
PY
export REPRO_QMP_LOG="$WORK/qmp.log"
MIB=$((1024 * 1024))
declare -a PIDS=() CONS=()
SRC=0 NEXT=0 CYCLE=0 CANCELLED=0 COMPLETED=0 FAILED_MIGRATIONS=0
DMESG_FROM=""

say() { echo "armfleet-repro: $*"; }
cleanup() {
  for p in "${PIDS[@]}" "${CONS[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
}
trap cleanup EXIT
trap 'say "interrupted"; exit 2' INT TERM
setup_failed() { say "SET-UP PROBLEM: $*"; say "logs kept in $WORK"; exit 2; }

need_hugepages() { # MiB of guest RAM: source and destination hold it at once
  local free need=$1 # two guests of $1 MiB in 2 MiB pages
  free=$(awk '/HugePages_Free/ {print $2}' /proc/meminfo)
  [ "${free:-0}" -ge "$need" ] || setup_failed "the guests use 2 MiB hugepages: $need free needed, ${free:-0} free (echo $((need + 64)) > /proc/sys/vm/nr_hugepages)"
}
need_kvm() { [ -r /dev/kvm ] && [ -w /dev/kvm ] || setup_failed "the job ran under KVM: /dev/kvm is missing or not usable by $(id -un)"; }

[ -x "$QEMU" ] || command -v "$QEMU" >/dev/null || setup_failed "no QEMU at $QEMU (set QEMU=/path/to/qemu-system-aarch64)"
command -v python3 >/dev/null || setup_failed "python3 is needed for QMP (Debian: apt-get install python3-minimal)"
for f in "$GUEST_KERNEL" "$GUEST_INITRD"; do
  [ -r "$f" ] || setup_failed "no guest image $f (build it with armfleet's agent/guest/build.sh arm64, or set GUEST_KERNEL/GUEST_INITRD)"
done
if dmesg >/dev/null 2>&1; then DMESG_FROM=$(dmesg | wc -l); fi

qmp() { python3 "$HELPER" qmp "$WORK/q$1.sock" "${@:2}"; }
poll() { python3 "$HELPER" poll "$WORK/q$1.sock" "${@:2}"; }
status_of() { sed -n 's/.*"status": "\([a-z-]*\)".*/\1/p'; }
hb() { grep -c 'ARMFLEET-HB' "$WORK/console-vm$1.log" 2>/dev/null || true; }
alive() { kill -0 "${PIDS[$1]}" 2>/dev/null; }
sleep_ms() { sleep "$(printf '%d.%03d' $(( $1 / 1000 )) $(( $1 % 1000 )))"; }

# The first fatal line in the guest consoles, QEMU's stderr or the host's
# dmesg since the start; prints it with the lines after it and exits 1.
check_abort() {
  local f hit
  for f in "$WORK"/console-vm*.log "$WORK"/stderr-vm*.log; do
    [ -s "$f" ] || continue
    hit=$(grep -n -F "${FATAL_PATTERNS[@]/#/-e}" "$f" | head -n 1)
    [ -n "$hit" ] && abort_seen "$f" "${hit%%:*}"
  done
  if [ -n "$DMESG_FROM" ]; then
    dmesg | tail -n +"$((DMESG_FROM + 1))" >"$WORK/host-dmesg.log"
    hit=$(grep -n -F "${FATAL_PATTERNS[@]/#/-e}" "$WORK/host-dmesg.log" | head -n 1)
    [ -n "$hit" ] && abort_seen "$WORK/host-dmesg.log" "${hit%%:*}"
  fi
  if [ "$SRC" -gt 0 ] && ! alive "$SRC"; then
    sleep 1.5
    check_abort_lines_only
    say "ABORT in cycle $CYCLE: the source QEMU (vm$SRC) exited; its console ends:"
    tail -n 20 "$WORK/console-vm$SRC.log" | sed 's/^/    /'
    report_abort
  fi
}
check_abort_lines_only() { local s=$SRC; SRC=0; check_abort; SRC=$s; }
abort_seen() { # file line
  sleep 1.5 # the rest of the report reaches the log
  say "ABORT in cycle $CYCLE: $(sed -n "$2p" "$1" | tr -d '\r')"
  say "seen in $(basename "$1"):"
  sed -n "$2,$(($2 + 40))p" "$1" | tr -d '\r' | sed 's/^/    /'
  report_abort
}
report_abort() {
  say "SUMMARY cycles_run=$CYCLE cancelled=$CANCELLED completed=$COMPLETED abort=yes"
  say "logs kept in $WORK"
  exit 1
}

start_vm() { # kind (source|destination) -> sets VM
  local i=$((NEXT + 1))
  NEXT=$i
  if [ "$1" = source ]; then source_args; else destination_args; fi
  : >"$WORK/console-vm$i.log"
  mkfifo "$WORK/c$i.in"
  "$QEMU" "${ARGS[@]}" 2>"$WORK/stderr-vm$i.log" &
  PIDS[$i]=$!
  python3 "$HELPER" console "$WORK/c$i.sock" "$WORK/console-vm$i.log" "$WORK/c$i.in" &
  CONS[$i]=$!
  qmp "$i" migrate-set-capabilities '{"capabilities": [{"capability": "events", "state": true}]}' >/dev/null \
    || setup_failed "vm$i ($1) did not come up: $(tail -n 3 "$WORK/stderr-vm$i.log")"
  set_cycle_params "$i"
  VM=$i
}
set_cycle_params() {
  local p="{\"downtime-limit\": $DOWNTIME_LIMIT_MS"
  [ "$BANDWIDTH_MIB_S" -gt 0 ] && p="$p, \"max-bandwidth\": $((BANDWIDTH_MIB_S * MIB))"
  qmp "$1" migrate-set-parameters "$p}" >/dev/null || setup_failed "migrate-set-parameters on vm$1"
}
retire() { kill "${PIDS[$1]}" 2>/dev/null; }

boot_source() {
  local t0=$SECONDS
  start_vm source
  SRC=$VM
  say "vm$SRC: source started; waiting for the guest (ARMFLEET-GUEST-READY)"
  until grep -q ARMFLEET-GUEST-READY "$WORK/console-vm$SRC.log"; do
    check_abort
    [ $((SECONDS - t0)) -lt "$BOOT_TIMEOUT_S" ] || setup_failed "the guest did not boot in $BOOT_TIMEOUT_S s"
    sleep 0.1
  done
  if [ "$DIRTY_PERCENT" -gt 0 ]; then
    until grep -q ARMFLEET-DIRTY-READY "$WORK/console-vm$SRC.log"; do
      check_abort
      [ $((SECONDS - t0)) -lt $((BOOT_TIMEOUT_S + 120)) ] || setup_failed "the workload did not fill its memory"
      sleep 0.1
    done
  fi
  until [ "$(hb "$SRC")" -gt 0 ]; do check_abort; sleep 0.1; done
  say "guest ready after $((SECONDS - t0)) s"
}

in_progress() { case "$1" in active|setup|pre-switchover|device|postcopy-active|wait-unplug) return 0;; esac; return 1; }

# The guest must make progress after each cycle: its heartbeat must advance.
wait_progress() {
  local seen t0=$SECONDS st
  seen=$(hb "$SRC")
  sleep 1
  if [ "$(hb "$SRC")" -le "$seen" ]; then
    st=$(qmp "$SRC" query-status | status_of)
    [ "$st" = running ] || { say "cycle $CYCLE: source is '$st'; sending cont"; qmp "$SRC" cont >/dev/null; }
  fi
  while [ "$(hb "$SRC")" -le "$seen" ]; do
    check_abort
    if [ $((SECONDS - t0)) -ge "$PROGRESS_TIMEOUT_S" ]; then
      CYCLE_ABORT="the guest made no progress for $PROGRESS_TIMEOUT_S s (no new ARMFLEET-HB)"
      say "ABORT in cycle $CYCLE: $CYCLE_ABORT; its console ends:"
      tail -n 20 "$WORK/console-vm$SRC.log" | sed 's/^/    /'
      report_abort
    fi
    sleep 0.05
  done
}

ensure_running() {
  local st
  st=$(qmp "$SRC" query-status | status_of)
  if [ "$st" != running ]; then
    say "cycle $CYCLE: source vm$SRC is '$st' after the migration; sending cont"
    qmp "$SRC" cont >/dev/null
  fi
}

run_cycle() { # n action delay_ms [inject-panic]
  CYCLE=$1
  local action=$2 delay=$3 inject=${4:-} dst st uri
  start_vm destination
  dst=$VM
  uri="unix:$WORK/m$dst-0.sock"
  qmp "$dst" migrate-incoming "{\"uri\": \"$uri\"}" >/dev/null || setup_failed "migrate-incoming on vm$dst"
  if [ "$action" = pingpong ]; then
    qmp "$SRC" migrate-set-parameters '{"max-bandwidth": 1099511627776, "downtime-limit": 2000}' >/dev/null
  fi
  # The executor injects a ping-pong cycle's panic before the migration and
  # a cancel cycle's once the migration is under way.
  if [ -n "$inject" ] && [ "$action" = pingpong ]; then inject_panic; fi
  qmp "$SRC" migrate "{\"uri\": \"$uri\"}" >/dev/null || { check_abort; setup_failed "migrate failed"; }
  st=$(poll "$SRC" 5 20 not:setup,none)
  if [ -n "$inject" ] && in_progress "$st"; then inject_panic; fi
  if [ "$action" = pingpong ]; then
    st=$(poll "$SRC" 20 10 completed,failed,cancelled) || {
      qmp "$SRC" stop >/dev/null
      st=$(poll "$SRC" 20 30 completed,failed,cancelled)
    }
  else
    if in_progress "$st"; then
      sleep_ms "$delay"
      st=$(qmp "$SRC" query-migrate | status_of)
    fi
    if in_progress "$st"; then
      qmp "$SRC" migrate_cancel >/dev/null
      st=$(poll "$SRC" 2 15 cancelled,failed,completed) \
        || { check_abort; setup_failed "migration still '$st' 15 s after migrate_cancel"; }
    fi
  fi
  case "$st" in
    cancelled) CANCELLED=$((CANCELLED + 1)); retire "$dst" ;;
    completed)
      COMPLETED=$((COMPLETED + 1))
      qmp "$SRC" quit >/dev/null 2>&1; retire "$SRC"
      SRC=$dst
      [ "$(qmp "$SRC" query-status | status_of)" = running ] || qmp "$SRC" cont >/dev/null
      ;;
    *) FAILED_MIGRATIONS=$((FAILED_MIGRATIONS + 1)); retire "$dst"
       [ "$action" = pingpong ] && set_cycle_params "$SRC" ;;
  esac
  check_abort
  ensure_running
  wait_progress
  # The job's dwell: the guest writes to what dirty logging left mapped by
  # pages, where KVM re-installs stage-2 blocks.
  if [ "$action" = cancel ] && [ "$DWELL_AFTER_CANCEL_MS" -gt 0 ]; then
    sleep_ms "$DWELL_AFTER_CANCEL_MS"
  fi
  check_abort
  say "cycle $CYCLE: $action, hold $delay ms: $st (source vm$SRC)"
}

inject_panic() {
  say "cycle $CYCLE: fault injection as the job had it: ARMFLEET-PANIC to the guest"
  echo ARMFLEET-PANIC >"$WORK/c$SRC.in"
  local t0=$SECONDS
  while [ $((SECONDS - t0)) -lt 60 ]; do check_abort; sleep 0.1; done
  setup_failed "the guest did not panic within 60 s of ARMFLEET-PANIC"
}

finish() {
  say "SUMMARY cycles_run=$CYCLE cancelled=$CANCELLED completed=$COMPLETED abort=no"
  say "no abort in $CYCLE cycles (the job's own result is in the header)"
  rm -rf "$WORK"
  exit 0
}

"#;

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "[+0.001s] migrate-cancel job: 3 cycles\n\
[+0.010s] scratch dir /run/armfleet/j7 on this machine\n\
[+0.020s] vm1: starting source /usr/bin/qemu-system-aarch64 -machine virt -cpu cortex-a57 -accel tcg -m 256M -smp 1 -name vm1 -nodefaults -qmp unix:/run/armfleet/j7/q1.sock,server=on,wait=off -chardev socket,id=con0,path=/run/armfleet/j7/c1.sock,server=on,wait=on -serial chardev:con0 -kernel /g/vmlinuz -initrd /g/initrd.gz -append 'console=ttyAMA0 panic=-1 armfleet.dirty=50 armfleet.hb_ms=100'\n\
[+3.000s] vm2: starting destination /usr/bin/qemu-system-aarch64 -machine virt -name vm2 -qmp unix:/run/armfleet/j7/q2.sock,server=on,wait=off -kernel /g/vmlinuz -append 'it'\\''s' -incoming defer\n";

    #[test]
    fn command_lines_are_read_back_exactly() {
        let l = command_lines(LOG);
        assert_eq!(l.len(), 2);
        assert_eq!((l[0].index, l[0].incoming), (1, false));
        assert_eq!(l[0].argv[0], "/usr/bin/qemu-system-aarch64");
        assert_eq!(
            l[0].argv.last().unwrap(),
            "console=ttyAMA0 panic=-1 armfleet.dirty=50 armfleet.hb_ms=100"
        );
        assert_eq!((l[1].index, l[1].incoming), (2, true));
        assert!(l[1].argv.contains(&"it's".to_owned()), "{:?}", l[1].argv);
        assert_eq!(job_dir(&l[0]).as_deref(), Some("/run/armfleet/j7"));
    }

    #[test]
    fn templates_make_the_directory_index_and_guest_variables() {
        let l = command_lines(LOG);
        let t = template(&l[0], "/run/armfleet/j7").join(" ");
        assert!(t.contains("-name \"vm${i}\""), "{t}");
        assert!(
            t.contains("-qmp \"unix:${WORK}/q${i}.sock,server=on,wait=off\""),
            "{t}"
        );
        assert!(
            t.contains("\"socket,id=con0,path=${WORK}/c${i}.sock,server=on,wait=on\""),
            "{t}"
        );
        assert!(
            t.contains("-kernel \"${GUEST_KERNEL}\" -initrd \"${GUEST_INITRD}\""),
            "{t}"
        );
        assert!(
            t.contains("-append \"console=ttyAMA0 panic=-1 armfleet.dirty=50 armfleet.hb_ms=100\""),
            "{t}"
        );
        assert!(!t.contains("/run/armfleet"), "{t}");
    }
}
