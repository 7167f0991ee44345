//! Avro: the writer schema ([`AvroSchema`]), a selection resolved against it ([`Targets`]) and
//! the binary walker ([`locate`]) that finds the selected fields' spans in a body.
//!
//! The walker reads the Avro binary encoding exactly as the specification defines it: records
//! field by field, unions by branch index, arrays and maps block by block (negative counts with
//! their byte size), enums by index, fixed by size, strings and bytes by zig-zag length. A body
//! that does not decode, or has bytes left over, is refused. Logical types are read as their
//! underlying type; aliases and defaults only matter to readers and are ignored.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::varint::read_zigzag;
use super::FieldEncoding;
use super::{child_path, split_path, ListedKind, LocatedField, SchemaListing, MAX_DEPTH};
use crate::plan::FieldSelection;

/// The Avro attribute Confluent writes field tags under.
pub const TAGS_ATTRIBUTE: &str = "confluent:tags";

/// A type in the schema tree (named types by index into [`AvroSchema::named`]).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Array(Box<Node>),
    Map(Box<Node>),
    Union(Vec<Node>),
    Named(usize),
}

#[derive(Debug)]
enum Named {
    Record { name: String, fields: Vec<Field> },
    Enum { symbols: usize },
    Fixed { size: usize },
}

#[derive(Debug)]
struct Field {
    name: String,
    ty: Node,
    tags: Vec<String>,
}

/// A parsed Avro writer schema.
#[derive(Debug)]
pub struct AvroSchema {
    root: Node,
    named: Vec<Named>,
}

/// Reads schema JSON into named types: first the schemas a schema references
/// ([`Parser::definitions`]), then the schema itself ([`Parser::finish`]).
#[derive(Default)]
pub(super) struct Parser {
    named: Vec<Option<Named>>,
    names: HashMap<String, usize>,
}

fn primitive(name: &str) -> Option<Node> {
    Some(match name {
        "null" => Node::Null,
        "boolean" => Node::Boolean,
        "int" => Node::Int,
        "long" => Node::Long,
        "float" => Node::Float,
        "double" => Node::Double,
        "bytes" => Node::Bytes,
        "string" => Node::String,
        _ => return None,
    })
}

impl Parser {
    fn lookup(&self, name: &str, ns: Option<&str>) -> Result<Node, String> {
        let qualified = match ns {
            Some(ns) if !name.contains('.') => format!("{ns}.{name}"),
            _ => name.to_owned(),
        };
        self.names
            .get(&qualified)
            .or_else(|| self.names.get(name))
            .map(|&i| Node::Named(i))
            .ok_or_else(|| {
                format!(
                    "unknown type name `{name}` (defined later, or in a schema reference the \
                     registry did not list?)"
                )
            })
    }

    fn node(&mut self, v: &Value, ns: Option<&str>, depth: usize) -> Result<Node, String> {
        if depth > MAX_DEPTH {
            return Err(format!("schema nested deeper than {MAX_DEPTH} levels"));
        }
        match v {
            Value::String(s) => primitive(s).map_or_else(|| self.lookup(s, ns), Ok),
            Value::Array(branches) => {
                let mut out = Vec::with_capacity(branches.len());
                for b in branches {
                    let n = self.node(b, ns, depth + 1)?;
                    if matches!(n, Node::Union(_)) {
                        return Err("a union directly inside a union".into());
                    }
                    out.push(n);
                }
                if out.is_empty() {
                    return Err("empty union".into());
                }
                Ok(Node::Union(out))
            }
            Value::Object(o) => {
                let t = o.get("type").ok_or("type object without `type`")?;
                match t.as_str() {
                    Some("record" | "error") => self.record(o, ns, depth),
                    Some("enum") => {
                        let symbols = o
                            .get("symbols")
                            .and_then(Value::as_array)
                            .ok_or("enum without `symbols`")?
                            .len();
                        self.define(o, ns, Named::Enum { symbols })
                    }
                    Some("fixed") => {
                        let size = o
                            .get("size")
                            .and_then(Value::as_u64)
                            .ok_or("fixed without a numeric `size`")?;
                        let size = usize::try_from(size).map_err(|_| "fixed size too large")?;
                        self.define(o, ns, Named::Fixed { size })
                    }
                    Some("array") => Ok(Node::Array(Box::new(self.node(
                        o.get("items").ok_or("array without `items`")?,
                        ns,
                        depth + 1,
                    )?))),
                    Some("map") => Ok(Node::Map(Box::new(self.node(
                        o.get("values").ok_or("map without `values`")?,
                        ns,
                        depth + 1,
                    )?))),
                    // A primitive or named type with attributes (logicalType, ...), or a nested
                    // type definition.
                    _ => self.node(t, ns, depth + 1),
                }
            }
            other => Err(format!("`{other}` is not an Avro type")),
        }
    }

