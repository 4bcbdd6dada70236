//! Finding reports in a whole log and turning each into a [`Finding`].
//!
//! The log can be hundreds of megabytes of mostly benign console output, so
//! the scan is two-level:
//!
//! 1. one Aho–Corasick pass over the raw bytes looks for any family header
//!    literal (`BUG:`, `WARNING:`, `Kernel panic`, `kvm [`...); only the lines
//!    it hits are decoded and checked in detail (suppressions, requirements);
//! 2. from each report's first line we read a bounded *window* of following
//!    lines — the same printk caller context only, up to the next report —
//!    and run the (regex-based) title rules on that window alone.
//!
//! Work is therefore linear in the input: the prefilter is a single pass,
//! windows are capped in lines and bytes, and at most [`MAX_FINDINGS`]
//! reports are titled per log.

use crate::esr::{self, EsrDecoded};
use crate::frames;
use crate::lines::{self, Context, Line};
use crate::signature::{clean_title, signature_of};
use crate::titles::{self, Described};
use crate::{Finding, FindingClass, Source};
use aho_corasick::{AhoCorasick, AhoCorasickKind, Input, MatchKind};
use std::sync::OnceLock;

/// At most this many raw lines are read after a report's first line.
const WINDOW_LINES: usize = 1000;
/// ... and at most this many bytes.
const WINDOW_BYTES: usize = 256 * 1024;
/// A report is over once this many of its context's lines in a row carried
/// no stack frame (console chatter after the splat).  Long reports (stack
/// overflows, all-CPU backtraces) keep going as long as frames keep coming.
const QUIET_LINES: usize = 100;
/// ... or once this many lines in a row belonged to other contexts.
const FOREIGN_LINES: usize = 300;
/// A log with more reports than this is a disaster already; stop titling.
pub(crate) const MAX_FINDINGS: usize = 512;
/// syzkaller only strips a trailing panic after this many report lines
/// (a lone WARNING line followed by the panic's stack is kept whole).
const MIN_LINES_BEFORE_PANIC_STRIP: usize = 22;

fn prefilter() -> &'static AhoCorasick {
    titles::header_automaton()
}

/// A line that starts a report.
struct Start {
    /// Byte offset of the line in the log.
    pos: usize,
    family: usize,
}

/// Byte offset -> 1-based line number, computed lazily and monotonically.
struct LineCounter<'a> {
    hay: &'a [u8],
    pos: usize,
    line: usize,
}

impl LineCounter<'_> {
    fn line_at(&mut self, pos: usize) -> usize {
        if pos >= self.pos {
            self.line += memchr::memchr_iter(b'\n', &self.hay[self.pos..pos]).count();
        } else {
            self.line -= memchr::memchr_iter(b'\n', &self.hay[pos..self.pos]).count();
        }
        self.pos = pos;
        self.line
    }
}

fn line_end(hay: &[u8], pos: usize) -> usize {
    memchr::memchr(b'\n', &hay[pos..]).map_or(hay.len(), |i| pos + i)
}

/// Keywords that change how a window line is handled; one automaton pass
/// per line tells which of them occur.
const WINDOW_KEYS: &[&str] = &[
    "Kernel panic - not syncing",
    "WARNING: possible circular locking dependency detected",
    "Disabling lock debugging due to kernel taint",
    "Sending NMI from CPU",
    REPLAY_MARKER,
    "vmalloc: allocation failure:",
    "FAULT_INJECTION: forcing a failure",
    "FAULT_FLAG_ALLOW_RETRY missing",
    // Anything that may carry an ESR value.
    "ESR",
    "esr",
    "Internal error:",
    "SError",
    "Unhandled fault:",
];
const K_PANIC: u32 = 1 << 0;
const K_CIRCULAR: u32 = 1 << 1;
const K_DISABLING: u32 = 1 << 2;
const K_NMI: u32 = 1 << 3;
const K_REPLAY: u32 = 1 << 4;
const K_INFO_STACK: u32 = (1 << 5) | (1 << 6) | (1 << 7);
const K_ESR: u32 = !0 << 8;

