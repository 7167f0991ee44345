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
    /// `b`, validated as UTF-8 once (strings are sliced from it without validating again).
    text: &'a str,
    i: usize,
    targets: &'a [Vec<String>],
    names: &'a [String],
    found: Vec<Option<Range<usize>>>,
}

/// Finds the span of each target (parsed pointer) in `doc`; `None` where a pointer matches
/// nothing. A target nested inside another matched target is not searched (the outer one covers
/// it). `names` are the pointers as written, for error messages.
pub fn find_spans(
    doc: &[u8],
    targets: &[Vec<String>],
    names: &[String],
) -> Result<Vec<Option<Range<usize>>>, JsonError> {
    let text =
        std::str::from_utf8(doc).map_err(|e| JsonError::Invalid(format!("not UTF-8 ({e})")))?;
    let mut s = Scanner {
        b: doc,
        text,
        i: 0,
        targets,
        names,
        found: vec![None; targets.len()],
    };
    let all: Vec<usize> = (0..targets.len()).collect();
    s.ws();
    s.value(&all, 0)?;
    s.ws();
    if s.i != s.b.len() {
        return Err(s.err("trailing characters after the JSON value"));
    }
    Ok(s.found)
}

/// `a == b` for the short strings object keys usually are: an inlined loop instead of a call to
/// `memcmp` (keys of equal length, like `field0`..`field9`, reach the byte comparison every time).
#[inline]
fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| x == y)
}

/// The targets among `candidates` (target, token at this depth) whose token is `token`.
fn matching(candidates: &[(usize, &str)], token: &str) -> Vec<usize> {
    candidates
        .iter()
        .filter(|(_, tok)| same_token(tok, token))
        .map(|&(t, _)| t)
        .collect()
}

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

    /// Scans one value; `active` are targets whose first `depth` tokens match the current path.
    fn value(&mut self, active: &[usize], depth: usize) -> Result<(), JsonError> {
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

    /// The active targets that go deeper than `depth`, with their token at `depth`: what a
    /// child's key or index is matched against (computed once per object or array).
    fn candidates(&self, active: &[usize], depth: usize) -> Vec<(usize, &'a str)> {
        let targets: &'a [Vec<String>] = self.targets;
        active
            .iter()
            .filter_map(|&t| targets[t].get(depth).map(|tok| (t, tok.as_str())))
            .collect()
    }

    /// Scans a child value whose path token matched the targets `next`, recording their spans
    /// where they end at this child.
    fn child(&mut self, next: Vec<usize>, depth: usize) -> Result<(), JsonError> {
        if next.is_empty() {
            return self.value(&[], depth + 1);
        }
        let start = self.i;
        let hit: Vec<usize> = next
            .iter()
            .copied()
            .filter(|&t| self.targets[t].len() == depth + 1)
            .collect();
        if hit.is_empty() {
            return self.value(&next, depth + 1);
        }
        self.value(&[], depth + 1)?;
        for t in hit {
            if self.found[t].is_some() {
                return Err(JsonError::Duplicate(self.names[t].clone()));
            }
            self.found[t] = Some(start..self.i);
        }
        Ok(())
    }

    fn object(&mut self, active: &[usize], depth: usize) -> Result<(), JsonError> {
        self.i += 1;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        let candidates = self.candidates(active, depth);
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
            self.child(matching(&candidates, &key), depth)?;
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

    fn array(&mut self, active: &[usize], depth: usize) -> Result<(), JsonError> {
        self.i += 1;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        let candidates = self.candidates(active, depth);
        let mut index = 0usize;
        loop {
            self.ws();
            let next = if candidates.is_empty() {
                Vec::new()
            } else {
                matching(&candidates, &index.to_string())
            };
            self.child(next, depth)?;
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

    /// Scans a string starting at the opening quote; returns its decoded content.
    fn string(&mut self) -> Result<Cow<'a, str>, JsonError> {
        let b: &'a [u8] = self.b;
        let start = self.i;
        self.i += 1;
        let mut escaped = false;
        loop {
            // Runs of plain characters are skipped in bulk: the next quote or backslash, and
            // no control character before it.
            let rest = &b[self.i..];
            let run = memchr::memchr2(b'"', b'\\', rest).unwrap_or(rest.len());
            if rest[..run].iter().fold(false, |any, &c| any | (c < 0x20)) {
                self.i += rest[..run].iter().position(|&c| c < 0x20).unwrap_or(0);
                return Err(self.err("control character in string"));
            }
            self.i += run;
            match self.peek() {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => break,
                _ => {
                    // A backslash.
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
            }
        }
        self.i += 1;
        if escaped {
            serde_json::from_slice::<String>(&b[start..self.i])
                .map(Cow::Owned)
                .map_err(|e| JsonError::Invalid(format!("bad string at byte {start}: {e}")))
        } else {
            // Quotes are ASCII, so both ends are character boundaries of the validated text.
            Ok(Cow::Borrowed(&self.text[start + 1..self.i - 1]))
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
