//! A validating JSON scanner that finds the byte spans of values at RFC 6901 pointers.
//!
//! Field-level encryption replaces exactly the bytes of each target value and leaves every other
//! byte of the document untouched (whitespace, key order, number formatting), so decryption
//! restores the original document byte for byte. The whole document is validated (UTF-8, JSON
//! grammar, nesting depth at most [`MAX_DEPTH`]); nothing is allocated per value except decoded
//! object keys that contain escapes.

use std::borrow::Cow;
use std::ops::Range;

/// Maximum nesting depth accepted (deeper documents are rejected, not recursed into).
pub const MAX_DEPTH: usize = 128;

/// Why a document or pointer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// The value is not valid JSON.
    #[error("value is not valid JSON: {0}")]
    Invalid(String),
    /// A target pointer matches two values (duplicate object key).
    #[error("JSON pointer '{0}' matches more than one value (duplicate key)")]
    Duplicate(String),
    /// A pointer is not a valid RFC 6901 pointer.
    #[error("invalid JSON pointer '{0}': must be empty or start with '/'")]
    BadPointer(String),
}

/// Parses an RFC 6901 pointer into unescaped reference tokens (`~1` → `/`, `~0` → `~`).
/// The empty pointer (whole document) is refused: encrypt the whole value instead.
pub fn parse_pointer(p: &str) -> Result<Vec<String>, JsonError> {
    let Some(rest) = p.strip_prefix('/') else {
        return Err(JsonError::BadPointer(p.to_owned()));
    };
    rest.split('/')
        .map(|t| {
            let mut out = String::with_capacity(t.len());
            let mut it = t.chars();
            while let Some(c) = it.next() {
                if c == '~' {
                    match it.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => return Err(JsonError::BadPointer(p.to_owned())),
                    }
                } else {
                    out.push(c);
                }
            }
            Ok(out)
        })
        .collect()
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    targets: &'a [Vec<String>],
    names: &'a [String],
    found: Vec<Option<Range<usize>>>,
    /// The active target sets of the values being scanned, as one stack: a value's set is a
    /// range of it (no allocation per object key or array element). Each entry is a target and
    /// its token at the depth of the value whose set it is in.
    active: Vec<(usize, &'a [u8])>,
}

/// Finds the span of each target (parsed pointer) in `doc`; `None` where a pointer matches
/// nothing. A target nested inside another matched target is not searched (the outer one covers
/// it). `names` are the pointers as written, for error messages.
pub fn find_spans(
    doc: &[u8],
    targets: &[Vec<String>],
    names: &[String],
) -> Result<Vec<Option<Range<usize>>>, JsonError> {
    // Room for the targets at the top and, without growing, for them again at each of a few
    // levels below.
    let mut active = Vec::with_capacity(targets.len() * 4);
    active.extend(
        targets
            .iter()
            .enumerate()
            .map(|(t, path)| (t, path.first().map_or(&b""[..], |token| token.as_bytes()))),
    );
    let mut s = Scanner {
        b: doc,
        i: 0,
        targets,
        names,
        found: vec![None; targets.len()],
        active,
    };
    s.ws();
    s.value(0..targets.len(), 0)?;
    s.ws();
    if s.i != s.b.len() {
        return Err(s.err("trailing characters after the JSON value"));
    }
    Ok(s.found)
}

