//! Stack frames: recognising frame lines and choosing the culprit frame.
//!
//! A title such as `WARNING in stage2_map_walk_leaf` names the function that
//! is most likely to blame.  The top of a kernel stack is usually generic
//! machinery (printk, dump_stack, the WARN/BUG trap path, locking primitives,
//! sanitizer runtimes, allocators, string helpers...), so we walk the frames
//! and skip anything on a "generic" list.  The list mirrors syzkaller's
//! conventions so that our titles group bugs the way syzbot does; it is kept
//! here as plain data in a tiny pattern syntax:
//!
//! * `name`   — the frame contains `name`
//! * `^name`  — the frame starts with `name`
//! * `name$`  — the frame ends with `name`
//! * `^name$` — the frame is exactly `name`
//!
//! Stalls and hung tasks need a different picker: the looping or blocked
//! code shows up at a random depth, so we look for an "anchor" (syscall
//! entry, workqueue dispatch, ...) and name the frame just above it.

use aho_corasick::AhoCorasick;
use std::sync::OnceLock;

/// One skip / anchor rule in the mini pattern syntax described above.
#[derive(Debug, Clone)]
pub(crate) enum Rule {
    Contains(&'static str),
    Prefix(&'static str),
    Suffix(&'static str),
    Exact(&'static str),
    Custom(fn(&str) -> bool),
}

impl Rule {
    pub(crate) fn parse(pat: &'static str) -> Rule {
        let anchored_start = pat.starts_with('^');
        let anchored_end = pat.len() > 1 && pat.ends_with('$');
        let core = &pat[usize::from(anchored_start)..pat.len() - usize::from(anchored_end)];
        match (anchored_start, anchored_end) {
            (true, true) => Rule::Exact(core),
            (true, false) => Rule::Prefix(core),
            (false, true) => Rule::Suffix(core),
            (false, false) => Rule::Contains(core),
        }
    }

    pub(crate) fn matches(&self, frame: &str) -> bool {
        match self {
            Rule::Contains(s) => frame.contains(s),
            Rule::Prefix(s) => frame.starts_with(s),
            Rule::Suffix(s) => frame.ends_with(s),
            Rule::Exact(s) => frame == *s,
            Rule::Custom(f) => f(frame),
        }
    }
}

pub(crate) fn rules(pats: &[&'static str]) -> Vec<Rule> {
    pats.iter().map(|p| Rule::parse(p)).collect()
}

/// A compiled list of rules: all `Contains` patterns go through one
/// Aho–Corasick pass, so checking a frame against hundreds of generic names
/// costs one scan of the (short) frame name.
pub(crate) struct RuleSet {
    contains: Option<AhoCorasick>,
    others: Vec<Rule>,
}

impl RuleSet {
    pub(crate) fn new(rules: Vec<Rule>) -> RuleSet {
        let mut needles = Vec::new();
        let mut others = Vec::new();
        for r in rules {
            match r {
                Rule::Contains(s) => needles.push(s),
                other => others.push(other),
            }
        }
        let contains = (!needles.is_empty())
            .then(|| AhoCorasick::new(&needles).expect("skip patterns build an automaton"));
        RuleSet { contains, others }
    }

    pub(crate) fn matches(&self, frame: &str) -> bool {
        self.contains.as_ref().is_some_and(|ac| ac.is_match(frame))
            || self.others.iter().any(|r| r.matches(frame))
    }
}

/// Frames that are never the culprit, whatever the report type.
const GENERIC_FRAMES: &[&str] = &[
    // Sanitizer runtimes and their reporting paths.
    "__sanitizer",
    "__asan",
    "kasan",
    "hwasan",
    "__msan",
    "kmsan",
    "kcsan_setup_watchpoint",
    "check_memory_region",
    "check_heap_object",
    "check_object",
    "read_word_at_a_time",
    "print_address_description",
    "print_report",
    "__fortify_report",
    // Panic / BUG / WARN machinery and stack dumping.
    "panic",
    "invalid_op",
    "report_bug",
    "fixup_bug",
    "print_usage_bug",
    "do_error",
    "_trap$",
    "do_trap",
    "show_stack",
    "dump_stack",
    "walk_stack",
    "dump_backtrace",
    "warn_slowpath",
    "warn_alloc",
    "warn_bogus",
    "__warn",
    "print_tainted",
    "^get_taint$",
    "program_check_exception",
    "program_check_common",
    "stack_trace_consume_entry",
    "arch_stack_walk",
    "stack_trace_save",
    "assertfail",
    // arm64 exception entry for kernel faults.
    "do_kernel_fault",
    "do_translation_fault",
    "do_mem_abort",
    "el1_abort",
    "el1h_64_sync",
    // Allocators and the page cache.
    "alloc_page",
    "krealloc",
    "kmem_cache",
    "allocate_slab",
    "__alloc_frozen_pages_noprof",
    "folio_alloc",
    "folio_unlock",
    "filemap_alloc_folio",
    "__filemap_get_folio",
    "find_or_create_page",
    "do_read_cache_folio",
    "read_cache_page",
    "pagecache_get_page",
    "grab_cache_page_write_begin",
    "slab_",
    "^kfree$",
    "^kvfree$",
    "kfree_skb",
    "xas_start",
    "xas_load",
    "xas_find",
    "find_lock_entries",
    "truncate_inode_pages_range",
    "__phys_addr",
    // Debug objects, lockdep and locking primitives.
    "debug_object",
    "timer_is_static_object",
    "work_is_static_object",
    "__might_fault",
    "print_unlock",
    "imbalance_bug",
    "lockdep",
    "bh_enable",
    "bh_disable",
    "perf_trace",
    "lock_acquire",
    "lock_release",
    "lock_class",
    "mark_lock",
    "reacquire_held_locks",
    "mark_held_locks",
    "raw_spin_rq",
    "spin_lock",
    "spin_trylock",
    "spin_unlock",
    "read_lock",
    "read_trylock",
    "write_lock",
    "write_trylock",
    "read_unlock",
    "write_unlock",
    "^down$",
    "down_read",
    "down_write",
    "down_trylock",
    "up_read",
    "up_write",
    "^mutex_",
    "^__mutex_",
    "^rt_mutex_",
    "owner_on_cpu",
    "osq_lock",
    "osq_unlock",
    "set_bit",
    "clear_bit",
    "change_bit",
    "test_bit",
    "__wake_up",
    "^refcount_",
    "^kref_",
    "ref_tracker",
    "seqprop_assert",
    "trace_hardirq",
    "trace_softirq",
    "^lock_page",
    "^unlock_page",
    "cleanup_srcu_struct",
    "lock_timer_base",
    // String, memory and user-copy helpers.
    "memcpy",
    "memcmp",
    "memset",
    "memchr",
    "memmove",
    "memdup",
    "strcmp",
    "strncmp",
    "strcpy",
    "strlcpy",
    "strncpy",
    "strscpy",
    "strlen",
    "strstr",
    "strnstr",
    "strnlen",
    "strchr",
    "strdup",
    "strndup",
    "copy_to_user",
    "copy_from_user",
    "copy_to_iter",
    "copy_from_iter",
    "copy_page_to_iter",
    "copy_page_from_iter",
    "copy_folio_to_iter",
    "^copyin$",
    "^copyout$",
    "put_user",
    "get_user",
    "might_fault",
    "might_sleep",
    "__might_resched",
    "extract_user_to_sg",
    "extract_iter_to_sg",
    "hex_dump_to_buffer",
    "print_hex_dump",
    "crc_itu_t",
    "rhashtable_lookup",
    // Lists and trees.
    "list_add",
    "list_del",
    "list_replace",
    "list_move",
    "list_splice",
    "^rb_",
    "^__rb_",
    "^klist_",
    // Formatting and printing.
    "_indirect_thunk_",
    "string",
    "pointer",
    "snprintf",
    "scnprintf",
    "kasprintf",
    "kvasprintf",
    "printk",
    "va_format",
    "dev_info",
    "dev_notice",
    "dev_warn",
    "dev_err",
    "dev_alert",
    "dev_crit",
    "dev_emerg",
    // Timers, workqueues, waiting.
    "del_timer",
    "flush_work",
    "__cancel_work_timer",
    "cancel_work_sync",
    "try_to_grab_pending",
    "flush_workqueue",
    "drain_workqueue",
    "destroy_workqueue",
    "queue_work",
    "insert_work",
    "__queue_delayed_work",
    "queue_delayed_work_on",
    "finish_wait",
    "kthread_stop",
    "^complete$",
    "wait_for_completion",
    "__timer_delete_sync",
    "sk_stop_timer_sync",
    "__mod_timer",
    // Device model teardown paths that only relay a bug.
    "kobject_",
    "add_uevent_var",
    "get_device_parent",
    "device_add",
    "device_del",
    "device_unregister",
    "device_destroy",
    "device_release",
    "devres_release_all",
    "hwrng_unregister",
    "i2c_del_adapter",
    "__unregister_client",
    "device_for_each_child",
    "rollback_registered",
    "unregister_netdev",
    "sysfs_remove",
    "device_remove_file",
    "tty_unregister_device",
    "^put_device$",
    "dummy_urb_enqueue",
    "usb_kill_urb",
    "usb_kill_anchored_urbs",
    "usb_control_msg",
    "usb_hcd_submit_urb",
    "usb_submit_urb",
    // MMIO accessors.
    "readb$",
    "readw$",
    "readl$",
    "readq$",
    "writeb$",
    "writew$",
    "writel$",
    "writeq$",
    "logic_in",
    "logic_out",
    // VFS reference helpers.
    "^iput$",
    "^iput_final$",
    "^ihold$",
    "drop_nlink",
    "fast_dput",
    "dput",
    "ida_free",
    // Buffer-head helper whose WARN always blames its caller.
    "^mark_buffer_dirty$",
];

fn generic_rules() -> &'static RuleSet {
    static RULES: OnceLock<RuleSet> = OnceLock::new();
    RULES.get_or_init(|| {
        let mut r = rules(GENERIC_FRAMES);
        r.push(Rule::Custom(is_alloc_wrapper));
        r.push(Rule::Custom(is_atomic_op));
        r.push(Rule::Custom(is_crc_helper));
        r.push(Rule::Custom(is_once_nocheck));
        RuleSet::new(r)
    })
}

/// `kmalloc`, `kzalloc`, `kvcalloc`, `vmalloc`...
fn is_alloc_wrapper(f: &str) -> bool {
    f.contains("malloc") || f.contains("zalloc") || f.contains("calloc")
}

/// `atomic_inc`, `atomic64_fetch_add`, `arch_atomic_try_cmpxchg`...
fn is_atomic_op(f: &str) -> bool {
    const OPS: &[&str] = &[
        "dec", "inc", "read", "set", "or", "xor", "and", "add", "sub", "fetch", "xchg", "cmpxchg",
        "try",
    ];
    let mut rest = f;
    while let Some(pos) = rest.find("atomic") {
        let after = &rest[pos + "atomic".len()..];
        let after = after.strip_prefix("64").unwrap_or(after);
        if let Some(op) = after.strip_prefix('_')
            && OPS.iter().any(|o| op.starts_with(o))
        {
            return true;
        }
        rest = &rest[pos + 1..];
    }
    false
}

/// `crc32_le`, `crc16`...
fn is_crc_helper(f: &str) -> bool {
    f.strip_prefix("crc")
        .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
}

/// `__read_once_size_nocheck` and friends.
fn is_once_nocheck(f: &str) -> bool {
    ["read_once_", "write_once_"]
        .iter()
        .any(|p| f.find(p).is_some_and(|i| f[i..].contains("nocheck")))
}

/// Is this frame generic for every report type?
pub(crate) fn is_generic(frame: &str) -> bool {
    generic_rules().matches(frame)
}

/// Syscall wrappers differ per architecture (`__x64_sys_`, `__arm64_sys_`,
/// `__se_sys_`...); strip one so arm64 and x86 reports share a title.
pub(crate) fn strip_syscall_prefix(frame: &str) -> &str {
    const PREFIXES: &[&str] = &[
        "SYSC_",
        "SyS_",
        "sys_",
        "__x64_",
        "__ia32_",
        "__arm64_",
        "____sys_",
        "___sys_",
        "__sys_",
        "__se_",
        "__se_sys_",
        "__do_sys_",
        "compat_SYSC_",
        "compat_SyS_",
        "ksys_",
    ];
    let mut best = frame;
    for p in PREFIXES {
        if let Some(rest) = frame.strip_prefix(p)
            && rest.len() < best.len()
        {
            best = rest;
        }
    }
    best
}

/// Parse a stack-trace line and return the function name(s) it names.
///
/// Accepted shapes (after the printk prefix was removed):
/// * `  func+0x1c/0x30`, `  func.cold+0x..`, `  func+0x1c/0x30 (P)` (arm64)
/// * ` [<ffffffff8123>] func+0x..` / ` [<..>] [<..>] func+0x..`
/// * `[<80117e24>] (do_futex) from [<8010f00>] (sys_futex+0x..)` (arm32) —
///   both functions are returned.
pub(crate) fn parse_frame_line(line: &str) -> Option<(&str, Option<&str>)> {
    let s = line.trim_start_matches(' ');
    let mut rest = s;
    for _ in 0..2 {
        match skip_pc(rest) {
            Some(after) if after.starts_with(' ') => rest = &after[1..],
            _ => break,
        }
    }
    if let Some(f) = func_token(rest) {
        return Some((f, None));
    }
    arm32_frame(s)
}

/// `[<hex>]`, `[hex]`, `[<0xhex>]`: return what follows.
fn skip_pc(s: &str) -> Option<&str> {
    let mut r = s.strip_prefix('[')?;
    r = r.strip_prefix('<').unwrap_or(r);
    r = r.strip_prefix("0x").unwrap_or(r);
    let n = r
        .bytes()
        .take_while(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        .count();
    if n == 0 {
        return None;
    }
    r = &r[n..];
    r = r.strip_prefix('>').unwrap_or(r);
    r.strip_prefix(']')
}

/// `[A-Za-z0-9_]+` immediately followed by `.` or `+`.
fn func_token(s: &str) -> Option<&str> {
    let n = s
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count();
    if n == 0 {
        return None;
    }
    match s.as_bytes().get(n) {
        Some(b'.') | Some(b'+') => Some(&s[..n]),
        _ => None,
    }
}

fn arm32_frame(s: &str) -> Option<(&str, Option<&str>)> {
    let r = skip_pc(s)?;
    let r = r.strip_prefix(" (")?;
    let n = r
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.')
        .count();
    if n == 0 {
        return None;
    }
    let first = &r[..n];
    let r = r[n..].strip_prefix(") from ")?;
    let r = skip_pc(r)?;
    let r = r.strip_prefix(" (")?;
    let second = func_token(r)?;
    Some((first, Some(second)))
}

/// Lines that start a new stack trace (and so end the one being read).
pub(crate) fn is_stack_start(line: &str) -> bool {
    stack_start_pos(line).is_some()
}

/// Position of the first stack-trace keyword in `text`, for each keyword
/// kind in a fixed order (used by the corruption check, which looks at each
/// kind separately).
pub(crate) fn stack_start_kinds() -> &'static [fn(&str) -> Option<usize>] {
    &[
        |t| find_any(t, &["Call Trace", "Call trace"]),
        |t| t.find("Allocated:"),
        |t| find_task_keyword(t, "Allocated by task "),
        |t| t.find("Freed:"),
        |t| find_task_keyword(t, "Freed by task "),
        find_backtrace_keyword,
        |t| t.find("Backtrace:"),
        |t| t.find("Uninit was stored to memory at"),
    ]
}

fn stack_start_pos(line: &str) -> Option<usize> {
    static KEYS: OnceLock<AhoCorasick> = OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        AhoCorasick::new([
            "Call Trace",
            "Call trace",
            "Allocated",
            "Freed",
            " backtrace",
            "Backtrace:",
            "Uninit was stored",
        ])
        .expect("stack keywords build an automaton")
    });
    if !keys.is_match(line) {
        return None;
    }
    stack_start_kinds().iter().filter_map(|f| f(line)).min()
}

fn find_any(t: &str, pats: &[&str]) -> Option<usize> {
    pats.iter().filter_map(|p| t.find(p)).min()
}

/// `Allocated by task 123:`
fn find_task_keyword(t: &str, kw: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = t[from..].find(kw) {
        let at = from + i;
        let digits = &t[at + kw.len()..];
        let n = digits.bytes().take_while(u8::is_ascii_digit).count();
        if n > 0 && digits[n..].starts_with(':') {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// ` backtrace:` or ` backtrace (crc 1234abcd):`, but not `stack backtrace:`.
fn find_backtrace_keyword(t: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = t[from..].find(" backtrace") {
        let at = from + i;
        let after = &t[at + " backtrace".len()..];
        let tail_ok = after.starts_with(':')
            || after.strip_prefix(" (crc ").is_some_and(|r| {
                let n = r.bytes().take_while(u8::is_ascii_hexdigit).count();
                r[n..].starts_with("):")
            });
        let before_ok = at > 0 && t.as_bytes()[at - 1] != b'k';
        if tail_ok && before_ok {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// Fault-injection stacks get mixed into reports; seeing one inside a trace
/// means the frames we collect may belong to it.
pub(crate) fn is_fault_injection_frame(line: &str) -> bool {
    let rest = match skip_pc(line.strip_prefix(' ').unwrap_or(line)) {
        Some(r) => r,
        None => line,
    };
    let Some(rest) = rest.strip_prefix(" should_fail") else {
        return false;
    };
    let rest = rest.strip_prefix("slab").unwrap_or(rest);
    let n = rest
        .bytes()
        .take_while(|b| *b == b'.' || b.is_ascii_lowercase() || b.is_ascii_digit())
        .count();
    rest[n..].starts_with("+0x") && (n == 0 || rest.starts_with('.'))
}

/// How the culprit is chosen among the non-skipped frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pick {
    /// The first frame.
    First,
    /// Stall / lockup: the frame above the first dispatch anchor.
    Stall,
    /// Hung task: group by what the task waits for.
    HungTask,
}

/// Frames that dispatch work; in a stall the frame just above one of these
/// identifies the looping code better than the (random) top frame.
const STALL_ANCHORS: &[&str] = &[
    "process_one_work",
    "do_syscall_",
    "do_fast_syscall_",
    "sysenter_dispatch",
    "tracesys_phase2",
    "el0_svc_handler",
    "invoke_syscall",
    "ret_fast_syscall",
    "netif_receive_skb",
    "do_softirq",
    "call_timer_fn",
    "_run_timers",
    "run_timer_softirq",
    "hrtimer_run",
    "run_ksoftirqd",
    "smpboot_thread_fn",
    "^kthread$",
    "start_secondary",
    "cpu_startup_entry",
    "ret_from_fork",
    "vfs_write",
    "vfs_read",
    "vfs_iter_read",
    "vfs_iter_write",
    "do_iter_read",
    "do_iter_write",
    "call_read_iter",
    "call_write_iter",
    "new_sync_read",
    "new_sync_write",
    "vfs_ioctl",
    "ksys_ioctl",
    "compat_ioctl",
    "compat_sys_ioctl",
    "blkdev_driver_ioctl",
    "blkdev_ioctl",
    "do_iter_readv_writev",
    "^call_mmap",
    "mmap_region",
    "do_mmap",
    "do_dentry_open",
    "vfs_open",
    "^sock_sendmsg",
    "^sock_recvmsg",
    "^sock_release",
    "^__sock_release",
    "^setsockopt$",
    "kernel_setsockopt",
    "sock_common_setsockopt",
    "^listen$",
    "kernel_listen",
    "sk_common_release",
    "^sock_mmap",
    "^accept$",
    "kernel_accept",
    "^sock_do_ioctl",
    "^sock_ioctl",
    "^compat_sock_ioctl",
    "^nfnetlink_rcv_msg",
    "^rtnetlink_rcv_msg",
    "^netlink_dump",
    "^socketpair",
    "^connect",
    "^ioctl",
    "^sys_socketpair",
    "^sys_connect",
    "^sys_ioctl",
    "__do_fault",
    "do_page_fault",
    "^page_fault$",
    "__fput",
    "task_work_run",
    "exit_to_usermode",
    "smp_call_function",
    "tasklet_action",
    "tasklet_hi_action",
];

fn stall_anchor_rules() -> &'static RuleSet {
    static RULES: OnceLock<RuleSet> = OnceLock::new();
    RULES.get_or_init(|| RuleSet::new(rules(STALL_ANCHORS)))
}

/// Pick the culprit among `frames` (already filtered and prefix-stripped).
/// Returns the chosen name and its index.
pub(crate) fn pick(frames: &[&str], how: Pick) -> Option<(String, usize)> {
    if frames.is_empty() {
        return None;
    }
    match how {
        Pick::First => Some((frames[0].to_string(), 0)),
        Pick::Stall => {
            let (mut prev, mut prev_idx) = (frames[0], 0);
            for (i, f) in frames.iter().enumerate() {
                if stall_anchor_rules().matches(f) {
                    if f.contains("smp_call_function") {
                        return Some(("smp_call_function".to_string(), i));
                    }
                    return Some((prev.to_string(), prev_idx));
                }
                prev = f;
                prev_idx = i;
            }
            None
        }
        Pick::HungTask => {
            // Hangs on RCU grace periods or the RTNL lock are victims of one
            // root cause each: bucket them together.
            for (i, f) in frames.iter().enumerate() {
                if f.contains("rtnl_lock") {
                    return Some((f.to_string(), i));
                }
                if [
                    "synchronize_rcu",
                    "synchronize_srcu",
                    "synchronize_net",
                    "synchronize_sched",
                ]
                .iter()
                .any(|a| f.contains(a))
                {
                    return Some(("synchronize_rcu".to_string(), i));
                }
            }
            const WAITING: &[&str] = &[
                "sched",
                "_lock",
                "_slowlock",
                "down",
                "rwsem",
                "completion",
                "kthread",
                "wait",
                "synchronize",
                "context_switch",
                "__switch_to",
                "cancel_delayed_work",
                "rcu_barrier",
            ];
            frames
                .iter()
                .enumerate()
                .find(|(_, f)| !WAITING.iter().any(|w| f.contains(w)))
                .map(|(i, f)| (f.to_string(), i))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_lines() {
        assert_eq!(
            parse_frame_line("  foo_bar+0x1c/0x30"),
            Some(("foo_bar", None))
        );
        assert_eq!(
            parse_frame_line(" [<ffffffff81>] foo.isra.3+0x1/0x2"),
            Some(("foo", None))
        );
        assert_eq!(parse_frame_line(" foo+0x1/0x2 (P)"), Some(("foo", None)));
        assert_eq!(
            parse_frame_line("[<80117e24>] (do_futex) from [<8010f00>] (sys_futex+0x1/0x2)"),
            Some(("do_futex", Some("sys_futex")))
        );
        assert_eq!(parse_frame_line("RIP: 0010:foo+0x1/0x2"), None);
        assert_eq!(parse_frame_line(" ? foo+0x1/0x2"), None);
    }

    #[test]
    fn generic() {
        assert!(is_generic("dump_stack_lvl"));
        assert!(is_generic("kmalloc_trace"));
        assert!(is_generic("atomic_inc"));
        assert!(is_generic("mutex_lock_nested"));
        assert!(!is_generic("stage2_map_walk_leaf"));
        assert!(!is_generic("kvm_handle_guest_abort"));
    }

    #[test]
    fn syscall_prefix() {
        assert_eq!(strip_syscall_prefix("__se_sys_ioctl"), "ioctl");
        assert_eq!(strip_syscall_prefix("__arm64_sys_ioctl"), "sys_ioctl");
        assert_eq!(strip_syscall_prefix("foo"), "foo");
    }

    #[test]
    fn stack_keywords() {
        assert!(is_stack_start("Call Trace:"));
        assert!(is_stack_start("Call trace:"));
        assert!(is_stack_start("Allocated by task 12:"));
        assert!(is_stack_start("  backtrace:"));
        assert!(!is_stack_start("stack backtrace:"));
        assert!(is_fault_injection_frame(" should_failslab+0x5/0x10"));
        assert!(is_fault_injection_frame(
            " [<ffff>] should_fail.cold+0x5/0x10"
        ));
    }
}
