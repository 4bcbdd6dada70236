//! `armfleet triage [--json] FILE...`
//!
//! JSON mode prints one object per finding per line (nothing for a file
//! without findings) so that scripts and the scoring tool can consume it;
//! the default mode prints a table for people.  An unreadable file is
//! reported on stderr and makes the exit code non-zero, but the other files
//! are still triaged.

use crate::{Finding, Source, triage};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Serialize)]
struct JsonFinding<'a> {
    file: &'a str,
    #[serde(flatten)]
    finding: &'a Finding,
}

/// Guess which log a file is from its name (`*qemu*`, `*dmesg*`/`*host*`,
/// `*serial*`/`*console*`/`*guest*`).
pub(crate) fn source_from_name(path: &Path) -> Source {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if name.contains("qemu") {
        Source::Qemu
    } else if name.contains("dmesg") || name.contains("host") {
        Source::Host
    } else if name.contains("serial") || name.contains("console") || name.contains("guest") {
        Source::Guest
    } else {
        Source::Unknown
    }
}

pub(crate) fn run(json: bool, files: &[PathBuf], out: &mut dyn Write) -> i32 {
    let mut rc = 0;
    if !json {
        let _ = writeln!(
            out,
            "{:<32} {:>13}  {:<12} {:<5} {:<4} TITLE",
            "FILE", "LINES", "CLASS", "FATAL", "CORR"
        );
    }
    for path in files {
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("armfleet triage: cannot read {}: {e}", path.display());
                rc = 2;
                continue;
            }
        };
        let findings = triage(&data, source_from_name(path));
        let name = path.display().to_string();
        if json {
            for f in &findings {
                match serde_json::to_string(&JsonFinding {
                    file: &name,
                    finding: f,
                }) {
                    Ok(s) => {
                        let _ = writeln!(out, "{s}");
                    }
                    Err(e) => eprintln!("armfleet triage: cannot encode finding for {name}: {e}"),
                }
            }
        } else if findings.is_empty() {
            let _ = writeln!(
                out,
                "{name:<32} {:>13}  {:<12} {:<5} {:<4} (no findings)",
                "-", "-", "-", "-"
            );
        } else {
            for f in &findings {
                let lines = format!("{}-{}", f.start_line, f.end_line);
                let _ = writeln!(
                    out,
                    "{name:<32} {lines:>13}  {:<12} {:<5} {:<4} {}",
                    f.class.as_str(),
                    if f.fatal { "yes" } else { "no" },
                    if f.corrupted { "yes" } else { "no" },
                    f.title
                );
                if let Some(e) = &f.esr {
                    let _ = writeln!(
                        out,
                        "{:<32} {:>13}  ESR {:#x}: {}",
                        "", "", e.esr, e.summary
                    );
                }
            }
        }
    }
    rc
}