fn window_keys(text: &str) -> u32 {
    static AC: OnceLock<AhoCorasick> = OnceLock::new();
    let ac = AC.get_or_init(|| {
        AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostFirst)
            .kind(Some(AhoCorasickKind::DFA))
            .build(WINDOW_KEYS)
            .expect("window keywords build an automaton")
    });
    let mut k = 0;
    for m in ac.find_iter(text) {
        k |= 1 << m.pattern().as_usize();
    }
    k
}

/// Next report start at or after `from` (which is a line start).
fn next_start(hay: &[u8], mut from: usize) -> Option<Start> {
    let ac = prefilter();
    while from < hay.len() {
        let m = ac.find(Input::new(hay).span(from..hay.len()))?;
        let ls = memchr::memrchr(b'\n', &hay[..m.start()]).map_or(0, |i| i + 1);
        let le = line_end(hay, m.start());
        let text = lines::message(&hay[ls..le]);
        if let Some(family) = titles::match_family(&text)
            && !followed_by_replay(hay, le)
        {
            return Some(Start { pos: ls, family });
        }
        from = le + 1;
    }
    None
}

/// The lines of one report, as syzkaller would assemble them.
struct Window {
    /// Report text: prefix-stripped lines, each followed by `\n`.
    text: String,
    /// Byte offset (in the log) of the last line that belongs to the report.
    last_pos: usize,
    /// Where the next report starts, if one cut this window short.
    next: Option<usize>,
    /// Where scanning stopped.
    end: usize,
    /// Any line mentioning a kernel panic (for `fatal`).
    panicked: bool,
    esr: Option<u64>,
}

fn collect_window(hay: &[u8], start: usize) -> Window {
    let first_end = line_end(hay, start);
    let mut first = lines::parse_line(&hay[start..first_end]);
    let ctx = first.context;
    let mut pos = first_end + 1;
    pos = join_wrapped_header(hay, &mut first, pos);

    let mut w = Window {
        text: String::with_capacity(4096),
        last_pos: start,
        next: None,
        end: pos.min(hay.len()),
        panicked: first.text.contains("Kernel panic - not syncing"),
        esr: esr::find_esr_in_line(&first.text),
    };
    w.text.push_str(&first.text);
    w.text.push('\n');

    let mut text_lines = 1;
    let mut skip_rest = false;
    let mut cpu_traceback = false;
    let min_lines = if first.text.contains("BUG: KMSAN:") {
        16
    } else {
        MIN_LINES_BEFORE_PANIC_STRIP
    };
    // An arm64 SError report is its header and register dump followed by its
    // own panic, whose call trace is where the location comes from: that
    // panic is never stripped, however long the register dump got.
    let serror = first.text.contains("SError Interrupt on CPU");
    let mut n = 0;
    let mut last_pushed_len: Option<usize> = None;
    let mut quiet = 0;
    let mut foreign = 0;
    while pos < hay.len() && n < WINDOW_LINES && pos - start < WINDOW_BYTES {
        n += 1;
        let le = line_end(hay, pos);
        let raw = &hay[pos..le];
        let line_pos = pos;
        pos = le + 1;
        w.end = pos.min(hay.len());
        let line = lines::parse_line(raw);
        let keys = window_keys(&line.text);
        if keys & K_REPLAY != 0 {
            // The console was taken over mid-line; the previous (truncated)
            // line is printed again in full next.
            if let Some(len) = last_pushed_len.take() {
                w.text.truncate(len);
            }
            continue;
        }
        last_pushed_len = None;

        if titles::match_family(&line.text).is_some() {
            if titles::is_continuation(&line.text) {
                // Part of this report (e.g. the panic after a BUG, or QEMU's
                // "kvm run failed" after the host's KVM error).
                w.last_pos = w.last_pos.max(line_pos);
                w.panicked |= keys & K_PANIC != 0;
            } else if !ctx.is_tagged() {
                w.next = Some(line_pos);
                w.end = line_pos;
                break;
            } else if w.next.is_none() {
                // With caller tags, the report's own lines are still told
                // apart from what follows: keep reading this context (a later
                // report of the same task often completes this one, e.g. a
                // lockdep splat that faults half-way), but the next finding
                // starts here.
                w.next = Some(line_pos);
            }
        } else if !ctx.is_tagged() && keys & K_INFO_STACK != 0 {
            w.end = line_pos;
            break;
        }

        if !belongs(&line, ctx, cpu_traceback) {
            // Tagged reports interleave with other tasks' output; once this
            // task has been silent for long, its report is over.
            foreign += 1;
            if foreign >= FOREIGN_LINES {
                break;
            }
            continue;
        }
        foreign = 0;
        text_lines += 1;
        if keys & K_DISABLING != 0 {
            continue;
        }
        if keys & K_NMI != 0 {
            cpu_traceback = true;
        } else if text_lines > min_lines
            && keys & (K_PANIC | K_CIRCULAR) != 0
            && !(serror && line.text.contains("Asynchronous SError Interrupt"))
        {
            skip_rest = true;
        }
        w.panicked |= keys & K_PANIC != 0;
        if skip_rest {
            continue;
        }
        if w.esr.is_none() && keys & K_ESR != 0 {
            w.esr = esr::find_esr_in_line(&line.text);
        }
        if frames::parse_frame_line(&line.text).is_some() || frames::is_stack_start(&line.text) {
            quiet = 0;
        } else {
            quiet += 1;
            if quiet >= QUIET_LINES {
                break;
            }
        }
        last_pushed_len = Some(w.text.len());
        w.text.push_str(&line.text);
        w.text.push('\n');
        w.last_pos = w.last_pos.max(line_pos);
    }
    w
}

