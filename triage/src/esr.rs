//! Decoding arm64 Exception Syndrome Register values.
//!
//! arm64 fault reports print an ESR (`ESR = 0x96000030`, `ESR_EL2=0x92000030`,
//! `Internal error: ...: 96000030`, `SError ... code 0xbe000000`).  The
//! interesting parts are the exception class (what kind of exception), the
//! fault status code (why a data/instruction abort happened, e.g. `0x30`
//! TLB conflict abort, which is what break-before-make bugs in KVM's stage-2
//! page-table code produce) and, for data aborts, whether it was a write and
//! at which translation level.  Field layout per the Arm ARM (D17.2.37).

use serde::Serialize;

/// A decoded ESR value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EsrDecoded {
    /// The raw register value.
    pub esr: u64,
    /// Exception class, ESR[31:26].
    pub ec: u8,
    /// Human name of the exception class, e.g. `DABT (lower EL)`.
    pub ec_name: &'static str,
    /// Instruction length bit: 32-bit instruction trapped.
    pub il: bool,
    /// Instruction-specific syndrome, ESR[24:0].
    pub iss: u32,
    /// Fault status code (ISS[5:0]) for aborts and SErrors.
    pub fsc: Option<u8>,
    /// Name of the fault status code, e.g. `TLB conflict abort`.
    pub fsc_name: Option<&'static str>,
    /// Data aborts only: write-not-read.
    pub wnr: Option<bool>,
    /// Translation table level the fault was taken at, when the FSC encodes one
    /// (-1 for the FEAT_LPA2 extra level).
    pub level: Option<i8>,
    /// One-line summary, e.g. `EC=0x24 DABT (lower EL), FSC=0x30 TLB conflict abort, write`.
    pub summary: String,
}

/// Decode an ESR value.
pub fn decode_esr(esr: u64) -> EsrDecoded {
    let ec = ((esr >> 26) & 0x3f) as u8;
    let il = (esr >> 25) & 1 == 1;
    let iss = (esr & 0x01ff_ffff) as u32;
    let ec_name = ec_name(ec);
    let is_abort = matches!(ec, 0x20 | 0x21 | 0x24 | 0x25);
    let is_serror = ec == 0x2f;
    let (fsc, fsc_name, level) = if is_abort {
        let fsc = (iss & 0x3f) as u8;
        (
            Some(fsc),
            Some(fsc_name(fsc).unwrap_or("reserved fault status code")),
            fsc_level(fsc),
        )
    } else if is_serror {
        let dfsc = (iss & 0x3f) as u8;
        let name = match dfsc {
            0x00 => "uncategorized SError",
            0x11 => "asynchronous SError interrupt",
            _ => "reserved SError status code",
        };
        (Some(dfsc), Some(name), None)
    } else {
        (None, None, None)
    };
    let wnr = matches!(ec, 0x24 | 0x25).then_some((iss >> 6) & 1 == 1);
    let mut summary = format!("EC={ec:#04x} {ec_name}");
    if let (Some(f), Some(n)) = (fsc, fsc_name) {
        summary.push_str(&format!(", FSC={f:#04x} {n}"));
    }
    if let Some(w) = wnr {
        summary.push_str(if w { ", write" } else { ", read" });
    }
    EsrDecoded {
        esr,
        ec,
        ec_name,
        il,
        iss,
        fsc,
        fsc_name,
        wnr,
        level,
        summary,
    }
}

