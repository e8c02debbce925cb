//! Lua 5.4's string patterns (`string.find`, `match`, `gmatch`, `gsub`)
//! in Rust, with a deadline.
//!
//! Lua's own matcher runs in C, where the instruction hook never fires: a
//! pattern such as `".-.-.-.-.-.-.-.-.-.-b"` on 40,000 `a`s backtracks for
//! hours and nothing can stop it. This is the same algorithm (a line-by-line
//! port of `lstrlib.c`: the same classes, captures, `%b`, `%f`,
//! back-references, anchors and error messages), but every step counts
//! and, every [`CHECK_EVERY`] steps, the wall clock is read: past the
//! deadline the match fails with [`PatternError::Deadline`], which the
//! sandbox turns into a Lua error that ends the call.

use std::time::Instant;

/// Captures per pattern, as `LUA_MAXCAPTURES`.
const MAX_CAPTURES: usize = 32;
/// Nested matching calls, as `MAXCCALLS` in `lstrlib.c`.
const MAX_DEPTH: u32 = 200;
/// Steps between two reads of the clock.
pub const CHECK_EVERY: u32 = 1024;
const ESC: u8 = b'%';
const SPECIALS: &[u8] = b"^$*+?.([%-";

/// Why a pattern operation failed; the texts are Lua's own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("malformed pattern ({0})")]
    Malformed(&'static str),
    #[error("missing '[' after '%f' in pattern")]
    Frontier,
    #[error("invalid capture index %{0}")]
    CaptureIndex(i64),
    #[error("invalid pattern capture")]
    InvalidCapture,
    #[error("unfinished capture")]
    Unfinished,
    #[error("too many captures")]
    TooManyCaptures,
    #[error("pattern too complex")]
    TooComplex,
    #[error("invalid use of '%' in replacement string")]
    Replacement,
    /// The call's deadline passed while matching.
    #[error("pattern matching ran past the policy's deadline")]
    Deadline,
}

/// Counts steps and reads the clock every [`CHECK_EVERY`] of them.
#[derive(Debug)]
pub struct Meter {
    countdown: u32,
    deadline: Instant,
}

impl Meter {
    pub fn new(deadline: Instant) -> Self {
        Self {
            countdown: CHECK_EVERY,
            deadline,
        }
    }

