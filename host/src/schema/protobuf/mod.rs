//! Protobuf: a tight parser for the `.proto` text the registry stores ([`ProtoSchema`]), a
//! selection resolved against it ([`Targets`]) and the wire-format walker ([`locate`]).
//!
//! The parser reads what a message layout needs: `package`, `message` (nested), fields with
//! their labels, `map<K, V>`, `oneof`, `enum` and `group`-free proto2/proto3 syntax; options,
//! `reserved`, `extensions`, `extend` and `service` blocks are skipped. Type names resolve by
//! Protobuf's scoping rules within the file; a field of a type from an import (another registry
//! subject) is refused when the selection needs it.
//!
//! After the schema id the value carries the message indexes (zig-zag count, then zig-zag
//! indexes; a single `0` means the first message), then the message. Fields are read by tag and
//! wire type; unknown fields are skipped and kept as they are; groups are refused.
//!
//! Field tags are Confluent's field option `(confluent.field_meta)` (extension 1088 of
//! `google.protobuf.FieldOptions`, message `confluent.Meta`, `repeated string tags = 3`), read
//! from the text (`[(confluent.field_meta) = { tags: ["PII"] }]`, `[(confluent.field_meta).tags
//! = "PII"]`) and from a serialized descriptor alike.

mod descriptor;
mod parse;

use std::collections::HashMap;
use std::sync::Arc;

pub(super) use self::parse::qualify;
use self::parse::resolve;

use super::varint::{read_unsigned, read_zigzag};
use super::FieldEncoding;
use super::{child_path, split_path, ListedKind, LocatedField, SchemaListing, MAX_DEPTH};
use crate::plan::FieldSelection;

/// A field type as the walker needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum FieldType {
    String,
    Bytes,
    /// Any other scalar or enum (only its wire type matters).
    Scalar(&'static str),
    /// A message type, by index into [`ProtoSchema::messages`].
    Message(usize),
    /// A `map<K, V>`: the value type (entries are messages `{1: key, 2: value}`).
    Map(Box<FieldType>),
    /// A name not defined in this file (from an import).
    Unresolved(String),
}

#[derive(Debug)]
pub(super) struct Field {
    name: String,
    number: u64,
    ty: FieldType,
    /// `(confluent.field_meta).tags`.
    tags: Vec<String>,
}

#[derive(Debug, Default)]
pub(super) struct Message {
    pub(super) full_name: String,
    pub(super) fields: Vec<Field>,
    /// Indexes of nested messages, in declaration order (for message indexes).
    pub(super) nested: Vec<usize>,
    /// A synthetic map entry type (descriptor form: `options.map_entry`).
    pub(super) map_entry: bool,
}

/// A parsed `.proto` file.
#[derive(Debug)]
pub struct ProtoSchema {
    messages: Vec<Message>,
    /// Top-level messages, in declaration order.
    top: Vec<usize>,
}

/// A field before type resolution.
pub(super) struct RawField {
    /// The message it belongs to.
    pub(super) msg: usize,
    pub(super) name: String,
    pub(super) number: u64,
    /// A scalar name (`string`, `int64`, ...) or a message or enum name, relative or absolute.
    pub(super) type_name: String,
    /// Declared as `map<K, type_name>`.
    pub(super) map: bool,
    /// `(confluent.field_meta).tags`.
    pub(super) tags: Vec<String>,
}

/// Name of Confluent's field-metadata option, as written inside `(...)` in `.proto` text.
const FIELD_META_OPTION: &str = "confluent.field_meta";

/// Field number of the `field_meta` extension in `google.protobuf.FieldOptions`
/// (`confluent/meta.proto`).
pub(super) const FIELD_META_EXTENSION: u64 = 1088;

/// Field number of `repeated string tags` in `confluent.Meta`.
pub(super) const META_TAGS_FIELD: u64 = 3;

/// What a parser or the descriptor decoder produces: messages, enum names, fields to resolve.
#[derive(Default)]
pub(super) struct Raw {
    pub(super) messages: Vec<Message>,
    pub(super) enums: Vec<String>,
    pub(super) fields: Vec<RawField>,
    pub(super) top: Vec<usize>,
}

