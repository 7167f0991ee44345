//! JSON Schema: the body after the wire prefix is a JSON document; selected properties are found
//! with the JSON field scanner ([`crate::json`]) at the pointers the selection resolves
//! to, and must hold strings (or null, left as it is).
//!
//! Paths are dotted property names (`customer.email` is `/customer/email`); tags are read from
//! `confluent:tags` on properties. Properties are followed through nested `properties`, local
//! `$ref`s (`#/definitions/X`, `#/$defs/X`) and `$ref`s to the schema's registry `references`
//! (Confluent's semantics: `$ref` names a reference by its `name`, optionally with a `#/...`
//! fragment; a relative `$ref` is also resolved against the referring document's `$id` and
//! matched against reference names and `$id`s). A tagged property anywhere else (array items,
//! `oneOf`/`anyOf`/`allOf`, `additionalProperties`, `patternProperties`) or under a recursive
//! `$ref` is refused at first use rather than silently left in clear.

use serde_json::Value;

use super::FieldEncoding;
use super::{child_path, split_path, ListedKind, LocatedField, SchemaListing, MAX_DEPTH};
use crate::json::find_spans;
use crate::plan::FieldSelection;

/// The JSON Schema keyword Confluent writes property tags under.
pub const TAGS_KEYWORD: &str = "confluent:tags";

/// Most properties a tag search visits in one schema (its references included): a bound on the
/// work a registry-supplied schema can cause.
const MAX_VISITED_PROPERTIES: usize = 4096;

/// One JSON document: the schema itself or one of its references.
#[derive(Debug)]
struct Document {
    /// The reference's `name` (empty for the schema itself).
    name: String,
    /// Its `$id`, when it has one that parses as an absolute URL (base of relative `$ref`s).
    id: Option<url::Url>,
    value: Value,
}

/// A JSON Schema with the schemas its registry `references` name (every one, transitively).
#[derive(Debug)]
pub struct JsonSchema {
    /// `documents[0]` is the schema; the others its references.
    documents: Vec<Document>,
}

/// A node of a document: which document, the value, and its location `name#pointer` (for the
/// reachability check and messages).
type Node<'a> = (usize, &'a Value, String);

impl JsonSchema {
    /// Parses `text` with its references (`(name, text)` pairs).
    pub fn parse(text: &str, references: &[(&str, &str)]) -> Result<Self, String> {
        let doc = |name: &str, text: &str| -> Result<Document, String> {
            let value: Value = serde_json::from_str(text).map_err(|e| {
                if name.is_empty() {
                    format!("JSON Schema is not JSON: {e}")
                } else {
                    format!("referenced JSON Schema `{name}` is not JSON: {e}")
                }
            })?;
            let id = value
                .get("$id")
                .and_then(Value::as_str)
                .and_then(|i| url::Url::parse(i).ok());
            Ok(Document {
                name: name.to_owned(),
                id,
                value,
            })
        };
        let mut documents = vec![doc("", text)?];
        for (name, text) in references {
            documents.push(doc(name, text)?);
        }
        Ok(Self { documents })
    }

    /// The schema itself as a node.
    fn root(&self) -> Node<'_> {
        (0, &self.documents[0].value, "#".to_owned())
    }

    /// The document a `$ref`'s URI part (before `#`) names, seen from document `from`.
    fn document(&self, from: usize, uri: &str) -> Option<usize> {
        let named = |n: &str| (1..self.documents.len()).find(|&d| self.documents[d].name == n);
        if let Some(d) = named(uri) {
            return Some(d);
        }
        let base = self.documents[from]
            .id
            .as_ref()
            .or(self.documents[0].id.as_ref());
        let absolute = match base {
            Some(b) => b.join(uri).ok()?,
            None => url::Url::parse(uri).ok()?,
        };
        (1..self.documents.len()).find(|&d| {
            let doc = &self.documents[d];
            doc.id.as_ref() == Some(&absolute)
                || base
                    .and_then(|b| b.join(&doc.name).ok())
                    .is_some_and(|u| u == absolute)
        })
    }

    /// Follows `$ref`s from `node` (local ones, and ones naming a reference) to a node without.
    fn deref<'a>(&'a self, node: Node<'a>) -> Result<Node<'a>, String> {
        let (mut doc, mut v, mut location) = node;
        for _ in 0..MAX_DEPTH {
            let Some(r) = v.get("$ref").and_then(Value::as_str) else {
                return Ok((doc, v, location));
            };
            let (uri, fragment) = r.split_once('#').unwrap_or((r, ""));
            if !uri.is_empty() {
                doc = self.document(doc, uri).ok_or_else(|| {
                    let names: Vec<&str> = self.documents[1..]
                        .iter()
                        .map(|d| d.name.as_str())
                        .collect();
                    format!(
                        "`$ref: {r}` names no local definition and none of the schema's \
                         references ({}); register the referenced schema and list it in \
                         `references` under that name",
                        if names.is_empty() {
                            "it has none".to_owned()
                        } else {
                            names.join(", ")
                        }
                    )
                })?;
            }
            v = self.documents[doc]
                .value
                .pointer(fragment)
                .ok_or_else(|| format!("`$ref: {r}` names nothing in the schema"))?;
            location = format!("{}#{fragment}", self.documents[doc].name);
        }
        Err("`$ref` chain longer than 64".into())
    }
}

