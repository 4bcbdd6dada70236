//! Rust symbol demangling for stack frames.
//!
//! Kernels with Rust drivers (Android binder, ashmem...) print frames such as
//! `_RNvMs3_NtCshgDM7dBCdno_11rust_binder7processNtB5_7Process10update_ref`.
//! Titles should name `<rust_binder::process::Process>::update_ref`, which is
//! also what syzbot shows.  This is a small demangler for the v0 scheme
//! (paths, impls, trait impls, backrefs, common types) and the legacy
//! `_ZN..E` scheme; generic arguments are parsed but not printed, and any
//! construct it does not know makes it give up and keep the raw name.

/// Demangle `sym` if it is a Rust symbol; `None` otherwise or on failure.
pub(crate) fn demangle(sym: &str) -> Option<String> {
    if let Some(rest) = sym.strip_prefix("_R") {
        let mut p = V0 {
            s: rest.as_bytes(),
            i: 0,
            depth: 0,
        };
        // Optional encoding version.
        while p.peek().is_some_and(|c| c.is_ascii_digit()) {
            p.i += 1;
        }
        let mut out = String::new();
        p.path(&mut out, true).ok()?;
        return Some(out);
    }
    if let Some(rest) = sym.strip_prefix("_ZN") {
        return legacy(rest);
    }
    None
}

struct V0<'a> {
    s: &'a [u8],
    i: usize,
    depth: usize,
}

type R = Result<(), ()>;

impl V0<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn next(&mut self) -> Result<u8, ()> {
        let c = self.peek().ok_or(())?;
        self.i += 1;
        Ok(c)
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn base62(&mut self) -> Result<usize, ()> {
        if self.eat(b'_') {
            return Ok(0);
        }
        let mut v: usize = 0;
        loop {
            let c = self.next()?;
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'z' => c - b'a' + 10,
                b'A'..=b'Z' => c - b'A' + 36,
                b'_' => return v.checked_add(1).ok_or(()),
                _ => return Err(()),
            };
            v = v
                .checked_mul(62)
                .and_then(|v| v.checked_add(usize::from(d)))
                .ok_or(())?;
        }
    }

    fn disambiguator(&mut self) -> R {
        if self.eat(b's') {
            self.base62()?;
        }
        Ok(())
    }

    fn decimal(&mut self) -> Result<usize, ()> {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        std::str::from_utf8(&self.s[start..self.i])
            .ok()
            .and_then(|d| d.parse().ok())
            .ok_or(())
    }

    fn ident(&mut self) -> Result<&str, ()> {
        self.disambiguator()?;
        if self.peek() == Some(b'u') {
            return Err(()); // punycode: not worth it here
        }
        let len = self.decimal()?;
        self.eat(b'_');
        let end = self
            .i
            .checked_add(len)
            .filter(|&e| e <= self.s.len())
            .ok_or(())?;
        let id = std::str::from_utf8(&self.s[self.i..end]).map_err(|_| ())?;
        self.i = end;
        Ok(id)
    }

    fn enter(&mut self) -> R {
        self.depth += 1;
        if self.depth > 64 { Err(()) } else { Ok(()) }
    }

    fn backref<F: FnOnce(&mut Self) -> R>(&mut self, f: F) -> R {
        let target = self.base62()?;
        if target >= self.i {
            return Err(());
        }
        let saved = self.i;
        self.i = target;
        let r = f(self);
        self.i = saved;
        r
    }

    fn path(&mut self, out: &mut String, print: bool) -> R {
        self.enter()?;
        let tag = self.next()?;
        let r = match tag {
            b'C' => {
                let id = self.ident()?.to_string();
                if print {
                    out.push_str(&id);
                }
                Ok(())
            }
            b'M' => {
                self.disambiguator()?;
                self.path(&mut String::new(), false)?;
                out.push('<');
                self.ty(out)?;
                out.push('>');
                Ok(())
            }
            b'X' => {
                self.disambiguator()?;
                self.path(&mut String::new(), false)?;
                out.push('<');
                self.ty(out)?;
                out.push_str(" as ");
                self.path(out, true)?;
                out.push('>');
                Ok(())
            }
            b'Y' => {
                out.push('<');
                self.ty(out)?;
                out.push_str(" as ");
                self.path(out, true)?;
                out.push('>');
                Ok(())
            }
            b'N' => {
                let ns = self.next()?;
                self.path(out, true)?;
                let mut dis = 0;
                if self.peek() == Some(b's') {
                    self.i += 1;
                    dis = self.base62()?;
                }
                let id = self.ident_no_dis()?.to_string();
                match ns {
                    b'C' => out.push_str(&format!("::{{closure#{dis}}}")),
                    b'S' => out.push_str(&format!("::{{shim:{id}#{dis}}}")),
                    _ if !id.is_empty() => {
                        out.push_str("::");
                        out.push_str(&id);
                    }
                    _ => {}
                }
                Ok(())
            }
            b'I' => {
                self.path(out, true)?;
                while !self.eat(b'E') {
                    self.generic_arg()?;
                }
                Ok(())
            }
            b'B' => self.backref(|p| p.path(out, print)),
            _ => Err(()),
        };
        self.depth -= 1;
        r
    }

    fn ident_no_dis(&mut self) -> Result<&str, ()> {
        if self.peek() == Some(b'u') {
            return Err(());
        }
        let len = self.decimal()?;
        self.eat(b'_');
        let end = self
            .i
            .checked_add(len)
            .filter(|&e| e <= self.s.len())
            .ok_or(())?;
        let id = std::str::from_utf8(&self.s[self.i..end]).map_err(|_| ())?;
        self.i = end;
        Ok(id)
    }

    fn generic_arg(&mut self) -> R {
        let mut sink = String::new();
        match self.peek() {
            Some(b'L') => {
                self.i += 1;
                self.base62().map(|_| ())
            }
            Some(b'K') => {
                self.i += 1;
                self.constant()
            }
            _ => self.ty(&mut sink),
        }
    }

    fn constant(&mut self) -> R {
        if self.eat(b'p') {
            return Ok(());
        }
        if self.eat(b'B') {
            return self.backref(|p| p.constant());
        }
        self.next()?; // basic type tag
        self.eat(b'n');
        while self.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
            self.i += 1;
        }
        if self.eat(b'_') { Ok(()) } else { Err(()) }
    }

    fn ty(&mut self, out: &mut String) -> R {
        self.enter()?;
        let c = self.peek().ok_or(())?;
        let basic = match c {
            b'a' => Some("i8"),
            b'b' => Some("bool"),
            b'c' => Some("char"),
            b'd' => Some("f64"),
            b'e' => Some("str"),
            b'f' => Some("f32"),
            b'h' => Some("u8"),
            b'i' => Some("isize"),
            b'j' => Some("usize"),
            b'l' => Some("i32"),
            b'm' => Some("u32"),
            b'n' => Some("i128"),
            b'o' => Some("u128"),
            b's' => Some("i16"),
            b't' => Some("u16"),
            b'u' => Some("()"),
            b'v' => Some("..."),
            b'x' => Some("i64"),
            b'y' => Some("u64"),
            b'z' => Some("!"),
            b'p' => Some("_"),
            _ => None,
        };
        let r = if let Some(b) = basic {
            self.i += 1;
            out.push_str(b);
            Ok(())
        } else {
            self.i += 1;
            match c {
                b'A' => {
                    out.push('[');
                    self.ty(out)?;
                    out.push_str("; _]");
                    self.constant()
                }
                b'S' => {
                    out.push('[');
                    self.ty(out)?;
                    out.push(']');
                    Ok(())
                }
                b'T' => {
                    out.push('(');
                    let mut first = true;
                    while !self.eat(b'E') {
                        if !first {
                            out.push_str(", ");
                        }
                        first = false;
                        self.ty(out)?;
                    }
                    out.push(')');
                    Ok(())
                }
                b'R' | b'Q' => {
                    if self.eat(b'L') {
                        self.base62()?;
                    }
                    out.push_str(if c == b'R' { "&" } else { "&mut " });
                    self.ty(out)
                }
                b'P' | b'O' => {
                    out.push_str(if c == b'P' { "*const " } else { "*mut " });
                    self.ty(out)
                }
                b'B' => self.backref(|p| p.ty(out)),
                b'C' | b'M' | b'X' | b'Y' | b'N' | b'I' => {
                    self.i -= 1;
                    self.path(out, true)
                }
                _ => Err(()),
            }
        };
        self.depth -= 1;
        r
    }
}

