//! Property tests: `triage` never panics and keeps its output well-formed on
//! arbitrary bytes and on realistic-but-scrambled report fragments.

use armfleet_triage::{Source, first_fatal_line, triage};
use proptest::prelude::*;

fn check_well_formed(data: &[u8]) {
    let findings = triage(data, Source::Unknown);
    let lines = data.split(|&b| b == b'\n').count();
    for f in &findings {
        assert!(f.start_line >= 1 && f.start_line <= f.end_line && f.end_line <= lines.max(1));
        assert!(!f.title.is_empty() && f.title.len() <= 120);
        assert!(f.title.bytes().all(|b| (b' '..=b'~').contains(&b)));
    }
    for w in findings.windows(2) {
        assert!(w[0].start_line <= w[1].start_line, "findings out of order");
    }
    for line in String::from_utf8_lossy(data).lines() {
        let _ = first_fatal_line(line);
    }
}

const FRAGMENTS: &[&str] = &[
    "[  512.118850] WARNING: CPU: 3 PID: 2311 at arch/arm64/kvm/hyp/pgtable.c:1060 stage2_map_walk_leaf+0x2b8/0x2c4",
    "[  12.1][ T1] BUG: KASAN: slab-use-after-free in kvm_mmu_notifier_release+0x4c/0x98",
    "Read of size 8 at addr ffff0000c3a51c28 by task qemu/1",
    "Unable to handle kernel TLB conflict abort at virtual address ffff800081a3c000",
    "  ESR = 0x0000000096000030",
    "  FSC = 0x30: TLB conflict abort",
    "Internal error: Oops: 0000000096000030 [#1] PREEMPT SMP",
    "pc : clear_page+0x10/0x24",
    "RIP: 0010:kvm_mmu_page_fault+0x5a/0x1220",
    "Call trace:",
    "Call Trace:",
    " stage2_map_walker+0x74/0x1c0 (P)",
    " [<ffffffff81234567>] ? foo+0x1/0x2",
    "Kernel panic - not syncing: Asynchronous SError Interrupt",
    "SError Interrupt on CPU2, code 0x00000000be000000 -- SError",
    "kvm [4321]: Unsupported FSC: EC=0x24 xFSC=0x30 ESR_EL2=0x92000030",
    "error: kvm run failed Bad address",
    "INFO: task qemu:1 blocked for more than 120 seconds.",
    "INFO: rcu_preempt self-detected stall on CPU",
    "WARNING: possible circular locking dependency detected",
    "is trying to acquire lock:",
    "at: kvm_mmu_notifier_invalidate_range_start+0x84/0x1f0",
    "BUG: memory leak",
    "backtrace:",
    "** replaying previous printk message **",
    "** 3 printk messages dropped ** [ 1.0] BUG: soft lockup - CPU#1 stuck for 22s!",
    "_RNvMs3_NtCshgDM7dBCdno_11rust_binder7processNtB5_7Process10update_ref+0x1/0x2",
    "rust_kernel: panicked at x.rs:1:1:",
    "UBSAN: shift-out-of-bounds in x.c:1:2",
    "WARNING: CPU: 1 PID: 2 at",
    "INFO: task \u{fffd}\u{fffd}",
];

fn structured() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        6 => proptest::sample::select(FRAGMENTS).prop_map(|s| s.as_bytes().to_vec()),
        2 => proptest::collection::vec(any::<u8>(), 0..40),
        1 => Just(b"\x1b[31m".to_vec()),
        1 => (0u32..100000, 0u32..9999).prop_map(|(a, b)| format!("[{a:>5}.{b:06}] ").into_bytes()),
        1 => (0u32..5000).prop_map(|t| format!("[  1.0][ T{t}] ").into_bytes()),
    ];
    let sep = prop_oneof![
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\0".to_vec()),
        Just(Vec::new())
    ];
    proptest::collection::vec((piece, sep), 0..80).prop_map(|parts| {
        parts
            .into_iter()
            .flat_map(|(p, s)| p.into_iter().chain(s))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        check_well_formed(&data);
    }

    #[test]
    fn scrambled_reports_never_panic(data in structured()) {
        check_well_formed(&data);
    }
}