/// printk prints this when a console takeover cut the previous line short;
/// the full line follows.
const REPLAY_MARKER: &str = "** replaying previous printk message **";

/// Is the line after `line_end_pos` the replay marker (so the line ending
/// there is a truncated copy)?
fn followed_by_replay(hay: &[u8], line_end_pos: usize) -> bool {
    let next = line_end_pos + 1;
    if next >= hay.len() {
        return false;
    }
    let le = line_end(hay, next);
    memchr::memmem::find(&hay[next..le], REPLAY_MARKER.as_bytes()).is_some()
}

fn belongs(line: &Line<'_>, ctx: Context, cpu_traceback: bool) -> bool {
    if line.questionable {
        return false;
    }
    line.context == ctx || (cpu_traceback && matches!(line.context, Context::Cpu(_)))
}

/// A report header that got split over two lines — by a mail client
/// (`WARNING: ... at` + `arch/arm64/kvm/hyp/pgtable.c:123 func+0x..`) or by
/// serial garbage (`INFO: task \xff\xfe` + `...:123 blocked for more than`):
/// glue the continuation back on.  Returns the position after the consumed
/// lines.
fn join_wrapped_header(hay: &[u8], first: &mut Line<'_>, mut pos: usize) -> usize {
    for _ in 0..2 {
        let Some(kind) = split_header_kind(&first.text) else {
            break;
        };
        if pos >= hay.len() {
            break;
        }
        let le = line_end(hay, pos);
        let next = lines::parse_line(&hay[pos..le]);
        let t = next.text.trim();
        if next.context.has_prefix() && next.context != first.context {
            break;
        }
        let fits = match kind {
            SplitHeader::Warning => looks_like_warning_tail(t),
            SplitHeader::HungTask => t.contains(" for more than ") && !t.contains("INFO:"),
        };
        if t.is_empty() || !fits {
            break;
        }
        let joined = format!("{} {t}", first.text);
        first.text = joined.into();
        pos = le + 1;
    }
    pos
}