/// `_ZN4core9panicking9panic_fmt17h0123456789abcdefE` -> `core::panicking::panic_fmt`.
fn legacy(rest: &str) -> Option<String> {
    let b = rest.as_bytes();
    let mut i = 0;
    let mut parts: Vec<String> = Vec::new();
    while i < b.len() && b[i] != b'E' {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let len: usize = rest[start..i].parse().ok()?;
        let end = i.checked_add(len).filter(|&e| e <= b.len())?;
        parts.push(unescape_legacy(&rest[i..end]));
        i = end;
    }
    if parts.last().is_some_and(|h| {
        h.len() == 17 && h.starts_with('h') && h[1..].bytes().all(|c| c.is_ascii_hexdigit())
    }) {
        parts.pop();
    }
    (!parts.is_empty()).then(|| parts.join("::"))
}

fn unescape_legacy(s: &str) -> String {
    let mut out = s.replace("..", "::");
    for (from, to) in [
        ("$LT$", "<"),
        ("$GT$", ">"),
        ("$u20$", " "),
        ("$C$", ","),
        ("$RF$", "&"),
        ("$BP$", "*"),
        ("$SP$", "@"),
        ("$LP$", "("),
        ("$RP$", ")"),
        ("$u7b$", "{"),
        ("$u7d$", "}"),
        ("$u27$", "'"),
        ("$u5b$", "["),
        ("$u5d$", "]"),
        ("$u7e$", "~"),
    ] {
        out = out.replace(from, to);
    }
    out.strip_prefix('_')
        .filter(|r| r.starts_with('$'))
        .map(str::to_string)
        .unwrap_or(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v0_inherent_impl() {
        assert_eq!(
            demangle("_RNvMs3_NtCshgDM7dBCdno_11rust_binder7processNtB5_7Process10update_ref")
                .as_deref(),
            Some("<rust_binder::process::Process>::update_ref")
        );
    }

    #[test]
    fn v0_plain_path() {
        assert_eq!(
            demangle("_RNvNtCs9jEwPDbx20M_4core9panicking9panic_fmt").as_deref(),
            Some("core::panicking::panic_fmt")
        );
        assert_eq!(
            demangle("_RNvCscSpY9Juk0HT_7___rustc17rust_begin_unwind").as_deref(),
            Some("__rustc::rust_begin_unwind")
        );
    }

    #[test]
    fn legacy_symbols() {
        assert_eq!(
            demangle("_ZN4core9panicking9panic_fmt17h0123456789abcdefE").as_deref(),
            Some("core::panicking::panic_fmt")
        );
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(demangle("_RZZZ"), None);
        assert_eq!(demangle("_RNvB9999_3foo"), None);
        assert_eq!(demangle("plain"), None);
    }
}
