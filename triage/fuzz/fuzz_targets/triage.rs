//! `cargo +nightly fuzz run triage` — any bytes: no panic, sane output.
#![no_main]

use armfleet_triage::{Source, first_fatal_line, triage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let findings = triage(data, Source::Unknown);
    let lines = data.split(|&b| b == b'\n').count().max(1);
    for f in &findings {
        assert!(f.start_line >= 1 && f.start_line <= f.end_line && f.end_line <= lines);
        assert!(!f.title.is_empty() && f.title.len() <= 120);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        for line in text.lines() {
            let _ = first_fatal_line(line);
        }
    }
});
