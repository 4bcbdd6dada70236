//! Runs `triage` over the hand-written logs in `tests/corpus/` and checks
//! every finding against the `.expected` file next to it.
//!
//! `.expected` format, one directive per line:
//! * `SOURCE: guest|host|qemu` — the source hint passed to `triage` (default unknown);
//! * `FINDING: <class> | <Y/N corrupted> | <title>` — one per expected finding, in order
//!   (no `FINDING:` line means the log must yield no finding);
//! * `ESR_FSC: 0x..`, `FATAL: Y/N`, `SOURCE_OUT: ...` — checked on the first finding.

use armfleet_triage::{Finding, Source, triage};
use std::fs;
use std::path::{Path, PathBuf};

struct Expected {
    source: Source,
    findings: Vec<(String, bool, String)>,
    esr_fsc: Option<u8>,
    fatal: Option<bool>,
    source_out: Option<String>,
}

fn parse_source(s: &str) -> Source {
    match s {
        "guest" => Source::Guest,
        "host" => Source::Host,
        "qemu" => Source::Qemu,
        _ => Source::Unknown,
    }
}

fn read_expected(path: &Path) -> Expected {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut exp = Expected {
        source: Source::Unknown,
        findings: Vec::new(),
        esr_fsc: None,
        fatal: None,
        source_out: None,
    };
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "SOURCE" => exp.source = parse_source(value),
            "FINDING" => {
                let mut parts = value.splitn(3, '|').map(str::trim);
                let class = parts.next().unwrap_or_default().to_string();
                let corrupted = parts.next() == Some("Y");
                let title = parts.next().unwrap_or_default().to_string();
                exp.findings.push((class, corrupted, title));
            }
            "ESR_FSC" => exp.esr_fsc = u8::from_str_radix(value.trim_start_matches("0x"), 16).ok(),
            "FATAL" => exp.fatal = Some(value == "Y"),
            "SOURCE_OUT" => exp.source_out = Some(value.to_string()),
            _ => panic!("{}: unknown directive {key}", path.display()),
        }
    }
    exp
}

fn corpus_logs() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut logs: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("tests/corpus exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs
}

fn check(log: &Path) -> Result<(), String> {
    let exp = read_expected(&log.with_extension("expected"));
    let data = fs::read(log).map_err(|e| e.to_string())?;
    let got: Vec<Finding> = triage(&data, exp.source);
    let line_count = data.split(|&b| b == b'\n').count();
    let summary = |fs: &[Finding]| {
        fs.iter()
            .map(|f| format!("{} | {} | {}", f.class.as_str(), f.corrupted, f.title))
            .collect::<Vec<_>>()
    };
    if got.len() != exp.findings.len() {
        return Err(format!("want {:?}, got {:?}", exp.findings, summary(&got)));
    }
    for (f, (class, corrupted, title)) in got.iter().zip(&exp.findings) {
        if f.title != *title || f.class.as_str() != class || f.corrupted != *corrupted {
            return Err(format!(
                "want {class} | {corrupted} | {title}, got {:?}",
                summary(std::slice::from_ref(f))
            ));
        }
        if f.start_line == 0 || f.start_line > f.end_line || f.end_line > line_count {
            return Err(format!(
                "bad line range {}-{} for {line_count} lines",
                f.start_line, f.end_line
            ));
        }
        if f.signature.is_empty() {
            return Err("empty signature".into());
        }
    }
    if let Some(first) = got.first() {
        if let Some(fsc) = exp.esr_fsc {
            let have = first.esr.as_ref().and_then(|e| e.fsc);
            if have != Some(fsc) {
                return Err(format!("want ESR FSC {fsc:#x}, got {have:?}"));
            }
        }
        if let Some(fatal) = exp.fatal
            && first.fatal != fatal
        {
            return Err(format!("want fatal={fatal}, got {}", first.fatal));
        }
        if let Some(src) = &exp.source_out
            && first.source.as_str() != src
        {
            return Err(format!("want source {src}, got {}", first.source.as_str()));
        }
    }
    Ok(())
}

#[test]
fn corpus_titles_match() {
    let logs = corpus_logs();
    assert!(logs.len() >= 30, "corpus too small: {}", logs.len());
    let failures: Vec<String> = logs
        .iter()
        .filter_map(|log| {
            check(log)
                .err()
                .map(|e| format!("{}: {e}", log.file_name().unwrap().to_string_lossy()))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} corpus mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every title family the brief names is exercised by at least one log.
#[test]
fn corpus_covers_title_families() {
    let titles: Vec<String> = corpus_logs()
        .iter()
        .flat_map(|l| {
            read_expected(&l.with_extension("expected"))
                .findings
                .into_iter()
                .map(|f| f.2)
        })
        .collect();
    let families = [
        "WARNING in ",
        "BUG: unable to handle kernel paging request in ",
        "BUG: unable to handle kernel NULL pointer dereference in ",
        "Internal error in ",
        "Unhandled fault in ",
        "kernel BUG in ",
        "BUG: soft lockup in ",
        "INFO: rcu detected stall in ",
        "INFO: task hung in ",
        "KASAN: ",
        "general protection fault in ",
        "kernel panic: ",
        "possible deadlock in ",
        "KMSAN: uninit-value in ",
        "UBSAN: ",
        "BUG: sleeping function called from invalid context in ",
        "BUG: spinlock ",
        "divide error in ",
        "INFO: trying to register non-static key in ",
        "unregister_netdevice: waiting for DEV to become free",
        "memory leak in ",
        "TLB conflict abort in ",
        "KVM: unsupported FSC 0x30 (TLB conflict abort)",
        "KVM: run failed",
        "SError Interrupt in ",
    ];
    for fam in families {
        assert!(
            titles.iter().any(|t| t.starts_with(fam)),
            "no corpus log for {fam:?}"
        );
    }
}