    /// The full name of a named type and the namespace its members inherit.
    fn full_name(
        o: &serde_json::Map<String, Value>,
        ns: Option<&str>,
    ) -> Result<(String, Option<String>), String> {
        let name = o
            .get("name")
            .and_then(Value::as_str)
            .ok_or("named type without `name`")?;
        let full = if name.contains('.') {
            name.to_owned()
        } else {
            match o.get("namespace").and_then(Value::as_str).or(ns) {
                Some(n) if !n.is_empty() => format!("{n}.{name}"),
                _ => name.to_owned(),
            }
        };
        let inner = full.rsplit_once('.').map(|(n, _)| n.to_owned());
        Ok((full, inner))
    }

    fn reserve(&mut self, full: String) -> Result<usize, String> {
        if self.names.contains_key(&full) {
            return Err(format!("type `{full}` defined twice"));
        }
        self.named.push(None);
        let i = self.named.len() - 1;
        self.names.insert(full, i);
        Ok(i)
    }

    fn define(
        &mut self,
        o: &serde_json::Map<String, Value>,
        ns: Option<&str>,
        def: Named,
    ) -> Result<Node, String> {
        let (full, _) = Self::full_name(o, ns)?;
        let i = self.reserve(full)?;
        self.named[i] = Some(def);
        Ok(Node::Named(i))
    }

    fn record(
        &mut self,
        o: &serde_json::Map<String, Value>,
        ns: Option<&str>,
        depth: usize,
    ) -> Result<Node, String> {
        let (full, inner) = Self::full_name(o, ns)?;
        // Registered before the fields: a record may refer to itself.
        let i = self.reserve(full.clone())?;
        let mut fields = Vec::new();
        for f in o
            .get("fields")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("record `{full}` without `fields`"))?
        {
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("a field of `{full}` has no name"))?;
            let ty = self.node(
                f.get("type")
                    .ok_or_else(|| format!("field `{full}.{name}` has no type"))?,
                inner.as_deref(),
                depth + 1,
            )?;
            let tags = match f.get(TAGS_ATTRIBUTE) {
                None => Vec::new(),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|t| t.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        format!("`{TAGS_ATTRIBUTE}` of `{full}.{name}` is not a list of strings")
                    })?,
                Some(_) => {
                    return Err(format!(
                        "`{TAGS_ATTRIBUTE}` of `{full}.{name}` is not a list of strings"
                    ))
                }
            };
            fields.push(Field {
                name: name.to_owned(),
                ty,
                tags,
            });
        }
        self.named[i] = Some(Named::Record { name: full, fields });
        Ok(Node::Named(i))
    }
}

impl Parser {
    /// Reads a referenced schema (another subject's): the named types it defines become known
    /// to the schemas read after it, as Confluent's deserializers read references.
    pub(super) fn definitions(&mut self, text: &str) -> Result<(), String> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| format!("Avro schema is not JSON: {e}"))?;
        self.node(&v, None, 0).map(|_| ())
    }

    /// Reads the schema itself, with every named type read so far known.
    pub(super) fn finish(mut self, text: &str) -> Result<AvroSchema, String> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| format!("Avro schema is not JSON: {e}"))?;
        let root = self.node(&v, None, 0)?;
        let named = self
            .named
            .into_iter()
            .map(|n| n.ok_or_else(|| "a named type is used inside its own definition".to_owned()))
            .collect::<Result<_, _>>()?;
        Ok(AvroSchema { root, named })
    }
}