enum SplitHeader {
    Warning,
    HungTask,
}

/// Is this header visibly cut short?
fn split_header_kind(t: &str) -> Option<SplitHeader> {
    let t = t.trim_end();
    if let Some(pos) = t.find("WARNING:") {
        let rest = &t[pos..];
        if rest.ends_with(" at") {
            return Some(SplitHeader::Warning);
        }
        let last = rest.rsplit(' ').next().unwrap_or("");
        let cut_after_src = last.rsplit_once(':').is_some_and(|(file, line)| {
            file.contains('.') && !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit())
        });
        if cut_after_src && rest.contains(" at ") {
            return Some(SplitHeader::Warning);
        }
        return None;
    }
    if let Some(pos) = t.find("INFO: task ") {
        let rest = &t[pos..];
        if !rest.contains(" for more than ") {
            return Some(SplitHeader::HungTask);
        }
    }
    None
}

fn looks_like_warning_tail(t: &str) -> bool {
    if t.starts_with("at ") {
        return true;
    }
    let word = t.split(' ').next().unwrap_or("");
    let is_src = word
        .rsplit_once(':')
        .is_some_and(|(f, l)| f.contains('.') && l.bytes().all(|b| b.is_ascii_digit()));
    let is_func = word.contains("+0x");
    is_src || is_func
}

/// Scan a whole log.
pub(crate) fn scan(hay: &[u8], hint: Source) -> Vec<Finding> {
    let mut out = Vec::new();
    if hay.iter().all(u8::is_ascii_whitespace) {
        // A silent guest console means the guest never got going.  Silence
        // on the host or from QEMU is normal (QEMU's stderr usually is empty).
        if hint == Source::Guest {
            out.push(no_output(hint));
        }
        return out;
    }
    let vm_disconnected = memchr::memmem::find(hay, b"serialport: VM disconnected.").is_some();
    let mut counter = LineCounter {
        hay,
        pos: 0,
        line: 1,
    };
    let mut from = 0;
    while out.len() < MAX_FINDINGS {
        let Some(start) = next_start(hay, from) else {
            break;
        };
        let window = collect_window(hay, start.pos);
        let start_line = counter.line_at(start.pos);
        let end_line = counter.line_at(window.last_pos);
        let mut f = finding_from(&window, start.family, hint);
        f.start_line = start_line;
        f.end_line = end_line.max(start_line);
        f.corrupted |= vm_disconnected;
        out.push(f);
        from = match window.next {
            Some(next) if next > start.pos => next,
            _ => window.end.max(line_end(hay, start.pos) + 1),
        };
    }
    out
}

fn no_output(hint: Source) -> Finding {
    let title = "no output from test machine".to_string();
    Finding {
        signature: signature_of(&title),
        title,
        class: FindingClass::Hang,
        source: hint,
        corrupted: false,
        start_line: 1,
        end_line: 1,
        fatal: true,
        esr: None,
    }
}

fn finding_from(w: &Window, family_idx: usize, hint: Source) -> Finding {
    let family = &titles::families()[family_idx];
    let Described {
        title: raw_title,
        corrupted,
        format,
    } = titles::describe(&w.text, family);
    let mut title = clean_title(&raw_title);
    let fmt = format.map(|i| &family.formats[i]);
    let mut corrupted = corrupted || titles::looks_corrupted(&title, &w.text, fmt);
    let esr = w.esr.map(esr::decode_esr);

    // arm64: an abort whose syndrome says "TLB conflict" is titled as such,
    // whatever generic header the kernel used for it.
    if esr.as_ref().is_some_and(is_tlb_conflict) && is_abort_title(&title) {
        title = match title.rsplit_once(" in ") {
            Some((_, frame)) => format!("TLB conflict abort in {frame}"),
            None => "TLB conflict abort".to_string(),
        };
    }
    if title.is_empty() {
        title = "unknown report".to_string();
        corrupted = true;
    }

    let source = match (hint, family.header) {
        (Source::Unknown, "Unsupported FSC" | "kvm [") => Source::Host,
        (Source::Unknown, "kvm run failed" | "KVM internal error") => Source::Qemu,
        (h, _) => h,
    };
    let class = classify(&title, source);
    let vmm_stopped =
        title.starts_with("KVM: run failed") || title.starts_with("KVM: internal error");
    let fatal = class.is_fatal() || vmm_stopped || w.panicked;
    Finding {
        signature: signature_of(&title),
        title,
        class,
        source,
        corrupted,
        start_line: 0,
        end_line: 0,
        fatal,
        esr,
    }
}