/// Name of an exception class, in the style of the kernel's `esr_class_str`.
pub fn ec_name(ec: u8) -> &'static str {
    match ec {
        0x00 => "Unknown/Uncategorized",
        0x01 => "WFI/WFE",
        0x03 => "CP15 MCR/MRC",
        0x04 => "CP15 MCRR/MRRC",
        0x05 => "CP14 MCR/MRC",
        0x06 => "CP14 LDC/STC",
        0x07 => "ASIMD",
        0x08 => "CP10 MRC/VMRS",
        0x09 => "PAC",
        0x0a => "LD64B/ST64B",
        0x0c => "CP14 MCRR/MRRC",
        0x0d => "BTI",
        0x0e => "PSTATE.IL",
        0x11 => "SVC (AArch32)",
        0x12 => "HVC (AArch32)",
        0x13 => "SMC (AArch32)",
        0x15 => "SVC (AArch64)",
        0x16 => "HVC (AArch64)",
        0x17 => "SMC (AArch64)",
        0x18 => "MSR/MRS (AArch64)",
        0x19 => "SVE",
        0x1a => "ERET/ERETAA/ERETAB",
        0x1c => "FPAC",
        0x1d => "SME",
        0x1f => "EL3 IMP DEF",
        0x20 => "IABT (lower EL)",
        0x21 => "IABT (current EL)",
        0x22 => "PC Alignment",
        0x24 => "DABT (lower EL)",
        0x25 => "DABT (current EL)",
        0x26 => "SP Alignment",
        0x27 => "MOPS",
        0x28 => "FP (AArch32)",
        0x2c => "FP (AArch64)",
        0x2f => "SError",
        0x30 => "Breakpoint (lower EL)",
        0x31 => "Breakpoint (current EL)",
        0x32 => "Software Step (lower EL)",
        0x33 => "Software Step (current EL)",
        0x34 => "Watchpoint (lower EL)",
        0x35 => "Watchpoint (current EL)",
        0x38 => "BKPT (AArch32)",
        0x3a => "Vector catch (AArch32)",
        0x3c => "BRK (AArch64)",
        _ => "UNRECOGNIZED EC",
    }
}

/// Name of a data/instruction abort fault status code (DFSC/IFSC).
pub fn fsc_name(fsc: u8) -> Option<&'static str> {
    Some(match fsc {
        0x00..=0x03 => "address size fault",
        0x04..=0x07 => "translation fault",
        0x08..=0x0b => "access flag fault",
        0x0c..=0x0f => "permission fault",
        0x10 => "synchronous external abort",
        0x11 => "synchronous tag check fault",
        0x12 => "synchronous external abort on translation table walk, level -1",
        0x13 => "synchronous external abort on translation table walk, level -1",
        0x14..=0x17 => "synchronous external abort on translation table walk",
        0x18 => "synchronous parity or ECC error",
        0x1b => "synchronous parity or ECC error on translation table walk, level -1",
        0x1c..=0x1f => "synchronous parity or ECC error on translation table walk",
        0x21 => "alignment fault",
        0x23 => "granule protection fault on translation table walk, level -1",
        0x24..=0x27 => "granule protection fault on translation table walk",
        0x28 => "granule protection fault",
        0x29 => "address size fault, level -1",
        0x2b => "translation fault, level -1",
        0x30 => "TLB conflict abort",
        0x31 => "unsupported atomic hardware update fault",
        0x34 => "implementation defined fault (lockdown)",
        0x35 => "implementation defined fault (unsupported exclusive or atomic access)",
        0x3d => "section domain fault",
        0x3e => "page domain fault",
        _ => return None,
    })
}

/// Translation level encoded in the low bits of the level-carrying FSCs.
fn fsc_level(fsc: u8) -> Option<i8> {
    match fsc {
        0x00..=0x0f | 0x14..=0x17 | 0x1c..=0x1f | 0x24..=0x27 => Some((fsc & 3) as i8),
        0x12 | 0x13 | 0x1b | 0x23 | 0x29 | 0x2b => Some(-1),
        _ => None,
    }
}

/// The FSC name with its level spelled out, e.g. `translation fault level 3`.
pub(crate) fn fsc_long_name(fsc: u8) -> String {
    let base = fsc_name(fsc).unwrap_or("unknown fault status code");
    match fsc_level(fsc) {
        Some(l) if !base.contains("level") => format!("{base} level {l}"),
        _ => base.to_string(),
    }
}