impl AvroSchema {
    /// Parses an Avro schema (JSON text as the registry stores it) that references no other
    /// subject.
    pub fn parse(text: &str) -> Result<Self, String> {
        Parser::default().finish(text)
    }

    fn describe(&self, n: &Node) -> String {
        match n {
            Node::Null => "null".into(),
            Node::Boolean => "boolean".into(),
            Node::Int => "int".into(),
            Node::Long => "long".into(),
            Node::Float => "float".into(),
            Node::Double => "double".into(),
            Node::Bytes => "bytes".into(),
            Node::String => "string".into(),
            Node::Array(_) => "array".into(),
            Node::Map(_) => "map".into(),
            Node::Union(b) => format!(
                "union [{}]",
                b.iter()
                    .map(|x| self.describe(x))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Node::Named(i) => match &self.named[*i] {
                Named::Record { name, .. } => format!("record {name}"),
                Named::Enum { .. } => "enum".into(),
                Named::Fixed { .. } => "fixed".into(),
            },
        }
    }

    /// Records reachable from `n` through arrays, maps and unions (not through records).
    fn records_under<'a>(&'a self, n: &'a Node, out: &mut Vec<usize>) {
        match n {
            Node::Array(x) | Node::Map(x) => self.records_under(x, out),
            Node::Union(b) => b.iter().for_each(|x| self.records_under(x, out)),
            Node::Named(i) if matches!(self.named[*i], Named::Record { .. }) => out.push(*i),
            _ => {}
        }
    }

    /// `Ok` when a field of type `n` can hold ciphertext: string, bytes, a union of them and
    /// null with at least one of the two, or an array or map of those (every element).
    fn check_selectable(&self, n: &Node, what: &str) -> Result<(), String> {
        let ok = match n {
            Node::String | Node::Bytes => true,
            Node::Array(x) | Node::Map(x) => return self.check_selectable(x, what),
            Node::Union(b) => {
                b.iter()
                    .all(|x| matches!(x, Node::Null | Node::String | Node::Bytes))
                    && b.iter().any(|x| matches!(x, Node::String | Node::Bytes))
            }
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{what} is an Avro {}; only string and bytes fields (or unions of them with null) \
                 can hold ciphertext: select its string or bytes fields instead, or encrypt the \
                 whole value",
                self.describe(n)
            ))
        }
    }
}

impl AvroSchema {
    /// Every field path of the schema with its tags and kind, as [`Targets::resolve`] reads
    /// paths: records found through arrays, maps and unions, a record inside itself (recursion)
    /// not entered again.
    pub fn list_fields(&self) -> SchemaListing {
        let mut out = SchemaListing::default();
        self.list_under(&self.root, "", 0, &mut Vec::new(), &mut out);
        out
    }

    fn list_under(
        &self,
        n: &Node,
        prefix: &str,
        depth: usize,
        open: &mut Vec<usize>,
        out: &mut SchemaListing,
    ) {
        let mut records = Vec::new();
        self.records_under(n, &mut records);
        for r in records {
            let Named::Record { fields, .. } = &self.named[r] else {
                continue;
            };
            if open.contains(&r) {
                continue;
            }
            open.push(r);
            for f in fields {
                if !out.visit(depth) {
                    break;
                }
                let path = child_path(prefix, &f.name);
                out.push(path.clone(), &f.tags, self.listed_kind(&f.ty));
                self.list_under(&f.ty, &path, depth + 1, open, out);
            }
            open.pop();
        }
    }

    /// The kind of a field of type `n`: text or bytes when [`AvroSchema::check_selectable`]
    /// accepts it (text when any string can occur).
    fn listed_kind(&self, n: &Node) -> ListedKind {
        if self.check_selectable(n, "").is_err() {
            return ListedKind::Other;
        }
        fn has_string(n: &Node) -> bool {
            match n {
                Node::String => true,
                Node::Array(x) | Node::Map(x) => has_string(x),
                Node::Union(b) => b.iter().any(has_string),
                _ => false,
            }
        }
        if has_string(n) {
            ListedKind::Text
        } else {
            ListedKind::Bytes
        }
    }
}

