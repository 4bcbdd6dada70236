//! Turning raw console bytes into clean, prefix-free lines.
//!
//! Kernel output reaches us through serial consoles, `dmesg` and QEMU's
//! stderr, so a "line" may carry any of: a `[  12.345678]` timestamp, a
//! `[ T1234]` / `[ C3]` caller tag (CONFIG_PRINTK_CALLER), a `<4>` log level,
//! a `** N printk messages dropped **` notice, a `login: ` prompt that got
//! glued in front, CR line endings, ANSI colour codes, NUL bytes and other
//! serial garbage.  Title extraction wants none of that, but it does want the
//! caller tag: with CONFIG_PRINTK_CALLER several CPUs' reports interleave and
//! the tag is the only way to keep one report's lines together.
//!
//! Everything here works on one line at a time and never allocates for the
//! common clean-ASCII case beyond the returned `String`.

use std::borrow::Cow;

/// Where a line came from, as far as its printk prefix tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Context {
    /// No timestamp at all (raw serial output, QEMU stderr, mail-pasted text).
    Bare,
    /// A `[ts]` timestamp without a caller tag.
    Console,
    /// `[ts][ T<pid>]`: printed by a task.
    Task(u32),
    /// `[ts][ C<cpu>]`: printed from interrupt context on a CPU.
    Cpu(u32),
}

impl Context {
    /// Whether the line had a printk timestamp (syzkaller calls such lines
    /// "with context"; only they have questionable frames stripped).
    pub(crate) fn has_prefix(self) -> bool {
        !matches!(self, Context::Bare)
    }

    /// True for the per-task / per-CPU tagged contexts.
    pub(crate) fn is_tagged(self) -> bool {
        matches!(self, Context::Task(_) | Context::Cpu(_))
    }
}

/// One cleaned console line.  The text borrows from the log when the raw
/// line needed no cleaning (the common case), so reading report windows
/// does not allocate per line.
#[derive(Debug, Clone)]
pub(crate) struct Line<'a> {
    pub context: Context,
    /// The message with the printk prefix removed.
    pub text: Cow<'a, str>,
    /// An x86 `? func+0x..` frame (or a PowerPC `(unreliable)` one): the
    /// unwinder is not sure it belongs to the stack, so titles ignore it.
    pub questionable: bool,
}

/// printk never emits more than ~1 KiB per line; anything longer is garbage
/// (or several lines glued by a broken console) and only its start is read,
/// which keeps the per-line work bounded.
pub(crate) const MAX_LINE: usize = 4096;

/// Parse one raw line (without its `\n`).
pub(crate) fn parse_line(raw: &[u8]) -> Line<'_> {
    let raw = &raw[..raw.len().min(MAX_LINE)];
    let cleaned = clean(raw);
    let (context, body_start) = split_prefix(&cleaned);
    let mut text: Cow<'_, str> = match (cleaned, body_start) {
        (Cow::Borrowed(s), Some(start)) => Cow::Borrowed(&s[start..]),
        (Cow::Owned(s), Some(start)) => Cow::Owned(s[start..].to_string()),
        (c, None) => c,
    };
    let mut questionable = false;
    if context.has_prefix() && !text.contains("<EOI>") {
        if let Some(pos) = text.find(" ? ") {
            text = match text {
                Cow::Borrowed(s) => Cow::Borrowed(&s[pos + 2..]),
                Cow::Owned(s) => Cow::Owned(s[pos + 2..].to_string()),
            };
            questionable = true;
        } else if text.ends_with(" (unreliable)") {
            let len = text.len() - " (unreliable)".len();
            text = match text {
                Cow::Borrowed(s) => Cow::Borrowed(&s[..len]),
                Cow::Owned(mut s) => {
                    s.truncate(len);
                    Cow::Owned(s)
                }
            };
            questionable = true;
        }
    }
    Line {
        context,
        text,
        questionable,
    }
}

/// Just the message of a raw line (prefix removed), for checking candidate
/// lines cheaply.
pub(crate) fn message(raw: &[u8]) -> Cow<'_, str> {
    let raw = &raw[..raw.len().min(MAX_LINE)];
    match clean(raw) {
        Cow::Borrowed(s) => Cow::Borrowed(split_prefix(s).1.map_or(s, |st| &s[st..])),
        Cow::Owned(s) => match split_prefix(&s).1 {
            Some(st) => Cow::Owned(s[st..].to_string()),
            None => Cow::Owned(s),
        },
    }
}

