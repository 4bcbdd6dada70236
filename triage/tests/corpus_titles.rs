//! Runs `triage` over the hand-written logs in `tests/corpus/` and checks
//! every finding against the `.expected` file next to it.
//!
//! `.expected` format, one directive per line:
//! * `SOURCE: guest|host|qemu` — the source hint passed to `triage` (default unknown);
//! * `FINDING: <class> | <Y/N corrupted> | <title>` — one per expected finding, in order
//!   (no `FINDING:` line means the log must yield no finding);
//! * `ESR_FSC: 0x..`, `FATAL: Y/N`, `SOURCE_OUT: ...` — checked on the first finding.
//!
//! Every log is also run again with arm64 unwinder markers (`(C)`, `(P)`...)
//! after each stack frame, as kernels since 6.13 print them: findings must
//! not change.

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

/// `  func+0x1c/0x30` (possibly after a printk prefix): append one of the
/// unwinder source markers newer arm64 kernels print, in turn.
fn with_unwinder_markers(data: &[u8]) -> Vec<u8> {
    const MARKERS: &[&str] = &[" (C)", " (P)", " (L)", " (T)", " (?)"];
    let mut out = Vec::with_capacity(data.len() + data.len() / 8);
    let mut k = 0;
    for (i, line) in data.split(|&b| b == b'\n').enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        let (body, cr) = match line.strip_suffix(b"\r") {
            Some(b) => (b, true),
            None => (line, false),
        };
        out.extend_from_slice(body);
        let text = String::from_utf8_lossy(body);
        let last = text.trim_end().rsplit(' ').next().unwrap_or("");
        let is_frame = last.split_once("+0x").is_some_and(|(name, off)| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
                && off.split_once("/0x").is_some_and(|(a, b)| {
                    [a, b]
                        .iter()
                        .all(|h| !h.is_empty() && h.bytes().all(|c| c.is_ascii_hexdigit()))
                })
        });
        if is_frame && text.starts_with([' ', '[']) {
            out.extend_from_slice(MARKERS[k % MARKERS.len()].as_bytes());
            k += 1;
        }
        if cr {
            out.push(b'\r');
        }
    }
    out
}

#[test]
fn unwinder_markers_change_nothing() {
    let key = |fs: &[Finding]| {
        fs.iter()
            .map(|f| {
                (
                    f.title.clone(),
                    f.class,
                    f.corrupted,
                    f.start_line,
                    f.end_line,
                )
            })
            .collect::<Vec<_>>()
    };
    let mut marked_logs = 0;
    for log in corpus_logs() {
        let source = read_expected(&log.with_extension("expected")).source;
        let data = fs::read(&log).expect("corpus log");
        let marked = with_unwinder_markers(&data);
        if marked.len() == data.len() {
            continue;
        }
        marked_logs += 1;
        assert_eq!(
            key(&triage(&marked, source)),
            key(&triage(&data, source)),
            "{}",
            log.display()
        );
    }
    assert!(marked_logs >= 20, "only {marked_logs} logs have frames");
}
