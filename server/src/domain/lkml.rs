//! A regression as a kernel bug report (`armfleet report --lkml ID`,
//! `GET /api/v1/regressions/{id}/lkml`, the regression's page): plain text,
//! 72 columns, in the shape kernel developers expect — subject
//! `[REGRESSION] <title> after <sha> ("<subject>")`, what is affected
//! (trees, branches, families, boards with their MIDR, and whether the
//! results are hardware, emulated or simulated), first bad and last good
//! with the bisection's confidence and cost, the failure rates with 95%
//! Clopper–Pearson intervals, the crash trimmed (no timestamps or register
//! dumps, ESR decoded), how to reproduce (the job's script), and the
//! `Reported-by:` / `Link:` trailers from fleet.toml's `[report]`.

use sqlx::{PgPool, Row};

use crate::domain::config::ReportSettings;
use crate::domain::findings::FindingRow;
use crate::domain::mirror::Mirror;

const WIDTH: usize = 72;

#[derive(Debug, thiserror::Error)]
pub enum LkmlError {
    #[error("regression {0} not found")]
    NotFound(i64),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// What the report is made of, all read from the database and the mirror.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub id: i64,
    pub tree: String,
    pub branch: String,
    pub family: String,
    pub family_name: String,
    pub plan: String,
    pub state: String,
    pub bad: String,
    pub good: Option<String>,
    /// (sha, subject, author) of the culprit: the bisection's first bad, or
    /// the regression's bad commit when not bisected.
    pub culprit: (String, String, String),
    pub good_subject: String,
    pub bisected: Option<Bisected>,
    /// (tree, branch) where the crash signature was seen.
    pub seen_on: Vec<(String, String)>,
    /// (board, host kind, MIDR implementer, MIDR part).
    pub boards: Vec<(String, String, Option<String>, Option<String>)>,
    /// (failed, cycles) on the bad and the good kernel, and the p-value.
    pub bad_counts: Option<(i64, i64)>,
    pub good_counts: Option<(i64, i64)>,
    pub p_value: Option<f64>,
    pub title: String,
    pub crash: Option<FindingRow>,
    pub crash_board: String,
    /// A failing job for "how to reproduce", and whether it was simulated.
    pub repro_job: Option<(i64, bool)>,
    pub base_url: String,
}

#[derive(Debug, Clone, Default)]
pub struct Bisected {
    pub id: i64,
    pub confidence: Option<f64>,
    pub steps: i64,
    pub cycles: i64,
    pub board_seconds: f64,
}

async fn subject_of(pool: &PgPool, mirror: &Mirror, sha: &str) -> (String, String) {
    if let Ok(info) = mirror.commit_info(sha).await {
        if !info.subject.is_empty() {
            return (info.subject, info.author);
        }
    }
    let row: Option<(Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT subject, author FROM kernels WHERE commit_sha = $1 AND subject IS NOT NULL LIMIT 1",
    )
    .bind(sha)
    .fetch_optional(pool)
    .await
    .ok()
    .flatten();
    match row {
        Some((s, a)) => (s.unwrap_or_default(), a.unwrap_or_default()),
        None => (String::new(), String::new()),
    }
}