/// Remove CR, NUL, ANSI escape sequences and other control characters, and
/// decode the rest as (lossy) UTF-8.
pub(crate) fn clean(raw: &[u8]) -> Cow<'_, str> {
    let needs_work = raw.iter().any(|&b| b < 0x20 && b != b'\t' || b == 0x7f);
    if !needs_work {
        return String::from_utf8_lossy(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == 0x1b {
            // ESC [ params final-byte  (CSI), or ESC + one byte.
            if raw.get(i + 1) == Some(&b'[') {
                i += 2;
                while i < raw.len() && !(0x40..=0x7e).contains(&raw[i]) {
                    i += 1;
                }
                i += 1;
            } else {
                i += 2;
            }
            continue;
        }
        if (b < 0x20 && b != b'\t') || b == 0x7f {
            i += 1;
            continue;
        }
        out.push(b);
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

/// Recognise the printk prefix.  Returns the context and, when there was a
/// prefix, the byte offset where the message starts.
pub(crate) fn split_prefix(line: &str) -> (Context, Option<usize>) {
    let bytes = line.as_bytes();
    // Serial garbage decoded as U+FFFD may sit in front of the timestamp.
    let mut start = 0;
    while line[start..].starts_with('\u{FFFD}') {
        start += '\u{FFFD}'.len_utf8();
    }
    for cand in prefix_starts(line, start).into_iter().flatten() {
        if let Some((ctx, end)) = parse_timestamp_prefix(bytes, cand) {
            return (ctx, Some(end));
        }
    }
    (Context::Bare, None)
}

/// Places where a timestamp prefix may begin: the start of the line, after a
/// dropped-messages notice, or after a `login: ` prompt glued in front.
fn prefix_starts(line: &str, start: usize) -> [Option<usize>; 2] {
    let mut pos = start;
    let rest = &line[start..];
    if let Some(after) = rest.strip_prefix("** ")
        && let Some(end) = after.find(" printk messages dropped ** ")
        && after[..end].bytes().all(|b| b.is_ascii_digit())
        && end > 0
    {
        pos = start + 3 + end + " printk messages dropped ** ".len();
    }
    let login = line[pos..]
        .rfind(" login: ")
        .map(|i| pos + i + " login: ".len());
    [Some(pos), login]
}

/// `(<N>)?[ *D+.D+]([ *(T|C)D+])? ` starting at `at`.
fn parse_timestamp_prefix(b: &[u8], mut i: usize) -> Option<(Context, usize)> {
    if b.get(i) == Some(&b'<') {
        let digits = count_digits(b, i + 1);
        if digits > 0 && b.get(i + 1 + digits) == Some(&b'>') {
            i += digits + 2;
        }
    }
    if b.get(i) != Some(&b'[') {
        return None;
    }
    i += 1;
    while b.get(i) == Some(&b' ') {
        i += 1;
    }
    let int = count_digits(b, i);
    if int == 0 || b.get(i + int) != Some(&b'.') {
        return None;
    }
    i += int + 1;
    let frac = count_digits(b, i);
    if frac == 0 || b.get(i + frac) != Some(&b']') {
        return None;
    }
    i += frac + 1;
    let mut ctx = Context::Console;
    if b.get(i) == Some(&b'[') {
        let mut j = i + 1;
        while b.get(j) == Some(&b' ') {
            j += 1;
        }
        let kind = b.get(j).copied();
        if kind == Some(b'T') || kind == Some(b'C') {
            let n = count_digits(b, j + 1);
            if n > 0 && b.get(j + 1 + n) == Some(&b']') {
                let id = parse_u32(&b[j + 1..j + 1 + n]);
                ctx = if kind == Some(b'T') {
                    Context::Task(id)
                } else {
                    Context::Cpu(id)
                };
                i = j + 1 + n + 1;
            }
        }
    }
    if b.get(i) == Some(&b' ') {
        Some((ctx, i + 1))
    } else if i == b.len() {
        // A bare timestamp on an otherwise empty line.
        Some((ctx, i))
    } else {
        None
    }
}

fn count_digits(b: &[u8], from: usize) -> usize {
    b.get(from..)
        .map_or(0, |s| s.iter().take_while(|c| c.is_ascii_digit()).count())
}

fn parse_u32(digits: &[u8]) -> u32 {
    digits.iter().fold(0u32, |acc, d| {
        acc.saturating_mul(10).saturating_add(u32::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let l = parse_line(b"[   12.345678] BUG: foo");
        assert_eq!(l.context, Context::Console);
        assert_eq!(l.text, "BUG: foo");
        let l = parse_line(b"[  12.3][ T1234] WARNING: x");
        assert_eq!(l.context, Context::Task(1234));
        assert_eq!(l.text, "WARNING: x");
        let l = parse_line(b"<4>[  12.3][    C1] x");
        assert_eq!(l.context, Context::Cpu(1));
        let l = parse_line(b"syzkaller login: [  12.3] x");
        assert_eq!(l.context, Context::Console);
        assert_eq!(l.text, "x");
        let l = parse_line(b"\x1b[31m[  1.0] red\x1b[0m\r");
        assert_eq!(l.text, "red");
        let l = parse_line(b"\0\0[  1.0] nul");
        assert_eq!(l.text, "nul");
        let l = parse_line(b"plain text");
        assert_eq!(l.context, Context::Bare);
        let l = parse_line(b"[  1.0]  ? foo+0x1/0x2");
        assert!(l.questionable);
        assert_eq!(l.text, " foo+0x1/0x2");
    }
}
