//! Report families and how each one is titled.
//!
//! A *family* is keyed by a literal header that starts a report (`BUG:`,
//! `WARNING:`, `Kernel panic`, `Unable to handle kernel`, ...).  Within a
//! family, *formats* say how to title a specific kind of report:
//!
//! * `title` — a regex that locates the report inside the report text; among
//!   all formats, the one matching earliest wins (ties: table order);
//! * `report` — an optional stricter regex that must also match and that
//!   supplies the arguments (`{1}`, `{2}`...) for the template;
//! * `stack` — how to find the culprit frame, appended after the regex
//!   arguments.  If no frame can be found the frame is `corrupted` and the
//!   finding is marked corrupted (syzkaller's convention, so titles such as
//!   `WARNING in corrupted` match syzbot's);
//! * `locate` — instead of `stack`, a function that finds the culprit when
//!   the rule does not fit the step machinery (arm64 SErrors, see
//!   [`serror_location`]);
//! * flags: `no_stack` (the report legitimately has no stack trace) and
//!   `corrupted` (matching this format means the report is truncated).
//!
//! The table follows syzkaller's Linux conventions (pkg/report/linux.go) so
//! that titles agree with syzbot's, plus arm64/KVM families syzkaller does not
//! know: TLB conflict aborts, `kvm [PID]: Unsupported FSC`, QEMU's
//! `kvm run failed`, and SError interrupts titled by where they hit.
//!
//! Regexes here only run on a bounded report window, never on the whole log.

use crate::esr;
use crate::frames::{self, Pick, RuleSet};
use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use regex::Regex;
use std::sync::OnceLock;

/// How to walk the report text to find culprit frames.
pub(crate) enum Step {
    /// Advance to the first line matching; capture groups become frames.
    Find(Regex),
    /// Read a stack trace until the next stack keyword line (or until a line
    /// matches the following `Find` step, which is then consumed).
    Trace,
}

pub(crate) struct StackSpec {
    pub steps: Vec<Step>,
    /// Tried when `steps` yields no usable frame.
    pub fallback: Vec<Step>,
    /// Extra frames to skip for this format (on top of the generic list).
    pub skip: RuleSet,
    pub pick: Pick,
}

/// Builds a title from regex arguments when a template is not enough.
pub(crate) type Builder = fn(&[String]) -> String;

/// Finds the culprit of a report from its text (starting at the match of
/// the format's `title`).
pub(crate) type Locator = fn(&str) -> Located;

/// What a [`Locator`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Located {
    /// The culprit function.
    At(String),
    /// The report is complete but blames no kernel function (an SError
    /// taken from user space): the title has no location.
    Nowhere,
    /// No culprit where one should be: the title says `corrupted` and the
    /// finding is marked corrupted, as for `stack`.
    Unknown,
}

pub(crate) struct Format {
    pub title: Regex,
    pub report: Option<Regex>,
    pub template: &'static str,
    pub builder: Option<Builder>,
    pub stack: Option<StackSpec>,
    /// Finds the culprit instead of `stack` (which is then unused).
    pub locate: Option<Locator>,
    pub no_stack: bool,
    pub corrupted: bool,
}

pub(crate) struct Family {
    /// Literal that must occur in the line that starts the report.
    pub header: &'static str,
    /// Lines containing the header but matching this are not reports.
    pub suppress: Option<Regex>,
    /// If set, the line must also contain one of these literals to count.
    pub require: Option<AhoCorasick>,
    pub formats: Vec<Format>,
}

/// Expand the placeholders used in the table:
/// `<FUNC>` a function name (up to `.` or `+`), `<PC>` a `[<hex>]` address,
/// `<SRC>` a `file.c:123` location.
fn re(pattern: &str) -> Regex {
    let p = pattern
        .replace("<FUNC>", r"([a-zA-Z0-9_]+)(?:\.|\+)")
        .replace("<PC>", r"\[<?(?:0x)?[0-9a-f]+>?\]")
        .replace("<SRC>", r"([a-zA-Z0-9_/.\-]+\.[a-z]+:[0-9]+)");
    Regex::new(&p).unwrap_or_else(|e| panic!("bad table regex {pattern}: {e}"))
}

const RIP: &str = r"(?:IP|NIP|pc |PC is at):? (?:(?:[0-9]+:)?(?:<PC> +){0,2}<FUNC>|(?:[0-9]+:)?0x[0-9a-f]+|(?:[0-9]+:)?<PC> +\[< *\(null\)>\] +\(null\)|[0-9]+: +\(null\))";
const CALL_TRACE: &str = r"(?:Call (?:T|t)race:)|(?:Backtrace:)";

