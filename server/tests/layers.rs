//! The server's layers and their dependency rule, checked on the source:
//!
//! * `domain/` imports only `domain/` (and external crates): never the
//!   transport, the workers, the wiring or the CLI;
//! * `workers/` never import the transport;
//! * `cli/` talks to a server over HTTP only: it imports nothing of the
//!   server but the domain's plain types.
//!
//! A module path is a use of it wherever it appears (`use` lines, paths in
//! code, doc links), so the check reads every `crate::…` in a file.

use std::path::{Path, PathBuf};

const LAYERS: [&str; 5] = ["domain", "transport", "workers", "wiring", "cli"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The lines of `text` that name a layer in `forbidden` (`crate::<layer>::…`).
fn forbidden_lines(text: &str, forbidden: &[&str]) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        for layer in forbidden {
            let grouped = line.split_once("crate::{").is_some_and(|(_, rest)| {
                rest.split(|c: char| c == ',' || c == '{' || c == '}')
                    .any(|item| {
                        item.trim() == *layer || item.trim().starts_with(&format!("{layer}::"))
                    })
            });
            if line.contains(&format!("crate::{layer}::"))
                || line.contains(&format!("crate::{layer};"))
                || grouped
            {
                found.push((n + 1, format!("{layer}: {}", line.trim())));
            }
        }
    }
    found
}

/// Every place under `src/<layer_dir>` that names a forbidden layer.
fn violations(layer_dir: &str, forbidden: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root.join(layer_dir), &mut files);
    assert!(!files.is_empty(), "no sources under src/{layer_dir}");
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, what) in forbidden_lines(&text, forbidden) {
            found.push(format!(
                "{}:{n}: {what}",
                file.strip_prefix(&root).unwrap().display()
            ));
        }
    }
    found
}

#[test]
fn every_top_level_module_is_a_layer() {
    let lib =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let modules: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';'))
        .collect();
    let mut expected = LAYERS.to_vec();
    expected.sort();
    assert_eq!(
        modules, expected,
        "src/lib.rs holds the layers and nothing else"
    );
}

#[test]
fn the_domain_imports_no_other_layer() {
    let v = violations("domain", &["transport", "workers", "wiring", "cli"]);
    assert!(
        v.is_empty(),
        "the domain reaches out of its layer:\n{}",
        v.join("\n")
    );
}

#[test]
fn workers_do_not_import_the_transport() {
    let v = violations("workers", &["transport", "cli"]);
    assert!(
        v.is_empty(),
        "workers reach into the transport:\n{}",
        v.join("\n")
    );
}

#[test]
fn the_cli_uses_only_the_domain() {
    let v = violations("cli", &["transport", "workers", "wiring"]);
    assert!(
        v.is_empty(),
        "the CLI reaches into the server:\n{}",
        v.join("\n")
    );
}

#[test]
fn the_check_sees_each_way_of_naming_a_layer() {
    let text = "use crate::domain::jobs;\n\
                use crate::wiring::state::AppState;\n\
                let x = crate::transport::http::error::ApiError::NotFound;\n\
                use crate::{domain, wiring};\n\
                use crate::{domain::jobs, transport::ssh};\n";
    let found = forbidden_lines(text, &["wiring", "transport"]);
    let lines: Vec<usize> = found.iter().map(|(n, _)| *n).collect();
    assert_eq!(lines, [2, 3, 4, 5], "{found:?}");
}

/// `table → files` for every statement in `src` that writes a table.
fn writers() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut out: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        // A module split into a folder (`domain/verdicts/*.rs`) is one module.
        let rel = file.strip_prefix(&root).unwrap();
        let name = match rel.components().count() {
            3.. => rel.parent().unwrap().display().to_string(),
            _ => rel.with_extension("").display().to_string(),
        };
        for verb in ["INSERT INTO ", "UPDATE ", "DELETE FROM "] {
            for (i, _) in text.match_indices(verb) {
                let table: String = text[i + verb.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !table.is_empty() {
                    out.entry(table).or_default().insert(name.clone());
                }
            }
        }
    }
    out
}

#[test]
fn every_table_has_one_writer_in_the_domain() {
    let w = writers();
    for table in [
        "jobs",
        "runs",
        "kernels",
        "boots",
        "builds",
        "bisections",
        "regressions",
        "webhook_deliveries",
        "leases",
    ] {
        assert!(
            w.contains_key(table),
            "no writer of {table} found: the scan is broken"
        );
    }
    let bad: Vec<String> = w
        .iter()
        .filter(|(_, files)| files.len() != 1 || !files.iter().all(|f| f.starts_with("domain/")))
        .map(|(t, files)| format!("{t}: {files:?}"))
        .collect();
    assert!(
        bad.is_empty(),
        "tables written from more than one module, or outside the domain:\n{}",
        bad.join("\n")
    );
}

/// The tables with a state machine (and their event logs) are written only
/// by checked queries (`sqlx::query!` and friends), whose SQL and types
/// the build checks against `.sqlx/` (see ARCHITECTURE.md).
#[test]
fn state_machine_tables_are_written_by_checked_queries() {
    const CHECKED: [&str; 10] = [
        "jobs",
        "job_events",
        "boots",
        "builds",
        "regressions",
        "regression_events",
        "verdicts",
        "verdict_history",
        "webhook_deliveries",
        "leases",
    ];
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut unchecked = Vec::new();
    let mut seen = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for verb in ["INSERT INTO ", "UPDATE ", "DELETE FROM "] {
            for (i, _) in text.match_indices(verb) {
                let table: String = text[i + verb.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !CHECKED.contains(&table.as_str()) {
                    continue;
                }
                seen += 1;
                // The statement's own call: the last `sqlx::query…` before it.
                let before = &text[..i];
                let Some(call) = before.rfind("sqlx::query") else {
                    unchecked.push(format!(
                        "{}: {verb}{table} outside any query",
                        file.display()
                    ));
                    continue;
                };
                let name_end = before[call..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                    .map(|n| call + n)
                    .unwrap_or(before.len());
                if !before[name_end..].starts_with('!') {
                    let line = before.matches('\n').count() + 1;
                    unchecked.push(format!("{}:{line}: {verb}{table}", file.display()));
                }
            }
        }
    }
    assert!(seen >= 20, "only {seen} writes found: the scan is broken");
    assert!(
        unchecked.is_empty(),
        "writes of state-machine tables that are not checked queries:\n{}",
        unchecked.join("\n")
    );
}