/// A selection resolved against one Avro schema.
#[derive(Debug)]
pub struct Targets {
    schema: Arc<AvroSchema>,
    paths: Vec<Vec<String>>,
    /// Per named type, per field: selected by a tag.
    by_tag: Vec<Vec<bool>>,
}

impl Targets {
    /// Resolves `sel` against `schema`: every explicit path must name a field, and every
    /// selected field (by path or tag) must be a string or bytes (or a union of them with null).
    pub fn resolve(schema: &Arc<AvroSchema>, sel: &FieldSelection) -> Result<Self, String> {
        let mut paths = Vec::new();
        for p in &sel.fields {
            let segs = split_path(p)?;
            let mut nodes: Vec<&Node> = vec![&schema.root];
            let mut last = None;
            for (k, seg) in segs.iter().enumerate() {
                let mut recs = Vec::new();
                for n in &nodes {
                    schema.records_under(n, &mut recs);
                }
                let mut next = Vec::new();
                for r in recs {
                    if let Named::Record { fields, .. } = &schema.named[r] {
                        next.extend(fields.iter().filter(|f| &f.name == seg).map(|f| &f.ty));
                    }
                }
                if next.is_empty() {
                    let parent = if k == 0 {
                        "the top-level record".to_owned()
                    } else {
                        format!("`{}`", segs[..k].join("."))
                    };
                    return Err(format!("field path `{p}`: {parent} has no field `{seg}`"));
                }
                last = Some(next.clone());
                nodes = next;
            }
            for n in last.unwrap_or_default() {
                schema.check_selectable(n, &format!("field `{p}`"))?;
            }
            paths.push(segs);
        }
        let mut by_tag = Vec::with_capacity(schema.named.len());
        for n in &schema.named {
            let mut v = Vec::new();
            if let Named::Record { name, fields } = n {
                for f in fields {
                    let hit = f.tags.iter().any(|t| sel.tags.contains(t));
                    if hit {
                        schema.check_selectable(
                            &f.ty,
                            &format!(
                                "field `{}` of record `{name}` (tagged {})",
                                f.name,
                                f.tags.join(", ")
                            ),
                        )?;
                    }
                    v.push(hit);
                }
            }
            by_tag.push(v);
        }
        Ok(Self {
            schema: schema.clone(),
            paths,
            by_tag,
        })
    }
}

struct Walker<'a> {
    b: &'a [u8],
    pos: usize,
    offset: usize,
    t: &'a Targets,
    stack: Vec<&'a str>,
    found: Vec<LocatedField>,
    /// Items (array and map entries) still allowed: zero-sized items cannot loop forever.
    budget: usize,
}

/// Finds the selected fields in the Avro body `value[offset..]`.
pub fn locate(t: &Targets, value: &[u8], offset: usize) -> Result<Vec<LocatedField>, String> {
    let b = value.get(offset..).ok_or("value shorter than its prefix")?;
    let mut w = Walker {
        b,
        pos: 0,
        offset,
        t,
        stack: Vec::new(),
        found: Vec::new(),
        budget: b.len() * 2 + 1024,
    };
    w.value(&t.schema.root, 0)?;
    if w.pos != b.len() {
        return Err(format!(
            "{} bytes left after the record (written with another schema?)",
            b.len() - w.pos
        ));
    }
    Ok(w.found)
}

impl<'a> Walker<'a> {
    fn err(&self, what: &str) -> String {
        format!("{what} at body byte {}", self.pos)
    }

    fn long(&mut self) -> Result<i64, String> {
        read_zigzag(self.b, &mut self.pos).ok_or_else(|| self.err("truncated or overlong varint"))
    }

    fn skip(&mut self, n: usize) -> Result<(), String> {
        if self.b.len() - self.pos < n {
            return Err(self.err("truncated value"));
        }
        self.pos += n;
        Ok(())
    }