impl ProtoSchema {
    /// Parses a registered Protobuf schema: `.proto` text, or the base64 of a serialized
    /// `FileDescriptorProto` (what confluent-kafka's Python serializer registers, and what
    /// Apicurio returns for it).
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::build(Self::read(text)?)
    }

    /// Parses a registered Protobuf schema whose imports (schema references) are `imports`
    /// (each read by [`ProtoSchema::read`]): their messages and enums resolve field types, and
    /// the message indexes still count the messages of `text` only.
    pub(super) fn parse_with_imports(text: &str, imports: Vec<Raw>) -> Result<Self, String> {
        let main = Self::read(text)?;
        let mut all = Raw::default();
        for file in imports.into_iter().chain(std::iter::once(main)) {
            let base = all.messages.len();
            all.messages.extend(file.messages.into_iter().map(|mut m| {
                m.nested.iter_mut().for_each(|n| *n += base);
                m
            }));
            all.enums.extend(file.enums);
            all.fields.extend(file.fields.into_iter().map(|mut f| {
                f.msg += base;
                f
            }));
            // Only the last file's (the schema's own) top-level messages are indexed.
            all.top = file.top.into_iter().map(|t| t + base).collect();
        }
        Self::build(all)
    }

    /// Reads `.proto` text or a base64 `FileDescriptorProto` without resolving types.
    pub(super) fn read(text: &str) -> Result<Raw, String> {
        use base64::Engine as _;
        let trimmed = text.trim();
        let looks_base64 = !trimmed.is_empty()
            && trimmed
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'='));
        Ok(
            match base64::engine::general_purpose::STANDARD.decode(trimmed) {
                Ok(bytes) if looks_base64 => descriptor::decode(&bytes)?,
                _ => parse::parse_text(text)?,
            },
        )
    }

    fn build(raw: Raw) -> Result<Self, String> {
        let Raw {
            mut messages,
            enums,
            fields,
            top,
        } = raw;
        if top.is_empty() {
            return Err("the Protobuf schema defines no message".into());
        }
        let names: HashMap<&str, usize> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| (m.full_name.as_str(), i))
            .collect();
        let mut resolved: Vec<(usize, Field)> = Vec::new();
        for r in &fields {
            let scope = &messages[r.msg].full_name;
            let t = resolve(&names, &enums, scope, &r.type_name);
            resolved.push((
                r.msg,
                Field {
                    name: r.name.clone(),
                    number: r.number,
                    tags: r.tags.clone(),
                    ty: if r.map {
                        FieldType::Map(Box::new(t))
                    } else {
                        t
                    },
                },
            ));
        }
        drop(names);
        for (m, f) in resolved {
            messages[m].fields.push(f);
        }
        // Descriptor form: a field of a map-entry type is a map of the entry's value (field 2).
        let entry_values: Vec<Option<FieldType>> = messages
            .iter()
            .map(|m| {
                m.map_entry
                    .then(|| {
                        m.fields
                            .iter()
                            .find(|f| f.number == 2)
                            .map(|f| f.ty.clone())
                    })
                    .flatten()
            })
            .collect();
        for m in &mut messages {
            for f in &mut m.fields {
                if let FieldType::Message(i) = f.ty {
                    if let Some(v) = &entry_values[i] {
                        f.ty = FieldType::Map(Box::new(v.clone()));
                    }
                }
            }
        }
        Ok(Self { messages, top })
    }
}

impl ProtoSchema {
    /// Every field path of the schema with its tags and kind, as [`Targets::resolve`] reads
    /// paths: from every top-level message (a record's message indexes choose one; a path in
    /// several is listed once), through message fields and map values (`oneof` members are
    /// fields of their message), a message inside itself (recursion) not entered again.
    pub fn list_fields(&self) -> SchemaListing {
        let mut out = SchemaListing::default();
        for &m in &self.top {
            self.list_under(m, "", 0, &mut Vec::new(), &mut out);
        }
        out
    }

    fn list_under(
        &self,
        msg: usize,
        prefix: &str,
        depth: usize,
        open: &mut Vec<usize>,
        out: &mut SchemaListing,
    ) {
        if open.contains(&msg) {
            return;
        }
        open.push(msg);
        for f in &self.messages[msg].fields {
            if !out.visit(depth) {
                break;
            }
            let path = child_path(prefix, &f.name);
            let ty = match &f.ty {
                FieldType::Map(v) => v.as_ref(),
                t => t,
            };
            let kind = match ty {
                FieldType::String => ListedKind::Text,
                FieldType::Bytes => ListedKind::Bytes,
                _ => ListedKind::Other,
            };
            out.push(path.clone(), &f.tags, kind);
            if let FieldType::Message(n) = ty {
                self.list_under(*n, &path, depth + 1, open, out);
            }
        }
        open.pop();
    }
}

/// A selection resolved against one Protobuf schema.
#[derive(Debug)]
pub struct Targets {
    schema: Arc<ProtoSchema>,
    paths: Vec<Vec<String>>,
    /// Per message, per field: selected by a tag.
    by_tag: Vec<Vec<bool>>,
}