/// Find an ESR value in a report line, in any of the forms arm64 and KVM
/// print it.  Returns the first one found.
pub(crate) fn find_esr_in_line(line: &str) -> Option<u64> {
    // "ESR = 0x0000000096000030", "ESR_EL2=0x92000030", "esr: 0x..", "ESR 0x..".
    for key in [
        "ESR_EL2=", "ESR_EL1=", "ESR = ", "ESR: ", "ESR=", "esr: ", "esr=", "esr ",
    ] {
        if let Some(pos) = line.find(key)
            && let Some(v) = parse_hex(&line[pos + key.len()..], true)
        {
            return Some(v);
        }
    }
    // "Internal error: Oops: 0000000096000030 [#1] SMP" / "...: 96000030 [#1]".
    if let Some(pos) = line.find("Internal error:") {
        let rest = &line[pos..];
        if let Some(hash) = rest.find(" [#") {
            let head = &rest[..hash];
            let token = head.rsplit(' ').next().unwrap_or("");
            // arm64 prints 8 or 16 hex digits; shorter codes are arm32 FSRs.
            if token.len() < 8 {
                return None;
            }
            if let Some(v) = parse_hex(token, false) {
                return Some(v);
            }
        }
    }
    // "SError Interrupt on CPU1, code 0x00000000be000000 -- SError"
    if line.contains("SError")
        && let Some(pos) = line.find("code ")
        && let Some(v) = parse_hex(&line[pos + 5..], true)
    {
        return Some(v);
    }
    // "Unhandled fault: TLB conflict abort (0x96000030) at 0x..."
    if let Some(pos) = line.find("Unhandled fault:")
        && let Some(open) = line[pos..].find("(0x")
    {
        return parse_hex(&line[pos + open + 1..], true);
    }
    None
}

/// Parse a hex number at the start of `s` (optionally requiring `0x`).
fn parse_hex(s: &str, want_prefix: bool) -> Option<u64> {
    let s = s.trim_start();
    let digits = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(d) => d,
        None if want_prefix => return None,
        None => s,
    };
    let n = digits.bytes().take_while(u8::is_ascii_hexdigit).count();
    if n == 0 || n > 16 {
        return None;
    }
    u64::from_str_radix(&digits[..n], 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlb_conflict_lower_el() {
        let d = decode_esr(0x9200_0030);
        assert_eq!(d.ec, 0x24);
        assert_eq!(d.ec_name, "DABT (lower EL)");
        assert_eq!(d.fsc, Some(0x30));
        assert_eq!(d.fsc_name, Some("TLB conflict abort"));
        assert_eq!(d.wnr, Some(false));
        assert!(d.il);
    }

    #[test]
    fn translation_fault_levels() {
        let d = decode_esr(0x9600_0047);
        assert_eq!(d.fsc_name, Some("translation fault"));
        assert_eq!(d.level, Some(3));
        assert_eq!(d.wnr, Some(true));
        assert_eq!(decode_esr(0x9600_0004).level, Some(0));
        assert_eq!(decode_esr(0x9600_000b).fsc_name, Some("access flag fault"));
        assert_eq!(decode_esr(0x9600_000e).fsc_name, Some("permission fault"));
        assert_eq!(decode_esr(0x9600_0021).fsc_name, Some("alignment fault"));
        assert_eq!(
            decode_esr(0x9600_0010).fsc_name,
            Some("synchronous external abort")
        );
    }

    #[test]
    fn non_abort() {
        let d = decode_esr(0x5600_0000);
        assert_eq!(d.ec, 0x15);
        assert_eq!(d.fsc, None);
        let s = decode_esr(0xbe00_0000);
        assert_eq!(s.ec, 0x2f);
        assert_eq!(s.ec_name, "SError");
    }

    #[test]
    fn find_in_lines() {
        assert_eq!(
            find_esr_in_line("  ESR = 0x0000000096000030"),
            Some(0x9600_0030)
        );
        assert_eq!(
            find_esr_in_line("kvm [1]: Unsupported FSC: EC=0x24 xFSC=0x30 ESR_EL2=0x92000030"),
            Some(0x9200_0030)
        );
        assert_eq!(
            find_esr_in_line("Internal error: Oops: 96000005 [#1] SMP"),
            Some(0x9600_0005)
        );
        assert_eq!(
            find_esr_in_line("SError Interrupt on CPU1, code 0x00000000be000000 -- SError"),
            Some(0xbe00_0000)
        );
        assert_eq!(find_esr_in_line("nothing here"), None);
    }
}