    #[inline]
    pub fn tick(&mut self) -> Result<(), PatternError> {
        self.countdown -= 1;
        if self.countdown == 0 {
            self.countdown = CHECK_EVERY;
            if Instant::now() >= self.deadline {
                return Err(PatternError::Deadline);
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CapLen {
    Unfinished,
    Position,
    Len(usize),
}

/// One capture of a match: a byte range of the subject, or a position
/// capture `()` (1-based, as Lua gives it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    Str(usize, usize),
    Pos(usize),
}

/// The state of matching one pattern against one subject.
pub struct Matcher<'a> {
    src: &'a [u8],
    pat: &'a [u8],
    level: usize,
    cap: [(usize, CapLen); MAX_CAPTURES],
    depth: u32,
    meter: &'a mut Meter,
}

impl<'a> Matcher<'a> {
    /// `pat` without its anchor.
    pub fn new(src: &'a [u8], pat: &'a [u8], meter: &'a mut Meter) -> Self {
        Self {
            src,
            pat,
            level: 0,
            cap: [(0, CapLen::Unfinished); MAX_CAPTURES],
            depth: MAX_DEPTH,
            meter,
        }
    }

    /// The pattern byte at `i`, or 0 past the end (C reads the terminator).
    #[inline]
    fn pc(&self, i: usize) -> u8 {
        self.pat.get(i).copied().unwrap_or(0)
    }

    /// Matches at `s`; the end of the match.
    pub fn match_at(&mut self, s: usize) -> Result<Option<usize>, PatternError> {
        self.level = 0;
        self.depth = MAX_DEPTH;
        self.do_match(s, 0)
    }

    fn class_end(&self, mut p: usize) -> Result<usize, PatternError> {
        let c = self.pc(p);
        p += 1;
        match c {
            ESC => {
                if p >= self.pat.len() {
                    return Err(PatternError::Malformed("ends with '%'"));
                }
                Ok(p + 1)
            }
            b'[' => {
                if self.pc(p) == b'^' {
                    p += 1;
                }
                loop {
                    if p >= self.pat.len() {
                        return Err(PatternError::Malformed("missing ']'"));
                    }
                    let x = self.pat[p];
                    p += 1;
                    if x == ESC && p < self.pat.len() {
                        p += 1;
                    }
                    if self.pc(p) == b']' {
                        break;
                    }
                }
                Ok(p + 1)
            }
            _ => Ok(p),
        }
    }

    /// `[...]` from `p` (the `[`) to `ec` (the `]`).
    fn bracket(&self, c: u8, mut p: usize, ec: usize) -> bool {
        let mut sig = true;
        if self.pc(p + 1) == b'^' {
            sig = false;
            p += 1;
        }
        loop {
            p += 1;
            if p >= ec {
                break;
            }
            if self.pc(p) == ESC {
                p += 1;
                if match_class(c, self.pc(p)) {
                    return sig;
                }
            } else if self.pc(p + 1) == b'-' && p + 2 < ec {
                p += 2;
                if self.pc(p - 2) <= c && c <= self.pc(p) {
                    return sig;
                }
            } else if self.pc(p) == c {
                return sig;
            }
        }
        !sig
    }

    fn single(&self, s: usize, p: usize, ep: usize) -> bool {
        let Some(&c) = self.src.get(s) else {
            return false;
        };
        match self.pc(p) {
            b'.' => true,
            ESC => match_class(c, self.pc(p + 1)),
            b'[' => self.bracket(c, p, ep - 1),
            x => x == c,
        }
    }

    fn do_match(&mut self, s: usize, p: usize) -> Result<Option<usize>, PatternError> {
        if self.depth == 0 {
            return Err(PatternError::TooComplex);
        }
        self.depth -= 1;
        let r = self.match_inner(s, p);
        self.depth += 1;
        r
    }

    fn match_inner(&mut self, mut s: usize, mut p: usize) -> Result<Option<usize>, PatternError> {
        loop {
            self.meter.tick()?;
            if p == self.pat.len() {
                return Ok(Some(s));
            }
            match self.pat[p] {
                b'(' => {
                    return if self.pc(p + 1) == b')' {
                        self.start_capture(s, p + 2, CapLen::Position)
                    } else {
                        self.start_capture(s, p + 1, CapLen::Unfinished)
                    };
                }
                b')' => return self.end_capture(s, p + 1),
                b'$' if p + 1 == self.pat.len() => {
                    return Ok((s == self.src.len()).then_some(s));
                }
                ESC if self.pc(p + 1) == b'b' => match self.match_balance(s, p + 2)? {
                    Some(e) => {
                        s = e;
                        p += 4;
                    }
                    None => return Ok(None),
                },
                ESC if self.pc(p + 1) == b'f' => {
                    p += 2;
                    if self.pc(p) != b'[' {
                        return Err(PatternError::Frontier);
                    }
                    let ep = self.class_end(p)?;
                    let previous = if s == 0 { 0 } else { self.src[s - 1] };
                    let current = self.src.get(s).copied().unwrap_or(0);
                    if !self.bracket(previous, p, ep - 1) && self.bracket(current, p, ep - 1) {
                        p = ep;
                    } else {
                        return Ok(None);
                    }
                }
                ESC if self.pc(p + 1).is_ascii_digit() => {
                    match self.match_capture(s, self.pc(p + 1))? {
                        Some(e) => {
                            s = e;
                            p += 2;
                        }
                        None => return Ok(None),
                    }
                }
                _ => {
                    let ep = self.class_end(p)?;
                    let after = self.pc(ep);
                    if !self.single(s, p, ep) {
                        if matches!(after, b'*' | b'?' | b'-') {
                            p = ep + 1;
                            continue;
                        }
                        return Ok(None);
                    }
                    match after {
                        b'?' => {
                            if let Some(r) = self.do_match(s + 1, ep + 1)? {
                                return Ok(Some(r));
                            }
                            p = ep + 1;
                        }
                        b'+' => return self.max_expand(s + 1, p, ep),
                        b'*' => return self.max_expand(s, p, ep),
                        b'-' => return self.min_expand(s, p, ep),
                        _ => {
                            s += 1;
                            p = ep;
                        }
                    }
                }
            }
        }
    }

    fn match_balance(&mut self, s: usize, p: usize) -> Result<Option<usize>, PatternError> {
        if p + 1 >= self.pat.len() {
            return Err(PatternError::Malformed("missing arguments to '%b'"));
        }
        if self.src.get(s) != Some(&self.pat[p]) {
            return Ok(None);
        }
        let (b, e) = (self.pat[p], self.pat[p + 1]);
        let mut open = 1;
        let mut s = s;
        loop {
            s += 1;
            if s >= self.src.len() {
                return Ok(None);
            }
            self.meter.tick()?;
            let c = self.src[s];
            if c == e {
                open -= 1;
                if open == 0 {
                    return Ok(Some(s + 1));
                }
            } else if c == b {
                open += 1;
            }
        }
    }

    fn max_expand(&mut self, s: usize, p: usize, ep: usize) -> Result<Option<usize>, PatternError> {
        let mut i = 0;
        while self.single(s + i, p, ep) {
            self.meter.tick()?;
            i += 1;
        }
        loop {
            if let Some(r) = self.do_match(s + i, ep + 1)? {
                return Ok(Some(r));
            }
            if i == 0 {
                return Ok(None);
            }
            i -= 1;
        }
    }

    fn min_expand(
        &mut self,
        mut s: usize,
        p: usize,
        ep: usize,
    ) -> Result<Option<usize>, PatternError> {
        loop {
            if let Some(r) = self.do_match(s, ep + 1)? {
                return Ok(Some(r));
            }
            if self.single(s, p, ep) {
                s += 1;
            } else {
                return Ok(None);
            }
        }
    }

    fn start_capture(
        &mut self,
        s: usize,
        p: usize,
        what: CapLen,
    ) -> Result<Option<usize>, PatternError> {
        if self.level >= MAX_CAPTURES {
            return Err(PatternError::TooManyCaptures);
        }
        self.cap[self.level] = (s, what);
        self.level += 1;
        let r = self.do_match(s, p)?;
        if r.is_none() {
            self.level -= 1;
        }
        Ok(r)
    }

    fn end_capture(&mut self, s: usize, p: usize) -> Result<Option<usize>, PatternError> {
        let l = (0..self.level)
            .rev()
            .find(|&l| self.cap[l].1 == CapLen::Unfinished)
            .ok_or(PatternError::InvalidCapture)?;
        self.cap[l].1 = CapLen::Len(s - self.cap[l].0);
        let r = self.do_match(s, p)?;
        if r.is_none() {
            self.cap[l].1 = CapLen::Unfinished;
        }
        Ok(r)
    }

    fn match_capture(&mut self, s: usize, digit: u8) -> Result<Option<usize>, PatternError> {
        let l = i64::from(digit) - i64::from(b'1');
        if l < 0 || l as usize >= self.level || self.cap[l as usize].1 == CapLen::Unfinished {
            return Err(PatternError::CaptureIndex(l + 1));
        }
        let (init, len) = self.cap[l as usize];
        // A position capture's length is -2 in C, never matched.
        let CapLen::Len(len) = len else {
            return Ok(None);
        };
        let end = s + len;
        Ok(
            (end <= self.src.len() && self.src[init..init + len] == self.src[s..end])
                .then_some(end),
        )
    }

    /// Capture `i` of the match `s..e` (the whole match for `i == 0`
    /// when the pattern has none).
    pub fn capture(&self, i: usize, s: usize, e: usize) -> Result<Capture, PatternError> {
        if i >= self.level {
            if i == 0 {
                return Ok(Capture::Str(s, e));
            }
            return Err(PatternError::CaptureIndex(i as i64 + 1));
        }
        let (init, len) = self.cap[i];
        match len {
            CapLen::Unfinished => Err(PatternError::Unfinished),
            CapLen::Position => Ok(Capture::Pos(init + 1)),
            CapLen::Len(n) => Ok(Capture::Str(init, init + n)),
        }
    }

    /// Every capture of the match `s..e`; with `whole`, the whole match
    /// when the pattern has none (`match`, `gmatch`), else none (`find`).
    pub fn captures(&self, s: usize, e: usize, whole: bool) -> Result<Vec<Capture>, PatternError> {
        let n = if self.level == 0 && whole {
            1
        } else {
            self.level
        };
        (0..n).map(|i| self.capture(i, s, e)).collect()
    }
}

fn match_class(c: u8, cl: u8) -> bool {
    let res = match cl.to_ascii_lowercase() {
        b'a' => c.is_ascii_alphabetic(),
        b'c' => c.is_ascii_control(),
        b'd' => c.is_ascii_digit(),
        b'g' => c.is_ascii_graphic(),
        b'l' => c.is_ascii_lowercase(),
        b'p' => c.is_ascii_punctuation(),
        b's' => matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r'),
        b'u' => c.is_ascii_uppercase(),
        b'w' => c.is_ascii_alphanumeric(),
        b'x' => c.is_ascii_hexdigit(),
        _ => return cl == c,
    };
    if cl.is_ascii_uppercase() {
        !res
    } else {
        res
    }
}

/// Lua's `posrelatI`: a 1-based start from a possibly negative `init`.
pub fn start_index(init: i64, len: usize) -> usize {
    if init > 0 {
        init as usize
    } else if init == 0 || init < -(len as i64) {
        1
    } else {
        (len as i64 + init + 1) as usize
    }
}

/// A pattern without special characters is found as plain text.
pub fn no_specials(pat: &[u8]) -> bool {
    !pat.iter().any(|c| SPECIALS.contains(c))
}

/// `string.find` (with `find`) or `string.match`: the match's start and
/// end (0-based, end exclusive) and its captures.
pub type Found = Option<(usize, usize, Vec<Capture>)>;

pub fn find(
    src: &[u8],
    pat: &[u8],
    init: i64,
    plain: bool,
    find: bool,
    meter: &mut Meter,
) -> Result<Found, PatternError> {
    let init = start_index(init, src.len()) - 1;
    if init > src.len() {
        return Ok(None);
    }
    if find && (plain || no_specials(pat)) {
        if pat.is_empty() {
            return Ok(Some((init, init, vec![])));
        }
        let hay = &src[init..];
        for (i, w) in hay.windows(pat.len()).enumerate() {
            meter.tick()?;
            if w == pat {
                return Ok(Some((init + i, init + i + pat.len(), vec![])));
            }
        }
        return Ok(None);
    }
    let anchor = pat.first() == Some(&b'^');
    let pat = if anchor { &pat[1..] } else { pat };
    let mut m = Matcher::new(src, pat, meter);
    let mut s1 = init;
    loop {
        if let Some(e) = m.match_at(s1)? {
            return Ok(Some((s1, e, m.captures(s1, e, !find)?)));
        }
        s1 += 1;
        if s1 > src.len() || anchor {
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn meter() -> Meter {
        Meter::new(Instant::now() + Duration::from_secs(60))
    }

    fn f(s: &str, p: &str) -> Option<String> {
        find(s.as_bytes(), p.as_bytes(), 1, false, true, &mut meter())
            .unwrap()
            .map(|(a, b, _)| s[a..b].to_owned())
    }

    fn m(s: &str, p: &str) -> Vec<String> {
        let (a, b, caps) = find(s.as_bytes(), p.as_bytes(), 1, false, false, &mut meter())
            .unwrap()
            .unwrap();
        let _ = (a, b);
        caps.into_iter()
            .map(|c| match c {
                Capture::Str(x, y) => s[x..y].to_owned(),
                Capture::Pos(n) => format!("@{n}"),
            })
            .collect()
    }

    /// Cases from Lua's own test suite (`pm.lua`).
    #[test]
    fn lua_test_suite_cases() {
        assert_eq!(f("", ""), Some(String::new()));
        assert_eq!(f("alo", ""), Some(String::new()));
        assert_eq!(f("alo123alo", "12"), Some("12".into()));
        assert_eq!(f("alo123alo", "^12"), None);
        assert_eq!(f("aloALO", "%l*"), Some("alo".into()));
        assert_eq!(f("aLo_ALO", "%a*"), Some("aLo".into()));
        assert_eq!(f("aaab", "a*"), Some("aaa".into()));
        assert_eq!(f("aaa", "^.*$"), Some("aaa".into()));
        assert_eq!(f("aaa", "b*"), Some("".into()));
        assert_eq!(f("aaa", "ab*a"), Some("aa".into()));
        assert_eq!(f("aba", "ab*a"), Some("aba".into()));
        assert_eq!(f("aaab", "a+"), Some("aaa".into()));
        assert_eq!(f("aaa", "^.+$"), Some("aaa".into()));
        assert_eq!(f("aaa", "b+"), None);
        assert_eq!(f("aaa", "ab+a"), None);
        assert_eq!(f("aba", "ab+a"), Some("aba".into()));
        assert_eq!(f("a$a", ".$"), Some("a".into()));
        assert_eq!(f("a$a", ".%$"), Some("a$".into()));
        assert_eq!(f("a$a", ".$."), Some("a$a".into()));
        assert_eq!(f("a$a", "$$"), None);
        assert_eq!(f("a$b", "a$"), None);
        assert_eq!(f("a$a", "$"), Some("".into()));
        assert_eq!(f("", "b*"), Some("".into()));
        assert_eq!(f("aaa", "bb*"), None);
        assert_eq!(f("aaab", "a-"), Some("".into()));
        assert_eq!(f("aaa", "^.-$"), Some("aaa".into()));
        assert_eq!(f("aabaaabaaabaaaba", "b.*b"), Some("baaabaaabaaab".into()));
        assert_eq!(f("aabaaabaaabaaaba", "b.-b"), Some("baaab".into()));
        assert_eq!(f("alo xo", ".o$"), Some("xo".into()));
        assert_eq!(f(" \n isto é assim", "%S%S*"), Some("isto".into()));
        assert_eq!(f(" \n isto é assim", "%S*$"), Some("assim".into()));
        assert_eq!(f(" \n isto é assim", "[a-z]*$"), Some("assim".into()));
        assert_eq!(f("um caracter ? extra", "[^%sa-z]"), Some("?".into()));
        assert_eq!(f("", "a?"), Some("".into()));
        assert_eq!(f("á", "á?"), Some("á".into()));
        assert_eq!(f("ábl", "á?b?l?"), Some("ábl".into()));
        assert_eq!(f("  ábl", "á?b?l?"), Some("ábl".into())); // bytes, not letters
        assert_eq!(f("aa", "^aa?a?a"), Some("aa".into()));
        assert_eq!(
            find("]]]áb".as_bytes(), b"[^]]", 1, false, true, &mut meter()).unwrap(),
            Some((3, 4, vec![]))
        );
        assert_eq!(f("0alo alo", "%x*"), Some("0a".into()));
        assert_eq!(f("alo alo", "%C+"), Some("alo alo".into()));
        assert_eq!(m("alo xyzK", "(%w+)K"), vec!["xyz"]);
        assert_eq!(m("254 K", "(%d*)K"), vec![""]);
        assert_eq!(m("alo ", "(%w*)$"), vec![""]);
        assert_eq!(m("testtset", "^(tes(t+)set)$"), vec!["testtset", "tt"]);
        assert_eq!(m("  (a b c)  ", "%b()"), vec!["(a b c)"]);
        assert_eq!(m("hello world", "()ll()"), vec!["@3", "@5"]);
        assert_eq!(m("THE (quick) fox", "%f[%a]%a+"), vec!["THE"]);
        assert_eq!(m("  ==x==  ", "(=+)x%1"), vec!["=="]);
        assert_eq!(
            find(b"abc", b"b", 1, true, true, &mut meter()).unwrap(),
            Some((1, 2, vec![]))
        );
        assert_eq!(
            find(b"a.c", b".", 1, true, true, &mut meter()).unwrap(),
            Some((1, 2, vec![]))
        );
        assert_eq!(
            find(b"abcabc", b"b", -2, false, true, &mut meter()).unwrap(),
            Some((4, 5, vec![]))
        );
    }

    #[test]
    fn malformed_patterns_get_lua_s_messages() {
        let e = |p: &str| {
            find(b"abc", p.as_bytes(), 1, false, false, &mut meter())
                .unwrap_err()
                .to_string()
        };
        assert_eq!(e("a%"), "malformed pattern (ends with '%')");
        assert_eq!(e("[a"), "malformed pattern (missing ']')");
        assert_eq!(e("%b"), "malformed pattern (missing arguments to '%b')");
        assert_eq!(e("%f"), "missing '[' after '%f' in pattern");
        assert_eq!(e("(a"), "unfinished capture");
        assert_eq!(e("a)"), "invalid pattern capture");
        assert_eq!(e("%1"), "invalid capture index %1");
    }

    #[test]
    fn a_backtracking_bomb_stops_at_the_deadline() {
        let s = "a".repeat(40_000);
        let started = Instant::now();
        let mut meter = Meter::new(started + Duration::from_millis(50));
        let r = find(
            s.as_bytes(),
            b".-.-.-.-.-.-.-.-.-.-b",
            1,
            false,
            true,
            &mut meter,
        );
        assert_eq!(r, Err(PatternError::Deadline));
        // The deadline is read every CHECK_EVERY steps, each well under a
        // microsecond: the stop comes within a few milliseconds of it.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
