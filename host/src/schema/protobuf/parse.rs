//! The `.proto` text parser behind [`super::ProtoSchema::parse`] (see the parent module docs
//! for what it reads).

use std::collections::HashMap;

use super::*;

/// The raw form of a `.proto` text: its messages, enums and fields, type names unresolved.
pub(super) fn parse_text(text: &str) -> Result<Raw, String> {
    let mut p = Parser {
        toks: tokenize(text)?,
        i: 0,
        messages: Vec::new(),
        enums: Vec::new(),
        raw: Vec::new(),
    };
    let top = p.file()?;
    Ok(Raw {
        messages: p.messages,
        enums: p.enums,
        fields: p.raw,
        top,
    })
}

struct Parser<'a> {
    toks: Vec<&'a str>,
    i: usize,
    messages: Vec<Message>,
    enums: Vec<String>,
    raw: Vec<RawField>,
}

fn tokenize(text: &str) -> Result<Vec<&str>, String> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let end = text[i + 2..].find("*/").ok_or("unterminated comment")?;
            i += end + 4;
        } else if c == b'"' || c == b'\'' {
            let start = i;
            i += 1;
            while i < b.len() && b[i] != c {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            if i >= b.len() {
                return Err("unterminated string".into());
            }
            i += 1;
            out.push(&text[start..i]);
        } else if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' {
            let start = i;
            while i < b.len()
                && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'_' | b'.' | b'-' | b'+'))
            {
                i += 1;
            }
            out.push(&text[start..i]);
        } else {
            out.push(&text[i..i + 1]);
            i += 1;
        }
    }
    Ok(out)
}

fn scalar(name: &str) -> Option<FieldType> {
    Some(match name {
        "string" => FieldType::String,
        "bytes" => FieldType::Bytes,
        "double" | "fixed64" | "sfixed64" => FieldType::Scalar("i64"),
        "float" | "fixed32" | "sfixed32" => FieldType::Scalar("i32"),
        "int32" | "int64" | "uint32" | "uint64" | "sint32" | "sint64" | "bool" => {
            FieldType::Scalar("varint")
        }
        _ => return None,
    })
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&'a str> {
        self.toks.get(self.i).copied()
    }

    fn next(&mut self) -> Result<&'a str, String> {
        let t = self.peek().ok_or("unexpected end of the .proto text")?;
        self.i += 1;
        Ok(t)
    }

    fn expect(&mut self, want: &str) -> Result<(), String> {
        let t = self.next()?;
        if t == want {
            Ok(())
        } else {
            Err(format!("expected `{want}`, found `{t}`"))
        }
    }

    /// Skips to the end of a statement (`;`) or over a balanced `{...}` block.
    fn skip_statement(&mut self) -> Result<(), String> {
        let mut depth = 0usize;
        loop {
            match self.next()? {
                ";" if depth == 0 => return Ok(()),
                "{" => depth += 1,
                "}" => {
                    depth = depth.checked_sub(1).ok_or("unbalanced `}`")?;
                    if depth == 0 {
                        return Ok(());
                    }
                }
                _ => {}
            }
        }
    }

    fn file(&mut self) -> Result<Vec<usize>, String> {
        let mut package = String::new();
        let mut top = Vec::new();
        while let Some(t) = self.peek() {
            match t {
                "package" => {
                    self.i += 1;
                    package = self.next()?.to_owned();
                    self.expect(";")?;
                }
                "message" => {
                    self.i += 1;
                    top.push(self.message(&package, 0)?);
                }
                "enum" => {
                    self.i += 1;
                    let name = self.next()?;
                    self.enums.push(qualify(&package, name));
                    self.skip_statement()?;
                }
                ";" => self.i += 1,
                _ => self.skip_statement()?, // syntax, import, option, service, extend
            }
        }
        Ok(top)
    }

    fn message(&mut self, scope: &str, depth: usize) -> Result<usize, String> {
        if depth > MAX_DEPTH {
            return Err("messages nested deeper than 64 levels".into());
        }
        let name = self.next()?;
        let full = qualify(scope, name);
        self.messages.push(Message {
            full_name: full.clone(),
            ..Default::default()
        });
        let me = self.messages.len() - 1;
        self.expect("{")?;
        self.body(me, &full, depth, false)?;
        Ok(me)
    }

    /// Members of a message (or of a `oneof` inside it) up to the closing `}`.
    fn body(&mut self, me: usize, full: &str, depth: usize, in_oneof: bool) -> Result<(), String> {
        loop {
            let t = self.next()?;
            match t {
                "}" => return Ok(()),
                ";" => {}
                "message" if !in_oneof => {
                    let n = self.message(full, depth + 1)?;
                    self.messages[me].nested.push(n);
                }
                "enum" if !in_oneof => {
                    let name = self.next()?;
                    self.enums.push(qualify(full, name));
                    self.skip_statement()?;
                }
                "oneof" if !in_oneof => {
                    self.next()?;
                    self.expect("{")?;
                    self.body(me, full, depth, true)?;
                }
                "option" | "reserved" | "extensions" | "extend" => self.skip_statement()?,
                "group" => return Err("proto2 groups are not supported".into()),
                "map" => {
                    self.expect("<")?;
                    self.next()?; // key type: never selectable
                    self.expect(",")?;
                    let value = self.next()?.to_owned();
                    self.expect(">")?;
                    self.field_rest(me, value, true)?;
                }
                "repeated" | "optional" | "required" => {
                    let ty = self.next()?;
                    if ty == "group" {
                        return Err("proto2 groups are not supported".into());
                    }
                    self.field_rest(me, ty.to_owned(), false)?;
                }
                ty => self.field_rest(me, ty.to_owned(), false)?,
            }
        }
    }

    fn field_rest(&mut self, msg: usize, type_name: String, map: bool) -> Result<(), String> {
        let name = self.next()?.to_owned();
        self.expect("=")?;
        let number: u64 = self
            .next()?
            .parse()
            .map_err(|_| format!("field `{name}` has no numeric tag"))?;
        let mut tags = Vec::new();
        if self.peek() == Some("[") {
            let start = self.i;
            let mut depth = 0usize;
            loop {
                match self.next()? {
                    "[" | "{" => depth += 1,
                    "]" | "}" => {
                        depth = depth.checked_sub(1).ok_or("unbalanced field options")?;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
            }
            tags = field_meta_tags(&self.toks[start + 1..self.i - 1])
                .map_err(|e| format!("field `{name}`: {e}"))?;
        }
        self.expect(";")?;
        self.raw.push(RawField {
            msg,
            name,
            number,
            type_name,
            map,
            tags,
        });
        Ok(())
    }
}

/// The tags a field's options (the tokens between `[` and `]`) give through
/// `(confluent.field_meta)`: `(confluent.field_meta).tags = "A"` (or `= ["A", "B"]`), or
/// `(confluent.field_meta) = { tags: "A" tags: ["B"] ... }` (other members of `Meta` ignored).
fn field_meta_tags(toks: &[&str]) -> Result<Vec<String>, String> {
    let mut tags = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let is_meta = toks[i] == "("
            && toks
                .get(i + 1)
                .is_some_and(|n| n.trim_start_matches('.') == FIELD_META_OPTION)
            && toks.get(i + 2) == Some(&")");
        if !is_meta {
            i += 1;
            continue;
        }
        i += 3;
        match toks.get(i).copied() {
            Some(".tags") => {
                if toks.get(i + 1) != Some(&"=") {
                    return Err("`(confluent.field_meta).tags` without `=`".into());
                }
                i = string_values(toks, i + 2, &mut tags)?;
            }
            Some("=") if toks.get(i + 1) == Some(&"{") => {
                i += 2;
                let mut depth = 1usize;
                while depth > 0 {
                    match toks.get(i).copied() {
                        None => return Err("unbalanced `(confluent.field_meta)` value".into()),
                        Some("{" | "[") => depth += 1,
                        Some("}" | "]") => depth -= 1,
                        Some("tags") if depth == 1 => {
                            let at = if toks.get(i + 1) == Some(&":") {
                                i + 2
                            } else {
                                i + 1
                            };
                            i = string_values(toks, at, &mut tags)?;
                            continue;
                        }
                        Some(_) => {}
                    }
                    i += 1;
                }
            }
            _ => {} // another member of Meta (`.doc`, `.params`): no tags
        }
    }
    Ok(tags)
}