fn is_tlb_conflict(e: &EsrDecoded) -> bool {
    matches!(e.ec, 0x20 | 0x21 | 0x24 | 0x25) && e.fsc == Some(0x30)
}

fn is_abort_title(t: &str) -> bool {
    [
        "BUG: unable to handle kernel",
        "Internal error",
        "Unhandled fault",
        "kernel panic: Fatal exception",
    ]
    .iter()
    .any(|p| t.starts_with(p))
}

/// Map a title to its class (see [`FindingClass`] for the set).
pub(crate) fn classify(title: &str, source: Source) -> FindingClass {
    let starts = |ps: &[&str]| ps.iter().any(|p| title.starts_with(p));
    if starts(&["TLB conflict abort"]) {
        return if source == Source::Host {
            FindingClass::Oops
        } else {
            FindingClass::GuestAbort
        };
    }
    if starts(&["guest memory corruption"]) {
        return FindingClass::MemoryCorruption;
    }
    if starts(&["KVM: unsupported FSC"]) {
        return FindingClass::GuestAbort;
    }
    if starts(&["SError"]) {
        return FindingClass::Serror;
    }
    if starts(&["KVM:"]) {
        return FindingClass::KvmError;
    }
    if starts(&["no output"]) {
        return FindingClass::Hang;
    }
    if starts(&["KASAN:", "KMSAN:", "KCSAN:", "UBSAN:", "KFENCE:"]) {
        return FindingClass::Sanitizer;
    }
    if starts(&["memory leak"]) {
        return FindingClass::MemoryLeak;
    }
    if starts(&[
        "possible deadlock",
        "inconsistent lock state",
        "WARNING: locking bug",
        "BUG: spinlock",
        "BUG: rwlock",
        "INFO: trying to register non-static key",
        "BUG: bad unlock balance",
        "WARNING: bad unlock balance",
        "BUG: held lock freed",
        "WARNING: held lock freed",
        "BUG: still has locks held",
        "WARNING: still has locks held",
        "BUG: lock held when returning",
        "WARNING: lock held when returning",
        "WARNING: nested lock",
        "BUG: workqueue leaked lock",
        "WARNING: suspicious RCU usage",
        "INFO: suspicious RCU usage",
    ]) {
        return FindingClass::Lockdep;
    }
    if starts(&[
        "BUG: soft lockup",
        "INFO: rcu detected stall",
        "INFO: task hung",
        "INFO: task can't die",
        "BUG: workqueue lockup",
        "unregister_netdevice: waiting",
    ]) {
        return FindingClass::Stall;
    }
    if starts(&["kernel panic:", "kernel stack overflow"]) {
        return FindingClass::KernelPanic;
    }
    if starts(&["unexpected kernel reboot"]) {
        return FindingClass::Reboot;
    }
    if starts(&[
        "WARNING",
        "BUG: sleeping function",
        "BUG: scheduling while atomic",
        "BUG: using ",
        "BUG: Bad page",
        "BUG: Bad rss-counter",
        "BUG: non-zero nr_",
        "BUG: Dentry",
        "VFS:",
    ]) {
        return FindingClass::Warning;
    }
    if starts(&[
        "SYZFAIL",
        "SYZFATAL",
        "panic:",
        "go runtime error",
        "trusty:",
    ]) {
        return FindingClass::Other;
    }
    FindingClass::Oops
}