impl Targets {
    /// Resolves `sel`: every path must name a `string` or `bytes` field (or a map with such
    /// values), through message fields, and so must every field tagged with one of `sel.tags`.
    pub fn resolve(schema: &Arc<ProtoSchema>, sel: &FieldSelection) -> Result<Self, String> {
        let mut by_tag = Vec::with_capacity(schema.messages.len());
        for m in &schema.messages {
            let mut v = Vec::with_capacity(m.fields.len());
            for f in &m.fields {
                let hit = f.tags.iter().any(|t| sel.tags.contains(t));
                if hit {
                    check_selectable(
                        schema,
                        &f.ty,
                        &format!(
                            "field `{}` of message `{}` (tagged {})",
                            f.name,
                            m.full_name,
                            f.tags.join(", ")
                        ),
                    )?;
                }
                v.push(hit);
            }
            by_tag.push(v);
        }
        let mut paths = Vec::new();
        for p in &sel.fields {
            let segs = split_path(p)?;
            // A path may start in any top-level message (the indexes choose one per record);
            // it must fit every top-level message that has its first field.
            let roots: Vec<usize> = schema
                .top
                .iter()
                .copied()
                .filter(|&r| schema.messages[r].fields.iter().any(|f| f.name == segs[0]))
                .collect();
            if roots.is_empty() {
                return Err(format!(
                    "field path `{p}`: no top-level message has a field `{}`",
                    segs[0]
                ));
            }
            for root in roots {
                check_path(schema, root, &segs, p)?;
            }
            paths.push(segs);
        }
        Ok(Self {
            schema: schema.clone(),
            paths,
            by_tag,
        })
    }
}

/// `Ok` when a field of type `ty` (a map: its values) can hold ciphertext; else why not, about
/// `what`.
fn check_selectable(s: &ProtoSchema, ty: &FieldType, what: &str) -> Result<(), String> {
    let ty = match ty {
        FieldType::Map(v) => v.as_ref(),
        t => t,
    };
    match ty {
        FieldType::String | FieldType::Bytes => Ok(()),
        FieldType::Unresolved(t) => Err(format!(
            "{what} has type `{t}` from another file that the registry did not supply"
        )),
        other => Err(format!(
            "{what} is a Protobuf {}; only string and bytes fields can hold ciphertext",
            describe(s, other)
        )),
    }
}

fn describe(s: &ProtoSchema, ty: &FieldType) -> String {
    match ty {
        FieldType::Message(n) => format!("message {}", s.messages[*n].full_name),
        FieldType::Scalar(w) => format!("scalar or enum ({w})"),
        FieldType::Map(v) => format!("map of {}", describe(s, v)),
        FieldType::String | FieldType::Bytes => "string or bytes with fields below it".into(),
        FieldType::Unresolved(t) => format!("`{t}`"),
    }
}

fn check_path(s: &ProtoSchema, root: usize, segs: &[String], p: &str) -> Result<(), String> {
    let mut msg = root;
    for (k, seg) in segs.iter().enumerate() {
        let m = &s.messages[msg];
        let f = m.fields.iter().find(|f| &f.name == seg).ok_or_else(|| {
            format!(
                "field path `{p}`: message `{}` has no field `{seg}`",
                m.full_name
            )
        })?;
        let ty = match &f.ty {
            FieldType::Map(v) => v.as_ref(),
            t => t,
        };
        let last = k + 1 == segs.len();
        match (ty, last) {
            (FieldType::String | FieldType::Bytes, true) => return Ok(()),
            (FieldType::Message(n), false) => msg = *n,
            (FieldType::Unresolved(t), _) => {
                return Err(format!(
                    "field `{}` has type `{t}` from another file that the registry did not supply",
                    segs[..=k].join(".")
                ))
            }
            (other, _) => {
                return Err(format!(
                    "field `{}` is a Protobuf {}; only string and bytes fields can hold ciphertext",
                    segs[..=k].join("."),
                    describe(s, other)
                ))
            }
        }
    }
    Ok(())
}

struct Walker<'a> {
    b: &'a [u8],
    t: &'a Targets,
    stack: Vec<&'a str>,
    found: Vec<LocatedField>,
}

/// Finds the selected fields in the Protobuf value `value[offset..]` (message indexes first).
pub fn locate(t: &Targets, value: &[u8], offset: usize) -> Result<Vec<LocatedField>, String> {
    let mut pos = offset;
    let count = read_zigzag(value, &mut pos).ok_or("truncated message indexes")?;
    let mut indexes = Vec::new();
    if count == 0 {
        indexes.push(0);
    } else {
        let count = usize::try_from(count)
            .ok()
            .filter(|&c| c <= MAX_DEPTH)
            .ok_or("bad message index count")?;
        for _ in 0..count {
            let i = read_zigzag(value, &mut pos).ok_or("truncated message indexes")?;
            indexes.push(usize::try_from(i).map_err(|_| "negative message index")?);
        }
    }
    let s = &t.schema;
    let mut msg = *s
        .top
        .get(indexes[0])
        .ok_or_else(|| format!("message index {} is not in the schema", indexes[0]))?;
    for &i in &indexes[1..] {
        msg = *s.messages[msg]
            .nested
            .get(i)
            .ok_or_else(|| format!("nested message index {i} is not in the schema"))?;
    }
    let mut w = Walker {
        b: value,
        t,
        stack: Vec::new(),
        found: Vec::new(),
    };
    w.message(msg, pos, value.len(), 0)?;
    Ok(w.found)
}