/// `a == b` for the short strings object keys usually are: lengths, then last bytes (where keys
/// like `field0`..`field9` differ), then an inlined byte loop instead of a call to `memcmp`.
#[inline]
fn same_token(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.last() == b.last() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// `index` in decimal, as an RFC 6901 array token is written, in `buf`.
fn index_token(index: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    let mut n = index;
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// Whether `c` ends a run of plain ASCII string characters: a quote, a backslash, a control
/// character (below 0x20) or a non-ASCII byte.
#[inline]
fn ends_plain_run(c: u8) -> bool {
    c == b'"' || c == b'\\' || !(0x20..0x80).contains(&c)
}

/// The length of the run of plain ASCII string characters that `b` starts with (up to the first
/// byte that [`ends_plain_run`]): sixteen bytes at a time with SSE2, which every x86-64 has.
#[cfg(target_arch = "x86_64")]
#[inline]
#[allow(unsafe_code)]
fn plain_ascii_run(b: &[u8]) -> usize {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    let stops = |chunk: &[u8]| -> u32 {
        assert!(chunk.len() >= 16);
        // SAFETY: SSE2 is part of the x86-64 baseline, and the unaligned load reads the first 16
        // bytes of `chunk`.
        unsafe {
            let v = _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>());
            let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
            let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
            let below_space = _mm_set1_epi8(0x1f);
            let control = _mm_cmpeq_epi8(_mm_max_epu8(v, below_space), below_space);
            // The high bit of each byte: set for non-ASCII, and for every comparison that held.
            _mm_movemask_epi8(_mm_or_si128(
                _mm_or_si128(quote, backslash),
                _mm_or_si128(control, v),
            )) as u32
        }
    };
    let mut i = 0;
    while let Some(chunk) = b.get(i..i + 16) {
        let found = stops(chunk);
        if found != 0 {
            return i + found.trailing_zeros() as usize;
        }
        i += 16;
    }
    i + plain_ascii_run_bytewise(&b[i..])
}

/// The length of the run of plain ASCII string characters that `b` starts with (up to the first
/// byte that [`ends_plain_run`]), a byte at a time: the tail of the SIMD scan, and the scan
/// itself elsewhere.
#[inline]
fn plain_ascii_run_bytewise(b: &[u8]) -> usize {
    b.iter().position(|&c| ends_plain_run(c)).unwrap_or(b.len())
}

#[cfg(not(target_arch = "x86_64"))]
use plain_ascii_run_bytewise as plain_ascii_run;

impl<'a> Scanner<'a> {
    fn err(&self, what: &str) -> JsonError {
        JsonError::Invalid(format!("{what} at byte {}", self.i))
    }

    fn ws(&mut self) {
        while let Some(c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// Scans one value; `active` (a range of `self.active`) are the targets whose first `depth`
    /// tokens match the current path, each with more than `depth` tokens.
    fn value(&mut self, active: Range<usize>, depth: usize) -> Result<(), JsonError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nesting deeper than 128 levels"));
        }
        match self.peek() {
            Some(b'{') => self.object(active, depth),
            Some(b'[') => self.array(active, depth),
            Some(b'"') => self.string().map(|_| ()),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.err("unexpected character")),
            None => Err(self.err("unexpected end of input")),
        }
    }

    /// Scans the child of an object or array whose key or index is `token`, at `depth` of the
    /// path: the `active` targets whose token at `depth` it is go on with it, and those that end
    /// there have their spans recorded (their value is then scanned with no target inside).
    fn child(&mut self, active: Range<usize>, token: &[u8], depth: usize) -> Result<(), JsonError> {
        let base = self.active.len();
        let mut hit = false;
        let targets: &'a [Vec<String>] = self.targets;
        for k in active {
            let (t, target_token) = self.active[k];
            if same_token(target_token, token) {
                let next_token = targets[t].get(depth + 1);
                hit |= next_token.is_none();
                self.active
                    .push((t, next_token.map_or(&b""[..], |next| next.as_bytes())));
            }
        }
        let matched = base..self.active.len();
        let result = if hit {
            self.scan_hit(matched, depth)
        } else {
            self.value(matched, depth + 1)
        };
        self.active.truncate(base);
        result
    }

    /// Scans a child that some of the `matched` targets end at (its value is scanned with no
    /// target inside: the outer span covers the deeper ones) and records their spans.
    fn scan_hit(&mut self, matched: Range<usize>, depth: usize) -> Result<(), JsonError> {
        let start = self.i;
        self.value(matched.end..matched.end, depth + 1)?;
        for k in matched {
            let (t, _) = self.active[k];
            if self.targets[t].len() == depth + 1 && self.found[t].replace(start..self.i).is_some()
            {
                return Err(JsonError::Duplicate(self.names[t].clone()));
            }
        }
        Ok(())
    }

    fn object(&mut self, active: Range<usize>, depth: usize) -> Result<(), JsonError> {
        self.i += 1;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return Err(self.err("expected a string key"));
            }
            let key = self.string()?;
            self.ws();
            if self.peek() != Some(b':') {
                return Err(self.err("expected ':'"));
            }
            self.i += 1;
            self.ws();
            if active.is_empty() {
                self.value(active.clone(), depth + 1)?;
            } else {
                self.child(active.clone(), &key, depth)?;
            }
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected ',' or '}'")),
            }
        }
    }

    fn array(&mut self, active: Range<usize>, depth: usize) -> Result<(), JsonError> {
        self.i += 1;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        let mut index = 0usize;
        let mut digits = [0u8; 20];
        loop {
            self.ws();
            if active.is_empty() {
                self.value(active.clone(), depth + 1)?;
            } else {
                self.child(active.clone(), index_token(index, &mut digits), depth)?;
            }
            index += 1;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected ',' or ']'")),
            }
        }
    }

    /// Scans a string starting at the opening quote; returns its decoded content. Its UTF-8 is
    /// validated here (bytes outside strings can only be ASCII grammar, so this validates the
    /// document's UTF-8).
    fn string(&mut self) -> Result<Cow<'a, [u8]>, JsonError> {
        let b: &'a [u8] = self.b;
        let start = self.i;
        self.i += 1;
        let mut escaped = false;
        let mut non_ascii = false;
        loop {
            self.i += plain_ascii_run(&b[self.i..]);
            match self.peek() {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => break,
                Some(b'\\') => {
                    escaped = true;
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') => {
                            let hex = self.b.get(self.i + 1..self.i + 5);
                            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                                return Err(self.err("bad \\u escape"));
                            }
                            self.i += 5;
                        }
                        _ => return Err(self.err("bad escape")),
                    }
                }
                Some(c) if c < 0x20 => return Err(self.err("control character in string")),
                Some(_) => {
                    // Non-ASCII: validated with the whole string below.
                    non_ascii = true;
                    while self.peek().is_some_and(|c| c >= 0x80) {
                        self.i += 1;
                    }
                }
            }
        }
        self.i += 1;
        let content = &b[start + 1..self.i - 1];
        if non_ascii {
            if let Err(e) = std::str::from_utf8(content) {
                return Err(JsonError::Invalid(format!(
                    "string at byte {start} is not UTF-8 ({e})"
                )));
            }
        }
        if escaped {
            serde_json::from_slice::<String>(&b[start..self.i])
                .map(|decoded| Cow::Owned(decoded.into_bytes()))
                .map_err(|e| JsonError::Invalid(format!("bad string at byte {start}: {e}")))
        } else {
            Ok(Cow::Borrowed(content))
        }
    }

    fn literal(&mut self, lit: &[u8]) -> Result<(), JsonError> {
        if self.b[self.i..].starts_with(lit) {
            self.i += lit.len();
            Ok(())
        } else {
            Err(self.err("invalid literal"))
        }
    }

    fn digits(&mut self) -> usize {
        let s = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        self.i - s
    }

    fn number(&mut self) -> Result<(), JsonError> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(self.err("invalid number fraction"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.err("invalid number exponent"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(doc: &str, ptrs: &[&str]) -> Result<Vec<Option<String>>, JsonError> {
        let names: Vec<String> = ptrs.iter().map(|s| s.to_string()).collect();
        let t: Vec<Vec<String>> = ptrs.iter().map(|p| parse_pointer(p).unwrap()).collect();
        Ok(find_spans(doc.as_bytes(), &t, &names)?
            .into_iter()
            .map(|s| s.map(|r| doc[r].to_owned()))
            .collect())
    }

    #[test]
    fn finds_values_at_pointers() {
        let doc = r#" { "a" : {"b": [1, {"c": "x"}, 3.5e-2]}, "d~/e": null, "f": true , "esc\u0067": -0 } "#;
        let r = spans(
            doc,
            &[
                "/a/b/1/c", "/d~0~1e", "/f", "/escg", "/a/b/2", "/missing", "/a/b/9",
            ],
        )
        .unwrap();
        assert_eq!(
            r,
            vec![
                Some("\"x\"".into()),
                Some("null".into()),
                Some("true".into()),
                Some("-0".into()),
                Some("3.5e-2".into()),
                None,
                None
            ]
        );
        // Outer target covers inner.
        let r = spans(doc, &["/a", "/a/b"]).unwrap();
        assert_eq!(r[0].as_deref(), Some(r#"{"b": [1, {"c": "x"}, 3.5e-2]}"#));
        assert_eq!(r[1], None);
    }

    /// The scanner accepts exactly the documents serde_json accepts, whatever byte sits at
    /// whatever offset of a key or value string (the SIMD run scan's chunk edges included), and
    /// finds the value's span.
    #[test]
    fn string_scanning_agrees_with_serde_json_at_every_offset() {
        let specials: [&[u8]; 14] = [
            b"\0",
            b"\x1f",
            b"\t",
            b" ",
            b"\"",
            b"\\\\",
            b"\\u00e9",
            b"\\ud800",
            b"\x7f",
            b"\x80",
            b"\xc3\xa9",
            b"\xe2\x82",
            b"\xf0\x9f\x98\x80",
            b"\xff",
        ];
        let names = vec!["/k".to_owned()];
        let targets = vec![parse_pointer("/k").unwrap()];
        for len in 0..40 {
            for at in 0..=len {
                for special in specials {
                    let mut text = vec![b'a'; len];
                    text.splice(at..at, special.iter().copied());
                    for in_key in [false, true] {
                        let mut doc = b"{\"k\": 1, \"".to_vec();
                        doc.extend_from_slice(if in_key { &text } else { b"x" });
                        doc.extend_from_slice(b"\": \"");
                        doc.extend_from_slice(if in_key { b"x" } else { &text });
                        doc.extend_from_slice(b"\"}");
                        let expected = serde_json::from_slice::<serde_json::Value>(&doc).is_ok();
                        let found = find_spans(&doc, &targets, &names);
                        assert_eq!(
                            found.is_ok(),
                            expected,
                            "{:?}: {found:?}",
                            String::from_utf8_lossy(&doc)
                        );
                        if let Ok(found) = found {
                            assert_eq!(found, vec![Some(6..7)]);
                        }
                    }
                }
            }
        }
    }

    /// Bytes that are not ASCII are refused outside strings, and keys are matched after their
    /// escapes are decoded, also when they are not ASCII.
    #[test]
    fn non_ascii_outside_strings_is_refused_and_escaped_keys_match() {
        assert!(spans("{\"a\": 1}\u{e9}", &["/a"]).is_err());
        assert!(find_spans(b"{\"a\":\xc3\xa9}", &[vec!["a".into()]], &["/a".into()]).is_err());
        let doc = r#"{"caf\u00e9": "x", "b": ["p", {"é": "y"}]}"#;
        assert_eq!(
            spans(doc, &["/café", "/b/1/é", "/b/0"]).unwrap(),
            vec![
                Some("\"x\"".into()),
                Some("\"y\"".into()),
                Some("\"p\"".into())
            ]
        );
    }

    #[test]
    fn rejects_invalid_documents_and_duplicates() {
        for bad in [
            "",
            "{",
            "{\"a\":}",
            "[1,]",
            "{\"a\" 1}",
            "01",
            "1.",
            "\"\u{1}\"",
            "tru",
            "{} x",
            "\"\\x\"",
            "[1 2]",
        ] {
            assert!(spans(bad, &["/a"]).is_err(), "accepted {bad:?}");
        }
        assert_eq!(
            spans(r#"{"a":1,"a":2}"#, &["/a"]).unwrap_err(),
            JsonError::Duplicate("/a".into())
        );
        assert!(spans(r#"{"a":1,"a":2}"#, &["/b"]).is_ok());
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(spans(&deep, &["/0"]).is_err());
        assert!(parse_pointer("a").is_err());
        assert!(parse_pointer("/a~2").is_err());
        assert!(parse_pointer("").is_err());
    }
}