/// Literals whose presence in a line means a fatal report starts there.
pub(crate) const FATAL_STARTS: &[&str] = &[
    "Kernel panic - not syncing",
    "Unable to handle kernel",
    "BUG: unable to handle",
    "BUG: kernel NULL pointer dereference",
    "BUG: Kernel NULL pointer dereference",
    "BUG: Unable to handle kernel",
    "Internal error:",
    "Unhandled fault:",
    "general protection fault",
    "stack segment: ",
    "kernel BUG at",
    "Kernel BUG",
    "PANIC: double fault",
    "divide error:",
    "divide_error:",
    "invalid opcode:",
    "Alignment trap:",
    "SError Interrupt on CPU",
    "Unsupported FSC",
    "kvm run failed",
    "KVM internal error",
    "ARMFLEET-CORRUPTION",
];

fn fatal_prefilter() -> &'static AhoCorasick {
    static AC: OnceLock<AhoCorasick> = OnceLock::new();
    AC.get_or_init(|| AhoCorasick::new(FATAL_STARTS).expect("fatal literals build an automaton"))
}

/// See [`crate::first_fatal_line`].
pub(crate) fn first_fatal_line(line: &str) -> bool {
    if !fatal_prefilter().is_match(line) {
        return false;
    }
    let parsed = lines::parse_line(line.as_bytes());
    let Some(fam) = titles::match_family(&parsed.text) else {
        return false;
    };
    let header = titles::families()[fam].header;
    header != "BUG:" && header != "kvm [" || fatal_prefilter().is_match(parsed.text.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_header_detection() {
        assert!(split_header_kind("WARNING: CPU: 1 PID: 2 at").is_some());
        assert!(split_header_kind("WARNING: CPU: 1 PID: 2 at arch/arm64/kvm/mmu.c:12").is_some());
        assert!(
            split_header_kind("WARNING: CPU: 1 PID: 2 at arch/arm64/kvm/mmu.c:12 foo+0x1/0x2")
                .is_none()
        );
        assert!(split_header_kind("INFO: task \u{fffd}\u{fffd}").is_some());
        assert!(split_header_kind("INFO: task a:1 blocked for more than 143 seconds.").is_none());
    }

    #[test]
    fn fatal_lines() {
        assert!(first_fatal_line(
            "[   1.2] Kernel panic - not syncing: Fatal exception"
        ));
        assert!(first_fatal_line(
            "Unable to handle kernel paging request at virtual address 0"
        ));
        assert!(!first_fatal_line(
            "[   1.2] WARNING: CPU: 0 PID: 1 at foo.c:1 bar+0x1/0x2"
        ));
        assert!(!first_fatal_line(
            "traps: a[1] general protection fault ip:1 sp:2 error:0 in libc.so[7f]"
        ));
        assert!(!first_fatal_line("kvm [1]: IPA Size Limit: 48 bits"));
        assert!(first_fatal_line(
            "kvm [77]: Unsupported FSC: EC=0x24 xFSC=0x30 ESR_EL2=0x92000030"
        ));
        assert!(first_fatal_line(
            "ARMFLEET-CORRUPTION thread=0 page=0 offset=0xed8 expected=0x2259676306a1df61 found=0x2259666306a1df61 pass=188"
        ));
    }

    #[test]
    fn the_workloads_corruption_report_is_a_fatal_finding_of_its_own() {
        let log = b"ARMFLEET-HB 41 passes=900\nARMFLEET-CORRUPTION thread=1 page=77 offset=0x4d0a8 expected=0x1 found=0x3 pass=12\nARMFLEET-HB 42 passes=905\n";
        let f = crate::triage(log, Source::Guest);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].title, "guest memory corruption");
        assert_eq!(f[0].class, FindingClass::MemoryCorruption);
        assert!(f[0].fatal);
    }
}
