//! JSON Schema: the body after the wire prefix is a JSON document; selected properties are found
//! with the JSON field scanner ([`crate::json`]) at the pointers the selection resolves
//! to, and must hold strings (or null, left as it is).
//!
//! Paths are dotted property names (`customer.email` is `/customer/email`); tags are read from
//! `confluent:tags` on properties. Properties are followed through nested `properties` and local
//! `$ref`s (`#/...`); a tagged property anywhere else (array items, `oneOf`/`anyOf`/`allOf`,
//! `additionalProperties`) is refused at first use rather than silently left in clear.

use serde_json::Value;

use super::FieldEncoding;
use super::{split_path, LocatedField, MAX_DEPTH};
use crate::json::find_spans;
use crate::plan::FieldSelection;

/// The JSON Schema keyword Confluent writes property tags under.
pub const TAGS_KEYWORD: &str = "confluent:tags";

/// A selection resolved against one JSON Schema.
#[derive(Debug)]
pub struct Targets {
    /// Parsed pointers (tokens), one per selected property.
    pointers: Vec<Vec<String>>,
    /// Their dotted paths (the names bound in the ciphertext's AAD).
    names: Vec<String>,
}

/// Follows a local `$ref` (`#/definitions/X`, `#/$defs/X`); other references are refused.
fn deref<'a>(root: &'a Value, mut v: &'a Value) -> Result<&'a Value, String> {
    for _ in 0..MAX_DEPTH {
        let Some(r) = v.get("$ref").and_then(Value::as_str) else {
            return Ok(v);
        };
        let ptr = r
            .strip_prefix('#')
            .ok_or_else(|| format!("`$ref: {r}` is not a local reference (not supported)"))?;
        v = root
            .pointer(ptr)
            .ok_or_else(|| format!("`$ref: {r}` names nothing in the schema"))?;
    }
    Err("`$ref` chain longer than 64".into())
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

/// Every object in `v` (recursively) whose `confluent:tags` meets `tags`, by JSON location.
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

/// Tagged properties reachable through `properties` (and local `$ref`s) from `node`.
fn tagged_properties(
    root: &Value,
    node: &Value,
    tags: &[String],
    path: &mut Vec<String>,
    seen_locations: &mut Vec<String>,
    location: String,
    out: &mut Vec<Vec<String>>,
) -> Result<(), String> {
    if path.len() > MAX_DEPTH {
        return Err("properties nested deeper than 64 levels (a recursive schema?)".into());
    }
    let resolved = deref(root, node)?;
    let Some(props) = resolved.get("properties").and_then(Value::as_object) else {
        return Ok(());
    };
    let base = match node.get("$ref").and_then(Value::as_str) {
        Some(r) => r.trim_start_matches('#').to_owned(),
        None => location,
    };
    for (name, p) in props {
        let loc = format!("{base}/properties/{name}");
        path.push(name.clone());
        let target = deref(root, p)?;
        let tagged = tags_of(p)
            .into_iter()
            .chain(tags_of(target))
            .any(|t| tags.iter().any(|s| s == t));
        if tagged {
            seen_locations.push(loc.clone());
            if let Some(r) = p.get("$ref").and_then(Value::as_str) {
                seen_locations.push(r.trim_start_matches('#').to_owned());
            }
            if !is_string_type(target) {
                return Err(format!(
                    "property `{}` (tagged {}) is not of type string; only string properties can \
                     hold ciphertext",
                    path.join("."),
                    tags_of(target)
                        .into_iter()
                        .chain(tags_of(p))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            out.push(path.clone());
        } else {
            tagged_properties(root, p, tags, path, seen_locations, loc, out)?;
        }
        path.pop();
    }
    Ok(())
}

impl Targets {
    /// Resolves `sel` against the JSON Schema `root`.
    pub fn resolve(root: &Value, sel: &FieldSelection) -> Result<Self, String> {
        let mut pointers: Vec<Vec<String>> = Vec::new();
        for p in &sel.fields {
            let segs = split_path(p)?;
            let mut node = root;
            for (k, seg) in segs.iter().enumerate() {
                node = deref(root, node)?
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
            }
            if !is_string_type(deref(root, node)?) {
                return Err(format!(
                    "field `{p}` is not of type string; only string properties can hold ciphertext"
                ));
            }
            pointers.push(segs);
        }
        if !sel.tags.is_empty() {
            let mut seen = Vec::new();
            let mut found = Vec::new();
            tagged_properties(
                root,
                root,
                &sel.tags,
                &mut Vec::new(),
                &mut seen,
                String::new(),
                &mut found,
            )?;
            let mut anywhere = Vec::new();
            tagged_anywhere(root, &sel.tags, String::new(), 0, &mut anywhere);
            if let Some(loc) = anywhere.iter().find(|l| !seen.contains(l)) {
                return Err(format!(
                    "a property tagged {} at `#{loc}` is not reachable through plain `properties` \
                     (array items, oneOf/anyOf/allOf, additionalProperties): not supported; \
                     encrypt the whole value instead",
                    sel.tags.join(", ")
                ));
            }
            for f in found {
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
mod tests {
    use super::*;

    fn sel(fields: &[&str], tags: &[&str]) -> FieldSelection {
        FieldSelection {
            fields: fields.iter().map(|s| s.to_string()).collect(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn paths_and_tags_resolve_to_string_properties() {
        let schema: Value = serde_json::json!({
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "ssn": {"type": "string", "confluent:tags": ["PII"]},
                "customer": {"$ref": "#/definitions/Customer"}
            },
            "definitions": {"Customer": {"type": "object", "properties": {
                "email": {"type": ["string", "null"], "confluent:tags": ["PII"]},
                "name": {"type": "string"}
            }}}
        });
        let t = Targets::resolve(&schema, &sel(&["customer.name"], &["PII"])).unwrap();
        let mut names = t.names.clone();
        names.sort();
        assert_eq!(names, vec!["customer.email", "customer.name", "ssn"]);
        let body = br#"{"id":7,"ssn":"123","customer":{"email":null,"name":"Ann"}}"#;
        let mut value = vec![0, 0, 0, 0, 9];
        value.extend_from_slice(body);
        let found = locate(&t, &value, 5).unwrap();
        let texts: Vec<_> = found
            .iter()
            .map(|f| (f.path.as_str(), &value[f.range.clone()]))
            .collect();
        assert_eq!(
            texts,
            vec![("customer.name", &b"\"Ann\""[..]), ("ssn", &b"\"123\""[..])]
        );

        let e = Targets::resolve(&schema, &sel(&["id"], &[])).unwrap_err();
        assert!(e.contains("field `id` is not of type string"), "{e}");
        let e = Targets::resolve(&schema, &sel(&["customer.phone"], &[])).unwrap_err();
        assert!(e.contains("`customer` has no property `phone`"), "{e}");
    }

    #[test]
    fn tags_out_of_reach_are_refused() {
        let schema: Value = serde_json::json!({
            "type": "object",
            "properties": {"cards": {"type": "array", "items": {
                "type": "object", "properties": {"pan": {"type": "string", "confluent:tags": ["PII"]}}
            }}}
        });
        let e = Targets::resolve(&schema, &sel(&[], &["PII"])).unwrap_err();
        assert!(e.contains("not reachable"), "{e}");
        assert!(Targets::resolve(&schema, &sel(&[], &["OTHER"])).is_ok());
    }
}