/// Reads a string literal or a `[...]` list of them at `toks[i]` into `out`; returns the index
/// after it.
fn string_values(toks: &[&str], mut i: usize, out: &mut Vec<String>) -> Result<usize, String> {
    let literal = |t: &str| -> Result<String, String> {
        let inner = t
            .strip_prefix('"')
            .and_then(|x| x.strip_suffix('"'))
            .or_else(|| t.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
            .ok_or_else(|| format!("tag `{t}` is not a string literal"))?;
        if inner.contains('\\') {
            return Err(format!(
                "tag {t} has an escape sequence (not supported in tags)"
            ));
        }
        Ok(inner.to_owned())
    };
    if toks.get(i) == Some(&"[") {
        i += 1;
        while let Some(&t) = toks.get(i) {
            i += 1;
            match t {
                "]" => return Ok(i),
                "," => {}
                t => out.push(literal(t)?),
            }
        }
        return Err("unterminated tag list".into());
    }
    let t = toks.get(i).ok_or("tag value missing")?;
    out.push(literal(t)?);
    Ok(i + 1)
}

/// Resolves `name` from inside message `scope` by Protobuf's rules (innermost scope first).
pub(super) fn resolve(
    names: &HashMap<&str, usize>,
    enums: &[String],
    scope: &str,
    name: &str,
) -> FieldType {
    if let Some(s) = scalar(name) {
        return s;
    }
    let lookup = |full: &str| -> Option<FieldType> {
        names.get(full).map(|&i| FieldType::Message(i)).or_else(|| {
            enums
                .iter()
                .any(|e| e == full)
                .then_some(FieldType::Scalar("varint"))
        })
    };
    if let Some(abs) = name.strip_prefix('.') {
        return lookup(abs).unwrap_or_else(|| FieldType::Unresolved(name.to_owned()));
    }
    let mut s = scope.to_owned();
    loop {
        if let Some(t) = lookup(&qualify(&s, name)) {
            return t;
        }
        match s.rfind('.') {
            Some(i) => s.truncate(i),
            None if !s.is_empty() => s.clear(),
            None => return FieldType::Unresolved(name.to_owned()),
        }
    }
}

pub(in crate::schema) fn qualify(scope: &str, name: &str) -> String {
    if scope.is_empty() {
        name.to_owned()
    } else {
        format!("{scope}.{name}")
    }
}