impl<'a> Walker<'a> {
    /// The field on top of the stack is named by a path of the selection.
    fn path_selected(&self) -> bool {
        self.t
            .paths
            .iter()
            .any(|p| p.len() == self.stack.len() && p.iter().zip(&self.stack).all(|(a, b)| a == b))
    }

    fn message(
        &mut self,
        msg: usize,
        mut pos: usize,
        end: usize,
        depth: usize,
    ) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("messages nested deeper than {MAX_DEPTH} levels"));
        }
        let schema: &'a ProtoSchema = &self.t.schema;
        while pos < end {
            let at = pos;
            let tag = read_unsigned(&self.b[..end], &mut pos)
                .ok_or_else(|| format!("bad tag at byte {at}"))?;
            let (number, wire) = (tag >> 3, tag & 7);
            let field = schema.messages[msg]
                .fields
                .iter()
                .enumerate()
                .find(|(_, f)| f.number == number);
            match wire {
                0 => {
                    read_unsigned(&self.b[..end], &mut pos).ok_or("truncated varint")?;
                }
                1 | 5 => {
                    pos += if wire == 1 { 8 } else { 4 };
                    if pos > end {
                        return Err("truncated fixed-width field".into());
                    }
                }
                2 => {
                    let len_at = pos;
                    let n = read_unsigned(&self.b[..end], &mut pos).ok_or("truncated length")?;
                    let n = usize::try_from(n).map_err(|_| "bad length")?;
                    if end - pos < n {
                        return Err(format!("field {number}: length {n} beyond the message"));
                    }
                    if let Some((fi, f)) = field {
                        self.stack.push(&f.name);
                        let selected = self.t.by_tag[msg][fi] || self.path_selected();
                        let r = self.len_field(&f.ty, selected, len_at, pos, pos + n, depth);
                        self.stack.pop();
                        r?;
                    }
                    pos += n;
                }
                _ => {
                    return Err(format!(
                        "field {number}: wire type {wire} (groups) not supported"
                    ))
                }
            }
        }
        if pos != end {
            return Err("message overruns its length".into());
        }
        Ok(())
    }

    /// A length-delimited field `[content_start, content_end)` whose length starts at `len_at`;
    /// `selected`: its string or bytes content (a map's values) is to be encrypted.
    fn len_field(
        &mut self,
        ty: &'a FieldType,
        selected: bool,
        len_at: usize,
        start: usize,
        end: usize,
        depth: usize,
    ) -> Result<(), String> {
        match ty {
            FieldType::String | FieldType::Bytes if selected => {
                self.found.push(LocatedField {
                    path: self.stack.join("."),
                    range: len_at..end,
                    encoding: if *ty == FieldType::String {
                        FieldEncoding::ProtoText
                    } else {
                        FieldEncoding::ProtoRaw
                    },
                });
                Ok(())
            }
            FieldType::Message(m) => self.message(*m, start, end, depth + 1),
            FieldType::Map(v) => {
                // A map entry: key (1) left alone, value (2) read as the map's value type.
                let mut pos = start;
                while pos < end {
                    let tag = read_unsigned(&self.b[..end], &mut pos).ok_or("bad map entry")?;
                    match tag & 7 {
                        0 => {
                            read_unsigned(&self.b[..end], &mut pos).ok_or("bad map entry")?;
                        }
                        1 => pos += 8,
                        5 => pos += 4,
                        2 => {
                            let len_at = pos;
                            let n =
                                read_unsigned(&self.b[..end], &mut pos).ok_or("bad map entry")?;
                            let n = usize::try_from(n).map_err(|_| "bad map entry")?;
                            if end - pos < n {
                                return Err("map entry overruns its length".into());
                            }
                            if tag >> 3 == 2 {
                                self.len_field(v, selected, len_at, pos, pos + n, depth + 1)?;
                            }
                            pos += n;
                        }
                        _ => return Err("bad map entry wire type".into()),
                    }
                    if pos > end {
                        return Err("map entry overruns its length".into());
                    }
                }
                Ok(())
            }
            // Strings not selected, packed scalars, fields of imported types: skipped as bytes.
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