/// Step shorthands for the table.
enum S {
    Rip,
    CallTrace,
    Trace,
    Re(&'static str),
}

fn steps(list: &[S]) -> Vec<Step> {
    list.iter()
        .map(|s| match s {
            S::Rip => Step::Find(re(RIP)),
            S::CallTrace => Step::Find(re(CALL_TRACE)),
            S::Trace => Step::Trace,
            S::Re(p) => Step::Find(re(p)),
        })
        .collect()
}

fn f(title: &str, template: &'static str) -> Format {
    Format {
        title: re(title),
        report: None,
        template,
        builder: None,
        stack: None,
        locate: None,
        no_stack: false,
        corrupted: false,
    }
}

impl Format {
    fn report(mut self, p: &str) -> Self {
        self.report = Some(re(p));
        self
    }
    fn stack(mut self, s: &[S], skip: &[&'static str]) -> Self {
        self.stack = Some(StackSpec {
            steps: steps(s),
            fallback: Vec::new(),
            skip: RuleSet::new(frames::rules(skip)),
            pick: Pick::First,
        });
        self
    }
    fn fallback(mut self, s: &[S]) -> Self {
        if let Some(st) = self.stack.as_mut() {
            st.fallback = steps(s);
        }
        self
    }
    fn pick(mut self, p: Pick) -> Self {
        if let Some(st) = self.stack.as_mut() {
            st.pick = p;
        }
        self
    }
    /// The usual oops stack: the faulting PC line, else the call trace.
    fn pc_stack(self, skip: &[&'static str]) -> Self {
        self.stack(&[S::Rip, S::CallTrace, S::Trace], skip)
    }
    /// A stack that starts at the call trace.
    fn trace_stack(self, skip: &[&'static str]) -> Self {
        self.stack(&[S::CallTrace, S::Trace], skip)
    }
    /// WARNINGs: the trapping PC (x86 `RIP:`, arm64 `pc :`), else the trace.
    fn warn_stack(self, skip: &[&'static str]) -> Self {
        self.stack(&[S::Re(WARN_PC), S::Trace], skip)
            .fallback(&[S::CallTrace, S::Trace])
    }
    fn no_stack(mut self) -> Self {
        self.no_stack = true;
        self
    }
    fn corrupted(mut self) -> Self {
        self.corrupted = true;
        self
    }
    fn build(mut self, b: Builder) -> Self {
        self.builder = Some(b);
        self
    }
    fn locate(mut self, l: Locator) -> Self {
        self.locate = Some(l);
        self
    }
}

const WARN_PC: &str = r"(?:(?:IP|NIP|pc |PC is at):? (?:(?:[0-9]+:)?(?:<PC> +){0,2}<FUNC>|(?:[0-9]+:)?0x[0-9a-f]+|(?:[0-9]+:)?<PC> +\[< *\(null\)>\] +\(null\)|[0-9]+: +\(null\))|--- interrupt: [0-9]+ at <FUNC>)";

/// The arm64 SError panic path: frames between the exception entry and the
/// stack dump (`vpanic`/`panic` are generic frames anyway).  Exact names,
/// except `serror`, which also covers the RAS helpers and KVM's
/// `kvm_handle_guest_serror` on the way to `arm64_serror_panic`.
const SERROR_SKIP: &[&str] = &[
    "^panic$",
    "^vpanic$",
    "^nmi_panic$",
    "^abort$",
    "^add_taint$",
    "serror",
    "bad_mode",
];

/// Exception entry for an SError (and its C handler, which sits just above
/// it in the trace): `el1h_64_error`/`el1h_64_error_handler` since 5.14,
/// `el1_error` before, and their EL0 (64- and 32-bit) counterparts.
const SERROR_ENTRY: &[&str] = &[
    "^el1h_64_error",
    "^el0t_64_error",
    "^el0t_32_error",
    "^el1_error",
    "^__el1_error",
    "^el0_error",
];

/// Entries from user space: nothing in the kernel was interrupted.
const SERROR_EL0_ENTRY: &[&str] = &["^el0t_64_error", "^el0t_32_error", "^el0_error"];

fn fam(header: &'static str, suppress: &[&str], formats: Vec<Format>) -> Family {
    // All suppressions of a family are tried as one alternation.
    let suppress = (!suppress.is_empty()).then(|| {
        let alt: Vec<String> = suppress.iter().map(|p| format!("(?:{p})")).collect();
        re(&alt.join("|"))
    });
    Family {
        header,
        suppress,
        require: None,
        formats,
    }
}

/// All families, in matching order.
pub(crate) fn families() -> &'static [Family] {
    static F: OnceLock<Vec<Family>> = OnceLock::new();
    F.get_or_init(build_families)
}

#[allow(clippy::too_many_lines)]
fn build_families() -> Vec<Family> {
    let lock_at = r"at: (?:<PC> +)?<FUNC>";
    vec![
        fam(
            "BUG:",
            &["ODEBUG:", "Boot_DEBUG:", "xlog_status:", "DEBUG:", "BUG: no syscalls can create resource"],
            vec![
                f("BUG: KASAN:", "KASAN: {1} {3} in {4}")
                    .report(r"BUG: KASAN: ([a-z\-]+) in <FUNC>(?:.*\n)+?.*(Read|Write) (?:of size|at addr) (?:[0-9a-f]+)")
                    .stack(
                        &[S::Re(r"BUG: KASAN: (?:[a-z\-]+) in <FUNC>"), S::CallTrace, S::Trace],
                        &["kernel_fault", "tag_check", "mem_abort", "^el1_", "^el1h_"],
                    ),
                f("BUG: KASAN:", "KASAN: invalid-free in {2}")
                    .report(r"BUG: KASAN: (?:double-free or invalid-free|double-free|invalid-free) in <FUNC>")
                    .stack(
                        &[
                            S::Re(r"BUG: KASAN: (?:double-free or invalid-free|double-free|invalid-free) in <FUNC>"),
                            S::CallTrace,
                            S::Trace,
                        ],
                        &["slab_", "kfree", "vunmap", "vfree"],
                    ),
                f(r"BUG: KASAN: ([a-z\-]+) on address(?:.*\n)+?.*(Read|Write) of size ([0-9]+)", "KASAN: {1} {2}"),
                f(r"BUG: KASAN: (.*)", "KASAN: {1}").corrupted(),
                f("BUG: KMSAN: kernel-usb-infoleak", "KMSAN: kernel-usb-infoleak in {2}")
                    .report(r"BUG: KMSAN: kernel-usb-infoleak in <FUNC>")
                    .stack(
                        &[S::Trace, S::Re(r"(Local variable .* created at:|Uninit was created at:)"), S::Trace],
                        &["alloc_skb", "usb_submit_urb", "usb_start_wait_urb", "usb_bulk_msg", "usb_interrupt_msg", "usb_control_msg"],
                    )
                    .no_stack(),
                f("BUG: KMSAN:", "KMSAN: {1} in {3}")
                    .report(r"BUG: KMSAN: ([a-z\-]+) in <FUNC>")
                    .stack(
                        &[S::Trace, S::Re(r"(Local variable .* created at:|Uninit was created at:)"), S::Trace],
                        &["alloc_skb", "netlink_ack", "netlink_rcv_skb", "_encrypt$", "^crypto_", "^cipher_", "^drbg_", "^rng_"],
                    )
                    .no_stack(),
                f("BUG: KCSAN: data-race", "KCSAN: {1}").report(r"BUG: KCSAN: (.*)").no_stack(),
                f("BUG: KCSAN:", "KCSAN: {1}").report(r"BUG: KCSAN: (.*)").no_stack(),
                f(r"BUG: KFENCE: (use-after-free|out-of-bounds) (read|write) in <FUNC>", "KFENCE: {1} {2} in {4}")
                    .stack(&[S::Re(r"BUG: KFENCE: (?:[a-z\- ]+) in <FUNC>"), S::Trace], &[]),
                f(r"BUG: KFENCE: invalid free in <FUNC>", "KFENCE: invalid free in {2}")
                    .stack(&[S::Re(r"BUG: KFENCE: (?:[a-z\- ]+) in <FUNC>"), S::Trace], &[])
                    .no_stack(),
                f(r"BUG: KFENCE: invalid (read|write) in <FUNC>", "KFENCE: invalid {1} in {3}")
                    .stack(&[S::Re(r"BUG: KFENCE: (?:[a-z\- ]+) in <FUNC>"), S::Trace], &[]),
                f(r"BUG: KFENCE: memory corruption in <FUNC>", "KFENCE: memory corruption in {2}")
                    .stack(&[S::Re(r"BUG: KFENCE: (?:[a-z\- ]+) in <FUNC>"), S::Trace], &[])
                    .no_stack(),
                f(
                    r"BUG: (?:unable to handle kernel paging request|unable to handle page fault for address|Unable to handle kernel data access)",
                    "BUG: unable to handle kernel paging request in {1}",
                )
                .pc_stack(&[]),
                f(
                    r"BUG: (?:unable to handle kernel NULL pointer dereference|kernel NULL pointer dereference|Kernel NULL pointer dereference)",
                    "BUG: unable to handle kernel NULL pointer dereference in {1}",
                )
                .pc_stack(&[]),
                f(r"BUG: (?:unable to handle kernel|Unable to handle kernel)", "BUG: unable to handle kernel").corrupted(),
                f(
                    r"BUG: (spinlock|rwlock) (lockup suspected|already unlocked|recursion|cpu recursion|bad magic|wrong owner|wrong CPU|trylock failure on UP)",
                    "BUG: {1} {2} in {3}",
                )
                .trace_stack(&["spin_", "_lock", "_unlock"]),
                f("BUG: soft lockup", "BUG: soft lockup in {1}").pc_stack(&[]).pick(Pick::Stall),
                f(r"BUG: .*still has locks held!", "BUG: still has locks held in {1}")
                    .report(r"BUG: .*still has locks held!(?:.*\n)+?.*<PC> +<FUNC>"),
                f("BUG: scheduling while atomic", "BUG: scheduling while atomic in {1}").trace_stack(&["schedule"]),
                f("BUG: lock held when returning to user space", "BUG: lock held when returning to user space in {1}")
                    .report(&format!(
                        r"BUG: lock held when returning to user space(?:.*\n)+?.*leaving the kernel with locks still held(?:.*\n)+?.*{lock_at}"
                    ))
                    .no_stack(),
                f("BUG: bad unlock balance detected!", "BUG: bad unlock balance in {1}")
                    .stack(&[S::Re(r"<PC> +<FUNC>"), S::CallTrace, S::Trace], &[]),
                f("BUG: held lock freed!", "BUG: held lock freed in {1}")
                    .report(r"BUG: held lock freed!(?:.*\n)+?.*<PC> +<FUNC>"),
                f("BUG: Bad rss-counter state", "BUG: Bad rss-counter state").no_stack(),
                f("BUG: non-zero nr_ptes on freeing mm", "BUG: non-zero nr_ptes on freeing mm").no_stack(),
                f("BUG: non-zero nr_pmds on freeing mm", "BUG: non-zero nr_pmds on freeing mm").no_stack(),
                f(r"BUG: Dentry .* still in use", "BUG: Dentry still in use in {1}")
                    .report(r"BUG: Dentry .* still in use \([0-9]+\) \[(unmount) of ([^\]]+)\]"),
                f(r"BUG: Bad page (state|cache)", "BUG: Bad page {1} in {2}").stack(
                    &[S::Re("page last allocated"), S::Trace],
                    &[
                        "free_page", "put_page", "get_page", "update_page", "release_page", "free_unref", "^folio",
                        "^_folio", "^__folio", "^___folio", "truncate_inode_pages", "page_frag_free", "alloc", "vmap",
                        "page_owner",
                    ],
                ),
                f("BUG: Bad page map", "BUG: Bad page map"),
                f("BUG: workqueue lockup", "BUG: workqueue lockup").no_stack(),
                f(
                    r"BUG: sleeping function called from invalid context at (.*)",
                    "BUG: sleeping function called from invalid context in {2}",
                )
                .trace_stack(&[]),
                f(r"BUG: using ([a-z_]+)\(\) in preemptible", "BUG: using {1}() in preemptible code in {2}")
                    .trace_stack(&["dump_stack", "preemption", "preempt", "debug_", "processor_id", "this_cpu"]),
                f("BUG: workqueue leaked lock or atomic", "BUG: workqueue leaked lock or atomic in {1}")
                    .report(r"BUG: workqueue leaked lock or atomic(?:.*\n)+?.*last function: ([a-zA-Z0-9_]+)\n")
                    .no_stack(),
                f("BUG: memory leak", "memory leak in {1}").stack(
                    &[S::Re(r"backtrace(?: \(crc [[:xdigit:]]*\))?:"), S::Trace],
                    &[
                        "kmemleak", "mmap", "kmem", "slab", "alloc", "create_object", "idr_get", "list_lru_init",
                        "kasprintf", "kvasprintf", "pcpu_create", "strdup", "strndup", "memdup",
                    ],
                ),
                f(r"BUG: .*stack guard page was hit at", "BUG: stack guard page was hit in {1}")
                    .pc_stack(&[])
                    .pick(Pick::Stall),
                f("BUG: Invalid wait context", "WARNING: locking bug in {1}")
                    .trace_stack(&["lock_sock", "release_sock"]),
                f(r"BUG:[[:space:]]*(?:\n|$)", "BUG: corrupted").corrupted(),
            ],
        ),
        fam(
            "WARNING:",
            &[
                "WARNING: /etc/ssh/moduli does not exist, using fixed modulus",
                "WARNING: workqueue cpumask: online intersect > possible intersect",
                "WARNING: [Tt]he mand mount option",
                r"WARNING: Unsupported flag value\(s\) of 0x%x in DT_FLAGS_1",
                "WARNING: Unprivileged eBPF is enabled with eIBRS",
                r"WARNING: fbcon: Driver '(.*)' missed to adjust virtual screen size",
                r"WARNING: See https.* for mitigation options.",
                "WARNING: kernel not compiled with CPU_SRSO",
                r"EXT4-[Ff][Ss](?: \(.*\))?:",
                r"(?i)warning: .* uses (deprecated v2 capabilities|wireless extensions)",
                r"XFS \(\w+\): WARNING",
            ],
            vec![
                f(r"WARNING: .*lib/debugobjects\.c.* (?:debug_print|debug_check|at)", "WARNING: ODEBUG bug in {1}")
                    .warn_stack(&[
                        "debug_", "rcu", "hrtimer_", "timer_", "work_", "percpu_", "vunmap", "vfree", "__free_",
                        "debug_check", "kobject_",
                    ]),
                f(r"WARNING: .*mm/usercopy\.c.* (?:usercopy_warn|at)", "WARNING: bad usercopy in {1}")
                    .warn_stack(&["usercopy", "__check"]),
                f(r"WARNING: .*lib/kobject\.c.* (?:kobject_|at)", "WARNING: kobject bug in {1}").warn_stack(&["kobject_"]),
                f(r"WARNING: .*fs/proc/generic\.c.* (?:proc_register|at)", "WARNING: proc registration bug in {1}")
                    .warn_stack(&["proc_"]),
                f(r"WARNING: .*lib/refcount\.c.* (?:refcount_|at)", "WARNING: refcount bug in {1}")
                    .warn_stack(&["refcount", "kobject_"]),
                f(r"WARNING: .*kernel/locking/lockdep\.c.*lock_", "WARNING: locking bug in {1}")
                    .warn_stack(&["lock_sock", "release_sock"]),
                f(r"WARNING: .*still has locks held!", "WARNING: still has locks held in {1}")
                    .report(r"WARNING: .*still has locks held!(?:.*\n)+?.*at: <FUNC>"),
                f("WARNING: Nested lock was not taken", "WARNING: nested lock was not taken in {1}").warn_stack(&[]),
                f("WARNING: lock held when returning to user space", "WARNING: lock held when returning to user space in {1}")
                    .report(&format!(
                        r"WARNING: lock held when returning to user space(?:.*\n)+?.*leaving the kernel with locks still held(?:.*\n)+?.*{lock_at}"
                    ))
                    .no_stack(),
                f(r"WARNING: .*mm/.*\.c.* k?.?malloc", "WARNING: kmalloc bug in {1}")
                    .warn_stack(&["kmalloc", "krealloc", "slab", "kmem"]),
                f(r"WARNING: .*mm/vmalloc.c.*__vmalloc_node", "WARNING: zero-size vmalloc in {1}").warn_stack(&[]),
                f(r"WARNING: .* usb_submit_urb", "WARNING in {1}/usb_submit_urb").warn_stack(&[
                    "usb_submit_urb", "usb_start_wait_urb", "usb_bulk_msg", "usb_interrupt_msg", "usb_control_msg",
                ]),
                f(r"WARNING: <SRC> at 0x\d+, CPU#\d+", "WARNING in {2}").warn_stack(&[]),
                f(r"WARNING: .* at <SRC> <FUNC>", "WARNING in {3}").warn_stack(&[]),
                f(r"WARNING: <SRC> at <FUNC>", "WARNING in {3}").warn_stack(&[]),
                f(r"WARNING: \[.*\] <SRC> at <FUNC>.*", "WARNING in {3}").warn_stack(&[]),
                f("WARNING: possible circular locking dependency detected", "possible deadlock in {1}")
                    .report(r"WARNING: possible circular locking dependency detected(?:.*\n)+?.*is trying to acquire lock")
                    .stack(
                        &[S::Re(r"at: (?:<PC> +)?<FUNC>"), S::Re(r"at: (?:<PC> +)?<FUNC>"), S::Trace],
                        &["process_one_work", "flush_workqueue", "drain_workqueue", "destroy_workqueue"],
                    ),
                f("WARNING: possible irq lock inversion dependency detected", "possible deadlock in {1}").report(&format!(
                    r"WARNING: possible irq lock inversion dependency detected(?:.*\n)+?.*just changed the state of lock(?:.*\n)+?.*{lock_at}"
                )),
                f(r"WARNING: .*-safe -> .*-unsafe lock order detected", "possible deadlock in {1}")
                    .stack(&[S::Re(r"which became (?:.*) at:"), S::Trace], &[]),
                f("WARNING: possible recursive locking detected", "possible deadlock in {1}").report(&format!(
                    r"WARNING: possible recursive locking detected(?:.*\n)+?.*is trying to acquire lock(?:.*\n)+?.*{lock_at}"
                )),
                f("WARNING: inconsistent lock state", "inconsistent lock state in {2}")
                    .report(&format!(r"WARNING: inconsistent lock state(?:.*\n)+?.*takes(?:.*\n)+?.*{lock_at}"))
                    .trace_stack(&[]),
                f("WARNING: suspicious RCU usage", "WARNING: suspicious RCU usage in {2}")
                    .report(r"WARNING: suspicious RCU usage(?:.*\n)+?.*?<SRC>")
                    .trace_stack(&["rcu", "kmem", "slab"]),
                f(
                    r"WARNING: kernel stack regs at [0-9a-f]+ in [^ ]* has bad '([^']+)' value",
                    "WARNING: kernel stack regs has bad '{1}' value",
                )
                .no_stack(),
                f(
                    r"WARNING: kernel stack frame pointer at [0-9a-f]+ in [^ ]* has bad value",
                    "WARNING: kernel stack frame pointer has bad value",
                )
                .no_stack(),
                f("WARNING: bad unlock balance detected!", "WARNING: bad unlock balance in {1}")
                    .stack(&[S::Re(r"<PC> +<FUNC>"), S::CallTrace, S::Trace], &[]),
                f("WARNING: held lock freed!", "WARNING: held lock freed in {1}")
                    .report(r"WARNING: held lock freed!(?:.*\n)+?.*at:(?: <PC>)? +<FUNC>"),
                f(r"WARNING: kernel stack regs .* has bad 'bp' value", "WARNING: kernel stack regs has bad value").no_stack(),
                f(r"WARNING: kernel stack frame pointer .* has bad value", "WARNING: kernel stack regs has bad value")
                    .no_stack(),
                f(r"WARNING:[[:space:]]*(?:\n|$)", "WARNING: corrupted").corrupted(),
            ],
        ),
        fam(
            "INFO:",
            &[
                "INFO: lockdep is turned off",
                "INFO: Stall ended before state dump start",
                "INFO: NMI handler",
                "INFO: recovery required on readonly filesystem",
                "(handler|interrupt).*took too long",
                "INFO: sys_.* is not present in /proc/kallsyms",
                "INFO: no syscalls can create resource",
                "rmt_storage:INFO:",
                "_INFO:",
            ],
            vec![
                f("INFO: possible circular locking dependency detected", "possible deadlock in {1}").report(
                    r"INFO: possible circular locking dependency detected \](?:.*\n)+?.*is trying to acquire lock(?:.*\n)+?.*at: <PC> +<FUNC>",
                ),
                f("INFO: possible irq lock inversion dependency detected", "possible deadlock in {1}").report(
                    r"INFO: possible irq lock inversion dependency detected \](?:.*\n)+?.*just changed the state of lock(?:.*\n)+?.*at: <PC> +<FUNC>",
                ),
                f("INFO: SOFTIRQ-safe -> SOFTIRQ-unsafe lock order detected", "possible deadlock in {1}").report(
                    r"INFO: SOFTIRQ-safe -> SOFTIRQ-unsafe lock order detected \](?:.*\n)+?.*is trying to acquire(?:.*\n)+?.*at: <PC> +<FUNC>",
                ),
                f("INFO: possible recursive locking detected", "possible deadlock in {1}").report(
                    r"INFO: possible recursive locking detected \](?:.*\n)+?.*is trying to acquire lock(?:.*\n)+?.*at: <PC> +<FUNC>",
                ),
                f("INFO: inconsistent lock state", "inconsistent lock state in {1}")
                    .report(r"INFO: inconsistent lock state \](?:.*\n)+?.*takes(?:.*\n)+?.*at: <PC> +<FUNC>"),
                f(r"INFO: rcu_(?:preempt|sched|bh) (?:self-)?detected(?: expedited)? stall", "INFO: rcu detected stall in {1}")
                    .stack(&[S::Re("apic_timer_interrupt"), S::Rip, S::Trace], &["apic_timer_interrupt", "rcu"])
                    .fallback(&[S::Re("(?:apic_timer_interrupt|Exception stack|el1h_64_irq)"), S::Trace])
                    .pick(Pick::Stall),
                f("INFO: trying to register non-static key", "INFO: trying to register non-static key in {1}")
                    .trace_stack(&["stack", "lock", "IRQ"]),
                f("INFO: suspicious RCU usage", "INFO: suspicious RCU usage in {2}")
                    .report(r"INFO: suspicious RCU usage(?:.*\n)+?.*?<SRC>")
                    .trace_stack(&["rcu", "kmem", "slab"]),
                f(r"INFO: task .* blocked (?:in I/O wait )?for more than [0-9]+ seconds", "INFO: task hung in {1}")
                    .trace_stack(&[])
                    .pick(Pick::HungTask),
                f(r"INFO: task .* can't die for more than .* seconds", "INFO: task can't die in {1}")
                    .trace_stack(&["schedule"]),
                f(r"INFO: (Freed|Allocated) in (.*)", "INFO: {1} in {2}").corrupted(),
                f(r"INFO:[[:space:]]*(?:\n|$)", "INFO: corrupted").corrupted(),
            ],
        ),
        fam(
            "Unable to handle kernel",
            &[],
            vec![
                f("Unable to handle kernel TLB conflict abort", "TLB conflict abort in {1}").pc_stack(&[]),
                f(
                    r"Unable to handle kernel (paging request|NULL pointer dereference|access to user memory)",
                    "BUG: unable to handle kernel {1} in {2}",
                )
                .pc_stack(&[]),
            ],
        ),
        fam(
            "general protection fault",
            &[r"general protection fault .* error:\d+ in "],
            vec![f("general protection fault.*:", "general protection fault in {1}").pc_stack(&[])],
        ),
        fam("stack segment: ", &[], vec![f("stack segment: ", "stack segment fault in {1}").pc_stack(&[])]),
        // Before the generic kernel panic: an SError panic is titled by where it hit.
        fam(
            "SError Interrupt on CPU",
            &[],
            vec![f(r"SError Interrupt on CPU[0-9]+", "SError Interrupt in {1}")
                .locate(serror_location)
                .build(serror_title)],
        ),
        fam(
            "Kernel panic",
            &[],
            vec![
                f("Kernel panic - not syncing: Asynchronous SError Interrupt", "SError Interrupt in {1}")
                    .locate(serror_location)
                    .build(serror_title),
                f("Kernel panic - not syncing: stack-protector:", "kernel panic: stack is corrupted in {1}")
                    .report(r"Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: <FUNC>")
                    .no_stack(),
                f("Kernel panic - not syncing: stack-protector:", "kernel panic: stack is corrupted in {1}")
                    .report(r"Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: [a-f0-9]+")
                    .trace_stack(&["stack_chk"]),
                f("Kernel panic - not syncing: corrupted stack end", "kernel panic: corrupted stack end in {1}")
                    .report("Kernel panic - not syncing: corrupted stack end detected inside scheduler")
                    .trace_stack(&["schedule", "retint_kernel"])
                    .pick(Pick::Stall),
                f("Kernel panic - not syncing: kernel stack overflow", "kernel stack overflow in {1}")
                    .trace_stack(&["bad_stack"])
                    .pick(Pick::Stall),
                f("Kernel panic - not syncing: Attempted to kill init!", "kernel panic: Attempted to kill init!"),
                f(
                    r"Kernel panic - not syncing: Couldn't open N_TTY ldisc for [^ ]+ --- error -[0-9]+",
                    "kernel panic: Couldn't open N_TTY ldisc",
                ),
                f("Kernel panic - not syncing: Fatal exception", "kernel panic: Fatal exception").corrupted(),
                f("Kernel panic - not syncing: panic_on_warn set", "kernel panic: panic_on_warn set").corrupted(),
                f("Kernel panic - not syncing: hung_task: blocked tasks", "kernel panic: hung_task: blocked tasks")
                    .corrupted(),
                f(r"Kernel panic - not syncing: (.*)", "kernel panic: {1}"),
            ],
        ),
        fam("PANIC: double fault", &[], vec![f("PANIC: double fault", "PANIC: double fault in {1}").stack(&[S::Rip], &[])]),
        fam(
            "rust_kernel: panicked",
            &[],
            vec![f("rust_kernel: panicked", "{1} in {2}")
                .report(r"rust_kernel: panicked at [^\n]*?\n(.+?)\n")
                .trace_stack(&["__rustc::rust_begin_unwind"])],
        ),
        fam(
            "kernel BUG",
            &[],
            vec![
                f("kernel BUG at mm/usercopy.c", "BUG: bad usercopy in {1}").trace_stack(&["usercopy", "__check"]),
                f("kernel BUG at lib/list_debug.c", "BUG: corrupted list in {1}").trace_stack(&[]),
                f("kernel BUG at (.*)", "kernel BUG in {2}").pc_stack(&["^skb_"]),
            ],
        ),
        fam("Kernel BUG", &[], vec![f("Kernel BUG (.*)", "kernel BUG {1}")]),
        fam("BUG kmalloc-", &[], vec![f("BUG kmalloc-.*: Object already free", "BUG: Object already free")]),
        fam("divide error:", &[], vec![f("divide error: ", "divide error in {1}").stack(&[S::Rip], &[])]),
        fam("divide_error:", &[], vec![f("divide_error: ", "divide error in {1}").stack(&[S::Rip], &[])]),
        fam("invalid opcode:", &[], vec![f("invalid opcode: ", "invalid opcode in {1}").stack(&[S::Rip], &[])]),
        fam(
            "UBSAN:",
            &[],
            vec![
                f("UBSAN:", "UBSAN: undefined-behaviour in {1}")
                    .report("UBSAN: Undefined behaviour in")
                    .trace_stack(&["ubsan", "overflow"]),
                f("UBSAN: array-index-out-of-bounds in", "UBSAN: array-index-out-of-bounds in {1}")
                    .trace_stack(&["ubsan", "overflow"]),
                f("UBSAN:", "UBSAN: {1} in {2}").report("UBSAN: (.*?) in").trace_stack(&["ubsan", "overflow"]),
            ],
        ),
        fam(
            "Booting the kernel.",
            &["Parsing ELF|Decompressing Linux|Unknown parameter '"],
            vec![f("^Booting the kernel", "unexpected kernel reboot").no_stack()],
        ),
        fam(
            "unregister_netdevice: waiting for",
            &[],
            vec![f(
                "unregister_netdevice: waiting for (?:.*) to become free",
                "unregister_netdevice: waiting for DEV to become free",
            )
            .no_stack()],
        ),
        fam(
            "VFS: Close: file count is 0",
            &[],
            vec![f("VFS: Close: file count is 0", "VFS: Close: file count is zero (use-after-free)").no_stack()],
        ),
        fam(
            "VFS: Busy inodes after unmount",
            &[],
            vec![f("VFS: Busy inodes after unmount", "VFS: Busy inodes after unmount (use-after-free)").no_stack()],
        ),
        fam(
            "Internal error:",
            &[],
            vec![
                f("Internal error: TLB conflict abort", "TLB conflict abort in {1}").pc_stack(&[]),
                f("Internal error:", "Internal error in {1}").pc_stack(&[]),
            ],
        ),
        fam(
            "Unhandled fault:",
            &[],
            vec![
                f("Unhandled fault: TLB conflict abort", "TLB conflict abort in {1}").pc_stack(&[]),
                f("Unhandled fault:", "Unhandled fault in {1}").pc_stack(&[]),
            ],
        ),
        fam("Alignment trap:", &[], vec![f("Alignment trap:", "Alignment trap in {1}").pc_stack(&[])]),
        fam(
            "trusty: panic",
            &[],
            vec![
                f(r"trusty: panic.* ASSERT FAILED", "trusty: ASSERT FAILED: {1}")
                    .report(r"trusty: panic \(.*?\):(?: DEBUG)? ASSERT FAILED at \(.*?\): (.+)")
                    .no_stack(),
                f(r"trusty: panic.* ASSERT FAILED.*: *(.*)", "trusty: ASSERT FAILED: {1}").corrupted(),
                f("trusty: panic", "trusty: panic: {1}").report(r"trusty: panic \(.*?\): (.+)").no_stack(),
            ],
        ),
        fam(
            "fatal error:",
            &["ALSA", "fatal error: cannot create timer"],
            vec![f("fatal error:", "go runtime error").no_stack()],
        ),
        fam("SYZFAIL:", &[], vec![f("SYZFAIL:(.*)", "SYZFAIL:{1}").no_stack()]),
        fam("SYZFATAL:", &[], vec![f("SYZFATAL:(.*)", "SYZFATAL:{1}").no_stack()]),
        fam(
            "panic:",
            &["_panic:", "xlog_status:", r"ddb\.onpanic:", "evtlog_status:"],
            vec![
                f("panic: Sentry detected .* stuck task", "panic: Sentry detected stuck tasks").no_stack(),
                f("panic:(.*)", "panic:{1}").no_stack(),
            ],
        ),
        // ---- KVM host / QEMU side: syzkaller does not know these. ----
        // armfleet's guest workload: what it read back is not what it wrote.
        fam(
            "ARMFLEET-CORRUPTION",
            &[],
            vec![f("ARMFLEET-CORRUPTION", "guest memory corruption").no_stack()],
        ),
        fam(
            "Unsupported FSC",
            &[],
            vec![f(r"Unsupported FSC: EC=(0x[0-9a-fA-F]+) xFSC=(0x[0-9a-fA-F]+)", "")
                .build(kvm_unsupported_fsc)
                .no_stack()],
        ),
        Family {
            header: "kvm [",
            suppress: None,
            // Host KVM prints plenty of informational lines (`kvm [1]: IPA Size
            // Limit: 48 bits`); only error-looking ones are findings.
            require: Some(
                AhoCorasick::new([
                    "nsupported", "not implemented", "nexpected", "rror", "failed", "nvalid", "nhandled", "bad ",
                    "Bad ", "BUG", "illegal", "Illegal",
                ])
                .expect("literals build an automaton"),
            ),
            formats: vec![f(r"kvm \[[0-9]+\]: (.*)", "").build(kvm_host_message).no_stack()],
        },
        fam(
            "kvm run failed",
            &[],
            vec![f(r"kvm run failed:? *(.*)", "KVM: run failed: {1}").no_stack()],
        ),
        fam(
            "KVM internal error",
            &[],
            vec![
                f(r"KVM internal error\. Suberror: ([0-9]+)", "KVM: internal error, suberror {1}").no_stack(),
                f("KVM internal error", "KVM: internal error").no_stack(),
            ],
        ),
    ]
}

/// `KVM: unsupported FSC 0x30 (TLB conflict abort)`
fn kvm_unsupported_fsc(args: &[String]) -> String {
    let fsc = args
        .get(1)
        .and_then(|s| {
            u64::from_str_radix(s.trim_start_matches("0x").trim_start_matches("0X"), 16).ok()
        })
        .map_or(0, |v| (v & 0x3f) as u8);
    format!(
        "KVM: unsupported FSC {fsc:#04x} ({})",
        esr::fsc_long_name(fsc)
    )
}

/// `kvm [1234]: Unsupported guest sys_reg access at: 8f5c [80000005]` ->
/// `KVM: Unsupported guest sys_reg access`.
fn kvm_host_message(args: &[String]) -> String {
    let msg = args.first().map_or("", String::as_str);
    let msg = msg.split(':').next().unwrap_or(msg).trim();
    let msg = msg.strip_suffix(" at").unwrap_or(msg);
    let msg: String = msg
        .split(['{', '[', '('])
        .next()
        .unwrap_or(msg)
        .trim()
        .to_string();
    format!("KVM: {msg}")
}

/// `SError Interrupt in FUNC`, or `SError Interrupt` when it hit no kernel
/// function (the location is the last argument, empty then).
fn serror_title(args: &[String]) -> String {
    match args.last().map(String::as_str) {
        Some(frame) if !frame.is_empty() => format!("SError Interrupt in {frame}"),
        _ => "SError Interrupt".to_string(),
    }
}

/// Where an arm64 SError hit, from the report text (the `SError Interrupt
/// on CPU` header or the `Asynchronous SError Interrupt` panic onwards):
///
/// 1. the first call-trace frame after the exception entry (`el1h_64_error`,
///    `el0t_64_error`, `el0t_32_error`, older `el1_error`...), skipping the
///    panic path and generic frames should any follow it;
/// 2. else the function of the `pc :` register line printed before the
///    trace;
/// 3. else, for an SError taken from user space (an EL0 entry, or a `pc :`
///    that is a bare user address), no location;
/// 4. else, when the trace shows no exception entry at all, its first frame
///    that is neither generic nor on the panic path (`vpanic`/`panic`,
///    `nmi_panic`, `abort`, `add_taint`, `arm64_serror_panic`, `do_serror`);
/// 5. else nothing: the report is truncated.
///
/// Unwinder source markers after a frame (`(C)`, `(P)`, `(L)`, `(T)`, `(?)`
/// on newer kernels) are part of the frame line and are ignored.
pub(crate) fn serror_location(text: &str) -> Located {
    static RULES: OnceLock<(RuleSet, RuleSet, RuleSet, Regex)> = OnceLock::new();
    let (skip_rules, entry_rules, el0_rules, pc_re) = RULES.get_or_init(|| {
        (
            RuleSet::new(frames::rules(SERROR_SKIP)),
            RuleSet::new(frames::rules(SERROR_ENTRY)),
            RuleSet::new(frames::rules(SERROR_EL0_ENTRY)),
            re(RIP),
        )
    });
    let skip = |f: &str| frames::is_generic(f) || skip_rules.matches(f) || entry_rules.matches(f);
    let demangled = |f: &str| crate::demangle::demangle(f).unwrap_or_else(|| f.to_string());
    let first_culprit = |frames: &[String]| {
        frames
            .iter()
            .find(|f| !skip(f))
            .map(|f| frames::strip_syscall_prefix(f).to_string())
    };

    let lines: Vec<&str> = text.split('\n').collect();
    // The first call trace (the panic's) and everything printed before it.
    let trace_at = lines
        .iter()
        .position(|l| l.contains("Call trace:") || l.contains("Call Trace:"));
    let mut trace: Vec<String> = Vec::new();
    if let Some(at) = trace_at {
        for ln in &lines[at + 1..] {
            if frames::is_stack_start(ln) {
                break;
            }
            if let Some((a, b)) = frames::parse_frame_line(ln) {
                trace.push(demangled(a));
                if let Some(b) = b {
                    trace.push(demangled(b));
                }
            }
        }
    }

    // 1. The frame after the exception entry.
    let entry = trace.iter().position(|f| entry_rules.matches(f));
    if let Some(e) = entry
        && let Some(frame) = first_culprit(&trace[e + 1..])
    {
        return Located::At(frame);
    }

    // 2. The interrupted pc, as the register dump shows it.
    let mut user_pc = false;
    for ln in &lines[..trace_at.unwrap_or(lines.len())] {
        if let Some(caps) = pc_re.captures(ln) {
            if let Some(m) = caps.get(1) {
                let f = demangled(m.as_str());
                if !skip(&f) {
                    return Located::At(frames::strip_syscall_prefix(&f).to_string());
                }
            }
            break;
        }
        if is_user_pc_line(ln) {
            user_pc = true;
            break;
        }
    }

    // 3. Taken from user space: no kernel location.
    if user_pc || entry.is_some_and(|e| el0_rules.matches(&trace[e])) {
        return Located::Nowhere;
    }

    // 4. No recognised entry: the first frame past the panic path.
    if entry.is_none()
        && let Some(frame) = first_culprit(&trace)
    {
        return Located::At(frame);
    }
    Located::Unknown
}

/// arm64 `__show_regs` for a user-mode context: `pc : 0000ffff8f1e2a40`.
fn is_user_pc_line(line: &str) -> bool {
    line.trim_start()
        .strip_prefix("pc : ")
        .map(str::trim_end)
        .is_some_and(|v| v.len() == 16 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Lines of this kind sit inside another report and do not start a new one.
pub(crate) fn is_continuation(line: &str) -> bool {
    static AC: OnceLock<AhoCorasick> = OnceLock::new();
    AC.get_or_init(|| {
        AhoCorasick::new([
            "invalid opcode: 0000",
            "Kernel panic - not syncing",
            "unregister_netdevice: waiting for",
            "PANIC: double fault",
            "Internal error:",
            // QEMU's view of a host-side KVM failure.
            "kvm run failed",
            "KVM internal error",
        ])
        .expect("literals build an automaton")
    })
    .is_match(line)
}

/// One automaton over every family header: it scans whole logs (leftmost-
/// first semantics and a DFA let its SIMD prefilter skip benign text) and
/// tells which headers a candidate line contains.
pub(crate) fn header_automaton() -> &'static AhoCorasick {
    static AC: OnceLock<AhoCorasick> = OnceLock::new();
    AC.get_or_init(|| {
        AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostFirst)
            .kind(Some(AhoCorasickKind::DFA))
            .build(families().iter().map(|f| f.header))
            .expect("header literals build an automaton")
    })
}

/// Which family (index) does this line start, if any?
pub(crate) fn match_family(line: &str) -> Option<usize> {
    // Headers do not overlap each other in practice, so non-overlapping
    // matches are enough to know which ones a line contains.
    let mut present: u64 = 0;
    for m in header_automaton().find_iter(line) {
        present |= 1u64 << (m.pattern().as_usize() & 63);
    }
    if present == 0 {
        return None;
    }
    families().iter().enumerate().position(|(i, fam)| {
        present & (1u64 << (i & 63)) != 0
            && fam.require.as_ref().is_none_or(|r| r.is_match(line))
            && !fam.suppress.as_ref().is_some_and(|s| s.is_match(line))
    })
}

/// Result of titling one report.
#[derive(Debug, Clone)]
pub(crate) struct Described {
    pub title: String,
    pub corrupted: bool,
    /// Index of the format used, if any matched.
    pub format: Option<usize>,
}

/// Title the report whose text (prefix-stripped lines joined with `\n`,
/// starting at the report's first line) is `text`.
pub(crate) fn describe(text: &str, family: &Family) -> Described {
    let mut start = usize::MAX;
    let mut desc = String::new();
    let mut corrupted = false;
    let mut format: Option<usize> = None;
    let mut matched_title = false;
    for (idx, fmt) in family.formats.iter().enumerate() {
        let Some(m) = fmt.title.find(text) else {
            continue;
        };
        if m.start() > start || (m.start() == start && !desc.is_empty()) {
            continue;
        }
        if m.start() < start {
            desc.clear();
            format = None;
            start = m.start();
        }
        matched_title = true;
        let re = fmt.report.as_ref().unwrap_or(&fmt.title);
        let Some(caps) = re.captures(text) else {
            continue;
        };
        let mut args: Vec<String> = caps
            .iter()
            .skip(1)
            .map(|g| g.map_or(String::new(), |g| g.as_str().to_string()))
            .collect();
        corrupted = false;
        let from = caps.get(0).map_or(0, |m| m.start());
        if let Some(locate) = fmt.locate {
            match locate(&text[from..]) {
                Located::At(frame) => args.push(frame),
                Located::Nowhere => args.push(String::new()),
                Located::Unknown => {
                    args.push("corrupted".to_string());
                    corrupted = true;
                }
            }
        } else if let Some(stack) = &fmt.stack {
            let (found, ok) = extract_frames(stack, &text[from..]);
            corrupted = !ok;
            args.extend(found);
        }
        desc = match fmt.builder {
            Some(b) => b(&args),
            None => fill(fmt.template, &args),
        };
        format = Some(idx);
    }
    if desc.is_empty() {
        if matched_title {
            corrupted = true;
        }
        if let Some(pos) = text.find(family.header) {
            let end = text[pos..].find('\n').map_or(text.len(), |e| pos + e);
            desc = text[pos..end].to_string();
        }
    }
    if !corrupted && format.is_some_and(|i| family.formats[i].corrupted) {
        corrupted = true;
    }
    Described {
        title: desc,
        corrupted,
        format,
    }
}

/// `{N}` placeholders -> `args[N-1]`.
fn fill(template: &str, args: &[String]) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) if after[..close].bytes().all(|b| b.is_ascii_digit()) && close > 0 => {
                let n: usize = after[..close].parse().unwrap_or(0);
                if let Some(a) = n.checked_sub(1).and_then(|i| args.get(i)) {
                    out.push_str(a);
                }
                rest = &after[close + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Run a stack spec; fall back to its alternative steps if needed.
fn extract_frames(stack: &StackSpec, text: &str) -> (Vec<String>, bool) {
    let skip = |frame: &str| frames::is_generic(frame) || stack.skip.matches(frame);
    let (found, ok) = run_steps(&stack.steps, text, &skip, stack.pick);
    if ok || stack.fallback.is_empty() {
        return (found, ok);
    }
    run_steps(&stack.fallback, text, &skip, stack.pick)
}

fn run_steps(
    steps: &[Step],
    text: &str,
    skip: &dyn Fn(&str) -> bool,
    pick: Pick,
) -> (Vec<String>, bool) {
    let lines: Vec<&str> = text.split('\n').collect();
    let mut li = 0;
    let mut raw: Vec<String> = Vec::new();
    let mut results = Vec::new();
    let mut ok = true;
    let mut traces = 0;
    let mut si = 0;
    let push = |raw: &mut Vec<String>, name: &str| {
        let name = crate::demangle::demangle(name).unwrap_or_else(|| name.to_string());
        if !skip(&name) {
            raw.push(name);
        }
    };
    loop {
        if si == steps.len() || (matches!(steps[si], Step::Trace) && traces > 0) {
            let stripped: Vec<&str> = raw
                .iter()
                .map(|f| frames::strip_syscall_prefix(f))
                .collect();
            match frames::pick(&stripped, pick) {
                Some((name, _)) => results.push(name),
                None => {
                    results.push("corrupted".to_string());
                    ok = false;
                }
            }
            raw.clear();
        }
        if si == steps.len() {
            break;
        }
        match &steps[si] {
            Step::Trace => {
                traces += 1;
                while li < lines.len() {
                    let ln = lines[li];
                    li += 1;
                    if frames::is_fault_injection_frame(ln) {
                        ok = false;
                        break;
                    }
                    if frames::is_stack_start(ln) {
                        break;
                    }
                    if let Some(Step::Find(next)) = steps.get(si + 1)
                        && let Some(caps) = next.captures(ln)
                    {
                        for g in caps.iter().skip(1).flatten() {
                            push(&mut raw, g.as_str());
                        }
                        si += 1;
                        break;
                    }
                    if let Some((a, b)) = frames::parse_frame_line(ln) {
                        push(&mut raw, a);
                        if let Some(b) = b {
                            push(&mut raw, b);
                        }
                    }
                }
            }
            Step::Find(re) => {
                while li < lines.len() {
                    let ln = lines[li];
                    li += 1;
                    if frames::is_fault_injection_frame(ln) {
                        ok = false;
                        break;
                    }
                    if let Some(caps) = re.captures(ln) {
                        for g in caps.iter().skip(1).flatten() {
                            push(&mut raw, g.as_str());
                        }
                        break;
                    }
                }
            }
        }
        si += 1;
    }
    (results, ok)
}

/// syzkaller-style completeness check of a titled report: a report whose
/// format expects a stack must show one, with frames after each stack
/// keyword; a timestamp inside the title means lines got merged.
pub(crate) fn looks_corrupted(title: &str, text: &str, format: Option<&Format>) -> bool {
    if title_has_timestamp(title) {
        return true;
    }
    let Some(format) = format else { return false };
    if format.no_stack {
        return false;
    }
    let mut has_trace = false;
    for kind in frames::stack_start_kinds() {
        let Some(pos) = kind(text) else { continue };
        let lines: Vec<&str> = text[pos..].split('\n').collect();
        if lines.len() < 4 {
            return true;
        }
        let mut found = false;
        for ln in lines.iter().skip(1).take(15) {
            if frames::is_stack_start(ln) {
                break;
            }
            if ln.contains("(stack is not available)") || frames::parse_frame_line(ln).is_some() {
                found = true;
                break;
            }
        }
        if !found {
            return true;
        }
        has_trace = true;
    }
    !has_trace
}

fn title_has_timestamp(title: &str) -> bool {
    let b = title.as_bytes();
    let mut i = 0;
    while let Some(off) = title[i..].find('[') {
        let mut j = i + off + 1;
        while b.get(j) == Some(&b' ') {
            j += 1;
        }
        let d1 = b[j..].iter().take_while(|c| c.is_ascii_digit()).count();
        if d1 > 0 && b.get(j + d1) == Some(&b'.') {
            let d2 = b[j + d1 + 1..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count();
            if d2 > 0 && b.get(j + d1 + 1 + d2) == Some(&b']') {
                return true;
            }
        }
        i += off + 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_compiles() {
        // Header presence is tracked in a u64 bitmask.
        assert!(families().len() > 20 && families().len() <= 64);
    }

    #[test]
    fn fill_placeholders() {
        assert_eq!(
            fill("a {1} b {3}", &["x".into(), "y".into(), "z".into()]),
            "a x b z"
        );
        assert_eq!(fill("{9}", &[]), "");
    }

    fn trace(frames: &[&str]) -> String {
        let mut t = String::from(
            "Kernel panic - not syncing: Asynchronous SError Interrupt\nCall trace:\n",
        );
        for f in frames {
            t.push_str(&format!(" {f}\n"));
        }
        t
    }

    #[test]
    fn serror_location_rules() {
        let at = |f: &str| Located::At(f.to_string());
        // The frame after the entry, whatever the panic path above it shows.
        assert_eq!(
            serror_location(&trace(&[
                "vpanic+0x1/0x2 (C)",
                "abort+0x0/0x4 (?)",
                "add_taint+0x0/0x8 (T)",
                "mystery_panic_helper+0x1/0x2",
                "do_serror+0x3c/0x70 (P)",
                "el1h_64_error_handler+0x30/0x48 (C)",
                "el1h_64_error+0x64/0x68",
                "stage2_map_walker+0x1/0x2 (P)",
                "kvm_pgtable_walk+0x1/0x2 (L)",
            ])),
            at("stage2_map_walker")
        );
        // Only the panic path and the entry are skipped after it: a driver's
        // own error handler can be where the SError hit.
        assert_eq!(
            serror_location(&trace(&[
                "el1h_64_error+0x64/0x68",
                "pcie_aer_error_handler+0x1/0x2",
            ])),
            at("pcie_aer_error_handler")
        );
        // Older kernels' entry.
        assert_eq!(
            serror_location(&trace(&[
                "do_serror+0x1/0x2",
                "el1_error+0x1/0x2",
                "gic_write_grpen1+0x1/0x2"
            ])),
            at("gic_write_grpen1")
        );
        // No entry in the trace: the first frame past the panic path.
        assert_eq!(
            serror_location(&trace(&[
                "dump_stack+0x1/0x2",
                "panic+0x1/0x2",
                "abort+0x0/0x4",
                "add_taint+0x0/0x8",
                "nmi_panic+0x1/0x2",
                "arm64_serror_panic+0x1/0x2",
                "do_serror+0x1/0x2",
                "kvm_handle_guest_serror+0x1/0x2",
                "handle_exit_early+0x1/0x2",
            ])),
            at("handle_exit_early")
        );
        // Trace cut right after the entry: the pc line.
        let text = format!(
            "SError Interrupt on CPU1, code 0xbf000000 -- SError\npc : vgic_v3_restore_state+0x1/0x2\n{}",
            trace(&["do_serror+0x1/0x2", "el1h_64_error+0x1/0x2"])
        );
        assert_eq!(serror_location(&text), at("vgic_v3_restore_state"));
        // ... and without one, nothing: truncated.
        assert_eq!(
            serror_location(&trace(&["do_serror+0x1/0x2", "el1h_64_error+0x1/0x2"])),
            Located::Unknown
        );
        // From user space: no kernel location, by the entry or by the pc.
        assert_eq!(
            serror_location(&trace(&[
                "do_serror+0x1/0x2",
                "el0t_64_error_handler+0x1/0x2",
                "el0t_64_error+0x1/0x2"
            ])),
            Located::Nowhere
        );
        assert_eq!(
            serror_location(&trace(&["do_serror+0x1/0x2", "el0t_32_error+0x1/0x2 (P)"])),
            Located::Nowhere
        );
        assert_eq!(
            serror_location(
                "SError Interrupt on CPU0, code 0xbf000000 -- SError\npc : 0000ffff8f1e2a40\nlr : 0000aaaab1c02230\n"
            ),
            Located::Nowhere
        );
        assert_eq!(
            serror_location("SError Interrupt on CPU0"),
            Located::Unknown
        );
        assert_eq!(serror_title(&[String::new()]), "SError Interrupt");
        assert_eq!(serror_title(&["f".to_string()]), "SError Interrupt in f");
    }

    #[test]
    fn kvm_builders() {
        assert_eq!(
            kvm_unsupported_fsc(&["0x24".into(), "0x30".into()]),
            "KVM: unsupported FSC 0x30 (TLB conflict abort)"
        );
        assert_eq!(
            kvm_host_message(&["Unsupported guest sys_reg access at: 8f5c [80000005]".into()]),
            "KVM: Unsupported guest sys_reg access"
        );
    }
}