fn is_string_type(v: &Value) -> bool {
    match v.get("type") {
        Some(Value::String(t)) => t == "string",
        Some(Value::Array(ts)) => {
            ts.iter().any(|t| t == "string") && ts.iter().all(|t| t == "string" || t == "null")
        }
        _ => false,
    }
}

fn tags_of(v: &Value) -> Vec<&str> {
    v.get(TAGS_KEYWORD)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Every object in `v` (recursively) whose `confluent:tags` meets `tags`, by location.
fn tagged_anywhere(v: &Value, tags: &[String], at: String, depth: usize, out: &mut Vec<String>) {
    if depth > MAX_DEPTH {
        return;
    }
    match v {
        Value::Object(o) => {
            if tags_of(v).iter().any(|t| tags.iter().any(|s| s == t)) {
                out.push(at.clone());
            }
            for (k, x) in o {
                tagged_anywhere(x, tags, format!("{at}/{k}"), depth + 1, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                tagged_anywhere(x, tags, format!("{at}/{i}"), depth + 1, out);
            }
        }
        _ => {}
    }
}

/// The state of one tag search.
struct TagSearch<'a> {
    tags: &'a [String],
    /// Dotted path of the property being looked at.
    path: Vec<String>,
    /// Locations of the objects being expanded (a `$ref` back to one is a recursion).
    expanding: Vec<String>,
    /// Locations of the tagged properties found (and of their `$ref` targets).
    seen: Vec<String>,
    visited: usize,
    found: Vec<Vec<String>>,
}

impl TagSearch<'_> {
    /// Tagged properties reachable through `properties` (and `$ref`s) from `node`.
    fn search(&mut self, schema: &JsonSchema, node: Node<'_>) -> Result<(), String> {
        if self.path.len() > MAX_DEPTH {
            return Err("properties nested deeper than 64 levels".into());
        }
        let (doc, resolved, location) = schema.deref(node)?;
        let Some(props) = resolved.get("properties").and_then(Value::as_object) else {
            return Ok(());
        };
        if self.expanding.contains(&location) {
            let mut inside = Vec::new();
            tagged_anywhere(resolved, self.tags, location.clone(), 0, &mut inside);
            if inside.is_empty() {
                return Ok(()); // a recursion with nothing tagged below it
            }
            return Err(format!(
                "property `{}` is a recursive `$ref` to `{location}`, which holds properties \
                 tagged {}: tags cannot be resolved in a recursive JSON Schema; select the \
                 fields by path",
                self.path.join("."),
                self.tags.join(", ")
            ));
        }
        self.expanding.push(location.clone());
        for (name, p) in props {
            self.visited += 1;
            if self.visited > MAX_VISITED_PROPERTIES {
                return Err(format!(
                    "the tag search visits more than {MAX_VISITED_PROPERTIES} properties: schema \
                     too large; select the fields by path"
                ));
            }
            let property_location = format!("{location}/properties/{name}");
            self.path.push(name.clone());
            let (_, target, target_location) = schema.deref((doc, p, property_location.clone()))?;
            let tagged = tags_of(p)
                .into_iter()
                .chain(tags_of(target))
                .any(|t| self.tags.iter().any(|s| s == t));
            if tagged {
                self.seen.push(property_location);
                self.seen.push(target_location);
                if !is_string_type(target) {
                    return Err(format!(
                        "property `{}` (tagged {}) is not of type string; only string \
                         properties can hold ciphertext",
                        self.path.join("."),
                        tags_of(target)
                            .into_iter()
                            .chain(tags_of(p))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                self.found.push(self.path.clone());
            } else {
                self.search(schema, (doc, p, property_location))?;
            }
            self.path.pop();
        }
        self.expanding.pop();
        Ok(())
    }
}

impl JsonSchema {
    /// Every property path of the schema with its tags and kind, as [`Targets::resolve`] reads
    /// paths: through nested `properties` and `$ref`s (local and to references), tags from the
    /// property and from its `$ref` target; an object inside itself (recursive `$ref`) is not
    /// entered again, and a `$ref` that names nothing lists the property as `other`. Properties
    /// under array `items`, `oneOf`/`anyOf`/`allOf`, `additionalProperties` or
    /// `patternProperties` are not listed: no path selects them.
    pub fn list_fields(&self) -> SchemaListing {
        let mut out = SchemaListing::default();
        self.list_under(self.root(), "", 0, &mut Vec::new(), &mut out);
        out
    }

    fn list_under(
        &self,
        node: Node<'_>,
        prefix: &str,
        depth: usize,
        open: &mut Vec<String>,
        out: &mut SchemaListing,
    ) {
        let Ok((doc, resolved, location)) = self.deref(node) else {
            return;
        };
        let Some(props) = resolved.get("properties").and_then(Value::as_object) else {
            return;
        };
        if open.contains(&location) {
            return;
        }
        open.push(location.clone());
        for (name, p) in props {
            if !out.visit(depth) {
                break;
            }
            let path = child_path(prefix, name);
            let property_location = format!("{location}/properties/{name}");
            let target = self.deref((doc, p, property_location.clone())).ok();
            let mut tags: Vec<String> = Vec::new();
            for t in tags_of(p)
                .into_iter()
                .chain(target.iter().flat_map(|t| tags_of(t.1)))
            {
                if !tags.iter().any(|x| x == t) {
                    tags.push(t.to_owned());
                }
            }
            let kind = match &target {
                Some((_, v, _)) if is_string_type(v) => ListedKind::Text,
                _ => ListedKind::Other,
            };
            out.push(path.clone(), &tags, kind);
            if target.is_some() {
                self.list_under((doc, p, property_location), &path, depth + 1, open, out);
            }
        }
        open.pop();
    }
}

/// A selection resolved against one JSON Schema.
#[derive(Debug)]
pub struct Targets {
    /// Parsed pointers (tokens), one per selected property.
    pointers: Vec<Vec<String>>,
    /// Their dotted paths (the names bound in the ciphertext's AAD).
    names: Vec<String>,
}

impl Targets {
    /// Resolves `sel` against `schema`.
    pub fn resolve(schema: &JsonSchema, sel: &FieldSelection) -> Result<Self, String> {
        let mut pointers: Vec<Vec<String>> = Vec::new();
        for p in &sel.fields {
            let segs = split_path(p)?;
            let mut node = schema.root();
            for (k, seg) in segs.iter().enumerate() {
                let (doc, v, location) = schema.deref(node)?;
                let child = v
                    .get("properties")
                    .and_then(|props| props.get(seg))
                    .ok_or_else(|| {
                        format!(
                            "field path `{p}`: `{}` has no property `{seg}`",
                            if k == 0 {
                                "the top-level object".to_owned()
                            } else {
                                segs[..k].join(".")
                            }
                        )
                    })?;
                node = (doc, child, format!("{location}/properties/{seg}"));
            }
            if !is_string_type(schema.deref(node)?.1) {
                return Err(format!(
                    "field `{p}` is not of type string; only string properties can hold ciphertext"
                ));
            }
            pointers.push(segs);
        }
        if !sel.tags.is_empty() {
            let mut search = TagSearch {
                tags: &sel.tags,
                path: Vec::new(),
                expanding: Vec::new(),
                seen: Vec::new(),
                visited: 0,
                found: Vec::new(),
            };
            search.search(schema, schema.root())?;
            let mut anywhere = Vec::new();
            for d in &schema.documents {
                tagged_anywhere(
                    &d.value,
                    &sel.tags,
                    format!("{}#", d.name),
                    0,
                    &mut anywhere,
                );
            }
            if let Some(loc) = anywhere.iter().find(|l| !search.seen.contains(l)) {
                return Err(format!(
                    "a property tagged {} at `{loc}` is not reachable through plain `properties` \
                     (array items, oneOf/anyOf/allOf, additionalProperties, patternProperties): \
                     not supported; encrypt the whole value instead",
                    sel.tags.join(", ")
                ));
            }
            for f in search.found {
                if !pointers.contains(&f) {
                    pointers.push(f);
                }
            }
        }
        let names = pointers.iter().map(|p| p.join(".")).collect();
        Ok(Self { pointers, names })
    }
}

/// Finds the selected properties in the JSON body `value[offset..]`.
pub fn locate(t: &Targets, value: &[u8], offset: usize) -> Result<Vec<LocatedField>, String> {
    let body = value.get(offset..).ok_or("value shorter than its prefix")?;
    let spans = find_spans(body, &t.pointers, &t.names).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (name, span) in t.names.iter().zip(spans) {
        let Some(span) = span else { continue };
        match body[span.start] {
            b'"' => out.push(LocatedField {
                path: name.clone(),
                range: offset + span.start..offset + span.end,
                encoding: FieldEncoding::JsonText,
            }),
            b'n' => {} // null: an absent optional value
            _ => {
                return Err(format!(
                    "property `{name}` holds a value that is not a string"
                ))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
