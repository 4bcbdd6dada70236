//! Title clean-up and dedupe signatures.
//!
//! Titles are built from text in the log, which may carry PIDs, addresses,
//! line numbers, CPU ids or `+0x1c/0x30` offsets.  Those differ between
//! boards, kernels and runs of the same bug, so titles get the usual
//! syzkaller-style placeholders (`ADDR`, `NUM`, `LINE`, `IP`), are limited to
//! printable ASCII and 120 bytes, and the signature goes one step further
//! (architecture-neutral, placeholders collapsed) so the server can group
//! findings across the farm.
//!
//! Regexes here only ever run on titles (short strings), never on the log.

use regex::Regex;
use std::sync::OnceLock;

const MAX_TITLE_LEN: usize = 120;

struct Replacement {
    re: Regex,
    with: &'static str,
}

fn title_replacements() -> &'static [Replacement] {
    static R: OnceLock<Vec<Replacement>> = OnceLock::new();
    R.get_or_init(|| {
        let r = |re: &str, with: &'static str| Replacement {
            re: Regex::new(re).expect("valid regex"),
            with,
        };
        vec![
            // Fuzzer process names carry their instance numbers.
            r(r"syz-executor\.?[0-9]+((/|:)[0-9]+)?", "syz-executor"),
            r(r"syzkaller[0-9]+((/|:)[0-9]+)?", "syzkaller"),
            // Anything that looks like an address.
            r(r"([^a-zA-Z0-9])(?:0x)?[0-9a-f]{6,}", "${1}ADDR"),
            r(r"([0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})", "IP"),
            // file.c:123 -> file.c:LINE
            r(r"(\.[A-Za-z0-9_]+)(:[0-9]+)+", "${1}:LINE"),
            // func+0x1c/0x30 -> func
            r(r"([a-zA-Z][a-zA-Z0-9_.]+)\+0x[0-9a-z]+/0x[0-9a-z]+", "${1}"),
            r(r"CPU#[0-9]+", "CPU"),
            // Free-standing decimal numbers (digits inside identifiers stay).
            r(r"([^A-Za-z0-9_])([0-9]+)([^A-Za-z0-9_]|$)", "${1}NUM${3}"),
            r(r"[0-9]{7,}", "NUM"),
        ]
    })
}

/// Normalise a freshly built title: placeholders for volatile tokens,
/// printable ASCII only, single spaces, at most 120 bytes.
pub(crate) fn clean_title(raw: &str) -> String {
    // Bound the work on pathological (garbage-filled) titles.
    let mut s: String = raw
        .chars()
        .take(1000)
        .filter_map(|c| match c {
            '\t' => Some(' '),
            c if (' '..='~').contains(&c) => Some(c),
            _ => None,
        })
        .collect();
    for rep in title_replacements() {
        // Overlapping matches (e.g. "0,1,2") need a few passes.
        for _ in 0..8 {
            let next = rep.re.replace_all(&s, rep.with);
            if next == s {
                break;
            }
            s = next.into_owned();
        }
    }
    let mut out = String::with_capacity(s.len().min(MAX_TITLE_LEN));
    let mut prev_space = true;
    for c in s.chars().take(MAX_TITLE_LEN) {
        if c == ' ' {
            if prev_space {
                continue;
            }
            prev_space = true;
        } else {
            prev_space = false;
        }
        out.push(c);
    }
    out.trim().to_string()
}

/// Dedupe signature for a (clean) title: same bug, same signature, across
/// boards, kernels, architectures and addresses.
pub fn signature_of(title: &str) -> String {
    let base = clean_title(title);
    let mut words: Vec<String> = Vec::new();
    for w in base.split(' ') {
        let w = strip_symbol_suffix(w);
        let w = strip_syscall_arch(w);
        // Any remaining bare hex/decimal token is volatile.
        let is_number = !w.is_empty()
            && (w.bytes().all(|b| b.is_ascii_digit())
                || w.strip_prefix("0x")
                    .is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit())));
        let w = if is_number || w == "ADDR" {
            "NUM".to_string()
        } else {
            w.to_string()
        };
        if words.last().is_some_and(|p| p == "NUM") && w == "NUM" {
            continue;
        }
        words.push(w);
    }
    words.join(" ")
}

/// `foo.isra.0` / `foo.constprop.3` / `foo.cold` -> `foo`.
fn strip_symbol_suffix(w: &str) -> &str {
    for marker in [".isra.", ".constprop.", ".part.", ".cold", ".llvm."] {
        if let Some(pos) = w.find(marker)
            && pos > 0
        {
            return &w[..pos];
        }
    }
    w
}

/// `__arm64_sys_ioctl` / `__x64_sys_ioctl` -> `sys_ioctl`.
fn strip_syscall_arch(w: &str) -> &str {
    for p in ["__arm64_", "__x64_", "__ia32_"] {
        if let Some(rest) = w.strip_prefix(p) {
            return rest;
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders() {
        assert_eq!(
            clean_title("kernel panic: VFS: Unable to mount root fs on unknown-block(0,0)"),
            "kernel panic: VFS: Unable to mount root fs on unknown-block(NUM,NUM)"
        );
        assert_eq!(
            clean_title("WARNING in cfg80211_foo"),
            "WARNING in cfg80211_foo"
        );
        assert_eq!(
            clean_title("BUG: at ffffffff81234567 foo+0x1/0x20"),
            "BUG: at ADDR foo"
        );
        assert_eq!(clean_title("x\tfile.c:123  y"), "x file.c:LINE y");
    }

    #[test]
    fn signatures() {
        assert_eq!(signature_of("WARNING in foo.isra.3"), "WARNING in foo");
        assert_eq!(
            signature_of("KVM: run failed: Bad address"),
            "KVM: run failed: Bad address"
        );
        assert_eq!(
            signature_of("INFO: task hung in __arm64_sys_sync"),
            "INFO: task hung in sys_sync"
        );
        assert_eq!(signature_of("BUG: x 0x1234 77"), "BUG: x NUM");
    }
}