    fn len_prefixed(&mut self) -> Result<(), String> {
        let n = self.long()?;
        let n = usize::try_from(n).map_err(|_| self.err("negative length"))?;
        self.skip(n)
    }

    fn index(&mut self, count: usize, what: &str) -> Result<usize, String> {
        let i = self.long()?;
        usize::try_from(i)
            .ok()
            .filter(|&i| i < count)
            .ok_or_else(|| self.err(&format!("{what} index {i} out of range")))
    }

    fn value(&mut self, n: &'a Node, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(self.err(&format!("nested deeper than {MAX_DEPTH} levels")));
        }
        match n {
            Node::Null => Ok(()),
            Node::Boolean => {
                let v = *self
                    .b
                    .get(self.pos)
                    .ok_or_else(|| self.err("truncated boolean"))?;
                if v > 1 {
                    return Err(self.err("boolean is neither 0 nor 1"));
                }
                self.pos += 1;
                Ok(())
            }
            Node::Int | Node::Long => self.long().map(|_| ()),
            Node::Float => self.skip(4),
            Node::Double => self.skip(8),
            Node::Bytes | Node::String => self.len_prefixed(),
            Node::Union(b) => {
                let i = self.index(b.len(), "union branch")?;
                self.value(&b[i], depth + 1)
            }
            Node::Array(items) => self.blocks(items, false, false, depth),
            Node::Map(values) => self.blocks(values, true, false, depth),
            Node::Named(i) => {
                let schema: &'a AvroSchema = &self.t.schema;
                match &schema.named[*i] {
                    Named::Enum { symbols } => self.index(*symbols, "enum symbol").map(|_| ()),
                    Named::Fixed { size } => self.skip(*size),
                    Named::Record { fields, .. } => {
                        for (fi, f) in fields.iter().enumerate() {
                            self.stack.push(&f.name);
                            let selected = self.t.by_tag[*i][fi]
                                || self.t.paths.iter().any(|p| {
                                    p.len() == self.stack.len()
                                        && p.iter().zip(&self.stack).all(|(a, b)| a == b)
                                });
                            let r = if selected {
                                self.target(&f.ty, depth + 1)
                            } else {
                                self.value(&f.ty, depth + 1)
                            };
                            self.stack.pop();
                            r?;
                        }
                        Ok(())
                    }
                }
            }
        }
    }

    /// Array or map blocks; with `selected`, every item is a selected field (see [`Self::target`]).
    fn blocks(
        &mut self,
        item: &'a Node,
        map: bool,
        selected: bool,
        depth: usize,
    ) -> Result<(), String> {
        loop {
            let mut count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                count = count
                    .checked_neg()
                    .ok_or_else(|| self.err("bad block count"))?;
                self.long()?; // block size in bytes: the items are walked anyway
            }
            let count = usize::try_from(count).map_err(|_| self.err("bad block count"))?;
            if count > self.budget {
                return Err(self.err("more array or map items than the value can hold"));
            }
            self.budget -= count;
            for _ in 0..count {
                if map {
                    self.len_prefixed()?;
                }
                if selected {
                    self.target(item, depth + 1)?;
                } else {
                    self.value(item, depth + 1)?;
                }
            }
        }
    }

    /// A selected field: records the span of its string or bytes value (nothing for null; every
    /// element of an array or map).
    fn target(&mut self, n: &'a Node, depth: usize) -> Result<(), String> {
        let branch = match n {
            Node::Union(b) => &b[self.index(b.len(), "union branch")?],
            other => other,
        };
        let encoding = match branch {
            Node::Null => return Ok(()),
            Node::Array(items) => return self.blocks(items, false, true, depth),
            Node::Map(values) => return self.blocks(values, true, true, depth),
            Node::String => FieldEncoding::AvroText,
            Node::Bytes => FieldEncoding::AvroRaw,
            // Resolution refuses other types; never reached.
            _ => return Err(self.err("selected field is not a string or bytes")),
        };
        let start = self.pos;
        self.len_prefixed()?;
        self.found.push(LocatedField {
            path: self.stack.join("."),
            range: self.offset + start..self.offset + self.pos,
            encoding,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests;