/// Reads everything the report says about regression `id`.
pub async fn load(
    pool: &PgPool,
    data_dir: &std::path::Path,
    id: i64,
    base_url: &str,
) -> Result<Facts, LkmlError> {
    let r = sqlx::query(
        "SELECT r.id, r.tree, r.branch, r.family, r.plan, r.state, r.signature, r.bad_kernel_id,
                b.commit_sha AS bad, g.commit_sha AS good
         FROM regressions r JOIN kernels b ON b.id = r.bad_kernel_id
         LEFT JOIN kernels g ON g.id = r.good_kernel_id WHERE r.id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or(LkmlError::NotFound(id))?;
    let bad_kernel: i64 = r.try_get("bad_kernel_id")?;
    let family: String = r.try_get("family")?;
    let plan: String = r.try_get("plan")?;
    let tree: String = r.try_get("tree")?;
    let bad: String = r.try_get("bad")?;
    let good: Option<String> = r.try_get("good")?;
    let mut signature: Option<String> = r.try_get("signature")?;
    let mirror = Mirror::for_url(data_dir, &tree);

    let bisection = sqlx::query(
        "SELECT b.id, b.first_bad_sha, b.result_confidence, b.board_seconds, b.good_sha,
                (SELECT count(*) FROM bisect_steps s WHERE s.bisection_id = b.id AND s.kind = 'test') AS steps,
                (SELECT COALESCE(sum(cycles_run), 0)::int8 FROM bisect_steps s WHERE s.bisection_id = b.id) AS cycles
         FROM bisections b WHERE b.regression_id = $1 AND b.state = 'found' ORDER BY b.id DESC LIMIT 1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let (culprit_sha, bisected, last_good) = match &bisection {
        Some(b) => {
            let first_bad: Option<String> = b.try_get("first_bad_sha")?;
            // The last good commit is the first bad's parent.
            let parent = match &first_bad {
                Some(fb) => mirror.commit_info(fb).await.ok().and_then(|i| i.parent),
                None => None,
            };
            (
                first_bad.unwrap_or_else(|| bad.clone()),
                Some(Bisected {
                    id: b.try_get("id")?,
                    confidence: b.try_get("result_confidence")?,
                    steps: b.try_get("steps")?,
                    cycles: b.try_get("cycles")?,
                    board_seconds: b.try_get("board_seconds")?,
                }),
                parent.or(good.clone()),
            )
        }
        None => (bad.clone(), None, good.clone()),
    };
    let (culprit_subject, culprit_author) = subject_of(pool, &mirror, &culprit_sha).await;
    let good_subject = match &last_good {
        Some(g) => subject_of(pool, &mirror, g).await.0,
        None => String::new(),
    };

    let verdict = sqlx::query(
        "SELECT cycles_run, failed_cycles, baseline_cycles, baseline_failed, p_value
         FROM verdicts WHERE kernel_id = $1 AND family = $2 AND plan = $3",
    )
    .bind(bad_kernel)
    .bind(&family)
    .bind(&plan)
    .fetch_optional(pool)
    .await?;
    let (bad_counts, good_counts, p_value) = match &verdict {
        Some(v) => {
            let base: i64 = v.try_get("baseline_cycles")?;
            (
                Some((v.try_get("failed_cycles")?, v.try_get("cycles_run")?)),
                (base > 0).then(|| (v.try_get("baseline_failed").unwrap_or(0), base)),
                v.try_get("p_value")?,
            )
        }
        None => (None, None, None),
    };

    // The crash: the bad kernel's first fatal finding of the regression's
    // signature (any fatal one when the regression names none).
    let crash: Option<FindingRow> = sqlx::query_as(
        "SELECT f.id, f.job_id, f.stream, f.title, f.class, f.source, f.corrupted, f.fatal, f.signature,
                f.start_line, f.end_line, f.esr, f.excerpt
         FROM findings f JOIN jobs j ON j.id = f.job_id JOIN boards b ON b.name = j.board
         WHERE j.kernel_id = $1 AND b.family = $2 AND ($3::text IS NULL OR f.signature = $3)
         ORDER BY f.fatal DESC, f.corrupted, j.id, f.stream = 'guest_console' DESC, f.ordinal LIMIT 1",
    )
    .bind(bad_kernel)
    .bind(&family)
    .bind(&signature)
    .fetch_optional(pool)
    .await?;
    if signature.is_none() {
        signature = crash.as_ref().map(|c| c.signature.clone());
    }
    let title = match &signature {
        Some(s) => sqlx::query_scalar("SELECT title FROM signatures WHERE signature = $1")
            .bind(s)
            .fetch_optional(pool)
            .await?
            .unwrap_or_else(|| s.clone()),
        None => format!("{plan} failures"),
    };
    let crash_board: String = match &crash {
        Some(c) => {
            sqlx::query_scalar("SELECT board FROM jobs WHERE id = $1")
                .bind(c.job_id)
                .fetch_one(pool)
                .await?
        }
        None => String::new(),
    };
    let seen_on: Vec<(String, String)> =
        match &signature {
            Some(s) => sqlx::query_as(
                "SELECT DISTINCT k.tree, k.branch FROM findings f JOIN jobs j ON j.id = f.job_id
             JOIN kernels k ON k.id = j.kernel_id WHERE f.signature = $1 ORDER BY 1, 2",
            )
            .bind(s)
            .fetch_all(pool)
            .await?,
            None => vec![],
        };
    let boards = sqlx::query_as(
        "SELECT DISTINCT b.name, COALESCE(j.host_kind, b.host_kind), b.facts->>'cpu_implementer', b.facts->>'cpu_part'
         FROM jobs j JOIN boards b ON b.name = j.board
         WHERE j.kernel_id = $1 AND b.family = $2 AND j.state IN ('passed', 'failed') ORDER BY 1",
    )
    .bind(bad_kernel)
    .bind(&family)
    .fetch_all(pool)
    .await?;
    // The failing job whose script "how to reproduce" names: a recorded
    // one where there is one, else a simulated one (its script is
    // generated from the job's parameters).
    let repro_job: Option<(i64, bool)> = sqlx::query_as(
        "SELECT j.id, j.simulated FROM jobs j JOIN boards b ON b.name = j.board
         WHERE j.kernel_id = $1 AND b.family = $2 AND j.state = 'failed'
         ORDER BY j.simulated, j.id LIMIT 1",
    )
    .bind(bad_kernel)
    .bind(&family)
    .fetch_optional(pool)
    .await?;
    let family_name =
        serde_json::from_value::<crate::domain::config::Family>(serde_json::json!(family))
            .map(|f| f.display_name().to_owned())
            .unwrap_or_else(|_| family.clone());
    Ok(Facts {
        id,
        tree,
        branch: r.try_get("branch")?,
        family,
        family_name,
        plan,
        state: r.try_get("state")?,
        bad,
        good: last_good,
        culprit: (culprit_sha, culprit_subject, culprit_author),
        good_subject,
        bisected,
        seen_on,
        boards,
        bad_counts,
        good_counts,
        p_value,
        title,
        crash,
        crash_board,
        repro_job,
        base_url: base_url.trim_end_matches('/').to_owned(),
    })
}

/// Words of `text` in lines of at most `WIDTH` columns, each starting
/// with `indent`.
fn wrap(out: &mut String, indent: &str, text: &str) {
    wrap_hanging(out, indent, indent, text)
}

/// [`wrap`] with another indent after the first line (a folded mail
/// header continues with whitespace).
fn wrap_hanging(out: &mut String, first: &str, rest: &str, text: &str) {
    let mut indent = first;
    let mut line = String::from(indent);
    for w in text.split_whitespace() {
        if line.len() > indent.len() && line.len() + 1 + w.len() > WIDTH {
            out.push_str(line.trim_end());
            out.push('\n');
            indent = rest;
            line = String::from(indent);
        }
        if line.len() > indent.len() {
            line.push(' ');
        }
        line.push_str(w);
    }
    if line.len() > indent.len() {
        out.push_str(&line);
        out.push('\n');
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

fn rate_line(label: &str, sha: &str, failed: i64, cycles: i64) -> String {
    let (lo, hi) =
        armfleet_stats::clopper_pearson(failed.max(0) as u64, cycles.max(0) as u64, 0.95);
    let rate = if cycles > 0 {
        failed as f64 / cycles as f64
    } else {
        0.0
    };
    format!(
        "  {label:<5} {}: {failed}/{cycles} cycles, {} (95% CI {}-{})",
        short(sha),
        pct(rate),
        pct(lo),
        pct(hi)
    )
}

/// The crash as kernel developers trim it: no printk timestamps or
/// caller ids, no register dump or module list, the ESR decoded after its
/// line; lines longer than the report's width continue indented.
pub fn trim_crash(excerpt: &str, esr: Option<&serde_json::Value>) -> Vec<String> {
    let mut out = Vec::new();
    let mut esr_said = false;
    for raw in excerpt.lines() {
        let mut l = raw.trim_end();
        // `[  123.456789]`, `[  T123]`, `[    C0]` prefixes.
        while let Some(rest) = l.trim_start().strip_prefix('[') {
            match rest.split_once(']') {
                Some((inside, after))
                    if inside.len() <= 24
                        && inside
                            .trim()
                            .chars()
                            .all(|c| c.is_ascii_digit() || ".TC{} ".contains(c)) =>
                {
                    l = after.strip_prefix(' ').unwrap_or(after);
                }
                _ => break,
            }
        }
        let t = l.trim_start();
        let is_register = t.len() > 3
            && t.starts_with('x')
            && t[1..].split(':').next().is_some_and(|n| {
                n.trim().chars().all(|c| c.is_ascii_digit()) && !n.trim().is_empty()
            });
        if is_register || t.starts_with("Modules linked in:") || t.is_empty() {
            continue;
        }
        out.push(l.to_owned());
        if !esr_said && (t.starts_with("ESR = ") || t.contains("ESR_EL2=")) {
            if let Some(s) = esr.and_then(|e| e["summary"].as_str()) {
                out.push(format!("  (ESR decoded: {s})"));
                esr_said = true;
            }
        }
        if out.len() >= 45 {
            out.push("[...]".into());
            break;
        }
    }
    if !esr_said {
        if let (Some(e), Some(s)) = (esr, esr.and_then(|e| e["summary"].as_str())) {
            let v = e["esr"].as_u64().unwrap_or(0);
            out.insert(0, format!("(ESR {v:#x} decoded: {s})"));
        }
    }
    out
}

/// The report.
pub fn render(f: &Facts, settings: &ReportSettings) -> String {
    let mut s = String::new();
    let (sha, subject, author) = &f.culprit;
    let subj = if subject.is_empty() {
        String::new()
    } else {
        format!(" (\"{subject}\")")
    };
    wrap_hanging(
        &mut s,
        "Subject: ",
        " ",
        &format!("[REGRESSION] {} after {}{subj}", f.title, short(sha)),
    );
    s.push('\n');
    let kinds: std::collections::BTreeSet<&str> = f.boards.iter().map(|b| b.1.as_str()).collect();
    if kinds.contains("simulated") || kinds.contains("emulated") {
        let what = if kinds.len() == 1 && kinds.contains("simulated") {
            "NOTE: every result below comes from SIMULATED boards (recorded logs replayed by armfleet), not from a kernel running on hardware. Do not send it as a bug report before reproducing it on a real board."
        } else if kinds.iter().all(|k| *k != "hardware") {
            "NOTE: the results below come from EMULATED arm64 boards (real KVM/arm64 code nested under QEMU TCG) and not from hardware."
        } else {
            "NOTE: some results below come from simulated or emulated boards, not hardware; the board list says which."
        };
        wrap(&mut s, "", what);
        s.push('\n');
    }
    s.push_str("Hi,\n\n");
    wrap(
        &mut s,
        "",
        &format!(
            "armfleet's migrate->cancel stress test of KVM guests ({}) found a regression on {} boards: {}. It starts with commit {}{subj}.",
            f.plan,
            f.family_name,
            f.title,
            short(sha)
        ),
    );
    s.push('\n');

    s.push_str("Affected:\n");
    let mut trees: Vec<(String, String)> = f.seen_on.clone();
    if !trees.iter().any(|(t, b)| *t == f.tree && *b == f.branch) {
        trees.insert(0, (f.tree.clone(), f.branch.clone()));
    }
    // A tree's URL stays on one line (it must stay clickable), its branch
    // on the next.
    for (t, b) in &trees {
        s.push_str(&format!("  tree:   {t}\n  branch: {b}\n"));
    }
    wrap(
        &mut s,
        "  family: ",
        &format!("{} ({})", f.family_name, f.family),
    );
    for (name, kind, imp, part) in &f.boards {
        let midr = match (imp, part) {
            (Some(i), Some(p)) => format!("MIDR implementer {i} part {p}"),
            _ => "MIDR not reported".to_owned(),
        };
        wrap(&mut s, "  board:  ", &format!("{name}, {midr}, {kind}"));
    }
    s.push('\n');

    s.push_str("Bisection:\n");
    wrap(&mut s, "  first bad: ", &format!("{sha}{subj}"));
    match &f.good {
        Some(g) => {
            let gs = if f.good_subject.is_empty() {
                String::new()
            } else {
                format!(" (\"{}\")", f.good_subject)
            };
            wrap(&mut s, "  last good: ", &format!("{g}{gs}"));
        }
        None => s.push_str("  last good: none known\n"),
    }
    match &f.bisected {
        Some(b) => {
            wrap(
                &mut s,
                "  ",
                &format!(
                    "Confidence: {} that no commit was called good while carrying the bug (bisection {}).",
                    b.confidence.map(pct).unwrap_or_else(|| "unknown".into()),
                    b.id
                ),
            );
            wrap(
                &mut s,
                "  ",
                &format!(
                    "Cost: {} tested steps, {} cycles, {:.1} board-minutes.",
                    b.steps,
                    b.cycles,
                    b.board_seconds / 60.0
                ),
            );
        }
        None => wrap(
            &mut s,
            "  ",
            "Not bisected yet: first bad is the tested bad kernel, last good its baseline.",
        ),
    }
    s.push('\n');

    s.push_str("Failure rate per migrate->cancel cycle (Clopper-Pearson):\n");
    if let Some((failed, cycles)) = f.bad_counts {
        s.push_str(&rate_line("bad", &f.bad, failed, cycles));
        s.push('\n');
    }
    if let (Some((failed, cycles)), Some(g)) = (f.good_counts, &f.good) {
        s.push_str(&rate_line("good", g, failed, cycles));
        s.push('\n');
    }
    if let Some(p) = f.p_value {
        s.push_str(&format!("  one-sided Fisher exact test: p = {p:.2e}\n"));
    }
    s.push('\n');

    if let Some(c) = &f.crash {
        wrap(
            &mut s,
            "",
            &format!(
                "The crash ({}, job {} on {}):",
                c.stream.replace('_', " "),
                c.job_id,
                f.crash_board
            ),
        );
        s.push('\n');
        for l in trim_crash(&c.excerpt, c.esr.as_ref()) {
            // A longer line continues, indented, after its last space that
            // fits (mid-word only when there is none).
            let mut rest = format!("  {l}");
            while rest.len() > WIDTH {
                let mut cut = WIDTH;
                while !rest.is_char_boundary(cut) {
                    cut -= 1;
                }
                let indent = rest.len() - rest.trim_start().len();
                if let Some(sp) = rest[..cut].rfind(' ').filter(|&sp| sp > indent + 8) {
                    cut = sp;
                }
                s.push_str(rest[..cut].trim_end());
                s.push('\n');
                rest = format!("      {}", rest[cut..].trim_start());
            }
            s.push_str(&rest);
            s.push('\n');
        }
        s.push('\n');
    }

    s.push_str("How to reproduce:\n");
    let stress = format!(
        "The stress test (plan {}): repeated QEMU live migrations of a busy guest, each cancelled after a random hold while dirty logging splits stage-2 block mappings.",
        f.plan
    );
    match f.repro_job {
        Some((j, simulated)) => {
            let how = if simulated {
                format!(
                    "{stress} Failing job {j} ran on a simulated board (no QEMU ran); a standalone script (bash, QEMU, python3; nothing of armfleet) runs its workload, with QEMU command lines generated from its parameters, its seed and holds, on an arm64 board with KVM, stopping at the first abort:"
                )
            } else {
                format!(
                    "A standalone script (bash, QEMU, python3; nothing of armfleet) replays failing job {j}: its QEMU command lines, seed, holds and bandwidth, cycle by cycle, stopping at the first abort:"
                )
            };
            wrap(&mut s, "  ", &how);
            s.push_str(&format!("    {}/api/v1/jobs/{j}/repro.sh\n", f.base_url));
        }
        None => wrap(&mut s, "  ", &format!("No failing job to script. {stress}")),
    }
    s.push('\n');
    if let Some(r) = &settings.reported_by {
        s.push_str(&format!("Reported-by: {r}\n"));
    }
    let link = settings.link.as_deref().unwrap_or(&f.base_url);
    s.push_str(&format!("Link: {link}/regressions/{}\n", f.id));
    if !author.is_empty() {
        s.push_str(&format!("Cc: {author}\n"));
    }
    s.push_str(&format!("\n#regzbot introduced: {}\n", short(sha)));
    s
}
