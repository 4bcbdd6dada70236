//! Behaviour of the public API beyond titles: signatures, streaming checks,
//! ESR decoding, the CLI contract.

use armfleet_triage::{FindingClass, Source, decode_esr, first_fatal_line, run_cli, triage};
use std::path::{Path, PathBuf};

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(corpus(name)).expect("corpus file")
}

/// The same bug on another board/kernel: other CPU, PID, timestamps,
/// addresses, source line and function offsets.  Same signature.
#[test]
fn signature_survives_board_and_kernel_differences() {
    let a = read("arm64_kvm_warning.log");
    let b = a
        .replace("CPU: 3 PID: 2311", "CPU: 57 PID: 80211")
        .replace("pgtable.c:1060", "pgtable.c:1131")
        .replace("+0x2b8/0x2c4", "+0x2f0/0x300")
        .replace("[  512.", "[ 9912.")
        .replace("ffff80008a6f3870", "ffff800099990000");
    let fa = triage(a.as_bytes(), Source::Host);
    let fb = triage(b.as_bytes(), Source::Host);
    assert_eq!(fa[0].signature, fb[0].signature);
    assert_eq!(fa[0].title, fb[0].title);
    // And a genuinely different bug does not collide.
    let c = triage(read("kasan_uaf.log").as_bytes(), Source::Host);
    assert_ne!(fa[0].signature, c[0].signature);
}

#[test]
fn signature_drops_volatile_tokens() {
    let f = triage(read("kernel_panic_vfs.log").as_bytes(), Source::Guest);
    assert!(
        !f[0].signature.chars().any(|c| c.is_ascii_digit()),
        "{}",
        f[0].signature
    );
}

#[test]
fn streaming_check_flags_fatal_report_starts() {
    for (name, want_fatal) in [
        ("arm64_paging_request.log", true),
        ("guest_tlb_conflict.log", true),
        ("host_unsupported_fsc.log", true),
        ("qemu_run_failed.log", true),
        ("serror.log", true),
        ("kernel_bug.log", true),
        ("x86_gpf.log", true),
        ("no_report.log", false),
        ("arm64_kvm_warning.log", false),
        ("kasan_uaf.log", false),
    ] {
        let text = read(name);
        let first = text.lines().position(first_fatal_line);
        assert_eq!(
            first.is_some(),
            want_fatal,
            "{name}: first fatal line {first:?}"
        );
        if let Some(idx) = first {
            // The streamed check and the full triage agree on where it starts.
            let findings = triage(text.as_bytes(), Source::Unknown);
            assert!(
                findings
                    .iter()
                    .any(|f| f.fatal && f.start_line <= idx + 1 && idx < f.end_line),
                "{name}"
            );
        }
    }
}

#[test]
fn esr_decoding() {
    let d = decode_esr(0x9200_0030);
    assert_eq!(
        (d.ec, d.fsc, d.fsc_name),
        (0x24, Some(0x30), Some("TLB conflict abort"))
    );
    assert_eq!(
        decode_esr(0x9600_0010).fsc_name,
        Some("synchronous external abort")
    );
    for (fsc, level) in [(0x04u64, 0i8), (0x05, 1), (0x06, 2), (0x07, 3)] {
        let d = decode_esr(0x9600_0000 | fsc);
        assert_eq!(
            (d.fsc_name, d.level),
            (Some("translation fault"), Some(level))
        );
    }
    for fsc in 0x08..=0x0bu64 {
        assert_eq!(
            decode_esr(0x9600_0000 | fsc).fsc_name,
            Some("access flag fault")
        );
    }
    for fsc in 0x0c..=0x0fu64 {
        assert_eq!(
            decode_esr(0x9600_0000 | fsc).fsc_name,
            Some("permission fault")
        );
    }
    assert_eq!(decode_esr(0x9600_0021).fsc_name, Some("alignment fault"));
    assert_eq!(decode_esr(0x9600_0047).wnr, Some(true));
    assert_eq!(decode_esr(0x8600_0007).ec_name, "IABT (current EL)");
    assert_eq!(decode_esr(0x8600_0007).wnr, None);
}

#[test]
fn empty_log_is_a_hang() {
    let f = triage(b"", Source::Guest);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].class, FindingClass::Hang);
    assert!(f[0].fatal);
    assert!(triage(b"\n\n  \r\n", Source::Guest)[0].class == FindingClass::Hang);
    // QEMU's stderr and the host's dmesg are often empty: nothing to report.
    assert!(triage(b"", Source::Qemu).is_empty());
    assert!(triage(b"", Source::Host).is_empty());
    assert!(triage(b"", Source::Unknown).is_empty());
}

#[test]
fn cli_json_lines_and_unreadable_files() {
    let files = vec![
        corpus("two_reports.log"),
        PathBuf::from("/nonexistent/armfleet.log"),
        corpus("no_report.log"),
    ];
    let mut out = Vec::new();
    let rc = run_cli(true, &files, &mut out);
    assert_ne!(rc, 0, "unreadable file must make the exit code non-zero");
    let text = String::from_utf8(out).expect("utf8");
    let objs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(
        objs.len(),
        2,
        "one object per finding, none for the clean log: {text}"
    );
    for o in &objs {
        for key in [
            "file",
            "title",
            "class",
            "source",
            "corrupted",
            "start_line",
            "end_line",
            "signature",
        ] {
            assert!(o.get(key).is_some(), "missing {key} in {o}");
        }
        assert!(o["file"].as_str().unwrap().ends_with("two_reports.log"));
    }
    assert_eq!(objs[0]["class"], "warning");
    assert_eq!(objs[1]["class"], "sanitizer");

    let mut table = Vec::new();
    assert_eq!(
        run_cli(false, &[corpus("guest_tlb_conflict.log")], &mut table),
        0
    );
    let table = String::from_utf8(table).expect("utf8");
    assert!(
        table.contains("TLB conflict abort in clear_page") && table.contains("guest-abort"),
        "{table}"
    );
}

#[test]
fn class_names_serialise_kebab_case() {
    let f = triage(read("guest_tlb_conflict.log").as_bytes(), Source::Guest);
    let v = serde_json::to_value(&f[0]).expect("serialise");
    assert_eq!(v["class"], "guest-abort");
    assert_eq!(v["source"], "guest");
    assert_eq!(v["esr"]["fsc"], 0x30);
}
